// test_fp8.c: FP8 E4M3 on the CPU: the format, the emulation the CPU backend
// runs (kernels/cpu/fp8_cpu.c), and FP8 checkpoints.
//
// - src/fp8.h's encoder against every code, every midpoint between codes
//   (ties to even), saturation and NaN.
// - quantisation rules: a dynamic row scale maps the row's absmax to 448
//   exactly; static scales; per-channel and per-tensor weight scales.
// - cpu_linear_fp8 against cpu_linear on the decoded values.
// - the demo model with --dtype fp8 / --kv-dtype fp8 stays close to fp32.
// - FP8 checkpoints: tests/fp8/make_fp8_fixtures.py (an independent numpy
//   writer of the compressed-tensors and ModelOpt layouts) and `sluice
//   quantize --fp8`: the compressed-tensors fixture loads to exactly the
//   logits of --dtype fp8 on the source; the ModelOpt one loads with its
//   per-tensor scales, static input scales and KV scales; tensor-parallel
//   ranks hold the right rows / columns and scales. Skipped (with a message)
//   when python3 with numpy is not available.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/ops_cpu.h"
#include "fp8.h"
#include "model.h"
#include "testutil.h"

static const char *tiny = "tests/models/tiny-code-llama";

// ----------------------------------------------------------------------------
// the format

static void test_codec(void) {
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        float v = sl_e4m3_to_f32((uint8_t)c);
        if ((c & 0x7f) == 0x7f) {
            CU_ASSERT(isnan(v));
            continue;
        }
        if (sl_f32_to_e4m3(v) != c) bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(sl_e4m3_to_f32(0x7e), 448.0f);
    CU_ASSERT_EQUAL(sl_e4m3_to_f32(0x01), 1.0f / 512.0f);
    CU_ASSERT_EQUAL(sl_e4m3_to_f32(0x08), 1.0f / 64.0f);
    // midpoints round to the even code, and the neighbours of a midpoint
    // to the nearer code
    for (int c = 0; c < 0x7e; c++) {
        float a = sl_e4m3_to_f32((uint8_t)c), b = sl_e4m3_to_f32((uint8_t)(c + 1));
        float mid = 0.5f * (a + b);
        CU_ASSERT_EQUAL(sl_f32_to_e4m3(mid), (c & 1) ? c + 1 : c);
        CU_ASSERT_EQUAL(sl_f32_to_e4m3(nextafterf(mid, 0.0f)), c);
        CU_ASSERT_EQUAL(sl_f32_to_e4m3(nextafterf(mid, 1e9f)), c + 1);
        CU_ASSERT_EQUAL(sl_f32_to_e4m3(-mid), 0x80 | ((c & 1) ? c + 1 : c));
    }
    CU_ASSERT_EQUAL(sl_f32_to_e4m3(1e30f), 0x7e);
    CU_ASSERT_EQUAL(sl_f32_to_e4m3(-INFINITY), 0xfe);
    CU_ASSERT_EQUAL(sl_f32_to_e4m3(460.0f), 0x7e);
    CU_ASSERT_EQUAL(sl_f32_to_e4m3(NAN), 0x7f);
    CU_ASSERT_EQUAL(sl_f32_to_e4m3(1e-30f), 0x00);
    CU_ASSERT_EQUAL(sl_f32_to_e4m3(-0.0f), 0x80);
}

static void test_quantize_rules(void) {
    uint64_t rng = 3;
    int n = 5, dim = 77;
    float *x = malloc(sizeof(float) * n * dim), s[5];
    uint8_t *q = malloc(n * dim);
    for (int i = 0; i < n * dim; i++) x[i] = tu_rand_normal(&rng) * (1 + i / dim);
    for (int j = 0; j < dim; j++) x[2 * dim + j] = 0.0f; // zero row: scale 1
    x[3 * dim + 5] = -1000.0f;
    cpu_quantize_fp8_rows(q, s, x, n, dim, 0.0f);
    CU_ASSERT_EQUAL(s[2], 1.0f);
    CU_ASSERT_EQUAL(q[3 * dim + 5], 0xfe); // the absmax lands on -448
    CU_ASSERT_EQUAL(s[3], 1000.0f / 448.0f);
    for (int i = 0; i < n; i++) {
        float mx = 0.0f;
        for (int j = 0; j < dim; j++) mx = fmaxf(mx, fabsf(sl_e4m3_to_f32(q[i * dim + j])));
        if (i != 2) CU_ASSERT_EQUAL(mx, 448.0f);
    }
    cpu_quantize_fp8_rows(q, s, x, n, dim, 0.5f);
    for (int i = 0; i < n; i++) CU_ASSERT_EQUAL(s[i], 0.5f);
    CU_ASSERT_EQUAL(q[dim], sl_f32_to_e4m3(x[dim] * 2.0f));
    // weights: per channel == per row of the row rule; per tensor shares one
    float ws[5];
    cpu_quantize_weight_fp8(q, ws, x, n, dim, 1, NULL);
    CU_ASSERT_EQUAL(ws[3], 1000.0f / 448.0f);
    cpu_quantize_weight_fp8(q, ws, x, n, dim, 0, NULL);
    CU_ASSERT_EQUAL(ws[0], 1000.0f / 448.0f);
    CU_ASSERT_EQUAL(q[0], sl_f32_to_e4m3(x[0] * (1.0f / ws[0])));
    free(x);
    free(q);
}

static void test_linear_fp8(void) {
    uint64_t rng = 4;
    int n = 7, in = 96, out = 33;
    float *x = malloc(sizeof(float) * n * in), *w = malloc(sizeof(float) * out * in);
    float *b = malloc(sizeof(float) * out), xs[7], *ws = malloc(sizeof(float) * out);
    uint8_t *xq = malloc(n * in), *wq = malloc(out * in);
    for (int i = 0; i < n * in; i++) x[i] = tu_rand_normal(&rng);
    for (int i = 0; i < out * in; i++) w[i] = 0.1f * tu_rand_normal(&rng);
    for (int i = 0; i < out; i++) b[i] = tu_rand_normal(&rng);
    cpu_quantize_fp8_rows(xq, xs, x, n, in, 0.0f);
    cpu_quantize_weight_fp8(wq, ws, w, out, in, 1, NULL);
    // decoded operands through the fp32 linear
    for (int i = 0; i < n * in; i++) x[i] = sl_e4m3_to_f32(xq[i]) * xs[i / in];
    for (int i = 0; i < out * in; i++) w[i] = sl_e4m3_to_f32(wq[i]) * ws[i / in];
    float *y = malloc(sizeof(float) * n * out), *ref = malloc(sizeof(float) * n * out);
    cpu_linear_fp8(y, xq, xs, wq, ws, 1, b, n, in, out);
    cpu_linear(ref, x, w, b, n, in, out);
    CU_ASSERT_EQUAL(tu_compare_f32("linear_fp8", y, ref, n * out, 1e-5f, 1e-5f), 0);
    free(x);
    free(w);
    free(b);
    free(ws);
    free(xq);
    free(wq);
    free(y);
    free(ref);
}

// ----------------------------------------------------------------------------
// models

typedef struct {
    Model *m;
    Backend *be;
    float *logits;
} Run;

static int run_open(Run *r, const char *dir, const ModelOptions *o) {
    sl_err err = {{0}};
    memset(r, 0, sizeof *r);
    r->be = backend_cpu_create(0);
    ModelOptions mo = *o;
    mo.max_tokens = 64;
    mo.max_seqs = 1;
    if (!mo.tp_size) mo.tp_size = 1;
    if (model_load(&r->m, dir, r->be, &mo, &err)) {
        fprintf(stderr, "  model_load(%s): %s\n", dir, err.msg);
        r->be->destroy(r->be);
        return -1;
    }
    model_kv_alloc(r->m, 8, 16);
    r->logits = malloc(sizeof(float) * r->m->cfg.vocab_size);
    return 0;
}

static void run_close(Run *r) {
    model_free(r->m);
    r->be->destroy(r->be);
    free(r->logits);
}

// the logits of the last of 40 fixed tokens, as one prefill
static void run_prefill(Run *r) {
    int32_t tok[40], pos[40], so[40], sl[40], bt[3] = {0, 1, 2}, ss[2] = {0, 40}, kl[1] = {40},
                                                 last = 39;
    for (int i = 0; i < 40; i++) {
        tok[i] = (int32_t)((i * 7919 + 13) % r->m->cfg.vocab_size);
        pos[i] = i;
        so[i] = 0;
        sl[i] = i;
    }
    Batch b = {.n_tokens = 40, .n_seqs = 1, .tokens = tok, .pos = pos, .seq_of = so,
               .slots = sl, .seq_start = ss, .kv_len = kl, .block_tables = bt, .max_blocks = 3,
               .n_logits = 1, .logit_rows = &last};
    model_forward(r->m, &b, r->logits);
}

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static void test_model_fp8_close(void) {
    Run ref, q;
    ModelOptions o0 = {0};
    CU_ASSERT_FATAL(run_open(&ref, tu_path(tiny), &o0) == 0);
    run_prefill(&ref);
    int V = ref.m->cfg.vocab_size;
    const int modes[3][2] = {{1, 0}, {0, 1}, {1, 1}};
    for (int k = 0; k < 3; k++) {
        ModelOptions o = {.weight_fp8 = modes[k][0], .kv_fp8 = modes[k][1]};
        CU_ASSERT_FATAL(run_open(&q, tu_path(tiny), &o) == 0);
        if (modes[k][0]) CU_ASSERT_EQUAL(q.m->layers[0].wqkv.fmt, WFMT_FP8_E4M3);
        CU_ASSERT_EQUAL(q.m->lm_head.fmt, WFMT_F32); // the head stays unquantised
        run_prefill(&q);
        double e = rel_l2(q.logits, ref.logits, V);
        printf("    weights %s kv %s: rel L2 vs fp32 %.3e\n", modes[k][0] ? "fp8" : "f32",
               modes[k][1] ? "fp8" : "f32", e);
        CU_ASSERT(e > 0 && e < 0.1); // FP8 noise, but not a broken model
        run_close(&q);
    }
    run_close(&ref);
}

// ----------------------------------------------------------------------------
// checkpoints

static const char *fixtures(void) {
    static char dir[1024];
    static int made = -1;
    if (made < 0) {
        snprintf(dir, sizeof dir, "%s/fx", tu_tmpdir());
        char cmd[4096], out[4096];
        snprintf(cmd, sizeof cmd, "python3 %s %s %s", tu_path("tests/fp8/make_fp8_fixtures.py"),
                 tu_path(tiny), dir);
        made = tu_run_cmd(cmd, out, sizeof out) == 0;
        if (!made) printf("skipped: python3 + numpy could not write the fixtures: %.300s\n", out);
    }
    return made ? dir : NULL;
}

static void test_ckpt_compressed_tensors(void) {
    const char *fx = fixtures();
    if (!fx) return;
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/ct", fx);
    Run a, b;
    ModelOptions o0 = {0}, o8 = {.weight_fp8 = 1};
    CU_ASSERT_FATAL(run_open(&a, dir, &o0) == 0);
    CU_ASSERT_FATAL(run_open(&b, tu_path(tiny), &o8) == 0);
    const LinearWeight *w = &a.m->layers[2].wgu;
    CU_ASSERT_EQUAL(w->fmt, WFMT_FP8_E4M3);
    CU_ASSERT_EQUAL(w->in_scale, 0.0f); // dynamic per token
    // same codes and scales as quantising the bf16 source at load
    const LinearWeight *v = &b.m->layers[2].wgu;
    CU_ASSERT(memcmp(w->data, v->data, (size_t)w->out_dim * w->in_dim) == 0);
    CU_ASSERT(memcmp(w->scale, v->scale, sizeof(float) * w->out_dim) == 0);
    run_prefill(&a);
    run_prefill(&b);
    CU_ASSERT(memcmp(a.logits, b.logits, sizeof(float) * a.m->cfg.vocab_size) == 0);
    run_close(&a);
    run_close(&b);
}

static void test_ckpt_modelopt(void) {
    const char *fx = fixtures();
    if (!fx) return;
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/modelopt", fx);
    Run a, ref;
    ModelOptions o = {.kv_fp8 = 1}, o0 = {0};
    CU_ASSERT_FATAL(run_open(&a, dir, &o) == 0);
    CU_ASSERT_FATAL(run_open(&ref, tu_path(tiny), &o0) == 0);
    const LayerWeights *L = &a.m->layers[1];
    CU_ASSERT_EQUAL(L->wqkv.fmt, WFMT_FP8_E4M3);
    CU_ASSERT(L->wqkv.in_scale >= 0.02f && L->wqkv.in_scale <= 0.03f); // max of q, k, v
    CU_ASSERT_EQUAL(L->k_scale, 0.05f);
    CU_ASSERT_EQUAL(L->v_scale, 0.01f);
    // q, k, v had one scale each: rows carry them
    const float *s = L->wqkv.scale;
    int hd = a.m->cfg.head_dim, qr = a.m->attn.n_heads * hd;
    CU_ASSERT(L->wqkv.scale_per_row);
    CU_ASSERT_EQUAL(s[0], s[qr - 1]);
    CU_ASSERT(s[0] != s[qr] || s[qr] != s[qr + a.m->attn.n_kv_heads * hd]);
    run_prefill(&a);
    run_prefill(&ref);
    double e = rel_l2(a.logits, ref.logits, a.m->cfg.vocab_size);
    printf("    modelopt fixture: rel L2 vs fp32 %.3e\n", e);
    CU_ASSERT(e < 0.2);
    run_close(&a);
    run_close(&ref);
}

// Tensor parallelism over an FP8 checkpoint: row-split layers keep their
// rows' codes and scales, column-split layers their columns with every row's
// scale (the checkpoint's per-channel scales are per output row).
static void test_ckpt_tp_slices(void) {
    const char *fx = fixtures();
    if (!fx) return;
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/ct", fx);
    Run full;
    ModelOptions o0 = {0};
    CU_ASSERT_FATAL(run_open(&full, dir, &o0) == 0);
    const LayerWeights *F = &full.m->layers[0];
    int dim = full.m->cfg.dim, hid = full.m->cfg.hidden_dim, hd = full.m->cfg.head_dim;
    int nh = full.m->cfg.n_heads, nkv = full.m->cfg.n_kv_heads;
    for (int r = 0; r < 2; r++) {
        Run part;
        ModelOptions o = {.tp_rank = r, .tp_size = 2};
        CU_ASSERT_FATAL(run_open(&part, dir, &o) == 0);
        const LayerWeights *P = &part.m->layers[0];
        // gate|up: rank r holds rows [r*hid/2, (r+1)*hid/2) of each
        const uint8_t *fg = F->wgu.data, *pg = P->wgu.data;
        const float *fs = F->wgu.scale, *ps = P->wgu.scale;
        int h2 = hid / 2;
        for (int p = 0; p < 2; p++) {
            CU_ASSERT(memcmp(pg + (size_t)p * h2 * dim, fg + ((size_t)p * hid + r * h2) * dim,
                             (size_t)h2 * dim) == 0);
            CU_ASSERT(memcmp(ps + p * h2, fs + p * hid + r * h2, sizeof(float) * h2) == 0);
        }
        // q rows of this rank's heads
        int nq = nh / 2 * hd;
        CU_ASSERT(memcmp(P->wqkv.data, (const uint8_t *)F->wqkv.data + (size_t)r * nq * dim,
                         (size_t)nq * dim) == 0);
        (void)nkv;
        // down: columns [r*h2, (r+1)*h2) of every row, all rows' scales
        const uint8_t *fd = F->wdown.data, *pd = P->wdown.data;
        int ok = 1;
        for (int o2 = 0; o2 < dim && ok; o2++)
            ok = memcmp(pd + (size_t)o2 * h2, fd + (size_t)o2 * hid + r * h2, h2) == 0;
        CU_ASSERT(ok);
        CU_ASSERT(memcmp(P->wdown.scale, F->wdown.scale, sizeof(float) * dim) == 0);
        run_close(&part);
    }
    run_close(&full);
}

// `sluice quantize --fp8` writes what the fixture writer writes, and a
// calibrated ModelOpt checkpoint that loads.
static void test_quantize_command(void) {
    const char *fx = fixtures();
    const char *bin = getenv("SLUICE_BIN");
    if (!fx || !bin) {
        printf("skipped: needs the fixtures and SLUICE_BIN\n");
        return;
    }
    char cmd[4096], out[8192], a[1200], b[1200];
    snprintf(cmd, sizeof cmd, "%s quantize --fp8 --model %s --output %s/q-ct", bin, tu_path(tiny),
             tu_tmpdir());
    CU_ASSERT_EQUAL_FATAL(tu_run_cmd(cmd, out, sizeof out), 0);
    // the same tensors as the independent writer (headers may order keys differently)
    snprintf(a, sizeof a, "%s/q-ct", tu_tmpdir());
    snprintf(b, sizeof b, "%s/ct", fx);
    Run x, y;
    ModelOptions o0 = {0};
    CU_ASSERT_FATAL(run_open(&x, a, &o0) == 0);
    CU_ASSERT_FATAL(run_open(&y, b, &o0) == 0);
    for (int l = 0; l < x.m->cfg.n_layers; l++) {
        const LinearWeight *wx = &x.m->layers[l].wdown, *wy = &y.m->layers[l].wdown;
        CU_ASSERT(memcmp(wx->data, wy->data, (size_t)wx->out_dim * wx->in_dim) == 0);
    }
    run_close(&x);
    run_close(&y);
    // calibrated, ModelOpt layout, on two prompts given as ids
    const char *t = tu_tmpdir();
    snprintf(cmd, sizeof cmd,
             "printf '{\"prompt\": \"def add(a, b):\"}\\n{\"prompt\": \"import os\"}\\n' > %s/c.jsonl && "
             "%s prep --model %s --input %s/c.jsonl --output %s/c.h5 && "
             "%s quantize --fp8 --format modelopt --model %s --output %s/q-mo --calib %s/c.h5",
             t, bin, tu_path(tiny), t, t, bin, tu_path(tiny), t, t);
    int rc = tu_run_cmd(cmd, out, sizeof out);
    if (rc) fprintf(stderr, "%s\n", out);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    snprintf(a, sizeof a, "%s/q-mo", tu_tmpdir());
    ModelOptions ok = {.kv_fp8 = 1};
    CU_ASSERT_FATAL(run_open(&x, a, &ok) == 0);
    CU_ASSERT(x.m->layers[0].wo.in_scale > 0);
    CU_ASSERT(x.m->layers[0].k_scale != 1.0f);
    CU_ASSERT(!x.m->layers[0].wgu.scale_per_row || ((float *)x.m->layers[0].wgu.scale)[0] ==
                                                        ((float *)x.m->layers[0].wgu.scale)[1]);
    run_prefill(&x);
    long bad = 0;
    for (int i = 0; i < x.m->cfg.vocab_size; i++) bad += !isfinite(x.logits[i]);
    CU_ASSERT_EQUAL(bad, 0);
    run_close(&x);
    // bad input: an already quantised checkpoint, a missing model
    snprintf(cmd, sizeof cmd, "%s quantize --fp8 --model %s/ct --output %s/q2", bin, fx, tu_tmpdir());
    CU_ASSERT_NOT_EQUAL(tu_run_cmd(cmd, out, sizeof out), 0);
    CU_ASSERT(strstr(out, "already quantised") != NULL);
    snprintf(cmd, sizeof cmd, "%s quantize --model %s --output %s/q3", bin, tu_path(tiny), tu_tmpdir());
    CU_ASSERT_EQUAL(tu_run_cmd(cmd, out, sizeof out), 2);
}

int main(void) {
    static const tu_test fmt[] = {
        {"e4m3 codec", test_codec},
        {"quantisation rules", test_quantize_rules},
        {"fp8 linear", test_linear_fp8},
        {NULL, NULL},
    };
    static const tu_test models[] = {
        {"demo model fp8 weights / kv close to fp32", test_model_fp8_close},
        {"compressed-tensors fixture == --dtype fp8", test_ckpt_compressed_tensors},
        {"modelopt fixture: scales, kv scales", test_ckpt_modelopt},
        {"tp slices of an fp8 checkpoint", test_ckpt_tp_slices},
        {"sluice quantize --fp8", test_quantize_command},
        {NULL, NULL},
    };
    tu_suite("fp8_format", fmt);
    tu_suite("fp8_models", models);
    return tu_main();
}
