// prompts_text.h: prompts as text: JSONL / plain-text readers, parallel
// tokenization into a PromptSet, and decoding of completions.
//
// This is the text side of sluice's HDF5 contract (io/h5io.h, docs/HDF5.md):
// `sluice prep` reads text with prompts_read_jsonl / prompts_read_text, fills
// the token arrays with prompts_tokenize and writes the set with
// h5_prompts_write; `sluice run` calls prompts_load, which also tokenizes a
// prompts file that holds `prompt_text` only; the engine turns completion ids
// into text with prompts_decode_completion.
//
// Per-request fields given on some JSONL lines only are stored for every
// prompt, with a sentinel meaning "use the job's flag default" on the others:
//   max_new_tokens, top_k, seed: PROMPT_UNSET_INT (-1; the engine treats any
//                                negative value as unset)
//   temperature, top_p, min_p, repetition_penalty, presence_penalty,
//   frequency_penalty:           NaN (prompt_unset_f32)
//   request_id:                  ""
// A dataset is written only when at least one line gives the field; values a
// line gives are range-checked, so they never collide with a sentinel.
#ifndef SLUICE_PROMPTS_TEXT_H
#define SLUICE_PROMPTS_TEXT_H

#include <math.h>
#include <stdint.h>

#include "common.h"
#include "h5io.h"
#include "tokenizer.h"

#define PROMPT_UNSET_INT (-1) // max_new_tokens / top_k / seed: "use the flag default"

// 1 when a float per-request value is the "use the flag default" sentinel (NaN).
static inline int prompt_unset_f32(float v) { return isnan(v); }

// Reads a JSONL prompts file: one JSON object per line with "prompt" (string,
// required) and optional per-request fields in the ranges of `sluice run`'s
// flags: "max_new_tokens" (int in [1, 2^24]), "temperature" ([0, 1e4]),
// "top_p" ((0, 1]), "top_k" (int in [0, 2^30]), "seed" (int >= 0), "min_p"
// ([0, 1]), "repetition_penalty" ([1e-6, 1e6]), "presence_penalty" and
// "frequency_penalty" ([-1e4, 1e4]), "request_id" (string or integer, stored
// as a string; "" when absent). null counts as absent; other fields are
// ignored with one warning. Empty lines at the end of the file are ignored;
// an empty line before a prompt is an error.
// Fills ps->n, ps->prompt_text and the optional arrays (sentinels above);
// ps->tokens / ps->offsets stay NULL until prompts_tokenize. ps is
// overwritten (not freed first) and owned by the caller (h5_prompts_free),
// also on failure, where it is left empty. Errors name "path:LINE" and the
// field, e.g. `p.jsonl:17: expected a JSON object with a "prompt" string`.
int prompts_read_jsonl(PromptSet *ps, const char *path, sl_err *err);

// Reads plain text, one prompt per line: the '\n' is not part of the prompt,
// a '\r' before it (CRLF) is dropped, a final line without '\n' counts, and an
// empty line is an empty prompt (kept, so prompt i is line i+1). Invalid
// UTF-8 or a NUL byte is an error naming the line. Ownership as above.
int prompts_read_text(PromptSet *ps, const char *path, sl_err *err);

// Tokenizes every ps->prompt_text[i] with tok (add_special as in tok_encode)
// into ps->tokens / ps->offsets / ps->n_tokens, replacing any tokens already
// there. threads <= 0 means all cores. Prompts are encoded independently on
// `threads` threads and concatenated in prompt order, so the result does not
// depend on the thread count. On failure (the lowest failing prompt is
// named) the token arrays are left as they were.
int prompts_tokenize(PromptSet *ps, const Tokenizer *tok, int add_special, int threads,
                     sl_err *err);

// Reads a prompts file for `sluice run`: h5_prompts_read, then, when the file
// holds `prompt_text` but no tokens (io/h5io.c leaves ps->offsets NULL for
// such a file), tokenizes it with tok (add_special = 1, `threads` threads).
// tok may be NULL: a text-only file is then an error saying a tokenizer.json
// is needed. ps is the caller's (h5_prompts_free), empty on failure.
int prompts_load(PromptSet *ps, const char *path, const Tokenizer *tok, int threads,
                 sl_err *err);

// Decoded text of a completion (tok_decode with skip_special = 1), malloc'd
// and the caller's to free; NULL when tok is NULL or decoding fails (the
// writer stores "" then). Safe to call from any thread.
char *prompts_decode_completion(const Tokenizer *tok, const int32_t *ids, int n);

#endif
