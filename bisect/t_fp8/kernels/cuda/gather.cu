// gather.cu: row gather, out[j, :] = x[rows[j], :] (bf16).
//
// Used to pick the rows whose logits are wanted, and (through cuda_embed) for
// the token embedding lookup. A pure copy, so the only thing that matters is
// moving bytes: each row is copied by a group of threads with 16-byte vectors
// (8 bf16) when dim % 8 == 0 and both bases are 16-byte aligned, each thread
// issuing up to four loads before its first store; other shapes take the same
// kernel on 2-byte scalars. Short rows share a 256-thread block (blockDim.y
// rows per block) so that small dims do not launch mostly idle blocks.
//
// Row indices are trusted: the callers (scheduler, tokenizer) produce them in
// range; nothing here can check them without knowing the table's row count.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "ops_cuda.h"

#define GATHER_UNROLL 4 // elements (vectors or scalars) in flight per thread
#define GATHER_BLOCK 256

// ----------------------------------------------------------------------------
// kernel

// T is uint4 (8 bf16) or uint16_t (1 bf16); row_len counts T elements.
// Row j = blockIdx.x * blockDim.y + threadIdx.y is copied by the blockDim.x
// threads of its group, GATHER_UNROLL elements per thread per round.
template <typename T>
static __global__ void gather_rows_kernel(T *__restrict__ out, const T *__restrict__ x,
                                          const int32_t *__restrict__ rows, int m,
                                          int row_len) {
    int j = blockIdx.x * blockDim.y + threadIdx.y;
    if (j >= m) return; // no barriers below: early exit is safe
    const T *src = x + (size_t)rows[j] * row_len;
    T *dst = out + (size_t)j * row_len;
    int step = blockDim.x;
    for (int base = threadIdx.x; base < row_len; base += GATHER_UNROLL * step) {
        T v[GATHER_UNROLL];
#pragma unroll
        for (int k = 0; k < GATHER_UNROLL; k++) {
            int c = base + k * step;
            if (c < row_len) v[k] = src[c];
        }
#pragma unroll
        for (int k = 0; k < GATHER_UNROLL; k++) {
            int c = base + k * step;
            if (c < row_len) dst[c] = v[k];
        }
    }
}

// ----------------------------------------------------------------------------
// launcher

template <typename T>
static void gather_rows_launch(T *out, const T *x, const int32_t *rows, int m, int row_len,
                               cudaStream_t stream) {
    // Threads per row: enough for about GATHER_UNROLL elements each, a whole
    // number of warps, at most one block.
    int tpr = (row_len + GATHER_UNROLL - 1) / GATHER_UNROLL;
    tpr = (tpr + 31) / 32 * 32;
    if (tpr > GATHER_BLOCK) tpr = GATHER_BLOCK;
    int rpb = GATHER_BLOCK / tpr; // rows per block
    dim3 block(tpr, rpb);
    unsigned grid = (unsigned)((m + rpb - 1) / rpb);
    gather_rows_kernel<T><<<grid, block, 0, stream>>>(out, x, rows, m, row_len);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// entry point

extern "C" void cuda_gather_rows(sl_bf16 *out, const sl_bf16 *x, const int32_t *rows, int m,
                                 int dim, cudaStream_t stream) {
    if (m <= 0 || dim <= 0) return;
    bool vec = dim % 8 == 0 && ((uintptr_t)out | (uintptr_t)x) % 16 == 0;
    if (vec)
        gather_rows_launch<uint4>(reinterpret_cast<uint4 *>(out),
                                  reinterpret_cast<const uint4 *>(x), rows, m, dim / 8, stream);
    else
        gather_rows_launch<uint16_t>(out, x, rows, m, dim, stream);
}
