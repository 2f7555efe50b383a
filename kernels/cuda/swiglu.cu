// swiglu.cu: the SwiGLU gate of the MLP, out = silu(gate) * up.
//
// gu (n, 2*hidden) is the fused gate|up projection, gate first; out (n,
// hidden). Math in fp32 as the CPU twin writes it, g / (1 + expf(-g)) * u
// with the accurate expf, rounded once to bf16. Memory-bound and elementwise:
// a 2-D grid (column blocks x rows, rows strided past 65535) so no thread
// divides by the row length; with hidden % 8 == 0 and 16-byte aligned bases,
// each thread moves 16-byte vectors (two loads, one store of 8 bf16), else
// single elements.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh"
#include "ops_cuda.h"

#define SWIGLU_BLOCK 256
#define SWIGLU_MAX_GRID_Y 65535

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// helpers

static __device__ __forceinline__ float silu_mul(float g, float u) {
    return g / (1.0f + expf(-g)) * u;
}

// ----------------------------------------------------------------------------
// kernels

// hv = hidden / 8: vectors per output row; gate vectors of row i start at
// i * 2 * hv, up vectors at i * 2 * hv + hv.
static __global__ void swiglu_vec_kernel(uint4 *__restrict__ out, const uint4 *__restrict__ gu,
                                         int n, int hv) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hv) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        const uint4 *g_row = gu + (size_t)i * 2 * hv;
        uint4 gv = g_row[c], uv = g_row[hv + c];
        const __nv_bfloat162 *g2 = reinterpret_cast<const __nv_bfloat162 *>(&gv);
        const __nv_bfloat162 *u2 = reinterpret_cast<const __nv_bfloat162 *>(&uv);
        uint4 ov;
        __nv_bfloat162 *o2 = reinterpret_cast<__nv_bfloat162 *>(&ov);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 g = __bfloat1622float2(g2[k]), u = __bfloat1622float2(u2[k]);
            o2[k] = __floats2bfloat162_rn(silu_mul(g.x, u.x), silu_mul(g.y, u.y));
        }
        out[(size_t)i * hv + c] = ov;
    }
}

static __global__ void swiglu_scalar_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ gu,
                                            int n, int hidden) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hidden) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        const bf16 *g_row = gu + (size_t)i * 2 * hidden;
        float g = __bfloat162float(g_row[c]), u = __bfloat162float(g_row[hidden + c]);
        out[(size_t)i * hidden + c] = __float2bfloat16_rn(silu_mul(g, u));
    }
}

// ----------------------------------------------------------------------------
// launcher + entry point

// out (n, hidden) = silu(gu[:, :hidden]) * gu[:, hidden:]; gu (n, 2*hidden).
// out must not alias gu.
extern "C" void cuda_swiglu(sl_bf16 *out, const sl_bf16 *gu, int n, int hidden,
                            cudaStream_t stream) {
    if (n <= 0 || hidden <= 0) return;
    bool vec = hidden % 8 == 0 && ((uintptr_t)out | (uintptr_t)gu) % 16 == 0;
    int cols = vec ? hidden / 8 : hidden;
    dim3 grid((unsigned)((cols + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK),
              (unsigned)(n < SWIGLU_MAX_GRID_Y ? n : SWIGLU_MAX_GRID_Y));
    if (vec)
        swiglu_vec_kernel<<<grid, SWIGLU_BLOCK, 0, stream>>>(
            reinterpret_cast<uint4 *>(out), reinterpret_cast<const uint4 *>(gu), n, cols);
    else
        swiglu_scalar_kernel<<<grid, SWIGLU_BLOCK, 0, stream>>>(
            reinterpret_cast<bf16 *>(out), reinterpret_cast<const bf16 *>(gu), n, hidden);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// generic: activation type TI, output TI or FP8 codes + a scale per row (the
// quantisation of the down projection's input, fused). One block per row
// (rows strided over the grid); a dynamic scale takes a first pass for the
// row's absmax of silu(g) * u, computed in fp32 exactly as the output is.

template <typename TI, bool FP8>
static __global__ void __launch_bounds__(SWIGLU_BLOCK)
    swiglu_gen_kernel(TI *__restrict__ out, uint8_t *__restrict__ q_out,
                      float *__restrict__ scales, const TI *__restrict__ gu, int n, int hidden,
                      float static_scale) {
    __shared__ float red[SWIGLU_BLOCK / 32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const TI *g_row = gu + (size_t)i * 2 * hidden;
        if (!FP8) {
            for (int c = threadIdx.x; c < hidden; c += blockDim.x)
                out[(size_t)i * hidden + c] = ActT<TI>::store(
                    silu_mul(ActT<TI>::load(g_row[c]), ActT<TI>::load(g_row[hidden + c])));
            continue;
        }
        float s = static_scale;
        if (!(s > 0.0f)) {
            float mx = 0.0f;
            for (int c = threadIdx.x; c < hidden; c += blockDim.x)
                mx = fmaxf(mx, fabsf(silu_mul(ActT<TI>::load(g_row[c]),
                                              ActT<TI>::load(g_row[hidden + c]))));
            s = fp8_dyn_scale(block_row_max(mx, red));
        }
        const float inv = 1.0f / s;
        for (int c = threadIdx.x; c < hidden; c += blockDim.x)
            q_out[(size_t)i * hidden + c] = f32_to_e4m3(
                silu_mul(ActT<TI>::load(g_row[c]), ActT<TI>::load(g_row[hidden + c])) * inv);
        if (threadIdx.x == 0) scales[i] = s;
        __syncthreads(); // red is reused by the next row
    }
}

// bf16 in, FP8 out, hidden % 8 == 0 and 16-byte aligned gu, 8-byte aligned
// q: 16-byte loads, 8 codes stored at once. A static scale (s > 0) takes the
// 2-D grid of swiglu_vec_kernel; a dynamic one a block per row (rows strided)
// whose first pass finds the row's absmax (the second re-reads the row from
// L2). The same fp32 math and rounding as swiglu_gen_kernel.
static __device__ __forceinline__ void silu_mul8(uint4 gv, uint4 uv, float o[8]) {
    const __nv_bfloat162 *g2 = reinterpret_cast<const __nv_bfloat162 *>(&gv);
    const __nv_bfloat162 *u2 = reinterpret_cast<const __nv_bfloat162 *>(&uv);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 g = __bfloat1622float2(g2[k]), u = __bfloat1622float2(u2[k]);
        o[2 * k] = silu_mul(g.x, u.x);
        o[2 * k + 1] = silu_mul(g.y, u.y);
    }
}

static __device__ __forceinline__ uint2 e4m3x8(const float o[8], float inv) {
    uint32_t q[4];
#pragma unroll
    for (int e = 0; e < 4; e++)
        q[e] = __nv_cvt_float2_to_fp8x2(make_float2(o[2 * e] * inv, o[2 * e + 1] * inv),
                                        __NV_SATFINITE, __NV_E4M3);
    return make_uint2(q[0] | q[1] << 16, q[2] | q[3] << 16);
}

static __global__ void swiglu_fp8_static_kernel(uint2 *__restrict__ q, float *__restrict__ scales,
                                                const uint4 *__restrict__ gu, int n, int hv,
                                                float s) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hv) return;
    const float inv = 1.0f / s;
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        const uint4 *g_row = gu + (size_t)i * 2 * hv;
        float o[8];
        silu_mul8(g_row[c], g_row[hv + c], o);
        q[(size_t)i * hv + c] = e4m3x8(o, inv);
        if (c == 0) scales[i] = s;
    }
}

static __global__ void __launch_bounds__(SWIGLU_BLOCK)
    swiglu_fp8_dyn_kernel(uint2 *__restrict__ q, float *__restrict__ scales,
                          const uint4 *__restrict__ gu, int n, int hv) {
    __shared__ float red[SWIGLU_BLOCK / 32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const uint4 *g_row = gu + (size_t)i * 2 * hv;
        float mx = 0.0f;
#pragma unroll 4
        for (int c = threadIdx.x; c < hv; c += blockDim.x) {
            float o[8];
            silu_mul8(g_row[c], g_row[hv + c], o);
#pragma unroll
            for (int e = 0; e < 8; e++) mx = fmaxf(mx, fabsf(o[e]));
        }
        const float s = fp8_dyn_scale(block_row_max(mx, red));
        const float inv = 1.0f / s;
#pragma unroll 4
        for (int c = threadIdx.x; c < hv; c += blockDim.x) {
            float o[8];
            silu_mul8(g_row[c], g_row[hv + c], o);
            q[(size_t)i * hv + c] = e4m3x8(o, inv);
        }
        if (threadIdx.x == 0) scales[i] = s;
        __syncthreads(); // red is reused by the next row
    }
}

extern "C" void cuda_swiglu_ex(void *out, uint8_t *q_out, float *scales, const void *gu, int n,
                               int hidden, int act_f32, float static_scale,
                               cudaStream_t stream) {
    if (n <= 0 || hidden <= 0) return;
    if (!act_f32 && !q_out) {
        cuda_swiglu((sl_bf16 *)out, (const sl_bf16 *)gu, n, hidden, stream);
        return;
    }
    unsigned grid = (unsigned)(n < SWIGLU_MAX_GRID_Y ? n : SWIGLU_MAX_GRID_Y);
    if (!act_f32 && hidden % 8 == 0 && (uintptr_t)gu % 16 == 0 && (uintptr_t)q_out % 8 == 0) {
        const int hv = hidden / 8;
        uint2 *q = reinterpret_cast<uint2 *>(q_out);
        const uint4 *g = reinterpret_cast<const uint4 *>(gu);
        if (static_scale > 0.0f) {
            dim3 g2((unsigned)((hv + SWIGLU_BLOCK - 1) / SWIGLU_BLOCK), grid);
            swiglu_fp8_static_kernel<<<g2, SWIGLU_BLOCK, 0, stream>>>(q, scales, g, n, hv,
                                                                      static_scale);
        } else {
            swiglu_fp8_dyn_kernel<<<grid, SWIGLU_BLOCK, 0, stream>>>(q, scales, g, n, hv);
        }
        CUDA_CHECK_LAUNCH();
        return;
    }
#define SW_GEN(T, F)                                                                   \
    swiglu_gen_kernel<T, F><<<grid, SWIGLU_BLOCK, 0, stream>>>(                        \
        static_cast<T *>(out), q_out, scales, static_cast<const T *>(gu), n, hidden,   \
        static_scale)
    if (act_f32) {
        if (q_out) SW_GEN(float, true); else SW_GEN(float, false);
    } else {
        SW_GEN(bf16, true);
    }
#undef SW_GEN
    CUDA_CHECK_LAUNCH();
}
