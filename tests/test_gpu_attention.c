// test_gpu_attention.c: cuda_paged_attention (prefill + decode kernels)
// against cpu_paged_attention, and its sliding-window form
// (cuda_paged_attention_window vs cpu_paged_attention_ex).
//
// Method (llm.c style): a paged KV cache filled from a fixed seed and rounded
// to bf16, with block tables that are a random permutation of the pool (so no
// sequence's blocks are contiguous and unused blocks hold data too); q (inside
// qkv rows) likewise. The GPU runs on the bf16 values, the CPU twin on the same
// values widened to fp32. One call mixes every kind of row: decode rows with
// contexts 1 .. 5000, a 2-row sequence straddling a 64-row tile, a 37-row
// chunk at positions 100..136 (its earlier chunk already cached), a whole
// 300-row prompt. Shapes cover GQA ratios 1, 3, 4, 8, 12 (MQA), 4 (MQA with
// 4 heads), head dims 64 and 128 (fast paths) and 18, 80, 96 (padded/generic
// paths), block sizes 8, 16, 32, 128. Separate cases take the decode-only path
// (many sequences: one split, the CTA writes the output itself; few long
// sequences: split-K plus the reduction), the prefill-only path, and
// max_kv_len given as an upper bound as a CUDA graph would. The output and
// the split-K workspace are poisoned with 0xFF bytes (NaN) first.
//
// The same cases with an FP8 (e4m3) cache through cuda_paged_attention_ex
// (prefill: codes staged by cp.async and decoded in shared memory; decode:
// decoded in registers): the CPU twin gets the decoded codes times the
// scales, so the expected error is the bf16 cache's (same tolerances). Extra
// head dims 72 (rows a multiple of 8 codes but not 16: 8-byte copies) and 256
// (64-row tiles only), a chunk over 1000 cached positions (18 tiles through
// the two staging buffers), a window and ALiBi. With scales 1 the output
// must also equal the bf16 path's on a bf16 cache of the decoded values, bit
// for bit. The 128-row tiles are the default for head_dim <= 128;
// SLUICE_PREFILL_MT=1 runs the 64-row ones. Head dim 128 takes the wgmma
// prefill kernel; one test runs its cases on the mma.sync kernel too.
//
// Without a GPU every test prints "skipped: no CUDA device" and passes,
// unless SLUICE_REQUIRE_GPU=1. With SLUICE_GPU_BENCH=1 a benchmark also runs
// (decode GB/s against the device-to-device copy, prefill TFLOP/s with a
// bf16 and an FP8 cache); it prints and never fails.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "fp8.h"
#include "gpu_testutil.h"
#include "testutil.h"

// Tolerances, |gpu - cpu| <= ATOL + RTOL * |cpu|. Both paths round the output
// to bf16: up to 2^-8 relative (8 significant bits), plus fp32 ordering; RTOL
// allows about two such roundings.
// - decode rows keep the softmax weights in fp32 end to end, so beyond the
//   output rounding only fp32 noise (~1e-6) remains: ATOL 1e-3. Outputs of
//   long contexts are small (|o| ~ 0.02 at 5000 positions), and dropping or
//   double-counting one 256-position split moves them by several 1e-3.
//   (The FP8 cache's tensor-core decode rounds P to fp16 and stays within
//   it.) Over a bf16 cache the tensor-core decode kernel rounds P to bf16,
//   as prefill does, and gets the prefill tolerance; its splits and merge
//   are the FP8 kernel's code, held to 1e-3 there.
// - prefill rows round the softmax weights P to bf16 before the P.V tensor-core
//   product (as FlashAttention does): each weight carries up to 2^-8 relative
//   error, so |err| <= 2^-8 * sum_t p_t |v_t|, which is largest for rows with
//   few keys (~2e-3 typical, ~4e-3 rare with |v| ~ N(0,1)): ATOL 6e-3. A
//   wrong mask, block or head misses by ~|v|/n_keys or far more, which the
//   early rows of every prefill sequence (1 .. 40 keys) expose.
#define RTOL 1e-2f
#define ATOL_DECODE 1e-3f
#define ATOL_PREFILL 6e-3f

// ----------------------------------------------------------------------------
// device availability and the skip rule



// ----------------------------------------------------------------------------
// host/device helpers

// Device copy of host f32 values (already bf16-exact) as bf16.
static sl_bf16 *dev_bf16(const float *f, size_t n) {
    sl_bf16 *h = sl_malloc(n * sizeof *h + 2);
    for (size_t i = 0; i < n; i++) h[i] = sl_f32_to_bf16(f[i]);
    sl_bf16 *d = dev_alloc(n * sizeof *d);
    CUDA_CHECK(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static int32_t *dev_i32(const int32_t *h, size_t n) {
    int32_t *d = dev_alloc(n * sizeof *d);
    CUDA_CHECK(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
    return d;
}

// Fisher-Yates permutation of [0, n).
static void shuffle_ids(int32_t *ids, int n, uint64_t *rng) {
    for (int i = 0; i < n; i++) ids[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(tu_rand_u64(rng) % (uint64_t)(i + 1));
        int32_t t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
    }
}

// ----------------------------------------------------------------------------
// one call: build the batch, run both sides, compare

typedef struct {
    const char *name;
    int n_heads, n_kv_heads, head_dim, block_size;
    float q_gain; // q ~ N(0, q_gain^2): larger values sharpen the softmax
} Shape;

// A sequence in the call: rows at positions start .. start + rows - 1, so its
// cache holds start + rows positions after the step.
typedef struct {
    int rows, start;
} Seq;

// Sliding window of the calls (0: none) and ALiBi slopes (0: none, 1 BLOOM's,
// 2 MPT's); set by test_sliding_window and test_alibi only.
static int g_window = 0, g_alibi = 0;

// 1: the cache is FP8 e4m3 codes with these scales (not powers of two, so a
// scale applied twice or not at all shows). 2: codes with scales 1, and the
// output must also equal, bit for bit, the bf16 path's on a bf16 cache
// holding the decoded values (the decode is exact and the math after it the
// same), except decode rows that the tensor-core FP8 decode kernel takes.
static int g_kv_fp8 = 0;
#define KS8 0.03f
#define VS8 0.05f

// max_kv_mode: 0 the true largest kv_len, 1 the table's capacity (what a
// CUDA graph would pass), 2 an underestimate (1).
static void run_case(const Shape *sh, const Seq *seqs, int n_seqs, int max_kv_mode,
                     uint64_t seed) {
    const int nh = sh->n_heads, nkv = sh->n_kv_heads, hd = sh->head_dim, bs = sh->block_size;
    const int stride = (nh + 2 * nkv) * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    uint64_t rng = seed;

    // batch metadata
    int n = 0, max_kv = 0, max_need = 0, total_blocks = 0;
    for (int s = 0; s < n_seqs; s++) {
        int kv = seqs[s].start + seqs[s].rows, need = (kv + bs - 1) / bs;
        n += seqs[s].rows;
        if (kv > max_kv) max_kv = kv;
        if (need > max_need) max_need = need;
        total_blocks += need;
    }
    const int max_blocks = max_need + 2; // slack entries stay -1: reading one faults
    const int n_blocks = total_blocks + 5; // spare blocks hold random data too
    int32_t *pos = sl_malloc(sizeof(int32_t) * n), *seq_of = sl_malloc(sizeof(int32_t) * n);
    int32_t *seq_start = sl_malloc(sizeof(int32_t) * (n_seqs + 1));
    int32_t *kv_len = sl_malloc(sizeof(int32_t) * n_seqs);
    int32_t *bt = sl_malloc(sizeof(int32_t) * n_seqs * max_blocks);
    int32_t *perm = sl_malloc(sizeof(int32_t) * n_blocks);
    int *is_decode = sl_malloc(sizeof(int) * n);
    shuffle_ids(perm, n_blocks, &rng);
    int row = 0, next_block = 0;
    for (int s = 0; s < n_seqs; s++) {
        seq_start[s] = row;
        kv_len[s] = seqs[s].start + seqs[s].rows;
        for (int r = 0; r < seqs[s].rows; r++, row++) {
            pos[row] = seqs[s].start + r;
            seq_of[row] = s;
            is_decode[row] = seqs[s].rows == 1;
        }
        int need = (kv_len[s] + bs - 1) / bs;
        for (int b = 0; b < max_blocks; b++) bt[s * max_blocks + b] = b < need ? perm[next_block++] : -1;
    }
    seq_start[n_seqs] = row;

    // data, bf16-exact (FP8: the codes, and for the CPU their values times the scales)
    size_t cache_n = (size_t)n_blocks * nkv * bs * hd, qkv_n = (size_t)n * stride;
    float *kc = sl_malloc(cache_n * sizeof(float)), *vc = sl_malloc(cache_n * sizeof(float));
    float *qkv = sl_malloc(qkv_n * sizeof(float));
    uint8_t *kc8 = NULL, *vc8 = NULL;
    for (size_t i = 0; i < cache_n; i++) kc[i] = bf16r(tu_rand_normal(&rng));
    for (size_t i = 0; i < cache_n; i++) vc[i] = bf16r(tu_rand_normal(&rng));
    const float ks8 = g_kv_fp8 == 2 ? 1.0f : KS8, vs8 = g_kv_fp8 == 2 ? 1.0f : VS8;
    if (g_kv_fp8) {
        kc8 = sl_malloc(cache_n), vc8 = sl_malloc(cache_n);
        for (size_t i = 0; i < cache_n; i++) {
            kc8[i] = sl_f32_to_e4m3(kc[i] * (1.0f / ks8));
            vc8[i] = sl_f32_to_e4m3(vc[i] * (1.0f / vs8));
            kc[i] = sl_e4m3_to_f32(kc8[i]) * ks8;
            vc[i] = sl_e4m3_to_f32(vc8[i]) * vs8;
        }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < stride; j++)
            qkv[(size_t)i * stride + j] =
                bf16r((j < nh * hd ? sh->q_gain : 1.0f) * tu_rand_normal(&rng));

    // ALiBi slopes of the call's heads
    float *slopes = NULL, *d_slopes = NULL;
    if (g_alibi) {
        slopes = sl_malloc(sizeof(float) * nh);
        cpu_alibi_slopes(slopes, nh, g_alibi, 8.0f);
        d_slopes = dev_alloc(sizeof(float) * nh);
        CUDA_CHECK(cudaMemcpy(d_slopes, slopes, sizeof(float) * nh, cudaMemcpyHostToDevice));
    }

    // reference
    size_t out_n = (size_t)n * nh * hd;
    float *ref = sl_malloc(out_n * sizeof(float)), *got = sl_malloc(out_n * sizeof(float));
    cpu_paged_attention_ex(ref, qkv, kc, vc, pos, seq_of, bt, max_blocks, n, nh, nkv, hd, bs,
                           scale, g_window, slopes);

    // GPU
    void *d_kc, *d_vc;
    if (g_kv_fp8) {
        d_kc = dev_alloc(cache_n), d_vc = dev_alloc(cache_n);
        CUDA_CHECK(cudaMemcpy(d_kc, kc8, cache_n, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(d_vc, vc8, cache_n, cudaMemcpyHostToDevice));
    } else {
        d_kc = dev_bf16(kc, cache_n), d_vc = dev_bf16(vc, cache_n);
    }
    sl_bf16 *d_qkv = dev_bf16(qkv, qkv_n);
    int32_t *d_pos = dev_i32(pos, n), *d_seq_of = dev_i32(seq_of, n);
    int32_t *d_seq_start = dev_i32(seq_start, n_seqs + 1), *d_kv_len = dev_i32(kv_len, n_seqs);
    int32_t *d_bt = dev_i32(bt, (size_t)n_seqs * max_blocks);
    sl_bf16 *d_out = dev_alloc(out_n * sizeof(sl_bf16));
    const int max_seq_len = max_blocks * bs;
    size_t ws_bytes = cuda_attention_workspace_bytes(n, nh, hd, max_seq_len);
    void *d_ws = dev_alloc(ws_bytes);
    CUDA_CHECK(cudaMemset(d_out, 0xFF, out_n * sizeof(sl_bf16)));
    CUDA_CHECK(cudaMemset(d_ws, 0xFF, ws_bytes ? ws_bytes : 1));
    int max_kv_arg = max_kv_mode == 0 ? max_kv : max_kv_mode == 1 ? max_seq_len : 1;
    if (g_kv_fp8)
        cuda_paged_attention_ex(d_out, d_qkv, d_kc, d_vc, d_pos, d_seq_of, d_seq_start, d_kv_len,
                                d_bt, max_blocks, n, n_seqs, max_kv_arg, nh, nkv, hd, bs, scale,
                                0, 1, ks8, vs8, g_window, d_slopes, d_ws, 0);
    else if (g_window || g_alibi)
        cuda_paged_attention_window(d_out, d_qkv, d_kc, d_vc, d_pos, d_seq_of, d_seq_start,
                                    d_kv_len, d_bt, max_blocks, n, n_seqs, max_kv_arg, nh, nkv,
                                    hd, bs, scale, g_window, d_slopes, d_ws, 0);
    else
        cuda_paged_attention(d_out, d_qkv, d_kc, d_vc, d_pos, d_seq_of, d_seq_start, d_kv_len,
                             d_bt, max_blocks, n, n_seqs, max_kv_arg, nh, nkv, hd, bs, scale,
                             d_ws, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    sl_bf16 *h_out = sl_malloc(out_n * sizeof(sl_bf16));
    CUDA_CHECK(cudaMemcpy(h_out, d_out, out_n * sizeof(sl_bf16), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < out_n; i++) got[i] = sl_bf16_to_f32(h_out[i]);
    long n_diff = 0; // g_kv_fp8 == 2: elements differing from the bf16 path's
    if (g_kv_fp8 == 2) {
        sl_bf16 *d_kb = dev_bf16(kc, cache_n), *d_vb = dev_bf16(vc, cache_n); // exact
        CUDA_CHECK(cudaMemset(d_out, 0xFF, out_n * sizeof(sl_bf16)));
        // the same prefill kernel as the FP8 run (the defaults differ by cache
        // type, and kernels sum in different orders)
        const int m8 = cuda_attention_prefill_wg_mode(1), m16 = cuda_attention_prefill_wg_mode(0);
        if (m8 != m16) cuda_attention_prefill_wg(m8);
        cuda_paged_attention_window(d_out, d_qkv, d_kb, d_vb, d_pos, d_seq_of, d_seq_start,
                                    d_kv_len, d_bt, max_blocks, n, n_seqs, max_kv_arg, nh, nkv,
                                    hd, bs, scale, g_window, d_slopes, d_ws, 0);
        if (m8 != m16) cuda_attention_prefill_wg(-1);
        sl_bf16 *h_ref = sl_malloc(out_n * sizeof(sl_bf16));
        CUDA_CHECK(cudaMemcpy(h_ref, d_out, out_n * sizeof(sl_bf16), cudaMemcpyDeviceToHost));
        // Decode rows at head_dim 64/128 take the tensor-core FP8 kernel (fp16
        // MMAs, its own order of sums), which has no bf16 twin: they are held
        // to the CPU reference's tolerance below (and in test_gpu_fp8).
        const char *tc_env = getenv("SLUICE_DECODE_TC");
        const int tc_decode = (hd == 64 || hd == 128) && !(tc_env && tc_env[0] == '0');
        for (size_t i = 0; i < out_n; i++) {
            if (h_out[i] == h_ref[i] || (tc_decode && is_decode[i / ((size_t)nh * hd)])) continue;
            if (n_diff++ < 5)
                fprintf(stderr, "  %s fp8 vs bf16 path: [%zu] (row %zu) %04x, bf16 path %04x\n",
                        sh->name, i, i / ((size_t)nh * hd), h_out[i], h_ref[i]);
        }
        free(h_ref);
        CUDA_CHECK(cudaFree(d_kb));
        CUDA_CHECK(cudaFree(d_vb));
    }

    // compare decode rows and prefill rows, each with its tolerance
    const size_t rw = (size_t)nh * hd;
    float *g2[2], *r2[2];
    long cnt[2] = {0, 0};
    for (int k = 0; k < 2; k++) g2[k] = sl_malloc(out_n * sizeof(float)), r2[k] = sl_malloc(out_n * sizeof(float));
    for (int i = 0; i < n; i++) {
        int k = is_decode[i] ? 0 : 1;
        memcpy(g2[k] + cnt[k], got + i * rw, rw * sizeof(float));
        memcpy(r2[k] + cnt[k], ref + i * rw, rw * sizeof(float));
        cnt[k] += (long)rw;
    }
    char what[160];
    const char *kind = g_kv_fp8 ? "/fp8" : "";
    snprintf(what, sizeof what, "%s%s/mode%d/decode", sh->name, kind, max_kv_mode);
    // decode rows over a bf16 cache on the tensor-core kernel round P to bf16
    // as prefill rows do: the prefill tolerance (see the top of the file)
    const float atol_d = !g_kv_fp8 && hd % 8 == 0 && cuda_attention_bf16_decode_uses_tc(hd, max_kv_arg)
                             ? ATOL_PREFILL
                             : ATOL_DECODE;
    long bad_d = tu_compare_f32(what, g2[0], r2[0], cnt[0], atol_d, RTOL);
    snprintf(what, sizeof what, "%s%s/mode%d/prefill", sh->name, kind, max_kv_mode);
    long bad_p = tu_compare_f32(what, g2[1], r2[1], cnt[1], ATOL_PREFILL, RTOL);
    // worst error as a fraction of the allowed one, per kind (margin report)
    double worst[2] = {0, 0};
    const float atol[2] = {atol_d, ATOL_PREFILL};
    for (int k = 0; k < 2; k++)
        for (long i = 0; i < cnt[k]; i++) {
            double f = fabs(g2[k][i] - r2[k][i]) / (atol[k] + RTOL * fabs(r2[k][i]));
            if (!(f <= worst[k])) worst[k] = f; // NaN sticks
        }
    if (g_kv_fp8) printf("  fp8 kv%s:", g_kv_fp8 == 2 ? " (= bf16 path)" : "");
    if (g_window || g_alibi) printf("  window %d alibi %d:", g_window, g_alibi);
    printf("  %-22s mode %d: %d rows, %d seqs, ws %zu B; worst err/tol decode %.2f prefill %.2f\n",
           sh->name, max_kv_mode, n, n_seqs, ws_bytes, worst[0], worst[1]);
    CU_ASSERT_EQUAL(bad_d, 0);
    CU_ASSERT_EQUAL(bad_p, 0);
    CU_ASSERT_EQUAL(n_diff, 0);

    for (int k = 0; k < 2; k++) free(g2[k]), free(r2[k]);
    CUDA_CHECK(cudaFree(d_kc));
    CUDA_CHECK(cudaFree(d_vc));
    CUDA_CHECK(cudaFree(d_qkv));
    CUDA_CHECK(cudaFree(d_pos));
    CUDA_CHECK(cudaFree(d_seq_of));
    CUDA_CHECK(cudaFree(d_seq_start));
    CUDA_CHECK(cudaFree(d_kv_len));
    CUDA_CHECK(cudaFree(d_bt));
    CUDA_CHECK(cudaFree(d_out));
    CUDA_CHECK(cudaFree(d_ws));
    if (d_slopes) CUDA_CHECK(cudaFree(d_slopes));
    free(slopes);
    free(h_out);
    free(ref);
    free(got);
    free(kc);
    free(vc);
    free(kc8);
    free(vc8);
    free(qkv);
    free(pos);
    free(seq_of);
    free(seq_start);
    free(kv_len);
    free(bt);
    free(perm);
    free(is_decode);
}

// The mixed call: decode rows of many lengths interleaved with prefill work.
static const Seq MIXED[] = {
    {1, 4999},  // decode, kv_len 5000
    {37, 100},  // chunk 2 of a prompt: rows at 100..136 over 100 cached positions
    {1, 0},     // decode, kv_len 1
    {1, 16},    // decode, kv_len 17 (one past a 16-block)
    {300, 0},   // a whole prompt
    {1, 299},   // decode, kv_len 300
    {2, 63},    // smallest prefill sequence, at positions 63, 64
    {1, 1000},  // decode, kv_len 1001
    {1, 4095},  // decode, kv_len 4096
    {1, 1},     // decode, kv_len 2
};
#define N_MIXED (int)(sizeof MIXED / sizeof MIXED[0])

static const Shape SHAPES[] = {
    {"gqa4_hd128_bs16", 32, 8, 128, 16, 1.0f},
    {"mha_hd64_bs32", 8, 8, 64, 32, 1.0f},
    {"gqa8_hd128_bs32_sharp", 16, 2, 128, 32, 3.0f},
    {"mqa12_hd64_bs16", 12, 1, 64, 16, 1.0f},
    {"gqa3_hd80_bs32", 6, 2, 80, 32, 1.0f},
    {"mqa4_hd18_bs16", 4, 1, 18, 16, 1.5f},
    {"gqa2_hd96_bs8", 4, 2, 96, 8, 1.0f},
    {"mha_hd128_bs128", 4, 4, 128, 128, 1.0f},
};
#define N_SHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])

static void test_mixed_shapes(void) {
    if (!tu_gpu_ready()) return;
    for (int i = 0; i < N_SHAPES; i++) run_case(&SHAPES[i], MIXED, N_MIXED, 0, 1000 + i);
}

// Head dim 128 has three prefill kernels: warpgroup MMAs (wgmma, which the
// other tests here take at head_dim 128 over a bf16 cache), the same
// warp-specialised and persistent (a producer warpgroup loads K/V into a
// ring of buffers; the other tests' kernel over an FP8 cache, with
// ping-pong) and the mma.sync kernel of the other head dims
// (SLUICE_PREFILL_WG=0). Each mode, mma.sync (0), wgmma without (1) and
// with (2) ping-pong, warp-specialised with (3) and without (4), on the
// head_dim-128 cases: mixed calls, prefill only (a chunk mid-block; two
// sequences sharing a tile; four segments of 1-6 key tiles in one CTA, so
// the ring's slots and phases carry across segments), a chunk deep into its
// context, a window with ALiBi, an FP8 cache (also bit for bit against the
// bf16 path on the decoded values).
static void test_prefill_mma_sync_hd128(void) {
    if (!tu_gpu_ready()) return;
    static const int hd128[] = {0, 2, 7};
    // SLUICE_TEST_PREFILL_MODE=m: only mode m (e.g. one kernel under racecheck)
    const char *only = getenv("SLUICE_TEST_PREFILL_MODE");
    for (int mode = 0; mode <= 4; mode++) { // mma.sync; wgmma; ping-pong; warp-specialised (+pp)
        if (only && *only && atoi(only) != mode) continue;
        printf("  prefill kernel mode %d\n", mode);
        cuda_attention_prefill_wg(mode);
        for (int i = 0; i < 3; i++) run_case(&SHAPES[hd128[i]], MIXED, N_MIXED, 0, 1200 + i);
        Seq chunk[1] = {{130, 50}}, two[2] = {{65, 0}, {64, 7}}, deep[2] = {{300, 1000}, {1, 1500}};
        run_case(&SHAPES[2], chunk, 1, 0, 1210);
        run_case(&SHAPES[0], two, 2, 0, 1211);
        Seq multi[4] = {{40, 500}, {100, 260}, {30, 0}, {90, 1200}};
        run_case(&SHAPES[2], multi, 4, 0, 1217);
        g_kv_fp8 = 1;
        run_case(&SHAPES[0], multi, 4, 0, 1218);
        g_kv_fp8 = 0;
        run_case(&SHAPES[0], deep, 2, 1, 1212);
        g_window = 37, g_alibi = 1;
        run_case(&SHAPES[0], MIXED, N_MIXED, 0, 1213);
        g_window = 0, g_alibi = 0;
        g_kv_fp8 = 1;
        run_case(&SHAPES[0], MIXED, N_MIXED, 0, 1214);
        run_case(&SHAPES[2], deep, 2, 0, 1215);
        g_kv_fp8 = 2;
        run_case(&SHAPES[7], MIXED, N_MIXED, 0, 1216);
        g_kv_fp8 = 0;
        if (mode >= 3) { // the persistent grid cut to 7 CTAs: many items each
            cuda_attention_prefill_ws_ctas(7);
            run_case(&SHAPES[0], MIXED, N_MIXED, 0, 1219);
            run_case(&SHAPES[2], multi, 4, 0, 1220);
            g_kv_fp8 = 1;
            run_case(&SHAPES[0], MIXED, N_MIXED, 0, 1221);
            run_case(&SHAPES[2], deep, 2, 0, 1222);
            g_kv_fp8 = 0;
            cuda_attention_prefill_ws_ctas(0);
        }
    }
    cuda_attention_prefill_wg(-1);
}

// max_kv_len as a graph would pass it (the table capacity), and below the
// truth: the last split always runs to the sequence's end.
static void test_max_kv_len_bounds(void) {
    if (!tu_gpu_ready()) return;
    run_case(&SHAPES[0], MIXED, N_MIXED, 1, 77);
    run_case(&SHAPES[4], MIXED, N_MIXED, 1, 78);
    run_case(&SHAPES[1], MIXED, N_MIXED, 2, 79);
}

// Decode only (the prefill kernel is not launched). 130 sequences x 8 kv
// heads fill the GPU without splitting (the CTA writes the output); 3 long
// sequences take split-K and the reduction.
static void test_decode_only(void) {
    if (!tu_gpu_ready()) return;
    uint64_t rng = 42;
    Seq many[130];
    for (int i = 0; i < 130; i++) many[i].rows = 1, many[i].start = (int)(tu_rand_u64(&rng) % 700);
    run_case(&SHAPES[0], many, 130, 0, 5);
    Seq few[3] = {{1, 2999}, {1, 4094}, {1, 4095}};
    run_case(&SHAPES[0], few, 3, 0, 6);
    run_case(&SHAPES[3], few, 3, 1, 7);
    Seq one[1] = {{1, 777}};
    run_case(&SHAPES[5], one, 1, 0, 8);
}

// Prefill only (a single sequence: the decode kernel is not launched), a chunk
// whose 130 rows start mid-block and cover parts of three 64-row tiles.
static void test_prefill_only(void) {
    if (!tu_gpu_ready()) return;
    Seq chunk[1] = {{130, 50}};
    run_case(&SHAPES[1], chunk, 1, 0, 9);
    run_case(&SHAPES[2], chunk, 1, 0, 10);
    Seq two[2] = {{65, 0}, {64, 7}}; // two prefill sequences sharing a tile
    run_case(&SHAPES[6], two, 2, 0, 11);
}

// Sliding windows (Mistral, Phi-3): 1 (only the row itself), windows that
// end mid-block and mid-tile, one wider than a decode split (splits wholly
// outside the window leave empty partials), and one wider than every context
// (same as none).
static void test_sliding_window(void) {
    if (!tu_gpu_ready()) return;
    static const int windows[] = {1, 5, 37, 300, 1000, 8192};
    for (int w = 0; w < 6; w++) {
        g_window = windows[w];
        run_case(&SHAPES[w % N_SHAPES], MIXED, N_MIXED, 0, 300 + w);
        run_case(&SHAPES[(w + 3) % N_SHAPES], MIXED, N_MIXED, 1, 400 + w);
        Seq few[3] = {{1, 2999}, {1, 4094}, {1, 4095}}; // decode split-K only
        run_case(&SHAPES[0], few, 3, 0, 500 + w);
        Seq chunk[1] = {{130, 50}}; // prefill only
        run_case(&SHAPES[1], chunk, 1, 0, 600 + w);
    }
    g_window = 0;
}

// ALiBi (BLOOM's and MPT's slopes; head counts 4, 6, 8, 12, 16, 32 cover
// both slope rules' power-of-two and remainder branches), alone and with a
// window. Prefill and decode, split-K, long contexts (up to 5000 positions,
// where slope * distance dwarfs q.k and a wrong sign or origin shows).
static void test_alibi(void) {
    if (!tu_gpu_ready()) return;
    for (int mode = 1; mode <= 2; mode++) {
        g_alibi = mode;
        for (int i = 0; i < N_SHAPES; i++) run_case(&SHAPES[i], MIXED, N_MIXED, 0, 700 + 10 * mode + i);
        Seq few[3] = {{1, 2999}, {1, 4094}, {1, 4095}};
        run_case(&SHAPES[0], few, 3, 1, 720 + mode);
        g_window = 37;
        run_case(&SHAPES[4], MIXED, N_MIXED, 0, 730 + mode);
        g_window = 0;
    }
    g_alibi = 0;
}

// FP8 cache: every shape on the mixed call, head dims 72 and 256, the
// prefill-only cases, a chunk deep into its context, a window with ALiBi,
// and max_kv_len as a graph passes it; then with scales 1 against the bf16
// path bit for bit.
static void test_fp8_cache(void) {
    if (!tu_gpu_ready()) return;
    static const Shape extra[] = {
        {"gqa4_hd72_bs16", 8, 2, 72, 16, 1.0f},
        {"gqa2_hd256_bs32", 4, 2, 256, 32, 1.0f},
    };
    g_kv_fp8 = 1;
    for (int i = 0; i < N_SHAPES; i++) run_case(&SHAPES[i], MIXED, N_MIXED, 0, 1100 + i);
    for (int i = 0; i < 2; i++) run_case(&extra[i], MIXED, N_MIXED, 0, 1120 + i);
    Seq chunk[1] = {{130, 50}};
    run_case(&SHAPES[1], chunk, 1, 0, 1130);
    run_case(&SHAPES[2], chunk, 1, 0, 1131);
    run_case(&extra[0], chunk, 1, 0, 1132);
    Seq two[2] = {{65, 0}, {64, 7}}; // two prefill sequences sharing a tile
    run_case(&SHAPES[6], two, 2, 0, 1133);
    run_case(&SHAPES[0], two, 2, 0, 1134);
    Seq deep[2] = {{100, 1000}, {1, 1500}}; // chunk 2 of a long prompt, and a decode row
    run_case(&SHAPES[0], deep, 2, 0, 1135);
    run_case(&SHAPES[3], deep, 2, 0, 1136);
    run_case(&extra[1], deep, 2, 0, 1137);
    g_window = 37, g_alibi = 1;
    run_case(&SHAPES[0], MIXED, N_MIXED, 0, 1140);
    g_window = 0, g_alibi = 0;
    run_case(&SHAPES[4], MIXED, N_MIXED, 1, 1141);
    // scales 1: bit for bit the bf16 path on the decoded values, every kind of tile load
    g_kv_fp8 = 2;
    for (int i = 0; i < N_SHAPES; i++) run_case(&SHAPES[i], MIXED, N_MIXED, 0, 1150 + i);
    for (int i = 0; i < 2; i++) run_case(&extra[i], MIXED, N_MIXED, 0, 1160 + i);
    run_case(&SHAPES[0], deep, 2, 0, 1162);
    g_kv_fp8 = 0;
}

static void test_workspace_bytes(void) {
    // no splits possible below 2 * DEC_MIN_CHUNK positions
    CU_ASSERT_EQUAL(cuda_attention_workspace_bytes(64, 32, 128, 256), 0);
    // bounded by the (sequence, split) pairs, independent of huge max_tokens
    size_t a = cuda_attention_workspace_bytes(8192, 32, 128, 131072);
    size_t b = cuda_attention_workspace_bytes(1 << 20, 32, 128, 131072);
    CU_ASSERT(a > 0);
    CU_ASSERT_EQUAL(a, b);
    CU_ASSERT(a <= (size_t)64 << 20);
    // grows with heads and head_dim
    CU_ASSERT(cuda_attention_workspace_bytes(4, 64, 128, 8192) >
              cuda_attention_workspace_bytes(4, 32, 128, 8192));
}

// ----------------------------------------------------------------------------
// The decode cases (direct and split-K, windows, ALiBi, the mixed calls, an
// FP8 cache) again at each other depth of the decode kernels' shared-memory
// ring (cuda_attention_decode_ring: 0 = loads into registers; the other
// tests run the default, 3).
static void test_decode_rings(void) {
    if (!tu_gpu_ready()) return;
    cuda_attention_bf16_decode_kernel(0); // the ring kernel at every context length
    static const int rings[] = {0, 4, 6};
    for (int i = 0; i < 3; i++) {
        printf("  decode ring %d\n", rings[i]);
        cuda_attention_decode_ring(rings[i]);
        test_decode_only();
        test_sliding_window();
        test_alibi();
        test_fp8_cache();
    }
    cuda_attention_decode_ring(-1);
    cuda_attention_bf16_decode_kernel(-2);
}

// The tensor-core decode kernel over a bf16 cache (kinds 1 and 2: registers
// fitted to 3 or 2 CTAs per SM; the default takes 2 from contexts of 1024 on,
// so the other tests run it too), on every decode case: the 8 shapes' mixed
// calls (head_dim 64 and 128 take it; the others keep the CUDA-core kernel),
// decode only (direct and split-K), windows, ALiBi, the context bound. It
// rounds P to bf16 before P.V, so the decode rows get the prefill rows'
// tolerance (see the top of the file).
static void test_decode_bf16_tc(void) {
    if (!tu_gpu_ready()) return;
    for (int kind = 1; kind <= 2; kind++) {
        printf("  bf16 tensor-core decode, kind %d\n", kind);
        cuda_attention_bf16_decode_kernel(kind);
        test_mixed_shapes();
        test_decode_only();
        test_sliding_window();
        test_alibi();
        test_max_kv_len_bounds();
    }
    cuda_attention_bf16_decode_kernel(-2);
}

// benchmark (SLUICE_GPU_BENCH=1): prints, never fails

static float median_f(float *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            float t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2];
}

#define BENCH_REPS 20

static void test_bench(void) {
    const char *b = getenv("SLUICE_GPU_BENCH");
    if (!b || strcmp(b, "1") != 0) {
        printf("benchmark off (SLUICE_GPU_BENCH=1 turns it on)\n");
        return;
    }
    if (!tu_gpu_ready()) return;
    const int nh = 32, nkv = 8, hd = 128, bs = 32, stride = (nh + 2 * nkv) * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const int max_batch = 256, max_ctx = 8192;
    const size_t n_blocks = (size_t)max_batch * max_ctx / bs;
    const size_t cache_bytes = n_blocks * nkv * bs * hd * sizeof(sl_bf16);
    const int pf_prompts = 8, pf_len = 2048, pf_tokens = pf_prompts * pf_len;
    sl_bf16 *kc = dev_alloc(cache_bytes), *vc = dev_alloc(cache_bytes);
    sl_bf16 *qkv = dev_alloc((size_t)pf_tokens * stride * sizeof(sl_bf16));
    sl_bf16 *out = dev_alloc((size_t)pf_tokens * nh * hd * sizeof(sl_bf16));
    // values only need to be finite and non-trivial: bf16 0x3C3C ~ 0.0115
    CUDA_CHECK(cudaMemset(kc, 0x3C, cache_bytes));
    CUDA_CHECK(cudaMemset(vc, 0x3D, cache_bytes));
    CUDA_CHECK(cudaMemset(qkv, 0x3E, (size_t)pf_tokens * stride * sizeof(sl_bf16)));
    size_t ws_bytes = cuda_attention_workspace_bytes(pf_tokens, nh, hd, max_ctx);
    void *ws = dev_alloc(ws_bytes);
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float ms[BENCH_REPS];
    uint64_t rng = 99;

    // copy bandwidth, bytes read + written
    const size_t cp_bytes = (size_t)1 << 30;
    for (int r = 0; r < 3; r++) CUDA_CHECK(cudaMemcpy(vc, kc, cp_bytes, cudaMemcpyDeviceToDevice));
    for (int r = 0; r < BENCH_REPS; r++) {
        CUDA_CHECK(cudaEventRecord(e0, 0));
        CUDA_CHECK(cudaMemcpyAsync(vc, kc, cp_bytes, cudaMemcpyDeviceToDevice, 0));
        CUDA_CHECK(cudaEventRecord(e1, 0));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms[r], e0, e1));
    }
    double copy_gbs = 2.0 * cp_bytes / (median_f(ms, BENCH_REPS) * 1e-3) / 1e9;
    printf("  D2D copy: %.0f GB/s (read + write)\n", copy_gbs);

    int32_t *perm = sl_malloc(sizeof(int32_t) * n_blocks);
    shuffle_ids(perm, (int)n_blocks, &rng);
    // long contexts, and the short ones of a 128/128 run at batch 512
    static const int cases[][2] = {{64, 2048}, {64, 8192}, {256, 2048}, {256, 8192}, {512, 192}};
    for (int ci = 0; ci < 5; ci++) {
            int B = cases[ci][0], ctx = cases[ci][1], max_blocks = ctx / bs;
            int32_t *pos = sl_malloc(sizeof(int32_t) * B), *seq = sl_malloc(sizeof(int32_t) * B);
            int32_t *ss = sl_malloc(sizeof(int32_t) * (B + 1)), *kvl = sl_malloc(sizeof(int32_t) * B);
            int32_t *bt = sl_malloc(sizeof(int32_t) * B * max_blocks);
            for (int s = 0; s < B; s++) {
                pos[s] = ctx - 1, seq[s] = s, ss[s] = s, kvl[s] = ctx;
                for (int k = 0; k < max_blocks; k++) bt[s * max_blocks + k] = perm[s * max_blocks + k];
            }
            ss[B] = B;
            int32_t *d_pos = dev_i32(pos, B), *d_seq = dev_i32(seq, B), *d_ss = dev_i32(ss, B + 1);
            int32_t *d_kvl = dev_i32(kvl, B), *d_bt = dev_i32(bt, (size_t)B * max_blocks);
            // the CUDA-core kernel at each ring depth, then the tensor-core one (kinds 1, 2)
            static const int rings[] = {0, 3, 4, 6, -1, -2};
            for (int ri = 0; ri < 6; ri++) {
                if (rings[ri] >= 0) cuda_attention_decode_ring(rings[ri]);
                cuda_attention_bf16_decode_kernel(rings[ri] >= 0 ? 0 : -rings[ri]);
                for (int r = 0; r < 3 + BENCH_REPS; r++) {
                    CUDA_CHECK(cudaEventRecord(e0, 0));
                    cuda_paged_attention(out, qkv, kc, vc, d_pos, d_seq, d_ss, d_kvl, d_bt,
                                         max_blocks, B, B, ctx, nh, nkv, hd, bs, scale, ws, 0);
                    CUDA_CHECK(cudaEventRecord(e1, 0));
                    CUDA_CHECK(cudaEventSynchronize(e1));
                    if (r >= 3) CUDA_CHECK(cudaEventElapsedTime(&ms[r - 3], e0, e1));
                }
                float med = median_f(ms, BENCH_REPS);
                double bytes = (double)B * ctx * nkv * hd * 2 * sizeof(sl_bf16);
                double gbs = bytes / (med * 1e-3) / 1e9;
                char how[32];
                if (rings[ri] >= 0) snprintf(how, sizeof how, "ring %d", rings[ri]);
                else snprintf(how, sizeof how, "tensor cores %d", -rings[ri]);
                printf("  decode batch %3d ctx %4d, %s: %.3f ms, K/V read %.0f GB/s (%.0f%% "
                       "of copy)\n",
                       B, ctx, how, med, gbs, 100.0 * gbs / copy_gbs);
            }
            cuda_attention_decode_ring(-1);
            cuda_attention_bf16_decode_kernel(-2);
            CUDA_CHECK(cudaFree(d_pos));
            CUDA_CHECK(cudaFree(d_seq));
            CUDA_CHECK(cudaFree(d_ss));
            CUDA_CHECK(cudaFree(d_kvl));
            CUDA_CHECK(cudaFree(d_bt));
            free(pos), free(seq), free(ss), free(kvl), free(bt);
        }

    // prefill: 8 whole prompts of 2048 tokens in one call
    {
        int max_blocks = pf_len / bs, n = pf_tokens;
        int32_t *pos = sl_malloc(sizeof(int32_t) * n), *seq = sl_malloc(sizeof(int32_t) * n);
        int32_t *ss = sl_malloc(sizeof(int32_t) * (pf_prompts + 1));
        int32_t *kvl = sl_malloc(sizeof(int32_t) * pf_prompts);
        int32_t *bt = sl_malloc(sizeof(int32_t) * pf_prompts * max_blocks);
        for (int s = 0; s < pf_prompts; s++) {
            ss[s] = s * pf_len, kvl[s] = pf_len;
            for (int i = 0; i < pf_len; i++) pos[s * pf_len + i] = i, seq[s * pf_len + i] = s;
            for (int k = 0; k < max_blocks; k++) bt[s * max_blocks + k] = perm[s * max_blocks + k];
        }
        ss[pf_prompts] = n;
        int32_t *d_pos = dev_i32(pos, n), *d_seq = dev_i32(seq, n), *d_ss = dev_i32(ss, pf_prompts + 1);
        int32_t *d_kvl = dev_i32(kvl, pf_prompts), *d_bt = dev_i32(bt, (size_t)pf_prompts * max_blocks);
        // bf16 cache, then the same bytes read as an FP8 cache (e4m3 0x3C = 1.5)
        static const int kmode[5] = {0, 1, 2, 3, 4};
        static const char *const kname[5] = {"mma.sync", "wgmma", "wgmma ping-pong",
                                             "warp-specialised ping-pong", "warp-specialised"};
        for (int kv8 = 0; kv8 < 10; kv8++) { // bf16, fp8 cache on each kernel
            cuda_attention_prefill_wg(kmode[kv8 / 2]);
            for (int r = 0; r < 3 + BENCH_REPS; r++) {
                CUDA_CHECK(cudaEventRecord(e0, 0));
                if (kv8 & 1)
                    cuda_paged_attention_ex(out, qkv, kc, vc, d_pos, d_seq, d_ss, d_kvl, d_bt,
                                            max_blocks, n, pf_prompts, pf_len, nh, nkv, hd, bs,
                                            scale, 0, 1, 0.01f, 0.01f, 0, NULL, ws, 0);
                else
                    cuda_paged_attention(out, qkv, kc, vc, d_pos, d_seq, d_ss, d_kvl, d_bt,
                                         max_blocks, n, pf_prompts, pf_len, nh, nkv, hd, bs,
                                         scale, ws, 0);
                CUDA_CHECK(cudaEventRecord(e1, 0));
                CUDA_CHECK(cudaEventSynchronize(e1));
                if (r >= 3) CUDA_CHECK(cudaEventElapsedTime(&ms[r - 3], e0, e1));
            }
            float med = median_f(ms, BENCH_REPS);
            // causal work only: row i does (i + 1) keys x head_dim x 2 (QK and PV) FMAs
            double flops = 4.0 * hd * nh * pf_prompts * ((double)pf_len * (pf_len + 1) / 2);
            printf("  prefill %d x %d tokens, %s cache, %s: %.3f ms, %.1f TFLOP/s (causal FLOPs)\n",
                   pf_prompts, pf_len, kv8 & 1 ? "fp8" : "bf16", kname[kv8 / 2], med,
                   flops / (med * 1e-3) / 1e12);
        }
        cuda_attention_prefill_wg(-1);
        CUDA_CHECK(cudaFree(d_pos));
        CUDA_CHECK(cudaFree(d_seq));
        CUDA_CHECK(cudaFree(d_ss));
        CUDA_CHECK(cudaFree(d_kvl));
        CUDA_CHECK(cudaFree(d_bt));
        free(pos), free(seq), free(ss), free(kvl), free(bt);
    }
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaFree(kc));
    CUDA_CHECK(cudaFree(vc));
    CUDA_CHECK(cudaFree(qkv));
    CUDA_CHECK(cudaFree(out));
    CUDA_CHECK(cudaFree(ws));
    free(perm);
}

int main(void) {
    static const tu_test tests[] = {
        {"workspace bytes bound", test_workspace_bytes},
        {"mixed prefill + decode, 8 shapes", test_mixed_shapes},
        {"head_dim 128 on each prefill kernel mode", test_prefill_mma_sync_hd128},
        {"max_kv_len upper bound / underestimate", test_max_kv_len_bounds},
        {"decode only (direct and split-K)", test_decode_only},
        {"prefill only", test_prefill_only},
        {"sliding window (prefill, decode, split-K)", test_sliding_window},
        {"alibi (BLOOM and MPT slopes, with and without a window)", test_alibi},
        {"fp8 kv cache (prefill staging, decode)", test_fp8_cache},
        {"decode at ring depths 0, 4, 6", test_decode_rings},
        {"decode over a bf16 cache on tensor cores", test_decode_bf16_tc},
        {"benchmark", test_bench},
        {NULL, NULL},
    };
    tu_suite("gpu_attention", tests);
    return tu_main();
}
