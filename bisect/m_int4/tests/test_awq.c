// test_awq.c: INT4 weights on the CPU: the W4A16 twin (kernels/cpu/int4_cpu.c)
// and AutoAWQ checkpoints (src/quant_awq.c).
//
// The AWQ fixture is written at test time by tests/awq/make_awq_fixture.py
// (numpy + safetensors; the tests skip with a message when python3 lacks
// them) from tests/models/tiny-code-llama, following AutoAWQ's published gemm
// layout, together with the dequantised model as a plain F32 checkpoint. The
// loaded INT4 weights must dequantise to exactly the reference weights (every
// layer, fused q|k|v and gate|up, --tp 1 and 2), modules_to_not_convert must
// stay plain, and the logits must equal the reference model's bit for bit.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/int4_cpu.h"
#include "cpu/ops_cpu.h"
#include "h5io.h"
#include "model.h"
#include "quant_awq.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// the CPU twin

// Random INT4 matrix of (out, in) with group g (asymmetric when zp).
typedef struct {
    uint32_t *q;
    uint16_t *s;
    uint8_t *z;
} Q4;

static Q4 q4_random(int out, int in, int g, int zp, uint64_t seed) {
    Q4 w;
    size_t ng = (size_t)out * (in / g);
    w.q = malloc(sizeof(uint32_t) * (size_t)out * (in / 8));
    w.s = malloc(2 * ng);
    w.z = zp ? malloc(ng) : NULL;
    cpu_int4_fill_random(w.q, w.s, w.z, out, in, g, seed, 0.01f);
    return w;
}

static void q4_free(Q4 *w) {
    free(w->q);
    free(w->s);
    free(w->z);
}

// The twin equals cpu_linear on the dequantised matrix, bit for bit, and the
// dequantised values are what the format says.
static void test_twin_linear(void) {
    int shapes[][4] = {{1, 72, 128, 128}, {7, 130, 384, 64}, {33, 256, 640, 128}, {5, 40, 96, 32}};
    for (int t = 0; t < 4; t++) {
        int n = shapes[t][0], out = shapes[t][1], in = shapes[t][2], g = shapes[t][3];
        for (int zp = 0; zp < 2; zp++) {
            Q4 w = q4_random(out, in, g, zp, 11 + t);
            float *wd = malloc(sizeof(float) * out * in), *x = malloc(sizeof(float) * n * in);
            float *y = malloc(sizeof(float) * n * out), *ref = malloc(sizeof(float) * n * out);
            float *bias = malloc(sizeof(float) * out);
            uint64_t rng = 5 + t;
            for (int i = 0; i < n * in; i++) x[i] = tu_rand_normal(&rng);
            for (int i = 0; i < out; i++) bias[i] = tu_rand_normal(&rng);
            cpu_int4_dequant(wd, w.q, w.s, w.z, out, in, g);
            // spot-check the format on a few elements
            for (int e = 0; e < 50; e++) {
                int o = (int)(tu_rand_u64(&rng) % out), k = (int)(tu_rand_u64(&rng) % in);
                int q = (w.q[(size_t)o * (in / 8) + k / 8] >> (4 * (k % 8))) & 15;
                int z = zp ? w.z[(size_t)o * (in / g) + k / g] : 8;
                float s = sl_f16_to_f32(w.s[(size_t)o * (in / g) + k / g]);
                CU_ASSERT_EQUAL(wd[(size_t)o * in + k], ((float)q - (float)z) * s);
            }
            memset(y, 0xFF, sizeof(float) * n * out);
            cpu_linear(ref, x, wd, bias, n, in, out);
            cpu_w4a16_linear(y, x, w.q, w.s, w.z, bias, n, in, out, g);
            CU_ASSERT_EQUAL(memcmp(y, ref, sizeof(float) * n * out), 0);
            free(wd), free(x), free(y), free(ref), free(bias);
            q4_free(&w);
        }
    }
}

// Round-to-nearest quantisation: every weight within half a step (clip
// aside), both modes.
static void test_twin_quantize(void) {
    int out = 37, in = 256, g = 64;
    uint64_t rng = 3;
    float *w = malloc(sizeof(float) * out * in), *wd = malloc(sizeof(float) * out * in);
    for (int i = 0; i < out * in; i++) w[i] = 0.02f * tu_rand_normal(&rng);
    for (int i = 0; i < in; i++) w[i] = 0.0f; // an all-zero row
    uint32_t *q = malloc(4 * out * in / 8);
    uint16_t *s = malloc(2 * out * in / g);
    uint8_t *z = malloc(out * in / g);
    for (int zp = 0; zp < 2; zp++) {
        cpu_int4_quantize(q, s, zp ? z : NULL, w, NULL, out, in, g);
        cpu_int4_dequant(wd, q, s, zp ? z : NULL, out, in, g);
        long bad = 0;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++) {
                float st = sl_f16_to_f32(s[o * (in / g) + k / g]);
                float d = fabsf(wd[o * in + k] - w[o * in + k]);
                // asymmetric: half a step (+ the zero point's rounding); symmetric:
                // half a step except the clamp of +max (at most one step)
                float tol = (zp ? 1.01f : 1.01f) * st + 1e-7f;
                if (!(d <= tol)) bad++;
            }
        CU_ASSERT_EQUAL(bad, 0);
        for (int k = 0; k < in; k++) CU_ASSERT_EQUAL(wd[k], 0.0f);
    }
    free(w), free(wd), free(q), free(s), free(z);
}

// ----------------------------------------------------------------------------
// AWQ checkpoints

static char fx_dir[8][512]; // [group 64: awq, ref] [group 128: awq, ref]
static int fx_state = -1;   // -1 not tried, 0 unavailable, 1 made

static int fixtures(void) {
    if (fx_state >= 0) return fx_state;
    fx_state = 0;
    const char *tmp = tu_tmpdir();
    int groups[2] = {64, 128};
    for (int i = 0; i < 2; i++) {
        snprintf(fx_dir[2 * i], sizeof fx_dir[0], "%s/awq-g%d", tmp, groups[i]);
        snprintf(fx_dir[2 * i + 1], sizeof fx_dir[0], "%s/ref-g%d", tmp, groups[i]);
        char cmd[8192], out[4096];
        snprintf(cmd, sizeof cmd,
                 "python3 %s --model %s --out %s --ref %s --group %d "
                 "--not-convert layers.7.mlp,layers.6.self_attn.k_proj",
                 tu_path("tests/awq/make_awq_fixture.py"), tu_path("tests/models/tiny-code-llama"),
                 fx_dir[2 * i], fx_dir[2 * i + 1], groups[i]);
        if (tu_run_cmd(cmd, out, sizeof out) != 0) {
            printf("skipped: the AWQ fixture needs python3 with numpy and safetensors:\n%s\n",
                   out);
            return 0;
        }
    }
    fx_state = 1;
    return 1;
}

static Model *load(const char *dir, Backend *be, int rank, int tp, sl_err *err) {
    Model *m = NULL;
    ModelOptions mo = {.max_tokens = 64, .max_seqs = 4, .tp_rank = rank, .tp_size = tp};
    if (model_load(&m, dir, be, &mo, err)) return NULL;
    return m;
}

// w (INT4 or F32 on the CPU backend) dequantised into dst (out, in).
static void weight_f32(const LinearWeight *w, float *dst) {
    if (w->fmt == WFMT_INT4)
        cpu_int4_dequant(dst, w->data, w->scale, w->zeros, w->out_dim, w->in_dim, w->group_size);
    else
        memcpy(dst, w->data, sizeof(float) * (size_t)w->out_dim * w->in_dim);
}

static int same_weight(const char *what, const LinearWeight *a, const LinearWeight *ref) {
    if (a->out_dim != ref->out_dim || a->in_dim != ref->in_dim) {
        fprintf(stderr, "%s: shape (%d, %d) vs (%d, %d)\n", what, a->out_dim, a->in_dim,
                ref->out_dim, ref->in_dim);
        return 0;
    }
    size_t n = (size_t)a->out_dim * a->in_dim;
    float *d = malloc(sizeof(float) * n);
    weight_f32(a, d);
    long bad = tu_compare_f32(what, d, ref->data, (long)n, 0.0f, 0.0f);
    free(d);
    return bad == 0;
}

static void check_round_trip(int tp) {
    if (!fixtures()) return;
    for (int r = 0; r < tp; r++) {
        Backend *be = backend_cpu_create(0);
        sl_err err = {{0}};
        Model *a = load(fx_dir[0], be, r, tp, &err);
        if (!a) fprintf(stderr, "load %s: %s\n", fx_dir[0], err.msg);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a);
        Model *ref = load(fx_dir[1], be, r, tp, &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
        for (int l = 0; l < a->cfg.n_layers; l++) {
            LayerWeights *A = &a->layers[l], *R = &ref->layers[l];
            // plain where the fixture kept them so: layer 7's MLP
            // (modules_to_not_convert) and layer 6's q|k|v (k kept: mixed)
            CU_ASSERT_EQUAL(A->wqkv.fmt, l == 6 ? WFMT_F32 : WFMT_INT4);
            CU_ASSERT_EQUAL(A->wo.fmt, WFMT_INT4);
            CU_ASSERT_EQUAL(A->wgu.fmt, l == 7 ? WFMT_F32 : WFMT_INT4);
            CU_ASSERT_EQUAL(A->wdown.fmt, l == 7 ? WFMT_F32 : WFMT_INT4);
            if (A->wo.fmt == WFMT_INT4) CU_ASSERT_EQUAL(A->wo.group_size, 64);
            char what[64];
            snprintf(what, sizeof what, "tp %d rank %d layer %d qkv", tp, r, l);
            CU_ASSERT(same_weight(what, &A->wqkv, &R->wqkv));
            snprintf(what, sizeof what, "tp %d rank %d layer %d o", tp, r, l);
            CU_ASSERT(same_weight(what, &A->wo, &R->wo));
            snprintf(what, sizeof what, "tp %d rank %d layer %d gate|up", tp, r, l);
            CU_ASSERT(same_weight(what, &A->wgu, &R->wgu));
            snprintf(what, sizeof what, "tp %d rank %d layer %d down", tp, r, l);
            CU_ASSERT(same_weight(what, &A->wdown, &R->wdown));
        }
        model_free(a);
        model_free(ref);
        be->destroy(be);
    }
}

static void test_awq_round_trip_tp1(void) { check_round_trip(1); }
static void test_awq_round_trip_tp2(void) { check_round_trip(2); }

// Last-position logits of a 20-token prompt: AWQ model == dequantised model.
static void test_awq_logits(void) {
    if (!fixtures()) return;
    Backend *be = backend_cpu_create(0);
    sl_err err = {{0}};
    float *lg[2];
    for (int i = 0; i < 2; i++) {
        Model *m = load(fx_dir[i], be, 0, 1, &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(m);
        model_kv_alloc(m, 4, 16);
        enum { N = 20 };
        int32_t tok[N], pos[N], seq_of[N], slots[N], bt[2] = {0, 1};
        int32_t seq_start[2] = {0, N}, kv_len[1] = {N}, last = N - 1;
        for (int t = 0; t < N; t++) tok[t] = 3 + (t * 37) % 1000, pos[t] = t, seq_of[t] = 0, slots[t] = t;
        Batch b = {.n_tokens = N, .n_seqs = 1, .tokens = tok, .pos = pos, .seq_of = seq_of,
                   .slots = slots, .seq_start = seq_start, .kv_len = kv_len, .block_tables = bt,
                   .max_blocks = 2, .n_logits = 1, .logit_rows = &last};
        lg[i] = malloc(sizeof(float) * m->cfg.vocab_size);
        model_forward(m, &b, lg[i]);
        if (i == 1) CU_ASSERT_EQUAL(tu_compare_f32("logits", lg[0], lg[1], m->cfg.vocab_size, 0, 0), 0);
        model_free(m);
    }
    free(lg[0]);
    free(lg[1]);
    be->destroy(be);
}

// Group 128 cannot split o_proj's 384 inputs over 2 ranks: a clear error.
static void test_awq_tp_misaligned(void) {
    if (!fixtures()) return;
    Backend *be = backend_cpu_create(0);
    sl_err err = {{0}};
    Model *m = load(fx_dir[2], be, 1, 2, &err);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "--tp 2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "o_proj.qweight"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "groups of 128"));
    printf("  expected error: %s\n", err.msg);
    model_free(m);
    // group 128 at --tp 1 loads
    m = load(fx_dir[2], be, 0, 1, &err);
    CU_ASSERT_PTR_NOT_NULL(m);
    model_free(m);
    be->destroy(be);
}

// config.json's quantization_config is checked: another method, other bits,
// another version, or a group size the tensors contradict are clear errors.
static void test_awq_config_errors(void) {
    if (!fixtures()) return;
    static const char *const cases[][2] = {
        {"\"quant_method\": \"awq\"", "\"quant_method\": \"gptq\""},
        {"\"bits\": 4", "\"bits\": 3"},
        {"\"version\": \"gemm\"", "\"version\": \"gemv\""},
        {"\"group_size\": 64", "\"group_size\": 128"},
    };
    static const char *const expect[] = {"quant_method", "bits", "version", "group_size"};
    char cfgp[700];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", fx_dir[0]);
    sl_err err = {{0}};
    size_t len = 0;
    char *orig = sl_read_file(cfgp, &len, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(orig);
    Backend *be = backend_cpu_create(0);
    for (int i = 0; i < 4; i++) {
        char *at = strstr(orig, cases[i][0]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(at);
        char buf[8192];
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - orig), orig, cases[i][1],
                 at + strlen(cases[i][0]));
        CU_ASSERT_FATAL(tu_write_file(cfgp, buf, strlen(buf)) == 0);
        Model *m = load(fx_dir[0], be, 0, 1, &err);
        CU_ASSERT_PTR_NULL(m);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, expect[i]));
        printf("  expected error: %s\n", err.msg);
        model_free(m);
    }
    CU_ASSERT_FATAL(tu_write_file(cfgp, orig, len) == 0);
    free(orig);
    be->destroy(be);
}

// ----------------------------------------------------------------------------
// sluice quantize: RTN and AWQ checkpoints load back (through the AWQ loader)
// and stay close to the source weights

// Every INT4 weight of q within one quantisation step of the plain model's.
static void check_close(Model *q, Model *ref, int awq) {
    for (int l = 0; l < q->cfg.n_layers; l++) {
        LinearWeight *qs[4] = {&q->layers[l].wqkv, &q->layers[l].wo, &q->layers[l].wgu,
                               &q->layers[l].wdown};
        LinearWeight *rs[4] = {&ref->layers[l].wqkv, &ref->layers[l].wo, &ref->layers[l].wgu,
                               &ref->layers[l].wdown};
        for (int k = 0; k < 4; k++) {
            CU_ASSERT_EQUAL_FATAL(qs[k]->fmt, WFMT_INT4);
            if (awq && k != 1) continue; // scaled by AWQ: only o_proj (GQA: not scaled) compares
            int out = qs[k]->out_dim, in = qs[k]->in_dim, g = qs[k]->group_size;
            float *d = malloc(sizeof(float) * out * in);
            weight_f32(qs[k], d);
            const float *w = rs[k]->data;
            long bad = 0;
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    float st = sl_f16_to_f32(((uint16_t *)qs[k]->scale)[o * (in / g) + i / g]);
                    // RTN: half a step; AWQ's clipping (down to half the group's
                    // max |w|) may move outliers by up to ~15 steps
                    float tol = awq ? 16.0f * st : 0.51f * st;
                    if (!(fabsf(d[o * in + i] - w[o * in + i]) <= tol)) bad++;
                }
            if (bad) fprintf(stderr, "  %s layer %d linear %d: %ld weights off\n", awq ? "awq" : "rtn", l, k, bad);
            CU_ASSERT_EQUAL(bad, 0);
            free(d);
        }
    }
}

static void test_quantize_rtn_awq(void) {
    const char *tmp = tu_tmpdir();
    const char *model = tu_path("tests/models/tiny-code-llama");
    char rtn[600], awq[600], calib[600];
    snprintf(rtn, sizeof rtn, "%s/q-rtn", tmp);
    snprintf(awq, sizeof awq, "%s/q-awq", tmp);
    snprintf(calib, sizeof calib, "%s/calib.h5", tmp);
    // calibration: 4 prompts of 64 pseudo-random tokens
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    int32_t tok[256];
    int64_t off[5] = {0, 64, 128, 192, 256};
    uint64_t rng = 9;
    for (int i = 0; i < 256; i++) tok[i] = 3 + (int32_t)(tu_rand_u64(&rng) % 8000);
    ps.n = 4, ps.n_tokens = 256, ps.tokens = tok, ps.offsets = off;
    sl_err err = {{0}};
    CU_ASSERT_FATAL(h5_prompts_write(calib, &ps, &err) == 0);
    AwqQuantOptions o;
    awq_quant_options_defaults(&o);
    o.model_dir = model;
    o.group = 64;
    o.out_dir = rtn;
    o.method = AWQ_QUANT_RTN;
    if (awq_quantize(&o, &err)) fprintf(stderr, "rtn: %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(err.msg[0], 0);
    o.out_dir = awq;
    o.method = AWQ_QUANT_AWQ;
    o.calib_path = calib;
    o.search_rows = 64, o.clip_rows = 32, o.n_grid = 4;
    if (awq_quantize(&o, &err)) fprintf(stderr, "awq: %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(err.msg[0], 0);

    Backend *be = backend_cpu_create(0);
    Model *ref = load(model, be, 0, 1, &err), *mr = load(rtn, be, 0, 1, &err);
    Model *ma = load(awq, be, 0, 1, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ma);
    CU_ASSERT_EQUAL(mr->layers[0].wqkv.group_size, 64);
    check_close(mr, ref, 0);
    check_close(ma, ref, 1);
    // --int4-awq without --calib is a clear error
    o.calib_path = NULL;
    CU_ASSERT_NOT_EQUAL(awq_quantize(&o, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "--calib"));
    // a group that does not divide the layers
    o.method = AWQ_QUANT_RTN, o.group = 96;
    CU_ASSERT_NOT_EQUAL(awq_quantize(&o, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "--group 96"));
    model_free(ref), model_free(mr), model_free(ma);
    be->destroy(be);
}

int main(void) {
    static const tu_test twin[] = {
        {"linear_equals_dequant_then_linear", test_twin_linear},
        {"quantize_rtn", test_twin_quantize},
        {NULL, NULL},
    };
    static const tu_test awq[] = {
        {"round_trip_tp1", test_awq_round_trip_tp1},
        {"round_trip_tp2", test_awq_round_trip_tp2},
        {"logits_equal_dequantised", test_awq_logits},
        {"tp_misaligned_groups", test_awq_tp_misaligned},
        {"config_errors", test_awq_config_errors},
        {NULL, NULL},
    };
    static const tu_test quant[] = {
        {"rtn_and_awq_round_trip", test_quantize_rtn_awq},
        {NULL, NULL},
    };
    tu_suite("int4_cpu_twin", twin);
    tu_suite("awq_checkpoint", awq);
    tu_suite("quantize_int4", quant);
    return tu_main();
}
