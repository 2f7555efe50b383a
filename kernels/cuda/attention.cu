// attention.cu: causal attention over the paged KV cache (prefill and decode).
//
// Row i (sequence seq_of[i], position pos[i]) attends to positions [0, pos[i]]
// of its sequence; the K/V of position t live in cache block
// block_tables[seq * max_blocks + t / block_size], laid out
// (n_blocks, n_kv_heads, block_size, head_dim). Same semantics as
// cpu_paged_attention; bf16 in and out, fp32 softmax and accumulation.
//
// Two kernels, both launched by the entry point, each skipping the sequences
// that are not its kind (so the host never sorts or reads device metadata):
//
// - prefill (sequences with >= 2 rows in the call): flash-attention 2 on the
//   tensor cores (mma.sync m16n8k16 bf16, fp32 accumulators). A CTA takes 64
//   packed rows x one query head; rows of several sequences in those 64 are
//   handled one segment at a time. K/V tiles of 64 positions are gathered
//   through the block table into shared memory with cp.async (double
//   buffered, zero-filled past the end) and consumed with ldmatrix; the
//   online softmax runs in the exp2 domain; the causal mask is by absolute
//   position, so a chunk sees its earlier chunks (already in the cache) and
//   itself causally. P is rounded to bf16 for the P.V product, as in
//   FlashAttention. Head dims other than 64/128 are zero-padded in shared
//   memory to the next supported width (32, 96, 192, 256): correct, not tuned.
//   With an FP8 (e4m3) cache the codes of a K/V tile are copied raw by
//   cp.async into a staging area (two stages, issued two tiles ahead), then
//   decoded smem -> smem into a single bf16 K/V tile that the same MMA code
//   reads; the decode is exact, so the math is the bf16 cache's (the cache
//   scales are folded into the softmax scale and the output). The staging
//   takes the bytes of the bf16 path's second K/V buffer (same shared memory
//   size). Head dims not a multiple of 8 (or unaligned bases) load and decode
//   synchronously instead (correct, not tuned).
//
// - prefill at head_dim 128 (16-byte aligned operands): the same on Hopper's
//   warpgroup MMAs (attn_prefill_wg_kernel, below; 128 query rows x one head
//   per CTA, key tiles of 128 positions in 128-byte swizzled shared memory,
//   the S and P.V MMA chains of consecutive half tiles overlapped with the
//   softmax); over an FP8 cache its warp-specialised, persistent form
//   (attn_prefill_ws_kernel: a producer warpgroup loads and decodes the K/V
//   tiles into a ring that two consumer warpgroups read). SLUICE_PREFILL_WG
//   picks among them (0 keeps the mma.sync kernel there too).
//
// - decode (sequences with exactly one row): flash-decoding. A CTA owns one
//   sequence x one kv head (x up to 8 of the query heads sharing it, so each
//   K/V row is read once per group) x one split of the context. Each K/V row
//   is read by a group of lanes with 16-byte loads (head_dim 128: 16 lanes,
//   64: 8 lanes; other head dims 32 lanes x 4 bytes); every lane-group keeps
//   its own online-softmax state for its tokens, so the main loop has no
//   barriers; the states are merged through shuffles and shared memory at the
//   end. With one split the CTA writes the output itself; otherwise it writes
//   a partial (max, sum, unnormalised acc) into the workspace and a small
//   reduction kernel combines the splits. The split count is picked from
//   n_seqs and max_kv_len (enough CTAs to fill the GPU, at least 256
//   positions each), so a CUDA graph captured with max_kv_len = max_seq_len
//   stays correct for any shorter context (splits past a sequence's length
//   exit at once; the last split always runs to the sequence's end).
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh"
#include "wgmma_dev.cuh"
#include "ops_cuda.h"

typedef __nv_bfloat16 bf16;

#define ATT_LOG2E 1.4426950408889634f
#define ATT_MAX_HD 256 // largest head_dim either kernel supports

// decode
#define DEC_WARPS 4
#define DEC_THREADS (32 * DEC_WARPS)
#define DEC_MAX_GB 8          // query heads per CTA (a GQA group, or part of one)
#define DEC_MIN_CHUNK 256     // fewest positions worth a split of their own
#define DEC_TARGET_CTAS 1024  // about 8 CTAs per SM on a 132-SM H100/H200
#define DEC_REDUCE_THREADS 128

// prefill
#define PF_BM 64 // query rows per CTA with one m16 tile per warp (PfShape: up to 2)
#define PF_BN 64 // key positions per shared-memory tile
#define PF_THREADS 128

// ----------------------------------------------------------------------------
// small device helpers

static __device__ __forceinline__ float ex2(float x) { // 2^x, 2^-inf = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// bf16 pair packed in a 32-bit word -> two floats (exact)
static __device__ __forceinline__ float bf_lo(uint32_t w) { return __uint_as_float(w << 16); }
static __device__ __forceinline__ float bf_hi(uint32_t w) {
    return __uint_as_float(w & 0xffff0000u);
}

static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *reinterpret_cast<uint32_t *>(&v);
}

// Loads VEC bf16 (VEC 8: one 16-byte load; VEC 2: one 4-byte load) as raw words.
template <int VEC>
static __device__ __forceinline__ void load_raw(uint32_t w[VEC / 2], const bf16 *p) {
    if constexpr (VEC == 8) {
        uint4 v = __ldg(reinterpret_cast<const uint4 *>(p));
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else {
        static_assert(VEC == 2, "VEC is 8 or 2");
        w[0] = __ldg(reinterpret_cast<const unsigned int *>(p));
    }
}

// The same from a KV cache of type KT: bf16 as above, or e4m3 codes (VEC
// bytes) decoded to bf16 pairs (exact); the cache scales are applied by the
// caller (folded into the softmax scale and the output).
template <int VEC, typename KT>
static __device__ __forceinline__ void load_kv_raw(uint32_t w[VEC / 2], const KT *p) {
    if constexpr (sizeof(KT) == 2) {
        load_raw<VEC>(w, reinterpret_cast<const bf16 *>(p));
    } else if constexpr (VEC == 8) {
        uint2 v = __ldg(reinterpret_cast<const uint2 *>(p));
        w[0] = e4m3x2_to_bf16x2((uint16_t)(v.x & 0xffffu));
        w[1] = e4m3x2_to_bf16x2((uint16_t)(v.x >> 16));
        w[2] = e4m3x2_to_bf16x2((uint16_t)(v.y & 0xffffu));
        w[3] = e4m3x2_to_bf16x2((uint16_t)(v.y >> 16));
    } else {
        w[0] = e4m3x2_to_bf16x2(__ldg(reinterpret_cast<const unsigned short *>(p)));
    }
}

static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async8(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async4(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
static __device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16 *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col)
static __device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                 uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ----------------------------------------------------------------------------
// decode: split-K flash-decoding, one CTA per (split, kv-head subgroup, sequence)
//
// Lane layout: LANES lanes share one K/V row, each holding NCH chunks of VEC
// elements (element d = (c*LANES + li)*VEC + j); 32/LANES rows per warp at a
// time, U rows per lane-group per iteration (all loads issued before use).

// Shared by the two decode kernels: the span of positions a CTA (split) of a
// decode sequence covers, the empty partial of a split outside the window,
// and the merge of the warps' online-softmax states into the output (one
// split) or the workspace partial (several; attn_decode_reduce_kernel adds
// them).
struct DecSpan {
    int row, ctx, split, t_begin, t_end, t_lo;
};

// false: nothing to do here (not a decode sequence, or a split past its end)
static __device__ __forceinline__ bool dec_span(DecSpan &d, const int32_t *__restrict__ pos,
                                                const int32_t *__restrict__ seq_start, int s,
                                                int n_splits, int chunk, int window) {
    d.row = seq_start[s];
    if (seq_start[s + 1] - d.row != 1) return false; // not a decode sequence: prefill's job
    d.ctx = pos[d.row] + 1;
    d.split = blockIdx.x;
    d.t_begin = d.split * chunk;
    if (d.t_begin >= d.ctx) return false; // past this sequence's end
    d.t_end = d.split == n_splits - 1 ? d.ctx : min(d.ctx, d.t_begin + chunk);
    // sliding window: positions before t_lo are masked (window 0: none)
    d.t_lo = window > 0 && d.ctx > window ? d.ctx - window : 0;
    return true;
}

// A split wholly outside the window (only when n_splits > 1: the last split
// ends at ctx > t_lo) leaves an empty partial for the reduce.
static __device__ __forceinline__ void dec_empty_partial(float *__restrict__ ws, const DecSpan &d,
                                                         int s, int h0, int gvalid, int hd,
                                                         int n_seqs, int n_heads, int n_splits) {
    const size_t n_entries = (size_t)n_seqs * n_heads * n_splits;
    for (int idx = threadIdx.x; idx < gvalid * hd; idx += DEC_THREADS) {
        const int g = idx / hd, dd = idx - g * hd;
        const size_t e = ((size_t)s * n_heads + h0 + g) * n_splits + d.split;
        ws[2 * n_entries + e * hd + dd] = 0.f;
        if (dd == 0) ws[2 * e] = -INFINITY, ws[2 * e + 1] = 0.f;
    }
}

// After a barrier: the DEC_WARPS warps' (m, l, acc) of each head g < gvalid
// in shared memory; one thread per (head, d). mx is finite: position t_begin
// < t_end was scored by some warp.
// col(dd): the column of a row of sm_acc that holds dimension dd.
template <int GB, int HDMAX, typename Col>
static __device__ __forceinline__ void
dec_merge_warps(bf16 *__restrict__ out, float *__restrict__ ws, const float (*sm_acc)[GB][HDMAX],
                const float (*sm_m)[GB], const float (*sm_l)[GB], const DecSpan &d, int s, int h0,
                int gvalid, int hd, int n_seqs, int n_heads, int n_splits, float v_mul, Col col) {
    const size_t n_entries = (size_t)n_seqs * n_heads * n_splits;
    for (int idx = threadIdx.x; idx < gvalid * hd; idx += DEC_THREADS) {
        const int g = idx / hd, dd = idx - g * hd;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) mx = fmaxf(mx, sm_m[w][g]);
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) {
            const float f = ex2(sm_m[w][g] - mx);
            L = fmaf(sm_l[w][g], f, L);
            A = fmaf(sm_acc[w][g][col(dd)], f, A);
        }
        A *= v_mul; // an FP8 cache's v_scale (1 otherwise)
        const int h = h0 + g;
        if (n_splits == 1) {
            out[(size_t)d.row * n_heads * hd + (size_t)h * hd + dd] = __float2bfloat16_rn(A / L);
        } else {
            const size_t e = ((size_t)s * n_heads + h) * n_splits + d.split;
            ws[2 * n_entries + e * hd + dd] = A;
            if (dd == 0) ws[2 * e] = mx, ws[2 * e + 1] = L;
        }
    }
}

template <int LANES, int VEC, int NCH, int GB, int U, int R, typename KT>
static __global__ void __launch_bounds__(DEC_THREADS)
    attn_decode_kernel(bf16 *__restrict__ out, float *__restrict__ ws,
                       const bf16 *__restrict__ qkv, const KT *__restrict__ k_cache,
                       const KT *__restrict__ v_cache, const int32_t *__restrict__ pos,
                       const int32_t *__restrict__ seq_start,
                       const int32_t *__restrict__ block_tables, int max_blocks, int n_seqs,
                       int n_heads, int n_kv_heads, int hd, int bs_shift, int n_sub,
                       int n_splits, int chunk, float scale_log2, float v_mul, int window,
                       const float *__restrict__ alibi) {
    constexpr int TPW = 32 / LANES;      // lane-groups (rows in flight) per warp
    constexpr int NTG = DEC_WARPS * TPW; // lane-groups per CTA
    constexpr int EPL = NCH * VEC;       // elements per lane
    constexpr int HDMAX = LANES * EPL;   // widest head_dim this instance covers
    static_assert(R == 0 || (VEC == 8 && NCH == 1 && sizeof(KT) == 2), "ring: 16-byte bf16 rows");
    // R > 0: the ring of R stages in dynamic shared memory (dec_ring_bytes),
    // whose bytes hold sm_acc after the main loop
    __shared__ float sm_acc_static[R > 0 ? 1 : DEC_WARPS][R > 0 ? 1 : GB][R > 0 ? 1 : HDMAX];
    extern __shared__ __align__(16) uint4 dec_ring[];
    float(*sm_acc)[GB][HDMAX] = R > 0 ? reinterpret_cast<float(*)[GB][HDMAX]>(dec_ring)
                                      : reinterpret_cast<float(*)[GB][HDMAX]>(sm_acc_static);
    __shared__ float sm_m[DEC_WARPS][GB], sm_l[DEC_WARPS][GB];

    const int s = blockIdx.z;
    DecSpan sp;
    if (!dec_span(sp, pos, seq_start, s, n_splits, chunk, window)) return;
    const int row = sp.row, ctx = sp.ctx, t_begin = sp.t_begin, t_end = sp.t_end, t_lo = sp.t_lo;

    const int group = n_heads / n_kv_heads;
    const int kvh = blockIdx.y / n_sub, sub = blockIdx.y % n_sub;
    const int h0 = kvh * group + sub * GB;      // first query head of this CTA
    const int gvalid = min(GB, group - sub * GB); // heads of this CTA that exist
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int li = lane % LANES, tgid = warp * TPW + lane / LANES;
    const int bmask = (1 << bs_shift) - 1;
    const size_t blk_stride = (size_t)n_kv_heads << bs_shift; // rows per cache block
    const size_t head_row0 = (size_t)kvh << bs_shift;
    const int32_t *bt = block_tables + (size_t)s * max_blocks;

    if (t_end <= t_lo) {
        dec_empty_partial(ws, sp, s, h0, gvalid, hd, n_seqs, n_heads, n_splits);
        return;
    }

    // this lane's slice of q for each head, pre-scaled by scale*log2(e)
    float q[GB][EPL];
    const bf16 *qrow = qkv + (size_t)row * (n_heads + 2 * n_kv_heads) * hd;
#pragma unroll
    for (int g = 0; g < GB; g++)
#pragma unroll
        for (int c = 0; c < NCH; c++) {
            const int d0 = (c * LANES + li) * VEC;
            uint32_t w[VEC / 2];
#pragma unroll
            for (int j = 0; j < VEC / 2; j++) w[j] = 0;
            if (g < gvalid && d0 < hd) load_raw<VEC>(w, qrow + (size_t)(h0 + g) * hd + d0);
#pragma unroll
            for (int j = 0; j < VEC / 2; j++) {
                q[g][c * VEC + 2 * j] = bf_lo(w[j]) * scale_log2;
                q[g][c * VEC + 2 * j + 1] = bf_hi(w[j]) * scale_log2;
            }
        }

    // ALiBi: score += slope * (t - pos), in the exp2 domain
    float slope[GB];
#pragma unroll
    for (int g = 0; g < GB; g++) slope[g] = alibi && g < gvalid ? alibi[h0 + g] * ATT_LOG2E : 0.f;

    float m[GB], l[GB], acc[GB][EPL];
#pragma unroll
    for (int g = 0; g < GB; g++) {
        m[g] = -INFINITY, l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[g][e] = 0.f;
    }

    // Iterations are uniform across the warp (shuffles inside): a lane-group
    // whose position is past t_end loads nothing and scores -inf.
    int first = t_begin; // skip whole iterations below the window
    if (t_lo > t_begin) first = t_begin + (t_lo - t_begin) / (U * NTG) * (U * NTG);
    // Ring (R > 0): each lane copies its own 16-byte K and V pieces of the
    // iteration R - 1 ahead by cp.async into its own slots of stage (i % R)
    // and reads them back when their turn comes: the bytes in flight are not
    // bounded by registers, and no lane reads another's slots, so the loop
    // needs no barrier (cp.async.wait_group orders a lane's own copies). A
    // stage is refilled one iteration after it was read, once the values
    // read from it have been used.
    const int d0 = li * VEC; // R > 0: NCH == 1, LANES * VEC == hd
    auto slot = [&](int stage, int c) -> uint4 * {
        return dec_ring + ((size_t)stage * 2 * U + c) * DEC_THREADS + threadIdx.x;
    };
    auto issue = [&](int b, int stage) {
        if (b >= t_end) return;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int t = b + u * NTG + tgid;
            const bool ok = t < t_end && t >= t_lo;
            const size_t r = ok ? (size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask) : 0;
            cp_async16(slot(stage, u), k_cache + r * hd + d0, ok ? 16 : 0);
            cp_async16(slot(stage, U + u), v_cache + r * hd + d0, ok ? 16 : 0);
        }
    };
    if constexpr (R > 0) {
#pragma unroll
        for (int d = 0; d < R - 1; d++) {
            issue(first + d * U * NTG, d);
            cp_async_commit();
        }
    }
    int stage = 0;
    for (int base = first; base < t_end; base += U * NTG) {
        uint32_t kw[U][NCH][VEC / 2], vw[U][NCH][VEC / 2];
        bool valid[U];
        if constexpr (R > 0) {
            issue(base + (R - 1) * U * NTG, stage == 0 ? R - 1 : stage - 1);
            cp_async_commit();
            cp_async_wait<R - 1>();
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int t = base + u * NTG + tgid;
                valid[u] = t < t_end && t >= t_lo;
                const uint4 kv = *slot(stage, u), vv = *slot(stage, U + u);
                kw[u][0][0] = kv.x, kw[u][0][1] = kv.y, kw[u][0][2] = kv.z, kw[u][0][3] = kv.w;
                vw[u][0][0] = vv.x, vw[u][0][1] = vv.y, vw[u][0][2] = vv.z, vw[u][0][3] = vv.w;
            }
            stage = stage == R - 1 ? 0 : stage + 1;
        } else {
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int t = base + u * NTG + tgid;
                valid[u] = t < t_end && t >= t_lo;
#pragma unroll
                for (int c = 0; c < NCH; c++)
#pragma unroll
                    for (int j = 0; j < VEC / 2; j++) kw[u][c][j] = vw[u][c][j] = 0;
                if (valid[u]) {
                    const size_t r =
                        (size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask);
                    const KT *kp = k_cache + r * hd, *vp = v_cache + r * hd;
#pragma unroll
                    for (int c = 0; c < NCH; c++) {
                        const int dc = (c * LANES + li) * VEC;
                        if (dc < hd) {
                            load_kv_raw<VEC, KT>(kw[u][c], kp + dc);
                            load_kv_raw<VEC, KT>(vw[u][c], vp + dc);
                        }
                    }
                }
            }
        }
        // scores, reduced over the LANES lanes that share a row
        float sc[U][GB];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int g = 0; g < GB; g++) {
                float dot = 0.f;
#pragma unroll
                for (int c = 0; c < NCH; c++)
#pragma unroll
                    for (int j = 0; j < VEC / 2; j++) {
                        dot = fmaf(q[g][c * VEC + 2 * j], bf_lo(kw[u][c][j]), dot);
                        dot = fmaf(q[g][c * VEC + 2 * j + 1], bf_hi(kw[u][c][j]), dot);
                    }
#pragma unroll
                for (int off = LANES / 2; off > 0; off >>= 1)
                    dot += __shfl_xor_sync(0xffffffffu, dot, off);
                sc[u][g] = valid[u] ? fmaf(slope[g], (float)(base + u * NTG + tgid - (ctx - 1)), dot)
                                    : -INFINITY;
            }
        // online softmax update (exp2 domain)
#pragma unroll
        for (int g = 0; g < GB; g++) {
            float mx = m[g];
#pragma unroll
            for (int u = 0; u < U; u++) mx = fmaxf(mx, sc[u][g]);
            const float ms = mx == -INFINITY ? 0.f : mx;
            const float alpha = ex2(m[g] - ms);
            float p[U], psum = 0.f;
#pragma unroll
            for (int u = 0; u < U; u++) p[u] = ex2(sc[u][g] - ms), psum += p[u];
            l[g] = l[g] * alpha + psum;
            m[g] = mx;
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int j = 0; j < VEC / 2; j++) {
                    float a0 = acc[g][c * VEC + 2 * j] * alpha;
                    float a1 = acc[g][c * VEC + 2 * j + 1] * alpha;
#pragma unroll
                    for (int u = 0; u < U; u++) {
                        a0 = fmaf(p[u], bf_lo(vw[u][c][j]), a0);
                        a1 = fmaf(p[u], bf_hi(vw[u][c][j]), a1);
                    }
                    acc[g][c * VEC + 2 * j] = a0, acc[g][c * VEC + 2 * j + 1] = a1;
                }
        }
    }

    // merge the lane-groups of this warp (lanes li of every group pair up)
#pragma unroll
    for (int off = LANES; off < 32; off <<= 1)
#pragma unroll
        for (int g = 0; g < GB; g++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], off);
            const float lo = __shfl_xor_sync(0xffffffffu, l[g], off);
            const float mx = fmaxf(m[g], mo), ms = mx == -INFINITY ? 0.f : mx;
            const float fa = ex2(m[g] - ms), fb = ex2(mo - ms);
            l[g] = l[g] * fa + lo * fb;
            m[g] = mx;
#pragma unroll
            for (int e = 0; e < EPL; e++)
                acc[g][e] = acc[g][e] * fa + __shfl_xor_sync(0xffffffffu, acc[g][e], off) * fb;
        }
    if constexpr (R > 0) { // sm_acc takes the ring's bytes: every warp done with its slots
        cp_async_wait<0>();
        __syncthreads();
    }
    if (lane < LANES) {
#pragma unroll
        for (int g = 0; g < GB; g++) {
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int j = 0; j < VEC; j++) sm_acc[warp][g][(c * LANES + li) * VEC + j] = acc[g][c * VEC + j];
            if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
        }
    }
    __syncthreads();
    dec_merge_warps<GB, HDMAX>(out, ws, sm_acc, sm_m, sm_l, sp, s, h0, gvalid, hd, n_seqs,
                               n_heads, n_splits, v_mul, [](int dd) { return dd; });
}

// ----------------------------------------------------------------------------
// decode over an FP8 cache on the tensor cores (head_dim 64 or 128)
//
// With e4m3 K/V, the CUDA-core kernel above runs out of instructions before it
// runs out of bandwidth: per cache byte it decodes the code and does GB fused
// multiply-adds (measured on an H200: 1.2 TB/s of K/V). Here each warp takes
// 16 positions per step on m16n8k16 MMAs (fp16 in, fp32 accumulate), with
// the CTA's 8 query heads as the n8 columns:
//   S^T (16 positions x 8 heads) = K (16 positions x hd) . Q^T,
//   O^T (hd x 8 heads)          += V^T (hd x 16 positions) . P^T,
// so a lane keeps 32 fp32 accumulators of O and the kernel runs 4 CTAs per
// SM. (An earlier kernel put the heads on the 16 rows: with GQA 4, 12 rows
// idle, 64 accumulators per lane, 3 CTAs per SM, 2.6 against 3.97 TB/s of
// K/V at 256 x 2048 on an H200; removed.) e4m3 -> fp16 is one exact cvt per
// pair. Dot products and sums may run over any order of their index, so the
// lanes' fragments come straight from their own loads:
//   - K: lane (g, t) loads bytes [t * HD/4, (t + 1) * HD/4) of the K rows of
//     positions g and g + 8; k-step s takes bytes 4s..4s+3 of them as the A
//     fragment's k = 2t, 2t+1, 2t+8, 2t+9. Q^T's B fragment (head g) follows
//     the same map.
//   - V: lane (g, t) loads bytes [g * HD/8, (g + 1) * HD/8) of the V rows of
//     positions 2t, 2t+1, 2t+8, 2t+9; O^T tile m's rows g and g + 8 are
//     dimensions g * HD/8 + 2m and + 2m + 1 (byte permutes pair the
//     positions).
//   - P^T, the B fragment of the second product, is S^T's C fragment
//     transposed: two movmatrix (8 x 8, b16) per step.
// The softmax state is per head (column): the maximum over a step's 16
// positions takes three shuffles across the lanes of a column. P is rounded
// to fp16 (finer than the bf16 FlashAttention rounds it to). Loads run one
// step ahead in registers (or two; see fp8_decode_kind). Output, partials and
// workspace are those of attn_decode_kernel (same split scheme and reduce
// kernel).

#define DTN_GB 8 // query heads per CTA (the n8 of the MMAs)

static __device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t two) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

static __device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

static __device__ __forceinline__ void mma_f16_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                     uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// n bytes (8 or 16) from global memory as 32-bit words, or zeros
template <int NB>
static __device__ __forceinline__ void ld_bytes(uint32_t w[NB / 4], const uint8_t *p, bool ok) {
    if constexpr (NB == 16) {
        uint4 v = ok ? __ldg(reinterpret_cast<const uint4 *>(p)) : make_uint4(0, 0, 0, 0);
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else {
        static_assert(NB == 8, "8 or 16 bytes");
        uint2 v = ok ? __ldg(reinterpret_cast<const uint2 *>(p)) : make_uint2(0, 0);
        w[0] = v.x, w[1] = v.y;
    }
}


static __device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                      uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// NB bytes (a multiple of 8) from global memory as 32-bit words, or zeros
template <int NB>
static __device__ __forceinline__ void ld_words(uint32_t *w, const uint8_t *p, bool ok) {
#pragma unroll
    for (int i = 0; i < NB / 16; i++) ld_bytes<16>(w + 4 * i, p + 16 * i, ok);
    if constexpr (NB % 16) ld_bytes<8>(w + 4 * (NB / 16), p + 16 * (NB / 16), ok);
}

static __device__ __forceinline__ uint32_t movmatrix_trans(uint32_t a) {
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

// KT = uint8_t: e4m3 codes (fp16 MMAs); KT = bf16: a bf16 cache, whose rows
// are the MMAs' operands as loaded (bf16 MMAs; Q unscaled, S scaled after),
// twice the registers of loads in flight. MINB: CTAs per SM the registers
// are fitted to.
template <int HD, int D, typename KT, int MINB>
static __global__ void __launch_bounds__(DEC_THREADS, MINB)
    attn_decode_tn_kernel(bf16 *__restrict__ out, float *__restrict__ ws,
                          const bf16 *__restrict__ qkv, const KT *__restrict__ k_cache,
                          const KT *__restrict__ v_cache, const int32_t *__restrict__ pos,
                          const int32_t *__restrict__ seq_start,
                          const int32_t *__restrict__ block_tables, int max_blocks, int n_seqs,
                          int n_heads, int n_kv_heads, int bs_shift, int n_sub, int n_splits,
                          int chunk, float scale_log2, float v_mul, int window,
                          const float *__restrict__ alibi) {
    constexpr bool F8 = sizeof(KT) == 1;
    constexpr int KE = HD / 4;             // K elements per lane per position
    constexpr int VE = HD / 8;             // V elements per lane per position
    constexpr int KB = KE * sizeof(KT);    // and their bytes
    constexpr int VB = VE * sizeof(KT);
    constexpr int NKS = HD / 16; // k-steps of S^T
    constexpr int NMO = HD / 16; // m16 tiles of O^T
    constexpr int STEP = 16 * DEC_WARPS;
    // O^T in fragment order: column 16 m + 2 g + r of a head's row holds
    // tile m's row g + 8r (dimension g * VB + 2m + r); a warp's float2
    // stores take two wavefronts
    constexpr int ACC_ROW = HD + 8;
    __shared__ __align__(16) float sm_acc[DEC_WARPS][DTN_GB][ACC_ROW];
    __shared__ float sm_m[DEC_WARPS][DTN_GB], sm_l[DEC_WARPS][DTN_GB];

    const int s = blockIdx.z;
    DecSpan sp;
    if (!dec_span(sp, pos, seq_start, s, n_splits, chunk, window)) return;
    const int row = sp.row, ctx = sp.ctx, t_begin = sp.t_begin, t_end = sp.t_end, t_lo = sp.t_lo;

    const int group = n_heads / n_kv_heads;
    const int kvh = blockIdx.y / n_sub, sub = blockIdx.y % n_sub;
    const int h0 = kvh * group + sub * DTN_GB;
    const int gvalid = min(DTN_GB, group - sub * DTN_GB);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bmask = (1 << bs_shift) - 1;
    const size_t blk_stride = (size_t)n_kv_heads << bs_shift;
    const size_t head_row0 = (size_t)kvh << bs_shift;
    const int32_t *bt = block_tables + (size_t)s * max_blocks;

    if (t_end <= t_lo) {
        dec_empty_partial(ws, sp, s, h0, gvalid, HD, n_seqs, n_heads, n_splits);
        return;
    }

    // Q^T fragments (head g of this CTA): FP8, scaled, in fp16; bf16 as stored
    uint32_t qb[NKS][2];
    {
        const bf16 *qrow = qkv + (size_t)row * (n_heads + 2 * n_kv_heads) * HD;
        uint32_t w[KE / 2]; // KE bf16 = dims [t * KE, (t + 1) * KE)
#pragma unroll
        for (int i = 0; i < KE / 8; i++) {
            uint4 v = make_uint4(0, 0, 0, 0);
            if (g < gvalid)
                v = __ldg(reinterpret_cast<const uint4 *>(qrow + (size_t)(h0 + g) * HD + t * KE + 8 * i));
            w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
        }
#pragma unroll
        for (int ks = 0; ks < NKS; ks++) {
            if constexpr (F8) {
                qb[ks][0] = pack_f16x2(bf_lo(w[2 * ks]) * scale_log2, bf_hi(w[2 * ks]) * scale_log2);
                qb[ks][1] = pack_f16x2(bf_lo(w[2 * ks + 1]) * scale_log2, bf_hi(w[2 * ks + 1]) * scale_log2);
            } else {
                qb[ks][0] = w[2 * ks], qb[ks][1] = w[2 * ks + 1];
            }
        }
    }
    const float s_mul = F8 ? 1.0f : scale_log2; // S in log2 units
    // this lane's heads: columns 2t and 2t + 1
    float slope[2];
#pragma unroll
    for (int c = 0; c < 2; c++)
        slope[c] = alibi && 2 * t + c < gvalid ? alibi[h0 + 2 * t + c] * ATT_LOG2E : 0.f;

    float o[NMO][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NMO; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;

    int first = t_begin;
    if (t_lo > t_begin) first = t_begin + (t_lo - t_begin) / STEP * STEP;
    auto valid = [&](int tp) { return tp < t_end && tp >= t_lo; };
    auto cache_row = [&](int tp) {
        return ((size_t)bt[tp >> bs_shift] * blk_stride + head_row0 + (tp & bmask));
    };
    uint32_t kw[D][2][KB / 4], vw[D][4][VB / 4];
    auto load = [&](int base, uint32_t (&kw)[2][KB / 4], uint32_t (&vw)[4][VB / 4]) {
        const int p0 = base + 16 * warp;
#pragma unroll
        for (int j = 0; j < 2; j++) { // K rows of positions p0 + 8j + g
            const int tp = p0 + 8 * j + g;
            const bool ok = valid(tp);
            const KT *kp = k_cache + (ok ? cache_row(tp) * HD : 0) + t * KE;
            ld_words<KB>(kw[j], reinterpret_cast<const uint8_t *>(kp), ok);
        }
#pragma unroll
        for (int u = 0; u < 4; u++) { // V rows of positions p0 + {2t, 2t+1, 2t+8, 2t+9}
            const int tp = p0 + 2 * t + (u & 1) + 8 * (u >> 1);
            const bool ok = valid(tp);
            ld_words<VB>(vw[u], reinterpret_cast<const uint8_t *>(v_cache + (ok ? cache_row(tp) * HD : 0) + g * VE), ok);
        }
    };
    auto compute = [&](int base, const uint32_t (&kc)[2][KB / 4], const uint32_t (&vc)[4][VB / 4]) {
        // S^T = K Q^T (two accumulators: shorter MMA chains)
        float sa[4] = {0.f, 0.f, 0.f, 0.f}, sb[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int ks = 0; ks < NKS; ks++) {
            if constexpr (F8) {
                const uint32_t a[4] = {e4m3x2_to_f16x2(kc[0][ks]), e4m3x2_to_f16x2(kc[1][ks]),
                                       e4m3x2_to_f16x2(kc[0][ks] >> 16), e4m3x2_to_f16x2(kc[1][ks] >> 16)};
                mma_f16_16816(ks & 1 ? sb : sa, a, qb[ks][0], qb[ks][1]);
            } else { // elements 4ks, 4ks + 1 (k = 2t, 2t + 1) and 4ks + 2, 4ks + 3 (2t + 8, 2t + 9)
                const uint32_t a[4] = {kc[0][2 * ks], kc[1][2 * ks], kc[0][2 * ks + 1], kc[1][2 * ks + 1]};
                mma_bf16_16816(ks & 1 ? sb : sa, a, qb[ks][0], qb[ks][1]);
            }
        }
        // element e: position p0 + g + 8 (e >> 1), head column 2t + (e & 1)
        const int p0 = base + 16 * warp;
        float sc[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int tp = p0 + g + 8 * (e >> 1);
            sc[e] = valid(tp) ? fmaf(slope[e & 1], (float)(tp - (ctx - 1)), (sa[e] + sb[e]) * s_mul)
                              : -INFINITY;
        }
        // online softmax per head column c (positions across the 8 lanes g)
#pragma unroll
        for (int c = 0; c < 2; c++) {
            float mx = fmaxf(sc[c], sc[c + 2]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            mx = fmaxf(mx, m[c]);
            const float ms = mx == -INFINITY ? 0.f : mx;
            const float alpha = ex2(m[c] - ms);
            m[c] = mx;
            sc[c] = ex2(sc[c] - ms);
            sc[c + 2] = ex2(sc[c + 2] - ms);
            l[c] = fmaf(l[c], alpha, sc[c] + sc[c + 2]);
#pragma unroll
            for (int j = 0; j < NMO; j++) o[j][c] *= alpha, o[j][c + 2] *= alpha;
        }
        // P^T's B fragment: S^T's C fragment (rows g and g + 8) transposed
        const uint32_t b0 = movmatrix_trans(F8 ? pack_f16x2(sc[0], sc[1]) : pack_bf16x2(sc[0], sc[1]));
        const uint32_t b1 = movmatrix_trans(F8 ? pack_f16x2(sc[2], sc[3]) : pack_bf16x2(sc[2], sc[3]));
        // O^T += V^T P^T: tile j's rows g, g + 8 = elements 2j, 2j + 1 of the lane's V pieces
#pragma unroll
        for (int j = 0; j < NMO; j++) {
            if constexpr (F8) {
                const uint32_t sel = j & 1 ? 0x7362u : 0x5140u;
                const uint32_t lo = __byte_perm(vc[0][j >> 1], vc[1][j >> 1], sel); // positions 2t, 2t+1
                const uint32_t hi = __byte_perm(vc[2][j >> 1], vc[3][j >> 1], sel); // 2t+8, 2t+9
                const uint32_t a[4] = {e4m3x2_to_f16x2(lo), e4m3x2_to_f16x2(lo >> 16),
                                       e4m3x2_to_f16x2(hi), e4m3x2_to_f16x2(hi >> 16)};
                mma_f16_16816(o[j], a, b0, b1);
            } else { // word j of a row: elements 2j (low half), 2j + 1
                const uint32_t a[4] = {__byte_perm(vc[0][j], vc[1][j], 0x5410u),
                                       __byte_perm(vc[0][j], vc[1][j], 0x7632u),
                                       __byte_perm(vc[2][j], vc[3][j], 0x5410u),
                                       __byte_perm(vc[2][j], vc[3][j], 0x7632u)};
                mma_bf16_16816(o[j], a, b0, b1);
            }
        }
    };
#pragma unroll
    for (int d = 0; d < D; d++)
        if (first + d * STEP < t_end) load(first + d * STEP, kw[d], vw[d]);
    for (int base = first; base < t_end; base += D * STEP) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int b = base + d * STEP;
            if (b >= t_end) break;
            uint32_t kc[2][KB / 4], vc[4][VB / 4];
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int i = 0; i < KB / 4; i++) kc[j][i] = kw[d][j][i];
#pragma unroll
            for (int u = 0; u < 4; u++)
#pragma unroll
                for (int i = 0; i < VB / 4; i++) vc[u][i] = vw[d][u][i];
            if (b + D * STEP < t_end) load(b + D * STEP, kw[d], vw[d]); // in flight from now
            compute(b, kc, vc);
        }
    }

    // the column sums over the 8 lanes g; then the warps through shared memory
#pragma unroll
    for (int c = 0; c < 2; c++) {
        l[c] += __shfl_xor_sync(0xffffffffu, l[c], 4);
        l[c] += __shfl_xor_sync(0xffffffffu, l[c], 8);
        l[c] += __shfl_xor_sync(0xffffffffu, l[c], 16);
    }
#pragma unroll
    for (int c = 0; c < 2; c++)
        if (2 * t + c < gvalid) {
#pragma unroll
            for (int j = 0; j < NMO; j++)
                *reinterpret_cast<float2 *>(&sm_acc[warp][2 * t + c][16 * j + 2 * g]) =
                    make_float2(o[j][c], o[j][c + 2]);
            if (g == 0) sm_m[warp][2 * t + c] = m[c], sm_l[warp][2 * t + c] = l[c];
        }
    __syncthreads();
    dec_merge_warps<DTN_GB, ACC_ROW>(out, ws, sm_acc, sm_m, sm_l, sp, s, h0, gvalid, HD, n_seqs,
                                     n_heads, n_splits, v_mul, [](int dd) {
                                         return ((dd % VE) >> 1) * 16 + (dd / VE) * 2 + (dd & 1);
                                     });
}

// Combines the splits of each (decode sequence, head): out = sum_i w_i acc_i /
// sum_i w_i l_i with w_i = 2^(m_i - max m). Only splits that started before
// the sequence's end wrote a partial.
static __global__ void __launch_bounds__(DEC_REDUCE_THREADS)
    attn_decode_reduce_kernel(bf16 *__restrict__ out, const float *__restrict__ ws,
                              const int32_t *__restrict__ pos,
                              const int32_t *__restrict__ seq_start, int n_seqs, int n_heads,
                              int hd, int n_splits, int chunk) {
    const int h = blockIdx.x, s = blockIdx.y;
    const int row = seq_start[s];
    if (seq_start[s + 1] - row != 1) return;
    const int ctx = pos[row] + 1;
    const int nv = min(n_splits, (ctx + chunk - 1) / chunk);
    const size_t n_entries = (size_t)n_seqs * n_heads * n_splits;
    const size_t e0 = ((size_t)s * n_heads + h) * n_splits;
    float mx = -INFINITY;
    for (int i = 0; i < nv; i++) mx = fmaxf(mx, ws[2 * (e0 + i)]);
    float L = 0.f;
    for (int i = 0; i < nv; i++) L = fmaf(ws[2 * (e0 + i) + 1], ex2(ws[2 * (e0 + i)] - mx), L);
    const float inv = 1.f / L;
    for (int d = threadIdx.x; d < hd; d += DEC_REDUCE_THREADS) {
        float A = 0.f;
        for (int i = 0; i < nv; i++)
            A = fmaf(ws[2 * n_entries + (e0 + i) * hd + d], ex2(ws[2 * (e0 + i)] - mx), A);
        out[(size_t)row * n_heads * hd + (size_t)h * hd + d] = __float2bfloat16_rn(A * inv);
    }
}

// ----------------------------------------------------------------------------
// prefill: flash-attention 2 with mma.sync, one CTA per (64 or 128 packed rows, head)

// Copies rows [0, PF_BM or PF_BN) of a tile into shared memory (row stride
// LDS): row i comes from src_of(i), or is zero-filled when src_of gives NULL.
// Columns [hd, HDP) are never written (they were zeroed once and stay zero).
template <int LDS, int NROWS, typename SrcOf>
static __device__ __forceinline__ void pf_load_tile(bf16 *dst, const bf16 *zero_src, int hd,
                                                    bool v16, SrcOf src_of) {
    if (v16) {
        const int cpr = hd >> 3; // 16-byte chunks per row
        for (int i = threadIdx.x; i < NROWS * cpr; i += PF_THREADS) {
            const int r = i / cpr, c = i - r * cpr;
            const bf16 *src = src_of(r);
            cp_async16(dst + r * LDS + c * 8, src ? src + c * 8 : zero_src, src ? 16 : 0);
        }
    } else {
        const int cpr = hd >> 1; // 4-byte chunks per row
        for (int i = threadIdx.x; i < NROWS * cpr; i += PF_THREADS) {
            const int r = i / cpr, c = i - r * cpr;
            const bf16 *src = src_of(r);
            cp_async4(dst + r * LDS + c * 2, src ? src + c * 2 : zero_src, src ? 4 : 0);
        }
    }
}

// FP8 cache, 16-byte path (v16): the e4m3 codes of a K or V tile are staged
// raw in shared memory by cp.async (row stride RS bytes), issued two tiles
// ahead like the bf16 path's copies, then decoded smem -> smem into the bf16
// tile that ldmatrix reads (pf_convert_fp8). Decoding on the way in would
// need the codes in registers, i.e. synchronous loads that the MMAs wait for.
//
// Copies the codes of rows [0, PF_BN), columns [0, hd), in CB-byte chunks
// (16 when hd % 16 == 0, else 8: the rows are hd bytes apart); zero-filled
// where src_of gives NULL. The FAST case (hd == HDP) has its own loop.
template <int CB, int RS, typename SrcOf>
static __device__ __forceinline__ void pf_stage_fp8(uint8_t *dst, const uint8_t *zero_src, int hd,
                                                    SrcOf src_of) {
    const int cpr = hd / CB;
    for (int i = threadIdx.x; i < PF_BN * cpr; i += PF_THREADS) {
        const int r = i / cpr, c = i - r * cpr;
        const uint8_t *src = src_of(r);
        if constexpr (CB == 16)
            cp_async16(dst + r * RS + c * 16, src ? src + c * 16 : zero_src, src ? 16 : 0);
        else
            cp_async8(dst + r * RS + c * 8, src ? src + c * 8 : zero_src, src ? 8 : 0);
    }
}

// Eight e4m3 codes (low byte first) -> eight bf16, exact: the same values as
// e4m3x2_to_bf16x2 gives, with its last step (fp32 pair -> bf16 pair, one
// F2FP per pair) replaced by a byte permute. An e4m3 value has at most 4
// significant bits and its exponent is in bf16's normal range, so the low 16
// bits of its fp32 form are zero and keeping the high half is exact.
static __device__ __forceinline__ uint4 e4m3x8_to_bf16x8(uint2 b) {
    auto two = [](uint32_t codes) { // codes in the low 16 bits
        const __half2_raw h =
            __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)codes, __NV_E4M3);
        const float2 f = __half22float2(__half2(h));
        return __byte_perm(__float_as_uint(f.x), __float_as_uint(f.y), 0x7632);
    };
    return make_uint4(two(b.x & 0xffffu), two(b.x >> 16), two(b.y & 0xffffu), two(b.y >> 16));
}

// Decodes staged codes (row stride RS bytes) to the bf16 tile (row stride
// LDS), rows [0, PF_BN), columns [0, hd) (hd % 8 == 0): 8 codes per step, so
// a warp reads 256 contiguous bytes and each quarter-warp writes 128 (no bank
// conflicts while a row has >= 8 steps). K and V in the same steps (two
// independent chains). Columns [hd, HDP) of the bf16 tiles stay zero.
template <int LDS, int RS>
static __device__ __forceinline__ void pf_convert_fp8(bf16 *dk, bf16 *dv, const uint8_t *rk,
                                                      const uint8_t *rv, int hd) {
    const int spr = hd >> 3; // steps per row
    // unrolled by 2: 4 independent chains; more costs registers that the
    // 128-row instances do not have (spills measured with unroll 4)
#pragma unroll 2
    for (int i = threadIdx.x; i < PF_BN * spr; i += PF_THREADS) {
        const int r = i / spr, c = i - r * spr;
        const uint2 bk = *reinterpret_cast<const uint2 *>(rk + r * RS + c * 8);
        const uint2 bv = *reinterpret_cast<const uint2 *>(rv + r * RS + c * 8);
        *reinterpret_cast<uint4 *>(dk + r * LDS + c * 8) = e4m3x8_to_bf16x8(bk);
        *reinterpret_cast<uint4 *>(dv + r * LDS + c * 8) = e4m3x8_to_bf16x8(bv);
    }
}

// FP8 cache without the 16-byte path (head_dim % 8 != 0 or unaligned bases):
// rows of e4m3 codes loaded by the threads themselves (2 codes each),
// decoded and stored to shared memory; zero rows where src_of gives NULL.
// Synchronous: correct, not tuned (no model of interest takes this path).
template <int LDS, int NROWS, typename SrcOf>
static __device__ __forceinline__ void pf_load_tile_fp8(bf16 *dst, int hd, SrcOf src_of) {
    const int cpr = hd >> 1;
    for (int i = threadIdx.x; i < NROWS * cpr; i += PF_THREADS) {
        const int r = i / cpr, c = i - r * cpr;
        const uint8_t *src = src_of(r);
        const uint32_t v =
            src ? e4m3x2_to_bf16x2(*reinterpret_cast<const unsigned short *>(src + c * 2)) : 0u;
        *reinterpret_cast<uint32_t *>(dst + r * LDS + c * 2) = v;
    }
}

// Rows per CTA: MT m16 tiles per warp, 4 warps. With two tiles per warp (128
// rows) every K/V fragment a warp reads from shared memory feeds twice the
// MMAs; with one (64 rows) the kernel is bound by shared-memory bandwidth.
// Head dims above 128 keep one tile: the O accumulators would not fit in
// registers. SLUICE_PREFILL_MT=1 selects one tile everywhere (to compare).
template <int MT> struct PfRows { static constexpr int BM = 16 * (PF_THREADS / 32) * MT; };

template <int HDP, int MT, typename KT>
static __global__ void __launch_bounds__(PF_THREADS)
    attn_prefill_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ qkv,
                        const KT *__restrict__ k_cache, const KT *__restrict__ v_cache,
                        const int32_t *__restrict__ pos, const int32_t *__restrict__ seq_of,
                        const int32_t *__restrict__ seq_start,
                        const int32_t *__restrict__ block_tables, int max_blocks, int n_tokens,
                        int n_seqs, int n_heads, int n_kv_heads, int hd, int bs_shift,
                        float scale_log2, int v16, float v_mul, int window,
                        const float *__restrict__ alibi) {
    constexpr int BM = PfRows<MT>::BM;
    constexpr int LDS = HDP + 8;     // +16 bytes: ldmatrix rows hit distinct banks
    constexpr int KSTEPS = HDP / 16; // k-steps of Q.K^T over head_dim
    constexpr int NT_S = PF_BN / 8;  // n8 tiles of S (key positions)
    constexpr int NT_O = HDP / 8;    // n8 tiles of O (head_dim)
    constexpr bool FP8 = sizeof(KT) == 1;
    // bf16 cache: sQ [BM][LDS], sK [2][PF_BN][LDS], sV [2][PF_BN][LDS] (double
    // buffered). FP8 cache, same bytes: one bf16 K and one V tile (decoded in
    // place, so one suffices), then the raw codes [2 stages][K, V][PF_BN][HDP]
    // where the second K/V pair would be.
    static_assert(4 * PF_BN * HDP <= 2 * PF_BN * LDS * (int)sizeof(bf16), "FP8 staging");
    extern __shared__ __align__(16) unsigned char pf_smem[];
    bf16 *sQ = reinterpret_cast<bf16 *>(pf_smem);
    bf16 *sK = sQ + BM * LDS;
    bf16 *sV = sK + (FP8 ? 1 : 2) * PF_BN * LDS;
    uint8_t *sRaw = reinterpret_cast<uint8_t *>(sK + 2 * PF_BN * LDS); // FP8 only
    __shared__ int s_pos[BM];

    const int h = blockIdx.x;
    const int R0 = (gridDim.y - 1 - blockIdx.y) * BM; // late rows (long contexts) first
    const int R1 = min(R0 + BM, n_tokens);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wrow = warp * 16 * MT; // the warp's first row in the tile
    const int kvh = h / (n_heads / n_kv_heads);
    const int stride = (n_heads + 2 * n_kv_heads) * hd;
    const int bmask = (1 << bs_shift) - 1;
    const size_t blk_stride = (size_t)n_kv_heads << bs_shift;
    const size_t head_row0 = (size_t)kvh << bs_shift;
    const bool v16b = v16 != 0;
    const bool FAST = v16b && hd == HDP;

    // zero everything once: the padding columns [hd, HDP) stay zero
    for (int i = threadIdx.x; i < (BM + 4 * PF_BN) * LDS / 8; i += PF_THREADS)
        reinterpret_cast<uint4 *>(pf_smem)[i] = make_uint4(0, 0, 0, 0);
    __syncthreads();

    for (int s = seq_of[R0]; s < n_seqs; s++) {
        const int sb = seq_start[s], se = seq_start[s + 1];
        if (sb >= R1) break;
        if (se - sb <= 1) continue; // decode sequence (or empty): not ours
        const int r0 = max(R0, sb), r1 = min(R1, se); // this segment's rows
        const int32_t *bt = block_tables + (size_t)s * max_blocks;

        for (int i = threadIdx.x; i < BM; i += PF_THREADS) {
            const int r = R0 + i;
            s_pos[i] = r >= r0 && r < r1 ? pos[r] : -1; // -1: masks every key
        }
        __syncthreads();
        int kv_end = 0;
        for (int i = 0; i < BM; i++) kv_end = max(kv_end, s_pos[i] + 1);
        // the thread's rows: A = lane / 4 and B = A + 8 of each m16 tile
        int pA[MT], pB[MT], wmax = -1, pmin = INT_MAX;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            pA[mt] = s_pos[wrow + mt * 16 + (lane >> 2)];
            pB[mt] = s_pos[wrow + mt * 16 + (lane >> 2) + 8];
            wmax = max(wmax, max(pA[mt], pB[mt]));
            pmin = min(pmin, min(pA[mt], pB[mt]));
        }
        wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, 4));
        wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, 8));
        wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, 16));

        auto q_src = [&](int i) -> const bf16 * {
            const int r = R0 + i;
            return r >= r0 && r < r1 ? qkv + (size_t)r * stride + (size_t)h * hd : nullptr;
        };
        // K and V rows of positions [k0, k0 + PF_BN): one block-table lookup per
        // row serves both; past kv_end the rows are zero-filled
        auto load_kv = [&](int kb, int buf) {
            const int k0 = kb * PF_BN;
            bf16 *dk = sK + buf * PF_BN * LDS, *dv = sV + buf * PF_BN * LDS;
            auto kv_row = [&](const KT *base, int i) -> const KT * {
                const int t = k0 + i;
                if (t >= kv_end) return nullptr;
                return base + ((size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask)) * hd;
            };
            if constexpr (FP8) {
                // the codes into stage `buf` (v16 only); pf_convert_fp8 decodes them
                (void)dk, (void)dv;
                const uint8_t *kc = reinterpret_cast<const uint8_t *>(k_cache);
                const uint8_t *vc = reinterpret_cast<const uint8_t *>(v_cache);
                uint8_t *rk = sRaw + buf * 2 * PF_BN * HDP, *rv = rk + PF_BN * HDP;
                auto k_src = [&](int i) {
                    return reinterpret_cast<const uint8_t *>(kv_row(k_cache, i));
                };
                auto v_src = [&](int i) {
                    return reinterpret_cast<const uint8_t *>(kv_row(v_cache, i));
                };
                if (FAST) { // as the bf16 FAST path: 16-code chunks, column fixed per thread
                    constexpr int CPR = HDP / 16, RPP = PF_THREADS / CPR;
                    const int c = threadIdx.x % CPR;
                    const int r_first = threadIdx.x < RPP * CPR ? threadIdx.x / CPR : PF_BN;
#pragma unroll
                    for (int r = r_first; r < PF_BN; r += RPP) {
                        const int t = k0 + r;
                        if (t < kv_end) {
                            const size_t off = ((size_t)bt[t >> bs_shift] * blk_stride + head_row0 +
                                                (t & bmask)) * HDP + c * 16;
                            cp_async16(rk + r * HDP + c * 16, kc + off, 16);
                            cp_async16(rv + r * HDP + c * 16, vc + off, 16);
                        } else {
                            cp_async16(rk + r * HDP + c * 16, kc, 0);
                            cp_async16(rv + r * HDP + c * 16, vc, 0);
                        }
                    }
                } else if (hd % 16 == 0) {
                    pf_stage_fp8<16, HDP>(rk, kc, hd, k_src);
                    pf_stage_fp8<16, HDP>(rv, vc, hd, v_src);
                } else {
                    pf_stage_fp8<8, HDP>(rk, kc, hd, k_src);
                    pf_stage_fp8<8, HDP>(rv, vc, hd, v_src);
                }
            } else if (FAST) { // head_dim == HDP, 16-byte chunks: column fixed per thread
                constexpr int CPR = HDP / 8, RPP = PF_THREADS / CPR;
                const int c = threadIdx.x % CPR;
                // threads past RPP * CPR (HDP 96: 120 of 128) would copy a
                // chunk a second time: an invalid WAW on the async proxy
                const int r_first = threadIdx.x < RPP * CPR ? threadIdx.x / CPR : PF_BN;
#pragma unroll
                for (int r = r_first; r < PF_BN; r += RPP) {
                    const int t = k0 + r;
                    if (t < kv_end) {
                        const size_t off =
                            ((size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask)) *
                                HDP + c * 8;
                        cp_async16(dk + r * LDS + c * 8, k_cache + off, 16);
                        cp_async16(dv + r * LDS + c * 8, v_cache + off, 16);
                    } else {
                        cp_async16(dk + r * LDS + c * 8, k_cache, 0);
                        cp_async16(dv + r * LDS + c * 8, v_cache, 0);
                    }
                }
            } else {
                auto k_src = [&](int i) -> const bf16 * {
                    return reinterpret_cast<const bf16 *>(kv_row(k_cache, i));
                };
                auto v_src = [&](int i) -> const bf16 * {
                    return reinterpret_cast<const bf16 *>(kv_row(v_cache, i));
                };
                pf_load_tile<LDS, PF_BN>(dk, reinterpret_cast<const bf16 *>(k_cache), hd, v16b,
                                         k_src);
                pf_load_tile<LDS, PF_BN>(dv, reinterpret_cast<const bf16 *>(v_cache), hd, v16b,
                                         v_src);
            }
        };
        const int nkb = (kv_end + PF_BN - 1) / PF_BN;
        pf_load_tile<LDS, BM>(sQ, qkv, hd, v16b, q_src);
        if constexpr (FP8) { // tiles 0 and 1 in flight (see the loop); groups may be empty
#pragma unroll 1
            for (int j = 0; j < 2; j++) { // a loop: one inlined copy of load_kv
                if (v16b && j < nkb) load_kv(j, j);
                cp_async_commit();
            }
        } else {
            load_kv(0, 0);
            cp_async_commit();
        }

        float o[MT][NT_O][4], m[MT][2], l[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int j = 0; j < NT_O; j++) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
            m[mt][0] = m[mt][1] = -INFINITY;
            l[mt][0] = l[mt][1] = 0.f;
        }

        for (int kb = 0; kb < nkb; kb++) {
            const int buf = kb & 1;
            const int k0 = kb * PF_BN;
            if constexpr (FP8) {
                // Stage buf holds tile kb's codes; tile kb + 1 is in flight in the
                // other. The first barrier makes tile kb's codes visible and
                // frees sK/sV (every warp is past tile kb - 1's MMAs); the second
                // publishes the decoded tile and frees stage buf (every thread
                // is past its decode), which then takes tile kb + 2, in flight
                // during this tile's MMAs and the next tile's decode.
                cp_async_wait<1>(); // this thread's copies of tile kb (and Q) have landed
                __syncthreads();
                if (v16b) {
                    const uint8_t *rk = sRaw + buf * 2 * PF_BN * HDP;
                    if (FAST) pf_convert_fp8<LDS, HDP>(sK, sV, rk, rk + PF_BN * HDP, HDP);
                    else pf_convert_fp8<LDS, HDP>(sK, sV, rk, rk + PF_BN * HDP, hd);
                } else { // synchronous loads, decoded on the way
                    auto kv_row = [&](const KT *base, int i) -> const uint8_t * {
                        const int t = k0 + i;
                        if (t >= kv_end) return nullptr;
                        const size_t row =
                            (size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask);
                        return reinterpret_cast<const uint8_t *>(base) + row * hd;
                    };
                    pf_load_tile_fp8<LDS, PF_BN>(sK, hd, [&](int i) { return kv_row(k_cache, i); });
                    pf_load_tile_fp8<LDS, PF_BN>(sV, hd, [&](int i) { return kv_row(v_cache, i); });
                }
                __syncthreads();
                if (v16b && kb + 2 < nkb) load_kv(kb + 2, buf);
                cp_async_commit();
            } else {
                if (kb + 1 < nkb) load_kv(kb + 1, buf ^ 1);
                cp_async_commit();
                cp_async_wait<1>(); // tile kb (and Q) have landed
                __syncthreads();
            }
            if (k0 <= wmax) { // else every row of this warp masks the whole tile
                const bf16 *Kb = FP8 ? sK : sK + buf * PF_BN * LDS;
                const bf16 *Vb = FP8 ? sV : sV + buf * PF_BN * LDS;
                float sc[MT][NT_S][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int j = 0; j < NT_S; j++)
                        sc[mt][j][0] = sc[mt][j][1] = sc[mt][j][2] = sc[mt][j][3] = 0.f;
#pragma unroll
                for (int ks = 0; ks < KSTEPS; ks++) {
                    // Q fragments come from shared memory at each k-step (two
                    // tiles of them held across the loop would not fit in registers)
                    uint32_t qf[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
                        ldsm_x4(qf[mt], sQ + (wrow + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) *
                                                 LDS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int np = 0; np < NT_S / 2; np++) {
                        uint32_t b[4];
                        ldsm_x4(b, Kb + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + ks * 16 +
                                       ((lane >> 3) & 1) * 8);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            mma_16816(sc[mt][2 * np], qf[mt], b[0], b[1]);
                            mma_16816(sc[mt][2 * np + 1], qf[mt], b[2], b[3]);
                        }
                    }
                }
                // causal mask by absolute position (rows outside the segment: pos -1)
                // ALiBi: + slope * (t - pos), in units of the unscaled scores
                if (alibi) {
                    const float sa = alibi[h] * ATT_LOG2E / scale_log2;
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int j = 0; j < NT_S; j++)
#pragma unroll
                            for (int e = 0; e < 2; e++) {
                                const int t = k0 + j * 8 + (lane & 3) * 2 + e;
                                sc[mt][j][e] = fmaf(sa, (float)(t - pA[mt]), sc[mt][j][e]);
                                sc[mt][j][2 + e] = fmaf(sa, (float)(t - pB[mt]), sc[mt][j][2 + e]);
                            }
                }
                // and, with a sliding window, keys at or before pos - window
                if (k0 + PF_BN - 1 > pmin || (window > 0 && k0 <= wmax - window)) {
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int j = 0; j < NT_S; j++)
#pragma unroll
                            for (int e = 0; e < 2; e++) {
                                const int t = k0 + j * 8 + (lane & 3) * 2 + e;
                                const int a = pA[mt], bb = pB[mt];
                                if (t > a || (window > 0 && t <= a - window)) sc[mt][j][e] = -INFINITY;
                                if (t > bb || (window > 0 && t <= bb - window))
                                    sc[mt][j][2 + e] = -INFINITY;
                            }
                }
                // online softmax for the thread's two rows (A: e 0-1, B: e 2-3)
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int j = 0; j < NT_S; j++)
                        mx = fmaxf(mx, fmaxf(sc[mt][j][2 * r], sc[mt][j][2 * r + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float mnew = fmaxf(m[mt][r], mx * scale_log2);
                    const float ms = mnew == -INFINITY ? 0.f : mnew;
                    const float alpha = ex2(m[mt][r] - ms);
                    float rs = 0.f;
#pragma unroll
                    for (int j = 0; j < NT_S; j++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const float p = ex2(fmaf(sc[mt][j][2 * r + e], scale_log2, -ms));
                            sc[mt][j][2 * r + e] = p;
                            rs += p;
                        }
                    // this thread's columns; summed over the quad at the end
                    l[mt][r] = l[mt][r] * alpha + rs;
                    m[mt][r] = mnew;
#pragma unroll
                    for (int j = 0; j < NT_O; j++)
                        o[mt][j][2 * r] *= alpha, o[mt][j][2 * r + 1] *= alpha;
                }
                // O += P V: the S accumulators of two n8 tiles are one A fragment
#pragma unroll
                for (int kk = 0; kk < PF_BN / 16; kk++) {
                    uint32_t pa[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        pa[mt][0] = pack_bf16x2(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
                        pa[mt][1] = pack_bf16x2(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
                        pa[mt][2] = pack_bf16x2(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
                        pa[mt][3] = pack_bf16x2(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
                    }
#pragma unroll
                    for (int dp = 0; dp < NT_O / 2; dp++) {
                        uint32_t b[4];
                        ldsm_x4_trans(b, Vb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS +
                                             dp * 16 + (lane >> 4) * 8);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            mma_16816(o[mt][2 * dp], pa[mt], b[0], b[1]);
                            mma_16816(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
                        }
                    }
                }
            }
            // bf16: everyone is done with buffer `buf` before it is refilled
            // (FP8: the next tile's first barrier does it, the next segment's
            // s_pos barrier after the last tile)
            if constexpr (!FP8) __syncthreads();
        }
        cp_async_wait<0>();

        // epilogue: finish the row sums over the quad, normalise, store bf16 pairs
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 1);
                l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 2);
            }
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                if ((r == 0 ? pA[mt] : pB[mt]) < 0) continue; // row outside the segment
                const int grow = R0 + wrow + mt * 16 + (lane >> 2) + 8 * r;
                const float inv = v_mul / l[mt][r]; // v_mul: an FP8 cache's v_scale
                bf16 *orow = out + (size_t)grow * n_heads * hd + (size_t)h * hd;
#pragma unroll
                for (int j = 0; j < NT_O; j++) {
                    const int col = j * 8 + (lane & 3) * 2;
                    if (col < hd)
                        *reinterpret_cast<uint32_t *>(orow + col) =
                            pack_bf16x2(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
                }
            }
    }
}

// ----------------------------------------------------------------------------
// prefill on Hopper's warpgroup MMAs (wgmma), head_dim 128: two warpgroups
// per CTA, 64 query rows each (128 per CTA), key tiles of 128 positions.
//
// Same rows, segments, masks and online softmax as attn_prefill_kernel; the
// differences are where the operands live. Q, K and V tiles sit in shared
// memory in wgmma's 128-byte swizzled layout (wgmma_dev.cuh): a warp's
// cp.async copies two whole 256-byte rows (full sectors from L2), and eight
// consecutive lanes fill one 128-byte row of an atom (no bank conflicts).
// S = Q K^T takes Q and K from shared memory (K-major); the fp32 S
// accumulators, turned into P and rounded to bf16, are the A operand of
// O += P V straight from registers, with V read MN-major (transposed) from
// the same kind of tile. Each MMA chain is issued, committed and waited for
// as a whole (no overlap of softmax and MMAs inside a warpgroup; the two
// warpgroups of a CTA overlap each other).
//
// bf16 cache: 3 K/V tile buffers, the next tile in flight. FP8: 2 bf16
// buffers, fed by the staged codes.
// FP8 cache: the e4m3 codes are staged raw by cp.async two tiles ahead (rows
// of 128 bytes) and decoded smem -> smem into the single bf16 K/V tile.
#define WG_BM 128
#define WG_BN 128
#define WG_HD 128
#define WG_THREADS 256

// One warpgroup's S tile of the wgmma prefill kernels, 64 rows x 8NJ keys
// starting at key kh, as the m64n(8NJ) accumulator lays it out (block j:
// the thread's rows A (elements 4j, 4j + 1) and B (4j + 2, 4j + 3), columns
// kh + 8j + 2 (lane % 4) + {0, 1}). Adds ALiBi, masks the keys past each
// row's position (pA, pB; -1 masks all) and outside the window, and runs
// the online softmax of the thread's two rows: m and l move on, alpha is
// what O must be rescaled by, and pn gets P in bf16, k-step kk's A fragment
// in pn[kk] (blocks 2kk, 2kk + 1). Mask work is skipped when no key of the
// tile can be masked (kh + 8NJ - 1 <= pmin, the window behind gmax).
template <int NJ>
static __device__ __forceinline__ void
wg_softmax_tile(float (&sc)[4 * NJ], uint32_t (&pn)[NJ / 2][4], float (&m)[2], float (&l)[2],
                float (&alpha)[2], int kh, int pA, int pB, int pmin, int gmax, int window,
                const float *alibi, int h, int lane, float scale_log2) {
    if (alibi) {
        const float sa = alibi[h] * ATT_LOG2E / scale_log2;
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int t = kh + j * 8 + (lane & 3) * 2 + e;
                sc[4 * j + e] = fmaf(sa, (float)(t - pA), sc[4 * j + e]);
                sc[4 * j + 2 + e] = fmaf(sa, (float)(t - pB), sc[4 * j + 2 + e]);
            }
    }
    if (kh + 8 * NJ - 1 > pmin || (window > 0 && kh <= gmax - window)) {
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int t = kh + j * 8 + (lane & 3) * 2 + e;
                if (t > pA || (window > 0 && t <= pA - window)) sc[4 * j + e] = -INFINITY;
                if (t > pB || (window > 0 && t <= pB - window)) sc[4 * j + 2 + e] = -INFINITY;
            }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NJ; j++) mx = fmaxf(mx, fmaxf(sc[4 * j + 2 * r], sc[4 * j + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m[r], mx * scale_log2);
        const float ms = mnew == -INFINITY ? 0.f : mnew;
        alpha[r] = ex2(m[r] - ms);
        float rs = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float p = ex2(fmaf(sc[4 * j + 2 * r + e], scale_log2, -ms));
                sc[4 * j + 2 * r + e] = p;
                rs += p;
            }
        l[r] = l[r] * alpha[r] + rs; // the thread's columns; summed over the quad at the end
        m[r] = mnew;
    }
#pragma unroll
    for (int kk = 0; kk < NJ / 2; kk++) {
        pn[kk][0] = pack_bf16x2(sc[8 * kk + 0], sc[8 * kk + 1]);
        pn[kk][1] = pack_bf16x2(sc[8 * kk + 2], sc[8 * kk + 3]);
        pn[kk][2] = pack_bf16x2(sc[8 * kk + 4], sc[8 * kk + 5]);
        pn[kk][3] = pack_bf16x2(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
}

template <typename KT>
static __global__ void __launch_bounds__(WG_THREADS, 1)
    attn_prefill_wg_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ qkv,
                           const KT *__restrict__ k_cache, const KT *__restrict__ v_cache,
                           const int32_t *__restrict__ pos, const int32_t *__restrict__ seq_of,
                           const int32_t *__restrict__ seq_start,
                           const int32_t *__restrict__ block_tables, int max_blocks,
                           int n_tokens, int n_seqs, int n_heads, int n_kv_heads, int bs_shift,
                           float scale_log2, float v_mul, int window,
                           const float *__restrict__ alibi, int pingpong) {
    constexpr bool FP8 = sizeof(KT) == 1;
    constexpr int TILE = WG_BN * WG_HD; // elements of a K or V tile
    constexpr int NBUF = FP8 ? 2 : 3;
    // sQ [WG_BM x 128], sK[NBUF], sV[NBUF]; FP8: then the codes [2 stages][K,
    // V][128 x 128 bytes]
    // the swizzle atoms must be 1024-byte aligned (the launch adds 1 KB)
    extern __shared__ __align__(128) unsigned char wg_smem_raw[];
    unsigned char *wg_smem =
        wg_smem_raw + ((1024 - ((uint32_t)__cvta_generic_to_shared(wg_smem_raw) & 1023)) & 1023);
    bf16 *sQ = reinterpret_cast<bf16 *>(wg_smem);
    bf16 *sK = sQ + WG_BM * WG_HD;
    bf16 *sV = sK + NBUF * TILE;
    uint8_t *sRaw = reinterpret_cast<uint8_t *>(sV + NBUF * TILE);
    __shared__ int s_pos[WG_BM];

    const int h = blockIdx.x;
    const int R0 = (gridDim.y - 1 - blockIdx.y) * WG_BM; // late rows (long contexts) first
    const int R1 = min(R0 + WG_BM, n_tokens);
    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31;
    const int wrow = wg * 64 + ((tid >> 5) & 3) * 16; // the warp's first row
    const int kvh = h / (n_heads / n_kv_heads);
    const int stride = (n_heads + 2 * n_kv_heads) * WG_HD;
    const int bmask = (1 << bs_shift) - 1;
    const size_t blk_stride = (size_t)n_kv_heads << bs_shift;
    const size_t head_row0 = (size_t)kvh << bs_shift;
    // this thread's copy slots: chunk cc of rows rr + 16j (bf16: 16 chunks a
    // row; FP8 codes: 8 chunks a row, rows rr8 + 32j)
    const int cc = tid & 15, rr = tid >> 4, cc8 = tid & 7, rr8 = tid >> 3;

    for (int s = seq_of[R0]; s < n_seqs; s++) {
        const int sb = seq_start[s], se = seq_start[s + 1];
        if (sb >= R1) break;
        if (se - sb <= 1) continue; // decode sequence (or empty): not ours
        const int r0 = max(R0, sb), r1 = min(R1, se);
        const int32_t *bt = block_tables + (size_t)s * max_blocks;

        for (int i = tid; i < WG_BM; i += WG_THREADS) {
            const int r = R0 + i;
            s_pos[i] = r >= r0 && r < r1 ? pos[r] : -1; // -1: masks every key
        }
        __syncthreads();
        int kv_end = 0, gmax = -1; // gmax: the warpgroup's last position
        for (int i = 0; i < WG_BM; i++) {
            kv_end = max(kv_end, s_pos[i] + 1);
            if ((i >> 6) == wg) gmax = max(gmax, s_pos[i]);
        }
        const int pA = s_pos[wrow + (lane >> 2)], pB = s_pos[wrow + (lane >> 2) + 8];
        const int pmin = min(pA, pB);
        // Ping-pong (pingpong != 0): the warpgroups take turns to issue their
        // MMAs, warpgroup 0 first. Named barrier 1 + w is warpgroup w's turn:
        // it waits there before issuing and, once issued, hands the turn to
        // the other (bar.arrive). Then one warpgroup's S completes while the
        // other's MMAs queue behind it, so its softmax overlaps them instead
        // of both warpgroups waiting for both S at once. Every sync has its
        // arrive: warpgroup 1 arrives once here, warpgroup 0 syncs once more
        // after the segment's last P.V.
        if (pingpong && wg == 1) wg_bar_arrive(1, 2 * 128);

        // K/V rows of positions [k0, k0 + WG_BN) (zero-filled past kv_end)
        // into bf16 tiles (dk, dv) or, with an FP8 cache, their codes
        auto load_kv = [&](int kb, void *dk, void *dv) {
            const int k0 = kb * WG_BN;
            if constexpr (FP8) { // rows of 128 codes, chunk cc8 of rows rr8 + 32j
                const uint8_t *kc = reinterpret_cast<const uint8_t *>(k_cache);
                const uint8_t *vc = reinterpret_cast<const uint8_t *>(v_cache);
                uint8_t *rk = static_cast<uint8_t *>(dk), *rv = static_cast<uint8_t *>(dv);
#pragma unroll
                for (int j = 0; j < WG_BN / 32; j++) {
                    const int r = rr8 + 32 * j, t = k0 + r, so = r * WG_HD + cc8 * 16;
                    if (t < kv_end) {
                        const size_t off =
                            ((size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask)) *
                                WG_HD + cc8 * 16;
                        cp_async16(rk + so, kc + off, 16);
                        cp_async16(rv + so, vc + off, 16);
                    } else {
                        cp_async16(rk + so, kc, 0);
                        cp_async16(rv + so, vc, 0);
                    }
                }
            } else {
                unsigned char *tk = static_cast<unsigned char *>(dk);
                unsigned char *tv = static_cast<unsigned char *>(dv);
#pragma unroll
                for (int j = 0; j < WG_BN / 16; j++) {
                    const int r = rr + 16 * j, t = k0 + r, so = wg_sw128_off<WG_BN>(r, cc);
                    if (t < kv_end) {
                        const size_t off =
                            ((size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask)) *
                                WG_HD + cc * 8;
                        cp_async16(tk + so, k_cache + off, 16);
                        cp_async16(tv + so, v_cache + off, 16);
                    } else {
                        cp_async16(tk + so, k_cache, 0);
                        cp_async16(tv + so, v_cache, 0);
                    }
                }
            }
        };
        // Q rows [R0, R0 + WG_BM): zero rows outside the segment
#pragma unroll
        for (int j = 0; j < WG_BM / 16; j++) {
            const int r = rr + 16 * j, gr = R0 + r;
            const bool ok = gr >= r0 && gr < r1;
            cp_async16(reinterpret_cast<unsigned char *>(sQ) + wg_sw128_off<WG_BM>(r, cc),
                       ok ? qkv + (size_t)gr * stride + (size_t)h * WG_HD + cc * 8 : qkv,
                       ok ? 16 : 0);
        }
        const int nkb = (kv_end + WG_BN - 1) / WG_BN;
        auto stage = [&](int i) { return sRaw + (size_t)i * 2 * TILE; };
        if constexpr (FP8) { // codes of tiles 0 and 1 in flight; groups may be empty
            for (int j = 0; j < 2; j++) {
                if (j < nkb) load_kv(j, stage(j), stage(j) + TILE);
                cp_async_commit();
            }
        } else { // tile 0 in flight
            load_kv(0, sK, sV);
            cp_async_commit();
        }

        float o[64], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < 64; i++) o[i] = 0.f;
        // The P.V product of the previous half tile, issued with the next S.
        // Every half issues one (the first a zero P against tile 0's V: O
        // stays 0) and the loop's issue is unconditional, which keeps the
        // wgmma chains out of divergent code (ptxas serialises them there).
        uint32_t pp[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) pp[kk][0] = pp[kk][1] = pp[kk][2] = pp[kk][3] = 0u;
        const bf16 *pv_src = sV; // tile 0's buffer, whatever the cache type

        for (int kb = 0, buf = 0; kb < nkb; kb++, buf = buf + 1 == NBUF ? 0 : buf + 1) {
            const int k0 = kb * WG_BN;
            // Buffer use: tile kb's P.V of its second half is still in flight
            // during tile kb + 1's first half, so the tile loaded now may only
            // overwrite a buffer of tile kb - 2 or older (done: every
            // warpgroup waited for those MMAs before this barrier).
            if constexpr (FP8) {
                // stage kb & 1 holds tile kb's codes: decode them into bf16
                // buffer buf, then the stage takes tile kb + 2
                cp_async_wait<1>();
                __syncthreads();
                const uint8_t *rk = stage(kb & 1), *rv = rk + TILE;
                unsigned char *tk = reinterpret_cast<unsigned char *>(sK + buf * TILE);
                unsigned char *tv = reinterpret_cast<unsigned char *>(sV + buf * TILE);
#pragma unroll 2
                for (int i = tid; i < WG_BN * 8; i += WG_THREADS) {
                    const int r = i >> 3, c16 = i & 7; // 16 codes: bf16 chunks 2c16, 2c16 + 1
                    const uint4 bk = *reinterpret_cast<const uint4 *>(rk + r * WG_HD + c16 * 16);
                    const uint4 bv = *reinterpret_cast<const uint4 *>(rv + r * WG_HD + c16 * 16);
                    const int o0 = wg_sw128_off<WG_BN>(r, 2 * c16);
                    const int o1 = wg_sw128_off<WG_BN>(r, 2 * c16 + 1);
                    *reinterpret_cast<uint4 *>(tk + o0) = e4m3x8_to_bf16x8(make_uint2(bk.x, bk.y));
                    *reinterpret_cast<uint4 *>(tk + o1) = e4m3x8_to_bf16x8(make_uint2(bk.z, bk.w));
                    *reinterpret_cast<uint4 *>(tv + o0) = e4m3x8_to_bf16x8(make_uint2(bv.x, bv.y));
                    *reinterpret_cast<uint4 *>(tv + o1) = e4m3x8_to_bf16x8(make_uint2(bv.z, bv.w));
                }
                fence_proxy_async();
                __syncthreads();
                if (kb + 2 < nkb) load_kv(kb + 2, stage(kb & 1), stage(kb & 1) + TILE);
                cp_async_commit();
            } else {
                cp_async_wait<0>(); // tile kb (and Q) have landed
                fence_proxy_async();
                __syncthreads();
                if (kb + 1 < nkb) {
                    const int nb = buf + 1 == NBUF ? 0 : buf + 1;
                    load_kv(kb + 1, sK + nb * TILE, sV + nb * TILE);
                }
                cp_async_commit();
            }
            const bf16 *Kb = sK + buf * TILE, *Vb = sV + buf * TILE;
            // Two halves of 64 keys. A half: S = Q K^T issued, then the
            // previous half's P.V; softmax of this half while that P.V runs;
            // O rescaled once the P.V is done (it accumulates into O).
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                // (keys past the warpgroup's rows are computed and masked:
                // skipping them would put the wgmma chains in divergent code)
                const int kh = k0 + hf * 64;
                float sc[32];
                if (pingpong) wg_bar_sync(1 + wg, 2 * 128);
                wg_fence();
#pragma unroll
                for (int ks = 0; ks < WG_HD / 16; ks++) { // head_dim 16ks .. 16ks + 15
                    const int kq = (ks >> 2) * WG_BM * 64 + (ks & 3) * 16; // elements
                    const int kk = (ks >> 2) * WG_BN * 64 + hf * 64 * 64 + (ks & 3) * 16;
                    wg_mma_ss_64(sc, wg_desc(sQ + wg * 64 * 64 + kq, 16, 1024),
                                 wg_desc(Kb + kk, 16, 1024), ks);
                }
                wg_commit();
#pragma unroll
                for (int kk = 0; kk < 4; kk++) // positions 16kk ..: atoms 2kk, 2kk + 1
                    wg_mma_rs_128_tb(o, pp[kk], wg_desc(pv_src + kk * 16 * 64, WG_BN * 128, 1024));
                wg_commit();
                if (pingpong) wg_bar_arrive(1 + (wg ^ 1), 2 * 128);
                wg_wait<1>(); // S is done; the P.V may still run
                wg_reg_fence(sc);
                float alpha[2];
                uint32_t pn[4][4]; // this half's P
                wg_softmax_tile<8>(sc, pn, m, l, alpha, kh, pA, pB, pmin, gmax, window, alibi, h,
                                   lane, scale_log2);
                wg_wait<0>(); // the P.V is done: O may be rescaled, pp reused
                wg_reg_fence(o);
#pragma unroll
                for (int kk = 0; kk < 4; kk++) wg_reg_fence(pp[kk]);
#pragma unroll
                for (int j = 0; j < 16; j++)
                    o[4 * j] *= alpha[0], o[4 * j + 1] *= alpha[0], o[4 * j + 2] *= alpha[1],
                        o[4 * j + 3] *= alpha[1];
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
#pragma unroll
                    for (int i = 0; i < 4; i++) pp[kk][i] = pn[kk][i];
                pv_src = Vb + hf * 64 * 64; // rows (positions) 64hf ..: 8 atoms down
            }
        }
        // the last half's P.V
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            wg_mma_rs_128_tb(o, pp[kk], wg_desc(pv_src + kk * 16 * 64, WG_BN * 128, 1024));
        wg_commit();
        if (pingpong && wg == 0) wg_bar_sync(1, 2 * 128);
        wg_wait<0>();
        wg_reg_fence(o);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_reg_fence(pp[kk]);
        cp_async_wait<0>();

        // epilogue: finish the row sums over the quad, normalise, store bf16 pairs
#pragma unroll
        for (int r = 0; r < 2; r++) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            if ((r == 0 ? pA : pB) < 0) continue; // row outside the segment
            const int grow = R0 + wrow + (lane >> 2) + 8 * r;
            const float inv = v_mul / l[r];
            bf16 *orow = out + (size_t)grow * n_heads * WG_HD + (size_t)h * WG_HD;
#pragma unroll
            for (int j = 0; j < 16; j++)
                *reinterpret_cast<uint32_t *>(orow + j * 8 + (lane & 3) * 2) =
                    pack_bf16x2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
        }
        __syncthreads(); // s_pos and the tiles are reused by the next segment
    }
}

// ----------------------------------------------------------------------------
// prefill at head_dim 128, warp-specialised (SLUICE_PREFILL_WG=3 with the
// ping-pong, 4 without): attn_prefill_wg_kernel's two warpgroups of 64 query
// rows become consumers that only issue MMAs and run the softmax, and a third
// warpgroup, the producer, does every K/V load. The K/V tiles go round a ring
// of bf16 buffers (3 over a bf16 cache; 2 over an FP8 one, fed from two
// stages of raw codes that the producer decodes), handed over by mbarriers:
// full[b] (the producer's 128 threads arrive once a tile is in buffer b) and
// empty[b] (the consumers' 256 threads arrive once the last MMA reading it is
// done). So the loads and the FP8 decode overlap the MMAs instead of
// stopping both warpgroups at a CTA barrier every tile. Each producer thread
// decodes exactly the chunks it copied (its own cp.async groups), so the
// producer needs no barrier of its own. The producer gives registers to the
// consumers (setmaxnreg): 56 against 224. The grid is persistent (one CTA
// per SM walking the work items), so the producer fills the ring for the
// next item while the consumers finish the current one. Each consumer
// warpgroup takes whole 128-key tiles: S = Q K^T of a tile is issued with
// the previous tile's P.V, and its softmax runs while that P.V does.
#define WS_THREADS 384
#define WS_PREG 56  // registers of a producer thread
#define WS_CREG 224 // and of a consumer thread (128 x 56 + 256 x 224 <= 64K)

template <typename KT>
static __global__ void __launch_bounds__(WS_THREADS, 1)
    attn_prefill_ws_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ qkv,
                           const KT *__restrict__ k_cache, const KT *__restrict__ v_cache,
                           const int32_t *__restrict__ pos, const int32_t *__restrict__ seq_of,
                           const int32_t *__restrict__ seq_start,
                           const int32_t *__restrict__ block_tables, int max_blocks,
                           int n_tokens, int n_seqs, int n_heads, int n_kv_heads, int bs_shift,
                           float scale_log2, float v_mul, int window,
                           const float *__restrict__ alibi, int pingpong) {
    constexpr bool FP8 = sizeof(KT) == 1;
    constexpr int TILE = WG_BN * WG_HD; // elements of a K or V tile
    constexpr int NBUF = FP8 ? 2 : 3;
    // sQ [WG_BM x 128], sK[NBUF], sV[NBUF]; FP8: then the codes [2 stages][K,
    // V][128 x 128 bytes] (the same layout as attn_prefill_wg_kernel's)
    extern __shared__ __align__(128) unsigned char wg_smem_raw[];
    unsigned char *wg_smem =
        wg_smem_raw + ((1024 - ((uint32_t)__cvta_generic_to_shared(wg_smem_raw) & 1023)) & 1023);
    bf16 *sQ = reinterpret_cast<bf16 *>(wg_smem);
    bf16 *sK = sQ + WG_BM * WG_HD;
    bf16 *sV = sK + NBUF * TILE;
    uint8_t *sRaw = reinterpret_cast<uint8_t *>(sV + NBUF * TILE);
    __shared__ __align__(8) uint64_t s_full[NBUF], s_empty[NBUF];

    // wg through a shuffle: warp-uniform to the compiler, which keeps the
    // consumers' wgmma chains out of what it would treat as divergent code
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid >> 7, 0), lane = tid & 31;
    const int stride = (n_heads + 2 * n_kv_heads) * WG_HD;
    const int bmask = (1 << bs_shift) - 1;
    const size_t blk_stride = (size_t)n_kv_heads << bs_shift;
    // Persistent: CTA b takes work items b, b + gridDim.x, ...; item i is
    // query head i % n_heads of row block i / n_heads counted from the end
    // (late rows, long contexts, first). Each role walks the same items and
    // segments on its own; they meet only at the ring's mbarriers, so the
    // producer runs ahead into the next segment or item while the consumers
    // finish one.
    const int n_rb = (n_tokens + WG_BM - 1) / WG_BM, n_items = n_rb * n_heads;

    if (tid == 0) {
        for (int i = 0; i < NBUF; i++) mbar_init(&s_full[i], 128), mbar_init(&s_empty[i], 256);
    }
    __syncthreads();

    uint32_t it0 = 0; // tiles of the earlier segments: ring slot and phase
    if (wg == 0) { // ---- producer
        wg_setmaxnreg_dec<WS_PREG>();
        for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
            const int h = item % n_heads, R0 = (n_rb - 1 - item / n_heads) * WG_BM;
            const int R1 = min(R0 + WG_BM, n_tokens);
            const size_t head_row0 = (size_t)(h / (n_heads / n_kv_heads)) << bs_shift;
            for (int s = seq_of[R0]; s < n_seqs; s++) {
                const int sb = seq_start[s], se = seq_start[s + 1];
                if (sb >= R1) break;
                if (se - sb <= 1) continue; // decode sequence (or empty): not ours
                const int r0 = max(R0, sb), r1 = min(R1, se);
                const int32_t *bt = block_tables + (size_t)s * max_blocks;
                int kv_end = 0; // one past the segment's last position in the CTA's rows
#pragma unroll
                for (int k = 0; k < WG_BM / 32; k++) { // each warp on its own: no barrier
                    const int r = R0 + lane + 32 * k;
                    if (r >= r0 && r < r1) kv_end = max(kv_end, pos[r] + 1);
                }
                kv_end = __reduce_max_sync(0xffffffffu, kv_end);
                const int nkb = (kv_end + WG_BN - 1) / WG_BN;
                // bf16: chunk cc of rows rr + 8j straight into the swizzled
                // buffer; FP8: 16 codes cc8 of rows rr8 + 16j into a stage
                const int cc = tid & 15, rr = tid >> 4, cc8 = tid & 7, rr8 = tid >> 3;
                auto row_off = [&](int t) { // element offset of position t's row
                    return ((size_t)bt[t >> bs_shift] * blk_stride + head_row0 + (t & bmask)) * WG_HD;
                };
                auto acquire = [&](uint32_t t) { // buffer of tile t: tile t - NBUF released
                    if (t >= NBUF) mbar_wait(&s_empty[t % NBUF], (t / NBUF - 1) & 1);
                };
                if constexpr (FP8) {
                    const uint8_t *kc = reinterpret_cast<const uint8_t *>(k_cache);
                    const uint8_t *vc = reinterpret_cast<const uint8_t *>(v_cache);
                    auto stage = [&](int i) { return sRaw + (size_t)i * 2 * TILE; };
                    auto load_raw = [&](int kb, uint8_t *rk) {
                        uint8_t *rv = rk + TILE;
#pragma unroll
                        for (int j = 0; j < WG_BN / 16; j++) {
                            const int r = rr8 + 16 * j, t = kb * WG_BN + r, so = r * WG_HD + cc8 * 16;
                            if (t < kv_end) {
                                const size_t off = row_off(t) + cc8 * 16;
                                cp_async16(rk + so, kc + off, 16);
                                cp_async16(rv + so, vc + off, 16);
                            } else {
                                cp_async16(rk + so, kc, 0);
                                cp_async16(rv + so, vc, 0);
                            }
                        }
                    };
                    for (int j = 0; j < 2; j++) {
                        if (j < nkb) load_raw(j, stage(j));
                        cp_async_commit();
                    }
                    for (int kb = 0; kb < nkb; kb++) {
                        const uint32_t t = it0 + kb;
                        cp_async_wait<1>(); // this thread's codes of tile kb
                        acquire(t);
                        const uint8_t *rk = stage(kb & 1), *rv = rk + TILE;
                        unsigned char *tk = reinterpret_cast<unsigned char *>(sK + (t % NBUF) * TILE);
                        unsigned char *tv = reinterpret_cast<unsigned char *>(sV + (t % NBUF) * TILE);
#pragma unroll 2
                        for (int j = 0; j < WG_BN / 16; j++) {
                            const int r = rr8 + 16 * j;
                            const uint4 bk = *reinterpret_cast<const uint4 *>(rk + r * WG_HD + cc8 * 16);
                            const uint4 bv = *reinterpret_cast<const uint4 *>(rv + r * WG_HD + cc8 * 16);
                            const int o0 = wg_sw128_off<WG_BN>(r, 2 * cc8);
                            const int o1 = wg_sw128_off<WG_BN>(r, 2 * cc8 + 1);
                            *reinterpret_cast<uint4 *>(tk + o0) = e4m3x8_to_bf16x8(make_uint2(bk.x, bk.y));
                            *reinterpret_cast<uint4 *>(tk + o1) = e4m3x8_to_bf16x8(make_uint2(bk.z, bk.w));
                            *reinterpret_cast<uint4 *>(tv + o0) = e4m3x8_to_bf16x8(make_uint2(bv.x, bv.y));
                            *reinterpret_cast<uint4 *>(tv + o1) = e4m3x8_to_bf16x8(make_uint2(bv.z, bv.w));
                        }
                        fence_proxy_async();
                        mbar_arrive(&s_full[t % NBUF]);
                        if (kb + 2 < nkb) load_raw(kb + 2, stage(kb & 1)); // its own chunks: read above
                        cp_async_commit();
                    }
                } else {
                    auto load_kv = [&](int kb, uint32_t t) {
                        unsigned char *tk = reinterpret_cast<unsigned char *>(sK + (t % NBUF) * TILE);
                        unsigned char *tv = reinterpret_cast<unsigned char *>(sV + (t % NBUF) * TILE);
#pragma unroll 4
                        for (int j = 0; j < WG_BN / 8; j++) {
                            const int r = rr + 8 * j, tt = kb * WG_BN + r, so = wg_sw128_off<WG_BN>(r, cc);
                            if (tt < kv_end) {
                                const size_t off = row_off(tt) + cc * 8;
                                cp_async16(tk + so, k_cache + off, 16);
                                cp_async16(tv + so, v_cache + off, 16);
                            } else {
                                cp_async16(tk + so, k_cache, 0);
                                cp_async16(tv + so, v_cache, 0);
                            }
                        }
                    };
                    for (int j = 0; j < 2; j++) {
                        if (j < nkb) acquire(it0 + j), load_kv(j, it0 + j);
                        cp_async_commit();
                    }
                    for (int kb = 0; kb < nkb; kb++) {
                        const uint32_t t = it0 + kb;
                        cp_async_wait<1>(); // this thread's rows of tile kb
                        fence_proxy_async();
                        mbar_arrive(&s_full[t % NBUF]);
                        if (kb + 2 < nkb) acquire(t + 2), load_kv(kb + 2, t + 2);
                        cp_async_commit();
                    }
                }
                it0 += nkb;
            }
        }
    } else { // ---- consumers: warpgroup cw has rows 64cw .. 64cw + 63
        wg_setmaxnreg_inc<WS_CREG>();
        const int cw = wg - 1;
        const int wrow = cw * 64 + ((tid >> 5) & 3) * 16; // the warp's first row
        // Ping-pong (named barriers 1 and 2, as in attn_prefill_wg_kernel):
        // warpgroup cw waits on 1 + cw before issuing a tile's MMAs and then
        // hands the turn over (bar.arrive on the other's barrier). Both
        // warpgroups walk the same tiles, so the turn passes once per tile
        // across segments and items: warpgroup 1 arrives once here, warpgroup
        // 0 syncs once after the last item. Handing the turn out per segment
        // instead (an arrive at each segment's start) is a deadlock: no CTA
        // barrier separates the segments, so warpgroup 1 can reach the next
        // segment's arrive before warpgroup 0 has synced on the previous one,
        // and the two arrives then complete barrier 1 without warpgroup 0.
        if (pingpong && cw == 1) wg_bar_arrive(1, 2 * 128);
        for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
            const int h = item % n_heads, R0 = (n_rb - 1 - item / n_heads) * WG_BM;
            const int R1 = min(R0 + WG_BM, n_tokens);
            for (int s = seq_of[R0]; s < n_seqs; s++) {
                const int sb = seq_start[s], se = seq_start[s + 1];
                if (sb >= R1) break;
                if (se - sb <= 1) continue; // decode sequence (or empty): not ours
                const int r0 = max(R0, sb), r1 = min(R1, se);
                auto pos_of = [&](int rr) { // -1 outside the segment: masks every key
                    const int r = R0 + rr;
                    return r >= r0 && r < r1 ? pos[r] : -1;
                };
                // the segment's last position in the CTA's rows (kv_end - 1) and
                // in the warpgroup's (gmax), each warp on its own
                int kv_end = -1, gmax = -1;
#pragma unroll
                for (int k = 0; k < WG_BM / 32; k++) {
                    const int p = pos_of(lane + 32 * k);
                    kv_end = max(kv_end, p);
                    if ((k >> 1) == cw) gmax = max(gmax, p);
                }
                kv_end = __reduce_max_sync(0xffffffffu, kv_end) + 1;
                gmax = __reduce_max_sync(0xffffffffu, gmax);
                const int nkb = (kv_end + WG_BN - 1) / WG_BN;
                const int pA = pos_of(wrow + (lane >> 2)), pB = pos_of(wrow + (lane >> 2) + 8);
                const int pmin = min(pA, pB);
                { // this warpgroup's Q rows (zero outside the segment); barrier 3 + cw
                    const int qc = tid & 15, qr = (tid & 127) >> 4;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int r = cw * 64 + qr + 8 * j, gr = R0 + r;
                        const bool ok = gr >= r0 && gr < r1;
                        cp_async16(reinterpret_cast<unsigned char *>(sQ) + wg_sw128_off<WG_BM>(r, qc),
                                   ok ? qkv + (size_t)gr * stride + (size_t)h * WG_HD + qc * 8 : qkv,
                                   ok ? 16 : 0);
                    }
                    cp_async_commit();
                    cp_async_wait<0>();
                    fence_proxy_async();
                    wg_bar_sync(3 + cw, 128);
                }

                float o[64], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
                for (int i = 0; i < 64; i++) o[i] = 0.f;
                // Whole tiles of 128 keys: S = Q K^T of tile kb is issued with the
                // P.V of tile kb - 1 (P in pp), and the softmax of tile kb runs
                // while that P.V does. The first P.V is a zero P against tile 0's
                // V (O stays 0), so the loop's issue is unconditional.
                uint32_t pp[8][4];
#pragma unroll
                for (int kk = 0; kk < 8; kk++) pp[kk][0] = pp[kk][1] = pp[kk][2] = pp[kk][3] = 0u;
                const bf16 *pv_src = sV + (it0 % NBUF) * TILE; // tile 0's buffer

                for (int kb = 0; kb < nkb; kb++) {
                    const uint32_t t = it0 + kb;
                    const int k0 = kb * WG_BN;
                    mbar_wait(&s_full[t % NBUF], (t / NBUF) & 1);
                    const bf16 *Kb = sK + (t % NBUF) * TILE;
                    float sc[64];
                    if (pingpong) wg_bar_sync(1 + cw, 2 * 128);
                    wg_fence();
#pragma unroll
                    for (int ks = 0; ks < WG_HD / 16; ks++) { // head_dim 16ks .. 16ks + 15
                        const int kq = (ks >> 2) * WG_BM * 64 + (ks & 3) * 16; // elements
                        const int kk = (ks >> 2) * WG_BN * 64 + (ks & 3) * 16;
                        wg_mma_ss_128(sc, wg_desc(sQ + cw * 64 * 64 + kq, 16, 1024),
                                      wg_desc(Kb + kk, 16, 1024), ks);
                    }
                    wg_commit();
#pragma unroll
                    for (int kk = 0; kk < 8; kk++) // positions 16kk ..: atoms 2kk, 2kk + 1
                        wg_mma_rs_128_tb(o, pp[kk], wg_desc(pv_src + kk * 16 * 64, WG_BN * 128, 1024));
                    wg_commit();
                    if (pingpong) wg_bar_arrive(1 + (cw ^ 1), 2 * 128);
                    wg_wait<1>(); // S is done; the P.V may still run
                    wg_reg_fence(sc);
                    // (keys past the warpgroup's rows are computed and masked:
                    // skipping them would put the wgmma chains in divergent code)
                    float alpha[2];
                    uint32_t pn[8][4]; // this tile's P
                    wg_softmax_tile<16>(sc, pn, m, l, alpha, k0, pA, pB, pmin, gmax, window, alibi,
                                        h, lane, scale_log2);
                    wg_wait<0>(); // the P.V is done: O may be rescaled, pp reused
                    wg_reg_fence(o);
#pragma unroll
                    for (int kk = 0; kk < 8; kk++) wg_reg_fence(pp[kk]);
                    // that P.V was the previous tile's last reader: release it
                    if (kb > 0) mbar_arrive(&s_empty[(t - 1) % NBUF]);
                    // alpha is exactly 1 where a row's maximum did not move: the
                    // warp skips the multiplications when that holds for all its rows
                    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
                        for (int j = 0; j < 16; j++)
                            o[4 * j] *= alpha[0], o[4 * j + 1] *= alpha[0], o[4 * j + 2] *= alpha[1],
                                o[4 * j + 3] *= alpha[1];
                    }
#pragma unroll
                    for (int kk = 0; kk < 8; kk++)
#pragma unroll
                        for (int i = 0; i < 4; i++) pp[kk][i] = pn[kk][i];
                    pv_src = sV + (t % NBUF) * TILE;
                }
                // the last tile's P.V, then its buffer is released
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < 8; kk++)
                    wg_mma_rs_128_tb(o, pp[kk], wg_desc(pv_src + kk * 16 * 64, WG_BN * 128, 1024));
                wg_commit();
                wg_wait<0>();
                wg_reg_fence(o);
#pragma unroll
                for (int kk = 0; kk < 8; kk++) wg_reg_fence(pp[kk]);
                mbar_arrive(&s_empty[(it0 + nkb - 1) % NBUF]);

#pragma unroll
                for (int r = 0; r < 2; r++) {
                    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
                    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
                }
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    if ((r == 0 ? pA : pB) < 0) continue; // row outside the segment
                    const int grow = R0 + wrow + (lane >> 2) + 8 * r;
                    const float inv = v_mul / l[r];
                    bf16 *orow = out + (size_t)grow * n_heads * WG_HD + (size_t)h * WG_HD;
#pragma unroll
                    for (int j = 0; j < 16; j++)
                        *reinterpret_cast<uint32_t *>(orow + j * 8 + (lane & 3) * 2) =
                            pack_bf16x2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
                }
                it0 += nkb;
            }
        }
        if (pingpong && cw == 0) wg_bar_sync(1, 2 * 128); // warpgroup 1's last hand-over
    }
}

// ----------------------------------------------------------------------------
// launchers

static int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

// Split count and chunk length of the decode kernel for a call. Enough CTAs
// to fill the GPU, never fewer than DEC_MIN_CHUNK positions per split. Any
// n_splits >= 2 implies n_seqs * n_splits < 2 * DEC_TARGET_CTAS, which bounds
// the workspace (see cuda_attention_workspace_bytes).
static void decode_splits(int n_seqs, int n_kv_heads, int n_sub, int max_kv_len, int *n_splits,
                          int *chunk) {
    if (max_kv_len < 1) max_kv_len = 1;
    long units = (long)n_seqs * n_kv_heads * n_sub;
    int ns = ceil_div(DEC_TARGET_CTAS, units);
    int cap = ceil_div(max_kv_len, DEC_MIN_CHUNK);
    if (ns > cap) ns = cap;
    if (ns < 1) ns = 1;
    int ch = ceil_div(max_kv_len, ns);
    ch = ceil_div(ch, 64) * 64;
    *n_splits = ns;
    *chunk = ch;
}

// Dynamic shared memory of the decode kernel's ring: R stages of STEP_CHUNKS
// 16-byte pieces per thread.
static constexpr size_t dec_ring_bytes(int R, int step_chunks) {
    return (size_t)R * step_chunks * DEC_THREADS * 16;
}

// Sets an instantiation's dynamic shared memory limit once (not a stream
// operation), then launches it.
template <typename Kern, typename... Args>
static void dec_launch(Kern kern, bool &attr_set, dim3 grid, size_t smem, cudaStream_t st,
                       Args... args) {
    if (!attr_set && smem > 0) { // the ring: all of the shared memory carve-out
        CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        (int)cudaSharedmemCarveoutMaxShared));
        attr_set = true;
    }
    kern<<<grid, DEC_THREADS, smem, st>>>(args...);
}

template <int LANES, int VEC, int NCH, int U, int R, typename KT>
static void launch_decode_hd(int gb, dim3 grid, bf16 *out, float *ws, const bf16 *qkv,
                             const KT *kc, const KT *vc, const int32_t *pos,
                             const int32_t *seq_start, const int32_t *bt, int max_blocks,
                             int n_seqs, int n_heads, int n_kv_heads, int hd, int bs_shift,
                             int n_sub, int n_splits, int chunk, float sl2, float v_mul,
                             int window, const float *alibi, cudaStream_t st) {
#define DEC_ARGS                                                                             \
    out, ws, qkv, kc, vc, pos, seq_start, bt, max_blocks, n_seqs, n_heads, n_kv_heads, hd,   \
        bs_shift, n_sub, n_splits, chunk, sl2, v_mul, window, alibi
    const size_t smem = dec_ring_bytes(R, 2 * U);
    static bool set1, set2, set4, set8;
    switch (gb) {
    case 1: dec_launch(attn_decode_kernel<LANES, VEC, NCH, 1, U, R, KT>, set1, grid, smem, st, DEC_ARGS); break;
    case 2: dec_launch(attn_decode_kernel<LANES, VEC, NCH, 2, U, R, KT>, set2, grid, smem, st, DEC_ARGS); break;
    case 4: dec_launch(attn_decode_kernel<LANES, VEC, NCH, 4, U, R, KT>, set4, grid, smem, st, DEC_ARGS); break;
    default: dec_launch(attn_decode_kernel<LANES, VEC, NCH, 8, U, R, KT>, set8, grid, smem, st, DEC_ARGS); break;
    }
#undef DEC_ARGS
    CUDA_CHECK_LAUNCH();
}

// Stages of the bf16-cache decode kernel's shared-memory ring (head_dim 64
// and 128): 0 loads into registers (the earlier kernel), else 3 (default), 4
// or 6 stages. Measured on an H200 (test_gpu_attention's benchmark, 32/8
// heads, hd 128): 3 stages (48 KB, 4 CTAs per SM) read K/V at 89-92% of
// the copy bandwidth at batch 256, against 79-82% in registers, 86-89% at 4
// stages (3 CTAs per SM) and 78-81% at 6 (2 CTAs). The same ring in the FP8
// tensor-core kernel was slower than its loads into registers (2.0 against
// 2.6 TB/s at 256 x 2048), so that kernel keeps them. SLUICE_DECODE_RING
// (read once) or cuda_attention_decode_ring() sets it.
static int g_decode_ring = -1;
static int decode_ring() {
    if (g_decode_ring < 0) {
        const char *e = getenv("SLUICE_DECODE_RING");
        const int r = e ? atoi(e) : 3;
        g_decode_ring = r == 0 || r == 4 || r == 6 ? r : 3;
    }
    return g_decode_ring;
}
extern "C" void cuda_attention_decode_ring(int stages) {
    g_decode_ring = stages == 0 || stages == 3 || stages == 4 || stages == 6 ? stages : -1;
}

// The bf16-cache decode kernel for one (LANES, VEC) with 16-byte rows, at the
// ring depth of the call.
template <int LANES, typename KT>
static void launch_decode_v16(int gb, dim3 grid, bf16 *out, float *ws, const bf16 *qkv,
                              const KT *kc, const KT *vc, const int32_t *pos,
                              const int32_t *seq_start, const int32_t *bt, int max_blocks,
                              int n_seqs, int n_heads, int n_kv_heads, int hd, int bs_shift,
                              int n_sub, int n_splits, int chunk, float sl2, float v_mul,
                              int window, const float *alibi, cudaStream_t st) {
#define V16_ARGS                                                                              \
    gb, grid, out, ws, qkv, kc, vc, pos, seq_start, bt, max_blocks, n_seqs, n_heads,          \
        n_kv_heads, hd, bs_shift, n_sub, n_splits, chunk, sl2, v_mul, window, alibi, st
    const int ring = sizeof(KT) == 2 ? decode_ring() : 0;
    if constexpr (sizeof(KT) == 2) {
        if (ring == 3) return launch_decode_hd<LANES, 8, 1, 4, 3, KT>(V16_ARGS);
        if (ring == 4) return launch_decode_hd<LANES, 8, 1, 4, 4, KT>(V16_ARGS);
        if (ring == 6) return launch_decode_hd<LANES, 8, 1, 4, 6, KT>(V16_ARGS);
    }
    launch_decode_hd<LANES, 8, 1, 4, 0, KT>(V16_ARGS);
#undef V16_ARGS
}

// Which decode kernel reads an FP8 cache (head_dim 64 or 128): 1 the
// tensor-core kernel with one step of loads ahead (the default, 4 CTAs per
// SM), 2 with two steps (3 CTAs per SM, spills), 0 the CUDA-core kernel.
// Measured on an H200 (test_gpu_fp8's benchmark, 32/8 heads, hd 128), GB/s
// of K/V at 256 x 2048: 3,972 (1), 3,030 (2), 1,187 (0); at 512 x 192: 2,743
// (1), 2,156 (2). SLUICE_DECODE_TC sets it, read once;
// cuda_attention_fp8_decode_kernel overrides it (tests and benchmarks).
static int g_fp8_decode_kind = -1;

static int fp8_decode_kind() {
    if (g_fp8_decode_kind < 0) {
        const char *e = getenv("SLUICE_DECODE_TC");
        g_fp8_decode_kind = e && e[0] == '0' ? 0 : e && e[0] == '2' ? 2 : 1;
    }
    return g_fp8_decode_kind;
}

extern "C" void cuda_attention_fp8_decode_kernel(int kind) {
    g_fp8_decode_kind = kind >= 0 && kind <= 2 ? kind : -1;
}

// Which kernel the decode rows over a bf16 cache (head_dim 64/128, 16-byte
// rows) take: 0 the CUDA-core kernel with its shared-memory ring, 1 the
// tensor-core kernel of the FP8 cache on bf16 operands at 3 CTAs per SM, 2
// the same at 2 (208 registers, no spills). Unset (-1): 2 for steps whose
// context bound is DEC_TC_BF16_MIN_CTX or more, else 0. Measured on an H200
// (test_gpu_attention's benchmark, 32/8 heads, hd 128, GB/s of K/V against
// the ring's): 4,077 / 3,750 at 256 x 2048, 4,256 / 3,871 at 256 x 8192,
// 3,507 / 3,354 at 64 x 2048, but 2,781 / 3,104 at 512 x 192; kind 1 was
// slower than the ring everywhere (spills). SLUICE_DECODE_TC_BF16 sets it,
// read once; cuda_attention_bf16_decode_kernel overrides it.
#define DEC_TC_BF16_MIN_CTX 1024
static int g_bf16_decode_kind = -2; // -2: SLUICE_DECODE_TC_BF16 not read yet

static int bf16_decode_kind(int max_kv_len) {
    if (g_bf16_decode_kind == -2) {
        const char *e = getenv("SLUICE_DECODE_TC_BF16");
        if (e && *e && (e[0] < '0' || e[0] > '2' || e[1]))
            SL_FATAL("sluice", "SLUICE_DECODE_TC_BF16: expected 0 (CUDA cores), 1 or 2 (tensor "
                     "cores at 3 or 2 CTAs per SM); unset: 2 from contexts of 1024",
                     "cuda_paged_attention");
        g_bf16_decode_kind = e && *e ? e[0] - '0' : -1;
    }
    if (g_bf16_decode_kind >= 0) return g_bf16_decode_kind;
    return max_kv_len >= DEC_TC_BF16_MIN_CTX ? 2 : 0;
}

extern "C" void cuda_attention_bf16_decode_kernel(int kind) {
    g_bf16_decode_kind = kind >= -1 && kind <= 2 ? kind : -2;
}

extern "C" int cuda_attention_bf16_decode_uses_tc(int head_dim, int max_kv_len) {
    return (head_dim == 64 || head_dim == 128) && bf16_decode_kind(max_kv_len) != 0;
}

template <typename KT>
static void launch_decode(bf16 *out, float *ws, const bf16 *qkv, const KT *kc, const KT *vc,
                          const int32_t *pos, const int32_t *seq_start, const int32_t *bt,
                          int max_blocks, int n_seqs, int max_kv_len, int n_heads,
                          int n_kv_heads, int hd, int bs_shift, float sl2, float v_mul, bool v16,
                          int window, const float *alibi, cudaStream_t st) {
    const int group = n_heads / n_kv_heads;
    {
        // head_dim 64/128: the tensor-core kernel, by default over an FP8
        // cache (cuda_attention_fp8_decode_kernel, cuda_attention_bf16_decode_kernel)
        const int kind = sizeof(KT) == 1 ? fp8_decode_kind() : bf16_decode_kind(max_kv_len);
        if (kind != 0 && v16 && (hd == 128 || hd == 64)) {
            const int n_sub = ceil_div(group, DTN_GB);
            int n_splits, chunk;
            decode_splits(n_seqs, n_kv_heads, n_sub, max_kv_len, &n_splits, &chunk);
            if (n_splits > 1) SL_CHECK(ws != NULL);
            dim3 grid(n_splits, n_kv_heads * n_sub, n_seqs);
#define DTN_ARGS                                                                              \
    out, ws, qkv, kc, vc, pos, seq_start, bt, max_blocks, n_seqs, n_heads, n_kv_heads, bs_shift, \
        n_sub, n_splits, chunk, sl2, v_mul, window, alibi
            // FP8: kind 1 one step of loads ahead at 4 CTAs per SM, 2 two steps
            // at 3; bf16: one step ahead at 3 (1) or 2 (2) CTAs per SM
            constexpr bool F8 = sizeof(KT) == 1;
            constexpr int D2 = F8 ? 2 : 1, M1 = F8 ? 4 : 3, M2 = F8 ? 3 : 2;
            const bool k1 = kind == 1;
            if (hd == 128 && k1)
                attn_decode_tn_kernel<128, 1, KT, M1><<<grid, DEC_THREADS, 0, st>>>(DTN_ARGS);
            else if (hd == 128)
                attn_decode_tn_kernel<128, D2, KT, M2><<<grid, DEC_THREADS, 0, st>>>(DTN_ARGS);
            else if (k1)
                attn_decode_tn_kernel<64, 1, KT, M1><<<grid, DEC_THREADS, 0, st>>>(DTN_ARGS);
            else
                attn_decode_tn_kernel<64, D2, KT, M2><<<grid, DEC_THREADS, 0, st>>>(DTN_ARGS);
#undef DTN_ARGS
            CUDA_CHECK_LAUNCH();
            if (n_splits > 1) {
                attn_decode_reduce_kernel<<<dim3(n_heads, n_seqs), DEC_REDUCE_THREADS, 0, st>>>(
                    out, ws, pos, seq_start, n_seqs, n_heads, hd, n_splits, chunk);
                CUDA_CHECK_LAUNCH();
            }
            return;
        }
    }
    // query heads per CTA: the group rounded up to 1, 2, 4 or 8 (groups above 8 take several CTAs)
    const int gbp = group > 4 ? 8 : group > 2 ? 4 : group;
    const int n_sub = ceil_div(group, gbp);
    int n_splits, chunk;
    decode_splits(n_seqs, n_kv_heads, n_sub, max_kv_len, &n_splits, &chunk);
    if (n_splits > 1)
        SL_CHECK(ws != NULL); // sized by cuda_attention_workspace_bytes
    dim3 grid(n_splits, n_kv_heads * n_sub, n_seqs);
    if (hd == 128 && v16)
        launch_decode_v16<16>(gbp, grid, out, ws, qkv, kc, vc, pos, seq_start, bt, max_blocks,
                              n_seqs, n_heads, n_kv_heads, hd, bs_shift, n_sub, n_splits, chunk,
                              sl2, v_mul, window, alibi, st);
    else if (hd == 64 && v16)
        launch_decode_v16<8>(gbp, grid, out, ws, qkv, kc, vc, pos, seq_start, bt, max_blocks,
                             n_seqs, n_heads, n_kv_heads, hd, bs_shift, n_sub, n_splits, chunk,
                             sl2, v_mul, window, alibi, st);
    else
        launch_decode_hd<32, 2, ATT_MAX_HD / 64, 2, 0>(gbp, grid, out, ws, qkv, kc, vc, pos,
                                                    seq_start, bt, max_blocks, n_seqs, n_heads,
                                                    n_kv_heads, hd, bs_shift, n_sub, n_splits,
                                                    chunk, sl2, v_mul, window, alibi, st);
    if (n_splits > 1) {
        attn_decode_reduce_kernel<<<dim3(n_heads, n_seqs), DEC_REDUCE_THREADS, 0, st>>>(
            out, ws, pos, seq_start, n_seqs, n_heads, hd, n_splits, chunk);
        CUDA_CHECK_LAUNCH();
    }
}

template <int HDP, int MT, typename KT>
static void launch_prefill_mt(bf16 *out, const bf16 *qkv, const KT *kc, const KT *vc,
                               const int32_t *pos, const int32_t *seq_of,
                               const int32_t *seq_start, const int32_t *bt, int max_blocks,
                               int n_tokens, int n_seqs, int n_heads, int n_kv_heads, int hd,
                               int bs_shift, float sl2, float v_mul, bool v16, int window,
                               const float *alibi, cudaStream_t st) {
    constexpr int BM = PfRows<MT>::BM;
    const size_t smem = (size_t)(BM + 4 * PF_BN) * (HDP + 8) * sizeof(bf16);
    static bool attr_set = false; // once per instantiation (not a stream operation)
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(attn_prefill_kernel<HDP, MT, KT>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid(n_heads, ceil_div(n_tokens, BM));
    attn_prefill_kernel<HDP, MT, KT><<<grid, PF_THREADS, smem, st>>>(
        out, qkv, kc, vc, pos, seq_of, seq_start, bt, max_blocks, n_tokens, n_seqs, n_heads,
        n_kv_heads, hd, bs_shift, sl2, v16 ? 1 : 0, v_mul, window, alibi);
    CUDA_CHECK_LAUNCH();
}

template <int HDP, typename KT>
static void launch_prefill_hdp(bf16 *out, const bf16 *qkv, const KT *kc, const KT *vc,
                               const int32_t *pos, const int32_t *seq_of,
                               const int32_t *seq_start, const int32_t *bt, int max_blocks,
                               int n_tokens, int n_seqs, int n_heads, int n_kv_heads, int hd,
                               int bs_shift, float sl2, float v_mul, bool v16, int window,
                               const float *alibi, cudaStream_t st) {
    static int one_tile = -1; // SLUICE_PREFILL_MT=1, read once
    if (one_tile < 0) {
        const char *e = getenv("SLUICE_PREFILL_MT");
        one_tile = e && atoi(e) == 1;
    }
#define PF_ARGS                                                                              \
    out, qkv, kc, vc, pos, seq_of, seq_start, bt, max_blocks, n_tokens, n_seqs, n_heads,     \
        n_kv_heads, hd, bs_shift, sl2, v_mul, v16, window, alibi, st
    if constexpr (HDP <= 128) {
        if (!one_tile) {
            launch_prefill_mt<HDP, 2, KT>(PF_ARGS);
            return;
        }
    }
    launch_prefill_mt<HDP, 1, KT>(PF_ARGS);
#undef PF_ARGS
}

// The wgmma prefill kernels serve head_dim 128 with the 16-byte paths; the
// mma.sync kernel serves everything else. SLUICE_PREFILL_WG (read once) or
// cuda_attention_prefill_wg(): 1 the wgmma kernel, 2 the same with the
// warpgroups' MMAs in ping-pong, 3 the warp-specialised persistent kernel
// (ping-pong), 4 the same without ping-pong, 0 the mma.sync one at head_dim
// 128 too. Unset (-1): 1 over a bf16 cache and 3 over an FP8 one. Measured
// on an H200 (8 x 2048 tokens causal, TFLOP/s, modes 1 / 2 / 3 / 4): bf16
// 300.2 / 299.5 / 298.3 / 280.6, FP8 248.3 / 258.2 / 305.5 / 286.2.
static int g_prefill_wg = -2; // -2: SLUICE_PREFILL_WG not read yet
static int prefill_wg_mode(bool fp8) {
    if (g_prefill_wg == -2) {
        const char *e = getenv("SLUICE_PREFILL_WG");
        if (e && *e && (e[0] < '0' || e[0] > '4' || e[1]))
            SL_FATAL("sluice", "SLUICE_PREFILL_WG: expected a prefill kernel mode 0..4 (unset: "
                     "the default for the cache type)", "cuda_paged_attention");
        g_prefill_wg = e && *e ? e[0] - '0' : -1;
    }
    return g_prefill_wg >= 0 ? g_prefill_wg : fp8 ? 3 : 1;
}
// CTAs of the warp-specialised kernel's grid; 0: one per SM (the default)
static int g_ws_ctas = 0;
extern "C" void cuda_attention_prefill_ws_ctas(int n) { g_ws_ctas = n > 0 ? n : 0; }
extern "C" int cuda_attention_prefill_wg_mode(int fp8_cache) { return prefill_wg_mode(fp8_cache); }
extern "C" void cuda_attention_prefill_wg(int mode) {
    g_prefill_wg = mode >= 0 && mode <= 4 ? mode : -2;
}

template <typename KT>
static void launch_prefill_wg(bf16 *out, const bf16 *qkv, const KT *kc, const KT *vc,
                              const int32_t *pos, const int32_t *seq_of,
                              const int32_t *seq_start, const int32_t *bt, int max_blocks,
                              int n_tokens, int n_seqs, int n_heads, int n_kv_heads,
                              int bs_shift, float sl2, float v_mul, int window,
                              const float *alibi, cudaStream_t st) {
    constexpr bool FP8 = sizeof(KT) == 1;
    constexpr size_t TILE = (size_t)WG_BN * WG_HD;
    // 1 KB to align the swizzle atoms; Q; K/V buffers (3 bf16, or 2 bf16 and
    // two stages of codes)
    const size_t smem = 1024 + (FP8 ? (WG_BM * WG_HD + 4 * TILE) * sizeof(bf16) + 4 * TILE
                                    : (WG_BM * WG_HD + 6 * TILE) * sizeof(bf16));
    const int mode = prefill_wg_mode(FP8);
    const bool ws = mode >= 3; // warp-specialised
    static bool attr_set[2];   // once per instantiation (not a stream operation)
    if (!attr_set[ws]) {
        CUDA_CHECK(cudaFuncSetAttribute(ws ? attn_prefill_ws_kernel<KT> : attn_prefill_wg_kernel<KT>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set[ws] = true;
    }
    const dim3 grid(n_heads, ceil_div(n_tokens, WG_BM));
    static int n_sm = 0; // the persistent kernel's grid: one CTA per SM
    if (ws && !n_sm) {
        int dev;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    }
    if (ws)
        attn_prefill_ws_kernel<KT><<<(unsigned)std::min<long>(g_ws_ctas > 0 ? g_ws_ctas : n_sm,
                                                              (long)grid.x * grid.y),
                                     WS_THREADS, smem, st>>>(
            out, qkv, kc, vc, pos, seq_of, seq_start, bt, max_blocks, n_tokens, n_seqs, n_heads,
            n_kv_heads, bs_shift, sl2, v_mul, window, alibi, mode == 3);
    else
        attn_prefill_wg_kernel<KT><<<grid, WG_THREADS, smem, st>>>(
            out, qkv, kc, vc, pos, seq_of, seq_start, bt, max_blocks, n_tokens, n_seqs, n_heads,
            n_kv_heads, bs_shift, sl2, v_mul, window, alibi, mode == 2);
    CUDA_CHECK_LAUNCH();
}

template <typename KT>
static void launch_prefill(bf16 *out, const bf16 *qkv, const KT *kc, const KT *vc,
                           const int32_t *pos, const int32_t *seq_of, const int32_t *seq_start,
                           const int32_t *bt, int max_blocks, int n_tokens, int n_seqs,
                           int n_heads, int n_kv_heads, int hd, int bs_shift, float sl2,
                           float v_mul, bool v16, int window, const float *alibi,
                           cudaStream_t st) {
    if (hd == WG_HD && v16 && prefill_wg_mode(sizeof(KT) == 1)) {
        launch_prefill_wg<KT>(out, qkv, kc, vc, pos, seq_of, seq_start, bt, max_blocks, n_tokens,
                              n_seqs, n_heads, n_kv_heads, bs_shift, sl2, v_mul, window, alibi,
                              st);
        return;
    }
#define PF_ARGS                                                                              \
    out, qkv, kc, vc, pos, seq_of, seq_start, bt, max_blocks, n_tokens, n_seqs, n_heads,     \
        n_kv_heads, hd, bs_shift, sl2, v_mul, v16, window, alibi, st
    if (hd <= 32) launch_prefill_hdp<32, KT>(PF_ARGS);
    else if (hd <= 64) launch_prefill_hdp<64, KT>(PF_ARGS);
    else if (hd <= 96) launch_prefill_hdp<96, KT>(PF_ARGS);
    else if (hd <= 128) launch_prefill_hdp<128, KT>(PF_ARGS);
    else if (hd <= 192) launch_prefill_hdp<192, KT>(PF_ARGS);
    else launch_prefill_hdp<256, KT>(PF_ARGS);
#undef PF_ARGS
}

// ----------------------------------------------------------------------------
// entry points

// Bytes of split-K partials the decode kernel may write: (max, sum) and
// head_dim accumulators per (sequence, head, split), fp32. Splits happen only
// while n_seqs * n_kv_heads < DEC_TARGET_CTAS, so the count of (sequence,
// split) pairs is below 2 * DEC_TARGET_CTAS whatever max_tokens is, and at
// most max_tokens * ceil(max_seq_len / DEC_MIN_CHUNK).
extern "C" size_t cuda_attention_workspace_bytes(int max_tokens, int n_heads, int head_dim,
                                                 int max_seq_len) {
    if (max_tokens < 1 || n_heads < 1 || head_dim < 1) return 0;
    long max_splits = ceil_div(max_seq_len < 1 ? 1 : max_seq_len, DEC_MIN_CHUNK);
    if (max_splits < 2) return 0; // never splits
    long pairs = (long)max_tokens * max_splits;
    if (pairs > 2L * DEC_TARGET_CTAS) pairs = 2L * DEC_TARGET_CTAS;
    return (size_t)pairs * n_heads * (head_dim + 2) * sizeof(float);
}

extern "C" void cuda_paged_attention(sl_bf16 *out, const sl_bf16 *qkv, const sl_bf16 *k_cache,
                                     const sl_bf16 *v_cache, const int32_t *pos,
                                     const int32_t *seq_of, const int32_t *seq_start,
                                     const int32_t *kv_len, const int32_t *block_tables,
                                     int max_blocks, int n_tokens, int n_seqs, int max_kv_len,
                                     int n_heads, int n_kv_heads, int head_dim, int block_size,
                                     float scale, void *workspace, cudaStream_t stream) {
    cuda_paged_attention_window(out, qkv, k_cache, v_cache, pos, seq_of, seq_start, kv_len,
                                block_tables, max_blocks, n_tokens, n_seqs, max_kv_len, n_heads,
                                n_kv_heads, head_dim, block_size, scale, 0, NULL, workspace,
                                stream);
}

extern "C" void cuda_paged_attention_window(
    sl_bf16 *out, const sl_bf16 *qkv, const sl_bf16 *k_cache, const sl_bf16 *v_cache,
    const int32_t *pos, const int32_t *seq_of, const int32_t *seq_start, const int32_t *kv_len,
    const int32_t *block_tables, int max_blocks, int n_tokens, int n_seqs, int max_kv_len,
    int n_heads, int n_kv_heads, int head_dim, int block_size, float scale, int window,
    const float *alibi, void *workspace, cudaStream_t stream) {
    (void)kv_len; // each row's context is pos[i] + 1, as in cpu_paged_attention
    if (n_tokens <= 0 || n_seqs <= 0) return;
    SL_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    SL_CHECK(head_dim >= 2 && head_dim % 2 == 0 && head_dim <= ATT_MAX_HD);
    SL_CHECK(block_size > 0 && (block_size & (block_size - 1)) == 0);
    SL_CHECK(n_seqs <= 65535 && n_tokens <= 65535 * PF_BM); // grid limits
    int bs_shift = 0;
    while ((1 << bs_shift) < block_size) bs_shift++;
    const float sl2 = scale * ATT_LOG2E;
    // 16-byte paths need head_dim % 8 == 0 and 16-byte aligned bases
    const bool v16 = head_dim % 8 == 0 &&
                     (((uintptr_t)qkv | (uintptr_t)k_cache | (uintptr_t)v_cache) & 15) == 0;
    bf16 *o = reinterpret_cast<bf16 *>(out);
    const bf16 *q = reinterpret_cast<const bf16 *>(qkv);
    const bf16 *kc = reinterpret_cast<const bf16 *>(k_cache);
    const bf16 *vc = reinterpret_cast<const bf16 *>(v_cache);
    // Some sequence has >= 2 rows unless every row is its own sequence; some
    // has exactly one unless a single sequence holds all the rows.
    if (n_tokens > n_seqs)
        launch_prefill<bf16>(o, q, kc, vc, pos, seq_of, seq_start, block_tables, max_blocks,
                             n_tokens, n_seqs, n_heads, n_kv_heads, head_dim, bs_shift, sl2,
                             1.0f, v16, window, alibi, stream);
    if (!(n_seqs == 1 && n_tokens > 1))
        launch_decode<bf16>(o, reinterpret_cast<float *>(workspace), q, kc, vc, pos, seq_start,
                            block_tables, max_blocks, n_seqs, max_kv_len, n_heads, n_kv_heads,
                            head_dim, bs_shift, sl2, 1.0f, v16, window, alibi, stream);
}

// ----------------------------------------------------------------------------
// fp32 activations: a plain kernel that follows cpu_paged_attention's steps
// (scores, max, sum of expf, then out += (e / sum) * v in position order), so
// --dtype f32 on the GPU reproduces the CPU backend. One warp per (row,
// head); lanes split the dot products (warp-shuffle sums). A correctness
// mode, not tuned. TK: float cache, or e4m3 codes (value = code * scale).

#define REF_WARPS 4

template <typename TK>
static __device__ __forceinline__ float ref_dot(const float *q, const TK *k, int hd, float ks) {
    float a = 0.0f;
    for (int d = threadIdx.x & 31; d < hd; d += 32) a = fmaf(q[d], KvT<TK>::get(k[d]) * ks, a);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    return a;
}

template <typename TK>
static __global__ void __launch_bounds__(32 * REF_WARPS)
    attn_ref_kernel(float *__restrict__ out, const float *__restrict__ qkv,
                    const TK *__restrict__ k_cache, const TK *__restrict__ v_cache,
                    const int32_t *__restrict__ pos, const int32_t *__restrict__ seq_of,
                    const int32_t *__restrict__ block_tables, int max_blocks, int n, int n_heads,
                    int n_kv_heads, int hd, int block_size, float scale, float ks, float vs,
                    int window, const float *__restrict__ alibi) {
    const int item = blockIdx.x * REF_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (item >= n * n_heads) return; // whole warps exit together
    const int i = item / n_heads, h = item % n_heads;
    const int stride = (n_heads + 2 * n_kv_heads) * hd;
    const float *q = qkv + (size_t)i * stride + (size_t)h * hd;
    const int32_t *bt = block_tables + (size_t)seq_of[i] * max_blocks;
    const int kvh = h / (n_heads / n_kv_heads), ctx = pos[i] + 1;
    auto row = [&](const TK *base, int t) {
        return base + (((size_t)bt[t / block_size] * n_kv_heads + kvh) * block_size +
                       t % block_size) * hd;
    };
    // sliding window: positions before t0 are masked; ALiBi: + slope * (t - pos)
    const int t0 = window > 0 && ctx > window ? ctx - window : 0;
    const float slope = alibi ? alibi[h] : 0.0f;
    auto score = [&](int t) {
        return ref_dot(q, row(k_cache, t), hd, ks) * scale + slope * (float)(t - (ctx - 1));
    };
    float mx = -INFINITY;
    for (int t = t0; t < ctx; t++) mx = fmaxf(mx, score(t));
    float sum = 0.0f;
    for (int t = t0; t < ctx; t++) sum += expf(score(t) - mx);
    float acc[ATT_MAX_HD / 32];
#pragma unroll
    for (int e = 0; e < ATT_MAX_HD / 32; e++) acc[e] = 0.0f;
    for (int t = t0; t < ctx; t++) {
        const float p = expf(score(t) - mx) / sum;
        const TK *v = row(v_cache, t);
#pragma unroll
        for (int e = 0; e < ATT_MAX_HD / 32; e++) {
            const int d = lane + 32 * e;
            if (d < hd) acc[e] += p * (KvT<TK>::get(v[d]) * vs);
        }
    }
    float *o = out + (size_t)i * n_heads * hd + (size_t)h * hd;
#pragma unroll
    for (int e = 0; e < ATT_MAX_HD / 32; e++) {
        const int d = lane + 32 * e;
        if (d < hd) o[d] = acc[e];
    }
}

extern "C" void cuda_paged_attention_ex(void *out, const void *qkv, const void *k_cache,
                                        const void *v_cache, const int32_t *pos,
                                        const int32_t *seq_of, const int32_t *seq_start,
                                        const int32_t *kv_len, const int32_t *block_tables,
                                        int max_blocks, int n_tokens, int n_seqs,
                                        int max_kv_len, int n_heads, int n_kv_heads,
                                        int head_dim, int block_size, float scale, int act_f32,
                                        int kv_fp8, float k_scale, float v_scale,
                                        int window, const float *alibi, void *workspace,
                                        cudaStream_t stream) {
    if (n_tokens <= 0 || n_seqs <= 0) return;
    if (!act_f32 && !kv_fp8) {
        cuda_paged_attention_window((sl_bf16 *)out, (const sl_bf16 *)qkv,
                                    (const sl_bf16 *)k_cache, (const sl_bf16 *)v_cache, pos,
                                    seq_of, seq_start, kv_len, block_tables, max_blocks,
                                    n_tokens, n_seqs, max_kv_len, n_heads, n_kv_heads, head_dim,
                                    block_size, scale, window, alibi, workspace, stream);
        return;
    }
    SL_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    SL_CHECK(head_dim >= 2 && head_dim % 2 == 0 && head_dim <= ATT_MAX_HD);
    SL_CHECK(block_size > 0 && (block_size & (block_size - 1)) == 0);
    if (act_f32) {
        const long items = (long)n_tokens * n_heads;
        const unsigned grid = (unsigned)((items + REF_WARPS - 1) / REF_WARPS);
        // an fp32 cache's values are used as stored (scale 1), as on the CPU
        const float ks = kv_fp8 ? k_scale : 1.0f, vs = kv_fp8 ? v_scale : 1.0f;
        if (kv_fp8)
            attn_ref_kernel<uint8_t><<<grid, 32 * REF_WARPS, 0, stream>>>(
                (float *)out, (const float *)qkv, (const uint8_t *)k_cache,
                (const uint8_t *)v_cache, pos, seq_of, block_tables, max_blocks, n_tokens,
                n_heads, n_kv_heads, head_dim, block_size, scale, ks, vs, window, alibi);
        else
            attn_ref_kernel<float><<<grid, 32 * REF_WARPS, 0, stream>>>(
                (float *)out, (const float *)qkv, (const float *)k_cache,
                (const float *)v_cache, pos, seq_of, block_tables, max_blocks, n_tokens,
                n_heads, n_kv_heads, head_dim, block_size, scale, ks, vs, window, alibi);
        CUDA_CHECK_LAUNCH();
        return;
    }
    // bf16 activations, FP8 cache: the tensor-core kernels decoding as they load
    SL_CHECK(n_seqs <= 65535 && n_tokens <= 65535 * PF_BM);
    int bs_shift = 0;
    while ((1 << bs_shift) < block_size) bs_shift++;
    const float sl2 = scale * ATT_LOG2E * k_scale;
    // 8-byte code loads need head_dim % 8 == 0 and aligned bases
    const bool v16 = head_dim % 8 == 0 &&
                     (((uintptr_t)qkv | (uintptr_t)k_cache | (uintptr_t)v_cache) & 15) == 0;
    bf16 *o = reinterpret_cast<bf16 *>(out);
    const bf16 *q = reinterpret_cast<const bf16 *>(qkv);
    const uint8_t *kc = reinterpret_cast<const uint8_t *>(k_cache);
    const uint8_t *vc = reinterpret_cast<const uint8_t *>(v_cache);
    if (n_tokens > n_seqs)
        launch_prefill<uint8_t>(o, q, kc, vc, pos, seq_of, seq_start, block_tables, max_blocks,
                                n_tokens, n_seqs, n_heads, n_kv_heads, head_dim, bs_shift, sl2,
                                v_scale, v16, window, alibi, stream);
    if (!(n_seqs == 1 && n_tokens > 1))
        launch_decode<uint8_t>(o, reinterpret_cast<float *>(workspace), q, kc, vc, pos,
                               seq_start, block_tables, max_blocks, n_seqs, max_kv_len, n_heads,
                               n_kv_heads, head_dim, bs_shift, sl2, v_scale, v16, window, alibi,
                               stream);
}
