// add.cu: x += r for bf16 activations (fp32 add, one rounding), the parallel
// residual's sum of the attention and MLP outputs before their one
// all-reduce. Elementwise, grid-stride over size_t indices.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "ops_cuda.h"

#define ADD_BLOCK 256

typedef __nv_bfloat16 bf16;

static __global__ void add_kernel(bf16 *__restrict__ x, const bf16 *__restrict__ r, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16_rn(__bfloat162float(x[i]) + __bfloat162float(r[i]));
}

// x (n) += r (n); x and r must not overlap.
extern "C" void cuda_add(sl_bf16 *x, const sl_bf16 *r, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    size_t blocks = (n + ADD_BLOCK - 1) / ADD_BLOCK;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    add_kernel<<<(unsigned)blocks, ADD_BLOCK, 0, stream>>>(
        reinterpret_cast<bf16 *>(x), reinterpret_cast<const bf16 *>(r), n);
    CUDA_CHECK_LAUNCH();
}
