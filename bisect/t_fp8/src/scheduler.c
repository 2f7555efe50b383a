// scheduler.c: paged KV blocks and iteration-level scheduling (see scheduler.h).
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ----------------------------------------------------------------------------
// block pool

static int pool_take(Sched *s) {
    if (s->n_free == 0) return -1;
    int b = s->free_blocks[--s->n_free];
    SL_CHECK(!s->block_used[b]);
    s->block_used[b] = 1;
    return b;
}

static void pool_give(Sched *s, int b) {
    SL_CHECK(b >= 0 && b < s->n_blocks && s->block_used[b]);
    s->block_used[b] = 0;
    s->free_blocks[s->n_free++] = b;
}

static void release_blocks(Sched *s, Seq *q) {
    // Give back in reverse so a sequence re-admitted next gets the same blocks.
    for (int i = q->n_blocks - 1; i >= 0; i--) pool_give(s, q->blocks[i]);
    q->n_blocks = 0;
}

int sched_blocks_for(const Sched *s, int n) { return (n + s->block_size - 1) / s->block_size; }

// ----------------------------------------------------------------------------
// queues

static void wait_push_back(Sched *s, Seq *q) {
    SL_CHECK(s->wait_count < s->wait_cap);
    s->waiting[(s->wait_head + s->wait_count++) % s->wait_cap] = q;
}

static void wait_push_front(Sched *s, Seq *q) {
    SL_CHECK(s->wait_count < s->wait_cap);
    s->wait_head = (s->wait_head + s->wait_cap - 1) % s->wait_cap;
    s->waiting[s->wait_head] = q;
    s->wait_count++;
}

static Seq *wait_front(Sched *s) { return s->wait_count ? s->waiting[s->wait_head] : NULL; }

static void wait_pop_front(Sched *s) {
    s->wait_head = (s->wait_head + 1) % s->wait_cap;
    s->wait_count--;
}

static void running_remove(Sched *s, Seq *q) {
    for (int i = 0; i < s->n_running; i++) {
        if (s->running[i] == q) {
            memmove(&s->running[i], &s->running[i + 1], sizeof(Seq *) * (s->n_running - i - 1));
            s->n_running--;
            return;
        }
    }
    SL_CHECK(!"sequence not running");
}

// ----------------------------------------------------------------------------
// init / free

void sched_init(Sched *s, SchedPolicy policy, int max_seqs, int max_tokens, int block_size,
                int n_blocks, int max_seq_len, int n_queue) {
    memset(s, 0, sizeof *s);
    SL_CHECK(max_seqs > 0 && max_tokens > 0 && block_size > 0 && n_blocks > 0);
    s->policy = policy;
    s->max_seqs = max_seqs;
    s->max_tokens = max_tokens;
    s->block_size = block_size;
    s->n_blocks = n_blocks;
    s->free_blocks = sl_malloc(sizeof(int32_t) * n_blocks);
    s->block_used = sl_calloc(n_blocks, 1);
    // Stack order: block 0 is taken first.
    for (int i = 0; i < n_blocks; i++) s->free_blocks[i] = n_blocks - 1 - i;
    s->n_free = n_blocks;
    s->wait_cap = n_queue > 0 ? n_queue : 1;
    s->waiting = sl_calloc(s->wait_cap, sizeof(Seq *));
    s->running = sl_calloc(max_seqs + n_queue + 1, sizeof(Seq *));
    int width = sched_blocks_for(s, max_seq_len);
    Batch *b = &s->batch;
    b->tokens = sl_malloc(sizeof(int32_t) * max_tokens);
    b->pos = sl_malloc(sizeof(int32_t) * max_tokens);
    b->seq_of = sl_malloc(sizeof(int32_t) * max_tokens);
    b->slots = sl_malloc(sizeof(int32_t) * max_tokens);
    b->seq_start = sl_malloc(sizeof(int32_t) * (max_seqs + 1));
    b->kv_len = sl_malloc(sizeof(int32_t) * max_seqs);
    b->block_tables = sl_malloc(sizeof(int32_t) * (size_t)max_seqs * width);
    b->logit_rows = sl_malloc(sizeof(int32_t) * max_seqs);
    s->step_seqs = sl_calloc(max_seqs, sizeof(Seq *));
    s->step_chunk = sl_calloc(max_seqs, sizeof(int));
}

void sched_free(Sched *s) {
    if (!s) return;
    Batch *b = &s->batch;
    free(b->tokens);
    free(b->pos);
    free(b->seq_of);
    free(b->slots);
    free(b->seq_start);
    free(b->kv_len);
    free(b->block_tables);
    free(b->logit_rows);
    free(s->step_seqs);
    free(s->step_chunk);
    free(s->free_blocks);
    free(s->block_used);
    free(s->waiting);
    free(s->running);
    memset(s, 0, sizeof *s);
}

void sched_add(Sched *s, Seq *q) {
    SL_CHECK(q->blocks == NULL && q->len >= 1 && q->len <= q->max_len);
    SL_CHECK(sched_blocks_for(s, q->max_len) <= s->n_blocks);
    q->blocks = sl_malloc(sizeof(int32_t) * sched_blocks_for(s, q->max_len));
    q->n_blocks = 0;
    q->n_computed = 0;
    q->status = SEQ_WAITING;
    wait_push_back(s, q);
}

// ----------------------------------------------------------------------------
// building a step

static void preempt(Sched *s, Seq *q) {
    running_remove(s, q);
    release_blocks(s, q);
    q->n_computed = 0; // recomputed from scratch (prompt + generated) on return
    q->status = SEQ_WAITING;
    q->n_preempted++;
    s->n_preemptions++;
    wait_push_front(s, q);
}

// The most recently admitted running sequence not already in this step.
static Seq *pick_victim(Sched *s) {
    for (int i = s->n_running - 1; i >= 0; i--)
        if (s->running[i]->stamp != s->step_no) return s->running[i];
    return NULL;
}

enum { GOT_BLOCKS = 0, NO_BLOCKS = 1, SELF_PREEMPTED = 2 };

// Makes q own enough blocks for its first n tokens, preempting others when the
// policy allows.
static int ensure_blocks(Sched *s, Seq *q, int n) {
    int want = sched_blocks_for(s, n);
    while (q->n_blocks < want) {
        int b = pool_take(s);
        if (b >= 0) {
            q->blocks[q->n_blocks++] = b;
            continue;
        }
        if (s->policy != SCHED_PREEMPT) return NO_BLOCKS;
        Seq *v = pick_victim(s);
        if (!v) return NO_BLOCKS;
        preempt(s, v);
        if (v == q) return SELF_PREEMPTED;
    }
    return GOT_BLOCKS;
}

static void add_to_step(Sched *s, Seq *q, int chunk) {
    Batch *b = &s->batch;
    int k = b->n_seqs, r = b->n_tokens, bs = s->block_size;
    s->step_seqs[k] = q;
    s->step_chunk[k] = chunk;
    q->stamp = s->step_no;
    b->seq_start[k] = r;
    for (int j = 0; j < chunk; j++, r++) {
        int p = q->n_computed + j;
        b->tokens[r] = q->tokens[p];
        b->pos[r] = p;
        b->seq_of[r] = k;
        b->slots[r] = q->blocks[p / bs] * bs + p % bs;
    }
    b->kv_len[k] = q->n_computed + chunk;
    if (q->n_computed + chunk == q->len) b->logit_rows[b->n_logits++] = r - 1;
    b->n_tokens = r;
    b->n_seqs = k + 1;
    b->seq_start[k + 1] = r;
}

int sched_step(Sched *s) {
    Batch *b = &s->batch;
    b->n_tokens = b->n_seqs = b->n_logits = 0;
    b->seq_start[0] = 0;
    s->step_no++;
    long preempted_before = s->n_preemptions;

    // 1) one decode token per running sequence, 2) prefill chunks of running ones
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->n_running;) {
            Seq *q = s->running[i];
            int need = q->len - q->n_computed;
            if (q->stamp == s->step_no || (pass == 0) != (need == 1)) {
                i++;
                continue;
            }
            if (b->n_seqs == s->max_seqs || b->n_tokens == s->max_tokens) break;
            int chunk = need < s->max_tokens - b->n_tokens ? need : s->max_tokens - b->n_tokens;
            long before = s->n_preemptions;
            int got = ensure_blocks(s, q, q->n_computed + chunk);
            if (got == GOT_BLOCKS) add_to_step(s, q, chunk);
            // A preemption reshuffles running[]: rescan (sequences already in
            // the step are skipped by their stamp).
            i = s->n_preemptions != before ? 0 : i + 1;
        }
    }

    // 3) admit waiting sequences, first come first served (no overtaking, so
    //    no starvation); not in a step that had to preempt.
    while (!s->no_admit && s->n_preemptions == preempted_before && s->wait_count > 0 &&
           b->n_seqs < s->max_seqs && b->n_tokens < s->max_tokens) {
        Seq *q = wait_front(s);
        int room = s->max_tokens - b->n_tokens;
        int chunk = q->len < room ? q->len : room;
        int need_blocks = s->policy == SCHED_RESERVE ? sched_blocks_for(s, q->max_len)
                                                     : sched_blocks_for(s, chunk);
        if (s->n_free < need_blocks) break;
        wait_pop_front(s);
        q->status = SEQ_RUNNING;
        q->admit_order = s->next_order++;
        s->running[s->n_running++] = q;
        int got = ensure_blocks(s, q, s->policy == SCHED_RESERVE ? q->max_len : chunk);
        SL_CHECK(got == GOT_BLOCKS);
        add_to_step(s, q, chunk);
    }

    // block tables, as wide as the widest sequence of the step
    int width = 1;
    for (int k = 0; k < b->n_seqs; k++)
        if (s->step_seqs[k]->n_blocks > width) width = s->step_seqs[k]->n_blocks;
    b->max_blocks = width;
    for (int k = 0; k < b->n_seqs; k++) {
        Seq *q = s->step_seqs[k];
        int32_t *row = b->block_tables + (size_t)k * width;
        memcpy(row, q->blocks, sizeof(int32_t) * q->n_blocks);
        for (int j = q->n_blocks; j < width; j++) row[j] = -1;
    }
    return b->n_tokens;
}

void sched_commit(Sched *s) {
    for (int k = 0; k < s->batch.n_seqs; k++) s->step_seqs[k]->n_computed += s->step_chunk[k];
}

void sched_finish(Sched *s, Seq *q) {
    running_remove(s, q);
    release_blocks(s, q);
    free(q->blocks);
    q->blocks = NULL;
    q->status = SEQ_FINISHED;
}

int sched_blocks_in_use(const Sched *s) { return s->n_blocks - s->n_free; }

int sched_check(const Sched *s) {
    int *owner = malloc(sizeof(int) * s->n_blocks);
    int rc = 0;
    for (int i = 0; i < s->n_blocks; i++) owner[i] = -1;
    for (int i = 0; i < s->n_free; i++) {
        int b = s->free_blocks[i];
        if (owner[b] != -1 || s->block_used[b]) {
            fprintf(stderr, "sched_check: free block %d also owned/used\n", b);
            rc = -1;
        }
        owner[b] = -2;
    }
    for (int r = 0; r < s->n_running; r++) {
        const Seq *q = s->running[r];
        if (q->n_blocks < sched_blocks_for(s, q->n_computed)) {
            fprintf(stderr, "sched_check: seq %ld has %d blocks for %d cached tokens\n",
                    (long)q->id, q->n_blocks, q->n_computed);
            rc = -1;
        }
        for (int j = 0; j < q->n_blocks; j++) {
            int b = q->blocks[j];
            if (owner[b] != -1) {
                fprintf(stderr, "sched_check: block %d used twice (seq %ld)\n", b, (long)q->id);
                rc = -1;
            }
            owner[b] = r;
        }
    }
    for (int i = 0; i < s->n_blocks; i++)
        if (owner[i] == -1) {
            fprintf(stderr, "sched_check: block %d leaked\n", i);
            rc = -1;
        }
    free(owner);
    return rc;
}
