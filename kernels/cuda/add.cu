// add.cu: x += r for the activations, bf16 (fp32 add, one rounding) or fp32
// (--dtype f32: the CPU's add, bit for bit): the parallel residual's sum of
// the attention and MLP outputs before their one all-reduce, and GPT-2's
// learned positions joining the token embeddings. Elementwise, grid-stride
// over size_t indices.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh" // ActT: the activation type <-> float
#include "ops_cuda.h"

#define ADD_BLOCK 256

typedef __nv_bfloat16 bf16;

template <typename T>
static __global__ void add_kernel(T *__restrict__ x, const T *__restrict__ r, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = ActT<T>::store(ActT<T>::load(x[i]) + ActT<T>::load(r[i]));
}

template <typename T>
static void add_launch(void *x, const void *r, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    size_t blocks = (n + ADD_BLOCK - 1) / ADD_BLOCK;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    add_kernel<T><<<(unsigned)blocks, ADD_BLOCK, 0, stream>>>(static_cast<T *>(x),
                                                              static_cast<const T *>(r), n);
    CUDA_CHECK_LAUNCH();
}

// x (n) += r (n); x and r must not overlap.
extern "C" void cuda_add(sl_bf16 *x, const sl_bf16 *r, size_t n, cudaStream_t stream) {
    add_launch<bf16>(x, r, n, stream);
}

extern "C" void cuda_add_ex(void *x, const void *r, size_t n, int act_f32, cudaStream_t stream) {
    if (act_f32) add_launch<float>(x, r, n, stream);
    else add_launch<bf16>(x, r, n, stream);
}
