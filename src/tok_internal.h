// tok_internal.h: what tokenizer.c and tok_bpe.c share (not a public header).
//
// The BPE model lives in tok_bpe.c: the vocabulary hash map (token string ->
// id), the merge map (pair of ids -> rank and merged id), the merge loop and
// the per-thread word cache. tokenizer.c owns loading, the added-token split,
// normalizers, pre-tokenizers, post-processing and decoding.
#ifndef SLUICE_TOK_INTERNAL_H
#define SLUICE_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

// A growable vector of ids; the per-call output and scratch use it.
typedef struct {
    int32_t *v;
    int n, cap;
} tok_ids;

void tok_ids_push(tok_ids *a, int32_t id);

// 64-bit hash of a byte string (also used for the word cache).
uint64_t tok_hash(const void *p, size_t n);

typedef struct tok_merge_slot {
    uint64_t key; // (uint64)a << 32 | b; UINT64_MAX marks an empty slot
    int32_t rank;
    int32_t new_id;
} tok_merge_slot;

typedef struct tok_bpe {
    int32_t n_ids;      // one past the largest vocabulary id
    char **tok;         // (n_ids) token text by id, NULL where the id is unused
    uint32_t *tok_len;  // (n_ids)
    int32_t *vslots;    // (vmask+1) open-addressed vocabulary, -1 = empty
    uint32_t vmask;
    tok_merge_slot *mslots; // (mmask+1) open-addressed merges
    uint32_t mmask;
    int n_merges;
    int byte_fallback, ignore_merges, fuse_unk;
    int32_t unk_id;      // -1 when the model has no unk token
    int32_t byte_id[256]; // ids of "<0xNN>" when byte_fallback, else -1
    uint64_t uid;        // distinguishes tokenizers in the per-thread cache
} tok_bpe;

// Per-thread scratch for one encode: the BPE symbol list and heap.
typedef struct tok_scratch tok_scratch;

// Returns the vocabulary id of s[0..n), or -1.
int32_t tok_bpe_lookup(const tok_bpe *m, const char *s, size_t n);

// Adds token -> id (used while loading). Returns -1 on a duplicate id with
// different text (err filled, naming where).
int tok_bpe_add_token(tok_bpe *m, const char *s, size_t n, int32_t id, const char *where,
                      sl_err *err);

// Sizes the hash tables for n tokens / merges; call before adding.
// The largest vocabulary id accepted (the id -> token tables are sized by
// the largest id; real vocabularies stop at a few hundred thousand).
#define TOK_MAX_ID ((1 << 24) - 1)
void tok_bpe_reserve(tok_bpe *m, int n_tokens, int n_merges, int32_t max_id);

// Adds one merge (a, b) with rank; a later duplicate overwrites, as HF's map does.
void tok_bpe_add_merge(tok_bpe *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);

// Tokenizes one pre-token (UTF-8, n bytes) and appends the ids to out.
void tok_bpe_word(const tok_bpe *m, const char *w, size_t n, tok_ids *out);

void tok_bpe_free_fields(tok_bpe *m);

#endif
