// fuzz_tokenizer.c: libFuzzer target for the tokenizer.json loader and the
// BPE encoder / decoder (src/tokenizer.c, src/tok_bpe.c).
//
// The input is a tokenizer.json. When tok_load accepts it, a fixed string
// (ASCII, accents, CJK, an emoji, digits, whitespace runs, a special-looking
// token) and a string taken from the input itself (its last 64 bytes, which
// may be invalid UTF-8: tok_encode must then fail cleanly) are encoded with
// and without special tokens and decoded back, both in one go and through a
// TokStream; ids near and past the vocabulary edge are decoded too. Every id
// tok_encode returns must be < tok_vocab_size.
#include "fuzz_util.h"
#include "tokenizer.h"

static const char k_fixed[] = "Hello, world!  It's 2024: caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd "
                              "\xf0\x9f\x98\x80\n\tx<s></s><|endoftext|>  1234567";

static void roundtrip(const Tokenizer *t, const char *text, size_t len, int add_special) {
    int32_t *ids = NULL;
    int n = 0;
    sl_err err = {0};
    if (tok_encode(t, text, len, add_special, &ids, &n, &err)) {
        if (!err.msg[0]) abort();
        return;
    }
    int vocab = tok_vocab_size(t);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) abort();
    for (int skip = 0; skip < 2; skip++) {
        char *s = NULL;
        size_t sl = 0;
        if (tok_decode(t, ids, n, skip, &s, &sl, &err) == 0) {
            if (strlen(s) > sl) abort();
            free(s);
        }
    }
    TokStream *st = tok_stream_new(t, 1);
    for (int i = 0; st && i < n; i++) {
        char *s = NULL;
        size_t sl = 0;
        if (tok_stream_step(st, ids[i], &s, &sl, &err) == 0) free(s);
    }
    if (st) {
        char *s = NULL;
        size_t sl = 0;
        if (tok_stream_flush(st, &s, &sl, &err) == 0) free(s);
    }
    tok_stream_free(st);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write(data, size, "tokenizer.json");
    Tokenizer *t = NULL;
    sl_err err = {0};
    if (tok_load(&t, path, &err)) {
        if (!err.msg[0] || t) abort();
        return 0;
    }
    roundtrip(t, k_fixed, sizeof k_fixed - 1, 1);
    roundtrip(t, k_fixed, sizeof k_fixed - 1, 0);
    size_t tail = size < 64 ? size : 64;
    roundtrip(t, (const char *)data + size - tail, tail, 1);

    // odd ids: the edges of the vocabulary, negative, and far past it
    int v = tok_vocab_size(t);
    int32_t odd[] = {0, v - 1, v, v + 1, -1, INT32_MAX, tok_bos_id(t)};
    char *s = NULL;
    if (tok_decode(t, odd, (int)(sizeof odd / sizeof odd[0]), 0, &s, NULL, &err) == 0) free(s);
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        const char *tokstr = tok_id_to_token(t, odd[i]);
        if (tokstr) (void)tok_token_to_id(t, tokstr);
        (void)tok_is_special(t, odd[i]);
    }
    tok_free(t);
    return 0;
}
