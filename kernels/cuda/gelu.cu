// gelu.cu: the GELU activations of the MLP: plain (GPT-NeoX: out = gelu(x))
// and gated (GeGLU, Gemma: out = gelu(gate) * up with gu = [gate | up]),
// each in the tanh approximation (gelu_pytorch_tanh / gelu_new) or the exact
// erf form (gelu). Activations bf16 or fp32 (--dtype f32); fp32 math with the
// accurate tanhf / erff, as the CPU twin, rounded once to the activation type.
// Elementwise and memory-bound: a 2-D grid (column blocks x rows, rows
// strided past 65535), one element per thread.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh" // ActT: the activation type <-> float
#include "ops_cuda.h"

#define GELU_BLOCK 256
#define GELU_MAX_GRID_Y 65535

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float gelu_f(float x, bool tanh_approx) {
    if (tanh_approx) {
        const float k = 0.7978845608028654f; // sqrt(2 / pi)
        return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

// GATED: in (n, 2*hidden) = [gate | up]; else in (n, hidden). out (n, hidden).
template <typename T, bool GATED, bool TANH>
static __global__ void gelu_kernel(T *out, const T *in, int n, int hidden) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hidden) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        float v;
        if (GATED) {
            const T *row = in + (size_t)i * 2 * hidden;
            v = gelu_f(ActT<T>::load(row[c]), TANH) * ActT<T>::load(row[hidden + c]);
        } else {
            v = gelu_f(ActT<T>::load(in[(size_t)i * hidden + c]), TANH);
        }
        out[(size_t)i * hidden + c] = ActT<T>::store(v);
    }
}

template <typename T>
static void gelu_launch(void *out, const void *in, int n, int hidden, int gated, int tanh_approx,
                        cudaStream_t stream) {
    if (n <= 0 || hidden <= 0) return;
    dim3 grid((unsigned)((hidden + GELU_BLOCK - 1) / GELU_BLOCK),
              (unsigned)(n < GELU_MAX_GRID_Y ? n : GELU_MAX_GRID_Y));
    T *o = static_cast<T *>(out);
    const T *x = static_cast<const T *>(in);
    if (gated && tanh_approx) gelu_kernel<T, true, true><<<grid, GELU_BLOCK, 0, stream>>>(o, x, n, hidden);
    else if (gated) gelu_kernel<T, true, false><<<grid, GELU_BLOCK, 0, stream>>>(o, x, n, hidden);
    else if (tanh_approx) gelu_kernel<T, false, true><<<grid, GELU_BLOCK, 0, stream>>>(o, x, n, hidden);
    else gelu_kernel<T, false, false><<<grid, GELU_BLOCK, 0, stream>>>(o, x, n, hidden);
    CUDA_CHECK_LAUNCH();
}

// out (n, hidden); see the file comment. out may alias in when not gated.
extern "C" void cuda_gelu(sl_bf16 *out, const sl_bf16 *in, int n, int hidden, int gated,
                          int tanh_approx, cudaStream_t stream) {
    gelu_launch<bf16>(out, in, n, hidden, gated, tanh_approx, stream);
}

extern "C" void cuda_gelu_ex(void *out, const void *in, int n, int hidden, int gated,
                             int tanh_approx, int act_f32, cudaStream_t stream) {
    if (act_f32) gelu_launch<float>(out, in, n, hidden, gated, tanh_approx, stream);
    else gelu_launch<bf16>(out, in, n, hidden, gated, tanh_approx, stream);
}
