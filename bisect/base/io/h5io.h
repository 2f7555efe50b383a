// h5io.h: sluice's HDF5 contract (v1), documented in docs/HDF5.md.
//
// Input: a prompts file with `prompt_tokens` int32 (all prompts concatenated)
// and `prompt_offsets` int64 (N+1, offsets[0] == 0, non-decreasing,
// offsets[N] == len(prompt_tokens)); optional per-request datasets of length N:
// `max_new_tokens` int32, `temperature` float32, `top_p` float32, `top_k`
// int32, `seed` int64, `request_id` UTF-8 strings.
//
// Output: OUTDIR/part-NNNNN.h5, one per writer, holding chunked, extendable
// datasets appended as completions finish; at the end they are merged into
// OUTDIR/completions.h5 ordered by prompt index.
//
// This module knows nothing about models: tokens are plain int32.
#ifndef SLUICE_H5IO_H
#define SLUICE_H5IO_H

#include <stdint.h>

#include "common.h"

// ----------------------------------------------------------------------------
// prompts

typedef struct {
    int64_t n;               // number of prompts
    int64_t n_tokens;        // len(prompt_tokens)
    int32_t *tokens;         // (n_tokens)
    int64_t *offsets;        // (n + 1)
    // optional per-request fields; NULL when the dataset is absent
    int32_t *max_new_tokens; // (n)
    float *temperature;      // (n)
    float *top_p;            // (n)
    int32_t *top_k;          // (n)
    int64_t *seed;           // (n)
    float *min_p;            // (n)
    float *repetition_penalty; // (n)
    float *presence_penalty;   // (n)
    float *frequency_penalty;  // (n)
    char **request_id;       // (n) UTF-8, each malloc'd
    char **prompt_text;      // (n) UTF-8, each malloc'd (tokenizer issue)
} PromptSet;

// Reads and checks the structure of a prompts file: datasets present with the
// right rank and a numeric type convertible to the one above (wider or
// narrower integer types are converted with a range check), offsets monotonic
// and within the token array, optional datasets of length N.
// Per-request checks that need the model (token id >= vocab, too long) are the
// engine's. A file with `prompt_text` and neither `prompt_tokens` nor
// `prompt_offsets` is a text-only prompts file: it is read with tokens and
// offsets NULL (n from prompt_text), for the caller to tokenize. Errors name the file and the dataset.
// On success ps is filled and owned by the caller (h5_prompts_free).
int h5_prompts_read(PromptSet *ps, const char *path, sl_err *err);
void h5_prompts_free(PromptSet *ps); // frees members; ps itself is the caller's

// Writes a prompts file (used by tests, `sluice prep` and bench). Fields that
// are NULL are not written. Written to path.tmp then renamed, so a failure
// never leaves a half-written file under `path`.
int h5_prompts_write(const char *path, const PromptSet *ps, sl_err *err);

// ----------------------------------------------------------------------------
// completions

typedef enum {
    FINISH_STOP = 0,   // eos or a stop token
    FINISH_LENGTH = 1, // max_new_tokens or context length reached
    FINISH_ERROR = 2,  // the request was rejected; see `error`
} FinishReason;

const char *finish_reason_name(FinishReason r); // "stop", "length", "error"

typedef struct {
    int64_t prompt_index;    // row in the input file
    int32_t prompt_len;
    const int32_t *tokens;   // (n_tokens) completion ids (not the prompt)
    int32_t n_tokens;
    FinishReason finish;
    const char *error;       // reason when finish == FINISH_ERROR, else NULL
    const char *text;        // decoded completion (UTF-8) or NULL
    const float *logprobs;   // (n_tokens) or NULL
    const int32_t *top_ids;  // (n_tokens, top_n) the most likely ids at each position, or NULL
    const float *top_logprobs; // (n_tokens, top_n) their log probabilities
    float ttft_s;            // admission to first token
    float latency_s;         // admission to last token
    float queue_s;           // job start to admission
} Completion;

typedef struct h5_writer h5_writer;

// Writes completions of writer `part` into OUTDIR (which must exist) as
// segments OUTDIR/part-PPPPP-SSSSSS.h5: each is written under a ".tmp" name
// and renamed into place when finished (at every h5_writer_flush and at
// close), so a kill at any moment leaves only whole segments (and perhaps a
// .tmp to ignore). Segment numbers already taken are skipped, so a resumed
// job adds segments beside an earlier attempt's. Each segment holds extendable,
// chunked datasets: prompt_index int64, prompt_len int32, completion_tokens
// int32, completion_offsets int64 (n+1), finish_reason (HDF5 enum int8 with
// names stop/length/error), error (vlen UTF-8), ttft_s, latency_s, queue_s
// float32, and, when the writer was opened with text / logprobs,
// completion_text (vlen UTF-8) and completion_logprobs float32 (aligned with
// completion_tokens).
// *out is the caller's to close with h5_writer_close.
// with_logprobs: 0 none; 1 completion_logprobs (the chosen tokens'); 1 + N
// also completion_top_ids / completion_top_logprobs, N per token (flattened,
// attribute top_logprobs_n = N), taken from Completion.top_ids/top_logprobs.
int h5_writer_open(h5_writer **out, const char *outdir, int part, int with_text,
                   int with_logprobs, sl_err *err);
int h5_writer_append(h5_writer *w, const Completion *c, sl_err *err);
// A checkpoint: what was appended so far is in a finished segment on return.
// The engine calls it every few seconds; each call with new rows makes one
// more segment file.
int h5_writer_flush(h5_writer *w, sl_err *err);
int h5_writer_close(h5_writer *w, sl_err *err); // NULL is a no-op; flushes

// Merges OUTDIR/part-*.h5 (finished segments; *.tmp are ignored) into OUTDIR/completions.h5 ordered by prompt_index
// (written to a temp name then renamed). n_prompts is the input's N: every
// index in [0, N) must appear exactly once, else an error listing the first
// missing/duplicated index.
int h5_merge_parts(const char *outdir, int64_t n_prompts, sl_err *err);

// Reads a completions.h5 (or a part file) back; used by tests and `export`.
typedef struct {
    int64_t n;
    int64_t *prompt_index;       // (n)
    int32_t *prompt_len;         // (n)
    int32_t *tokens;             // (offsets[n])
    int64_t *offsets;            // (n + 1)
    int8_t *finish;              // (n) FinishReason
    char **error;                // (n) "" when none
    char **text;                 // (n) or NULL when absent
    float *logprobs;             // (offsets[n]) or NULL
    int top_n;                   // alternatives per token (0: none stored)
    int32_t *top_ids;            // (offsets[n], top_n) or NULL
    float *top_logprobs;         // (offsets[n], top_n) or NULL
    float *ttft_s, *latency_s, *queue_s; // (n)
} CompletionSet;

int h5_completions_read(CompletionSet *cs, const char *path, sl_err *err);
void h5_completions_free(CompletionSet *cs);

#endif
