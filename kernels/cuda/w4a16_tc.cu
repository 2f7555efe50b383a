// w4a16_tc.cu: the second-generation W4A16 kernels (see w4a16.h): a decode
// GEMV and a GEMM, both on the tensor cores with the weights as the MMA's A
// operand ("swap AB": y^T = W x^T, the output rows are M, the batch rows N).
//
// Why: the first kernels (w4a16.cu, w4a16_mma.cu) are latency-bound. The GEMV
// spends 3 (n = 1) to 10 (n = 8) CUDA-core instructions per weight nibble and
// stages x once per 1024-input tile behind a __syncthreads; the GEMM puts
// only out/128 blocks on 132 SMs. Here:
//
//   - A nibble becomes a bf16 (q - z) with 11 instructions per 8 nibbles, in
//     registers, straight from the 16-byte load: a LOP3 per pair puts nibbles
//     p and p + 4 of a word into the mantissas of 128.0 (bf16x2 128 + q, exact)
//     and one bf16x2 FMA subtracts 128 + z (exact: small integers). The
//     products (q - z) x are exact in the MMA's fp32 accumulator; the group
//     scale is applied in fp32 to each chunk's partial sum (acc += s * c). So,
//     unlike w4a16_mma.cu, the weights are NOT rounded to bf16: the result is
//     the CPU twin's up to the order of fp32 sums.
//   - The k order inside a chunk is permuted so that a lane's own packed word
//     feeds its A fragment directly (no shared memory, no shuffles): lane
//     (g = lane/4, t = lane%4) owns the 8*WPT consecutive inputs at t*8*WPT
//     of each chunk of KC = 32*WPT inputs, for rows g and g + 8 of its 16-row
//     tile; word i of them covers k-steps 2i and 2i+1 with the nibble pairs
//     (0,4), (1,5) and (2,6), (3,7). The matching B fragment is the same 8 x
//     values re-paired the same way (PRMT), so x and W agree on the order.
//     A chunk lies inside one group (KC divides the group), hence the scale
//     per chunk. WPT = 4 (16-byte loads) when the group is a multiple of
//     128, 2 for multiples of 64, else 1.
//
// GEMV (n <= 8, one n8 tile; w4a16_gemv_tc_kernel): 8 warps per block, each
// a 16-row tile over a slice of the inputs: KW warps of a block split the
// inputs of the same rows (KW = 1..8, picked so that ~4096 warps are live) and
// their partial sums are added in shared memory in a fixed order
// (deterministic, no workspace). x comes from global memory (L1/L2-resident)
// beside the weights; each lane keeps D chunks of loads in flight (D = 3 at
// WPT 4: 96 bytes of weights per lane, ~48 KB per SM at 2 blocks/SM). No
// __syncthreads in the main loop.
//
// GEMM (any n; w4a16_gemm_tc_kernel): a block is 128 rows (8 warps x 16) by
// NB = 8*NT batch rows (NT = 2, 4 or 8: 16, 32, 64) over a slice of the inputs
// (split-K over gridDim.z). x is staged per chunk into shared memory already
// permuted (double buffer, register-staged one chunk ahead), the weights go
// global -> registers D chunks ahead; each A fragment feeds NT MMAs. With a
// split, the blocks write fp32 partials (S, n, out) into a caller's workspace
// and a second kernel adds them in order (deterministic) with the bias. The
// split S is chosen so that about one wave of blocks runs (2 per SM, 1 at
// NT = 8 whose 200 registers allow one), each split keeping >= NB/8 chunks
// so that the fp32 partials stay well below the weight bytes; the
// workspace bound is cuda_w4a16_tc_workspace_floats. The partials stay
// small (<= 8.6 MB) and L2-resident between the two kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16.h"
#include "w4a16_dev.cuh"

#define TC_THREADS 256
#define TC_WARPS 8
#define TC_GEMV_TARGET_WARPS 4096 // ~2 waves of 16 warps on 132 SMs

// ----------------------------------------------------------------------------
// device helpers (mma_bf16_16816, neg_zero_pair, dq_pairs: w4a16_dev.cuh)

// x0..x7 (bf16, in 4 words of pairs) -> (x0,x4), (x1,x5), (x2,x6), (x3,x7):
// the B pairs matching dq_pairs.
static __device__ __forceinline__ uint4 pair_x(uint4 u) {
    return make_uint4(__byte_perm(u.x, u.z, 0x5410), __byte_perm(u.x, u.z, 0x7632),
                      __byte_perm(u.y, u.w, 0x5410), __byte_perm(u.y, u.w, 0x7632));
}

// WPT consecutive packed words (streaming or cached loads).
template <int WPT, bool STREAM>
static __device__ __forceinline__ void load_words(uint32_t w[WPT], const uint32_t *p) {
    if (WPT == 4) {
        const uint4 u = STREAM ? __ldcs(reinterpret_cast<const uint4 *>(p))
                               : __ldg(reinterpret_cast<const uint4 *>(p));
        w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    } else if (WPT == 2) {
        const uint2 u = STREAM ? __ldcs(reinterpret_cast<const uint2 *>(p))
                               : __ldg(reinterpret_cast<const uint2 *>(p));
        w[0] = u.x, w[1] = u.y;
    } else {
        w[0] = STREAM ? __ldcs(p) : __ldg(p);
    }
}

// One chunk's loads of a lane: rows g and g + 8 of its tile.
template <int WPT> struct WStage {
    uint32_t w[2][WPT];
    float s[2];
    uint32_t nz[2];
};

template <int WPT, bool STREAM>
static __device__ __forceinline__ void load_wstage(WStage<WPT> &st, const uint32_t *__restrict__ qw,
                                                   const __half *__restrict__ sc,
                                                   const uint8_t *__restrict__ zz, const int rows[2],
                                                   int words, int ng, int c, int t, int group) {
    const int KC = 32 * WPT;
    const int grp = c * KC / group;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        load_words<WPT, STREAM>(st.w[h], qw + (size_t)rows[h] * words + c * (4 * WPT) + t * WPT);
        const size_t gi = (size_t)rows[h] * ng + grp;
        st.s[h] = __half2float(__ldg(sc + gi));
        st.nz[h] = neg_zero_pair(zz ? (uint32_t)__ldg(zz + gi) : 8u);
    }
}

// ----------------------------------------------------------------------------
// decode GEMV: n <= 8

template <int WPT> struct GemvDepth { static const int D = WPT == 4 ? 3 : WPT == 2 ? 4 : 8; };

// y (n, out) = x (n, in) @ dequant(W)^T (+ bias). grid.x = ceil(out / (16 * 8 / kw)).
template <int WPT>
static __global__ void __launch_bounds__(TC_THREADS, 2)
w4a16_gemv_tc_kernel(__nv_bfloat16 *__restrict__ y, const __nv_bfloat16 *__restrict__ x,
                     const uint32_t *__restrict__ qw, const __half *__restrict__ sc,
                     const uint8_t *__restrict__ zz, const float *__restrict__ bias, int n, int in,
                     int out, int group, int kw) {
    const int D = GemvDepth<WPT>::D, KC = 32 * WPT;
    __shared__ float red[TC_WARPS][4][32]; // the warps' partial sums
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int mt = warp / kw, ks = warp % kw;
    const int row0 = (blockIdx.x * (TC_WARPS / kw) + mt) * 16;
    const int rows[2] = {min(row0 + g, out - 1), min(row0 + g + 8, out - 1)}; // clamped: loads only
    const int words = in / 8, ng = in / group, nchunks = in / KC;
    const int c0 = (int)((long)nchunks * ks / kw), c1 = (int)((long)nchunks * (ks + 1) / kw);
    const bool has_x = g < n; // lane g feeds batch row g of the n8 tile
    const __nv_bfloat16 *xr = x + (size_t)(has_x ? g : 0) * in + t * 8 * WPT;

    WStage<WPT> st[D];
    uint4 xs[D][WPT];
    auto load = [&](int d, int c) {
        load_wstage<WPT, true>(st[d], qw, sc, zz, rows, words, ng, c, t, group);
#pragma unroll
        for (int i = 0; i < WPT; i++)
            xs[d][i] = has_x ? __ldg(reinterpret_cast<const uint4 *>(xr + c * KC + 8 * i))
                             : make_uint4(0, 0, 0, 0);
    };
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int d = 0; d < D; d++)
        if (c0 + d < c1) load(d, c0 + d);
    for (int c = c0; c < c1; c += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (c + d < c1) {
                float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int i = 0; i < WPT; i++) {
                    uint32_t a0[4], a1[4];
                    dq_pairs(st[d].w[0][i], st[d].nz[0], a0);
                    dq_pairs(st[d].w[1][i], st[d].nz[1], a1);
                    const uint4 b = pair_x(xs[d][i]);
                    const uint32_t A0[4] = {a0[0], a1[0], a0[1], a1[1]};
                    const uint32_t A1[4] = {a0[2], a1[2], a0[3], a1[3]};
                    mma_bf16_16816(part, A0, b.x, b.y);
                    mma_bf16_16816(part, A1, b.z, b.w);
                }
                acc[0] = fmaf(st[d].s[0], part[0], acc[0]);
                acc[1] = fmaf(st[d].s[0], part[1], acc[1]);
                acc[2] = fmaf(st[d].s[1], part[2], acc[2]);
                acc[3] = fmaf(st[d].s[1], part[3], acc[3]);
                if (c + d + D < c1) load(d, c + d + D);
            }
        }
    }
#pragma unroll
    for (int e = 0; e < 4; e++) red[warp][e][lane] = acc[e];
    __syncthreads();
    if (ks != 0) return;
    // acc[e]: row g + 8 (e >> 1), batch row 2t + (e & 1)
#pragma unroll
    for (int e = 0; e < 4; e++) {
        float v = red[warp][e][lane];
        for (int j = 1; j < kw; j++) v += red[warp + j][e][lane];
        const int row = row0 + g + 8 * (e >> 1), b = 2 * t + (e & 1);
        if (row < out && b < n)
            y[(size_t)b * out + row] = __float2bfloat16_rn(v + (bias ? bias[row] : 0.0f));
    }
}

template <int WPT>
static void launch_gemv_tc(__nv_bfloat16 *y, const __nv_bfloat16 *x, const uint32_t *qw,
                           const __half *sc, const uint8_t *zz, const float *bias, int n, int in,
                           int out, int group, cudaStream_t s) {
    const int mtiles = (out + 15) / 16, nchunks = in / (32 * WPT);
    // the fewest K-splitting warps per tile that give ~TC_GEMV_TARGET_WARPS
    // warps, each with at least 2 chunks
    int kw = 1;
    while (kw < TC_WARPS && (long)mtiles * kw < TC_GEMV_TARGET_WARPS && nchunks >= 4 * kw) kw *= 2;
    const int tiles_per_block = TC_WARPS / kw;
    const unsigned blocks = (unsigned)((mtiles + tiles_per_block - 1) / tiles_per_block);
    w4a16_gemv_tc_kernel<WPT><<<blocks, TC_THREADS, 0, s>>>(y, x, qw, sc, zz, bias, n, in, out,
                                                            group, kw);
    CUDA_CHECK_LAUNCH();
}

static int tc_wpt(int group) { return group % 128 == 0 ? 4 : group % 64 == 0 ? 2 : 1; }

extern "C" void cuda_w4a16_gemv_tc(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                                   const uint16_t *scales, const uint8_t *zeros, const float *bias,
                                   int n, int in_dim, int out_dim, int group, cudaStream_t stream) {
    if (n <= 0 || out_dim <= 0) return;
    if (n > W4A16_GEMV_MAX_N || group <= 0 || group % 32 || in_dim % group || ((uintptr_t)x & 15))
        SL_FATAL("sluice", "W4A16 GEMV (tc): n must be 1..8, group a multiple of 32 dividing "
                 "in_dim, x 16-byte aligned", "cuda_w4a16_gemv_tc");
    __nv_bfloat16 *yy = reinterpret_cast<__nv_bfloat16 *>(y);
    const __nv_bfloat16 *xx = reinterpret_cast<const __nv_bfloat16 *>(x);
    const __half *sc = reinterpret_cast<const __half *>(scales);
    switch (tc_wpt(group)) {
    case 4: launch_gemv_tc<4>(yy, xx, qweight, sc, zeros, bias, n, in_dim, out_dim, group, stream); break;
    case 2: launch_gemv_tc<2>(yy, xx, qweight, sc, zeros, bias, n, in_dim, out_dim, group, stream); break;
    default: launch_gemv_tc<1>(yy, xx, qweight, sc, zeros, bias, n, in_dim, out_dim, group, stream); break;
    }
}

// ----------------------------------------------------------------------------
// GEMM: any n, batch tiles of 8 * NT rows, split-K over gridDim.z

// Shared x tile: per batch row, the chunk's 4*WPT 16-byte units (8 inputs
// each, already re-paired by pair_x) plus padding. Lane (g, t) reads unit
// WPT*t + i of row g: the strides (18, 9, 4 units) and, at WPT 4, the swap of
// units 8..15's lowest bit make each quarter-warp's 16-byte reads hit 8
// distinct bank groups.
template <int WPT> struct XTile {
    static const int RU = WPT == 4 ? 18 : WPT == 2 ? 9 : 4; // row stride in units
    static __device__ __forceinline__ int swz(int u) { return WPT == 4 ? u ^ ((u >> 3) & 1) : u; }
};

template <int NT> struct GemmCfg {
    static const int MIN_BLOCKS = NT == 8 ? 1 : 2; // blocks per SM: 255 / 128 registers
};
template <int WPT> struct GemmDepth { static const int D = WPT == 4 ? 2 : WPT == 2 ? 3 : 4; };

// y (n, out) = x (n, in) @ dequant(W)^T (+ bias), or with gridDim.z > 1 the
// fp32 partial of inputs [z * cps, (z + 1) * cps) chunks to ws (gridDim.z, n, out).
template <int WPT, int NT>
static __global__ void __launch_bounds__(TC_THREADS, GemmCfg<NT>::MIN_BLOCKS)
w4a16_gemm_tc_kernel(__nv_bfloat16 *__restrict__ y, float *__restrict__ ws,
                     const __nv_bfloat16 *__restrict__ x, const uint32_t *__restrict__ qw,
                     const __half *__restrict__ sc, const uint8_t *__restrict__ zz,
                     const float *__restrict__ bias, int n, int in, int out, int group, int cps) {
    const int D = GemmDepth<WPT>::D, KC = 32 * WPT, NB = 8 * NT, UPR = 4 * WPT; // units per row
    const int RU = XTile<WPT>::RU;
    const int XU = (NB * UPR + TC_THREADS - 1) / TC_THREADS; // x units staged per thread
    __shared__ __align__(16) uint4 xt[2][NB * RU];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * 128 + warp * 16, b0 = blockIdx.y * NB;
    const int rows[2] = {min(row0 + g, out - 1), min(row0 + g + 8, out - 1)};
    const int words = in / 8, ng = in / group, nchunks = in / KC;
    const int c0 = blockIdx.z * cps, c1 = min(c0 + cps, nchunks);

    // x staging: thread tid carries units tid, tid + 256, ... of the NB x UPR tile
    uint4 xr[XU];
    auto load_x = [&](int c) {
#pragma unroll
        for (int j = 0; j < XU; j++) {
            const int idx = tid + j * TC_THREADS, r = idx / UPR, u = idx % UPR;
            const bool ok = idx < NB * UPR && b0 + r < n;
            xr[j] = ok ? __ldg(reinterpret_cast<const uint4 *>(x + (size_t)(b0 + r) * in + c * KC +
                                                               8 * u))
                       : make_uint4(0, 0, 0, 0);
        }
    };
    auto store_x = [&](int buf) {
#pragma unroll
        for (int j = 0; j < XU; j++) {
            const int idx = tid + j * TC_THREADS, r = idx / UPR, u = idx % UPR;
            if (idx < NB * UPR) xt[buf][r * RU + XTile<WPT>::swz(u)] = pair_x(xr[j]);
        }
    };

    WStage<WPT> st[D];
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    if (c0 < c1) {
        load_x(c0);
        store_x(0);
        if (c0 + 1 < c1) load_x(c0 + 1);
    }
#pragma unroll
    for (int d = 0; d < D; d++)
        if (c0 + d < c1) load_wstage<WPT, false>(st[d], qw, sc, zz, rows, words, ng, c0 + d, t, group);
    __syncthreads();
    for (int c = c0; c < c1; c += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (c + d < c1) {
                const int buf = (c + d - c0) & 1;
                float part[NT][4];
#pragma unroll
                for (int j = 0; j < NT; j++) part[j][0] = part[j][1] = part[j][2] = part[j][3] = 0.0f;
#pragma unroll
                for (int i = 0; i < WPT; i++) {
                    uint32_t a0[4], a1[4];
                    dq_pairs(st[d].w[0][i], st[d].nz[0], a0);
                    dq_pairs(st[d].w[1][i], st[d].nz[1], a1);
                    const uint32_t A0[4] = {a0[0], a1[0], a0[1], a1[1]};
                    const uint32_t A1[4] = {a0[2], a1[2], a0[3], a1[3]};
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        const uint4 b = xt[buf][(8 * j + g) * RU + XTile<WPT>::swz(WPT * t + i)];
                        mma_bf16_16816(part[j], A0, b.x, b.y);
                        mma_bf16_16816(part[j], A1, b.z, b.w);
                    }
                }
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    acc[j][0] = fmaf(st[d].s[0], part[j][0], acc[j][0]);
                    acc[j][1] = fmaf(st[d].s[0], part[j][1], acc[j][1]);
                    acc[j][2] = fmaf(st[d].s[1], part[j][2], acc[j][2]);
                    acc[j][3] = fmaf(st[d].s[1], part[j][3], acc[j][3]);
                }
                if (c + d + D < c1)
                    load_wstage<WPT, false>(st[d], qw, sc, zz, rows, words, ng, c + d + D, t, group);
                // the next chunk's x goes to the other buffer, whose readers
                // (chunk c + d - 1) all passed the previous barrier
                if (c + d + 1 < c1) {
                    store_x(buf ^ 1);
                    if (c + d + 2 < c1) load_x(c + d + 2);
                }
                __syncthreads();
            }
        }
    }
    // acc[j][e]: row g + 8 (e >> 1), batch row b0 + 8j + 2t + (e & 1)
    const bool split = gridDim.z > 1;
    float *wz = ws + (size_t)blockIdx.z * n * out;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = row0 + g + 8 * (e >> 1), b = b0 + 8 * j + 2 * t + (e & 1);
            if (row >= out || b >= n) continue;
            if (split) wz[(size_t)b * out + row] = acc[j][e];
            else y[(size_t)b * out + row] = __float2bfloat16_rn(acc[j][e] + (bias ? bias[row] : 0.0f));
        }
}


// The split: w4a16_splitk_count over chunks of 32 * WPT inputs.
static int gemm_tc_split(int n, int in, int out, int group, size_t ws_floats) {
    return w4a16_splitk_count(n, in / (32 * tc_wpt(group)), out, ws_floats);
}

extern "C" size_t cuda_w4a16_tc_workspace_floats(int max_n, int max_out) {
    return w4a16_splitk_workspace_floats(max_n, max_out);
}

template <int WPT, int NT>
static void launch_gemm_tc(__nv_bfloat16 *y, float *ws, const __nv_bfloat16 *x, const uint32_t *qw,
                           const __half *sc, const uint8_t *zz, const float *bias, int n, int in,
                           int out, int group, int S, cudaStream_t s) {
    const int nchunks = in / (32 * WPT), cps = (nchunks + S - 1) / S;
    dim3 grid((unsigned)((out + 127) / 128), (unsigned)((n + 8 * NT - 1) / (8 * NT)), (unsigned)S);
    w4a16_gemm_tc_kernel<WPT, NT><<<grid, TC_THREADS, 0, s>>>(y, ws, x, qw, sc, zz, bias, n, in,
                                                             out, group, cps);
    CUDA_CHECK_LAUNCH();
    if (S > 1) w4a16_splitk_reduce(y, ws, bias, n, out, S, s);
}

template <int WPT>
static void gemm_tc_nt_switch(__nv_bfloat16 *y, float *ws, const __nv_bfloat16 *x,
                              const uint32_t *qw, const __half *sc, const uint8_t *zz,
                              const float *bias, int n, int in, int out, int group, int S,
                              cudaStream_t s) {
    switch (w4a16_gemm_nt(n)) {
    case 2: launch_gemm_tc<WPT, 2>(y, ws, x, qw, sc, zz, bias, n, in, out, group, S, s); break;
    case 4: launch_gemm_tc<WPT, 4>(y, ws, x, qw, sc, zz, bias, n, in, out, group, S, s); break;
    default: launch_gemm_tc<WPT, 8>(y, ws, x, qw, sc, zz, bias, n, in, out, group, S, s); break;
    }
}

extern "C" void cuda_w4a16_gemm_tc(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                                   const uint16_t *scales, const uint8_t *zeros, const float *bias,
                                   int n, int in_dim, int out_dim, int group, float *ws,
                                   size_t ws_floats, cudaStream_t stream) {
    if (n <= 0 || out_dim <= 0) return;
    if (group <= 0 || group % 32 || in_dim % group || ((uintptr_t)x & 15))
        SL_FATAL("sluice", "W4A16 GEMM (tc): group must be a multiple of 32 dividing in_dim, x "
                 "16-byte aligned", "cuda_w4a16_gemm_tc");
    const int S = ws ? gemm_tc_split(n, in_dim, out_dim, group, ws_floats) : 1;
    __nv_bfloat16 *yy = reinterpret_cast<__nv_bfloat16 *>(y);
    const __nv_bfloat16 *xx = reinterpret_cast<const __nv_bfloat16 *>(x);
    const __half *sc = reinterpret_cast<const __half *>(scales);
    switch (tc_wpt(group)) {
    case 4: gemm_tc_nt_switch<4>(yy, ws, xx, qweight, sc, zeros, bias, n, in_dim, out_dim, group, S, stream); break;
    case 2: gemm_tc_nt_switch<2>(yy, ws, xx, qweight, sc, zeros, bias, n, in_dim, out_dim, group, S, stream); break;
    default: gemm_tc_nt_switch<1>(yy, ws, xx, qweight, sc, zeros, bias, n, in_dim, out_dim, group, S, stream); break;
    }
}
