// convert.cu: fp32 <-> bf16 conversion of flat arrays.
//
// Used when weights are uploaded (the loader converts fp32 host tensors on
// the device) and by the tests. f32 -> bf16 rounds to nearest even, like
// sl_f32_to_bf16 in src/common.c, so host and device conversions agree bit
// for bit (NaN stays NaN). Memory-bound: a grid-stride loop over groups of 8
// elements (two 16-byte float4 on the fp32 side, one 16-byte vector of bf16)
// when both bases are 16-byte aligned; the last n % 8 elements, or all of
// them for unaligned views, go one at a time. The grid is capped at a few
// waves of blocks; each thread then loops.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "ops_cuda.h"

#define CONVERT_BLOCK 256
#define CONVERT_MAX_BLOCKS 4096 // ~ 30 blocks per SM on an H100: enough to fill it

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// kernels

// Elements [0, nvec*8) as vectors when vec, then [start, n) one by one.
static __global__ void f32_to_bf16_kernel(bf16 *__restrict__ out, const float *__restrict__ in,
                                          size_t n, bool vec) {
    size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t nthreads = (size_t)gridDim.x * blockDim.x;
    size_t start = 0;
    if (vec) {
        size_t nvec = n / 8;
        const float4 *in4 = reinterpret_cast<const float4 *>(in);
        uint4 *out8 = reinterpret_cast<uint4 *>(out);
        for (size_t v = tid; v < nvec; v += nthreads) {
            float4 a = in4[2 * v], b = in4[2 * v + 1];
            uint4 o;
            __nv_bfloat162 *p = reinterpret_cast<__nv_bfloat162 *>(&o);
            p[0] = __floats2bfloat162_rn(a.x, a.y);
            p[1] = __floats2bfloat162_rn(a.z, a.w);
            p[2] = __floats2bfloat162_rn(b.x, b.y);
            p[3] = __floats2bfloat162_rn(b.z, b.w);
            out8[v] = o;
        }
        start = nvec * 8;
    }
    for (size_t j = start + tid; j < n; j += nthreads) out[j] = __float2bfloat16_rn(in[j]);
}

static __global__ void bf16_to_f32_kernel(float *__restrict__ out, const bf16 *__restrict__ in,
                                          size_t n, bool vec) {
    size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t nthreads = (size_t)gridDim.x * blockDim.x;
    size_t start = 0;
    if (vec) {
        size_t nvec = n / 8;
        const uint4 *in8 = reinterpret_cast<const uint4 *>(in);
        float4 *out4 = reinterpret_cast<float4 *>(out);
        for (size_t v = tid; v < nvec; v += nthreads) {
            uint4 x = in8[v];
            const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&x);
            float2 f0 = __bfloat1622float2(p[0]), f1 = __bfloat1622float2(p[1]);
            float2 f2 = __bfloat1622float2(p[2]), f3 = __bfloat1622float2(p[3]);
            out4[2 * v] = make_float4(f0.x, f0.y, f1.x, f1.y);
            out4[2 * v + 1] = make_float4(f2.x, f2.y, f3.x, f3.y);
        }
        start = nvec * 8;
    }
    for (size_t j = start + tid; j < n; j += nthreads) out[j] = __bfloat162float(in[j]);
}

// ----------------------------------------------------------------------------
// launchers + entry points

// Blocks for `units` work items, one per thread, capped (threads loop).
static unsigned convert_grid(size_t units) {
    size_t blocks = (units + CONVERT_BLOCK - 1) / CONVERT_BLOCK;
    if (blocks < 1) blocks = 1;
    return (unsigned)(blocks < CONVERT_MAX_BLOCKS ? blocks : CONVERT_MAX_BLOCKS);
}

// out (n) bf16 = in (n) fp32, rounded to nearest even.
extern "C" void cuda_f32_to_bf16(sl_bf16 *out, const float *in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    bool vec = ((uintptr_t)out | (uintptr_t)in) % 16 == 0;
    f32_to_bf16_kernel<<<convert_grid(vec ? n / 8 + n % 8 : n), CONVERT_BLOCK, 0, stream>>>(
        reinterpret_cast<bf16 *>(out), in, n, vec);
    CUDA_CHECK_LAUNCH();
}

// out (n) fp32 = in (n) bf16 (exact).
extern "C" void cuda_bf16_to_f32(float *out, const sl_bf16 *in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    bool vec = ((uintptr_t)out | (uintptr_t)in) % 16 == 0;
    bf16_to_f32_kernel<<<convert_grid(vec ? n / 8 + n % 8 : n), CONVERT_BLOCK, 0, stream>>>(
        out, reinterpret_cast<const bf16 *>(in), n, vec);
    CUDA_CHECK_LAUNCH();
}
