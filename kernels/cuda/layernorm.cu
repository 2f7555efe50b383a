// layernorm.cu: LayerNorm with bias, and the fused residual add + LayerNorm
// (the norms of the LayerNorm families; the RMSNorm twins are in rmsnorm.cu).
//
//   layernorm:      out = (x - mean) / sqrt(var + eps) * w + b   (biased variance)
//   add_layernorm:  x = T(x + r) (stored back); out = layernorm of that rounded x
//
// T is the activation type, bf16 or fp32 (--dtype f32: the CPU backend's
// numbers on the GPU). One block per row, fp32 statistics in two passes
// (mean, then the squared deviations: no cancellation from E[x^2] - mean^2),
// the second pass and the output re-reading the row from L1/L2. Memory-bound
// like rmsnorm; the families that use it are not the hot path this was tuned
// for, so it keeps the simple shape (any dim, any alignment). As in
// add_rmsnorm, `out` may alias `r` (each element of r is read, then that
// element of out written, by the same thread); the plain form may also run in
// place (out == x: BLOOM's embedding norm), since the last pass reads each
// element of x just before the same thread overwrites it. The add form's out
// must not alias x.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh" // ActT: the activation type <-> float
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

// Row blockIdx.x (rows strided by gridDim.x); x, r, out (n, dim) of T, w and
// b (dim) fp32, b may be NULL. No __restrict__: out may alias r, or x when
// !ADD (file comment).
template <typename T, bool ADD>
static __global__ void layernorm_kernel(T *out, T *x, const T *r, const float *__restrict__ w,
                                        const float *__restrict__ b, int n, int dim, float eps) {
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        size_t base = (size_t)i * dim;
        float s = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = ActT<T>::load(x[base + j]);
            if (ADD) {
                T t = ActT<T>::store(v + ActT<T>::load(r[base + j]));
                x[base + j] = t;
                v = ActT<T>::load(t);
            }
            s += v;
        }
        float mean = block_sum(s) / (float)dim;
        float ss = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float d = ActT<T>::load(x[base + j]) - mean;
            ss += d * d;
        }
        float inv = 1.0f / sqrtf(block_sum(ss) / (float)dim + eps);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = (ActT<T>::load(x[base + j]) - mean) * inv * w[j] + (b ? b[j] : 0.0f);
            out[base + j] = ActT<T>::store(v);
        }
    }
}

// ----------------------------------------------------------------------------
// launcher

template <typename T, bool ADD>
static void layernorm_launch(void *out, void *x, const void *r, const float *w, const float *b,
                             int n, int dim, float eps, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    int threads = (dim / 4 + 31) / 32 * 32; // about 4 elements per thread
    if (threads < 32) threads = 32;
    if (threads > LN_MAX_THREADS) threads = LN_MAX_THREADS;
    unsigned grid = (unsigned)(n < 65535 ? n : 65535);
    layernorm_kernel<T, ADD><<<grid, threads, 0, stream>>>(
        static_cast<T *>(out), static_cast<T *>(x), static_cast<const T *>(r), w, b, n, dim,
        eps);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// entry points

extern "C" void cuda_layernorm(sl_bf16 *out, const sl_bf16 *x, const float *w, const float *b,
                               int n, int dim, float eps, cudaStream_t stream) {
    // the non-ADD kernel never writes x; the cast only shares the kernel
    layernorm_launch<bf16, false>(out, const_cast<sl_bf16 *>(x), NULL, w, b, n, dim, eps, stream);
}

extern "C" void cuda_add_layernorm(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w,
                                   const float *b, int n, int dim, float eps,
                                   cudaStream_t stream) {
    layernorm_launch<bf16, true>(out, x, r, w, b, n, dim, eps, stream);
}

extern "C" void cuda_layernorm_ex(void *out, void *x, const void *r, const float *w,
                                  const float *b, int n, int dim, float eps, int act_f32,
                                  cudaStream_t stream) {
    if (act_f32) {
        if (r) layernorm_launch<float, true>(out, x, r, w, b, n, dim, eps, stream);
        else layernorm_launch<float, false>(out, x, NULL, w, b, n, dim, eps, stream);
    } else {
        if (r) layernorm_launch<bf16, true>(out, x, r, w, b, n, dim, eps, stream);
        else layernorm_launch<bf16, false>(out, x, NULL, w, b, n, dim, eps, stream);
    }
}
