// tokenizer.h: Hugging Face tokenizer.json in C, same ids and text as HF.
//
// Reads a `tokenizer.json` (the format of the Hugging Face `tokenizers`
// library) and encodes / decodes exactly as that library does, for the BPE
// families LLMs use: GPT-2 byte-level BPE, byte-level BPE behind a Split regex
// (Llama-3, Qwen2, tiktoken-derived files), and SentencePiece-style BPE with
// byte fallback (Llama-2, Mistral). docs/TOKENIZER.md lists the supported
// components; anything else is refused at load time with an error that names
// the component type and where it sits in the file, never silently wrong ids.
//
// Thread safety: a loaded Tokenizer is read-only. tok_encode / tok_decode may
// run on any number of threads at once on one shared Tokenizer (per-call
// scratch and a per-thread word cache; no locks). A TokStream belongs to one
// thread at a time.
#ifndef SLUICE_TOKENIZER_H
#define SLUICE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct Tokenizer Tokenizer;

// Loads path (a tokenizer.json). On success *out is the caller's, freed with
// tok_free. On failure returns -1, *out = NULL, err names the file and the
// JSON path of the offending field (e.g. "pre_tokenizer.pretokenizers[1]").
int tok_load(Tokenizer **out, const char *path, sl_err *err);

// Same, from dir/tokenizer.json (a model directory).
int tok_load_dir(Tokenizer **out, const char *dir, sl_err *err);

// Frees t; tok_free(NULL) is a no-op. No encode/decode may be running on t.
void tok_free(Tokenizer *t);

// Encodes len bytes of UTF-8 text. add_special != 0 applies the file's
// post-processor (e.g. the BOS of TemplateProcessing); 0 gives the bare ids,
// as HF's encode(text, add_special_tokens=False). *ids is a fresh malloc'd
// array of *n ids that the caller frees (non-NULL even when *n == 0).
// Invalid UTF-8 gives -1 and an error with the byte offset.
int tok_encode(const Tokenizer *t, const char *text, size_t len, int add_special,
               int32_t **ids, int *n, sl_err *err);

// Decodes n ids into NUL-terminated UTF-8 text (*text is the caller's to
// free; *text_len, if not NULL, gets its length). skip_special drops the
// special added tokens, as HF's decode(ids, skip_special_tokens=True). Ids
// that name no token are skipped, as HF does. Bytes that do not form UTF-8
// come out as U+FFFD, as HF does.
int tok_decode(const Tokenizer *t, const int32_t *ids, int n, int skip_special, char **text,
               size_t *text_len, sl_err *err);

// Vocabulary: one past the largest id of the model or of an added token
// (the size an embedding table needs).
int tok_vocab_size(const Tokenizer *t);
// The id the post-processor puts first (the BOS), or -1 when it adds none.
int tok_bos_id(const Tokenizer *t);
// Id of a token's exact text (added tokens first, then the model), or -1.
int tok_token_to_id(const Tokenizer *t, const char *token);
// Text of an id (a view into t, valid until tok_free), or NULL.
const char *tok_id_to_token(const Tokenizer *t, int id);
// 1 when id is a special added token (what skip_special drops).
int tok_is_special(const Tokenizer *t, int id);

// ----------------------------------------------------------------------------
// streaming decode: feed ids one at a time as they are generated

typedef struct TokStream TokStream;

// A fresh stream on t (t must outlive it); free with tok_stream_free.
TokStream *tok_stream_new(const Tokenizer *t, int skip_special);
void tok_stream_free(TokStream *s);

// Adds one id. When new text is ready, *text (caller frees) gets it and
// *text_len its length; otherwise *text = NULL, *text_len = 0. Text is held
// back while it would end in an incomplete UTF-8 character (HF's
// DecodeStream algorithm), so every chunk is whole characters and the
// concatenation of all chunks plus tok_stream_flush equals tok_decode of all
// the ids.
int tok_stream_step(TokStream *s, int32_t id, char **text, size_t *text_len, sl_err *err);

// Whatever is still held back (possibly U+FFFD for a truncated character);
// *text is the caller's (maybe ""). The stream may be fed again afterwards.
int tok_stream_flush(TokStream *s, char **text, size_t *text_len, sl_err *err);

#endif
