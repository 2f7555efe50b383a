// batch.h: the one step interface between the scheduler and every backend.
//
// A step is a packed, ragged batch of token rows. Each row is one token of one
// sequence at one position; the rows of a sequence are contiguous and in
// position order. A sequence's rows may be its whole prompt, a chunk of it
// (chunked prefill: earlier chunks are already in the KV cache) or a single
// decode token: the model does not know or care which.
//
// KV memory is paged: the scheduler gives each row the cache slot its K/V go
// to (slot = block * block_size + offset) and each sequence its block table,
// which attention reads.
#ifndef SLUICE_BATCH_H
#define SLUICE_BATCH_H

#include <stdint.h>

typedef struct {
    int n_tokens;           // rows in this step
    int n_seqs;             // sequences in this step
    int32_t *tokens;        // (n_tokens) token ids
    int32_t *pos;           // (n_tokens) absolute position of each row
    int32_t *seq_of;        // (n_tokens) index in [0, n_seqs) of the row's sequence
    int32_t *slots;         // (n_tokens) KV cache slot the row's K/V are written to
    int32_t *seq_start;     // (n_seqs + 1) rows of sequence s: [seq_start[s], seq_start[s+1])
    int32_t *kv_len;        // (n_seqs) tokens in the cache for s after this step
    int32_t *block_tables;  // (n_seqs, max_blocks) block ids, row stride max_blocks
    int max_blocks;
    int n_logits;           // rows whose logits are wanted
    int32_t *logit_rows;    // (n_logits) row indices, ascending
} Batch;

#endif
