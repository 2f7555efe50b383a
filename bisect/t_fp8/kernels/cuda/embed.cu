// embed.cu: token embedding lookup, out[i, :] = table[tokens[i], :] (bf16).
//
// The lookup is exactly a row gather with the token ids as row indices, so
// the entry point hands it to cuda_gather_rows (gather.cu) rather than keep a
// second copy of the same copy kernel: one kernel to tune, one to test. The
// tests still check cuda_embed on its own against cpu_embed.
//
// Token ids are trusted to be in [0, vocab): the tokenizer and the scheduler
// produce them, and the signature carries no vocab size to check against.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "ops_cuda.h"

// out (n, dim), table (vocab, dim), tokens (n). Asynchronous on `stream`.
extern "C" void cuda_embed(sl_bf16 *out, const sl_bf16 *table, const int32_t *tokens, int n,
                           int dim, cudaStream_t stream) {
    cuda_gather_rows(out, table, tokens, n, dim, stream);
}
