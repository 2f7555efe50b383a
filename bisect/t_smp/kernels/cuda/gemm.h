// gemm.h: sluice's linear layers on the GPU, through cuBLASLt.
//
//   y (n, out) = x (n, in) @ W^T (+ bias)      W (out, in) row-major
//
// x is bf16; y is bf16 (activations) or fp32 (the LM head's logits); the
// products accumulate in fp32 (CUBLAS_COMPUTE_32F). The weight's storage is
// described by a LinearWeight (backend.h): only WFMT_BF16 is implemented now.
// FP8 (cuBLASLt's e4m3 GEMM with A/B scale pointers, which on Hopper needs
// exactly the "TN" layout used here) and INT4 (a dequantising kernel) plug in
// behind cuda_gemm_linear by switching on w->fmt; the caller does not change.
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
    GEMM_OUT_F32,      // logits
} GemmOut;

// Everything the GEMMs of one device share: the cuBLASLt handle, the stream
// they run on, one workspace, and the algorithm cache. The cache holds one
// entry per distinct (n, out, in, output type, bias, pointer alignment) and
// grows (host memory, rehashing) the first time a shape is seen: with a
// scheduler that packs any number of rows per step it grows with the number
// of distinct n values, i.e. at most max_tokens entries per weight shape.
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

#ifdef __cplusplus
}
#endif

#endif
