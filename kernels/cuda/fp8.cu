// fp8.cu: quantisation of activations and weights to FP8 E4M3 on the GPU.
//
//   q (n, dim) e4m3, scales (n) fp32 = quantise(x (n, dim)), x fp32 or bf16
//
// One block per row (rows strided over the grid): with a static scale every
// row uses it (one pass); otherwise pass 1 finds the row's absmax, the scale
// is absmax / 448, and pass 2 (the row again, from L1/L2) writes the codes.
// bf16 rows of up to 8192 values (dim % 8 == 0) take quant_rows_v8_kernel,
// which keeps the row in registers and moves 16 bytes per load.
// Used for the input of an FP8 linear whose producer cannot emit FP8 itself
// (the attention output before o_proj) and, with fp32 input, to quantise
// random benchmark weights per output channel on the device. The twins are
// cpu_quantize_fp8_rows / cpu_quantize_weight_fp8 (kernels/cpu/fp8_cpu.c).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh"
#include "ops_cuda.h"

#define QROW_THREADS 256
#define QROW_MAX_GRID 65535

template <typename TI>
static __global__ void __launch_bounds__(QROW_THREADS)
    quant_rows_kernel(uint8_t *__restrict__ q, float *__restrict__ scales,
                      const TI *__restrict__ x, int n, int dim, float static_scale) {
    __shared__ float red[QROW_THREADS / 32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const TI *xr = x + (size_t)i * dim;
        float s = static_scale;
        if (!(s > 0.0f)) {
            float mx = 0.0f;
            for (int j = threadIdx.x; j < dim; j += blockDim.x)
                mx = fmaxf(mx, fabsf(ActT<TI>::load(xr[j])));
            s = fp8_dyn_scale(block_row_max(mx, red));
        }
        const float inv = 1.0f / s;
        uint8_t *qr = q + (size_t)i * dim;
        for (int j = threadIdx.x; j < dim; j += blockDim.x)
            qr[j] = f32_to_e4m3(ActT<TI>::load(xr[j]) * inv);
        if (threadIdx.x == 0) scales[i] = s;
        __syncthreads(); // red is reused by the next row
    }
}

// bf16 rows with dim % 8 == 0 and 16-byte aligned bases, dim <= 8 *
// QROW_V_THREADS * VPT: each thread holds VPT 16-byte vectors of its row in
// registers (one read of the row, 16-byte loads, 8-byte stores of codes);
// the same codes and scales as quant_rows_kernel (the same fp32 product x *
// (1 / s), rounded by the same satfinite conversion, two at a time).
#define QROW_V_THREADS 128
template <int VPT>
static __global__ void __launch_bounds__(QROW_V_THREADS)
    quant_rows_v8_kernel(uint2 *__restrict__ q, float *__restrict__ scales,
                         const uint4 *__restrict__ x, int n, int dim8, float static_scale) {
    __shared__ float red[QROW_V_THREADS / 32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const uint4 *xr = x + (size_t)i * dim8;
        uint4 v[VPT];
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            const int j = threadIdx.x + k * QROW_V_THREADS;
            v[k] = j < dim8 ? xr[j] : make_uint4(0, 0, 0, 0);
        }
        float s = static_scale;
        if (!(s > 0.0f)) {
            float mx = 0.0f;
#pragma unroll
            for (int k = 0; k < VPT; k++) {
                const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
                for (int e = 0; e < 4; e++)
                    mx = fmaxf(mx, fmaxf(fabsf(__uint_as_float(w[e] << 16)),
                                         fabsf(__uint_as_float(w[e] & 0xFFFF0000u))));
            }
            s = fp8_dyn_scale(block_row_max(mx, red));
        }
        const float inv = 1.0f / s;
        uint2 *qr = q + (size_t)i * dim8;
#pragma unroll
        for (int k = 0; k < VPT; k++) {
            const int j = threadIdx.x + k * QROW_V_THREADS;
            if (j >= dim8) break;
            const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
            uint32_t c[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float2 f = make_float2(__uint_as_float(w[e] << 16) * inv,
                                             __uint_as_float(w[e] & 0xFFFF0000u) * inv);
                c[e] = (uint32_t)__nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
            }
            qr[j] = make_uint2(c[0] | c[1] << 16, c[2] | c[3] << 16);
        }
        if (threadIdx.x == 0) scales[i] = s;
        __syncthreads(); // red is reused by the next row
    }
}

extern "C" void cuda_quantize_fp8_rows(uint8_t *q, float *scales, const void *x, int x_f32,
                                       int n, int dim, float static_scale, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    unsigned grid = (unsigned)(n < QROW_MAX_GRID ? n : QROW_MAX_GRID);
    const int dim8 = dim / 8, vpt = (dim8 + QROW_V_THREADS - 1) / QROW_V_THREADS;
    // SLUICE_FP8_QROW_VEC=0: the scalar kernel everywhere (A/B runs), read once
    static int vec = -1;
    if (vec < 0) {
        const char *e = getenv("SLUICE_FP8_QROW_VEC");
        vec = !(e && strcmp(e, "0") == 0);
    }
    if (vec && !x_f32 && dim % 8 == 0 && vpt <= 8 && ((uintptr_t)x & 15) == 0 &&
        ((uintptr_t)q & 7) == 0) {
        const uint4 *xv = static_cast<const uint4 *>(x);
        uint2 *qv = reinterpret_cast<uint2 *>(q);
        if (vpt <= 2)
            quant_rows_v8_kernel<2><<<grid, QROW_V_THREADS, 0, stream>>>(qv, scales, xv, n, dim8, static_scale);
        else if (vpt <= 4)
            quant_rows_v8_kernel<4><<<grid, QROW_V_THREADS, 0, stream>>>(qv, scales, xv, n, dim8, static_scale);
        else
            quant_rows_v8_kernel<8><<<grid, QROW_V_THREADS, 0, stream>>>(qv, scales, xv, n, dim8, static_scale);
        CUDA_CHECK_LAUNCH();
        return;
    }
    if (x_f32)
        quant_rows_kernel<float><<<grid, QROW_THREADS, 0, stream>>>(
            q, scales, static_cast<const float *>(x), n, dim, static_scale);
    else
        quant_rows_kernel<__nv_bfloat16><<<grid, QROW_THREADS, 0, stream>>>(
            q, scales, static_cast<const __nv_bfloat16 *>(x), n, dim, static_scale);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// the FP8 GEMM fallback's epilogue (gemm.cu): scales and bias after an fp32
// unit-scale product

static __global__ void scale_rows_kernel(void *__restrict__ y, int y_f32,
                                         const float *__restrict__ acc,
                                         const float *__restrict__ xs,
                                         const float *__restrict__ ws,
                                         const float *__restrict__ bias, int n, int out) {
    size_t total = (size_t)n * out;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(k / out), o = (int)(k % out);
        float v = acc[k] * (xs[i] * ws[o]);
        if (bias) v += bias[o];
        if (y_f32) static_cast<float *>(y)[k] = v;
        else static_cast<__nv_bfloat16 *>(y)[k] = __float2bfloat16_rn(v);
    }
}

extern "C" void cuda_fp8_scale_rows(void *y, int y_f32, const float *acc, const float *x_scales,
                                    const float *w_scales, const float *bias, int n, int out,
                                    cudaStream_t stream) {
    if (n <= 0 || out <= 0) return;
    size_t total = (size_t)n * out;
    unsigned grid = (unsigned)((total + 255) / 256 < 65535 ? (total + 255) / 256 : 65535);
    scale_rows_kernel<<<grid, 256, 0, stream>>>(y, y_f32, acc, x_scales, w_scales, bias, n, out);
    CUDA_CHECK_LAUNCH();
}
