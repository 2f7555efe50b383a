// argmax.cu: greedy decoding on the GPU: the index of each row's largest
// logit, so a greedy step copies n token ids to the host instead of n rows of
// vocabulary-sized logits (256 x 128k fp32 = 131 MB a step for Llama-3).
//
// One block per row; each thread scans a strided slice keeping (value, index),
// then a warp-shuffle and shared-memory reduction. Ties go to the lowest index
// and NaN counts as -inf, exactly like cpu_argmax_rows and the CPU sampler.
#include <math.h>

#include "ops_cuda.h"

#define ARGMAX_THREADS 1024

static __device__ __forceinline__ void better(float &v, int &i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

static __global__ void argmax_rows_kernel(int32_t *out, const float *logits, int vocab) {
    const float *row = logits + (size_t)blockIdx.x * vocab;
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float x = row[j];
        if (isnan(x)) x = -INFINITY;
        better(v, idx, x, j);
    }
    for (int off = 16; off > 0; off >>= 1) {
        float v2 = __shfl_down_sync(0xffffffffu, v, off);
        int i2 = __shfl_down_sync(0xffffffffu, idx, off);
        better(v, idx, v2, i2);
    }
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int si[ARGMAX_THREADS / 32];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / 32;
        v = lane < nw ? sv[lane] : -INFINITY;
        idx = lane < nw ? si[lane] : 0x7fffffff;
        for (int off = 16; off > 0; off >>= 1) {
            float v2 = __shfl_down_sync(0xffffffffu, v, off);
            int i2 = __shfl_down_sync(0xffffffffu, idx, off);
            better(v, idx, v2, i2);
        }
        if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx; // all -inf: token 0
    }
}

extern "C" void cuda_argmax_rows(int32_t *out, const float *logits, int n, int vocab,
                                 cudaStream_t stream) {
    if (n <= 0) return;
    int threads = vocab >= ARGMAX_THREADS ? ARGMAX_THREADS : ((vocab + 31) / 32) * 32;
    argmax_rows_kernel<<<n, threads, 0, stream>>>(out, logits, vocab);
    CUDA_CHECK_LAUNCH();
}
