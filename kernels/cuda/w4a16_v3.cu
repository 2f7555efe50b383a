// w4a16_v3.cu: the third-generation W4A16 kernels (see w4a16.h), on a tiled
// copy of the weights: the decode GEMV, the GEMM, the dequantisation, and the
// repack that makes the copy once at upload.
//
// Why: v2's GEMV (w4a16_tc.cu) reads sluice's row-major layout. A warp's
// 16-byte loads there touch 8 rows x 64 bytes, each row 2 KB+ from the next,
// and its warps live for a few K-split chunks (about 3 load round trips) before
// the block exits: it streamed 0.75-1.4 TB/s on an H200 against ~4.2 TB/s of
// copy bandwidth. Here:
//
//   - The v3 layout (w4a16.h) puts a 16-row tile's 128-input chunk in 1 KB:
//     two 512-byte halves (rows g and g + 8 of the MMA fragment), lane L's 16
//     bytes at 16 L. A warp's load is 512 contiguous bytes; a tile's whole K
//     range is nck contiguous KB, and tiles follow each other, so any range
//     of (tile, chunk) in tile-major order is one contiguous run of memory.
//   - Inside a chunk, lane t's word i holds inputs 32i + 8t + (0..7): an MMA
//     step i (two m16n8k16) covers 32 consecutive inputs, so the group of
//     every step is well defined for any group multiple of 32 (v2 needed the
//     whole chunk in one group and fell back to 4- or 8-byte loads for groups
//     of 64 or 96). The scale is applied per block of GS steps: GS = 4 (once
//     per chunk) when the group is a multiple of 128, 2 for multiples of 64,
//     else 1. Nibbles are stored in the order 0 2 4 6 1 3 5 7, so dq_pairs'
//     pairs (nibbles p, p + 4) are consecutive inputs and x's bf16 pairs feed
//     the B fragment as they are (no PRMT, unlike v2).
//   - Scales and zero points of a tile and group are 16 values in fragment
//     order (g, h): one 4-byte (scales) and one 2-byte (zeros) load per lane.
//
// GEMV (n <= 8, one n8 tile; w4a16_gemv_v3_kernel): blocks of 16 warps, at
// most one per SM (a persistent grid, launched once). Block b owns the whole
// tiles [mt b / G, mt (b + 1) / G); the block's (tile, chunk) range, one
// contiguous run of memory, is cut into 16 equal pieces, one per warp. So
// every warp of the grid streams about the same number of bytes (G is chosen
// so that the tiles divide evenly: ceil(mt / ceil(mt / SMs)) blocks), from
// one contiguous range, for the whole kernel. Each lane keeps D = V3_DEPTH
// chunks of weight loads in flight in registers (2 x 16 bytes per chunk and
// lane: 96 KB per SM at D = 6), the next one issued as soon as a chunk is
// consumed; a small layer's warps issue all their loads at once. A warp's piece
// may start and end inside tiles: tiles it covers whole are written out
// directly; the partial sums of the (at most two) tiles it shares with its
// neighbours go to shared memory and, after one __syncthreads at the end,
// the warp holding a shared tile's last chunk adds them in warp order
// (deterministic, no atomics, no workspace).
//
// x (n rows) reaches the B fragments from shared memory, one of two ways:
//   - staged whole (xmode 1) when n * 128 * nck bf16 fit in V3_XS_MAX_BYTES
//     (200 KB: n = 1 up to in = 102400, n = 8 at in = 12800; measured on an
//     H200 faster than the ring at every shape tried, e.g. 184 against 232 us
//     for 59392 x 14848 at n = 2, and the grid has one block per SM, so the
//     shared memory costs no occupancy): copied once per
//     block with cp.async while the first weight loads are in flight (row
//     stride padded to 64 mod 128 bytes: conflict-free reads);
//   - otherwise (xmode 0: big n * in, where staging would stall the start
//     and take the L1) each lane copies its own 4 x 16 bytes of a chunk with
//     cp.async (L1-cached: warps of a block walk the same inputs at about the
//     same time) into a per-warp ring of V3_XD = 2 slots, 2 chunks ahead of
//     use (x is L1/L2-resident: its latency is short), and reads back only
//     what it copied (no synchronisation but its own cp.async.wait_group).
// Only lanes g < n touch x; the others feed zeros.
//
// GEMV fast path (w4a16_gemv_v3f_kernel, the default where it applies:
// group 128, in % 128 == 0, x staged): the same grid and pieces, the
// weights, scales and zero points through a per-warp cp.async ring, the
// zero point applied once per chunk through the chunk sums of x (see the
// kernel's comment).
//
// GEMM (any n; w4a16_gemm_v3_kernel): w4a16_tc.cu's GEMM on this layout: a
// block is 128 rows (8 warps x 16) by NB = 8 NT batch rows over a slice of
// the chunks (split-K over gridDim.z, partials added in order by a second
// kernel); x staged per chunk in shared memory (row stride 20 units of 16
// bytes: conflict-free), the weights loaded 2 chunks ahead.
//
// Dequantise (int4_dequant_v3_kernel): one thread per lane unit of 4 packed
// words, 4 x 8 bf16 out, the same arithmetic as cuda_int4_dequant_bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16.h"
#include "w4a16_dev.cuh"

#define V3_KC 128     // inputs per chunk
#define V3_CU4 64     // 16-byte units per (tile, chunk): 16 rows x 128 inputs x 4 bits
#define V3_WARPS 16   // GEMV warps per block
#define V3_THREADS (V3_WARPS * 32)
// GEMV chunks of weights in flight per lane (1 KB per warp and chunk): 6 at
// GS 4 and 2 (96 KB per SM, 123-127 registers), 5 at GS 1; -DW4A16_V3_DEPTH=N
// overrides (more spills past 128 registers)
#ifdef W4A16_V3_DEPTH
#define V3_DEPTH(GS) (W4A16_V3_DEPTH)
#else
#define V3_DEPTH(GS) ((GS) == 1 ? 5 : 6)
#endif
// x ring slots per warp (xmode 0): x is L1/L2-resident, 2 chunks ahead hide it
#ifndef W4A16_V3_XDEPTH
#define W4A16_V3_XDEPTH 2
#endif
#define V3_XD W4A16_V3_XDEPTH
#define V3_XS_MAX_BYTES (200 * 1024) // x staged whole up to this (auto)
#define V3_XS_LIMIT (200 * 1024)    // ... and at most this (xmode 1)
// shared memory: the static part of a GEMV block (red, + 1 KB the driver
// keeps per block), the most one block may take dynamically (227 KB opt-in
// in all), and an SM's total (Hopper)
#define V3_STATIC_SMEM ((size_t)(V3_WARPS * 2 * 4 * 32 * 4 + 1024))
#define V3_SMEM_MAX (227 * 1024 - V3_WARPS * 2 * 4 * 32 * 4)
#define V3_SMEM_SM ((size_t)228 * 1024)
// xmode -1 takes the fast path (w4a16_gemv_v3f_kernel) where it applies
// (-DV3F_AUTO=0: never)
#ifndef V3F_AUTO
#define V3F_AUTO 1
#endif
#define V3_RING_BYTES(n) (V3_WARPS * V3_XD * 4 * 4 * (n) * 16)
#define V3_GEMM_THREADS 256
#define V3_GEMM_DEPTH 2
#define V3_GEMM_RU 20 // x tile row stride in 16-byte units (16 + 4: 64 mod 128 bytes)
#define V3_SMS_DEFAULT 132

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// helpers

static __device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 u;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
                 : "l"(p));
    return u;
}

static __device__ __forceinline__ uint32_t word_of(const uint4 &u, int i) {
    return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

// One chunk's loads of a lane: words of rows g and g + 8 (steps 0..3), and
// per block of GS steps the scales (half2: row g, row g + 8) and zero points
// (row g | row g + 8 << 8; 0x0808 when symmetric).
template <int GS> struct V3Stage {
    uint4 w[2];
    uint32_t s[4 / GS];
    uint32_t z[4 / GS];
};

template <int GS>
static __device__ __forceinline__ void v3_load_meta(V3Stage<GS> &st, const uint32_t *__restrict__ sc,
                                                    const uint16_t *__restrict__ zz, size_t sbase,
                                                    int c, int grp4, int group, int ng) {
#pragma unroll
    for (int j = 0; j < 4 / GS; j++) {
        const int grp = GS == 4 ? grp4 : min((c * V3_KC + 32 * GS * j) / group, ng - 1);
        const size_t si = sbase + (size_t)grp * 8;
        st.s[j] = __ldg(sc + si);
        st.z[j] = zz ? (uint32_t)__ldg(zz + si) : 0x0808u;
    }
}

// The block of GS steps j of a chunk: part0/part1 += (q - z) x over its
// inputs (two accumulators: the two MMAs of a step do not wait on each
// other). xb(i) is step i's B fragment (x inputs 32i + 8t + 0..7 of row g).
template <int GS, typename XB>
static __device__ __forceinline__ void v3_block(const V3Stage<GS> &st, int j, float part0[4],
                                                float part1[4], XB xb) {
    const uint32_t nz0 = neg_zero_pair(st.z[j] & 0xFFu), nz1 = neg_zero_pair((st.z[j] >> 8) & 0xFFu);
#pragma unroll
    for (int ii = 0; ii < GS; ii++) {
        const int i = j * GS + ii;
        uint32_t a0[4], a1[4];
        dq_pairs(word_of(st.w[0], i), nz0, a0);
        dq_pairs(word_of(st.w[1], i), nz1, a1);
        const uint4 b = xb(i);
        const uint32_t A0[4] = {a0[0], a1[0], a0[1], a1[1]}; // inputs 8t + 0..3
        const uint32_t A1[4] = {a0[2], a1[2], a0[3], a1[3]}; // inputs 8t + 4..7
        mma_bf16_16816(part0, A0, b.x, b.y);
        mma_bf16_16816(part1, A1, b.z, b.w);
    }
}

static __device__ __forceinline__ float2 half2_bits_to_float2(uint32_t s) {
    __half2 h;
    *reinterpret_cast<uint32_t *>(&h) = s;
    return __half22float2(h);
}

// ----------------------------------------------------------------------------
// decode GEMV: n <= 8

struct V3Gemv {
    bf16 *y;
    const bf16 *x;
    const uint4 *qw;
    const uint32_t *sc; // half2 pairs
    const uint16_t *zz; // byte pairs, or NULL
    const float *bias;
    int n, in, out, group, mt, nck, ng;
};

// y[b][row] for the fragment values v (acc[e]: row 16m + g + 8 (e >> 1),
// batch row 2t + (e & 1)).
static __device__ __forceinline__ void v3_store(const V3Gemv &p, int m, const float v[4], int g,
                                                int t) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int row = 16 * m + g + 8 * (e >> 1), b = 2 * t + (e & 1);
        if (row < p.out && b < p.n)
            p.y[(size_t)b * p.out + row] = __float2bfloat16_rn(v[e] + (p.bias ? p.bias[row] : 0.0f));
    }
}

// A GEMV warp's share: this block's tiles from T0 (R chunks of them), this
// warp's piece [q0, q1) of those chunks, whose first tile is f0 (block-local).
struct V3Piece {
    int T0, R, q0, q1, f0;
};

static __device__ __forceinline__ V3Piece v3_piece(const V3Gemv &p, int warp) {
    V3Piece w;
    w.T0 = (int)((long long)p.mt * blockIdx.x / gridDim.x);
    const int T1 = (int)((long long)p.mt * (blockIdx.x + 1) / gridDim.x);
    w.R = (T1 - w.T0) * p.nck;
    w.q0 = (int)((long long)w.R * warp / V3_WARPS);
    w.q1 = (int)((long long)w.R * (warp + 1) / V3_WARPS);
    w.f0 = w.q0 / p.nck;
    return w;
}

// The end of a GEMV block: a tile shared by several warps' pieces is added
// up (their partials in red, slot 0 = a piece's first tile, 1 = its last)
// by the warp holding its last chunk: that tile is this warp's first, begun
// by earlier warps (warp order: deterministic).
static __device__ __forceinline__ void v3_add_shared_tiles(const V3Gemv &p, const V3Piece &w,
                                                           const float (*red)[2][4][32], int lane,
                                                           int g, int t) {
    __syncthreads();
    const int nck = p.nck;
    if (w.q0 < w.q1 && w.f0 * nck < w.q0 && (w.f0 + 1) * nck <= w.q1) {
        const int ts = w.f0 * nck, te = ts + nck;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k = 0; k < V3_WARPS; k++) {
            const int a = (int)((long long)w.R * k / V3_WARPS);
            const int b = (int)((long long)w.R * (k + 1) / V3_WARPS);
            if (a >= b || b <= ts || a >= te) continue;
            const int slot = a / nck == w.f0 ? 0 : 1;
#pragma unroll
            for (int e = 0; e < 4; e++) v[e] += red[k][slot][e][lane];
        }
        v3_store(p, w.T0 + w.f0, v, g, t);
    }
}

// Tile tl (block-local) ends in warp w's piece with the sums acc: written
// out if the piece holds all of it, else its partial goes to w's red slot 0
// (the piece's first tile) or 1 (its last); acc is zeroed.
static __device__ __forceinline__ void v3_finish_tile(const V3Gemv &p, const V3Piece &w, int tl,
                                                      float acc[4], float (*red)[4][32], int lane,
                                                      int g, int t) {
    if (tl * p.nck >= w.q0 && (tl + 1) * p.nck <= w.q1) {
        v3_store(p, w.T0 + tl, acc, g, t);
    } else {
        const int slot = tl == w.f0 ? 0 : 1;
#pragma unroll
        for (int e = 0; e < 4; e++) red[slot][e][lane] = acc[e];
    }
    acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
}

// grid.x = G blocks of V3_THREADS; dynamic shared memory: x (XS) or the rings.
template <int GS, bool XS>
static __global__ void __launch_bounds__(V3_THREADS, 1) w4a16_gemv_v3_kernel(const V3Gemv p) {
    const int D = V3_DEPTH(GS), DX = V3_XD;
    extern __shared__ __align__(16) uint4 v3_smem[];
    __shared__ float red[V3_WARPS][2][4][32]; // partial sums of shared tiles
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int nck = p.nck, in = p.in;
    const V3Piece pc = v3_piece(p, warp);
    const int T0 = pc.T0, q0 = pc.q0, q1 = pc.q1, f0 = pc.f0;
    const bool has_x = g < p.n;
    const uint4 *wq = p.qw + (size_t)T0 * nck * V3_CU4 + lane;
    const size_t tstride = (size_t)p.ng * 8; // scale pairs per tile

    // XS: lane (g, t) reads 16-byte unit 16c + 4i + t of row g (rows padded
    // by 4 units). Ring: slot (chunk % DX, i) of the warp, 4n units, lane
    // 4g + t's own.
    const int xsu = nck * 16 + 4;
    const uint4 *xs_row = v3_smem + (size_t)g * xsu + t;
    uint4 *ring = v3_smem + (size_t)warp * DX * 4 * 4 * p.n + lane;

    // the loader: chunk lq of the piece is tile lm, chunk lc (group lgrp,
    // lleft chunks to the group's end when GS == 4)
    const int cpg = p.group / V3_KC > 0 ? p.group / V3_KC : 1;
    int lq = q0, lm = T0 + f0, lc = q0 - f0 * nck, lgrp = lc / cpg, lleft = cpg - lc % cpg;
    V3Stage<GS> st[D];
    auto load = [&](int d) {
        if (lq < q1) {
            const uint4 *wp = wq + (size_t)lq * V3_CU4;
            st[d].w[0] = ld_stream(wp);
            st[d].w[1] = ld_stream(wp + 32);
            v3_load_meta<GS>(st[d], p.sc, p.zz, (size_t)lm * tstride + g, lc, lgrp, p.group, p.ng);
            if (GS == 4 && --lleft == 0) lgrp++, lleft = cpg;
            if (++lc == nck) lc = 0, lm++, lgrp = 0, lleft = cpg;
        }
        lq++;
    };
    // the x ring's loader (xmode 0), DX chunks ahead of the consumer: chunk
    // xq of the piece is chunk xc of its tile, into slot dx
    int xq = q0, xc = q0 - f0 * nck;
    auto load_x = [&](int dx) {
        if (xq < q1 && has_x) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int k = xc * V3_KC + 32 * i + 8 * t;
                cp_async16_ca(ring + (dx * 4 + i) * 4 * p.n, p.x + (size_t)g * in + (k < in ? k : 0),
                              k < in ? 16 : 0);
            }
        }
        cp_async_commit(); // one group per chunk, empty past the end
        if (++xc == nck) xc = 0;
        xq++;
    };

#pragma unroll
    for (int d = 0; d < D; d++) load(d);
    if (!XS) {
#pragma unroll
        for (int dx = 0; dx < DX; dx++) load_x(dx);
    }
    if (XS) { // the whole x, zero-padded to nck chunks
        const int units = nck * 16;
        for (int idx = threadIdx.x; idx < p.n * units; idx += V3_THREADS) {
            const int r = idx / units, u = idx - r * units, k = 8 * u;
            cp_async16_cg(v3_smem + (size_t)r * xsu + u, p.x + (size_t)r * in + (k < in ? k : 0),
                          k < in ? 16 : 0);
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
    }

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    auto finish = [&](int tl) { v3_finish_tile(p, pc, tl, acc, red[warp], lane, g, t); };

    int cm = T0 + f0, cc = q0 - f0 * nck; // the consumer's tile and chunk
    int dx = 0;                           // ... and x ring slot
    for (int q = q0; q < q1; q += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (q + d < q1) {
                if (!XS) cp_async_wait<DX - 1>(); // this chunk's x has landed
                const int c = cc;
                const uint4 *xr = ring + dx * 16 * p.n;
                auto xb = [&](int i) {
                    if (!has_x) return make_uint4(0, 0, 0, 0);
                    return XS ? xs_row[c * 16 + 4 * i] : xr[i * 4 * p.n];
                };
#pragma unroll
                for (int j = 0; j < 4 / GS; j++) {
                    float p0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, p1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    v3_block<GS>(st[d], j, p0, p1, xb);
                    const float2 s = half2_bits_to_float2(st[d].s[j]);
                    acc[0] = fmaf(s.x, p0[0] + p1[0], acc[0]);
                    acc[1] = fmaf(s.x, p0[1] + p1[1], acc[1]);
                    acc[2] = fmaf(s.y, p0[2] + p1[2], acc[2]);
                    acc[3] = fmaf(s.y, p0[3] + p1[3], acc[3]);
                }
                load(d); // chunk q + d + D into the stage just read
                if (!XS) {
                    load_x(dx); // chunk q + d + DX into the slot just read
                    if (++dx == DX) dx = 0;
                }
                if (cc == nck - 1 || q + d == q1 - 1) finish(cm - T0);
                if (++cc == nck) cc = 0, cm++;
            }
        }
    }

    v3_add_shared_tiles(p, pc, red, lane, g, t);
}

// GEMV fast path (group 128, in % 128 == 0, x staged whole): then the
// (tile, chunk) index q of a piece is linear in everything a chunk needs:
// weights at q KB, scales and zero points at 8 q (one group per chunk), x
// at chunk q mod nck. Per chunk, each lane copies its 2 x 16 bytes of
// weights and lanes 0..2 the chunk's 32 bytes of scales and 16 of zero
// points (cp.async) into slot q mod D of the warp's shared ring (67 units:
// weights, then scales, then zeros), D chunks ahead; no register holds a
// load in flight (MINB blocks per SM fit the registers). The zero point
// leaves the dequantisation: the A fragment is 128 + q (one LOP3 per pair,
// exact), and the chunk's sum is corrected by -(128 + z) sum(x over the
// chunk), the sums computed once per block after x is staged (fp32; the
// products are exact, the sums cancel to within ~2^-24 of 136 |x| per
// input). Shared memory is addressed through 32-bit registers computed
// once. Lanes g >= n read x row n - 1: their output columns are not stored.
#define V3F_SLOT (V3_CU4 + 3)

static __device__ __forceinline__ uint4 lds128(uint32_t a) {
    uint4 u;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
                 : "r"(a));
    return u;
}
static __device__ __forceinline__ uint32_t lds32(uint32_t a) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(a));
    return v;
}
static __device__ __forceinline__ uint32_t lds16(uint32_t a) {
    uint16_t v;
    asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(a));
    return v;
}
static __device__ __forceinline__ float2 lds64f(uint32_t a) {
    float2 v;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(a));
    return v;
}
static __device__ __forceinline__ void cp_async16_s(uint32_t s, const void *gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}

template <int D, int MINB>
static __global__ void __launch_bounds__(V3_THREADS, MINB) w4a16_gemv_v3f_kernel(const V3Gemv p) {
    extern __shared__ __align__(16) uint4 v3_smem[];
    __shared__ float red[V3_WARPS][2][4][32]; // partial sums of shared tiles
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int nck = p.nck, in = p.in;
    const V3Piece pc = v3_piece(p, warp);
    const int T0 = pc.T0, q0 = pc.q0, q1 = pc.q1, f0 = pc.f0;
    // shared: x (n rows of xsu units, as w4a16_gemv_v3_kernel's XS), the
    // chunk sums of x (nck x npad floats, npad = n rounded up to even; the
    // region rounded up to 16 bytes), the warps' rings
    const int xsu = nck * 16 + 4, npad = (p.n + 1) & ~1;
    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(v3_smem);
    const uint32_t xsum_s = sbase + (uint32_t)p.n * xsu * 16;
    const uint32_t ring_s = xsum_s + (((uint32_t)(nck * npad) * 4 + 15) & ~15u) +
                            (uint32_t)warp * D * V3F_SLOT * 16;
    { // the whole x (the oldest cp.async group)
        const int units = nck * 16;
        for (int idx = threadIdx.x; idx < p.n * units; idx += V3_THREADS) {
            const int r = idx / units, u = idx - r * units;
            cp_async16_s(sbase + (uint32_t)(r * xsu + u) * 16, p.x + (size_t)r * in + 8 * u);
        }
        cp_async_commit();
    }
    // this lane's sources at chunk q0 of the piece: weights; scales (lanes
    // 0, 1: 16 bytes each of 32 per chunk) or zero points (lane 2: 16 bytes)
    const size_t c0 = (size_t)T0 * nck + q0; // global (tile, chunk) index
    const uint4 *wsrc = p.qw + c0 * V3_CU4 + lane;
    const bool mcopy = lane < 2 || (lane == 2 && p.zz);
    const uint4 *msrc = lane < 2 ? reinterpret_cast<const uint4 *>(p.sc + c0 * 8) + lane
                                 : reinterpret_cast<const uint4 *>(p.zz + c0 * 8);
    const int mstep = lane < 2 ? 2 : 1;
    const uint32_t wdst = ring_s + lane * 16, mdst = ring_s + (V3_CU4 + lane) * 16;
    int lq = q0;
    auto load = [&](int d) {
        if (lq < q1) {
            cp_async16_s(wdst + d * V3F_SLOT * 16, wsrc);
            cp_async16_s(wdst + d * V3F_SLOT * 16 + 512, wsrc + 32);
            if (mcopy) cp_async16_s(mdst + d * V3F_SLOT * 16, msrc);
        }
        cp_async_commit(); // one group per chunk, empty past the end
        wsrc += V3_CU4, msrc += mstep, lq++;
    };
#pragma unroll
    for (int d = 0; d < D; d++) load(d);
    cp_async_wait<D>(); // x has landed (this thread's part)
    __syncthreads();
    // the chunk sums of x: xsum[c][r] = sum of row r's inputs 128 c .. 128 c
    // + 127 (0 for r = n when n is odd), 4 threads per sum (32 inputs each,
    // then two shuffles); the loop runs whole warps
    {
        const int items = nck * npad, total = (4 * items + 31) & ~31;
        for (int idx = threadIdx.x; idx < total; idx += V3_THREADS) {
            const int it = idx >> 2, part = idx & 3, r = it % npad, c = it / npad;
            float sum = 0.0f;
            if (it < items && r < p.n) {
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const uint4 v = lds128(sbase + (uint32_t)(r * xsu + c * 16 + 4 * part + u) * 16);
                    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        sum += __uint_as_float(w[i] << 16) + __uint_as_float(w[i] & 0xFFFF0000u);
                }
            }
            sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
            sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
            if (part == 0 && it < items)
                asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(xsum_s + (uint32_t)it * 4), "f"(sum));
        }
    }
    __syncthreads();

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    auto finish = [&](int tl) { v3_finish_tile(p, pc, tl, acc, red[warp], lane, g, t); };
    const int xr = g < p.n ? g : p.n - 1;
    int cm = f0, cc = q0 - f0 * nck; // the consumer's tile (block-local) and chunk
    uint32_t x_s = sbase + (uint32_t)(xr * xsu + cc * 16 + t) * 16; // chunk cc, step 0
    // this lane's output columns 2t, 2t + 1 (those >= n are not stored: read
    // the last pair instead)
    const int xcol = 2 * t < npad ? 2 * t : npad - 2;
    uint32_t xsum_c = xsum_s + (uint32_t)(cc * npad + xcol) * 4;
    const uint32_t x_row0 = sbase + (uint32_t)(xr * xsu + t) * 16, xsum_0 = xsum_s + 4 * xcol;
    const uint32_t wsrc_s = ring_s + lane * 16, msrc_s = ring_s + V3_CU4 * 16 + 4 * g;
    for (int q = q0; q < q1; q += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (q + d < q1) {
                cp_async_wait<D - 1>(); // this lane's copies of chunk q + d
                __syncwarp();           // ... and lanes 0..2's scales
                const uint32_t sl = wsrc_s + d * V3F_SLOT * 16;
                const uint4 w0 = lds128(sl), w1 = lds128(sl + 512);
                const uint32_t ms = msrc_s + d * V3F_SLOT * 16;
                const uint32_t sc = lds32(ms);
                const uint32_t zp = p.zz ? lds16(ms - 2 * g + 32) : 0x0808u;
                __syncwarp(); // slot d is free for chunk q + d + D
                load(d);
                float p0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, p1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    uint32_t a0[4], a1[4];
                    nib_pairs(word_of(w0, i), a0);
                    nib_pairs(word_of(w1, i), a1);
                    const uint4 b = lds128(x_s + 64 * i);
                    const uint32_t A0[4] = {a0[0], a1[0], a0[1], a1[1]}; // inputs 8t + 0..3
                    const uint32_t A1[4] = {a0[2], a1[2], a0[3], a1[3]}; // inputs 8t + 4..7
                    mma_bf16_16816(p0, A0, b.x, b.y);
                    mma_bf16_16816(p1, A1, b.z, b.w);
                }
                // sum (q - z) x = sum (128 + q) x - (128 + z) sum x; 128 + z
                // as a float from its bits
                const float2 X = lds64f(xsum_c);
                const float z0 = __uint_as_float(0x43000000u | (zp & 0xFFu) << 16);
                const float z1 = __uint_as_float(0x43000000u | (zp & 0xFF00u) << 8);
                const float2 s = half2_bits_to_float2(sc);
                acc[0] = fmaf(s.x, fmaf(-z0, X.x, p0[0] + p1[0]), acc[0]);
                acc[1] = fmaf(s.x, fmaf(-z0, X.y, p0[1] + p1[1]), acc[1]);
                acc[2] = fmaf(s.y, fmaf(-z1, X.x, p0[2] + p1[2]), acc[2]);
                acc[3] = fmaf(s.y, fmaf(-z1, X.y, p0[3] + p1[3]), acc[3]);
                x_s += 256, xsum_c += 4 * npad;
                if (++cc == nck) {
                    finish(cm);
                    cc = 0, cm++, x_s = x_row0, xsum_c = xsum_0;
                } else if (q + d == q1 - 1) {
                    finish(cm);
                }
            }
        }
    }
    cp_async_wait<0>(); // (only empty groups remain)
    v3_add_shared_tiles(p, pc, red, lane, g, t);
}

// SMs of the current device (sizes the persistent grid), asked once per device.
static int v3_sm_count() {
    static int cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return V3_SMS_DEFAULT;
    }
    if (!cache[dev]) {
        int n = 0;
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
            (void)cudaGetLastError();
            n = V3_SMS_DEFAULT;
        }
        cache[dev] = n;
    }
    return cache[dev];
}

template <int GS, bool XS>
static void launch_gemv_v3(const V3Gemv &p, int ctas, size_t smem, cudaStream_t s) {
    static bool attr_set = false; // once per instantiation (not a stream operation)
    if (!attr_set) {
        const int most = XS ? V3_XS_LIMIT : V3_RING_BYTES(W4A16_GEMV_MAX_N);
        CUDA_CHECK(cudaFuncSetAttribute(w4a16_gemv_v3_kernel<GS, XS>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, most));
        attr_set = true;
    }
    w4a16_gemv_v3_kernel<GS, XS><<<(unsigned)ctas, V3_THREADS, smem, s>>>(p);
    CUDA_CHECK_LAUNCH();
}

static int v3_gs(int group) { return group % 128 == 0 ? 4 : group % 64 == 0 ? 2 : 1; }

// The fields V3Gemv and V3Gemm share, from an entry point's arguments.
template <typename P>
static void v3_fill(P &p, sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt, const uint16_t *st,
                    const uint8_t *zt, const float *bias, int n, int in_dim, int out_dim,
                    int group) {
    p.y = reinterpret_cast<bf16 *>(y);
    p.x = reinterpret_cast<const bf16 *>(x);
    p.qw = reinterpret_cast<const uint4 *>(qt);
    p.sc = reinterpret_cast<const uint32_t *>(st);
    p.zz = reinterpret_cast<const uint16_t *>(zt);
    p.bias = bias;
    p.n = n, p.in = in_dim, p.out = out_dim, p.group = group;
    p.mt = (out_dim + 15) / 16, p.nck = (in_dim + V3_KC - 1) / V3_KC, p.ng = in_dim / group;
}

template <int D, int MINB>
static void launch_gemv_v3f(const V3Gemv &p, int ctas, size_t smem, cudaStream_t s) {
    static bool attr_set = false;
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(w4a16_gemv_v3f_kernel<D, MINB>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, V3_SMEM_MAX));
        attr_set = true;
    }
    w4a16_gemv_v3f_kernel<D, MINB><<<(unsigned)ctas, V3_THREADS, smem, s>>>(p);
    CUDA_CHECK_LAUNCH();
}

// The fast path's configurations (xmode 2 + k): chunks in flight per warp,
// blocks per SM. Default: SLUICE_INT4_V3F (benchmarks), else V3F_DEFAULT.
static const struct {
    int depth, blocks;
} v3f_cfgs[W4A16_V3F_CONFIGS] = {{4, 2}, {5, 2}, {6, 1}, {8, 1}, {10, 1}};
#ifndef V3F_DEFAULT
#define V3F_DEFAULT 2
#endif

static void launch_gemv_v3f_cfg(const V3Gemv &p, int cfg, int ctas, size_t smem, cudaStream_t s) {
    switch (cfg) {
    case 0: launch_gemv_v3f<4, 2>(p, ctas, smem, s); break;
    case 1: launch_gemv_v3f<5, 2>(p, ctas, smem, s); break;
    case 2: launch_gemv_v3f<6, 1>(p, ctas, smem, s); break;
    case 3: launch_gemv_v3f<8, 1>(p, ctas, smem, s); break;
    default: launch_gemv_v3f<10, 1>(p, ctas, smem, s); break;
    }
}

static int v3f_cfg_default() {
    static int cfg = -1;
    if (cfg < 0) {
        const char *e = getenv("SLUICE_INT4_V3F");
        cfg = e && *e ? atoi(e) : V3F_DEFAULT;
        if (cfg < 0 || cfg >= W4A16_V3F_CONFIGS || (e && *e && (e[0] < '0' || e[0] > '9' || e[1])))
            SL_FATAL("sluice", "SLUICE_INT4_V3F: expected a configuration 0..4 of the INT4 GEMV "
                     "fast path", "cuda_w4a16_gemv_v3");
    }
    return cfg;
}

extern "C" void cuda_w4a16_gemv_v3_ex(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt,
                                      const uint16_t *st, const uint8_t *zt, const float *bias,
                                      int n, int in_dim, int out_dim, int group, int xmode,
                                      int ctas, cudaStream_t stream) {
    if (n <= 0 || out_dim <= 0) return;
    if (n > W4A16_GEMV_MAX_N || group <= 0 || group % 32 || in_dim % group || ((uintptr_t)x & 15))
        SL_FATAL("sluice", "W4A16 GEMV (v3): n must be 1..8, group a multiple of 32 dividing "
                 "in_dim, x 16-byte aligned", "cuda_w4a16_gemv_v3");
    V3Gemv p;
    v3_fill(p, y, x, qt, st, zt, bias, n, in_dim, out_dim, group);
    const size_t xs_bytes = (size_t)n * (p.nck * 16 + 4) * 16;
    // the fast path where it applies and x plus the rings fit (auto: the
    // default configuration, else rings of 5, else 4 chunks)
    int cfg = xmode >= 2 && xmode < 2 + W4A16_V3F_CONFIGS ? xmode - 2 : v3f_cfg_default();
    auto fbytes = [&](int k) {
        return xs_bytes + (((size_t)p.nck * ((n + 1) & ~1) * 4 + 15) & ~(size_t)15) +
               (size_t)V3_WARPS * v3f_cfgs[k].depth * V3F_SLOT * 16;
    };
    if (xmode == -1 && fbytes(cfg) > V3_SMEM_MAX) cfg = fbytes(1) <= V3_SMEM_MAX ? 1 : 0;
    const size_t f_bytes = fbytes(cfg);
    const bool fast = (xmode >= 2 || (xmode == -1 && V3F_AUTO)) && group == 128 &&
                      in_dim % 128 == 0 && f_bytes <= V3_SMEM_MAX;
    const int blocks = fast && (f_bytes + V3_STATIC_SMEM) * v3f_cfgs[cfg].blocks <= V3_SMEM_SM
                           ? v3f_cfgs[cfg].blocks : 1;
    // Persistent grid: at most `blocks` blocks per SM, the tiles split
    // evenly (every block gets the same number of tiles, give or take one
    // only where the SMs cannot all get ceil(mt / slots)).
    if (ctas <= 0) {
        const int slots = v3_sm_count() * blocks, per = (p.mt + slots - 1) / slots;
        ctas = (p.mt + per - 1) / per;
    }
    if (ctas > p.mt) ctas = p.mt;
    if (fast) {
        launch_gemv_v3f_cfg(p, cfg, ctas, f_bytes, stream);
        return;
    }
    if (xmode >= 2) xmode = -1;
    const bool xs = xmode == 1 ? xs_bytes <= V3_XS_LIMIT : xmode == 0 ? false : xs_bytes <= V3_XS_MAX_BYTES;
    const size_t smem = xs ? xs_bytes : (size_t)V3_RING_BYTES(n);
    switch (v3_gs(group) * 2 + (xs ? 1 : 0)) {
    case 9: launch_gemv_v3<4, true>(p, ctas, smem, stream); break;
    case 8: launch_gemv_v3<4, false>(p, ctas, smem, stream); break;
    case 5: launch_gemv_v3<2, true>(p, ctas, smem, stream); break;
    case 4: launch_gemv_v3<2, false>(p, ctas, smem, stream); break;
    case 3: launch_gemv_v3<1, true>(p, ctas, smem, stream); break;
    default: launch_gemv_v3<1, false>(p, ctas, smem, stream); break;
    }
}

extern "C" void cuda_w4a16_gemv_v3(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt,
                                   const uint16_t *st, const uint8_t *zt, const float *bias, int n,
                                   int in_dim, int out_dim, int group, cudaStream_t stream) {
    cuda_w4a16_gemv_v3_ex(y, x, qt, st, zt, bias, n, in_dim, out_dim, group, -1, 0, stream);
}

// ----------------------------------------------------------------------------
// GEMM: any n, batch tiles of 8 * NT rows, split-K over gridDim.z

struct V3Gemm {
    bf16 *y;
    float *ws;
    const bf16 *x;
    const uint4 *qw;
    const uint32_t *sc;
    const uint16_t *zz;
    const float *bias;
    int n, in, out, group, mt, nck, ng, cps;
};

template <int NT> struct V3GemmCfg {
    static const int MIN_BLOCKS = NT == 8 ? 1 : 2; // blocks per SM (registers)
};

// y (n, out) = x (n, in) @ dequant(W)^T (+ bias), or with gridDim.z > 1 the
// fp32 partial of chunks [z * cps, (z + 1) * cps) to ws (gridDim.z, n, out).
template <int GS, int NT>
static __global__ void __launch_bounds__(V3_GEMM_THREADS, V3GemmCfg<NT>::MIN_BLOCKS)
w4a16_gemm_v3_kernel(const V3Gemm p) {
    const int D = V3_GEMM_DEPTH, NB = 8 * NT, RU = V3_GEMM_RU, UPR = V3_KC / 8; // units per row
    const int XU = (NB * UPR + V3_GEMM_THREADS - 1) / V3_GEMM_THREADS; // x units per thread
    __shared__ __align__(16) uint4 xt[2][NB * RU];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int m = blockIdx.x * 8 + warp, ml = min(m, p.mt - 1), b0 = blockIdx.y * NB;
    const int c0 = blockIdx.z * p.cps, c1 = min(c0 + p.cps, p.nck);
    const uint4 *wq = p.qw + (size_t)ml * p.nck * V3_CU4 + lane;
    const size_t sbase = (size_t)ml * p.ng * 8 + g;

    // x staging: thread tid carries units tid, tid + 256, ... of the NB x 16 tile
    uint4 xr[XU];
    auto load_x = [&](int c) {
#pragma unroll
        for (int j = 0; j < XU; j++) {
            const int idx = tid + j * V3_GEMM_THREADS, r = idx / UPR, k = c * V3_KC + 8 * (idx % UPR);
            const bool ok = idx < NB * UPR && b0 + r < p.n && k < p.in;
            xr[j] = ok ? __ldg(reinterpret_cast<const uint4 *>(p.x + (size_t)(b0 + r) * p.in + k))
                       : make_uint4(0, 0, 0, 0);
        }
    };
    auto store_x = [&](int buf) {
#pragma unroll
        for (int j = 0; j < XU; j++) {
            const int idx = tid + j * V3_GEMM_THREADS;
            if (idx < NB * UPR) xt[buf][(idx / UPR) * RU + idx % UPR] = xr[j];
        }
    };
    V3Stage<GS> st[D];
    auto load_w = [&](int d, int c) {
        st[d].w[0] = __ldg(wq + (size_t)c * V3_CU4);
        st[d].w[1] = __ldg(wq + (size_t)c * V3_CU4 + 32);
        v3_load_meta<GS>(st[d], p.sc, p.zz, sbase, c, GS == 4 ? c * V3_KC / p.group : 0, p.group,
                         p.ng);
    };

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
        if (c0 + d < c1) load_w(d, c0 + d);
    __syncthreads();
    for (int c = c0; c < c1; c += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            if (c + d < c1) {
                const int buf = (c + d - c0) & 1;
#pragma unroll
                for (int j = 0; j < 4 / GS; j++) {
                    float part[NT][4];
#pragma unroll
                    for (int jt = 0; jt < NT; jt++)
                        part[jt][0] = part[jt][1] = part[jt][2] = part[jt][3] = 0.0f;
                    const uint32_t z = st[d].z[j];
                    const uint32_t nz0 = neg_zero_pair(z & 0xFFu), nz1 = neg_zero_pair((z >> 8) & 0xFFu);
#pragma unroll
                    for (int ii = 0; ii < GS; ii++) {
                        const int i = j * GS + ii;
                        uint32_t a0[4], a1[4];
                        dq_pairs(word_of(st[d].w[0], i), nz0, a0);
                        dq_pairs(word_of(st[d].w[1], i), nz1, a1);
                        const uint32_t A0[4] = {a0[0], a1[0], a0[1], a1[1]};
                        const uint32_t A1[4] = {a0[2], a1[2], a0[3], a1[3]};
#pragma unroll
                        for (int jt = 0; jt < NT; jt++) {
                            const uint4 b = xt[buf][(8 * jt + g) * RU + 4 * i + t];
                            mma_bf16_16816(part[jt], A0, b.x, b.y);
                            mma_bf16_16816(part[jt], A1, b.z, b.w);
                        }
                    }
                    const float2 s = half2_bits_to_float2(st[d].s[j]);
#pragma unroll
                    for (int jt = 0; jt < NT; jt++) {
                        acc[jt][0] = fmaf(s.x, part[jt][0], acc[jt][0]);
                        acc[jt][1] = fmaf(s.x, part[jt][1], acc[jt][1]);
                        acc[jt][2] = fmaf(s.y, part[jt][2], acc[jt][2]);
                        acc[jt][3] = fmaf(s.y, part[jt][3], acc[jt][3]);
                    }
                }
                if (c + d + D < c1) load_w(d, c + d + D);
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
    // acc[j][e]: row 16m + g + 8 (e >> 1), batch row b0 + 8j + 2t + (e & 1)
    const bool split = gridDim.z > 1;
    float *wz = p.ws + (size_t)blockIdx.z * p.n * p.out;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = 16 * m + g + 8 * (e >> 1), b = b0 + 8 * j + 2 * t + (e & 1);
            if (row >= p.out || b >= p.n) continue;
            if (split) wz[(size_t)b * p.out + row] = acc[j][e];
            else p.y[(size_t)b * p.out + row] = __float2bfloat16_rn(acc[j][e] + (p.bias ? p.bias[row] : 0.0f));
        }
}


// The split: w4a16_splitk_count over chunks of 128 inputs.
static int gemm_v3_split(int n, int nck, int out, size_t ws_floats) {
    return w4a16_splitk_count(n, nck, out, ws_floats);
}

extern "C" size_t cuda_w4a16_v3_workspace_floats(int max_n, int max_out) {
    return w4a16_splitk_workspace_floats(max_n, max_out);
}

template <int GS, int NT>
static void launch_gemm_v3(V3Gemm p, int S, cudaStream_t s) {
    p.cps = (p.nck + S - 1) / S;
    dim3 grid((unsigned)((p.out + 127) / 128), (unsigned)((p.n + 8 * NT - 1) / (8 * NT)), (unsigned)S);
    w4a16_gemm_v3_kernel<GS, NT><<<grid, V3_GEMM_THREADS, 0, s>>>(p);
    CUDA_CHECK_LAUNCH();
    if (S > 1) w4a16_splitk_reduce(p.y, p.ws, p.bias, p.n, p.out, S, s);
}

template <int GS> static void gemm_v3_nt_switch(const V3Gemm &p, int S, cudaStream_t s) {
    switch (w4a16_gemm_nt(p.n)) {
    case 2: launch_gemm_v3<GS, 2>(p, S, s); break;
    case 4: launch_gemm_v3<GS, 4>(p, S, s); break;
    default: launch_gemm_v3<GS, 8>(p, S, s); break;
    }
}

extern "C" void cuda_w4a16_gemm_v3(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt,
                                   const uint16_t *st, const uint8_t *zt, const float *bias, int n,
                                   int in_dim, int out_dim, int group, float *ws, size_t ws_floats,
                                   cudaStream_t stream) {
    if (n <= 0 || out_dim <= 0) return;
    if (group <= 0 || group % 32 || in_dim % group || ((uintptr_t)x & 15))
        SL_FATAL("sluice", "W4A16 GEMM (v3): group must be a multiple of 32 dividing in_dim, x "
                 "16-byte aligned", "cuda_w4a16_gemm_v3");
    V3Gemm p;
    v3_fill(p, y, x, qt, st, zt, bias, n, in_dim, out_dim, group);
    p.ws = ws;
    p.cps = p.nck;
    const int S = ws ? gemm_v3_split(n, p.nck, out_dim, ws_floats) : 1;
    switch (v3_gs(group)) {
    case 4: gemm_v3_nt_switch<4>(p, S, stream); break;
    case 2: gemm_v3_nt_switch<2>(p, S, stream); break;
    default: gemm_v3_nt_switch<1>(p, S, stream); break;
    }
}

// ----------------------------------------------------------------------------
// the layout: repack and dequantise

// Word w of the v3 layout: i = w & 3, lane L = (w >> 2) & 31, h = (w >> 7) & 1,
// (tile, chunk) = w >> 8; it holds row 16m + 8h + L/4, inputs 128c + 32i +
// 8 (L & 3) + pi(p) at nibble p.
struct V3Word {
    int row, k0;
};

static __device__ __forceinline__ V3Word v3_word(size_t w, int nck) {
    const int i = (int)(w & 3), L = (int)((w >> 2) & 31), h = (int)((w >> 7) & 1);
    const size_t mc = w >> 8;
    const int m = (int)(mc / nck), c = (int)(mc % nck);
    V3Word r;
    r.row = 16 * m + 8 * h + (L >> 2);
    r.k0 = V3_KC * c + 32 * i + 8 * (L & 3);
    return r;
}

// pi: nibble p of a v3 word is input pi(p) of its 8 (nibble pi(p) of the
// sluice-layout word)
static __device__ __forceinline__ int v3_pi(int p) { return p < 4 ? 2 * p : 2 * (p - 4) + 1; }

static __global__ void int4_repack_v3_q_kernel(uint32_t *__restrict__ qt,
                                               const uint32_t *__restrict__ qw, int out, int in,
                                               int nck, size_t nw) {
    const int words = in / 8;
    for (size_t w = blockIdx.x * (size_t)blockDim.x + threadIdx.x; w < nw;
         w += (size_t)gridDim.x * blockDim.x) {
        const V3Word a = v3_word(w, nck);
        uint32_t v = 0;
        if (a.row < out && a.k0 < in) {
            const uint32_t s = qw[(size_t)a.row * words + a.k0 / 8];
#pragma unroll
            for (int p = 0; p < 8; p++) v |= ((s >> (4 * v3_pi(p))) & 15u) << (4 * p);
        }
        qt[w] = v;
    }
}

// entry e of st / zt: tile m = e / (16 ng), group (e / 16) % ng, g = (e / 2) % 8, h = e % 2
static __global__ void int4_repack_v3_g_kernel(uint16_t *__restrict__ st, uint8_t *__restrict__ zt,
                                               const uint16_t *__restrict__ sc,
                                               const uint8_t *__restrict__ zz, int out, int ng,
                                               size_t ne) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < ne;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t mg = e / 16;
        const int m = (int)(mg / ng), grp = (int)(mg % ng), gh = (int)(e % 16);
        const int row = 16 * m + 8 * (gh & 1) + (gh >> 1);
        const bool ok = row < out;
        const size_t src = (size_t)row * ng + grp;
        st[e] = ok ? sc[src] : 0;
        if (zt) zt[e] = ok ? zz[src] : 0;
    }
}

static unsigned grid_for(size_t n) {
    size_t blocks = (n + 255) / 256;
    return (unsigned)(blocks > 65536 ? 65536 : blocks ? blocks : 1);
}

extern "C" void cuda_int4_repack_v3(uint32_t *qt, uint16_t *st, uint8_t *zt,
                                    const uint32_t *qweight, const uint16_t *scales,
                                    const uint8_t *zeros, int out_dim, int in_dim, int group,
                                    cudaStream_t stream) {
    if (out_dim <= 0 || in_dim <= 0) return;
    if (group <= 0 || group % 32 || in_dim % group || (!zeros) != (!zt))
        SL_FATAL("sluice", "INT4 repack (v3): group must be a multiple of 32 dividing in_dim, "
                 "zeros and zt both given or both NULL", "cuda_int4_repack_v3");
    const int nck = (in_dim + V3_KC - 1) / V3_KC, ng = in_dim / group;
    const size_t nw = w4a16_v3_qwords(out_dim, in_dim), ne = w4a16_v3_gelems(out_dim, in_dim, group);
    int4_repack_v3_q_kernel<<<grid_for(nw), 256, 0, stream>>>(qt, qweight, out_dim, in_dim, nck, nw);
    CUDA_CHECK_LAUNCH();
    int4_repack_v3_g_kernel<<<grid_for(ne), 256, 0, stream>>>(st, zt, scales, zeros, out_dim, ng, ne);
    CUDA_CHECK_LAUNCH();
}

// One thread per lane unit (4 words, 16 bytes: row g or g + 8 of a tile,
// inputs 32 i + 8 t + 0..7 of a chunk, i = 0..3): one 16-byte load, four
// 16-byte stores 64 bytes apart (a warp covers 2 rows x 256 contiguous bytes).
static __global__ void int4_dequant_v3_kernel(bf16 *__restrict__ dst, const uint4 *__restrict__ qt,
                                              const __half *__restrict__ st,
                                              const uint8_t *__restrict__ zt, int out, int in,
                                              int group, int nck, int ng, size_t nu) {
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < nu;
         u += (size_t)gridDim.x * blockDim.x) {
        const size_t w = 4 * u;
        const V3Word a = v3_word(w, nck);
        if (a.row >= out || a.k0 >= in) continue;
        const int L = (int)((w >> 2) & 31);
        const size_t gbase = (w >> 8) / nck * ng * 16 + 2 * (L >> 2) + ((w >> 7) & 1);
        const uint4 q = qt[u];
        const uint32_t qv[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int k0 = a.k0 + 32 * i;
            if (k0 >= in) break;
            const size_t gi = gbase + (size_t)(k0 / group) * 16;
            const float sc = __half2float(st[gi]), z = zt ? (float)zt[gi] : 8.0f;
            __align__(16) bf16 o[8];
#pragma unroll
            for (int p = 0; p < 8; p++)
                o[v3_pi(p)] = __float2bfloat16_rn(((float)((qv[i] >> (4 * p)) & 15u) - z) * sc);
            *reinterpret_cast<uint4 *>(dst + (size_t)a.row * in + k0) = *reinterpret_cast<const uint4 *>(o);
        }
    }
}

extern "C" void cuda_int4_dequant_bf16_v3(sl_bf16 *dst, const uint32_t *qt, const uint16_t *st,
                                          const uint8_t *zt, int out_dim, int in_dim, int group,
                                          cudaStream_t stream) {
    if (out_dim <= 0 || in_dim <= 0) return;
    const int nck = (in_dim + V3_KC - 1) / V3_KC, ng = in_dim / group;
    const size_t nu = w4a16_v3_qwords(out_dim, in_dim) / 4;
    int4_dequant_v3_kernel<<<grid_for(nu), 256, 0, stream>>>(
        reinterpret_cast<bf16 *>(dst), reinterpret_cast<const uint4 *>(qt),
        reinterpret_cast<const __half *>(st), zt, out_dim, in_dim, group, nck, ng, nu);
    CUDA_CHECK_LAUNCH();
}
