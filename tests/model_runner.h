// model_runner.h: drives a Model one sequence at a time from a test, the same
// way on every backend, so a GPU run and a CPU run can go step by step side by
// side (tests/test_gpu_model.c, test_gpu_fp8.c, test_gpu_zoo.c).
//
// runner_open loads a checkpoint directory onto a backend (the runner owns the
// backend from then on, also when loading fails); runner_step runs rows
// [start, start + n) of one sequence as one step on KV blocks 0, 1, ... and
// leaves the last row's logits in r->logits.
#ifndef SLUICE_MODEL_RUNNER_H
#define SLUICE_MODEL_RUNNER_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "model.h"
#include "testutil.h"

#define TU_BLOCK 16 // KV block size
#define TU_MAXT 256 // most rows in one step
#define TU_MAXPOS 1024 // most positions in one sequence

typedef struct {
    Model *m;
    Backend *be;
    float *logits; // (max_seqs, vocab)
    int vocab;
} Runner;

// o: options to load with (NULL: defaults); max_tokens is TU_MAXT, tp_size 1,
// max_seqs 4 unless o sets it. kv_blocks 0: enough for TU_MAXT positions.
static inline int runner_open(Runner *r, Backend *be, const char *dir, const ModelOptions *o,
                              int kv_blocks) {
    sl_err err = {{0}};
    memset(r, 0, sizeof *r);
    ModelOptions mo = {0};
    if (o) mo = *o;
    mo.max_tokens = TU_MAXT;
    mo.tp_size = 1;
    if (mo.max_seqs <= 0) mo.max_seqs = 4;
    if (model_load(&r->m, dir, be, &mo, &err)) {
        fprintf(stderr, "  model_load(%s) on %s: %s\n", dir, be->name, err.msg);
        be->destroy(be);
        return -1;
    }
    r->be = be;
    model_kv_alloc(r->m, kv_blocks > 0 ? kv_blocks : TU_MAXT / TU_BLOCK + 2, TU_BLOCK);
    r->vocab = r->m->cfg.vocab_size;
    r->logits = sl_malloc(sizeof(float) * (size_t)r->vocab * mo.max_seqs);
    return 0;
}

static inline void runner_close(Runner *r) {
    model_free(r->m);
    if (r->be) r->be->destroy(r->be);
    free(r->logits);
    memset(r, 0, sizeof *r);
}

static inline void runner_step(Runner *r, const int32_t *seq, int start, int n) {
    static int32_t pos[TU_MAXT], seq_of[TU_MAXT], slots[TU_MAXT], bt[TU_MAXPOS / TU_BLOCK + 2];
    SL_CHECK(n >= 1 && n <= TU_MAXT && start + n <= TU_MAXPOS);
    int32_t seq_start[2] = {0, n}, kv_len[1] = {start + n}, last = n - 1;
    int nb = (start + n + TU_BLOCK - 1) / TU_BLOCK;
    for (int i = 0; i < nb; i++) bt[i] = i;
    for (int i = 0; i < n; i++) {
        pos[i] = start + i;
        seq_of[i] = 0;
        slots[i] = start + i;
    }
    Batch b = {.n_tokens = n, .n_seqs = 1, .tokens = (int32_t *)seq + start, .pos = pos,
               .seq_of = seq_of, .slots = slots, .seq_start = seq_start, .kv_len = kv_len,
               .block_tables = bt, .max_blocks = nb, .n_logits = 1, .logit_rows = &last};
    model_forward(r->m, &b, r->logits);
}

// The demo model's directory (tests/models or models), or NULL.
static inline const char *tiny_dir(void) {
    static char path[1024];
    const char *cands[] = {"tests/models/tiny-code-llama", "models/tiny-code-llama"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/config.json", tu_path(cands[i]));
        if (access(path, R_OK) == 0) {
            snprintf(path, sizeof path, "%s", tu_path(cands[i]));
            return path;
        }
    }
    return NULL;
}

static inline int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

// Relative L2 distance; NaN anywhere makes it NaN (and every bound fail).
static inline double rel_l2(const float *got, const float *ref, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

// A JSON array of integers into out (at most cap: more is a fatal assert).
static inline int json_ints(json_t *a, int32_t *out, int cap) {
    int n = (int)json_array_size(a);
    CU_ASSERT_FATAL(n <= cap);
    for (int i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return n;
}

#endif
