// w4a16_mma.cu: the tensor-core W4A16 GEMM for prefill chunks and mid-size
// decode batches: y (M, N) = x (M, K) @ dequant(W)^T (+ bias), bf16 in and
// out, fp32 accumulation (see w4a16.h for the weight layout).
//
// One block computes a 64 x 128 tile of y with 8 warps (2 x 4, 32 x 32 each)
// over k-tiles of 32:
//   - x's tile goes to shared memory with cp.async (rows past M and inputs
//     past K zero-filled);
//   - W's tile is read as packed nibbles (8 bytes per thread, 16 inputs of one
//     row), dequantised in registers exactly like cuda_int4_dequant_bf16
//     (fp32 (q - z) * s, rounded once to bf16) and stored to shared memory;
//   - fragments come from shared memory with ldmatrix (rows padded to 80
//     bytes: conflict-free) into mma.sync m16n8k16 bf16 -> fp32.
// Two stages: while one k-tile is multiplied, the next tile's x is in flight
// (cp.async) and its packed weights are in registers. The packed weights are
// the only large operand, so a weight byte is read once per 64 rows of x,
// instead of the dequantise path's 2 bytes written + 2 read per weight.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16.h"

#define MM_BM 64
#define MM_BN 128
#define MM_BK 32
#define MM_LDS (MM_BK + 8) // shared row stride in bf16 (80 bytes)
#define MM_THREADS 256

static __device__ __forceinline__ unsigned smem_u32(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(bytes));
}

static __device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

static __device__ __forceinline__ void mma_bf16(float c[4], const unsigned a[4], unsigned b0,
                                                unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 8 nibbles of w -> 8 bf16 (as 4 packed pairs): ((q - z) * s) rounded once.
static __device__ __forceinline__ void dequant8(uint32_t w, float s, float z, uint4 &out) {
    const float off = 8388608.0f + z; // 2^23 + z: OR-ing q into 2^23's mantissa is 2^23 + q
    unsigned o[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float a = (__uint_as_float(((w >> (8 * i)) & 0xFu) | 0x4B000000u) - off) * s;
        float b = (__uint_as_float(((w >> (8 * i + 4)) & 0xFu) | 0x4B000000u) - off) * s;
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b); // .x = a (low half), .y = b
        o[i] = *reinterpret_cast<unsigned *>(&h);
    }
    out = make_uint4(o[0], o[1], o[2], o[3]);
}

static __global__ void __launch_bounds__(MM_THREADS)
w4a16_mma_kernel(__nv_bfloat16 *__restrict__ y, const __nv_bfloat16 *__restrict__ x,
                 const uint32_t *__restrict__ qw, const __half *__restrict__ sc,
                 const uint8_t *__restrict__ zz, const float *__restrict__ bias, int M, int N,
                 int K, int group) {
    __shared__ __align__(16) __nv_bfloat16 As[2][MM_BM][MM_LDS];
    __shared__ __align__(16) __nv_bfloat16 Bs[2][MM_BN][MM_LDS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.y * MM_BM, n0 = blockIdx.x * MM_BN;
    const int wm0 = (warp >> 2) * 32, wn0 = (warp & 3) * 32;
    const int nk = (K + MM_BK - 1) / MM_BK, words = K / 8, ng = K / group;

    // this thread's share of the loads
    const int a_row = tid >> 2, a_chunk = tid & 3; // x: 64 rows x 4 chunks of 8
    const int b_row = tid >> 1, b_half = tid & 1;  // W: 128 rows x 2 halves of 16
    const int bn = n0 + b_row;

    auto load_a = [&](int stage, int k0) {
        const int m = m0 + a_row, k = k0 + a_chunk * 8;
        const bool ok = m < M && k < K;
        const __nv_bfloat16 *src = ok ? x + (size_t)m * K + k : x;
        cp_async16(&As[stage][a_row][a_chunk * 8], src, ok ? 16 : 0);
        asm volatile("cp.async.commit_group;\n" ::);
    };
    uint2 bw = make_uint2(0, 0);
    float bs = 0.0f, bz = 0.0f;
    auto load_b = [&](int k0) {
        const int k = k0 + b_half * 16;
        if (bn < N && k < K) {
            bw = __ldg(reinterpret_cast<const uint2 *>(qw + (size_t)bn * words + k / 8));
            const size_t gi = (size_t)bn * ng + k / group;
            bs = __half2float(sc[gi]);
            bz = zz ? (float)zz[gi] : 8.0f;
        } else {
            bw = make_uint2(0, 0);
            bs = 0.0f; // zeros in the tile
            bz = 0.0f;
        }
    };
    auto store_b = [&](int stage) {
        uint4 lo, hi;
        dequant8(bw.x, bs, bz, lo);
        dequant8(bw.y, bs, bz, hi);
        uint4 *dst = reinterpret_cast<uint4 *>(&Bs[stage][b_row][b_half * 16]);
        dst[0] = lo;
        dst[1] = hi;
    };

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = 0.0f;

    load_a(0, 0);
    load_b(0);
    store_b(0);
    asm volatile("cp.async.wait_all;\n" ::);
    __syncthreads();

    for (int kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < nk;
        if (more) {
            load_a(cur ^ 1, (kt + 1) * MM_BK);
            load_b((kt + 1) * MM_BK);
        }
#pragma unroll
        for (int ks = 0; ks < MM_BK; ks += 16) {
            unsigned a[2][4], b[2][4];
            const int j = lane >> 3, r = lane & 7;
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(a[mi], &As[cur][wm0 + mi * 16 + (j & 1) * 8 + r][ks + (j >> 1) * 8]);
#pragma unroll
            for (int nj = 0; nj < 2; nj++)
                ldmatrix_x4(b[nj], &Bs[cur][wn0 + nj * 16 + (j >> 1) * 8 + r][ks + (j & 1) * 8]);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
                    mma_bf16(acc[mi][ni], a[mi], b[ni >> 1][(ni & 1) * 2],
                             b[ni >> 1][(ni & 1) * 2 + 1]);
        }
        if (more) store_b(cur ^ 1);
        asm volatile("cp.async.wait_all;\n" ::);
        __syncthreads();
    }

    // epilogue: c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at row g + 8
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = m0 + wm0 + mi * 16 + (lane >> 2) + h * 8;
                const int n = n0 + wn0 + ni * 8 + (lane & 3) * 2;
                if (m >= M) continue;
#pragma unroll
                for (int e = 0; e < 2; e++)
                    if (n + e < N)
                        y[(size_t)m * N + n + e] = __float2bfloat16_rn(
                            acc[mi][ni][h * 2 + e] + (bias ? bias[n + e] : 0.0f));
            }
}

extern "C" void cuda_w4a16_gemm(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                                const uint16_t *scales, const uint8_t *zeros, const float *bias,
                                int n, int in_dim, int out_dim, int group, cudaStream_t stream) {
    if (n <= 0 || out_dim <= 0) return;
    if (group <= 0 || group % 32 || in_dim % group || ((uintptr_t)x & 15))
        SL_FATAL("sluice", "W4A16 GEMM: group must be a multiple of 32 dividing in_dim, x 16-byte "
                 "aligned", "cuda_w4a16_gemm");
    dim3 grid((unsigned)((out_dim + MM_BN - 1) / MM_BN), (unsigned)((n + MM_BM - 1) / MM_BM));
    w4a16_mma_kernel<<<grid, MM_THREADS, 0, stream>>>(
        reinterpret_cast<__nv_bfloat16 *>(y), reinterpret_cast<const __nv_bfloat16 *>(x), qweight,
        reinterpret_cast<const __half *>(scales), zeros, bias, n, out_dim, in_dim, group);
    CUDA_CHECK_LAUNCH();
}
