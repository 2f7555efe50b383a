// random.cu: fills a tensor with normal(mean, std) values on the GPU, for
// benchmarks with random weights (an 8B-parameter model fills in a few ms
// instead of minutes on the host).
//
// The generator is counter-based (splitmix64 of (seed, index), Box-Muller), the
// same as cpu_fill_normal, so the order of work does not matter; values agree
// with the CPU twin up to the last bits of logf/cosf.
#include <cuda_bf16.h>

#include "ops_cuda.h"

static __device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __device__ __forceinline__ float normal_at(uint64_t key, size_t i, float mean, float std) {
    uint64_t r = mix64(key ^ ((uint64_t)i * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull));
    float u1 = ((float)(r >> 40) + 1.0f) * (1.0f / 16777216.0f);
    float u2 = (float)((r >> 16) & 0xffffff) * (1.0f / 16777216.0f);
    return mean + std * sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

template <typename T>
static __global__ void fill_normal_kernel(T *dst, size_t n, uint64_t key, float mean, float std) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = normal_at(key, i, mean, std);
        if constexpr (sizeof(T) == 2) dst[i] = __float2bfloat16(v);
        else dst[i] = v;
    }
}

static uint64_t host_key(uint64_t seed) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <typename T>
static void launch_fill(T *dst, size_t n, uint64_t seed, float mean, float std, cudaStream_t s) {
    if (n == 0) return;
    size_t blocks = (n + 255) / 256;
    if (blocks > 65536) blocks = 65536; // grid-stride beyond this
    fill_normal_kernel<T><<<(unsigned)blocks, 256, 0, s>>>(dst, n, host_key(seed), mean, std);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_fill_normal_bf16(sl_bf16 *dst, size_t n, uint64_t seed, float mean, float std,
                                      cudaStream_t stream) {
    launch_fill(reinterpret_cast<__nv_bfloat16 *>(dst), n, seed, mean, std, stream);
}

extern "C" void cuda_fill_normal_f32(float *dst, size_t n, uint64_t seed, float mean, float std,
                                     cudaStream_t stream) {
    launch_fill(dst, n, seed, mean, std, stream);
}
