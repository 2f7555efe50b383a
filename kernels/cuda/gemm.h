// gemm.h: sluice's linear layers on the GPU, through cuBLASLt.
//
//   y (n, out) = x (n, in) @ W^T (+ bias)      W (out, in) row-major
//
// The weight's storage is described by a LinearWeight (backend.h):
//   WFMT_BF16     x bf16, y bf16 (activations) or fp32 (logits)
//   WFMT_F32      x fp32, y fp32: true fp32 GEMMs (CUBLAS_COMPUTE_32F, no TF32),
//                 the CUDA backend's --dtype f32 mode
//   WFMT_FP8_E4M3 x e4m3 codes with one fp32 scale per row (x_scales), W e4m3
//                 with w->scale holding out_dim fp32 scales (a per-tensor
//                 scale is stored replicated); cuBLASLt's FP8 GEMM on Hopper
//                 ("TN" layout, dims multiples of 16) with outer-vector
//                 scaling (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, cuBLAS
//                 12.9+): y[i][o] = w_scale[o] * x_scale[i] * sum_k qx qw,
//                 y bf16 or fp32.
// The products accumulate in fp32. INT4 (a dequantising kernel) plugs in
// behind the same entry point by switching on w->fmt.
//
// Plain C header: the CUDA backend (src/backend_cuda.c) and the GPU tests
// include it; the implementation is kernels/cuda/gemm.cu.
#ifndef SLUICE_GEMM_H
#define SLUICE_GEMM_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#include "backend.h"
#include "cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// The output element type of one GEMM.
typedef enum {
    GEMM_OUT_BF16 = 0, // activations
    GEMM_OUT_F32,      // logits (and activations in fp32 mode)
} GemmOut;

// The input element type of one GEMM.
typedef enum {
    GEMM_IN_BF16 = 0,
    GEMM_IN_F32,
    GEMM_IN_FP8, // e4m3 codes + per-row fp32 scales
} GemmIn;

// Everything the GEMMs of one device share: the cuBLASLt handle, the stream
// they run on, one workspace, and the algorithm cache. The cache holds one
// entry per distinct (n, out, in, output type, bias, pointer alignment) and
// grows (host memory, rehashing) the first time a shape is seen: with a
// scheduler that packs any number of rows per step it grows with the number
// of distinct n values, i.e. at most max_tokens entries per weight shape.
// A new entry for n >= SLUICE_GEMM_TUNE_MIN_N (1024) rows of an FP8 weight
// (any weight with SLUICE_GEMM_TUNE=1; none with 0) times up to 8 of
// cuBLASLt's candidates under sustained load on the call's own buffers and
// keeps the fastest (waiting for the stream once; never while the stream is
// being captured into a CUDA graph), or reuses the winner of an earlier n of
// the same size bucket; otherwise it keeps cuBLASLt's first choice (gemm.cu
// says more, including why only FP8 by default and why tuned results can
// differ in the last bits).
typedef struct cuda_gemm cuda_gemm;

// Default workspace: enough for every split-K / stream-K algorithm cuBLASLt
// offers on Hopper for the shapes of an LLM.
#define CUDA_GEMM_WORKSPACE_BYTES ((size_t)32 << 20)

// Creates the context on the current device; GEMMs are enqueued on `stream`.
// Allocates the workspace (workspace_bytes, 0 = the default) once. Dies
// cleanly (CUDA_CHECK / CUBLAS_CHECK) when cuBLASLt cannot start. The result
// is the caller's to cuda_gemm_destroy.
cuda_gemm *cuda_gemm_create(cudaStream_t stream, size_t workspace_bytes);
void cuda_gemm_destroy(cuda_gemm *g); // NULL is a no-op

// y (n, w->out_dim) = x (n, w->in_dim) @ W^T (+ bias), enqueued on the
// context's stream; nothing is allocated on the device. n == 0 does nothing.
// y and x are device memory, row-major, densely packed. Unsupported weight
// formats die with a message naming the format.
void cuda_gemm_linear(cuda_gemm *g, void *y, GemmOut ytype, const sl_bf16 *x,
                      const LinearWeight *w, int n);

// The general form: x of type xtype (x_scales (n) fp32 device for
// GEMM_IN_FP8, else NULL); the weight format must match (bf16 with bf16,
// fp32 with fp32, FP8 with FP8). Mismatches die with a message naming both.
void cuda_gemm_linear_ex(cuda_gemm *g, void *y, GemmOut ytype, const void *x, GemmIn xtype,
                         const float *x_scales, const LinearWeight *w, int n);

// Size of the scratch of the FP8 fallback (used only when cuBLASLt offers no
// outer-vector-scaled FP8 GEMM for a shape): max rows * max out_dim of the
// FP8 layers, in floats. Called at start-up (the backend's reserve); the
// scratch itself is allocated when the first fallback plan is made (the
// first step that needs it), so machines that never fall back never pay it.
void cuda_gemm_reserve_fp8(cuda_gemm *g, size_t floats);

// Bias layout on the CUDA backend. cuBLASLt's bias epilogue wants the bias in
// the output's type, so w->bias is one allocation holding both:
//   [0, 4*out)                       fp32 (what backend.h promises)
//   [cuda_gemm_bias_bf16_offset(out), + 2*out)   the same values in bf16
// cuda_gemm_bias_bytes(out) is the allocation's size.
static inline size_t cuda_gemm_bias_bf16_offset(int out_dim) {
    return ((size_t)out_dim * 4 + 255) & ~(size_t)255; // keep the bf16 part 256-byte aligned
}
static inline size_t cuda_gemm_bias_bytes(int out_dim) {
    return cuda_gemm_bias_bf16_offset(out_dim) + (size_t)out_dim * 2;
}

// Distinct shapes the algorithm cache holds (for tests and logs).
int cuda_gemm_cache_size(const cuda_gemm *g);

// Cache entries whose algorithm was chosen by timing cuBLASLt's candidates,
// and entries that took the winner of their size bucket without timing (for
// tests and logs).
int cuda_gemm_tuned_count(const cuda_gemm *g);
int cuda_gemm_reused_count(const cuda_gemm *g);

#ifdef __cplusplus
}
#endif

#endif
