// test_gpu_kernels.c: the memory-bound CUDA kernels (embed, gather, rmsnorm,
// add_rmsnorm, rope_kv_write, swiglu, conversions) against their CPU twins.
//
// Method (llm.c style): inputs drawn from a fixed seed, rounded to bf16 on the
// host; the GPU runs on those bf16 values and the CPU twin (kernels/cpu) on
// the same values widened to fp32, so the only differences left are the
// GPU's bf16 output rounding and fp32 ordering. Shapes are awkward on
// purpose (n = 1, 3, 37, 300; dims 72, 383, 384, 4096; head dims 16, 18, 64,
// 128, 72) so both the 16-byte vector paths and the scalar paths run, and
// misaligned views force the scalar path on vector-friendly shapes. Outputs
// are poisoned with 0xFF bytes (NaN in bf16) first, so an unwritten element
// fails. For rope_kv_write the whole cache is poisoned and every entry no
// slot addresses must still hold the poison afterwards.
//
// Without a GPU every test prints "skipped: no CUDA device" and passes,
// unless SLUICE_REQUIRE_GPU=1. With SLUICE_GPU_BENCH=1 a benchmark suite
// also runs: achieved GB/s of each kernel at n = 4096, dim 4096 next to the
// device-to-device copy bandwidth (it prints, it never fails);
// SLUICE_GPU_BENCH_N=rows changes n.
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

// Tolerance for bf16 outputs against the fp32 twin. A bf16 value carries 8
// significant bits, so rounding alone moves it by up to 2^-9 relative, and a
// rounding decision flipped by fp32 summation order or FMA contraction by one
// ulp, at most 2^-7 relative. RTOL = 2^-6 allows two ulps; ATOL covers results
// that cancel towards zero (rope), where the fp32 error is ~1e-7 * |input|.
// Wrong semantics (missing eps, unrounded residual, wrong pairing) miss by far more.
#define ATOL 1e-3f
#define RTOL 1.5625e-2f

static const int NS[] = {1, 3, 37, 300};
#define N_NS (int)(sizeof NS / sizeof NS[0])

// ----------------------------------------------------------------------------
// device availability and the skip rule



// ----------------------------------------------------------------------------
// host/device helpers

// f[0, n) = bf16-rounded scale * N(0, 1).
static void fill_bf16(float *f, size_t n, uint64_t *rng, float scale) {
    for (size_t i = 0; i < n; i++) f[i] = bf16r(scale * tu_rand_normal(rng));
}

// Uploads host fp32 values (already bf16-exact) as bf16 into dst.
static void put_bf16(sl_bf16 *dst, const float *src, size_t n) {
    uint16_t *h = sl_malloc(sizeof *h * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_bf16(src[i]);
    CUDA_CHECK(cudaMemcpy(dst, h, sizeof *h * n, cudaMemcpyHostToDevice));
    free(h);
}

static sl_bf16 *dev_bf16(const float *src, size_t n) {
    sl_bf16 *d = dev_alloc(sizeof(sl_bf16) * n);
    put_bf16(d, src, n);
    return d;
}

// Downloads n bf16 values into host fp32 (widened exactly).
static void get_bf16(float *dst, const sl_bf16 *src, size_t n) {
    uint16_t *h = sl_malloc(sizeof *h * (n ? n : 1));
    CUDA_CHECK(cudaMemcpy(h, src, sizeof *h * n, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = sl_bf16_to_f32(h[i]);
    free(h);
}

// Host fp32 array rounded to bf16 in place (what a bf16 output of exact math holds).
static void round_bf16(float *f, size_t n) {
    for (size_t i = 0; i < n; i++) f[i] = bf16r(f[i]);
}

// ----------------------------------------------------------------------------
// conversions

static void test_convert(void) {
    if (!tu_gpu_ready()) return;
    static const size_t sizes[] = {1, 7, 8, 37, 1000, 65541};
    uint64_t rng = 11;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        for (int off = 0; off < 2; off++) { // off = 1: unaligned views, scalar path
            size_t n = sizes[si];
            float *f = sl_malloc(sizeof *f * n);
            for (size_t i = 0; i < n; i++) f[i] = tu_rand_normal(&rng) * powf(2.0f, (float)(i % 41) - 20);
            // Specials and ties: round-to-nearest-even must match sl_f32_to_bf16.
            const float special[] = {1.00390625f /* 1 + 2^-8: tie, to even (1) */,
                                     1.01171875f /* 1 + 3*2^-8: tie, to even (up) */,
                                     INFINITY, -INFINITY, NAN, -0.0f, 3.4e38f, 1e-40f};
            for (size_t i = 0; i < n && i < sizeof special / sizeof special[0]; i++)
                f[i] = special[i];

            float *d_in = dev_alloc(sizeof(float) * (n + 1));
            sl_bf16 *d_out = dev_poisoned(sizeof(sl_bf16) * (n + 1));
            CUDA_CHECK(cudaMemcpy(d_in + off, f, sizeof(float) * n, cudaMemcpyHostToDevice));
            cuda_f32_to_bf16(d_out + off, d_in + off, n, 0);
            CUDA_CHECK(cudaDeviceSynchronize());
            uint16_t *h = sl_malloc(sizeof *h * n);
            CUDA_CHECK(cudaMemcpy(h, d_out + off, sizeof *h * n, cudaMemcpyDeviceToHost));
            long bad = 0;
            for (size_t i = 0; i < n; i++) {
                uint16_t want = sl_f32_to_bf16(f[i]);
                int ok = isnan(f[i]) ? isnan(sl_bf16_to_f32(h[i])) : h[i] == want;
                if (!ok && bad++ < 5)
                    fprintf(stderr, "  f32_to_bf16 n=%zu off=%d [%zu]: %g -> 0x%04x, want 0x%04x\n",
                            n, off, i, f[i], h[i], want);
            }
            CU_ASSERT_EQUAL(bad, 0);

            // bf16 -> f32 of arbitrary bit patterns is exact widening.
            for (size_t i = 0; i < n; i++) h[i] = (uint16_t)tu_rand_u64(&rng);
            float *d_f = dev_poisoned(sizeof(float) * (n + 1));
            CUDA_CHECK(cudaMemcpy(d_out + off, h, sizeof *h * n, cudaMemcpyHostToDevice));
            cuda_bf16_to_f32(d_f + off, d_out + off, n, 0);
            CUDA_CHECK(cudaDeviceSynchronize());
            CUDA_CHECK(cudaMemcpy(f, d_f + off, sizeof(float) * n, cudaMemcpyDeviceToHost));
            bad = 0;
            for (size_t i = 0; i < n; i++) {
                float want = sl_bf16_to_f32(h[i]);
                int ok = isnan(want) ? isnan(f[i]) : memcmp(&f[i], &want, 4) == 0;
                if (!ok && bad++ < 5)
                    fprintf(stderr, "  bf16_to_f32 n=%zu off=%d [%zu]: 0x%04x -> %g, want %g\n", n,
                            off, i, h[i], f[i], want);
            }
            CU_ASSERT_EQUAL(bad, 0);
            free(h);
            free(f);
            cudaFree(d_in);
            cudaFree(d_out);
            cudaFree(d_f);
        }
    }
}

// ----------------------------------------------------------------------------
// embed and gather (exact copies: tolerance 0)

static const int COPY_DIMS[] = {72, 383, 384, 4096};

// Runs embed (table lookup) or gather_rows for m rows of dim from a table of
// `rows` rows, at element offset `off` of the device buffers (1 = unaligned).
static void check_copy(int embed, int m, int dim, int rows, int off, uint64_t *rng) {
    size_t tn = (size_t)rows * dim, on = (size_t)m * dim;
    float *table = sl_malloc(sizeof *table * tn);
    fill_bf16(table, tn, rng, 1.0f);
    int32_t *idx = sl_malloc(sizeof *idx * m);
    for (int j = 0; j < m; j++) idx[j] = (int32_t)(tu_rand_u64(rng) % rows);
    idx[0] = rows - 1; // both ends of the table
    if (m > 1) idx[1] = 0;
    if (m > 2) idx[2] = idx[0]; // a repeat

    sl_bf16 *d_table = dev_alloc(sizeof(sl_bf16) * (tn + 1));
    put_bf16(d_table + off, table, tn);
    sl_bf16 *d_out = dev_poisoned(sizeof(sl_bf16) * (on + 1));
    int32_t *d_idx = dev_copy(idx, sizeof *idx * m);
    if (embed)
        cuda_embed(d_out + off, d_table + off, d_idx, m, dim, 0);
    else
        cuda_gather_rows(d_out + off, d_table + off, d_idx, m, dim, 0);
    CUDA_CHECK(cudaDeviceSynchronize());

    float *got = sl_malloc(sizeof *got * on), *ref = sl_malloc(sizeof *ref * on);
    get_bf16(got, d_out + off, on);
    if (embed)
        cpu_embed(ref, table, idx, m, dim);
    else
        cpu_gather_rows(ref, table, idx, m, dim);
    char what[96];
    snprintf(what, sizeof what, "%s m=%d dim=%d off=%d", embed ? "embed" : "gather", m, dim, off);
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)on, 0.0f, 0.0f), 0);
    free(table), free(idx), free(got), free(ref);
    cudaFree(d_table), cudaFree(d_out), cudaFree(d_idx);
}

static void test_embed(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 21;
    for (int a = 0; a < N_NS; a++)
        for (int b = 0; b < 4; b++) check_copy(1, NS[a], COPY_DIMS[b], 1000, 0, &rng);
    check_copy(1, 37, 384, 1000, 1, &rng);
}

static void test_gather(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 22;
    for (int a = 0; a < N_NS; a++)
        for (int b = 0; b < 4; b++) check_copy(0, NS[a], COPY_DIMS[b], 311, 0, &rng);
    check_copy(0, 300, 4096, 311, 1, &rng);
}

// ----------------------------------------------------------------------------
// rmsnorm, add_rmsnorm

// dims: 72 and 384 take the warp-per-row vector path, 4096 a 128-thread row,
// 383 the scalar path, 40000 the scalar path past the register-cached limit.
static const int NORM_DIMS[] = {72, 383, 384, 4096, 40000};
#define N_NORM_DIMS (int)(sizeof NORM_DIMS / sizeof NORM_DIMS[0])

// x with a different scale per row (0.02 .. ~30), so that a wrong mean or a
// mixed-up row shows; w = 1 + 0.3 N(0,1), fp32 as the model keeps it.
static void norm_inputs(float *x, float *w, int n, int dim, uint64_t *rng) {
    for (int i = 0; i < n; i++) {
        float s = 0.02f * powf(1.5f, (float)(i % 19));
        fill_bf16(x + (size_t)i * dim, dim, rng, s);
    }
    for (int j = 0; j < dim; j++) w[j] = 1.0f + 0.3f * tu_rand_normal(rng);
}

// in_place: out == x (allowed; each element read before it is written).
static void check_rmsnorm(int n, int dim, int off, int in_place, uint64_t *rng) {
    size_t sz = (size_t)n * dim;
    const float eps = 1e-5f;
    float *x = sl_malloc(sizeof *x * sz), *w = sl_malloc(sizeof *w * dim);
    norm_inputs(x, w, n, dim, rng);
    sl_bf16 *d_x = dev_alloc(sizeof(sl_bf16) * (sz + 1));
    put_bf16(d_x + off, x, sz);
    float *d_w = dev_copy(w, sizeof *w * dim);
    sl_bf16 *d_out = in_place ? d_x : dev_poisoned(sizeof(sl_bf16) * (sz + 1));
    cuda_rmsnorm(d_out + off, d_x + off, d_w, n, dim, eps, 0);
    CUDA_CHECK(cudaDeviceSynchronize());

    float *got = sl_malloc(sizeof *got * sz), *ref = sl_malloc(sizeof *ref * sz);
    get_bf16(got, d_out + off, sz);
    cpu_rmsnorm(ref, x, w, n, dim, eps);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm n=%d dim=%d off=%d%s", n, dim, off,
             in_place ? " in-place" : "");
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)sz, ATOL, RTOL), 0);
    free(x), free(w), free(got), free(ref);
    cudaFree(d_x), cudaFree(d_w);
    if (!in_place) cudaFree(d_out);
}

static void test_rmsnorm(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 31;
    for (int a = 0; a < N_NS; a++)
        for (int b = 0; b < N_NORM_DIMS; b++)
            if (!(NS[a] == 300 && NORM_DIMS[b] == 40000)) check_rmsnorm(NS[a], NORM_DIMS[b], 0, 0, &rng);
    check_rmsnorm(37, 4096, 1, 0, &rng); // unaligned: scalar path on a vector shape
    check_rmsnorm(37, 4096, 0, 1, &rng);
    check_rmsnorm(37, 383, 0, 1, &rng);
}

// alias: out is r's buffer (the documented allowed alias).
static void check_add_rmsnorm(int n, int dim, int off, int alias, uint64_t *rng) {
    size_t sz = (size_t)n * dim;
    const float eps = 1e-6f;
    float *x = sl_malloc(sizeof *x * sz), *w = sl_malloc(sizeof *w * dim);
    float *r = sl_malloc(sizeof *r * sz);
    norm_inputs(x, w, n, dim, rng);
    fill_bf16(r, sz, rng, 0.7f);
    sl_bf16 *d_x = dev_alloc(sizeof(sl_bf16) * (sz + 1));
    sl_bf16 *d_r = dev_alloc(sizeof(sl_bf16) * (sz + 1));
    put_bf16(d_x + off, x, sz);
    put_bf16(d_r + off, r, sz);
    float *d_w = dev_copy(w, sizeof *w * dim);
    sl_bf16 *d_out = alias ? d_r : dev_poisoned(sizeof(sl_bf16) * (sz + 1));
    cuda_add_rmsnorm(d_out + off, d_x + off, d_r + off, d_w, n, dim, eps, 0);
    CUDA_CHECK(cudaDeviceSynchronize());

    float *got_x = sl_malloc(sizeof *got_x * sz), *got = sl_malloc(sizeof *got * sz);
    float *ref = sl_malloc(sizeof *ref * sz), *ref2 = sl_malloc(sizeof *ref2 * sz);
    get_bf16(got_x, d_x + off, sz);
    get_bf16(got, d_out + off, sz);
    // The twin keeps x + r in fp32; the GPU contract is that x holds it rounded
    // to bf16 (both sums are exact fp32 sums of the same two values, so the
    // rounded twin must match bit for bit) and that out normalises that x.
    cpu_add_rmsnorm(ref2, x, r, w, n, dim, eps); // x becomes x + r (fp32)
    round_bf16(x, sz);
    cpu_rmsnorm(ref, x, w, n, dim, eps);
    char what[112];
    snprintf(what, sizeof what, "add_rmsnorm.x n=%d dim=%d off=%d%s", n, dim, off,
             alias ? " out=r" : "");
    CU_ASSERT_EQUAL(tu_compare_f32(what, got_x, x, (long)sz, 0.0f, 0.0f), 0);
    snprintf(what, sizeof what, "add_rmsnorm.out n=%d dim=%d off=%d%s", n, dim, off,
             alias ? " out=r" : "");
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)sz, ATOL, RTOL), 0);
    // Against the unrounded twin the residual's bf16 rounding (2^-9) adds to
    // the output's: still inside two ulps plus ATOL.
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref2, (long)sz, ATOL, RTOL), 0);
    free(x), free(w), free(r), free(got_x), free(got), free(ref), free(ref2);
    cudaFree(d_x), cudaFree(d_r), cudaFree(d_w);
    if (!alias) cudaFree(d_out);
}

static void test_add_rmsnorm(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 41;
    for (int a = 0; a < N_NS; a++)
        for (int b = 0; b < N_NORM_DIMS; b++)
            if (!(NS[a] == 300 && NORM_DIMS[b] == 40000))
                check_add_rmsnorm(NS[a], NORM_DIMS[b], 0, 0, &rng);
    check_add_rmsnorm(37, 4096, 1, 0, &rng);
    for (int b = 0; b < N_NORM_DIMS; b++) check_add_rmsnorm(37, NORM_DIMS[b], 0, 1, &rng);
    check_add_rmsnorm(3, 4096, 1, 1, &rng);
}

// ----------------------------------------------------------------------------
// swiglu

static void check_swiglu(int n, int hidden, int off, uint64_t *rng) {
    size_t in_n = (size_t)n * 2 * hidden, out_n = (size_t)n * hidden;
    float *gu = sl_malloc(sizeof *gu * in_n);
    fill_bf16(gu, in_n, rng, 2.5f); // gates from deep negative (silu ~ 0) to large
    sl_bf16 *d_gu = dev_alloc(sizeof(sl_bf16) * (in_n + 1));
    put_bf16(d_gu + off, gu, in_n);
    sl_bf16 *d_out = dev_poisoned(sizeof(sl_bf16) * (out_n + 1));
    cuda_swiglu(d_out + off, d_gu + off, n, hidden, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    float *got = sl_malloc(sizeof *got * out_n), *ref = sl_malloc(sizeof *ref * out_n);
    get_bf16(got, d_out + off, out_n);
    cpu_swiglu(ref, gu, n, hidden);
    char what[96];
    snprintf(what, sizeof what, "swiglu n=%d hidden=%d off=%d", n, hidden, off);
    CU_ASSERT_EQUAL(tu_compare_f32(what, got, ref, (long)out_n, ATOL, RTOL), 0);
    free(gu), free(got), free(ref);
    cudaFree(d_gu), cudaFree(d_out);
}

static void test_swiglu(void) {
    if (!tu_gpu_ready()) return;
    static const int hidden[] = {72, 383, 384, 4096, 14336};
    uint64_t rng = 51;
    for (int a = 0; a < N_NS; a++)
        for (int b = 0; b < 5; b++) check_swiglu(NS[a], hidden[b], 0, &rng);
    check_swiglu(37, 4096, 1, &rng);
}

// ----------------------------------------------------------------------------
// rope_kv_write

typedef struct {
    int n_heads, n_kv_heads, head_dim, block_size, rope_type;
    float theta;
} RopeCase;

// Row i's slot: distinct, shuffled across all n_blocks * block_size slots
// (so rows of one call land in scattered blocks and offsets); every 7th row
// from the third on is padding (slot -1). pos mixes short and ~128k contexts.
static void rope_slots(int32_t *slots, int32_t *pos, int n, int total_slots, uint64_t *rng) {
    int32_t *perm = sl_malloc(sizeof *perm * total_slots);
    for (int s = 0; s < total_slots; s++) perm[s] = s;
    for (int s = total_slots - 1; s > 0; s--) {
        int t = (int)(tu_rand_u64(rng) % (uint64_t)(s + 1));
        int32_t tmp = perm[s];
        perm[s] = perm[t], perm[t] = tmp;
    }
    for (int i = 0; i < n; i++) {
        slots[i] = (n >= 3 && i % 7 == 2) ? -1 : perm[i];
        pos[i] = (i % 2) ? (int32_t)(tu_rand_u64(rng) % 131072) : (int32_t)(tu_rand_u64(rng) % 2048);
    }
    if (n > 1) pos[1] = 131071;
    free(perm);
}

static void check_rope(const RopeCase *c, int n, int off, uint64_t *rng) {
    int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, bs = c->block_size;
    int stride = (nh + 2 * nkv) * hd;
    size_t qn = (size_t)n * stride;
    int n_blocks = (n + bs - 1) / bs * 2 + 1; // half the slots stay unaddressed
    int total = n_blocks * bs;
    size_t per_block = (size_t)nkv * bs * hd, cn = (size_t)n_blocks * per_block;

    float *qkv = sl_malloc(sizeof *qkv * qn), *inv = sl_malloc(sizeof *inv * (hd / 2 + 1));
    int32_t *slots = sl_malloc(sizeof *slots * n), *pos = sl_malloc(sizeof *pos * n);
    fill_bf16(qkv, qn, rng, 1.0f);
    cpu_rope_inv_freq(inv, hd, c->rope_type, c->theta, 8.0f, 1.0f, 4.0f, 8192);
    rope_slots(slots, pos, n, total, rng);

    sl_bf16 *d_qkv = dev_alloc(sizeof(sl_bf16) * (qn + 1));
    put_bf16(d_qkv + off, qkv, qn);
    sl_bf16 *d_k = dev_poisoned(sizeof(sl_bf16) * (cn + 1));
    sl_bf16 *d_v = dev_poisoned(sizeof(sl_bf16) * (cn + 1));
    int32_t *d_pos = dev_copy(pos, sizeof *pos * n), *d_slots = dev_copy(slots, sizeof *slots * n);
    float *d_inv = dev_copy(inv, sizeof *inv * (hd / 2 + 1));
    cuda_rope_kv_write(d_qkv + off, d_k + off, d_v + off, d_pos, d_slots, d_inv, n, nh, nkv, hd,
                       bs, 0);
    CUDA_CHECK(cudaDeviceSynchronize());

    // CPU twin. It has no padding rule, so padding rows get private slots in
    // extra blocks past n_blocks, which the comparison ignores.
    int n_extra = (n + bs - 1) / bs;
    int32_t *cslots = sl_malloc(sizeof *cslots * n);
    for (int i = 0; i < n; i++) cslots[i] = slots[i] >= 0 ? slots[i] : total + i;
    size_t ccn = (size_t)(n_blocks + n_extra) * per_block;
    float *ref_q = sl_malloc(sizeof *ref_q * qn);
    float *ref_k = sl_malloc(sizeof *ref_k * ccn), *ref_v = sl_malloc(sizeof *ref_v * ccn);
    memcpy(ref_q, qkv, sizeof *ref_q * qn);
    for (size_t e = 0; e < ccn; e++) ref_k[e] = ref_v[e] = NAN;
    cpu_rope_kv_write(ref_q, ref_k, ref_v, pos, cslots, inv, n, nh, nkv, hd, bs);

    char what[128];
    snprintf(what, sizeof what, "rope nh=%d nkv=%d hd=%d bs=%d n=%d off=%d", nh, nkv, hd, bs, n, off);

    // qkv: q and k rotated (tolerance), v bit-exact, row by row.
    float *got_q = sl_malloc(sizeof *got_q * qn);
    get_bf16(got_q, d_qkv + off, qn);
    long bad_qk = 0, bad_v = 0;
    for (int i = 0; i < n; i++) {
        size_t r0 = (size_t)i * stride, qk = (size_t)(nh + nkv) * hd;
        bad_qk += tu_compare_f32(what, got_q + r0, ref_q + r0, (long)qk, ATOL, RTOL);
        bad_v += tu_compare_f32(what, got_q + r0 + qk, qkv + r0 + qk, (long)nkv * hd, 0.0f, 0.0f);
    }
    CU_ASSERT_EQUAL(bad_qk, 0);
    CU_ASSERT_EQUAL(bad_v, 0);

    // Cache: addressed slots hold the twin's k (tolerance) and v (exact);
    // every other entry still holds the 0xFFFF poison, bit for bit.
    uint16_t *hk = sl_malloc(sizeof *hk * cn), *hv = sl_malloc(sizeof *hv * cn);
    CUDA_CHECK(cudaMemcpy(hk, d_k + off, sizeof *hk * cn, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(hv, d_v + off, sizeof *hv * cn, cudaMemcpyDeviceToHost));
    char *used = calloc((size_t)total, 1);
    for (int i = 0; i < n; i++)
        if (slots[i] >= 0) used[slots[i]] = 1;
    long bad_k = 0, bad_vc = 0, touched = 0, n_used = 0;
    for (int s = 0; s < total; s++) n_used += used[s];
    float *gk = sl_malloc(sizeof *gk * hd), *gv = sl_malloc(sizeof *gv * hd);
    for (int b = 0; b < n_blocks; b++)
        for (int h = 0; h < nkv; h++)
            for (int o = 0; o < bs; o++) {
                size_t e0 = (((size_t)b * nkv + h) * bs + o) * hd;
                if (used[b * bs + o]) {
                    for (int d = 0; d < hd; d++) {
                        gk[d] = sl_bf16_to_f32(hk[e0 + d]);
                        gv[d] = sl_bf16_to_f32(hv[e0 + d]);
                    }
                    bad_k += tu_compare_f32(what, gk, ref_k + e0, hd, ATOL, RTOL);
                    bad_vc += tu_compare_f32(what, gv, ref_v + e0, hd, 0.0f, 0.0f);
                } else {
                    for (int d = 0; d < hd; d++)
                        touched += (hk[e0 + d] != 0xFFFF) + (hv[e0 + d] != 0xFFFF);
                }
            }
    if (touched) fprintf(stderr, "  %s: %ld unaddressed cache entries written\n", what, touched);
    CU_ASSERT_EQUAL(bad_k, 0);
    CU_ASSERT_EQUAL(bad_vc, 0);
    CU_ASSERT_EQUAL(touched, 0);
    // The check above is not vacuous: some slots were addressed, some not.
    CU_ASSERT(n_used > 0 && n_used < total);

    free(qkv), free(inv), free(slots), free(pos), free(cslots), free(ref_q), free(ref_k);
    free(ref_v), free(got_q), free(hk), free(hv), free(used), free(gk), free(gv);
    cudaFree(d_qkv), cudaFree(d_k), cudaFree(d_v), cudaFree(d_pos), cudaFree(d_slots);
    cudaFree(d_inv);
}

static void test_rope_kv_write(void) {
    if (!tu_gpu_ready()) return;
    // GQA ratios 1, 4, 8; vector head dims (16, 64, 128) and scalar ones
    // (18: half not a whole vector; 72: 8-aligned but half is not); llama3
    // frequency scaling in one case.
    static const RopeCase cases[] = {
        {4, 4, 16, 16, 0, 10000.0f},   {8, 2, 18, 16, 0, 10000.0f},
        {8, 1, 64, 32, 0, 10000.0f},   {32, 8, 128, 16, 2, 500000.0f},
        {4, 1, 72, 32, 1, 1000000.0f}, {8, 8, 128, 32, 0, 10000.0f},
    };
    uint64_t rng = 61;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int a = 0; a < N_NS; a++) check_rope(&cases[k], NS[a], 0, &rng);
    check_rope(&cases[3], 37, 1, &rng); // unaligned views: scalar path at head_dim 128
}

// ----------------------------------------------------------------------------
// bandwidth benchmark (SLUICE_GPU_BENCH=1): prints, never fails

#define BENCH_SETS 6 // input sets rotated per sample so the working set is >> L2
#define BENCH_REPS 20

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef void (*bench_fn)(void *ctx, int set);

// Median over BENCH_REPS samples of the time of one call (ms); each sample
// runs all BENCH_SETS sets once between two events.
static float bench_time(bench_fn fn, void *ctx) {
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int w = 0; w < 2; w++)
        for (int s = 0; s < BENCH_SETS; s++) fn(ctx, s);
    float t[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS; r++) {
        CUDA_CHECK(cudaEventRecord(e0, 0));
        for (int s = 0; s < BENCH_SETS; s++) fn(ctx, s);
        CUDA_CHECK(cudaEventRecord(e1, 0));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&t[r], e0, e1));
        t[r] /= BENCH_SETS;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    qsort(t, BENCH_REPS, sizeof t[0], cmp_float);
    return 0.5f * (t[BENCH_REPS / 2 - 1] + t[BENCH_REPS / 2]);
}

typedef struct {
    int n, dim, nh, nkv, hd, bs;
    size_t copy_bytes;
    void *copy_src, *copy_dst;
    sl_bf16 *a[BENCH_SETS], *b[BENCH_SETS], *c[BENCH_SETS], *kc[BENCH_SETS], *vc[BENCH_SETS];
    float *w, *inv;
    int32_t *pos, *slots, *tokens;
    sl_bf16 *table;
} Bench;

static void b_copy(void *p, int s) {
    Bench *B = p;
    (void)s;
    CUDA_CHECK(cudaMemcpyAsync(B->copy_dst, B->copy_src, B->copy_bytes, cudaMemcpyDeviceToDevice, 0));
}
static void b_rmsnorm(void *p, int s) {
    Bench *B = p;
    cuda_rmsnorm(B->b[s], B->a[s], B->w, B->n, B->dim, 1e-5f, 0);
}
static void b_add_rmsnorm(void *p, int s) {
    Bench *B = p;
    cuda_add_rmsnorm(B->c[s], B->a[s], B->b[s], B->w, B->n, B->dim, 1e-5f, 0);
}
static void b_swiglu(void *p, int s) { // gu = a|b rows of 2*dim: a holds (n, 2*dim)
    Bench *B = p;
    cuda_swiglu(B->c[s], B->a[s], B->n, B->dim, 0);
}
static void b_rope(void *p, int s) {
    Bench *B = p;
    cuda_rope_kv_write(B->a[s], B->kc[s], B->vc[s], B->pos, B->slots, B->inv, B->n, B->nh,
                       B->nkv, B->hd, B->bs, 0);
}
static void b_embed(void *p, int s) {
    Bench *B = p;
    cuda_embed(B->b[s], B->table, B->tokens + (size_t)s * B->n, B->n, B->dim, 0);
}

static void test_bench(void) {
    if (!tu_gpu_ready()) return;
    Bench B = {.n = 4096, .dim = 4096, .nh = 32, .nkv = 8, .hd = 128, .bs = 16};
    const char *env_n = getenv("SLUICE_GPU_BENCH_N"); // rows, to see other sizes
    if (env_n && atoi(env_n) >= 16) B.n = atoi(env_n) / 16 * 16;
    int n = B.n, dim = B.dim;
    int qkv_w = (B.nh + 2 * B.nkv) * B.hd;
    size_t big = (size_t)n * (2 * dim > qkv_w ? 2 * dim : qkv_w); // a: gu or qkv or x
    int n_blocks = n / B.bs;
    size_t cache_n = (size_t)n_blocks * B.nkv * B.bs * B.hd;
    int vocab = (int)(big / dim); // a 64 MiB table
    uint64_t rng = 99;

    // Random bf16 data (never zeros), uploaded once and copied to every set.
    float *h = sl_malloc(sizeof *h * big);
    fill_bf16(h, big, &rng, 1.0f);
    for (int s = 0; s < BENCH_SETS; s++) {
        B.a[s] = dev_alloc(sizeof(sl_bf16) * big);
        B.b[s] = dev_alloc(sizeof(sl_bf16) * (size_t)n * dim);
        B.c[s] = dev_alloc(sizeof(sl_bf16) * (size_t)n * dim);
        B.kc[s] = dev_poisoned(sizeof(sl_bf16) * cache_n);
        B.vc[s] = dev_poisoned(sizeof(sl_bf16) * cache_n);
        put_bf16(B.a[s], h, big);
        put_bf16(B.b[s], h, (size_t)n * dim);
    }
    B.table = dev_bf16(h, (size_t)vocab * dim);
    float *w = sl_malloc(sizeof *w * dim), *inv = sl_malloc(sizeof *inv * B.hd);
    for (int j = 0; j < dim; j++) w[j] = 1.0f + 0.1f * tu_rand_normal(&rng);
    cpu_rope_inv_freq(inv, B.hd, 0, 500000.0f, 1, 1, 1, 8192);
    B.w = dev_copy(w, sizeof *w * dim);
    B.inv = dev_copy(inv, sizeof *inv * B.hd / 2);
    int32_t *pos = sl_malloc(sizeof *pos * n), *slots = sl_malloc(sizeof *slots * n);
    int32_t *tok = sl_malloc(sizeof *tok * n * BENCH_SETS);
    rope_slots(slots, pos, n, n, &rng); // for its mix of short and 128k positions
    for (int i = 0; i < n; i++) slots[i] = i; // prefill-like: in order, no padding
    for (int i = 0; i < n * BENCH_SETS; i++) tok[i] = (int32_t)(tu_rand_u64(&rng) % vocab);
    B.pos = dev_copy(pos, sizeof *pos * n);
    B.slots = dev_copy(slots, sizeof *slots * n);
    B.tokens = dev_copy(tok, sizeof *tok * n * BENCH_SETS);
    B.copy_bytes = (size_t)512 << 20;
    B.copy_src = dev_alloc(B.copy_bytes);
    B.copy_dst = dev_alloc(B.copy_bytes);
    CUDA_CHECK(cudaMemcpy(B.copy_src, B.a[0], sizeof(sl_bf16) * big, cudaMemcpyDeviceToDevice));

    double nd = (double)n * dim * 2; // bytes of one (n, dim) bf16 tensor
    double rope_bytes = (double)n * 2 * ((B.nh + 2 * B.nkv) + (B.nh + B.nkv) + 2 * B.nkv) * B.hd;
    struct {
        const char *name;
        bench_fn fn;
        double bytes;
    } rows[] = {
        {"memcpy D2D (ceiling)", b_copy, 2.0 * B.copy_bytes},
        {"rmsnorm", b_rmsnorm, 2 * nd + dim * 4.0},
        {"add_rmsnorm", b_add_rmsnorm, 4 * nd + dim * 4.0},
        {"rope_kv_write 32/8x128", b_rope, rope_bytes},
        {"swiglu", b_swiglu, 3 * nd},
        {"embed", b_embed, 2 * nd},
    };
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("\nbandwidth on %s, n=%d dim=%d (bytes read + written; median of %d)\n", prop.name, n,
           dim, BENCH_REPS);
    printf("  %-24s %10s %10s %8s\n", "kernel", "time us", "GB/s", "of copy");
    double copy_gbs = 0;
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        float ms = bench_time(rows[k].fn, &B);
        double gbs = rows[k].bytes / (ms * 1e-3) / 1e9;
        if (k == 0) copy_gbs = gbs;
        printf("  %-24s %10.1f %10.0f %7.0f%%\n", rows[k].name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int s = 0; s < BENCH_SETS; s++) {
        cudaFree(B.a[s]), cudaFree(B.b[s]), cudaFree(B.c[s]), cudaFree(B.kc[s]);
        cudaFree(B.vc[s]);
    }
    cudaFree(B.table), cudaFree(B.w), cudaFree(B.inv), cudaFree(B.pos), cudaFree(B.slots);
    cudaFree(B.tokens), cudaFree(B.copy_src), cudaFree(B.copy_dst);
    free(h), free(w), free(inv), free(pos), free(slots), free(tok);
}

// ----------------------------------------------------------------------------

int main(void) {
    static const tu_test kernels[] = {
        {"convert f32<->bf16", test_convert},
        {"embed", test_embed},
        {"gather_rows", test_gather},
        {"rmsnorm", test_rmsnorm},
        {"add_rmsnorm", test_add_rmsnorm},
        {"swiglu", test_swiglu},
        {"rope_kv_write", test_rope_kv_write},
        {NULL, NULL},
    };
    static const tu_test bench[] = {{"bandwidth", test_bench}, {NULL, NULL}};
    tu_suite("gpu_kernels", kernels);
    const char *b = getenv("SLUICE_GPU_BENCH");
    if (b && strcmp(b, "1") == 0) tu_suite("gpu_bench", bench);
    return tu_main();
}
