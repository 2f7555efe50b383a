// test_gpu_zoo.c: the CUDA kernels the model zoo added (layernorm.cu,
// gelu.cu, add.cu, rope_partial.cu) against their CPU twins in kernels/cpu.
// (The sliding window of attention.cu is in test_gpu_attention.c.)
//
// Method as test_gpu_kernels.c: inputs from a fixed seed rounded to bf16 on
// the host, the GPU on those bf16 values and the CPU twin on the same values
// in fp32; awkward sizes (n = 1, 3, 37, 300; dims 72, 383, 4096; head dims
// 20, 64, 80, 256 with rotary dims 8, 16, 64, 80); outputs poisoned with 0xFF
// (NaN in bf16) first, so an unwritten element fails; for the rope the whole
// cache is poisoned and entries no slot addresses must keep the poison.
//
// Without a GPU every test prints "skipped: no CUDA device" and passes,
// unless SLUICE_REQUIRE_GPU=1.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "gpu_testutil.h"
#include "testutil.h"

// bf16 output vs fp32 twin: two bf16 ulps relative (see test_gpu_kernels.c),
// plus an absolute floor for values that cancel towards zero.
#define ATOL 1e-3f
#define RTOL 1.5625e-2f

static const int NS[] = {1, 3, 37, 300};
#define N_NS (int)(sizeof NS / sizeof NS[0])

// ----------------------------------------------------------------------------
// host/device helpers

static float bf16r(float f) { return sl_bf16_to_f32(sl_f32_to_bf16(f)); }

static void fill_bf16(float *f, size_t n, uint64_t *rng, float scale, float shift) {
    for (size_t i = 0; i < n; i++) f[i] = bf16r(shift + scale * tu_rand_normal(rng));
}

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

static void *dev_poisoned(size_t bytes) {
    void *p = dev_alloc(bytes);
    CUDA_CHECK(cudaMemset(p, 0xFF, bytes ? bytes : 1));
    return p;
}

static void put_bf16(sl_bf16 *dst, const float *src, size_t n) {
    uint16_t *h = sl_malloc(sizeof *h * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_bf16(src[i]);
    CUDA_CHECK(cudaMemcpy(dst, h, sizeof *h * n, cudaMemcpyHostToDevice));
    free(h);
}

static sl_bf16 *dev_bf16(const float *src, size_t n) {
    sl_bf16 *d = dev_alloc(sizeof(sl_bf16) * (n ? n : 1));
    put_bf16(d, src, n);
    return d;
}

static void *dev_copy(const void *src, size_t bytes) {
    void *d = dev_alloc(bytes);
    CUDA_CHECK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void get_bf16(float *dst, const sl_bf16 *src, size_t n) {
    uint16_t *h = sl_malloc(sizeof *h * (n ? n : 1));
    CUDA_CHECK(cudaMemcpy(h, src, sizeof *h * n, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = sl_bf16_to_f32(h[i]);
    free(h);
}

// ----------------------------------------------------------------------------
// layernorm, add_layernorm

// x with a non-zero mean (shift) so a LayerNorm that forgets the mean fails.
static void check_layernorm(int n, int dim, int add, int with_bias, uint64_t *rng) {
    size_t nd = (size_t)n * dim;
    float *x = sl_malloc(sizeof(float) * nd), *r = sl_malloc(sizeof(float) * nd);
    float *w = sl_malloc(sizeof(float) * dim), *b = sl_malloc(sizeof(float) * dim);
    fill_bf16(x, nd, rng, 1.0f, 0.7f);
    fill_bf16(r, nd, rng, 0.5f, -0.2f);
    for (int j = 0; j < dim; j++) w[j] = 1.0f + 0.3f * tu_rand_normal(rng);
    for (int j = 0; j < dim; j++) b[j] = 0.2f * tu_rand_normal(rng);

    sl_bf16 *d_x = dev_bf16(x, nd), *d_r = dev_bf16(r, nd);
    sl_bf16 *d_out = dev_poisoned(sizeof(sl_bf16) * nd);
    float *d_w = dev_copy(w, sizeof(float) * dim), *d_b = dev_copy(b, sizeof(float) * dim);
    float *ref = sl_malloc(sizeof(float) * nd), *got = sl_malloc(sizeof(float) * nd);
    const float *bb = with_bias ? b : NULL;
    if (add) {
        // the GPU rounds x + r to bf16 before normalising: the twin gets the
        // same rounded residual (r = rounded sum - x exactly is not
        // representable, so form the sum here and normalise it)
        for (size_t i = 0; i < nd; i++) x[i] = bf16r(x[i] + r[i]);
        cuda_add_layernorm(d_out, d_x, d_r, d_w, with_bias ? d_b : NULL, n, dim, 1e-5f, 0);
        cpu_layernorm(ref, x, w, bb, n, dim, 1e-5f);
    } else {
        cuda_layernorm(d_out, d_x, d_w, with_bias ? d_b : NULL, n, dim, 1e-5f, 0);
        cpu_layernorm(ref, x, w, bb, n, dim, 1e-5f);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    char what[96];
    snprintf(what, sizeof what, "%slayernorm n=%d dim=%d bias=%d", add ? "add_" : "", n, dim,
             with_bias);
    get_bf16(got, d_out, nd);
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)nd, ATOL, RTOL), 0);
    if (add) { // the residual stream holds the rounded sum, bit for bit
        get_bf16(got, d_x, nd);
        CU_ASSERT_EQUAL(tu_compare_f32("add_layernorm residual", got, x, (long)nd, 0.0f, 0.0f), 0);
    }
    free(x), free(r), free(w), free(b), free(ref), free(got);
    cudaFree(d_x), cudaFree(d_r), cudaFree(d_out), cudaFree(d_w), cudaFree(d_b);
}

static void test_layernorm(void) {
    if (!tu_gpu_ready()) return;
    static const int dims[] = {72, 383, 4096};
    uint64_t rng = 21;
    for (int di = 0; di < 3; di++)
        for (int ni = 0; ni < N_NS; ni++)
            for (int add = 0; add < 2; add++) check_layernorm(NS[ni], dims[di], add, ni % 2 == 0 || add, &rng);
}

// ----------------------------------------------------------------------------
// gelu (plain / gated, tanh / erf)

static void check_gelu(int n, int hidden, int gated, int tanh_approx, uint64_t *rng) {
    size_t in_n = (size_t)n * hidden * (gated ? 2 : 1), out_n = (size_t)n * hidden;
    float *in = sl_malloc(sizeof(float) * in_n);
    fill_bf16(in, in_n, rng, 2.0f, 0.0f);
    sl_bf16 *d_in = dev_bf16(in, in_n), *d_out = dev_poisoned(sizeof(sl_bf16) * out_n);
    cuda_gelu(d_out, d_in, n, hidden, gated, tanh_approx, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    float *ref = sl_malloc(sizeof(float) * out_n), *got = sl_malloc(sizeof(float) * out_n);
    cpu_gelu(ref, in, n, hidden, gated, tanh_approx);
    get_bf16(got, d_out, out_n);
    char what[96];
    snprintf(what, sizeof what, "gelu n=%d hidden=%d gated=%d tanh=%d", n, hidden, gated,
             tanh_approx);
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)out_n, ATOL, RTOL), 0);
    free(in), free(ref), free(got);
    cudaFree(d_in), cudaFree(d_out);
}

static void test_gelu(void) {
    if (!tu_gpu_ready()) return;
    static const int hiddens[] = {72, 383, 1000};
    uint64_t rng = 22;
    for (int hi = 0; hi < 3; hi++)
        for (int ni = 0; ni < N_NS; ni++)
            for (int v = 0; v < 4; v++) check_gelu(NS[ni], hiddens[hi], v & 1, v >> 1, &rng);
    // the two forms differ by more than the tolerance somewhere: the test can tell them apart
    float x = -2.5f, a, b;
    cpu_gelu(&a, &x, 1, 1, 0, 0);
    cpu_gelu(&b, &x, 1, 1, 0, 1);
    CU_ASSERT(fabsf(a - b) > 1e-4f);
}

// ----------------------------------------------------------------------------
// add

static void test_add(void) {
    if (!tu_gpu_ready()) return;
    static const size_t sizes[] = {1, 7, 1001, 65541};
    uint64_t rng = 23;
    for (int si = 0; si < 4; si++) {
        size_t n = sizes[si];
        float *x = sl_malloc(sizeof(float) * n), *r = sl_malloc(sizeof(float) * n);
        fill_bf16(x, n, &rng, 1.0f, 0.0f);
        fill_bf16(r, n, &rng, 1.0f, 0.0f);
        sl_bf16 *d_x = dev_bf16(x, n), *d_r = dev_bf16(r, n);
        cuda_add(d_x, d_r, n, 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        cpu_add(x, r, n);
        for (size_t i = 0; i < n; i++) x[i] = bf16r(x[i]); // one rounding of the exact sum
        float *got = sl_malloc(sizeof(float) * n);
        get_bf16(got, d_x, n);
        CU_ASSERT_EQUAL(tu_compare_f32("add", got, x, (long)n, 0.0f, 0.0f), 0);
        free(x), free(r), free(got);
        cudaFree(d_x), cudaFree(d_r);
    }
}

// ----------------------------------------------------------------------------
// rope_kv_write_ex (partial and interleaved rotary)

typedef struct {
    int n_heads, n_kv_heads, head_dim, rotary_dim, interleaved, block_size;
} RopeCase;

static void check_rope_ex(const RopeCase *c, int n, uint64_t *rng) {
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, rd = c->rotary_dim;
    int bs = c->block_size, stride = (nh + 2 * nkv) * hd;
    size_t qn = (size_t)n * stride;
    int n_blocks = (n + bs - 1) / bs * 2 + 1; // half the slots stay unaddressed
    int total = n_blocks * bs;
    size_t cn = (size_t)n_blocks * nkv * bs * hd;
    float *qkv = sl_malloc(sizeof(float) * qn), *inv = sl_malloc(sizeof(float) * (rd / 2));
    fill_bf16(qkv, qn, rng, 1.0f, 0.0f);
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

    sl_bf16 *d_qkv = dev_bf16(qkv, qn);
    sl_bf16 *d_k = dev_poisoned(sizeof(sl_bf16) * cn), *d_v = dev_poisoned(sizeof(sl_bf16) * cn);
    int32_t *d_pos = dev_copy(pos, sizeof(int32_t) * n), *d_slots = dev_copy(slots, sizeof(int32_t) * n);
    float *d_inv = dev_copy(inv, sizeof(float) * (rd / 2));
    cuda_rope_kv_write_ex(d_qkv, d_k, d_v, d_pos, d_slots, d_inv, n, nh, nkv, hd, bs, rd,
                          c->interleaved, 0);
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

    char what[128];
    snprintf(what, sizeof what, "rope_ex nh=%d nkv=%d hd=%d rd=%d il=%d n=%d", nh, nkv, hd, rd,
             c->interleaved, n);
    float *got = sl_malloc(sizeof(float) * qn);
    get_bf16(got, d_qkv, qn);
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref_q, (long)qn, ATOL, RTOL), 0);

    uint16_t *hk = sl_malloc(sizeof(uint16_t) * cn), *hv = sl_malloc(sizeof(uint16_t) * cn);
    CUDA_CHECK(cudaMemcpy(hk, d_k, sizeof(uint16_t) * cn, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(hv, d_v, sizeof(uint16_t) * cn, cudaMemcpyDeviceToHost));
    char *used = calloc((size_t)total, 1);
    for (int i = 0; i < n; i++)
        if (slots[i] >= 0) used[slots[i]] = 1;
    long bad = 0, touched = 0;
    float *gk = sl_malloc(sizeof(float) * hd), *gv = sl_malloc(sizeof(float) * hd);
    for (int b = 0; b < n_blocks; b++)
        for (int h = 0; h < nkv; h++)
            for (int o = 0; o < bs; o++) {
                size_t e0 = (((size_t)b * nkv + h) * bs + o) * hd;
                if (used[b * bs + o]) {
                    for (int d = 0; d < hd; d++) {
                        gk[d] = sl_bf16_to_f32(hk[e0 + d]);
                        gv[d] = sl_bf16_to_f32(hv[e0 + d]);
                    }
                    bad += tu_compare_f32(what, gk, ref_k + e0, hd, ATOL, RTOL);
                    bad += tu_compare_f32(what, gv, ref_v + e0, hd, 0.0f, 0.0f);
                } else {
                    for (int d = 0; d < hd; d++)
                        touched += (hk[e0 + d] != 0xFFFF) + (hv[e0 + d] != 0xFFFF);
                }
            }
    if (touched) fprintf(stderr, "  %s: %ld unaddressed cache entries written\n", what, touched);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(touched, 0);

    free(qkv), free(inv), free(slots), free(pos), free(perm), free(cslots), free(ref_q);
    free(ref_k), free(ref_v), free(got), free(hk), free(hv), free(used), free(gk), free(gv);
    cudaFree(d_qkv), cudaFree(d_k), cudaFree(d_v), cudaFree(d_pos), cudaFree(d_slots);
    cudaFree(d_inv);
}

static void test_rope_ex(void) {
    if (!tu_gpu_ready()) return;
    static const RopeCase cases[] = {
        {4, 4, 20, 8, 0, 16},    // the zoo-gpt-neox fixture's shape
        {8, 8, 64, 16, 0, 16},   // pythia-like, rotary_pct 0.25
        {16, 16, 256, 64, 1, 32}, // GPT-J: interleaved, rotary_dim 64 of 256
        {6, 2, 80, 80, 1, 16},   // interleaved over the whole head, GQA
        {5, 1, 18, 10, 0, 8},    // MQA, odd half (5 pairs)
    };
    uint64_t rng = 24;
    for (int c = 0; c < 5; c++)
        for (int ni = 0; ni < N_NS; ni++) check_rope_ex(&cases[c], NS[ni], &rng);
}

int main(void) {
    static const tu_test tests[] = {
        {"layernorm and add_layernorm", test_layernorm},
        {"gelu plain/gated, tanh/erf", test_gelu},
        {"add", test_add},
        {"rope_kv_write_ex partial/interleaved", test_rope_ex},
        {NULL, NULL}};
    tu_suite("gpu_zoo_kernels", tests);
    return tu_main();
}
