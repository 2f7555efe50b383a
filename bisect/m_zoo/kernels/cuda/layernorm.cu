// layernorm.cu: LayerNorm with bias, and the fused residual add + LayerNorm
// (the GPT-NeoX family's norms; the RMSNorm twins are in rmsnorm.cu).
//
//   layernorm:      out = (x - mean) / sqrt(var + eps) * w + b   (biased variance)
//   add_layernorm:  x = bf16(x + r) (stored back); out = layernorm of that rounded x
//
// One block per row, fp32 statistics in two passes (mean, then the squared
// deviations: no cancellation from E[x^2] - mean^2), the second pass and the
// output re-reading the row from L1/L2. Memory-bound like rmsnorm; the
// families that use it are not the hot path this was tuned for, so it keeps
// the simple shape (any dim, any alignment). As in add_rmsnorm, `out` may
// alias `r` (each element of r is read, then that element of out written, by
// the same thread) but not x.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "ops_cuda.h"

#define LN_MAX_THREADS 512

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// helpers

// Sum of v over the block; every thread gets it. Two barriers, so `red` can
// be reused by the next call.
static __device__ __forceinline__ float block_sum(float v) {
    __shared__ float red[LN_MAX_THREADS / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warps = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    float s = 0.0f;
    for (int k = 0; k < warps; k++) s += red[k];
    __syncthreads();
    return s;
}

// ----------------------------------------------------------------------------
// kernel

// Row blockIdx.x (rows strided by gridDim.x). b may be NULL.
template <bool ADD>
static __global__ void layernorm_kernel(bf16 *out, bf16 *x, const bf16 *r,
                                        const float *__restrict__ w, const float *__restrict__ b,
                                        int n, int dim, float eps) {
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        size_t base = (size_t)i * dim;
        float s = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = __bfloat162float(x[base + j]);
            if (ADD) {
                bf16 t = __float2bfloat16_rn(v + __bfloat162float(r[base + j]));
                x[base + j] = t;
                v = __bfloat162float(t);
            }
            s += v;
        }
        float mean = block_sum(s) / (float)dim;
        float ss = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float d = __bfloat162float(x[base + j]) - mean;
            ss += d * d;
        }
        float inv = 1.0f / sqrtf(block_sum(ss) / (float)dim + eps);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = (__bfloat162float(x[base + j]) - mean) * inv * w[j] + (b ? b[j] : 0.0f);
            out[base + j] = __float2bfloat16_rn(v);
        }
    }
}

// ----------------------------------------------------------------------------
// launcher

template <bool ADD>
static void layernorm_launch(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w,
                             const float *b, int n, int dim, float eps, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    int threads = (dim / 4 + 31) / 32 * 32; // about 4 elements per thread
    if (threads < 32) threads = 32;
    if (threads > LN_MAX_THREADS) threads = LN_MAX_THREADS;
    unsigned grid = (unsigned)(n < 65535 ? n : 65535);
    layernorm_kernel<ADD><<<grid, threads, 0, stream>>>(
        reinterpret_cast<bf16 *>(out), reinterpret_cast<bf16 *>(x),
        reinterpret_cast<const bf16 *>(r), w, b, n, dim, eps);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// entry points

extern "C" void cuda_layernorm(sl_bf16 *out, const sl_bf16 *x, const float *w, const float *b,
                               int n, int dim, float eps, cudaStream_t stream) {
    // the non-ADD kernel never writes x; the cast only shares the kernel
    layernorm_launch<false>(out, const_cast<sl_bf16 *>(x), NULL, w, b, n, dim, eps, stream);
}

extern "C" void cuda_add_layernorm(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w,
                                   const float *b, int n, int dim, float eps,
                                   cudaStream_t stream) {
    layernorm_launch<true>(out, x, r, w, b, n, dim, eps, stream);
}
