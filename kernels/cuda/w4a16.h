// w4a16.h: group-wise INT4 weights, bf16 activations (W4A16) on the GPU.
//
// The weight layout is sluice's INT4 layout (kernels/cpu/int4_cpu.h):
// qweight uint32 (out, in/8), scales fp16 (out, in/group), zeros uint8
// (out, in/group) or NULL (symmetric, zero point 8). group is a multiple of
// 32 dividing in. All pointers are device memory; nothing here allocates.
// The CPU twins are in kernels/cpu/int4_cpu.h.
//
// Three paths, chosen per call by the CUDA backend (backend_cuda.c) from the
// number of rows n, each in three generations (v2 by default and v1 on
// sluice's layout; v3 on the tiled v3 layout below):
//   - decode (n <= W4A16_GEMV_MAX_N): cuda_w4a16_gemv_v3 (v2:
//     cuda_w4a16_gemv_tc, v1: cuda_w4a16_gemv on the CUDA cores) streams the
//     packed weights once, accumulating in fp32;
//   - mid-size (n <= SLUICE_INT4_MMA_MAX_N, default 128): cuda_w4a16_gemm_v3
//     (v2: cuda_w4a16_gemm_tc, v1: cuda_w4a16_gemm), tensor cores (mma.sync)
//     on weights dequantised in registers;
//   - large (long prefill chunks): cuda_int4_dequant_bf16_v3 (v1, v2:
//     cuda_int4_dequant_bf16) expands the weight to a bf16 scratch matrix,
//     then the ordinary cuBLASLt GEMM (gemm.h) runs.
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

// The second-generation kernels (kernels/cuda/w4a16_tc.cu): tensor cores with
// the weights as the MMA's A operand, dequantised in registers to the exact
// integers q - z, the group scale applied in fp32 (the weights are not
// rounded to bf16: both match the CPU twin up to the order of fp32 sums).
// The backend runs these by default, the kernels above with
// SLUICE_INT4_KERNELS=v1 and the v3 kernels below with SLUICE_INT4_KERNELS=v3.
//
// Decode GEMV: like cuda_w4a16_gemv (n in [1, W4A16_GEMV_MAX_N], x 16-byte
// aligned). Deterministic; no workspace.
void cuda_w4a16_gemv_tc(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                        const uint16_t *scales, const uint8_t *zeros, const float *bias, int n,
                        int in_dim, int out_dim, int group, cudaStream_t stream);

// GEMM for any n >= 1 (x 16-byte aligned). ws (ws_floats fp32, device) is the
// split-K workspace, or NULL (no split: fewer blocks on small layers). With a
// split, fp32 partials go to ws and a second kernel adds them in a fixed order
// (deterministic). The workspace is the caller's, sized once: no allocation,
// no host synchronisation (CUDA-graph capturable).
void cuda_w4a16_gemm_tc(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qweight,
                        const uint16_t *scales, const uint8_t *zeros, const float *bias, int n,
                        int in_dim, int out_dim, int group, float *ws, size_t ws_floats,
                        cudaStream_t stream);

// The workspace (floats) that lets cuda_w4a16_gemm_tc use its full split for
// every call of up to max_n rows on layers of up to max_out outputs (a
// bounded size: at most 2.2 M floats, 8.6 MB).
size_t cuda_w4a16_tc_workspace_floats(int max_n, int max_out);

// ----------------------------------------------------------------------------
// The third generation (kernels/cuda/w4a16_v3.cu) reads a TILED copy of the
// weights, made once on the device at upload (cuda_int4_repack_v3), so that
// every warp load is 512 contiguous bytes and a 16-row tile's whole K range
// is one contiguous run. With SLUICE_INT4_KERNELS=v3 the backend keeps only
// this copy (v2, the default, and v1 keep sluice's layout instead).
//
// The v3 layout of an (out, in, group) weight: mt = ceil(out/16) row tiles,
// nck = ceil(in/128) chunks of 128 inputs (rows and inputs past the end are
// zero padding: q 0, scale 0, zero point 0):
//   qt uint32 [mt][nck][h 2][lane 32][i 4]: the word of lane L = 4g + t, h, i
//      holds row 16m + 8h + g, inputs 128c + 32i + 8t + (0..7); nibble p =
//      input pi(p), pi = 0 2 4 6 1 3 5 7 (so that nibbles p and p + 4 are
//      consecutive inputs: the MMA's pairs);
//   st fp16  [mt][in/group][g 8][h 2]: scale of row 16m + 8h + g;
//   zt uint8 [mt][in/group][g 8][h 2] likewise, or NULL (symmetric).
// w4a16_v3_qwords / _gelems give the sizes (words, scale entries).
static inline size_t w4a16_v3_qwords(int out_dim, int in_dim) {
    return (size_t)((out_dim + 15) / 16) * (size_t)((in_dim + 127) / 128) * 256;
}
static inline size_t w4a16_v3_gelems(int out_dim, int in_dim, int group) {
    return (size_t)((out_dim + 15) / 16) * 16 * (size_t)(in_dim / group);
}

// (qt, st, zt) = the v3 layout of sluice's (qweight, scales, zeros); all
// device pointers, zeros and zt both NULL or both not. Bit-exact, no rounding.
void cuda_int4_repack_v3(uint32_t *qt, uint16_t *st, uint8_t *zt, const uint32_t *qweight,
                         const uint16_t *scales, const uint8_t *zeros, int out_dim, int in_dim,
                         int group, cudaStream_t stream);

// Decode GEMV on the v3 layout: like cuda_w4a16_gemv_tc (n in [1,
// W4A16_GEMV_MAX_N], x 16-byte aligned; the same exact dequantisation and
// fp32 group scaling). Deterministic; no workspace, no atomics.
void cuda_w4a16_gemv_v3(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt, const uint16_t *st,
                        const uint8_t *zt, const float *bias, int n, int in_dim, int out_dim,
                        int group, cudaStream_t stream);

// The same with the choices made by hand (tests, benchmarks): xmode -1 auto,
// 0 x copied per warp and chunk into a shared ring, 1 x staged whole in
// shared memory (falls back to 0 where it does not fit), 2 + k the fast
// path (group 128, in_dim % 128 == 0, x staged, weights through a shared
// ring) in configuration k < W4A16_V3F_CONFIGS (falls back to auto where it
// does not apply); ctas 0 auto, else that many blocks (at most the number of
// row tiles).
#define W4A16_V3F_CONFIGS 5
void cuda_w4a16_gemv_v3_ex(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt, const uint16_t *st,
                           const uint8_t *zt, const float *bias, int n, int in_dim, int out_dim,
                           int group, int xmode, int ctas, cudaStream_t stream);

// GEMM on the v3 layout for any n >= 1: cuda_w4a16_gemm_tc's algorithm
// (split-K into ws when given, deterministic, graph-capturable).
void cuda_w4a16_gemm_v3(sl_bf16 *y, const sl_bf16 *x, const uint32_t *qt, const uint16_t *st,
                        const uint8_t *zt, const float *bias, int n, int in_dim, int out_dim,
                        int group, float *ws, size_t ws_floats, cudaStream_t stream);

// cuda_w4a16_gemm_v3's workspace for every call up to max_n rows and max_out
// outputs (the same bound as cuda_w4a16_tc_workspace_floats).
size_t cuda_w4a16_v3_workspace_floats(int max_n, int max_out);

// dst (out, in) bf16 from the v3 layout: the same bits as cuda_int4_dequant_bf16.
void cuda_int4_dequant_bf16_v3(sl_bf16 *dst, const uint32_t *qt, const uint16_t *st,
                               const uint8_t *zt, int out_dim, int in_dim, int group,
                               cudaStream_t stream);

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
