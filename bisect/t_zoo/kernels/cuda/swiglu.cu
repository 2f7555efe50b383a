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
