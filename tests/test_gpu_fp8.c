// test_gpu_fp8.c: the FP8 and fp32-activation paths of the CUDA backend
// against their CPU twins (kernels/cpu/fp8_cpu.c, ops_cpu.c).
//
// Kernels (random data from fixed seeds, awkward sizes, outputs poisoned
// with 0xFF first so an unwritten element fails):
//   - cuda_quantize_fp8_rows (bf16 and fp32 in, static and dynamic scales):
//     codes and scales bit-exact against cpu_quantize_fp8_rows (same inputs,
//     same fp32 operations).
//   - cuda_rmsnorm_ex / cuda_swiglu_ex emitting FP8 (the fused quantisation),
//     and in fp32: the normalised values come from a differently ordered
//     fp32 sum, so a code may sit one step away from the twin's; decoded
//     values are compared with rtol 1/8 (one e4m3 step) and at most 1% of the
//     codes may differ at all; scales to 1e-5.
//   - cuda_gemm_linear_ex FP8 (per-channel weights x per-token activations,
//     bf16 and fp32 out, with and without bias) against cpu_linear_fp8 on
//     the same codes; fp32 GEMMs (no TF32) against cpu_linear to 1e-5.
//   - cuda_rope_kv_write_ex with an FP8 cache (bf16 and fp32 activations) and
//     an fp32 cache; cuda_paged_attention_ex reading an FP8 cache (bf16
//     tensor-core prefill + split-K decode, mixed in one call) and fp32.
// Model (tests/models/tiny-code-llama):
//   - --dtype f32 on the GPU reproduces the 8 golden greedy continuations
//     exactly (the bf16 path cannot: near-ties).
//   - FP8 weights / FP8 KV on the GPU against the CPU's exact emulation:
//     along the first 16 steps of the golden trajectory, with fp32 and with
//     bf16 activations on the GPU: the GPU's logits no further from the
//     unquantised CPU model than the emulation's are (REL_RATIO), top-1
//     agreeing at 80% of steps; FP8 KV alone with fp32 activations within
//     REL_TOL_KV_F32 of the emulation (see the comment at REL_RATIO).
//   - random FP8 weights generated on the device (the bench path) run a step
//     with finite logits.
// Without a GPU every test prints "skipped: no CUDA device" and passes.
#include <cuda_runtime_api.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "cpu/ops_cpu.h"
#include "cuda/gemm.h"
#include "cuda/ops_cuda.h"
#include "fp8.h"
#include "gpu_testutil.h"
#include "model.h"
#include "testutil.h"
#include "model_runner.h"

#define BLOCK TU_BLOCK
#define MAXT TU_MAXT
// GPU vs the CPU's FP8 emulation. The FP8 kernels are checked code for code
// against their CPU twins above; a whole model cannot be, because every FP8
// linear layer re-quantises its input: a last-bit difference in an
// accumulation (summation order, the tensor cores' FP8 accumulator) moves a
// value across an e4m3 rounding boundary now and then, a flipped code is a 6%
// error on that element, and the flips compound over the layers. Measured on
// an H200 (2026-11-21), GPU vs CPU emulation, mean / max rel L2 of the logits:
// FP8 KV alone with fp32 activations 1.5e-3 / 1.6e-2 (one quantisation point
// per layer); FP8 weights with fp32 activations 6.8e-2 / 1.2e-1, with bf16
// activations 7.5e-2 / 1.2e-1 (four per layer). So the model test asks
// what matters: that the GPU's FP8 model is as close to the unquantised model
// as the CPU's exact emulation is (REL_RATIO, REL_SLACK), and that the two
// agree on the top-1 token at most steps. The absolute bounds catch a broken
// path (wrong scale or code, an unwritten buffer: rel L2 ~1 or NaN).
#define REL_TOL_KV_F32 5e-3 // mean, FP8 KV alone with fp32 activations
#define REL_TOL_MEAN 1.5e-1
#define REL_TOL_MAX 3e-1
#define REL_RATIO 1.3  // GPU's error to the unquantised model vs the CPU emulation's
#define REL_SLACK 4e-2 // + bf16 activations' own error (3e-2 in test_gpu_model)

static const int NS[] = {1, 3, 37, 300};
#define N_NS (int)(sizeof NS / sizeof NS[0])

// ----------------------------------------------------------------------------
// helpers

static void get(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

// Host values (bf16-exact when as_bf16) uploaded as bf16 or fp32.
static void *dev_act(const float *f, size_t n, int f32) {
    if (f32) return dev_copy(f, sizeof(float) * n);
    uint16_t *h = sl_malloc(2 * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_bf16(f[i]);
    void *d = dev_copy(h, 2 * n);
    free(h);
    return d;
}

static void get_act(float *dst, const void *src, size_t n, int f32) {
    if (f32) {
        get(dst, src, sizeof(float) * n);
        return;
    }
    uint16_t *h = sl_malloc(2 * (n ? n : 1));
    get(h, src, 2 * n);
    for (size_t i = 0; i < n; i++) dst[i] = sl_bf16_to_f32(h[i]);
    free(h);
}

static void fill(float *f, size_t n, uint64_t *rng, float scale, int round) {
    for (size_t i = 0; i < n; i++) {
        float v = scale * tu_rand_normal(rng);
        f[i] = round ? bf16r(v) : v;
    }
}

// FP8 outputs of a fused op against the twin's: decoded values within one
// e4m3 step, at most 1% of codes different, scales to 1e-5.
static long check_fp8(const char *what, const uint8_t *gq, const float *gs, const uint8_t *rq,
                      const float *rs, int n, int dim) {
    long bad = 0, diff = 0;
    for (int i = 0; i < n; i++) {
        if (!(fabsf(gs[i] - rs[i]) <= 1e-5f * fabsf(rs[i]))) {
            if (bad++ < 5)
                fprintf(stderr, "  %s: row %d scale %g, want %g\n", what, i, gs[i], rs[i]);
        }
        for (int j = 0; j < dim; j++) {
            size_t k = (size_t)i * dim + j;
            if (gq[k] == rq[k]) continue;
            diff++;
            float g = sl_e4m3_to_f32(gq[k]) * gs[i], r = sl_e4m3_to_f32(rq[k]) * rs[i];
            if (!(fabsf(g - r) <= 0.13f * fabsf(r) + rs[i] * (1.0f / 512.0f))) {
                if (bad++ < 5)
                    fprintf(stderr, "  %s: [%d,%d] code 0x%02x (%g), want 0x%02x (%g)\n", what, i,
                            j, gq[k], g, rq[k], r);
            }
        }
    }
    if (diff > (long)n * dim / 100 + 1) {
        fprintf(stderr, "  %s: %ld of %ld codes differ\n", what, diff, (long)n * dim);
        bad++;
    }
    return bad;
}

// ----------------------------------------------------------------------------
// quantisation: bit-exact

static void test_quantize_rows(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 5;
    // 16, 1000, 4096, 8192: bf16 takes the vector kernel (1, 1 partial, 2 and
    // 8 vectors a thread); 383 and 12288: the scalar one
    const int dims[] = {16, 383, 1000, 4096, 8192, 12288};
    for (int f32 = 0; f32 < 2; f32++)
        for (int di = 0; di < 6; di++)
            for (int ni = 0; ni < N_NS; ni++)
                for (int st = 0; st < 2; st++) {
                    int n = NS[ni], dim = dims[di];
                    size_t e = (size_t)n * dim;
                    float *x = sl_malloc(sizeof(float) * e);
                    fill(x, e, &rng, 3.0f, !f32);
                    if (n > 1) memset(x + dim, 0, sizeof(float) * dim); // an all-zero row
                    x[0] = f32 ? 1e6f : bf16r(1e6f);                     // saturation / big scale
                    float stat = st ? 0.037f : 0.0f;
                    void *dx = dev_act(x, e, f32);
                    uint8_t *dq = dev_poisoned(e);
                    float *ds = dev_poisoned(sizeof(float) * n);
                    cuda_quantize_fp8_rows(dq, ds, dx, f32, n, dim, stat, 0);
                    uint8_t *gq = sl_malloc(e), *rq = sl_malloc(e);
                    float *gs = sl_malloc(sizeof(float) * n), *rs = sl_malloc(sizeof(float) * n);
                    get(gq, dq, e);
                    get(gs, ds, sizeof(float) * n);
                    cpu_quantize_fp8_rows(rq, rs, x, n, dim, stat);
                    long bad = 0;
                    for (int i = 0; i < n; i++)
                        if (memcmp(&gs[i], &rs[i], 4) && bad++ < 5)
                            fprintf(stderr, "  quant f32=%d n=%d dim=%d st=%d: scale[%d] %g want %g\n",
                                    f32, n, dim, st, i, gs[i], rs[i]);
                    for (size_t k = 0; k < e; k++)
                        if (gq[k] != rq[k] && bad++ < 5)
                            fprintf(stderr, "  quant f32=%d n=%d dim=%d st=%d: [%zu] 0x%02x want 0x%02x (x %g)\n",
                                    f32, n, dim, st, k, gq[k], rq[k], x[k]);
                    CU_ASSERT_EQUAL(bad, 0);
                    free(x);
                    free(gq);
                    free(rq);
                    free(gs);
                    free(rs);
                    cudaFree(dx);
                    cudaFree(dq);
                    cudaFree(ds);
                }
}

// ----------------------------------------------------------------------------
// fused RMSNorm / SwiGLU with FP8 output, and their fp32 forms

static void test_rmsnorm_fp8_f32(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 7;
    const int dims[] = {72, 383, 384, 4096};
    for (int f32 = 0; f32 < 2; f32++)
        for (int di = 0; di < 4; di++)
            for (int ni = 0; ni < N_NS; ni++)
                for (int add = 0; add < 2; add++)
                    for (int fp8 = 0; fp8 < 2; fp8++) {
                        if (!f32 && !fp8) continue; // the bf16 kernels: test_gpu_kernels
                        int n = NS[ni], dim = dims[di];
                        size_t e = (size_t)n * dim;
                        float *x = sl_malloc(sizeof(float) * e), *r = sl_malloc(sizeof(float) * e);
                        float *w = sl_malloc(sizeof(float) * dim), *ref = sl_malloc(sizeof(float) * e);
                        float *xr = sl_malloc(sizeof(float) * e);
                        fill(x, e, &rng, 1.0f, !f32);
                        fill(r, e, &rng, 1.0f, !f32);
                        for (int j = 0; j < dim; j++) w[j] = 1.0f + 0.1f * tu_rand_normal(&rng);
                        float stat = (fp8 && add) ? 0.02f : 0.0f; // static when add, dynamic otherwise
                        void *dx = dev_act(x, e, f32), *dr = dev_act(r, e, f32);
                        float *dw = dev_copy(w, sizeof(float) * dim);
                        void *dout = dev_poisoned(e * 4);
                        float *ds = dev_poisoned(sizeof(float) * n);
                        cuda_rmsnorm_ex(fp8 ? NULL : dout, fp8 ? dout : NULL, fp8 ? ds : NULL, dx,
                                        add ? dr : NULL, dw, n, dim, 1e-5f, f32, stat, 0);
                        // the twin, on the residual as the GPU rounds it
                        memcpy(xr, x, sizeof(float) * e);
                        if (add)
                            for (size_t k = 0; k < e; k++) xr[k] = f32 ? x[k] + r[k] : bf16r(x[k] + r[k]);
                        cpu_rmsnorm(ref, xr, w, n, dim, 1e-5f);
                        char what[96];
                        snprintf(what, sizeof what, "rmsnorm f32=%d fp8=%d add=%d n=%d dim=%d", f32,
                                 fp8, add, n, dim);
                        if (fp8) {
                            uint8_t *gq = sl_malloc(e), *rq = sl_malloc(e);
                            float *gs = sl_malloc(sizeof(float) * n), *rs = sl_malloc(sizeof(float) * n);
                            get(gq, dout, e);
                            get(gs, ds, sizeof(float) * n);
                            cpu_quantize_fp8_rows(rq, rs, ref, n, dim, stat);
                            CU_ASSERT_EQUAL(check_fp8(what, gq, gs, rq, rs, n, dim), 0);
                            free(gq);
                            free(rq);
                            free(gs);
                            free(rs);
                        } else {
                            float *got = sl_malloc(sizeof(float) * e);
                            get(got, dout, sizeof(float) * e);
                            CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)e, 1e-6f, 1e-5f), 0);
                            free(got);
                        }
                        if (add) { // the residual written back
                            float *gx = sl_malloc(sizeof(float) * e);
                            get_act(gx, dx, e, f32);
                            CU_ASSERT_EQUAL(tu_compare_f32(what, gx, xr, (long)e, 0.0f, 0.0f), 0);
                            free(gx);
                        }
                        free(x);
                        free(r);
                        free(w);
                        free(ref);
                        free(xr);
                        cudaFree(dx);
                        cudaFree(dr);
                        cudaFree(dw);
                        cudaFree(dout);
                        cudaFree(ds);
                    }
}

static void test_swiglu_fp8_f32(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 9;
    const int hs[] = {72, 383, 1024};
    for (int f32 = 0; f32 < 2; f32++)
        for (int hi = 0; hi < 3; hi++)
            for (int ni = 0; ni < N_NS; ni++)
                for (int fp8 = 0; fp8 < 2; fp8++) {
                    if (!f32 && !fp8) continue;
                    int n = NS[ni], h = hs[hi];
                    size_t e = (size_t)n * h;
                    float *gu = sl_malloc(sizeof(float) * 2 * e), *ref = sl_malloc(sizeof(float) * e);
                    fill(gu, 2 * e, &rng, 2.0f, !f32);
                    float stat = (fp8 && ni == 2) ? 0.01f : 0.0f;
                    void *dgu = dev_act(gu, 2 * e, f32), *dout = dev_poisoned(e * 4);
                    float *ds = dev_poisoned(sizeof(float) * n);
                    cuda_swiglu_ex(fp8 ? NULL : dout, fp8 ? dout : NULL, fp8 ? ds : NULL, dgu, n, h,
                                   f32, stat, 0);
                    cpu_swiglu(ref, gu, n, h);
                    char what[96];
                    snprintf(what, sizeof what, "swiglu f32=%d fp8=%d n=%d h=%d", f32, fp8, n, h);
                    if (fp8) {
                        uint8_t *gq = sl_malloc(e), *rq = sl_malloc(e);
                        float *gs = sl_malloc(sizeof(float) * n), *rs = sl_malloc(sizeof(float) * n);
                        get(gq, dout, e);
                        get(gs, ds, sizeof(float) * n);
                        cpu_quantize_fp8_rows(rq, rs, ref, n, h, stat);
                        CU_ASSERT_EQUAL(check_fp8(what, gq, gs, rq, rs, n, h), 0);
                        free(gq);
                        free(rq);
                        free(gs);
                        free(rs);
                    } else {
                        float *got = sl_malloc(sizeof(float) * e);
                        get(got, dout, sizeof(float) * e);
                        CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)e, 1e-6f, 1e-5f), 0);
                        free(got);
                    }
                    free(gu);
                    free(ref);
                    cudaFree(dgu);
                    cudaFree(dout);
                    cudaFree(ds);
                }
}

// ----------------------------------------------------------------------------
// GEMMs: FP8 (outer-vector scales) and fp32

static void test_gemm_fp8_f32(void) {
    if (!tu_gpu_ready()) return;
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreate(&st));
    cuda_gemm *g = cuda_gemm_create(st, 0);
    // scratch of the fp32 + rescale fallback (used where cuBLASLt has no
    // outer-vector-scaled FP8 kernel): the largest n x out below
    cuda_gemm_reserve_fp8(g, (size_t)4096 * 1040);
    uint64_t rng = 13;
    const int shapes[][2] = {{64, 384}, {640, 384}, {384, 1024}, {1040, 112}}; // (out, in)
    for (int si = 0; si < 4; si++)
        for (int ni = 0; ni < N_NS; ni++)
            for (int bias = 0; bias < 2; bias++) {
                int out = shapes[si][0], in = shapes[si][1], n = NS[ni];
                float *x = sl_malloc(sizeof(float) * n * in), *w = sl_malloc(sizeof(float) * out * in);
                float *b = sl_malloc(sizeof(float) * out);
                fill(x, (size_t)n * in, &rng, 1.0f, 0);
                fill(w, (size_t)out * in, &rng, 0.05f, 0);
                for (int o = 0; o < out; o++) w[(size_t)o * in] *= 1.0f + o % 7; // uneven rows
                fill(b, out, &rng, 0.5f, 1);
                uint8_t *xq = sl_malloc((size_t)n * in), *wq = sl_malloc((size_t)out * in);
                float *xs = sl_malloc(sizeof(float) * n), *ws = sl_malloc(sizeof(float) * out);
                cpu_quantize_fp8_rows(xq, xs, x, n, in, 0.0f);
                cpu_quantize_weight_fp8(wq, ws, w, out, in, 1, NULL);
                LinearWeight lw = {.fmt = WFMT_FP8_E4M3, .out_dim = out, .in_dim = in,
                                   .scale_per_row = 1};
                lw.data = dev_copy(wq, (size_t)out * in);
                lw.scale = dev_copy(ws, sizeof(float) * out);
                if (bias) { // fp32 then bf16 copies (gemm.h)
                    char *hb = sl_calloc(1, cuda_gemm_bias_bytes(out));
                    memcpy(hb, b, sizeof(float) * out);
                    uint16_t *hb16 = (uint16_t *)(hb + cuda_gemm_bias_bf16_offset(out));
                    for (int o = 0; o < out; o++) hb16[o] = sl_f32_to_bf16(b[o]);
                    lw.bias = dev_copy(hb, cuda_gemm_bias_bytes(out));
                    free(hb);
                }
                uint8_t *dxq = dev_copy(xq, (size_t)n * in);
                float *dxs = dev_copy(xs, sizeof(float) * n);
                float *ref = sl_malloc(sizeof(float) * n * out), *got = sl_malloc(sizeof(float) * n * out);
                cpu_linear_fp8(ref, xq, xs, wq, ws, 1, bias ? b : NULL, n, in, out);
                // fp32 output only without bias: cuBLASLt's FP8 bias must be bf16
                // (SLUICE_TEST_FP8_SCALAR_ONLY=1: only the per-tensor path below)
                const char *so = getenv("SLUICE_TEST_FP8_SCALAR_ONLY");
                for (int yf = 0; yf < (bias ? 1 : 2) && !(so && so[0] == '1'); yf++) {
                    void *dy = dev_poisoned((size_t)n * out * 4);
                    cuda_gemm_linear_ex(g, dy, yf ? GEMM_OUT_F32 : GEMM_OUT_BF16, dxq, GEMM_IN_FP8,
                                        dxs, &lw, n);
                    CUDA_CHECK(cudaStreamSynchronize(st));
                    get_act(got, dy, (size_t)n * out, yf);
                    char what[96];
                    snprintf(what, sizeof what, "gemm fp8 %dx%d n=%d bias=%d out=%s", out, in, n,
                             bias, yf ? "f32" : "bf16");
                    // fp32 accumulation order (and fast accumulation) vs the twin
                    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)n * out, 5e-3f,
                                                   yf ? 5e-3f : 1.2e-2f), 0);
                    cudaFree(dy);
                }
                // per-tensor weight scale + static activation scale: cuBLASLt's
                // scalar scale pointers (the fast path on Hopper)
                {
                    const float sa = 4.0f / 448.0f;
                    uint8_t *xq2 = sl_malloc((size_t)n * in), *wq2 = sl_malloc((size_t)out * in);
                    float *xs2 = sl_malloc(sizeof(float) * n), *ws2 = sl_malloc(sizeof(float) * out);
                    cpu_quantize_fp8_rows(xq2, xs2, x, n, in, sa);
                    cpu_quantize_weight_fp8(wq2, ws2, w, out, in, 0, NULL);
                    LinearWeight lt = lw;
                    lt.scale_per_row = 0;
                    lt.in_scale = sa;
                    lt.data = dev_copy(wq2, (size_t)out * in);
                    lt.scale = dev_copy(ws2, sizeof(float) * out);
                    uint8_t *dxq2 = dev_copy(xq2, (size_t)n * in);
                    float *dxs2 = dev_copy(xs2, sizeof(float) * n);
                    cpu_linear_fp8(ref, xq2, xs2, wq2, ws2, 0, bias ? b : NULL, n, in, out);
                    void *dy = dev_poisoned((size_t)n * out * 4);
                    cuda_gemm_linear_ex(g, dy, GEMM_OUT_BF16, dxq2, GEMM_IN_FP8, dxs2, &lt, n);
                    CUDA_CHECK(cudaStreamSynchronize(st));
                    get_act(got, dy, (size_t)n * out, 0);
                    char what[96];
                    snprintf(what, sizeof what, "gemm fp8 per-tensor %dx%d n=%d bias=%d", out, in,
                             n, bias);
                    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)n * out, 5e-3f, 1.2e-2f), 0);
                    cudaFree(dy);
                    cudaFree(lt.data);
                    cudaFree(lt.scale);
                    cudaFree(dxq2);
                    cudaFree(dxs2);
                    free(xq2), free(wq2), free(xs2), free(ws2);
                }
                // fp32 GEMM on the raw values (no TF32: 1e-5)
                LinearWeight lf = {.fmt = WFMT_F32, .out_dim = out, .in_dim = in};
                lf.data = dev_copy(w, sizeof(float) * out * in);
                lf.bias = lw.bias;
                float *dx = dev_copy(x, sizeof(float) * n * in);
                void *dy = dev_poisoned((size_t)n * out * 4);
                cuda_gemm_linear_ex(g, dy, GEMM_OUT_F32, dx, GEMM_IN_F32, NULL, &lf, n);
                CUDA_CHECK(cudaStreamSynchronize(st));
                get(got, dy, sizeof(float) * n * out);
                cpu_linear(ref, x, w, bias ? b : NULL, n, in, out);
                char what[96];
                snprintf(what, sizeof what, "gemm f32 %dx%d n=%d bias=%d", out, in, n, bias);
                CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)n * out, 1e-5f, 1e-5f), 0);
                cudaFree(dy);
                cudaFree(dx);
                cudaFree(lf.data);
                cudaFree(lw.data);
                cudaFree(lw.scale);
                if (lw.bias) cudaFree(lw.bias);
                cudaFree(dxq);
                cudaFree(dxs);
                free(x);
                free(w);
                free(b);
                free(xq);
                free(wq);
                free(xs);
                free(ws);
                free(ref);
                free(got);
            }
    cuda_gemm_destroy(g);
    CUDA_CHECK(cudaStreamDestroy(st));
}

// FP8 plans of n >= 1024 rows time cuBLASLt's candidates by default
// (gemm.cu); whichever wins must agree with the twin as the first choice
// does. Per-tensor (scalar scales) and per-channel / per-token scales, n
// 1100 and 1300 (one size bucket: the second reuses the first's winners),
// awkward out and in; then SLUICE_GEMM_TUNE=0 times nothing.
static void test_gemm_fp8_tuned(void) {
    if (!tu_gpu_ready()) return;
    const char *env = getenv("SLUICE_GEMM_TUNE");
    char *old = env ? strdup(env) : NULL;
    uint64_t rng = 17;
    const int out = 656, in = 1040, ns[2] = {1100, 1300};
    float *w = sl_malloc(sizeof(float) * out * in);
    fill(w, (size_t)out * in, &rng, 0.05f, 0);
    for (int off = 0; off < 2; off++) {
        if (off) setenv("SLUICE_GEMM_TUNE", "0", 1);
        else unsetenv("SLUICE_GEMM_TUNE");
        cudaStream_t st;
        CUDA_CHECK(cudaStreamCreate(&st));
        cuda_gemm *g = cuda_gemm_create(st, 0);
        cuda_gemm_reserve_fp8(g, (size_t)1300 * out);
        for (int pt = 0; pt < 2; pt++) // per-channel, per-tensor
            for (int ni = 0; ni < 2; ni++) {
                const int n = ns[ni];
                const float sa = pt ? 4.0f / 448.0f : 0.0f;
                float *x = sl_malloc(sizeof(float) * n * in);
                fill(x, (size_t)n * in, &rng, 1.0f, 0);
                uint8_t *xq = sl_malloc((size_t)n * in), *wq = sl_malloc((size_t)out * in);
                float *xs = sl_malloc(sizeof(float) * n), *ws = sl_malloc(sizeof(float) * out);
                cpu_quantize_fp8_rows(xq, xs, x, n, in, sa);
                cpu_quantize_weight_fp8(wq, ws, w, out, in, !pt, NULL);
                LinearWeight lw = {.fmt = WFMT_FP8_E4M3, .out_dim = out, .in_dim = in,
                                   .scale_per_row = !pt, .in_scale = sa};
                lw.data = dev_copy(wq, (size_t)out * in);
                lw.scale = dev_copy(ws, sizeof(float) * out);
                uint8_t *dxq = dev_copy(xq, (size_t)n * in);
                float *dxs = dev_copy(xs, sizeof(float) * n);
                float *ref = sl_malloc(sizeof(float) * n * out), *got = sl_malloc(sizeof(float) * n * out);
                cpu_linear_fp8(ref, xq, xs, wq, ws, !pt, NULL, n, in, out);
                void *dy = dev_poisoned((size_t)n * out * 4);
                cuda_gemm_linear_ex(g, dy, GEMM_OUT_BF16, dxq, GEMM_IN_FP8, dxs, &lw, n);
                CUDA_CHECK(cudaStreamSynchronize(st));
                get_act(got, dy, (size_t)n * out, 0);
                char what[96];
                snprintf(what, sizeof what, "gemm fp8 %s n=%d tuning %s", pt ? "per-tensor" : "per-channel",
                         n, off ? "off" : "default");
                CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)n * out, 5e-3f, 1.2e-2f), 0);
                cudaFree(dy), cudaFree(lw.data), cudaFree(lw.scale), cudaFree(dxq), cudaFree(dxs);
                free(x), free(xq), free(wq), free(xs), free(ws), free(ref), free(got);
            }
        printf("    tuning %s: %d plans timed, %d reused\n", off ? "off" : "default",
               cuda_gemm_tuned_count(g), cuda_gemm_reused_count(g));
        if (off) {
            CU_ASSERT_EQUAL(cuda_gemm_tuned_count(g), 0);
            CU_ASSERT_EQUAL(cuda_gemm_reused_count(g), 0);
        } else { // the 1100-row plans timed (where cuBLASLt offers a choice), the 1300-row ones reuse
            CU_ASSERT(cuda_gemm_tuned_count(g) >= 1);
            CU_ASSERT_EQUAL(cuda_gemm_reused_count(g), cuda_gemm_tuned_count(g));
        }
        cuda_gemm_destroy(g);
        CUDA_CHECK(cudaStreamDestroy(st));
    }
    if (old) setenv("SLUICE_GEMM_TUNE", old, 1);
    else unsetenv("SLUICE_GEMM_TUNE");
    free(old);
    free(w);
}

// ----------------------------------------------------------------------------
// rope + KV write into an FP8 / fp32 cache

static void test_rope_kv_fp8_f32(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 17;
    const int hds[] = {64, 128, 18};
    for (int f32 = 0; f32 < 2; f32++)
        for (int kv8 = 0; kv8 < 2; kv8++)
            for (int hi = 0; hi < 3; hi++) {
                if (!f32 && !kv8) continue;
                int hd = hds[hi], nh = 4, nkv = 2, bs = 16, n = 37, nblk = 8;
                int stride = (nh + 2 * nkv) * hd;
                size_t qe = (size_t)n * stride, ce = (size_t)nblk * nkv * bs * hd;
                float ks = 0.05f, vs = 0.02f;
                float *qkv = sl_malloc(sizeof(float) * qe), *inv = sl_malloc(sizeof(float) * hd / 2);
                int32_t pos[37], slots[37];
                fill(qkv, qe, &rng, 2.0f, !f32);
                cpu_rope_inv_freq(inv, hd, 0, 10000.0f, 1, 1, 1, 1);
                for (int i = 0; i < n; i++) {
                    pos[i] = 3 * i + 1;
                    slots[i] = (i * 5) % (nblk * bs); // distinct (5 coprime to 128)
                }
                slots[4] = -1; // padding row
                void *dq = dev_act(qkv, qe, f32);
                size_t eb = kv8 ? 1 : 4;
                void *dk = dev_poisoned(ce * eb), *dv = dev_poisoned(ce * eb);
                int32_t *dpos = dev_copy(pos, sizeof pos), *dsl = dev_copy(slots, sizeof slots);
                float *dinv = dev_copy(inv, sizeof(float) * hd / 2);
                cuda_rope_kv_write_ex(dq, dk, dv, dpos, dsl, dinv, n, nh, nkv, hd, bs, f32, kv8, ks, vs,
                                      0);
                float *rk = sl_malloc(sizeof(float) * ce), *rv = sl_malloc(sizeof(float) * ce);
                for (size_t k = 0; k < ce; k++) rk[k] = rv[k] = NAN;
                float *rq = sl_malloc(sizeof(float) * qe);
                memcpy(rq, qkv, sizeof(float) * qe);
                cpu_rope_kv_write(rq, rk, rv, pos, slots, inv, n, nh, nkv, hd, bs);
                if (kv8) cpu_kv_round_fp8(rk, rv, slots, n, nkv, hd, bs, ks, vs);
                float *gk = sl_malloc(sizeof(float) * ce), *gv = sl_malloc(sizeof(float) * ce);
                if (kv8) {
                    uint8_t *ck = sl_malloc(ce), *cv = sl_malloc(ce);
                    get(ck, dk, ce);
                    get(cv, dv, ce);
                    if (!f32 && hd % 16 == 0) {
                        // the 16-byte path (taken above) against the generic
                        // kernel, forced by a qkv 2 bytes off 16-byte alignment:
                        // the same codes, bit for bit
                        uint16_t *h = sl_malloc(2 * (qe + 1));
                        for (size_t k = 0; k < qe; k++) h[k + 1] = sl_f32_to_bf16(qkv[k]);
                        h[0] = 0;
                        uint16_t *dq2 = dev_copy(h, 2 * (qe + 1));
                        void *dk2 = dev_poisoned(ce), *dv2 = dev_poisoned(ce);
                        cuda_rope_kv_write_ex(dq2 + 1, dk2, dv2, dpos, dsl, dinv, n, nh, nkv, hd, bs,
                                              0, 1, ks, vs, 0);
                        uint8_t *ck2 = sl_malloc(ce), *cv2 = sl_malloc(ce);
                        get(ck2, dk2, ce);
                        get(cv2, dv2, ce);
                        CU_ASSERT_EQUAL(memcmp(ck, ck2, ce), 0);
                        CU_ASSERT_EQUAL(memcmp(cv, cv2, ce), 0);
                        free(h), free(ck2), free(cv2);
                        cudaFree(dq2), cudaFree(dk2), cudaFree(dv2);
                    }
                    for (size_t k = 0; k < ce; k++) {
                        // never-written slots keep the poison (0xFF decodes to NaN)
                        gk[k] = sl_e4m3_to_f32(ck[k]) * ks;
                        gv[k] = sl_e4m3_to_f32(cv[k]) * vs;
                    }
                    free(ck);
                    free(cv);
                } else {
                    get(gk, dk, sizeof(float) * ce);
                    get(gv, dv, sizeof(float) * ce);
                }
                long bad = 0;
                for (size_t k = 0; k < ce; k++) {
                    // one e4m3 step (the bf16 path rounds k before encoding), poison where unwritten
                    float tol = kv8 ? 0.13f : 2e-6f;
                    int okk = isnan(rk[k]) ? isnan(gk[k]) : fabsf(gk[k] - rk[k]) <= tol * fabsf(rk[k]) + 1e-3f * ks;
                    int okv = isnan(rv[k]) ? isnan(gv[k]) : fabsf(gv[k] - rv[k]) <= tol * fabsf(rv[k]) + 1e-3f * vs;
                    if ((!okk || !okv) && bad++ < 5)
                        fprintf(stderr, "  rope_kv f32=%d kv8=%d hd=%d [%zu]: k %g want %g, v %g want %g\n",
                                f32, kv8, hd, k, gk[k], rk[k], gv[k], rv[k]);
                }
                CU_ASSERT_EQUAL(bad, 0);
                float *gq = sl_malloc(sizeof(float) * qe);
                get_act(gq, dq, qe, f32);
                if (!f32)
                    for (size_t k = 0; k < qe; k++) rq[k] = bf16r(rq[k]);
                CU_ASSERT_EQUAL(tu_compare_f32("rope q/k in place", gq, rq, (long)qe, 1e-3f,
                                               f32 ? 1e-5f : 1.6e-2f), 0);
                free(qkv);
                free(inv);
                free(rk);
                free(rv);
                free(rq);
                free(gk);
                free(gv);
                free(gq);
                cudaFree(dq);
                cudaFree(dk);
                cudaFree(dv);
                cudaFree(dpos);
                cudaFree(dsl);
                cudaFree(dinv);
            }
}

// ----------------------------------------------------------------------------
// attention over an FP8 cache (bf16 activations) and in fp32

// One attention call's data, host and device, for the FP8-cache tests: a
// cache of S * mb blocks of e4m3 codes (K scale ks, V scale vs) with the
// values the CPU twin sees (decoded * scale, or with kv8 = 0 the fp32 values
// the codes came from), the rows' metadata, q/k/v rows and a workspace.
typedef struct {
    size_t ce, qe, oe;
    uint8_t *c8k, *c8v;
    float *ck, *cv, *qkv, *ref, *got;
    void *dk, *dv, *dq, *dout, *ws;
    int32_t *dbt, *dpos, *dso, *dss, *dkl;
} AttnCase;

static void attn_case_make(AttnCase *c, uint64_t *rng, int S, int mb, int bs, int n, int nh,
                           int nkv, int hd, float ks, float vs, int kv8, int f32,
                           const int32_t *bt, const int32_t *pos, const int32_t *seq_of,
                           const int32_t *seq_start, const int32_t *kvl) {
    const int nblk = S * mb;
    c->ce = (size_t)nblk * nkv * bs * hd;
    c->qe = (size_t)n * (nh + 2 * nkv) * hd;
    c->oe = (size_t)n * nh * hd;
    c->c8k = sl_malloc(c->ce), c->c8v = sl_malloc(c->ce);
    c->ck = sl_malloc(sizeof(float) * c->ce), c->cv = sl_malloc(sizeof(float) * c->ce);
    for (size_t k = 0; k < c->ce; k++) {
        float a = tu_rand_normal(rng), b = tu_rand_normal(rng);
        c->c8k[k] = sl_f32_to_e4m3(a / ks * 0.5f);
        c->c8v[k] = sl_f32_to_e4m3(b / vs * 0.5f);
        c->ck[k] = kv8 ? sl_e4m3_to_f32(c->c8k[k]) * ks : a * 0.5f;
        c->cv[k] = kv8 ? sl_e4m3_to_f32(c->c8v[k]) * vs : b * 0.5f;
    }
    c->qkv = sl_malloc(sizeof(float) * c->qe);
    fill(c->qkv, c->qe, rng, 1.0f, !f32);
    c->ref = sl_malloc(sizeof(float) * c->oe), c->got = sl_malloc(sizeof(float) * c->oe);
    c->dk = kv8 ? dev_copy(c->c8k, c->ce) : dev_copy(c->ck, sizeof(float) * c->ce);
    c->dv = kv8 ? dev_copy(c->c8v, c->ce) : dev_copy(c->cv, sizeof(float) * c->ce);
    c->dq = dev_act(c->qkv, c->qe, f32);
    c->dout = dev_poisoned(c->oe * 4);
    c->dbt = dev_copy(bt, sizeof(int32_t) * nblk);
    c->dpos = dev_copy(pos, sizeof(int32_t) * n);
    c->dso = dev_copy(seq_of, sizeof(int32_t) * n);
    c->dss = dev_copy(seq_start, sizeof(int32_t) * (S + 1));
    c->dkl = dev_copy(kvl, sizeof(int32_t) * S);
    size_t wsb = cuda_attention_workspace_bytes(n, nh, hd, mb * bs);
    c->ws = dev_alloc(wsb ? wsb : 4);
}

static void attn_case_free(AttnCase *c) {
    free(c->c8k), free(c->c8v), free(c->ck), free(c->cv);
    free(c->qkv), free(c->ref), free(c->got);
    void *dev[] = {c->dk, c->dv, c->dq, c->dout, c->ws, c->dbt, c->dpos, c->dso, c->dss, c->dkl};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
}

// Three sequences in one call: a prefill chunk of 70 rows on top of 30 cached
// positions, a decode row at position 300 (several splits), and a 2-row chunk;
// block tables shuffled.
static void test_attention_fp8_f32(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 19;
    const int hds[] = {64, 128, 72};
    for (int f32 = 0; f32 < 2; f32++)
        for (int kv8 = 0; kv8 < 2; kv8++)
            for (int hi = 0; hi < 3; hi++) {
                if (!f32 && !kv8) continue;
                int hd = hds[hi], nh = 8, nkv = 2, bs = 16, S = 3, mb = 24;
                int nblk = S * mb;
                int lens[3] = {100, 301, 50}, nrow[3] = {70, 1, 2};
                int n = 73;
                float ks = 0.03f, vs = 0.05f;
                int32_t bt[3 * 24], pos[73], seq_of[73], seq_start[4] = {0, 70, 71, 73}, kvl[3];
                for (int b = 0; b < nblk; b++) bt[b] = (b * 29) % nblk; // a permutation
                int r = 0;
                for (int s = 0; s < S; s++) {
                    kvl[s] = lens[s];
                    for (int i = 0; i < nrow[s]; i++, r++) {
                        pos[r] = lens[s] - nrow[s] + i;
                        seq_of[r] = s;
                    }
                }
                AttnCase c;
                attn_case_make(&c, &rng, S, mb, bs, n, nh, nkv, hd, ks, vs, kv8, f32, bt, pos,
                               seq_of, seq_start, kvl);
                cpu_paged_attention(c.ref, c.qkv, c.ck, c.cv, pos, seq_of, bt, mb, n, nh, nkv, hd,
                                    bs, 1.0f / sqrtf((float)hd));
                cuda_paged_attention_ex(c.dout, c.dq, c.dk, c.dv, c.dpos, c.dso, c.dss, c.dkl,
                                        c.dbt, mb, n, S, 301, nh, nkv, hd, bs,
                                        1.0f / sqrtf((float)hd), f32, kv8, ks, vs, 0, NULL, c.ws, 0);
                get_act(c.got, c.dout, c.oe, f32);
                char what[96];
                snprintf(what, sizeof what, "attention f32=%d kv8=%d hd=%d", f32, kv8, hd);
                // bf16: q rounded, P rounded to bf16 for P.V, output rounded
                CU_ASSERT_EQUAL(tu_compare_f32(what, c.got, c.ref, (long)c.oe, f32 ? 1e-5f : 1e-2f,
                                               f32 ? 1e-4f : 2e-2f), 0);
                attn_case_free(&c);
            }
}

// Decode rows only (the tensor-core FP8 decode kernel for head_dim 64/128,
// the CUDA-core one for others): many sequences with contexts around the
// 16/64-position steps and the split length, GQA groups 1, 4, 8 and 29
// (above 16 heads: two CTAs per kv head), with a sliding window and with
// ALiBi; block tables shuffled. Against the CPU twin on the decoded cache.
static void test_attention_fp8_decode(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 23;
    const int hds[] = {128, 64, 80};
    const int groups[][2] = {{4, 2}, {1, 3}, {8, 1}, {29, 2}}; // (group, n_kv_heads)
    for (int hi = 0; hi < 3; hi++)
        for (int gi = 0; gi < 4; gi++)
            for (int mode = 0; mode < 3; mode++) { // 0 plain, 1 window 100, 2 ALiBi
                const int hd = hds[hi], nkv = groups[gi][1], nh = groups[gi][0] * nkv, bs = 16;
                const int S = 9, mb = 40; // up to 640 positions
                const int lens[9] = {1, 15, 16, 17, 63, 65, 257, 600, 640};
                const int n = S, nblk = S * mb;
                const float ks = 0.03f, vs = 0.05f, scale = 1.0f / sqrtf((float)hd);
                const int window = mode == 1 ? 100 : 0;
                int32_t *bt = sl_malloc(sizeof(int32_t) * nblk), pos[9], seq_of[9], seq_start[10], kvl[9];
                for (int b = 0; b < nblk; b++) bt[b] = (int32_t)(((long)b * 37) % nblk);
                for (int i = 0; i < S; i++) {
                    pos[i] = lens[i] - 1, seq_of[i] = i, seq_start[i] = i, kvl[i] = lens[i];
                }
                seq_start[S] = S;
                float *alibi = NULL, *dal = NULL;
                if (mode == 2) {
                    alibi = sl_malloc(sizeof(float) * nh);
                    for (int h = 0; h < nh; h++) alibi[h] = 0.02f + 0.01f * h;
                    dal = dev_copy(alibi, sizeof(float) * nh);
                }
                AttnCase c;
                attn_case_make(&c, &rng, S, mb, bs, n, nh, nkv, hd, ks, vs, 1, 0, bt, pos, seq_of,
                               seq_start, kvl);
                cpu_paged_attention_ex(c.ref, c.qkv, c.ck, c.cv, pos, seq_of, bt, mb, n, nh, nkv,
                                       hd, bs, scale, window, alibi);
                // each kernel (cuda_attention_fp8_decode_kernel): 0 CUDA cores;
                // tensor cores with loads 1 and 2 steps ahead (1, 2)
                for (int v = 0; v < 3; v++) {
                    cuda_attention_fp8_decode_kernel(v);
                    cudaMemset(c.dout, 0xff, c.oe * 2);
                    cuda_paged_attention_ex(c.dout, c.dq, c.dk, c.dv, c.dpos, c.dso, c.dss, c.dkl,
                                            c.dbt, mb, n, S, mb * bs, nh, nkv, hd, bs, scale, 0, 1,
                                            ks, vs, window, dal, c.ws, 0);
                    get_act(c.got, c.dout, c.oe, 0);
                    char what[112];
                    snprintf(what, sizeof what, "fp8 decode kernel %d hd=%d group=%d nkv=%d mode=%d",
                             v, hd, groups[gi][0], nkv, mode);
                    CU_ASSERT_EQUAL(tu_compare_f32(what, c.got, c.ref, (long)c.oe, 1e-2f, 2e-2f), 0);
                }
                cuda_attention_fp8_decode_kernel(-1);
                attn_case_free(&c);
                free(bt);
                free(alibi);
                cudaFree(dal);
            }
}

// SLUICE_GPU_BENCH=1: decode attention over an FP8 cache, Llama-3.1-8B heads
// (32 query, 8 kv, hd 128), GB/s of K/V codes read, with the tensor-core
// kernel and the CUDA-core one (SLUICE_DECODE_TC=0).
static void test_attention_fp8_decode_bench(void) {
    const char *on = getenv("SLUICE_GPU_BENCH");
    if (!on || strcmp(on, "1") != 0 || !tu_gpu_ready()) return;
    const int nh = 32, nkv = 8, hd = 128, bs = 16;
    // the long contexts of 128/2048 and the short ones of 128/128 (batch 512)
    const int cases[][2] = {{64, 2048}, {256, 1024}, {256, 2048}, {512, 1100}, {16, 8192},
                            {512, 192}, {1024, 160}};
    printf("\nFP8-KV decode attention (32 heads, 8 kv heads, hd 128), GB/s of K/V read\n");
    printf("  (SLUICE_DECODE_TC: 0 CUDA cores; tensor cores with loads 1 step ahead (the "
           "default) and 2 steps: 1, 2)\n");
    printf("  %5s %6s", "batch", "ctx");
    for (int v = 0; v < 3; v++) printf("  %6s%d %6s", "us tc", v, "GB/s");
    printf("\n");
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        const int S = cases[c][0], ctx = cases[c][1], mb = (ctx + bs - 1) / bs, nblk = S * mb;
        size_t ce = (size_t)nblk * nkv * bs * hd, qe = (size_t)S * (nh + 2 * nkv) * hd;
        int32_t *bt = sl_malloc(sizeof(int32_t) * nblk), *pos = sl_malloc(sizeof(int32_t) * S);
        int32_t *so = sl_malloc(sizeof(int32_t) * S), *ss = sl_malloc(sizeof(int32_t) * (S + 1));
        for (int b = 0; b < nblk; b++) bt[b] = (int32_t)(((long)b * 7919) % nblk);
        for (int i = 0; i < S; i++) pos[i] = ctx - 1, so[i] = i, ss[i] = i;
        ss[S] = S;
        uint8_t *dk = dev_alloc(ce), *dv = dev_alloc(ce);
        cudaMemset(dk, 0x2a, ce);
        cudaMemset(dv, 0x2a, ce);
        void *dq = dev_alloc(qe * 2), *dout = dev_alloc((size_t)S * nh * hd * 2);
        cudaMemset(dq, 0x3c, qe * 2);
        int32_t *dbt = dev_copy(bt, sizeof(int32_t) * nblk), *dpos = dev_copy(pos, sizeof(int32_t) * S);
        int32_t *dso = dev_copy(so, sizeof(int32_t) * S), *dss = dev_copy(ss, sizeof(int32_t) * (S + 1));
        size_t wsb = cuda_attention_workspace_bytes(S, nh, hd, mb * bs);
        void *ws = dev_alloc(wsb ? wsb : 4);
        double us[3];
        for (int v = 0; v < 3; v++) {
            cuda_attention_fp8_decode_kernel(v);
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0);
            cudaEventCreate(&e1);
            for (int i = 0; i < 3; i++)
                cuda_paged_attention_ex(dout, dq, dk, dv, dpos, dso, dss, dpos, dbt, mb, S, S,
                                        ctx, nh, nkv, hd, bs, 0.088f, 0, 1, 0.03f, 0.05f, 0, NULL,
                                        ws, 0);
            cudaEventRecord(e0, 0);
            for (int i = 0; i < 20; i++)
                cuda_paged_attention_ex(dout, dq, dk, dv, dpos, dso, dss, dpos, dbt, mb, S, S,
                                        ctx, nh, nkv, hd, bs, 0.088f, 0, 1, 0.03f, 0.05f, 0, NULL,
                                        ws, 0);
            cudaEventRecord(e1, 0);
            cudaEventSynchronize(e1);
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            us[v] = ms * 1e3 / 20;
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        }
        cuda_attention_fp8_decode_kernel(-1);
        double bytes = 2.0 * S * (double)ctx * nkv * hd;
        printf("  %5d %6d", S, ctx);
        for (int v = 0; v < 3; v++) printf("  %7.1f %6.0f", us[v], bytes / us[v] / 1e3);
        printf("\n");
        free(bt);
        free(pos);
        free(so);
        free(ss);
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(dq);
        cudaFree(dout);
        cudaFree(dbt);
        cudaFree(dpos);
        cudaFree(dso);
        cudaFree(dss);
        cudaFree(ws);
    }
}

// ----------------------------------------------------------------------------
// the model

static const char *tiny = "tests/models/tiny-code-llama";

static json_t *golden_cases(json_t **root) {
    json_error_t je;
    char path[1100];
    snprintf(path, sizeof path, "%s/golden_greedy.json", tu_path(tiny));
    *root = json_load_file(path, 0, &je);
    if (!*root) fprintf(stderr, "  %s: %s\n", path, je.text);
    CU_ASSERT_FATAL(*root != NULL);
    return json_object_get(*root, "cases");
}

// --dtype f32 on the GPU: free-running greedy reproduces all 8 golden continuations.
static void test_model_f32_golden(void) {
    if (!tu_gpu_ready()) return;
    sl_err err = {{0}};
    Backend *be = backend_cuda_create_ex(0, 1, &err);
    CU_ASSERT_FATAL(be != NULL);
    Runner r;
    ModelOptions o = {0};
    CU_ASSERT_FATAL(runner_open(&r, be, tu_path(tiny), &o, 0) == 0);
    json_t *root;
    json_t *cases = golden_cases(&root);
    CU_ASSERT_FATAL(json_array_size(cases) == 8);
    int exact = 0;
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int32_t seq[MAXT], want[64];
        int plen = json_ints(json_object_get(c, "prompt_ids"), seq, MAXT);
        int nw = json_ints(json_object_get(c, "greedy_ids"), want, 64);
        runner_step(&r, seq, 0, plen);
        int first_bad = -1;
        for (int t = 0; t < nw; t++) {
            int tok = argmax(r.logits, r.vocab);
            if (tok != want[t] && first_bad < 0) first_bad = t;
            seq[plen + t] = tok;
            if (t + 1 < nw) runner_step(&r, seq, plen + t, 1);
        }
        if (first_bad >= 0)
            fprintf(stderr, "  f32 case %zu diverges at step %d\n", ci, first_bad);
        else
            exact++;
    }
    printf("    --dtype f32 on the GPU: %d of 8 golden continuations exact\n", exact);
    CU_ASSERT_EQUAL(exact, 8);
    json_decref(root);
    runner_close(&r);
}

// FP8 weights and/or FP8 KV: GPU vs the CPU's exact emulation along the golden
// trajectory (teacher-forced).
static void check_fp8_model(int weight_fp8, int kv_fp8, int act_f32) {
    sl_err err = {{0}};
    Backend *gb = backend_cuda_create_ex(0, act_f32, &err);
    CU_ASSERT_FATAL(gb != NULL);
    Runner gpu, cpu, ref;
    ModelOptions o = {.weight_fp8 = weight_fp8, .kv_fp8 = kv_fp8}, none = {0};
    CU_ASSERT_FATAL(runner_open(&gpu, gb, tu_path(tiny), &o, 0) == 0);
    CU_ASSERT_FATAL(runner_open(&cpu, backend_cpu_create(0), tu_path(tiny), &o, 0) == 0);
    CU_ASSERT_FATAL(runner_open(&ref, backend_cpu_create(0), tu_path(tiny), &none, 0) == 0); // unquantised, fp32
    json_t *root;
    json_t *cases = golden_cases(&root);
    double worst = 0, sum = 0, gpu_ref = 0, cpu_ref = 0;
    int steps = 0, agree = 0;
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int32_t seq[MAXT];
        int plen = json_ints(json_object_get(c, "prompt_ids"), seq, MAXT);
        int nw = json_ints(json_object_get(c, "greedy_ids"), seq + plen, MAXT - plen);
        for (int t = 0; t <= nw && t < 16; t++) {
            int start = t == 0 ? 0 : plen + t - 1, n = t == 0 ? plen : 1;
            runner_step(&gpu, seq, start, n);
            runner_step(&cpu, seq, start, n);
            runner_step(&ref, seq, start, n);
            double e = rel_l2(gpu.logits, cpu.logits, gpu.vocab);
            if (!(e <= worst)) worst = e;
            sum += e;
            gpu_ref += rel_l2(gpu.logits, ref.logits, gpu.vocab);
            cpu_ref += rel_l2(cpu.logits, ref.logits, gpu.vocab);
            steps++;
            agree += argmax(gpu.logits, gpu.vocab) == argmax(cpu.logits, cpu.vocab);
        }
    }
    gpu_ref /= steps;
    cpu_ref /= steps;
    printf("    weights %s, KV %s, %s activations: GPU vs CPU emulation rel L2 mean %.2e max "
           "%.2e, top-1 agree %d/%d; to the unquantised model: GPU %.2e, emulation %.2e\n",
           weight_fp8 ? "fp8" : "bf16", kv_fp8 ? "fp8" : "bf16", act_f32 ? "fp32" : "bf16",
           sum / steps, worst, agree, steps, gpu_ref, cpu_ref);
    CU_ASSERT(sum / steps < REL_TOL_MEAN);
    CU_ASSERT(worst < REL_TOL_MAX);
    CU_ASSERT(agree >= steps * 80 / 100);
    CU_ASSERT(gpu_ref <= REL_RATIO * cpu_ref + (act_f32 ? 1e-3 : REL_SLACK));
    if (act_f32 && !weight_fp8) CU_ASSERT(sum / steps < REL_TOL_KV_F32);
    json_decref(root);
    runner_close(&gpu);
    runner_close(&cpu);
    runner_close(&ref);
}

static void test_model_fp8_weights(void) {
    if (tu_gpu_ready()) check_fp8_model(1, 0, 1), check_fp8_model(1, 0, 0);
}
static void test_model_fp8_kv(void) {
    if (tu_gpu_ready()) check_fp8_model(0, 1, 1), check_fp8_model(0, 1, 0);
}
static void test_model_fp8_full(void) {
    if (tu_gpu_ready()) check_fp8_model(1, 1, 1), check_fp8_model(1, 1, 0);
}

// The bench path: random FP8 weights made on the device, a prefill and a decode step.
static void test_random_fp8_model(void) {
    if (!tu_gpu_ready()) return;
    sl_err err = {{0}};
    Backend *be = backend_cuda_create(0, &err);
    CU_ASSERT_FATAL(be != NULL);
    ModelConfig cfg;
    CU_ASSERT_FATAL(config_load(&cfg, tu_path(tiny), &err) == 0);
    ModelOptions o = {.max_tokens = MAXT, .max_seqs = 4, .tp_size = 1, .weight_fp8 = 1,
                      .kv_fp8 = 1};
    Runner r = {.be = be};
    CU_ASSERT_FATAL(model_init_random(&r.m, &cfg, be, &o, 3, &err) == 0);
    model_kv_alloc(r.m, MAXT / BLOCK + 2, BLOCK);
    r.vocab = cfg.vocab_size;
    r.logits = sl_malloc(sizeof(float) * r.vocab * 4);
    CU_ASSERT_EQUAL(r.m->layers[0].wqkv.fmt, WFMT_FP8_E4M3);
    int32_t seq[40];
    for (int i = 0; i < 40; i++) seq[i] = (i * 37) % cfg.vocab_size;
    runner_step(&r, seq, 0, 39);
    runner_step(&r, seq, 39, 1);
    long bad = 0;
    for (int i = 0; i < r.vocab; i++) bad += !isfinite(r.logits[i]);
    CU_ASSERT_EQUAL(bad, 0);
    runner_close(&r);
}

int main(void) {
    static const tu_test kernels[] = {
        {"quantize rows (bit-exact)", test_quantize_rows},
        {"rmsnorm -> fp8 / fp32", test_rmsnorm_fp8_f32},
        {"swiglu -> fp8 / fp32", test_swiglu_fp8_f32},
        {"gemm fp8 / fp32", test_gemm_fp8_f32},
        {"gemm fp8 tuned by default", test_gemm_fp8_tuned},
        {"rope + kv write fp8 / fp32", test_rope_kv_fp8_f32},
        {"attention fp8 kv / fp32", test_attention_fp8_f32},
        {"attention fp8 kv, decode rows", test_attention_fp8_decode},
        {"attention fp8 kv, decode bench", test_attention_fp8_decode_bench},
        {NULL, NULL},
    };
    static const tu_test model[] = {
        {"--dtype f32 golden 8/8", test_model_f32_golden},
        {"fp8 weights vs cpu emulation", test_model_fp8_weights},
        {"fp8 kv vs cpu emulation", test_model_fp8_kv},
        {"fp8 weights + kv vs cpu emulation", test_model_fp8_full},
        {"random fp8 weights on device", test_random_fp8_model},
        {NULL, NULL},
    };
    tu_suite("gpu_fp8_kernels", kernels);
    tu_suite("gpu_fp8_model", model);
    return tu_main();
}
