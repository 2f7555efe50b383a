// wgmma_probe.cu: checks the wgmma helpers of kernels/cuda/wgmma_dev.cuh on
// one warpgroup against a CPU product, with the operand layouts the wgmma
// prefill attention kernel uses (128-byte swizzle; to diagnose a failure,
// the MN-major descriptor's offsets swapped). A development probe for GPU hosts, not part of `make`:
//   nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Ikernels/cuda \
//        tests/gpu/wgmma_probe.cu -o build/wgmma_probe && build/wgmma_probe
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "wgmma_dev.cuh"

typedef __nv_bfloat16 bf16;
#define R 128 // rows of every tile (Q: 128 rows, the warpgroup takes 64 of them)

// element (r, k) of a [R][128] tile in the 128-byte swizzled layout (wg_sw128_off)
static int at(int r, int k) {
    const int c = k / 8;
    return ((c >> 3) * (R * 128) + (r >> 3) * 1024 + (r & 7) * 128 + (((c & 7) ^ (r & 7)) << 4)) / 2 +
           k % 8;
}

// mode 0: S = Q[wg rows] K^T (both K-major); mode 1: O = P V (P from
// registers, V MN-major). swap: LBO and SBO exchanged.
__global__ void probe(const bf16 *q, const bf16 *k, const float *p, float *out, int mode, int swap,
                      int wgsel) {
    extern __shared__ __align__(1024) unsigned char raw[];
    bf16 *sq = reinterpret_cast<bf16 *>(raw + ((1024 - ((uint32_t)__cvta_generic_to_shared(raw) & 1023)) & 1023));
    bf16 *sk = sq + R * 128;
    for (int i = threadIdx.x; i < R * 128; i += 128) sq[i] = q[i], sk[i] = k[i];
    fence_proxy_async();
    __syncthreads();
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float d[64];
    for (int i = 0; i < 64; i++) d[i] = 0.f;
    // K-major: LBO unused, SBO 1024; MN-major: LBO R * 128 (next 64 columns), SBO 1024
    const uint32_t LK = 16, SK = 1024, LV = swap ? 1024 : R * 128, SV = swap ? R * 128 : 1024;
    wg_fence();
    if (mode == 0) {
        for (int ks = 0; ks < 8; ks++)
            wg_mma_ss_128(d, wg_desc(sq + wgsel * 4096 + (ks >> 2) * R * 64 + (ks & 3) * 16, LK, SK),
                          wg_desc(sk + (ks >> 2) * R * 64 + (ks & 3) * 16, LK, SK), ks);
    } else {
        for (int kk = 0; kk < 8; kk++) {
            uint32_t a[4];
            const int r = w * 16 + lane / 4, c = kk * 16 + (lane % 4) * 2;
            auto pk = [&](int rr, int cc) {
                __nv_bfloat162 v = __floats2bfloat162_rn(p[rr * 128 + cc], p[rr * 128 + cc + 1]);
                return *reinterpret_cast<uint32_t *>(&v);
            };
            a[0] = pk(r, c), a[1] = pk(r + 8, c), a[2] = pk(r, c + 8), a[3] = pk(r + 8, c + 8);
            wg_mma_rs_128_tb(d, a, wg_desc(sk + kk * 1024, LV, SV));
        }
    }
    wg_commit();
    wg_wait<0>();
    wg_reg_fence(d);
    for (int j = 0; j < 16; j++)
        for (int e = 0; e < 4; e++) {
            const int r = w * 16 + lane / 4 + (e >= 2 ? 8 : 0), c = j * 8 + (lane % 4) * 2 + (e & 1);
            out[r * 128 + c] = d[4 * j + e];
        }
}

int main(void) {
    const int n = R * 128;
    bf16 *hq = (bf16 *)malloc(n * 2), *hk = (bf16 *)malloc(n * 2);
    float *fq = (float *)malloc(n * 4), *fk = (float *)malloc(n * 4), *hp = (float *)malloc(n * 4);
    srand(1);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 128; c++) {
            float a = (float)(rand() % 17 - 8) / 8, b = (float)(rand() % 13 - 6) / 4;
            fq[r * 128 + c] = a, fk[r * 128 + c] = b;
            hq[at(r, c)] = __float2bfloat16(a), hk[at(r, c)] = __float2bfloat16(b);
            hp[r * 128 + c] = (float)(rand() % 9 - 4) / 4; // exact in bf16
        }
    bf16 *dq, *dk;
    float *dp, *dout, *hout = (float *)malloc(64 * 128 * 4);
    cudaMalloc(&dq, n * 2), cudaMalloc(&dk, n * 2), cudaMalloc(&dp, n * 4), cudaMalloc(&dout, n * 4);
    cudaMemcpy(dq, hq, n * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dk, hk, n * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dp, hp, n * 4, cudaMemcpyHostToDevice);
    cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * R * 128 * 2 + 1024);
    int fails = 0;
    for (int mode = 0; mode < 2; mode++)
        for (int wgsel = 0; wgsel < 2 - mode; wgsel++)
            for (int swap = 0; swap < 2; swap++) {
                cudaMemset(dout, 0xff, n * 4);
                if (mode == 0 && swap) continue; // K-major: nothing to swap
                probe<<<1, 128, 2 * R * 128 * 2 + 1024>>>(dq, dk, dp, dout, mode, swap, wgsel);
                cudaError_t e = cudaDeviceSynchronize();
                if (e != cudaSuccess) {
                    printf("mode %d swap %d: %s\n", mode, swap, cudaGetErrorString(e));
                    return 2;
                }
                cudaMemcpy(hout, dout, 64 * 128 * 4, cudaMemcpyDeviceToHost);
                double worst = 0;
                int bad = 0;
                for (int r = 0; r < 64; r++)
                    for (int c = 0; c < 128; c++) {
                        double ref = 0;
                        for (int t = 0; t < 128; t++)
                            ref += mode == 0 ? (double)fq[(wgsel * 64 + r) * 128 + t] * fk[c * 128 + t]
                                             : (double)hp[r * 128 + t] * fk[t * 128 + c];
                        double err = fabs(hout[r * 128 + c] - ref);
                        if (!(err <= 1e-3)) bad++;
                        if (!(err <= worst)) worst = err;
                    }
                printf("%s wg%d %s: %d of %d wrong, worst |err| %g\n",
                       mode == 0 ? "S=QK^T (ss, K-major)" : "O=PV (rs, V MN-major)", wgsel,
                       swap ? "LBO/SBO swapped" : "as the kernel", bad, 64 * 128, worst);
                if (!swap && bad) fails++;
            }
    printf("wgmma probe: %s\n", fails ? "FAIL" : "ok");
    return fails != 0;
}
