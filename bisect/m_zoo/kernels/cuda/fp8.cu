// fp8.cu: quantisation of activations and weights to FP8 E4M3 on the GPU.
//
//   q (n, dim) e4m3, scales (n) fp32 = quantise(x (n, dim)), x fp32 or bf16
//
// One block per row (rows strided over the grid): with a static scale every
// row uses it (one pass); otherwise pass 1 finds the row's absmax, the scale
// is absmax / 448, and pass 2 (the row again, from L1/L2) writes the codes.
// Used for the input of an FP8 linear whose producer cannot emit FP8 itself
// (the attention output before o_proj) and, with fp32 input, to quantise
// random benchmark weights per output channel on the device. The twins are
// cpu_quantize_fp8_rows / cpu_quantize_weight_fp8 (kernels/cpu/fp8_cpu.c).
#include <stdint.h>

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

extern "C" void cuda_quantize_fp8_rows(uint8_t *q, float *scales, const void *x, int x_f32,
                                       int n, int dim, float static_scale, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return;
    unsigned grid = (unsigned)(n < QROW_MAX_GRID ? n : QROW_MAX_GRID);
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
