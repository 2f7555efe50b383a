// sample_cuda.h: the C entry points of kernels/cuda/sample.cu, on-device
// sampling; the twins are in kernels/cpu/sample_cpu.h (same arguments minus
// the stream). All pointers are device memory.
#ifndef SLUICE_SAMPLE_CUDA_H
#define SLUICE_SAMPLE_CUDA_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "backend.h"
#include "cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// See cpu_sample_hist_update.
void cuda_sample_hist_update(uint32_t *counts, int vocab, const int32_t *reset_slots,
                             int n_reset, const int32_t *hist_slot, const uint32_t *hist_tok,
                             int n_hist, cudaStream_t stream);

// See cpu_sample_rows. top_n <= SAMPLE_MAX_TOP_N; vocab < 2^24.
void cuda_sample_rows(int32_t *ids, float *logprob, int32_t *top_ids, float *top_lps, int top_n,
                      float *logits, int n, int vocab, const SampleRow *rows,
                      const uint32_t *counts, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
