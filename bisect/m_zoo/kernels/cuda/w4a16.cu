// w4a16.cu: group-wise INT4 weights with bf16 activations (see w4a16.h).
//
// Decode GEMV (cuda_w4a16_gemv). The weights are the only large operand, so
// the kernel is built to stream them once at full bandwidth and to keep the
// dequantisation cheap enough to hide behind the loads:
//   - each lane loads 16 bytes (32 nibbles of one row) per tile and row with
//     a streaming load, one tile ahead; a warp covers 1024 inputs of GEMV_R
//     rows per tile;
//   - the x tile (n rows x 1024) is staged once per block in shared memory as
//     fp32, pre-multiplied by a power of two per nibble position (below), with
//     the plain sum of every 32 inputs beside it;
//   - a nibble becomes a float with one LOP3 and one FADD: OR-ing the masked
//     nibble into the mantissa of 2^23 gives 2^23 + q*16^e exactly (e = the
//     nibble's position, nibbles 5..7 first shifted down by 12 so every value
//     fits the 23-bit mantissa); subtracting 2^23 leaves q*16^e, and the
//     matching x was staged as x*16^-e (exact), so the FFMA needs no extra op;
//   - zero points come out of the inner loop: sum (q - z) x = sum q x - z sum x,
//     with the staged sums; the group scale is applied once per 32 inputs.
// Everything accumulates in fp32; lanes are reduced with shuffles at the end.
// The x tile is padded by 4 floats every 32 so that the 16-byte shared loads of
// a warp (lane stride 36 floats) hit distinct banks.
//
// Dequantise (cuda_int4_dequant_bf16): one thread per packed word, 8 bf16 out;
// the large-batch path then runs cuBLASLt on the bf16 matrix.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16.h"

#define GEMV_WARPS 4    // warps per block
#define GEMV_R 4        // rows per warp
#define GEMV_KT 1024    // inputs per tile (32 lanes x 32)
#define GEMV_PAD(k) ((k) + ((k) >> 5) * 4) // padded shared index of input k of a tile
#define GEMV_KT_PAD GEMV_PAD(GEMV_KT)

// ----------------------------------------------------------------------------
// decode GEMV

// 16^-e for nibble position p: e = 0, 1, 2, 3, 4, 2, 3, 4 (see unpack8).
static __device__ __forceinline__ float pos_scale(int p) {
    return p == 0 ? 1.0f
         : p == 1 ? 0.0625f
         : p == 2 || p == 5 ? 0.00390625f
         : p == 3 || p == 6 ? 0.000244140625f
                            : 0.0000152587890625f;
}

// f[p] = q_p * 16^e(p) exactly, q_p = nibble p of w.
static __device__ __forceinline__ void unpack8(uint32_t w, float f[8]) {
    const float M = 8388608.0f; // 2^23
    const uint32_t E = 0x4B000000u, hi = w >> 12;
    f[0] = __uint_as_float((w & 0xFu) | E) - M;
    f[1] = __uint_as_float((w & 0xF0u) | E) - M;
    f[2] = __uint_as_float((w & 0xF00u) | E) - M;
    f[3] = __uint_as_float((w & 0xF000u) | E) - M;
    f[4] = __uint_as_float((w & 0xF0000u) | E) - M;
    f[5] = __uint_as_float((hi & 0xF00u) | E) - M;
    f[6] = __uint_as_float((hi & 0xF000u) | E) - M;
    f[7] = __uint_as_float((hi & 0xF0000u) | E) - M;
}

static __device__ __forceinline__ uint32_t word_of(const uint4 &u, int i) {
    return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

// y (N, out) = x (N, in) @ dequant(W)^T (+ bias). Block: GEMV_WARPS warps,
// GEMV_R rows each; grid: ceil(out / (GEMV_WARPS * GEMV_R)).
template <int N>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
w4a16_gemv_kernel(__nv_bfloat16 *__restrict__ y, const __nv_bfloat16 *__restrict__ x,
                  const uint32_t *__restrict__ qw, const __half *__restrict__ sc,
                  const uint8_t *__restrict__ zz, const float *__restrict__ bias, int in,
                  int out, int group) {
    __shared__ __align__(16) float xs[N][GEMV_KT_PAD]; // x * 16^-e(k % 8), padded
    __shared__ float xsum[N][GEMV_KT / 32];           // plain sums of 32 inputs
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_R;
    const int words = in / 8, ng = in / group;
    const int ntiles = (in + GEMV_KT - 1) / GEMV_KT;
    float acc[GEMV_R][N];
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int b = 0; b < N; b++) acc[r][b] = 0.0f;

    // The packed weights of tile t + 1 are loaded while tile t is computed:
    // two tiles of loads in flight per thread.
    uint4 nwq[GEMV_R];
    float ns[GEMV_R], nz[GEMV_R];
    auto load_tile = [&](int t) {
        const int kc = t * GEMV_KT + lane * 32;
#pragma unroll
        for (int r = 0; r < GEMV_R; r++) {
            const int row = row0 + r;
            if (kc < in && row < out) {
                nwq[r] = __ldcs(reinterpret_cast<const uint4 *>(qw + (size_t)row * words + kc / 8));
                const size_t gi = (size_t)row * ng + kc / group;
                ns[r] = __half2float(sc[gi]);
                nz[r] = zz ? (float)zz[gi] : 8.0f;
            } else {
                nwq[r] = make_uint4(0, 0, 0, 0);
                ns[r] = 0.0f;
                nz[r] = 0.0f;
            }
        }
    };
    load_tile(0);

    for (int t = 0; t < ntiles; t++) {
        const int k0 = t * GEMV_KT, kc = k0 + lane * 32; // this lane's 32 inputs
        const bool live = kc < in;
        uint4 wq[GEMV_R];
        float s[GEMV_R], z[GEMV_R];
#pragma unroll
        for (int r = 0; r < GEMV_R; r++) wq[r] = nwq[r], s[r] = ns[r], z[r] = nz[r];
        if (t + 1 < ntiles) load_tile(t + 1);
        __syncthreads(); // every warp is done with the previous tile's xs
        {
            // thread i stages inputs [8i, 8i + 8) of the tile for every row of x
            const int kk = threadIdx.x * 8, k = k0 + kk;
#pragma unroll
            for (int b = 0; b < N; b++) {
                float v[8];
                if (k < in) {
                    const uint4 u = *reinterpret_cast<const uint4 *>(x + (size_t)b * in + k);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const uint32_t p = word_of(u, i);
                        v[2 * i] = __uint_as_float(p << 16);
                        v[2 * i + 1] = __uint_as_float(p & 0xFFFF0000u);
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++) v[i] = 0.0f;
                }
                float sum = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
                float4 *dst = reinterpret_cast<float4 *>(&xs[b][GEMV_PAD(kk)]);
                dst[0] = make_float4(v[0] * pos_scale(0), v[1] * pos_scale(1),
                                     v[2] * pos_scale(2), v[3] * pos_scale(3));
                dst[1] = make_float4(v[4] * pos_scale(4), v[5] * pos_scale(5),
                                     v[6] * pos_scale(6), v[7] * pos_scale(7));
                // the 4 threads of one 32-input chunk are adjacent lanes
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                if ((threadIdx.x & 3) == 0) xsum[b][threadIdx.x >> 2] = sum;
            }
        }
        __syncthreads();
        if (live) {
            float dot[GEMV_R][N];
#pragma unroll
            for (int r = 0; r < GEMV_R; r++)
#pragma unroll
                for (int b = 0; b < N; b++) dot[r][b] = 0.0f;
#pragma unroll
            for (int wi = 0; wi < 4; wi++) {
                float f[GEMV_R][8];
#pragma unroll
                for (int r = 0; r < GEMV_R; r++) unpack8(word_of(wq[r], wi), f[r]);
#pragma unroll
                for (int b = 0; b < N; b++) {
                    const float4 *src =
                        reinterpret_cast<const float4 *>(&xs[b][GEMV_PAD(lane * 32) + wi * 8]);
                    const float4 a = src[0], c = src[1];
#pragma unroll
                    for (int r = 0; r < GEMV_R; r++) {
                        float d = dot[r][b];
                        d = fmaf(f[r][0], a.x, d);
                        d = fmaf(f[r][1], a.y, d);
                        d = fmaf(f[r][2], a.z, d);
                        d = fmaf(f[r][3], a.w, d);
                        d = fmaf(f[r][4], c.x, d);
                        d = fmaf(f[r][5], c.y, d);
                        d = fmaf(f[r][6], c.z, d);
                        d = fmaf(f[r][7], c.w, d);
                        dot[r][b] = d;
                    }
                }
            }
#pragma unroll
            for (int b = 0; b < N; b++) {
                const float xsb = xsum[b][lane];
#pragma unroll
                for (int r = 0; r < GEMV_R; r++)
                    acc[r][b] = fmaf(s[r], fmaf(-z[r], xsb, dot[r][b]), acc[r][b]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int b = 0; b < N; b++) {
            float v = acc[r][b];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            acc[r][b] = v;
        }
    // lane j writes element j of the (row, b) results: spread the stores
#pragma unroll
    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
        for (int b = 0; b < N; b++) {
            const int row = row0 + r;
            if (lane == ((r * N + b) & 31) && row < out)
                y[(size_t)b * out + row] = __float2bfloat16_rn(acc[r][b] + (bias ? bias[row] : 0.0f));
        }
}

template <int N>
static void launch_gemv(__nv_bfloat16 *y, const __nv_bfloat16 *x, const uint32_t *qw,
                        const __half *sc, const uint8_t *zz, const float *bias, int in, int out,
                        int group, cudaStream_t s) {
    const int rows_per_block = GEMV_WARPS * GEMV_R;
    const unsigned blocks = (unsigned)((out + rows_per_block - 1) / rows_per_block);
    w4a16_gemv_kernel<N><<<blocks, GEMV_WARPS * 32, 0, s>>>(y, x, qw, sc, zz, bias, in, out, group);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_w4a16_gemv(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                                const uint16_t *scales, const uint8_t *zeros, const float *bias,
                                int n, int in_dim, int out_dim, int group, cudaStream_t stream) {
    if (n <= 0 || out_dim <= 0) return;
    if (n > W4A16_GEMV_MAX_N || group <= 0 || group % 32 || in_dim % group)
        SL_FATAL("sluice", "W4A16 GEMV: n must be 1..8, group a multiple of 32 dividing in_dim",
                 "cuda_w4a16_gemv");
    __nv_bfloat16 *yy = reinterpret_cast<__nv_bfloat16 *>(y);
    const __nv_bfloat16 *xx = reinterpret_cast<const __nv_bfloat16 *>(x);
    const __half *sc = reinterpret_cast<const __half *>(scales);
    switch (n) {
    case 1: launch_gemv<1>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    case 2: launch_gemv<2>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    case 3: launch_gemv<3>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    case 4: launch_gemv<4>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    case 5: launch_gemv<5>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    case 6: launch_gemv<6>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    case 7: launch_gemv<7>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    default: launch_gemv<8>(yy, xx, qweight, sc, zeros, bias, in_dim, out_dim, group, stream); break;
    }
}

// ----------------------------------------------------------------------------
// dequantise to bf16

static __global__ void int4_dequant_kernel(__nv_bfloat16 *__restrict__ dst,
                                           const uint32_t *__restrict__ qw,
                                           const __half *__restrict__ sc,
                                           const uint8_t *__restrict__ zz, int in, int group,
                                           size_t nwords) {
    const int words = in / 8, ng = in / group;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nwords;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / words;
        const int k = (int)(i % words) * 8;
        const size_t gi = row * ng + k / group;
        const float s = __half2float(sc[gi]), z = zz ? (float)zz[gi] : 8.0f;
        const uint32_t w = qw[i];
        __align__(16) __nv_bfloat16 o[8];
#pragma unroll
        for (int p = 0; p < 8; p++) o[p] = __float2bfloat16_rn(((float)((w >> (4 * p)) & 15u) - z) * s);
        *reinterpret_cast<uint4 *>(dst + i * 8) = *reinterpret_cast<const uint4 *>(o);
    }
}

extern "C" void cuda_int4_dequant_bf16(sl_bf16 *dst, const uint32_t *qweight,
                                       const uint16_t *scales, const uint8_t *zeros, int out_dim,
                                       int in_dim, int group, cudaStream_t stream) {
    size_t nwords = (size_t)out_dim * (in_dim / 8);
    if (!nwords) return;
    size_t blocks = (nwords + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    int4_dequant_kernel<<<(unsigned)blocks, 256, 0, stream>>>(
        reinterpret_cast<__nv_bfloat16 *>(dst), qweight, reinterpret_cast<const __half *>(scales),
        zeros, in_dim, group, nwords);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// random weights (the twin of cpu_int4_fill_random)

static __device__ __host__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __global__ void int4_fill_kernel(uint32_t *qw, __half *sc, uint8_t *zz, size_t nw,
                                        size_t ns, uint64_t key, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nw;
         i += (size_t)gridDim.x * blockDim.x) {
        qw[i] = (uint32_t)mix64(key ^ (i * 0x9e3779b97f4a7c15ull + 1));
        if (i < ns) {
            const uint64_t r = mix64(key ^ (i * 0x9e3779b97f4a7c15ull + 2));
            const float u = (float)(r >> 40) * (1.0f / 16777216.0f);
            sc[i] = __float2half_rn(scale * (0.5f + u));
            if (zz) zz[i] = (uint8_t)((r >> 8) & 15u);
        }
    }
}

extern "C" void cuda_int4_fill_random(uint32_t *qweight, uint16_t *scales, uint8_t *zeros,
                                      int out_dim, int in_dim, int group, uint64_t seed,
                                      float scale, cudaStream_t stream) {
    size_t nw = (size_t)out_dim * (in_dim / 8), ns = (size_t)out_dim * (in_dim / group);
    if (!nw) return;
    size_t blocks = (nw + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    int4_fill_kernel<<<(unsigned)blocks, 256, 0, stream>>>(
        qweight, reinterpret_cast<__half *>(scales), zeros, nw, ns,
        mix64(seed + 0x9e3779b97f4a7c15ull), scale);
    CUDA_CHECK_LAUNCH();
}
