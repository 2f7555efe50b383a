// test_gpu_zoo.c: the CUDA kernels the model zoo added (layernorm.cu,
// gelu.cu, add.cu, rope_partial.cu) against their CPU twins in kernels/cpu,
// for bf16 and fp32 activations and an FP8 KV cache; then every zoo fixture
// (tests/golden/zoo-*) as a whole model on the CUDA backend with fp32
// activations and with an FP8 KV cache. (The sliding window and ALiBi of
// attention.cu are in test_gpu_attention.c; the bf16 zoo models in
// test_gpu_model.c.)
//
// Kernels, method as test_gpu_kernels.c: inputs from a fixed seed (rounded
// to bf16 on the host for the bf16 kernels, which the twin then sees in
// fp32); awkward sizes (n = 1, 3, 37, 300; dims 72, 383, 4096; head dims
// 12, 18, 20, 64, 80, 256 with rotary dims 0, 8, 10, 16, 64, 80); outputs
// poisoned with 0xFF (NaN in bf16, fp32 and e4m3) first, so an unwritten
// element fails; for the rope the whole cache is poisoned and entries no
// slot addresses must keep the poison. Tolerances: bf16 outputs two bf16
// ulps (ATOL, RTOL); fp32 outputs ATOL32 + RTOL32 * |ref| (the same fp32
// operations in another order: block reductions, FMA contraction, CUDA's
// vs glibc's tanhf/erff/sincosf, each within an ulp or two); the residual
// adds bit for bit; an FP8 cache within one e4m3 step (12.5%) of the twin's
// cpu_kv_round_fp8 (a value near a rounding boundary may land on either side).
//
// Models (each fixture's 5 golden cases, 16 greedy steps each):
//   - --dtype f32: the GPU runs free-running greedy and must produce exactly
//     golden.json's tokens (HF transformers, fp32); the CPU backend is fed the
//     GPU's tokens and the logits of the two must agree to relative L2
//     F32_REL_TOL at every step; the last prompt position's logits also
//     match HF's to 1e-3 (test_model's bound for the CPU).
//   - --kv-dtype fp8 (bf16 and fp32 activations): GPU vs the CPU's FP8
//     KV emulation along the golden trajectory (teacher-forced), relative L2
//     under KV8_REL_TOL (bf16) / KV8_F32_REL_TOL (fp32) at every step, and
//     for fp32 a mean under KV8_F32_MEAN_TOL.
//
// Without a GPU every test prints "skipped: no CUDA device" and passes,
// unless SLUICE_REQUIRE_GPU=1.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "backend.h"
#include "common.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "fp8.h"
#include "gpu_testutil.h"
#include "model.h"
#include "testutil.h"
#include "model_runner.h"

// bf16 output vs fp32 twin: two bf16 ulps relative (see test_gpu_kernels.c),
// plus an absolute floor for values that cancel towards zero.
#define ATOL 1e-3f
#define RTOL 1.5625e-2f
// fp32 output vs the fp32 twin (see the file comment); the absolute part
// covers an ulp or two of inputs up to ~5 where the result cancels (a
// rotated pair x1*c - x2*s near zero)
#define ATOL32 2e-6f
#define RTOL32 1e-5f
// GeGLU's gelu(g) * u: near g = -4, 1 + tanh (or erf) keeps only the last few
// bits of a value close to -1, where the two libraries' ulp (6e-8) is
// absolute; u (|u| up to ~8 here) scales that: 0.5*|g|*1.2e-7*|u| <= 4e-6
#define GEGLU_ATOL32 5e-6f
// FP8 cache: one e4m3 step (12.5% at most) relative, and two subnormal steps
// (2^-9 each, in units of the scale) absolute for values near zero
#define E4M3_RTOL 0.13f
#define E4M3_ATOL (1.0f / 256.0f)

static const int NS[] = {1, 3, 37, 300};
#define N_NS (int)(sizeof NS / sizeof NS[0])

// ----------------------------------------------------------------------------
// host/device helpers

// shift + scale * N(0,1), rounded to bf16 unless f32 (the values the GPU gets)
static void fill_act(float *f, size_t n, uint64_t *rng, float scale, float shift, int f32) {
    for (size_t i = 0; i < n; i++) {
        float v = shift + scale * tu_rand_normal(rng);
        f[i] = f32 ? v : bf16r(v);
    }
}

// Host fp32 values (bf16-exact unless f32) uploaded in the activation type.
static void *dev_act(const float *src, size_t n, int f32) {
    if (f32) return dev_copy(src, sizeof(float) * (n ? n : 1));
    uint16_t *h = sl_malloc(sizeof *h * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_bf16(src[i]);
    void *d = dev_copy(h, sizeof *h * (n ? n : 1));
    free(h);
    return d;
}

// Activations back to host fp32 (after the device has finished).
static void get_act(float *dst, const void *src, size_t n, int f32) {
    CUDA_CHECK(cudaDeviceSynchronize());
    if (f32) {
        CUDA_CHECK(cudaMemcpy(dst, src, sizeof(float) * n, cudaMemcpyDeviceToHost));
        return;
    }
    uint16_t *h = sl_malloc(sizeof *h * (n ? n : 1));
    CUDA_CHECK(cudaMemcpy(h, src, sizeof *h * n, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = sl_bf16_to_f32(h[i]);
    free(h);
}

// ----------------------------------------------------------------------------
// layernorm, add_layernorm

// x with a non-zero mean (shift) so a LayerNorm that forgets the mean fails.
// f32: cuda_layernorm_ex with fp32 activations; else the bf16 entry points.
// inplace (plain form only): out == x, as BLOOM's embedding LayerNorm runs.
static void check_layernorm(int n, int dim, int add, int with_bias, int f32, int inplace,
                            uint64_t *rng) {
    size_t nd = (size_t)n * dim;
    float *x = sl_malloc(sizeof(float) * nd), *r = sl_malloc(sizeof(float) * nd);
    float *w = sl_malloc(sizeof(float) * dim), *b = sl_malloc(sizeof(float) * dim);
    fill_act(x, nd, rng, 1.0f, 0.7f, f32);
    fill_act(r, nd, rng, 0.5f, -0.2f, f32);
    for (int j = 0; j < dim; j++) w[j] = 1.0f + 0.3f * tu_rand_normal(rng);
    for (int j = 0; j < dim; j++) b[j] = 0.2f * tu_rand_normal(rng);

    void *d_x = dev_act(x, nd, f32), *d_r = dev_act(r, nd, f32);
    void *d_out = inplace ? d_x : dev_poisoned((f32 ? 4 : 2) * nd);
    float *d_w = dev_copy(w, sizeof(float) * dim), *d_b = dev_copy(b, sizeof(float) * dim);
    float *ref = sl_malloc(sizeof(float) * nd), *got = sl_malloc(sizeof(float) * nd);
    const float *bb = with_bias ? b : NULL;
    float *db = with_bias ? d_b : NULL;
    if (add) {
        // the GPU rounds x + r to the activation type before normalising: the
        // twin gets the same rounded residual (r = rounded sum - x exactly is
        // not representable, so form the sum here and normalise it)
        for (size_t i = 0; i < nd; i++) x[i] = f32 ? x[i] + r[i] : bf16r(x[i] + r[i]);
        if (f32) cuda_layernorm_ex(d_out, d_x, d_r, d_w, db, n, dim, 1e-5f, 1, 0);
        else cuda_add_layernorm(d_out, d_x, d_r, d_w, db, n, dim, 1e-5f, 0);
    } else if (f32 || inplace) {
        cuda_layernorm_ex(d_out, d_x, NULL, d_w, db, n, dim, 1e-5f, f32, 0);
    } else {
        cuda_layernorm(d_out, d_x, d_w, db, n, dim, 1e-5f, 0);
    }
    cpu_layernorm(ref, x, w, bb, n, dim, 1e-5f);
    char what[128];
    snprintf(what, sizeof what, "%slayernorm%s n=%d dim=%d bias=%d %s", add ? "add_" : "",
             inplace ? " in place" : "", n, dim, with_bias, f32 ? "f32" : "bf16");
    get_act(got, d_out, nd, f32);
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)nd, f32 ? ATOL32 : ATOL,
                                   f32 ? RTOL32 : RTOL), 0);
    if (add) { // the residual stream holds the rounded sum, bit for bit
        get_act(got, d_x, nd, f32);
        CU_ASSERT_EQUAL(tu_compare_f32("add_layernorm residual", got, x, (long)nd, 0.0f, 0.0f), 0);
    }
    free(x), free(r), free(w), free(b), free(ref), free(got);
    if (!inplace) cudaFree(d_out);
    cudaFree(d_x), cudaFree(d_r), cudaFree(d_w), cudaFree(d_b);
}

static void run_layernorm(int f32, uint64_t seed) {
    static const int dims[] = {72, 383, 4096};
    uint64_t rng = seed;
    for (int di = 0; di < 3; di++) {
        for (int ni = 0; ni < N_NS; ni++)
            for (int add = 0; add < 2; add++)
                check_layernorm(NS[ni], dims[di], add, ni % 2 == 0 || add, f32, 0, &rng);
        check_layernorm(37, dims[di], 0, 1, f32, 1, &rng);
    }
}

static void test_layernorm(void) {
    if (tu_gpu_ready()) run_layernorm(0, 21);
}

static void test_layernorm_f32(void) {
    if (tu_gpu_ready()) run_layernorm(1, 31);
}

// ----------------------------------------------------------------------------
// gelu (plain / gated, tanh / erf)

static void check_gelu(int n, int hidden, int gated, int tanh_approx, int f32, uint64_t *rng) {
    size_t in_n = (size_t)n * hidden * (gated ? 2 : 1), out_n = (size_t)n * hidden;
    float *in = sl_malloc(sizeof(float) * in_n);
    fill_act(in, in_n, rng, 2.0f, 0.0f, f32);
    void *d_in = dev_act(in, in_n, f32), *d_out = dev_poisoned((f32 ? 4 : 2) * out_n);
    if (f32) cuda_gelu_ex(d_out, d_in, n, hidden, gated, tanh_approx, 1, 0);
    else cuda_gelu(d_out, d_in, n, hidden, gated, tanh_approx, 0);
    float *ref = sl_malloc(sizeof(float) * out_n), *got = sl_malloc(sizeof(float) * out_n);
    cpu_gelu(ref, in, n, hidden, gated, tanh_approx);
    get_act(got, d_out, out_n, f32);
    char what[96];
    snprintf(what, sizeof what, "gelu n=%d hidden=%d gated=%d tanh=%d %s", n, hidden, gated,
             tanh_approx, f32 ? "f32" : "bf16");
    float atol = f32 ? (gated ? GEGLU_ATOL32 : ATOL32) : ATOL, rtol = f32 ? RTOL32 : RTOL;
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)out_n, atol, rtol), 0);
    free(in), free(ref), free(got);
    cudaFree(d_in), cudaFree(d_out);
}

static void run_gelu(int f32, uint64_t seed) {
    static const int hiddens[] = {72, 383, 1000};
    uint64_t rng = seed;
    for (int hi = 0; hi < 3; hi++)
        for (int ni = 0; ni < N_NS; ni++)
            for (int v = 0; v < 4; v++) check_gelu(NS[ni], hiddens[hi], v & 1, v >> 1, f32, &rng);
}

static void test_gelu(void) {
    if (!tu_gpu_ready()) return;
    run_gelu(0, 22);
    // the two forms differ by more than the tolerance somewhere: the test can tell them apart
    float x = -2.5f, a, b;
    cpu_gelu(&a, &x, 1, 1, 0, 0);
    cpu_gelu(&b, &x, 1, 1, 0, 1);
    CU_ASSERT(fabsf(a - b) > 1e-4f);
}

static void test_gelu_f32(void) {
    if (tu_gpu_ready()) run_gelu(1, 32);
}

// ----------------------------------------------------------------------------
// add

static void run_add(int f32, uint64_t seed) {
    static const size_t sizes[] = {1, 7, 1001, 65541};
    uint64_t rng = seed;
    for (int si = 0; si < 4; si++) {
        size_t n = sizes[si];
        float *x = sl_malloc(sizeof(float) * n), *r = sl_malloc(sizeof(float) * n);
        fill_act(x, n, &rng, 1.0f, 0.0f, f32);
        fill_act(r, n, &rng, 1.0f, 0.0f, f32);
        void *d_x = dev_act(x, n, f32), *d_r = dev_act(r, n, f32);
        if (f32) cuda_add_ex(d_x, d_r, n, 1, 0);
        else cuda_add(d_x, d_r, n, 0);
        cpu_add(x, r, n);
        if (!f32)
            for (size_t i = 0; i < n; i++) x[i] = bf16r(x[i]); // one rounding of the exact sum
        float *got = sl_malloc(sizeof(float) * n);
        get_act(got, d_x, n, f32);
        CU_ASSERT_EQUAL(tu_compare_f32(f32 ? "add f32" : "add", got, x, (long)n, 0.0f, 0.0f), 0);
        free(x), free(r), free(got);
        cudaFree(d_x), cudaFree(d_r);
    }
}

static void test_add(void) {
    if (tu_gpu_ready()) run_add(0, 23);
}

static void test_add_f32(void) {
    if (tu_gpu_ready()) run_add(1, 33);
}

// ----------------------------------------------------------------------------
// rope_kv_write_partial_ex (partial and interleaved rotary, any cache type)

typedef struct {
    int n_heads, n_kv_heads, head_dim, rotary_dim, interleaved, block_size;
} RopeCase;

// Activations fp32 (f32) or bf16; the cache the activation type or FP8 (kv8,
// with scales that are not 1, so a scale applied the wrong way round fails).
static void check_rope_ex(const RopeCase *c, int n, int f32, int kv8, uint64_t *rng) {
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, rd = c->rotary_dim;
    int bs = c->block_size, stride = (nh + 2 * nkv) * hd;
    const float ks = kv8 ? 0.05f : 1.0f, vs = kv8 ? 0.02f : 1.0f;
    size_t qn = (size_t)n * stride;
    int n_blocks = (n + bs - 1) / bs * 2 + 1; // half the slots stay unaddressed
    int total = n_blocks * bs;
    size_t cn = (size_t)n_blocks * nkv * bs * hd;
    size_t eb = kv8 ? 1 : f32 ? 4 : 2; // bytes per cache element
    float *qkv = sl_malloc(sizeof(float) * qn), *inv = sl_calloc(rd / 2 + 1, sizeof(float));
    fill_act(qkv, qn, rng, 1.0f, 0.0f, f32);
    cpu_rope_inv_freq(inv, rd, 0, 10000.0f, 1.0f, 1.0f, 4.0f, 8192);
    // distinct shuffled slots, every 7th row from the third is padding (-1)
    int32_t *slots = sl_malloc(sizeof(int32_t) * n), *pos = sl_malloc(sizeof(int32_t) * n);
    int32_t *perm = sl_malloc(sizeof(int32_t) * total);
    for (int s = 0; s < total; s++) perm[s] = s;
    for (int s = total - 1; s > 0; s--) {
        int t = (int)(tu_rand_u64(rng) % (uint64_t)(s + 1));
        int32_t tmp = perm[s];
        perm[s] = perm[t], perm[t] = tmp;
    }
    for (int i = 0; i < n; i++) {
        slots[i] = (n >= 3 && i % 7 == 2) ? -1 : perm[i];
        pos[i] = (int32_t)(tu_rand_u64(rng) % 70000);
    }

    void *d_qkv = dev_act(qkv, qn, f32);
    uint8_t *d_k = dev_poisoned(eb * cn), *d_v = dev_poisoned(eb * cn);
    int32_t *d_pos = dev_copy(pos, sizeof(int32_t) * n), *d_slots = dev_copy(slots, sizeof(int32_t) * n);
    float *d_inv = dev_copy(inv, sizeof(float) * (rd / 2 + 1));
    if (!f32 && !kv8) // the bf16 entry point
        cuda_rope_kv_write_partial(d_qkv, (sl_bf16 *)d_k, (sl_bf16 *)d_v, d_pos, d_slots, d_inv,
                                   n, nh, nkv, hd, bs, rd, c->interleaved, 0);
    else
        cuda_rope_kv_write_partial_ex(d_qkv, d_k, d_v, d_pos, d_slots, d_inv, n, nh, nkv, hd, bs,
                                      rd, c->interleaved, f32, kv8, ks, vs, 0);
    CUDA_CHECK(cudaDeviceSynchronize());

    // twin, with padding rows given private slots in extra blocks
    int n_extra = (n + bs - 1) / bs;
    int32_t *cslots = sl_malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) cslots[i] = slots[i] >= 0 ? slots[i] : total + i;
    size_t ccn = (size_t)(n_blocks + n_extra) * nkv * bs * hd;
    float *ref_q = sl_malloc(sizeof(float) * qn);
    float *ref_k = sl_malloc(sizeof(float) * ccn), *ref_v = sl_malloc(sizeof(float) * ccn);
    memcpy(ref_q, qkv, sizeof(float) * qn);
    for (size_t e = 0; e < ccn; e++) ref_k[e] = ref_v[e] = NAN;
    cpu_rope_kv_write_ex(ref_q, ref_k, ref_v, pos, cslots, inv, n, nh, nkv, hd, bs, rd,
                         c->interleaved);
    if (kv8) cpu_kv_round_fp8(ref_k, ref_v, cslots, n, nkv, hd, bs, ks, vs);

    char what[128];
    snprintf(what, sizeof what, "rope_ex nh=%d nkv=%d hd=%d rd=%d il=%d n=%d %s%s", nh, nkv, hd,
             rd, c->interleaved, n, f32 ? "f32" : "bf16", kv8 ? " kv fp8" : "");
    float *got = sl_malloc(sizeof(float) * qn);
    get_act(got, d_qkv, qn, f32);
    float atol = f32 ? ATOL32 : ATOL, rtol = f32 ? RTOL32 : RTOL;
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref_q, (long)qn, atol, rtol), 0);

    // the caches, decoded to fp32 (raw bytes kept to check the poison)
    uint8_t *hk = sl_malloc(eb * cn), *hv = sl_malloc(eb * cn);
    CUDA_CHECK(cudaMemcpy(hk, d_k, eb * cn, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(hv, d_v, eb * cn, cudaMemcpyDeviceToHost));
    char *used = calloc((size_t)total, 1);
    for (int i = 0; i < n; i++)
        if (slots[i] >= 0) used[slots[i]] = 1;
    long bad = 0, touched = 0;
    float *gk = sl_malloc(sizeof(float) * hd), *gv = sl_malloc(sizeof(float) * hd);
    for (int b = 0; b < n_blocks; b++)
        for (int h = 0; h < nkv; h++)
            for (int o = 0; o < bs; o++) {
                size_t e0 = (((size_t)b * nkv + h) * bs + o) * hd;
                if (!used[b * bs + o]) {
                    for (size_t k = e0 * eb; k < (e0 + hd) * eb; k++)
                        touched += (hk[k] != 0xFF) + (hv[k] != 0xFF);
                    continue;
                }
                for (int d = 0; d < hd; d++) {
                    size_t e = e0 + d;
                    if (kv8) {
                        gk[d] = sl_e4m3_to_f32(hk[e]) * ks;
                        gv[d] = sl_e4m3_to_f32(hv[e]) * vs;
                    } else if (f32) {
                        memcpy(&gk[d], hk + 4 * e, 4);
                        memcpy(&gv[d], hv + 4 * e, 4);
                    } else {
                        uint16_t k16, v16;
                        memcpy(&k16, hk + 2 * e, 2);
                        memcpy(&v16, hv + 2 * e, 2);
                        gk[d] = sl_bf16_to_f32(k16);
                        gv[d] = sl_bf16_to_f32(v16);
                    }
                }
                if (kv8) { // one e4m3 step (the bf16 path rounds k before encoding)
                    bad += tu_compare_f32(what, gk, ref_k + e0, hd, E4M3_ATOL * ks, E4M3_RTOL);
                    bad += tu_compare_f32(what, gv, ref_v + e0, hd, E4M3_ATOL * vs, E4M3_RTOL);
                } else { // k as rotated (in qkv's tolerance), v copied bit for bit
                    bad += tu_compare_f32(what, gk, ref_k + e0, hd, atol, rtol);
                    bad += tu_compare_f32(what, gv, ref_v + e0, hd, 0.0f, 0.0f);
                }
            }
    if (touched) fprintf(stderr, "  %s: %ld unaddressed cache bytes written\n", what, touched);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(touched, 0);

    free(qkv), free(inv), free(slots), free(pos), free(perm), free(cslots), free(ref_q);
    free(ref_k), free(ref_v), free(got), free(hk), free(hv), free(used), free(gk), free(gv);
    cudaFree(d_qkv), cudaFree(d_k), cudaFree(d_v), cudaFree(d_pos), cudaFree(d_slots);
    cudaFree(d_inv);
}

static const RopeCase rope_cases[] = {
    {4, 4, 20, 8, 0, 16},     // the zoo-gpt-neox fixture's shape
    {8, 8, 64, 16, 0, 16},    // pythia-like, rotary_pct 0.25
    {16, 16, 256, 64, 1, 32}, // GPT-J: interleaved, rotary_dim 64 of 256
    {6, 2, 80, 80, 1, 16},    // interleaved over the whole head, GQA
    {5, 1, 18, 10, 0, 8},     // MQA, odd half (5 pairs)
    {6, 6, 12, 0, 0, 16},     // no rotary (GPT-2, MPT, BLOOM): k and v only cached
};
#define N_ROPE_CASES (int)(sizeof rope_cases / sizeof rope_cases[0])

static void run_rope_ex(int f32, int kv8, uint64_t seed) {
    uint64_t rng = seed;
    for (int c = 0; c < N_ROPE_CASES; c++)
        for (int ni = 0; ni < N_NS; ni++) check_rope_ex(&rope_cases[c], NS[ni], f32, kv8, &rng);
}

static void test_rope_ex(void) {
    if (tu_gpu_ready()) run_rope_ex(0, 0, 24);
}

static void test_rope_ex_f32(void) {
    if (tu_gpu_ready()) run_rope_ex(1, 0, 34);
}

static void test_rope_ex_kv_fp8(void) {
    if (!tu_gpu_ready()) return;
    run_rope_ex(0, 1, 44); // bf16 activations
    run_rope_ex(1, 1, 54); // fp32 activations
}

// ----------------------------------------------------------------------------
// whole models: the zoo fixtures on the CUDA backend

#define BLOCK TU_BLOCK
#define MAXT TU_MAXT
// fp32 on both sides: GEMMs (cuBLASLt, true fp32) and reductions summed in
// another order, ~1e-7 relative per op. Perturbing k and v by 1e-6 relative
// on the CPU moves these fixtures' logits by rel L2 <= 1.3e-6 (1e-5: 1.2e-5),
// so 1e-4 leaves a wide margin and is still 100x below the bf16 path's 1e-2
// (test_gpu_model).
#define F32_REL_TOL 1e-4
// bf16 activations + FP8 KV vs the CPU's fp32 + FP8 KV emulation: the bf16
// noise of test_gpu_model (<= 3e-2) plus codes moved across e4m3 rounding
// boundaries by it (test_gpu_fp8 sets 1e-1 for the same comparison). Not yet
// measured on a GPU: the bound is set for "a broken FP8 path" (wrong scale,
// wrong code, unwritten cache: rel L2 ~1 or NaN); record what it prints. It
// cannot see an FP8 cache that was never quantised (FP8 vs no FP8 on the CPU
// is 1e-2..4e-2 on these fixtures, like the bf16 noise): the kernel test
// test_rope_ex_kv_fp8 checks the codes.
#define KV8_REL_TOL 1e-1
// fp32 activations + FP8 KV: the same values up to ~1e-6 before encoding, so
// only the odd code on a rounding boundary differs by one e4m3 step. Measured
// on the CPU by perturbing k and v by 1e-6 (1e-5) relative before the
// encoding: max 1.5e-3 (3.7e-3), mean <= 1.8e-4 (5.2e-4) per fixture. A cache
// left unquantised gives max 4e-3..4e-2, mean 2e-3..2e-2: the mean bound
// catches it on every fixture.
#define KV8_F32_REL_TOL 1e-2
#define KV8_F32_MEAN_TOL 1e-3

static json_t *load_golden(const char *dir) {
    char path[1100];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    if (!g) fprintf(stderr, "  %s: %s\n", path, je.text);
    return g;
}

// The GPU (act_f32, kv_fp8) and the CPU (kv_fp8 emulated) on one fixture.
static int open_pair(Runner *gpu, Runner *cpu, const char *dir, int act_f32, int kv_fp8) {
    sl_err err = {{0}};
    Backend *gb = backend_cuda_create_ex(0, act_f32, &err);
    if (!gb) {
        fprintf(stderr, "  backend_cuda_create_ex: %s\n", err.msg);
        return -1;
    }
    ModelOptions mo = {.kv_fp8 = kv_fp8};
    if (runner_open(gpu, gb, dir, &mo, 0)) return -1;
    if (runner_open(cpu, backend_cpu_create(0), dir, &mo, 0)) {
        runner_close(gpu);
        return -1;
    }
    return 0;
}

// --dtype f32: free-running greedy on the GPU must give golden.json's tokens;
// the CPU follows the GPU's tokens and their logits agree to F32_REL_TOL.
static void check_zoo_f32(const char *fixture) {
    if (!tu_gpu_ready()) return;
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tu_path(fixture));
    json_t *g = load_golden(dir);
    CU_ASSERT_FATAL(g != NULL);
    Runner gpu, cpu;
    CU_ASSERT_FATAL(open_pair(&gpu, &cpu, dir, 1, 0) == 0);
    CU_ASSERT_EQUAL(gpu.be->act_bytes, 4); // really the fp32 mode
    int vocab = gpu.vocab;
    float *hf = sl_malloc(sizeof(float) * vocab);
    json_t *cases = json_object_get(g, "cases");
    CU_ASSERT(json_array_size(cases) >= 3);
    int exact = 0, steps = 0;
    double worst = 0, sum = 0;
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int32_t seq[MAXT], want[64];
        int plen = json_ints(json_object_get(c, "prompt_ids"), seq, MAXT);
        int nw = json_ints(json_object_get(c, "greedy_ids"), want, 64);
        CU_ASSERT_FATAL(plen + nw <= MAXT);
        runner_step(&gpu, seq, 0, plen);
        runner_step(&cpu, seq, 0, plen);
        // the last prompt position against HF's fp32 logits (test_model's bound)
        json_t *lj = json_object_get(c, "last_prompt_logits");
        CU_ASSERT_FATAL((int)json_array_size(lj) == vocab);
        for (int i = 0; i < vocab; i++) hf[i] = (float)json_real_value(json_array_get(lj, i));
        char what[128];
        snprintf(what, sizeof what, "%s f32 case %zu last-prompt logits vs HF", fixture, ci);
        CU_ASSERT_EQUAL(tu_compare_f32(what, gpu.logits, hf, vocab, 1e-3f, 1e-3f), 0);
        int first_bad = -1;
        for (int t = 0; t < nw; t++) {
            double e = rel_l2(gpu.logits, cpu.logits, vocab);
            if (!(e <= worst)) worst = e;
            sum += e;
            steps++;
            int tok = argmax(gpu.logits, vocab);
            if (tok != want[t] && first_bad < 0) {
                first_bad = t;
                fprintf(stderr, "  %s f32 case %zu step %d: GPU %d (%.6f), golden %d (%.6f), "
                        "CPU argmax %d\n", fixture, ci, t, tok, gpu.logits[tok], want[t],
                        gpu.logits[want[t]], argmax(cpu.logits, vocab));
            }
            seq[plen + t] = tok;
            if (t + 1 < nw) {
                runner_step(&gpu, seq, plen + t, 1);
                runner_step(&cpu, seq, plen + t, 1);
            }
        }
        exact += first_bad < 0;
    }
    int n_cases = (int)json_array_size(cases);
    printf("    %-22s f32: %d/%d golden continuations exact; rel L2 vs CPU mean %.2e max %.2e "
           "(%d steps)\n", fixture + strlen("tests/golden/"), exact, n_cases,
           steps ? sum / steps : 0.0, worst, steps);
    CU_ASSERT_EQUAL(exact, n_cases);
    CU_ASSERT(worst < F32_REL_TOL);
    free(hf);
    json_decref(g);
    runner_close(&gpu);
    runner_close(&cpu);
}

// --kv-dtype fp8 with bf16 or fp32 activations against the CPU's emulation
// along the golden trajectory (teacher-forced: both see the same tokens).
static void check_zoo_kv_fp8(const char *fixture, int act_f32) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tu_path(fixture));
    json_t *g = load_golden(dir);
    CU_ASSERT_FATAL(g != NULL);
    Runner gpu, cpu;
    CU_ASSERT_FATAL(open_pair(&gpu, &cpu, dir, act_f32, 1) == 0);
    int vocab = gpu.vocab, steps = 0, agree = 0;
    double worst = 0, sum = 0;
    json_t *cases = json_object_get(g, "cases");
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        int32_t seq[MAXT];
        int plen = json_ints(json_object_get(c, "prompt_ids"), seq, MAXT);
        int nw = json_ints(json_object_get(c, "greedy_ids"), seq + plen, MAXT - plen);
        for (int t = 0; t < nw; t++) {
            int start = t == 0 ? 0 : plen + t - 1, n = t == 0 ? plen : 1;
            runner_step(&gpu, seq, start, n);
            runner_step(&cpu, seq, start, n);
            double e = rel_l2(gpu.logits, cpu.logits, vocab);
            if (!(e <= worst)) worst = e;
            sum += e;
            steps++;
            agree += argmax(gpu.logits, vocab) == argmax(cpu.logits, vocab);
        }
    }
    double tol = act_f32 ? KV8_F32_REL_TOL : KV8_REL_TOL;
    printf("    %-22s %s + FP8 KV: rel L2 vs CPU emulation mean %.2e max %.2e, top-1 agree "
           "%d/%d\n", fixture + strlen("tests/golden/"), act_f32 ? "f32" : "bf16",
           steps ? sum / steps : 0.0, worst, agree, steps);
    CU_ASSERT(steps > 0);
    CU_ASSERT(worst < tol);
    if (act_f32 && steps) CU_ASSERT(sum / steps < KV8_F32_MEAN_TOL);
    json_decref(g);
    runner_close(&gpu);
    runner_close(&cpu);
}

static void check_zoo_kv8_both(const char *fixture) {
    if (!tu_gpu_ready()) return;
    check_zoo_kv_fp8(fixture, 0);
    check_zoo_kv_fp8(fixture, 1);
}

// one test per fixture and mode: test_f32_<id>, test_kv8_<id>
#define ZOO_FIXTURE(id, dir)                                                  \
    static void test_f32_##id(void) { check_zoo_f32("tests/golden/" dir); }   \
    static void test_kv8_##id(void) { check_zoo_kv8_both("tests/golden/" dir); }
ZOO_FIXTURE(qwen2, "zoo-qwen2")
ZOO_FIXTURE(mistral, "zoo-mistral-window")
ZOO_FIXTURE(phi3, "zoo-phi3")
ZOO_FIXTURE(gemma, "zoo-gemma")
ZOO_FIXTURE(neox, "zoo-gpt-neox")
ZOO_FIXTURE(neox_seq, "zoo-gpt-neox-seq")
ZOO_FIXTURE(gptj, "zoo-gptj")
ZOO_FIXTURE(gpt2, "zoo-gpt2")
ZOO_FIXTURE(falcon_mq, "zoo-falcon-mq")
ZOO_FIXTURE(falcon_new, "zoo-falcon-new")
ZOO_FIXTURE(mpt, "zoo-mpt")
ZOO_FIXTURE(bloom, "zoo-bloom")
#undef ZOO_FIXTURE

int main(void) {
    static const tu_test kernels[] = {
        {"layernorm and add_layernorm", test_layernorm},
        {"layernorm and add_layernorm f32", test_layernorm_f32},
        {"gelu plain/gated, tanh/erf", test_gelu},
        {"gelu plain/gated, tanh/erf f32", test_gelu_f32},
        {"add", test_add},
        {"add f32", test_add_f32},
        {"rope_kv_write_ex partial/interleaved", test_rope_ex},
        {"rope_kv_write_ex partial/interleaved f32", test_rope_ex_f32},
        {"rope_kv_write_ex partial/interleaved kv fp8", test_rope_ex_kv_fp8},
        {NULL, NULL}};
    static const tu_test f32[] = {
        {"f32_zoo_qwen2", test_f32_qwen2},
        {"f32_zoo_mistral_window", test_f32_mistral},
        {"f32_zoo_phi3", test_f32_phi3},
        {"f32_zoo_gemma", test_f32_gemma},
        {"f32_zoo_gpt_neox", test_f32_neox},
        {"f32_zoo_gpt_neox_seq", test_f32_neox_seq},
        {"f32_zoo_gptj", test_f32_gptj},
        {"f32_zoo_gpt2", test_f32_gpt2},
        {"f32_zoo_falcon_mq", test_f32_falcon_mq},
        {"f32_zoo_falcon_new", test_f32_falcon_new},
        {"f32_zoo_mpt", test_f32_mpt},
        {"f32_zoo_bloom", test_f32_bloom},
        {NULL, NULL}};
    static const tu_test kv8[] = {
        {"kv_fp8_zoo_qwen2", test_kv8_qwen2},
        {"kv_fp8_zoo_mistral_window", test_kv8_mistral},
        {"kv_fp8_zoo_phi3", test_kv8_phi3},
        {"kv_fp8_zoo_gemma", test_kv8_gemma},
        {"kv_fp8_zoo_gpt_neox", test_kv8_neox},
        {"kv_fp8_zoo_gpt_neox_seq", test_kv8_neox_seq},
        {"kv_fp8_zoo_gptj", test_kv8_gptj},
        {"kv_fp8_zoo_gpt2", test_kv8_gpt2},
        {"kv_fp8_zoo_falcon_mq", test_kv8_falcon_mq},
        {"kv_fp8_zoo_falcon_new", test_kv8_falcon_new},
        {"kv_fp8_zoo_mpt", test_kv8_mpt},
        {"kv_fp8_zoo_bloom", test_kv8_bloom},
        {NULL, NULL}};
    tu_suite("gpu_zoo_kernels", kernels);
    tu_suite("gpu_zoo_models_f32_vs_golden_and_cpu", f32);
    tu_suite("gpu_zoo_models_kv_fp8_vs_cpu_emulation", kv8);
    return tu_main();
}
