// rmsnorm.cu: RMS normalisation, and the fused residual add + RMS norm.
//
//   rmsnorm:      out = w * (x * inv),            inv = 1 / sqrt(mean(x^2) + eps)
//   add_rmsnorm:  x = bf16(x + r) (stored back);  out = rmsnorm(x) of that rounded x
//
// Both are memory-bound (a few flops per byte), so the shape is about bytes:
// one group of threads per row (a warp for short rows, up to a 1024-thread
// block for long ones; several short rows share a block), fp32 accumulation,
// warp shuffles then one shared-memory step for the row's sum. The fast path
// (dim % 8 == 0, 16-byte aligned bases, dim <= 32768) holds the whole row in
// registers, four 16-byte vectors per thread loaded before any arithmetic, so
// x (and r) are read from memory exactly once. Other shapes (dim 383, odd
// views) take a scalar path that reads the row a second time, from L1/L2.
//
// add_rmsnorm rounds x + r to bf16 before normalising, so the residual stream
// the next layer reads is exactly what was normalised. `out` may alias `r`:
// every element of r is read by the thread that later writes the same
// element of out, before it writes it, and no other thread touches it (so r
// and out carry no __restrict__). out must not alias x.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh"
#include "ops_cuda.h"

#define RMS_VPT 4          // 16-byte vectors per thread on the fast path
#define RMS_BLOCK 256      // target threads per block when rows are short
#define RMS_MAX_THREADS 1024

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// helpers

static __device__ __forceinline__ void bf16x8_to_f32(uint4 v, float f[8]) {
    const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(p[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}

static __device__ __forceinline__ uint4 f32_to_bf16x8(const float f[8]) {
    uint4 v;
    __nv_bfloat162 *p = reinterpret_cast<__nv_bfloat162 *>(&v);
#pragma unroll
    for (int k = 0; k < 4; k++) p[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    return v;
}

// Sum of v over the blockDim.x threads of this row (blockDim.x a multiple of
// 32, so a warp never straddles two rows). Every thread of the block must
// call it (it has a barrier); every thread gets the row's total.
static __device__ __forceinline__ float row_sum(float v) {
    __shared__ float red[RMS_MAX_THREADS / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warps = blockDim.x / 32;
    if (warps == 1) return v;
    int first = threadIdx.y * warps; // this row's first warp in red[]
    if (threadIdx.x % 32 == 0) red[first + threadIdx.x / 32] = v;
    __syncthreads();
    float s = 0.0f;
    for (int k = 0; k < warps; k++) s += red[first + k];
    return s;
}

// The row's 1 / sqrt(mean(x^2) + eps) in fp32 (correctly rounded sqrt and
// division rather than rsqrtf, to stay close to the CPU twin).
static __device__ __forceinline__ float inv_rms(float ss, int dim, float eps) {
    return 1.0f / sqrtf(ss / (float)dim + eps);
}

// ----------------------------------------------------------------------------
// kernels

// Fast path. x, r, out: (n, nvec) 16-byte vectors of 8 bf16; w: (nvec) pairs
// of float4. Row i = blockIdx.x * blockDim.y + threadIdx.y; thread tx owns
// vectors tx + k * blockDim.x, k < RMS_VPT. Rows past n still reach the
// barrier in row_sum, doing nothing else.
//
// FP8: instead of out, write e4m3 codes (8 per thread and vector, as uint2)
// to q_out and the row's scale to scales: static_scale if > 0, else the
// row's absmax / 448 (one more pass over the registers and a block max).
template <bool ADD, bool FP8>
static __global__ void rmsnorm_vec_kernel(uint4 *out, uint2 *__restrict__ q_out,
                                          float *__restrict__ scales, uint4 *x, const uint4 *r,
                                          const float4 *__restrict__ w, int n, int dim,
                                          float eps, float static_scale) {
    int nvec = dim / 8;
    int i = blockIdx.x * blockDim.y + threadIdx.y;
    bool row_ok = i < n;
    size_t base = (size_t)i * nvec;

    // Issue every load of the row before any arithmetic.
    uint4 xv[RMS_VPT], rv[RMS_VPT];
#pragma unroll
    for (int k = 0; k < RMS_VPT; k++) {
        int c = threadIdx.x + k * blockDim.x;
        if (row_ok && c < nvec) {
            xv[k] = x[base + c];
            if (ADD) rv[k] = r[base + c];
        }
    }

    // Sum of squares. The row stays in registers as raw bf16 vectors (half the
    // registers of fp32), widened again for the output: more rows in flight.
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_VPT; k++) {
        int c = threadIdx.x + k * blockDim.x;
        if (row_ok && c < nvec) {
            float f[8];
            bf16x8_to_f32(xv[k], f);
            if (ADD) {
                float rf[8];
                bf16x8_to_f32(rv[k], rf);
#pragma unroll
                for (int e = 0; e < 8; e++) f[e] += rf[e];
                xv[k] = f32_to_bf16x8(f); // the rounded residual, normalised below
                x[base + c] = xv[k];
                bf16x8_to_f32(xv[k], f);
            }
#pragma unroll
            for (int e = 0; e < 8; e++) ss += f[e] * f[e];
        }
    }

    float inv = inv_rms(row_sum(ss), dim, eps);
    // w is shared by every row, so its loads hit L1/L2.
    auto normed = [&](int k, int c, float o[8]) {
        float4 w0 = w[2 * c], w1 = w[2 * c + 1];
        const float wf[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
        float f[8];
        bf16x8_to_f32(xv[k], f);
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = wf[e] * (f[e] * inv);
    };
    float qinv = 1.0f;
    if (FP8) {
        float sc = static_scale;
        if (!(sc > 0.0f)) { // every thread of the block reaches block_row_max
            __shared__ float red_max[RMS_MAX_THREADS / 32];
            float mx = 0.0f;
            if (row_ok)
#pragma unroll
                for (int k = 0; k < RMS_VPT; k++) {
                    int c = threadIdx.x + k * blockDim.x;
                    if (c < nvec) {
                        float o[8];
                        normed(k, c, o);
#pragma unroll
                        for (int e = 0; e < 8; e++) mx = fmaxf(mx, fabsf(o[e]));
                    }
                }
            sc = fp8_dyn_scale(block_row_max(mx, red_max));
        }
        qinv = 1.0f / sc;
        if (row_ok && threadIdx.x == 0) scales[i] = sc;
    }
    if (!row_ok) return;
#pragma unroll
    for (int k = 0; k < RMS_VPT; k++) {
        int c = threadIdx.x + k * blockDim.x;
        if (c < nvec) {
            float o[8];
            normed(k, c, o);
            if (FP8) {
                uint32_t q[4];
#pragma unroll
                for (int e = 0; e < 4; e++)
                    q[e] = __nv_cvt_float2_to_fp8x2(make_float2(o[2 * e] * qinv, o[2 * e + 1] * qinv),
                                                    __NV_SATFINITE, __NV_E4M3);
                q_out[base + c] = make_uint2(q[0] | q[1] << 16, q[2] | q[3] << 16);
            } else {
                out[base + c] = f32_to_bf16x8(o);
            }
        }
    }
}

// Scalar path for any dim and alignment: pass 1 sums squares (and, with ADD,
// forms and stores the rounded x + r), pass 2 re-reads x (this thread's own
// writes for ADD: same thread, same addresses, so they are visible) and
// writes out. r is read only in pass 1, out written only in pass 2, each
// element by one thread: out aliasing r is safe.
template <bool ADD>
static __global__ void rmsnorm_scalar_kernel(bf16 *out, bf16 *x, const bf16 *r,
                                             const float *__restrict__ w, int n, int dim,
                                             float eps) {
    int i = blockIdx.x * blockDim.y + threadIdx.y;
    bool row_ok = i < n;
    size_t base = (size_t)i * dim;
    float ss = 0.0f;
    if (row_ok) {
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = __bfloat162float(x[base + j]);
            if (ADD) {
                bf16 s = __float2bfloat16_rn(v + __bfloat162float(r[base + j]));
                x[base + j] = s;
                v = __bfloat162float(s);
            }
            ss += v * v;
        }
    }
    float inv = inv_rms(row_sum(ss), dim, eps);
    if (!row_ok) return;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = __bfloat162float(x[base + j]);
        out[base + j] = __float2bfloat16_rn(w[j] * (v * inv));
    }
}

// Generic path (cuda_rmsnorm_ex): activation type TI (float or bf16), output
// in TI or, with FP8, e4m3 codes + one scale per row (the quantisation of the
// next linear's input, fused). Pass 1 sums squares (ADD: forms and stores the
// rounded x + r); with a dynamic FP8 scale pass 2 finds the absmax of the
// normalised row; the last pass writes. Passes 2-3 re-read the row from
// L1/L2 (a thread reads back only what it wrote itself). Rows past n still
// reach every barrier.
template <typename TI, bool FP8, bool ADD>
static __global__ void rmsnorm_gen_kernel(TI *__restrict__ out, uint8_t *__restrict__ q_out,
                                          float *__restrict__ scales, TI *__restrict__ x,
                                          const TI *__restrict__ r, const float *__restrict__ w,
                                          int n, int dim, float eps, float static_scale) {
    __shared__ float red_max[RMS_MAX_THREADS / 32];
    int i = blockIdx.x * blockDim.y + threadIdx.y;
    bool row_ok = i < n;
    size_t base = (size_t)i * dim;
    float ss = 0.0f;
    if (row_ok) {
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = ActT<TI>::load(x[base + j]);
            if (ADD) {
                TI s = ActT<TI>::store(v + ActT<TI>::load(r[base + j]));
                x[base + j] = s;
                v = ActT<TI>::load(s);
            }
            ss += v * v;
        }
    }
    float inv = inv_rms(row_sum(ss), dim, eps);
    if (!FP8) {
        if (!row_ok) return;
        for (int j = threadIdx.x; j < dim; j += blockDim.x)
            out[base + j] = ActT<TI>::store(w[j] * (ActT<TI>::load(x[base + j]) * inv));
        return;
    }
    float s = static_scale;
    if (!(s > 0.0f)) {
        float mx = 0.0f;
        if (row_ok)
            for (int j = threadIdx.x; j < dim; j += blockDim.x)
                mx = fmaxf(mx, fabsf(w[j] * (ActT<TI>::load(x[base + j]) * inv)));
        s = fp8_dyn_scale(block_row_max(mx, red_max));
    }
    if (!row_ok) return;
    const float qinv = 1.0f / s;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        q_out[base + j] = f32_to_e4m3(w[j] * (ActT<TI>::load(x[base + j]) * inv) * qinv);
    if (threadIdx.x == 0) scales[i] = s;
}

// ----------------------------------------------------------------------------
// launcher

// Picks threads per row (a whole number of warps) from the number of elements
// each thread should own, and packs short rows several to a block.
static dim3 rms_block_shape(int units, int per_thread) {
    int tpr = (units + per_thread - 1) / per_thread;
    tpr = (tpr + 31) / 32 * 32;
    if (tpr > RMS_MAX_THREADS) tpr = RMS_MAX_THREADS;
    int rpb = tpr >= RMS_BLOCK ? 1 : RMS_BLOCK / tpr;
    return dim3(tpr, rpb);
}

template <bool ADD>
static void rmsnorm_launch(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w, int n,
                           int dim, float eps, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    uintptr_t addr = (uintptr_t)out | (uintptr_t)x | (uintptr_t)w | (ADD ? (uintptr_t)r : 0);
    int nvec = dim / 8;
    bool vec = dim % 8 == 0 && addr % 16 == 0 && nvec <= RMS_VPT * RMS_MAX_THREADS;
    if (vec) {
        dim3 block = rms_block_shape(nvec, RMS_VPT);
        unsigned grid = (unsigned)((n + block.y - 1) / block.y);
        rmsnorm_vec_kernel<ADD, false><<<grid, block, 0, stream>>>(
            reinterpret_cast<uint4 *>(out), NULL, NULL, reinterpret_cast<uint4 *>(x),
            reinterpret_cast<const uint4 *>(r), reinterpret_cast<const float4 *>(w), n, dim,
            eps, 0.0f);
    } else {
        dim3 block = rms_block_shape(dim, 4);
        unsigned grid = (unsigned)((n + block.y - 1) / block.y);
        rmsnorm_scalar_kernel<ADD><<<grid, block, 0, stream>>>(
            reinterpret_cast<bf16 *>(out), reinterpret_cast<bf16 *>(x),
            reinterpret_cast<const bf16 *>(r), w, n, dim, eps);
    }
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// entry points

// out (n, dim) = w * (x * rsqrt(mean(x^2) + eps)); x, out bf16, w fp32 (dim).
// out may equal x (each element is read before it is written, by one thread).
extern "C" void cuda_rmsnorm(sl_bf16 *out, const sl_bf16 *x, const float *w, int n, int dim,
                             float eps, cudaStream_t stream) {
    // The non-ADD kernels never write x; the cast only shares the kernel.
    rmsnorm_launch<false>(out, const_cast<sl_bf16 *>(x), NULL, w, n, dim, eps, stream);
}

// x (n, dim) = bf16(x + r) in place; out (n, dim) = rmsnorm of that x. out may
// alias r, must not alias x.
extern "C" void cuda_add_rmsnorm(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w,
                                 int n, int dim, float eps, cudaStream_t stream) {
    rmsnorm_launch<true>(out, x, r, w, n, dim, eps, stream);
}

// The generic entry point: activation type and FP8 output as parameters. bf16
// in and out takes the tuned kernels above.
template <typename TI, bool FP8, bool ADD>
static void rmsnorm_gen_launch(void *out, uint8_t *q_out, float *scales, void *x, const void *r,
                               const float *w, int n, int dim, float eps, float static_scale,
                               cudaStream_t stream) {
    dim3 block = rms_block_shape(dim, 4);
    unsigned grid = (unsigned)((n + block.y - 1) / block.y);
    rmsnorm_gen_kernel<TI, FP8, ADD><<<grid, block, 0, stream>>>(
        static_cast<TI *>(out), q_out, scales, static_cast<TI *>(x),
        static_cast<const TI *>(r), w, n, dim, eps, static_scale);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_rmsnorm_ex(void *out, uint8_t *q_out, float *scales, void *x, const void *r,
                                const float *w, int n, int dim, float eps, int act_f32,
                                float static_scale, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    bool fp8 = q_out != NULL, add = r != NULL;
    if (!act_f32 && !fp8) {
        if (add)
            cuda_add_rmsnorm((sl_bf16 *)out, (sl_bf16 *)x, (const sl_bf16 *)r, w, n, dim, eps,
                             stream);
        else
            cuda_rmsnorm((sl_bf16 *)out, (const sl_bf16 *)x, w, n, dim, eps, stream);
        return;
    }
#define RMS_GEN(T, F, A) \
    rmsnorm_gen_launch<T, F, A>(out, q_out, scales, x, r, w, n, dim, eps, static_scale, stream)
    if (act_f32) {
        if (fp8) { if (add) RMS_GEN(float, true, true); else RMS_GEN(float, true, false); }
        else { if (add) RMS_GEN(float, false, true); else RMS_GEN(float, false, false); }
    } else {
        // bf16 in, FP8 out: the register-resident fast path where it applies
        uintptr_t addr = (uintptr_t)x | (uintptr_t)w | (add ? (uintptr_t)r : 0);
        int nvec = dim / 8;
        if (dim % 8 == 0 && addr % 16 == 0 && (uintptr_t)q_out % 8 == 0 &&
            nvec <= RMS_VPT * RMS_MAX_THREADS) {
            dim3 block = rms_block_shape(nvec, RMS_VPT);
            unsigned grid = (unsigned)((n + block.y - 1) / block.y);
            uint2 *q = reinterpret_cast<uint2 *>(q_out);
            uint4 *xv = reinterpret_cast<uint4 *>(x);
            const uint4 *rv = reinterpret_cast<const uint4 *>(r);
            const float4 *wv = reinterpret_cast<const float4 *>(w);
            if (add)
                rmsnorm_vec_kernel<true, true><<<grid, block, 0, stream>>>(
                    NULL, q, scales, xv, rv, wv, n, dim, eps, static_scale);
            else
                rmsnorm_vec_kernel<false, true><<<grid, block, 0, stream>>>(
                    NULL, q, scales, xv, rv, wv, n, dim, eps, static_scale);
            CUDA_CHECK_LAUNCH();
        } else if (add) {
            RMS_GEN(bf16, true, true);
        } else {
            RMS_GEN(bf16, true, false);
        }
    }
#undef RMS_GEN
}
