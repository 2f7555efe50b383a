// test_model.c: the CPU forward pass against Hugging Face transformers.
//
// - tests/models/tiny-code-llama (a real trained Llama, bf16, 3 shards): the golden
//   greedy continuations and last-position logits recorded by HF in fp32.
// - tests/golden/llama-*: small random Llamas with awkward shapes (GQA ratios
//   1, 2, 4 and MQA, head_dim 18, untied heads, llama3 and linear rope
//   scaling, f32/f16/bf16, sharded), made by tests/golden/make_golden.py.
// - chunked prefill computes the same bits as a whole-prompt prefill.
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "testutil.h"

#define BLOCK 16

// A tiny driver: one sequence, contiguous blocks 0..n-1, fed in chunks.
typedef struct {
    Model *m;
    Backend *be;
    float *logits; // (vocab)
} Runner;

static int runner_open(Runner *r, const char *dir, int max_tokens) {
    sl_err err = {{0}};
    r->be = backend_cpu_create(0);
    ModelOptions mo = {.max_tokens = max_tokens, .max_seqs = 4, .tp_size = 1};
    if (model_load(&r->m, dir, r->be, &mo, &err)) {
        fprintf(stderr, "model_load(%s): %s\n", dir, err.msg);
        return -1;
    }
    model_kv_alloc(r->m, 1024 / BLOCK + 2, BLOCK);
    r->logits = malloc(sizeof(float) * r->m->cfg.vocab_size);
    return 0;
}

static void runner_close(Runner *r) {
    model_free(r->m);
    r->be->destroy(r->be);
    free(r->logits);
}

// Feeds tokens[start, start+n) at positions start.. as one step; when want
// is non-NULL, receives (n, vocab) logits of every row.
static void runner_step(Runner *r, const int32_t *tokens, int start, int n, float *all_logits) {
    int32_t pos[1024], seq_of[1024], slots[1024], rows[1024], bt[1024 / BLOCK + 2];
    int32_t seq_start[2] = {0, n}, kv_len[1] = {start + n};
    int nb = (start + n + BLOCK - 1) / BLOCK;
    for (int i = 0; i < nb; i++) bt[i] = i;
    for (int i = 0; i < n; i++) {
        pos[i] = start + i;
        seq_of[i] = 0;
        slots[i] = start + i; // block i/BLOCK is block id i/BLOCK
        rows[i] = i;
    }
    Batch b = {.n_tokens = n, .n_seqs = 1, .tokens = (int32_t *)tokens + start, .pos = pos,
               .seq_of = seq_of, .slots = slots, .seq_start = seq_start, .kv_len = kv_len,
               .block_tables = bt, .max_blocks = nb};
    if (all_logits) { // every row, in chunks of at most max_seqs logits rows
        float *tmp = malloc(sizeof(float) * r->m->cfg.vocab_size * 4);
        // Run the step once for the KV cache with no logits, then re-run the
        // step (KV rewrite is idempotent) asking for rows 4 at a time.
        for (int i0 = 0; i0 < n; i0 += 4) {
            int k = n - i0 < 4 ? n - i0 : 4;
            b.n_logits = k;
            b.logit_rows = rows + i0;
            model_forward(r->m, &b, tmp);
            memcpy(all_logits + (size_t)i0 * r->m->cfg.vocab_size, tmp,
                   sizeof(float) * k * r->m->cfg.vocab_size);
        }
        free(tmp);
    } else {
        int32_t last = n - 1;
        b.n_logits = 1;
        b.logit_rows = &last;
        model_forward(r->m, &b, r->logits);
    }
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

// Greedy: prefill in chunks of `chunk`, then n_new decode steps. Writes the
// generated ids into out and the prompt's last-position logits into last.
static void greedy(Runner *r, const int32_t *prompt, int plen, int n_new, int chunk, int32_t *out,
                   float *last) {
    int32_t seq[1024];
    memcpy(seq, prompt, sizeof(int32_t) * plen);
    for (int s = 0; s < plen; s += chunk) runner_step(r, seq, s, s + chunk < plen ? chunk : plen - s, NULL);
    if (last) memcpy(last, r->logits, sizeof(float) * r->m->cfg.vocab_size);
    int len = plen;
    for (int t = 0; t < n_new; t++) {
        int tok = argmax(r->logits, r->m->cfg.vocab_size);
        out[t] = tok;
        seq[len++] = tok;
        if (t + 1 < n_new) runner_step(r, seq, len - 1, 1, NULL);
    }
}

static int json_ints(json_t *a, int32_t *out, int cap) {
    int n = (int)json_array_size(a);
    CU_ASSERT_FATAL(n <= cap);
    for (int i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return n;
}

// Top-2 gap of v, for reporting near-ties.
static void show_tie(const float *v, int n, int want, int got) {
    fprintf(stderr, "    logits: want id %d = %.6f, got id %d = %.6f\n", want, v[want], got,
            v[got]);
}

// ----------------------------------------------------------------------------
// the demo model vs its HF golden file

static void test_tiny_code_llama_golden(void) {
    Runner r;
    CU_ASSERT_FATAL(runner_open(&r, tu_path("tests/models/tiny-code-llama"), 256) == 0);
    json_error_t je;
    json_t *g = json_load_file(tu_path("tests/models/tiny-code-llama/golden_greedy.json"), 0, &je);
    CU_ASSERT_FATAL(g != NULL);
    json_t *cases = json_object_get(g, "cases");
    CU_ASSERT_FATAL(json_array_size(cases) == 8);
    int vocab = r.m->cfg.vocab_size;
    float *last = malloc(sizeof(float) * vocab);
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int32_t prompt[256], want[64], got[64], top5[5];
        int plen = json_ints(json_object_get(c, "prompt_ids"), prompt, 256);
        int nw = json_ints(json_object_get(c, "greedy_ids"), want, 64);
        json_ints(json_object_get(c, "last_prompt_logits_top5"), top5, 5);
        greedy(&r, prompt, plen, nw, plen, got, last);
        // logits: the first 16 values, and the top-5 ids in order. The golden
        // file was computed by HF in fp32 elsewhere; differences of a few 1e-3
        // on logits of magnitude ~10 come from summation order.
        json_t *f16 = json_object_get(c, "last_prompt_logits_first16");
        float ref16[16];
        for (int i = 0; i < 16; i++) ref16[i] = (float)json_real_value(json_array_get(f16, i));
        CU_ASSERT(tu_compare_f32("first16", last, ref16, 16, 1e-2f, 1e-3f) == 0);
        for (int k = 0; k < 5; k++) {
            int best = argmax(last, vocab);
            CU_ASSERT_EQUAL(best, top5[k]);
            last[best] = -INFINITY;
        }
        int first_bad = -1;
        for (int t = 0; t < nw && first_bad < 0; t++)
            if (got[t] != want[t]) first_bad = t;
        if (first_bad >= 0) {
            fprintf(stderr, "  case %zu diverges at step %d (want %d got %d)\n", ci, first_bad,
                    want[first_bad], got[first_bad]);
            show_tie(r.logits, vocab, want[first_bad], got[first_bad]);
        }
        CU_ASSERT_EQUAL(first_bad, -1);
    }
    free(last);
    json_decref(g);
    runner_close(&r);
}

// ----------------------------------------------------------------------------
// random fixtures from make_golden.py

static const char *fixtures[] = {"llama-mha-f32", "llama-gqa2-bf16", "llama-gqa4-llama3rope-f16",
                                 "llama-mqa-hd18-bf16"};

static void check_fixture(const char *name) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "tests/golden/%s", name);
    snprintf(path, sizeof path, "%s/golden.json", tu_path(dir));
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    if (!g) fprintf(stderr, "  %s: %s\n", path, je.text);
    CU_ASSERT_FATAL(g != NULL);
    Runner r;
    CU_ASSERT_FATAL(runner_open(&r, tu_path(dir), 256) == 0);
    int vocab = r.m->cfg.vocab_size;
    float *last = malloc(sizeof(float) * vocab), *ref = malloc(sizeof(float) * vocab);
    json_t *cases = json_object_get(g, "cases");
    CU_ASSERT(json_array_size(cases) >= 3);
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int32_t prompt[256], want[64], got[64];
        int plen = json_ints(json_object_get(c, "prompt_ids"), prompt, 256);
        int nw = json_ints(json_object_get(c, "greedy_ids"), want, 64);
        greedy(&r, prompt, plen, nw, plen, got, last);
        json_t *lj = json_object_get(c, "last_prompt_logits");
        CU_ASSERT_FATAL((int)json_array_size(lj) == vocab);
        for (int i = 0; i < vocab; i++) ref[i] = (float)json_real_value(json_array_get(lj, i));
        char what[64];
        snprintf(what, sizeof what, "%s case %zu logits", name, ci);
        CU_ASSERT(tu_compare_f32(what, last, ref, vocab, 1e-3f, 1e-3f) == 0);
        int ok = memcmp(got, want, sizeof(int32_t) * nw) == 0;
        if (!ok) {
            for (int t = 0; t < nw; t++)
                if (got[t] != want[t]) {
                    fprintf(stderr, "  %s case %zu diverges at step %d (want %d got %d)\n", name,
                            ci, t, want[t], got[t]);
                    break;
                }
        }
        CU_ASSERT(ok);
    }
    // every position of case 0's prompt
    json_t *allp = json_object_get(g, "all_position_logits_case0");
    json_t *c0 = json_array_get(cases, 0);
    int32_t prompt[256];
    int plen = json_ints(json_object_get(c0, "prompt_ids"), prompt, 256);
    CU_ASSERT_FATAL((int)json_array_size(allp) == plen);
    float *all = malloc(sizeof(float) * vocab * plen), *allref = malloc(sizeof(float) * vocab * plen);
    runner_step(&r, prompt, 0, plen, all);
    for (int p = 0; p < plen; p++) {
        json_t *row = json_array_get(allp, p);
        for (int i = 0; i < vocab; i++)
            allref[(size_t)p * vocab + i] = (float)json_real_value(json_array_get(row, i));
    }
    CU_ASSERT(tu_compare_f32("all-position logits", all, allref, (long)vocab * plen, 1e-3f, 1e-3f) == 0);
    free(all);
    free(allref);
    free(last);
    free(ref);
    json_decref(g);
    runner_close(&r);
}

static void test_fixture_mha(void) { check_fixture(fixtures[0]); }
static void test_fixture_gqa2(void) { check_fixture(fixtures[1]); }
static void test_fixture_gqa4_llama3(void) { check_fixture(fixtures[2]); }
static void test_fixture_mqa(void) { check_fixture(fixtures[3]); }

// ----------------------------------------------------------------------------
// chunked prefill == whole prefill, bit for bit (rows never depend on their batch)

static void test_chunked_prefill_exact(void) {
    Runner a, b;
    CU_ASSERT_FATAL(runner_open(&a, tu_path("tests/models/tiny-code-llama"), 256) == 0);
    CU_ASSERT_FATAL(runner_open(&b, tu_path("tests/models/tiny-code-llama"), 256) == 0);
    uint64_t rng = 7;
    int32_t prompt[77], ga[8], gb[8];
    for (int i = 0; i < 77; i++) prompt[i] = 1 + (int32_t)(tu_rand_u64(&rng) % 8000);
    int vocab = a.m->cfg.vocab_size;
    float *la = malloc(sizeof(float) * vocab), *lb = malloc(sizeof(float) * vocab);
    greedy(&a, prompt, 77, 8, 77, ga, la);
    greedy(&b, prompt, 77, 8, 5, gb, lb); // 16 chunks of 5 crossing block edges (BLOCK 16)
    CU_ASSERT(memcmp(la, lb, sizeof(float) * vocab) == 0);
    CU_ASSERT(memcmp(ga, gb, sizeof ga) == 0);
    free(la);
    free(lb);
    runner_close(&a);
    runner_close(&b);
}

// A checkpoint whose tensor has the wrong shape fails to load, naming it.
static void test_load_errors(void) {
    sl_err err = {{0}};
    Backend *be = backend_cpu_create(0);
    ModelOptions mo = {.max_tokens = 16, .max_seqs = 2, .tp_size = 1};
    Model *m = NULL;
    CU_ASSERT(model_load(&m, "/nonexistent/model", be, &mo, &err) == -1);
    CU_ASSERT(strstr(err.msg, "/nonexistent/model") != NULL);
    // --tp that does not divide the heads (tiny-code-llama: 6 heads, 2 kv heads)
    mo.tp_size = 4;
    CU_ASSERT(model_load(&m, tu_path("tests/models/tiny-code-llama"), be, &mo, &err) == -1);
    CU_ASSERT(strstr(err.msg, "--tp 4") != NULL);
    CU_ASSERT(m == NULL);
    be->destroy(be);
}

int main(void) {
    static const tu_test golden[] = {
        {"tiny_code_llama_golden", test_tiny_code_llama_golden},
        {"fixture_mha_f32", test_fixture_mha},
        {"fixture_gqa2_bf16_tied", test_fixture_gqa2},
        {"fixture_gqa4_llama3rope_f16", test_fixture_gqa4_llama3},
        {"fixture_mqa_hd18_bf16_sharded", test_fixture_mqa},
        {NULL, NULL}};
    static const tu_test misc[] = {
        {"chunked_prefill_exact", test_chunked_prefill_exact},
        {"load_errors", test_load_errors},
        {NULL, NULL}};
    tu_suite("model_vs_hf", golden);
    tu_suite("model_misc", misc);
    return tu_main();
}
