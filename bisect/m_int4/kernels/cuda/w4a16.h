// w4a16.h: group-wise INT4 weights, bf16 activations (W4A16) on the GPU.
//
// The weight layout is sluice's INT4 layout (kernels/cpu/int4_cpu.h):
// qweight uint32 (out, in/8), scales fp16 (out, in/group), zeros uint8
// (out, in/group) or NULL (symmetric, zero point 8). group is a multiple of
// 32 dividing in. All pointers are device memory; nothing here allocates.
// The CPU twins are in kernels/cpu/int4_cpu.h.
//
// Three paths, chosen per call by the CUDA backend (backend_cuda.c) from the
// number of rows n:
//   - decode (n <= W4A16_GEMV_MAX_N): cuda_w4a16_gemv streams the packed
//     weights once and multiplies on the CUDA cores, accumulating in fp32;
//   - mid-size (n <= SLUICE_INT4_MMA_MAX_N, default 128): cuda_w4a16_gemm,
//     tensor cores (mma.sync) on weights dequantised in registers;
//   - large (long prefill chunks): cuda_int4_dequant_bf16 expands the weight
//     to a bf16 scratch matrix, then the ordinary cuBLASLt GEMM (gemm.h) runs.
#ifndef SLUICE_W4A16_H
#define SLUICE_W4A16_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define W4A16_GEMV_MAX_N 8 // rows the decode kernel takes in one call

// y (n, out) bf16 = x (n, in) bf16 @ dequant(W)^T (+ bias (out) fp32, or NULL),
// fp32 accumulation; n in [1, W4A16_GEMV_MAX_N]. x must be 16-byte aligned.
void cuda_w4a16_gemv(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                     const uint16_t *scales, const uint8_t *zeros, const float *bias, int n,
                     int in_dim, int out_dim, int group, cudaStream_t stream);

// y (n, out) bf16 = x (n, in) bf16 @ bf16(dequant(W))^T (+ bias fp32 or NULL)
// on the tensor cores, fp32 accumulation; any n >= 1. The weights are rounded
// to bf16 exactly as cuda_int4_dequant_bf16 does. x must be 16-byte aligned.
// (kernels/cuda/w4a16_mma.cu)
void cuda_w4a16_gemm(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                     const uint16_t *scales, const uint8_t *zeros, const float *bias, int n,
                     int in_dim, int out_dim, int group, cudaStream_t stream);

// dst (out, in) bf16 = bf16(cpu_int4_dequant(W)): fp32 (q - z) * s, rounded once.
void cuda_int4_dequant_bf16(sl_bf16 *dst, const uint32_t *qweight, const uint16_t *scales,
                            const uint8_t *zeros, int out_dim, int in_dim, int group,
                            cudaStream_t stream);

// The twin of cpu_int4_fill_random (the same bits), for benchmarks' random
// INT4 weights generated in place. zeros may be NULL.
void cuda_int4_fill_random(uint32_t *qweight, uint16_t *scales, uint8_t *zeros, int out_dim,
                           int in_dim, int group, uint64_t seed, float scale,
                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
