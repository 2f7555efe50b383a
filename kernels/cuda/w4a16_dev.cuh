// w4a16_dev.cuh: device helpers shared by the tensor-core W4A16 kernels
// (w4a16_tc.cu on sluice's INT4 layout, w4a16_v3.cu on the tiled layout).
//
// The A operand of mma.sync m16n8k16 is built in registers from packed
// nibbles: dq_pairs turns nibbles p and p + 4 of a word into the bf16 pair
// (q_p - z, q_{p+4} - z), exactly (see w4a16_tc.cu's top comment).
#ifndef SLUICE_W4A16_DEV_CUH
#define SLUICE_W4A16_DEV_CUH

#include <cuda_bf16.h>
#include <stdint.h>

#include "cuda_common.h"

static __device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                                      uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// bf16x2 of (128 + z, 128 + z) with the sign set: the FMA below adds it.
static __device__ __forceinline__ uint32_t neg_zero_pair(uint32_t z) {
    return 0xC300C300u | z | (z << 16);
}

// (v & 0x000F000F) | 0x43004300 in one LOP3: the nibbles at bits 0 and 16
// as the bf16 pair (128 + q, 128 + q'). Written out because the compiler
// emits an AND and an OR (a LOP3 takes one immediate; here the magic number
// stays in a register).
static __device__ __forceinline__ uint32_t nib_pair_bf16(uint32_t v) {
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(v), "n"(0x000F000F), "r"(0x43004300u));
    return d;
}

// w >> s as the high word of w * 2^(32 - s): an IMAD.HI on the FMA pipe
// rather than a shift on the integer pipe, which the dequantisation below
// keeps busy (the W4A16 GEMVs were limited by it).
static __device__ __forceinline__ uint32_t shr_on_fma(uint32_t w, uint32_t pow2) {
    uint32_t d;
    asm("mul.hi.u32 %0, %1, %2;\n" : "=r"(d) : "r"(w), "r"(pow2));
    return d;
}

// The 4 bf16x2 pairs (128 + q_j, 128 + q_{j+4}), j = 0..3, of packed word w
// (q_p = nibble p of w). Exact. Per word: 4 LOP3, 3 IMAD.HI.
static __device__ __forceinline__ void nib_pairs(uint32_t w, uint32_t v[4]) {
    v[0] = nib_pair_bf16(w);
    v[1] = nib_pair_bf16(shr_on_fma(w, 1u << 28));
    v[2] = nib_pair_bf16(shr_on_fma(w, 1u << 24));
    v[3] = nib_pair_bf16(shr_on_fma(w, 1u << 20));
}

// The 4 bf16x2 pairs (q_j - z, q_{j+4} - z), j = 0..3, of packed word w.
// nz = neg_zero_pair(z). Exact. Per word: nib_pairs + 4 bf16x2 adds.
static __device__ __forceinline__ void dq_pairs(uint32_t w, uint32_t nz, uint32_t a[4]) {
    uint32_t v[4];
    nib_pairs(w, v);
#pragma unroll
    for (int j = 0; j < 4; j++) // (128 + q) - (128 + z)
        asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(a[j]) : "r"(v[j]), "r"(0x3F803F80u), "r"(nz));
}

// Asynchronous 16-byte copies global -> shared (sm_80+): src_bytes (0 or 16)
// are read, the rest of the 16 bytes is zero-filled. .cg caches in L2 only,
// .ca in L1 too (data other warps of the SM read again).
static __device__ __forceinline__ void cp_async16_cg(void *smem, const void *gmem, int src_bytes) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async16_ca(void *smem, const void *gmem, int src_bytes) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Split-K GEMMs (both files): y (n, out) = sum over z of ws (S, n, out), in
// order (deterministic), + bias; launched after the GEMM when S > 1.
static __global__ void w4a16_splitk_reduce_kernel(__nv_bfloat16 *__restrict__ y,
                                                  const float *__restrict__ ws,
                                                  const float *__restrict__ bias, int n, int out,
                                                  int S) {
    const size_t total = (size_t)n * out;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int z = 0; z < S; z++) v += ws[(size_t)z * total + i];
        y[i] = __float2bfloat16_rn(v + (bias ? bias[i % out] : 0.0f));
    }
}

static void w4a16_splitk_reduce(__nv_bfloat16 *y, const float *ws, const float *bias, int n,
                                int out, int S, cudaStream_t s) {
    size_t total = (size_t)n * out, blocks = (total + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    w4a16_splitk_reduce_kernel<<<(unsigned)blocks, 256, 0, s>>>(y, ws, bias, n, out, S);
    CUDA_CHECK_LAUNCH();
}

// n8 tiles per GEMM block for n batch rows (16, 32 or 64 rows per block)
static inline int w4a16_gemm_nt(int n) { return n <= 16 ? 2 : n <= 32 ? 4 : 8; }

// The split-K count of both tensor-core GEMMs (w4a16_tc.cu, w4a16_v3.cu) for
// n batch rows, out outputs and nchunks input chunks: doubled (up to
// W4A16_MAX_SPLIT) while the grid is short of 3/4 of a wave (W4A16_SMS
// SMs, 2 blocks per SM, 1 at NT = 8), each split keeping >= max(2, NB/8)
// chunks (the fp32 partials stay <= 1/4 of the weight bytes a block reads)
// and the partials fitting ws_floats. It stops before blocks reach 3/4 of
// twice the target, so S * n * out < 1.5 * W4A16_SMS * 64 * 128:
// w4a16_splitk_workspace_floats is that bound. The SM count sizes speed only.
#define W4A16_SMS 132 // H100 / H200 SXM
#define W4A16_MAX_SPLIT 16

static inline int w4a16_splitk_count(int n, int nchunks, int out, size_t ws_floats) {
    const int nt = w4a16_gemm_nt(n), NB = 8 * nt, nb = (n + NB - 1) / NB, mb = (out + 127) / 128;
    const long target = (long)W4A16_SMS * (nt == 8 ? 1 : 2);
    const int min_cps = NB / 8 > 2 ? NB / 8 : 2;
    int S = 1;
    while (S < W4A16_MAX_SPLIT && 4L * mb * nb * S < 3 * target && nchunks / (2 * S) >= min_cps &&
           (size_t)2 * S * n * out <= ws_floats)
        S *= 2;
    return S;
}

static inline size_t w4a16_splitk_workspace_floats(int max_n, int max_out) {
    size_t bound = (size_t)2 * W4A16_SMS * 64 * 128;
    size_t most = (size_t)W4A16_MAX_SPLIT * (max_n > 0 ? max_n : 0) * (max_out > 0 ? max_out : 0);
    return most < bound ? most : bound;
}

#endif
