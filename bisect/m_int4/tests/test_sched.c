// test_sched.c: property tests of the paged KV pool and the scheduler, with a
// fake model (the next token is a hash of the sequence so far), over thousands
// of random steps and both policies:
//   - no block leaked or owned twice (sched_check after every step), and the
//     pool drains to empty;
//   - the step budgets (sequences, rows) are never exceeded;
//   - rows of a sequence are contiguous, at consecutive positions starting at
//     its cached length, with slots inside its own blocks;
//   - every request finishes with exactly its length, and its tokens equal
//     what the fake model produces when the request runs alone;
//   - no starvation: requests are admitted in arrival order.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"
#include "testutil.h"

static int32_t fake_next(const int32_t *t, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint64_t)t[i]) * 1099511628211ull;
    return (int32_t)(h % 1000);
}

typedef struct {
    int max_seqs, max_tokens, block_size, n_blocks, n_req;
    SchedPolicy policy;
} Workload;

// Runs a random workload; returns the number of failures found.
static int run_workload(const Workload *w, uint64_t seed, long *steps_out, long *preempt_out) {
    uint64_t rng = seed;
    Sched s;
    int max_seq_len = w->n_blocks * w->block_size;
    if (max_seq_len > 300) max_seq_len = 300;
    sched_init(&s, w->policy, w->max_seqs, w->max_tokens, w->block_size, w->n_blocks, max_seq_len,
               w->n_req);
    Seq *seqs = calloc(w->n_req, sizeof(Seq));
    int32_t **ref = calloc(w->n_req, sizeof(int32_t *));
    int fails = 0;
    for (int i = 0; i < w->n_req; i++) {
        Seq *q = &seqs[i];
        int plen = 1 + (int)(tu_rand_u64(&rng) % (max_seq_len / 2));
        int max_new = 1 + (int)(tu_rand_u64(&rng) % (max_seq_len - plen));
        q->id = i;
        q->prompt_len = q->len = plen;
        q->max_len = plen + max_new;
        q->tokens = malloc(sizeof(int32_t) * q->max_len);
        ref[i] = malloc(sizeof(int32_t) * q->max_len);
        for (int k = 0; k < plen; k++) q->tokens[k] = ref[i][k] = (int32_t)(tu_rand_u64(&rng) % 1000);
        for (int k = plen; k < q->max_len; k++) ref[i][k] = fake_next(ref[i], k);
        sched_add(&s, q);
    }
    int done = 0;
    long steps = 0;
    int64_t next_admit = 0; // admissions must follow arrival order
    uint64_t *admitted = calloc(w->n_req, sizeof(uint64_t));
    while (done < w->n_req) {
        int rows = sched_step(&s);
        steps++;
        if (rows == 0) {
            fprintf(stderr, "  stuck: %d waiting, %d running, %d free blocks\n", s.wait_count,
                    s.n_running, s.n_free);
            fails++;
            break;
        }
        Batch *b = &s.batch;
        if (b->n_seqs > w->max_seqs || b->n_tokens > w->max_tokens) fails++;
        if (sched_check(&s)) fails++;
        for (int k = 0; k < b->n_seqs; k++) {
            Seq *q = s.step_seqs[k];
            if (!admitted[q->id]) {
                admitted[q->id] = 1;
                if (q->id != next_admit) {
                    fprintf(stderr, "  seq %ld admitted before %ld\n", (long)q->id, (long)next_admit);
                    fails++;
                }
                next_admit++;
            }
            for (int r = b->seq_start[k]; r < b->seq_start[k + 1]; r++) {
                int p = q->n_computed + (r - b->seq_start[k]);
                if (b->seq_of[r] != k || b->pos[r] != p || b->tokens[r] != q->tokens[p]) fails++;
                int blk = b->slots[r] / w->block_size;
                if (p / w->block_size >= q->n_blocks || q->blocks[p / w->block_size] != blk ||
                    b->block_tables[k * b->max_blocks + p / w->block_size] != blk)
                    fails++;
            }
            if (b->kv_len[k] != q->n_computed + (b->seq_start[k + 1] - b->seq_start[k])) fails++;
        }
        sched_commit(&s);
        int nl = 0;
        Seq *fin[4096];
        int nfin = 0;
        for (int k = 0; k < b->n_seqs; k++) {
            Seq *q = s.step_seqs[k];
            if (q->n_computed != q->len) continue;
            if (b->logit_rows[nl++] != b->seq_start[k + 1] - 1) fails++;
            q->tokens[q->len] = fake_next(q->tokens, q->len);
            q->len++;
            if (q->len == q->max_len) fin[nfin++] = q;
        }
        if (nl != b->n_logits) fails++;
        for (int j = 0; j < nfin; j++) {
            Seq *q = fin[j];
            if (memcmp(q->tokens, ref[q->id], sizeof(int32_t) * q->max_len)) {
                fprintf(stderr, "  seq %ld tokens differ from running alone\n", (long)q->id);
                fails++;
            }
            sched_finish(&s, q);
            done++;
        }
        if (steps > 1000000) {
            fails++;
            break;
        }
    }
    if (sched_blocks_in_use(&s) != 0) {
        fprintf(stderr, "  %d blocks still in use at the end\n", sched_blocks_in_use(&s));
        fails++;
    }
    *steps_out = steps;
    *preempt_out = s.n_preemptions;
    for (int i = 0; i < w->n_req; i++) {
        free(seqs[i].tokens);
        free(seqs[i].blocks);
        free(ref[i]);
    }
    free(seqs);
    free(ref);
    free(admitted);
    sched_free(&s);
    return fails;
}

static void run_many(SchedPolicy policy) {
    uint64_t rng = policy == SCHED_PREEMPT ? 11 : 12;
    long total_steps = 0, total_preempt = 0;
    for (int trial = 0; trial < 40; trial++) {
        Workload w;
        w.policy = policy;
        w.block_size = 1 << (tu_rand_u64(&rng) % 5);          // 1..16
        w.n_blocks = 8 + (int)(tu_rand_u64(&rng) % 120);
        w.max_seqs = 1 + (int)(tu_rand_u64(&rng) % 24);
        w.max_tokens = 1 + (int)(tu_rand_u64(&rng) % 96);
        w.n_req = 5 + (int)(tu_rand_u64(&rng) % 60);
        long steps, pre;
        int f = run_workload(&w, 1000 + trial, &steps, &pre);
        if (f)
            fprintf(stderr, "  trial %d (bs %d blocks %d seqs %d tokens %d req %d): %d failures\n",
                    trial, w.block_size, w.n_blocks, w.max_seqs, w.max_tokens, w.n_req, f);
        CU_ASSERT_EQUAL(f, 0);
        total_steps += steps;
        total_preempt += pre;
    }
    printf("\n    %ld steps, %ld preemptions\n", total_steps, total_preempt);
    CU_ASSERT(total_steps > 2000); // the property test really exercised the loop
    if (policy == SCHED_PREEMPT) CU_ASSERT(total_preempt > 0);
    if (policy == SCHED_RESERVE) CU_ASSERT(total_preempt == 0);
}

static void test_preempt_policy(void) { run_many(SCHED_PREEMPT); }
static void test_reserve_policy(void) { run_many(SCHED_RESERVE); }

// Decodes go first, then chunked prefill, then admissions; a long prompt is
// split across steps by the token budget.
static void test_step_order_and_chunking(void) {
    Sched s;
    sched_init(&s, SCHED_PREEMPT, 8, 10, 4, 64, 128, 4);
    int32_t ta[64], tb[64];
    for (int i = 0; i < 64; i++) ta[i] = tb[i] = i;
    Seq a = {.id = 0, .tokens = ta, .prompt_len = 3, .len = 3, .max_len = 10};
    Seq b = {.id = 1, .tokens = tb, .prompt_len = 25, .len = 25, .max_len = 30};
    sched_add(&s, &a);
    sched_add(&s, &b);
    CU_ASSERT_EQUAL(sched_step(&s), 10); // a: 3 rows, b: first 7 rows
    CU_ASSERT_EQUAL(s.batch.n_seqs, 2);
    CU_ASSERT_EQUAL(s.batch.n_logits, 1); // only a reached its end
    CU_ASSERT_EQUAL(s.batch.logit_rows[0], 2);
    sched_commit(&s);
    a.tokens[a.len++] = 99;
    CU_ASSERT_EQUAL(sched_step(&s), 10); // a decodes 1 row first, b 9 more rows
    CU_ASSERT(s.step_seqs[0] == &a && s.step_chunk[0] == 1);
    CU_ASSERT(s.step_seqs[1] == &b && s.step_chunk[1] == 9);
    CU_ASSERT_EQUAL(s.batch.pos[1], 7);
    sched_commit(&s);
    a.tokens[a.len++] = 98;
    CU_ASSERT_EQUAL(sched_step(&s), 10); // a 1, b 9: b ends at 25 -> logits
    CU_ASSERT_EQUAL(s.batch.n_logits, 2);
    sched_commit(&s);
    sched_finish(&s, &a);
    sched_finish(&s, &b);
    CU_ASSERT_EQUAL(sched_blocks_in_use(&s), 0);
    CU_ASSERT_EQUAL(sched_check(&s), 0);
    sched_free(&s);
}

int main(void) {
    static const tu_test t[] = {
        {"step_order_and_chunking", test_step_order_and_chunking},
        {"property_preempt_policy", test_preempt_policy},
        {"property_reserve_policy", test_reserve_policy},
        {NULL, NULL}};
    tu_suite("sched", t);
    return tu_main();
}
