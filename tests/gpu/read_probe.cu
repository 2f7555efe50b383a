// read_probe.cu: HBM read bandwidth by access pattern (a measurement tool for
// the W4A16 GEMV's layout, not part of the build). W warps in all each read
// bytes/W; warps are cut into groups of m consecutive warps; a group owns a
// contiguous range and its m warps interleave over it in 512-byte units (m =
// 1: every warp streams its own range; m = W: one sweep of the whole grid).
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a tests/gpu/read_probe.cu -o build/read_probe
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

static __device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 u;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w) : "l"(p));
    return u;
}

template <int U>
__global__ void probe(const uint4 *buf, size_t units_per_warp, int m, unsigned *sink) {
    const int lane = threadIdx.x & 31;
    const size_t W = (size_t)gridDim.x * (blockDim.x >> 5);
    const size_t w = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const size_t grp = w / m, i = w % m;
    const uint4 *base = buf + grp * (size_t)m * units_per_warp * 32 + lane;
    unsigned x = 0;
    for (size_t k = 0; k < units_per_warp; k += U) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = ld_stream(base + ((k + u) * m + i) * 32);
#pragma unroll
        for (int u = 0; u < U; u++) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (x == 0x12345678u) sink[0] = x;
    (void)W;
}

int main() {
    const size_t bytes = (size_t)462 << 20;
    uint4 *buf; unsigned *sink;
    cudaMalloc(&buf, bytes + (64 << 20)); cudaMalloc(&sink, 4);
    cudaMemset(buf, 1, bytes);
    int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    const int warps_per_block[] = {16, 32};
    const int ms[] = {1, 2, 4, 8, 16, 64, 1 << 30};
    printf("read of %zu MB, %d SMs\n", bytes >> 20, sms);
    for (int wb : warps_per_block) {
        const size_t W = (size_t)sms * wb;
        const size_t upw = (bytes / 512 / W) & ~(size_t)7;
        for (int m0 : ms) {
            int m = m0 > (int)W ? (int)W : m0;
            if (W % m) continue;
            float best = 1e9;
            for (int r = 0; r < 5; r++) {
                cudaEventRecord(a);
                probe<8><<<sms, wb * 32>>>(buf, upw, m, sink);
                cudaEventRecord(b); cudaEventSynchronize(b);
                float ms_; cudaEventElapsedTime(&ms_, a, b);
                if (ms_ < best) best = ms_;
            }
            printf("warps/SM %2d  group %5d warps: %7.1f us  %6.0f GB/s\n", wb, m, best * 1e3,
                   (double)upw * W * 512 / (best * 1e-3) / 1e9);
        }
    }
    cudaError_t e = cudaGetLastError();
    printf("%s\n", cudaGetErrorString(e));
    return 0;
}
