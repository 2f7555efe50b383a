// tokenizer.c: loading tokenizer.json, the encode pipeline and decoding.
//
// The pipeline is Hugging Face `tokenizers`' Tokenizer::encode, step by step:
//   1. added tokens whose `normalized` is false are cut out of the raw text
//      (leftmost-longest, with single_word / lstrip / rstrip as HF applies them);
//   2. each remaining segment is normalized on its own (so Prepend("▁") applies
//      after every special token, as in HF), then added tokens with
//      `normalized` true are cut out of the normalized text;
//   3. the pre-tokenizer splits each segment into words (PCRE2 regexes with UTF
//      and UCP, JIT-compiled; the patterns are those of the file);
//   4. the BPE model (tok_bpe.c) turns each word into ids;
//   5. the post-processor's template adds BOS/EOS ids when asked.
// Decoding runs the decoder chain over the token strings (ByteLevel, Replace,
// ByteFallback, Fuse, Strip, Metaspace) and joins them, replacing broken UTF-8
// with U+FFFD the way Rust's String::from_utf8_lossy does.
//
// Offsets are not tracked: sluice needs ids and text only.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <utf8proc.h>

#include "tok_internal.h"
#include "tokenizer.h"

// ----------------------------------------------------------------------------
// growable byte buffer

typedef struct {
    char *p;
    size_t n, cap;
} tbuf;

static void tb_reserve(tbuf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return;
    size_t c = b->cap ? b->cap : 64;
    while (c < b->n + extra + 1) c *= 2;
    b->p = sl_realloc(b->p, c);
    b->cap = c;
}

static void tb_put(tbuf *b, const void *s, size_t n) {
    tb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void tb_putc(tbuf *b, char c) { tb_put(b, &c, 1); }

// Appends code point cp as UTF-8.
static void tb_put_cp(tbuf *b, int32_t cp) {
    utf8proc_uint8_t tmp[4];
    utf8proc_ssize_t k = utf8proc_encode_char(cp, tmp);
    tb_put(b, tmp, (size_t)k);
}

// ----------------------------------------------------------------------------
// UTF-8 helpers

// Strict validation as Rust's str: returns the offset of the first invalid
// byte, or len when all is valid.
static size_t utf8_invalid_at(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return i;
        if (i + (size_t)need >= len) return i; // truncated at the end
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (int k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += need + 1;
    }
    return len;
}

// Appends s to out, replacing each maximal invalid subsequence by U+FFFD
// (Rust's String::from_utf8_lossy).
static void utf8_lossy_append(tbuf *out, const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t bad = utf8_invalid_at(s + i, len - i);
        tb_put(out, s + i, bad);
        i += bad;
        if (i >= len) break;
        // skip the lead byte and the continuation bytes that were valid
        unsigned c = s[i];
        size_t k = 1;
        unsigned lo = 0x80, hi = 0xBF;
        int need = 0;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        }
        if (need && i + 1 < len && s[i + 1] >= lo && s[i + 1] <= hi) {
            k = 2;
            while ((int)k <= need && i + k < len && s[i + k] >= 0x80 && s[i + k] <= 0xBF) k++;
        }
        tb_put(out, "\xEF\xBF\xBD", 3);
        i += k;
    }
}

// Decodes one code point at s (valid UTF-8); returns its byte length.
static int utf8_next(const char *s, size_t n, int32_t *cp) {
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, cp);
    if (k <= 0) {
        *cp = (unsigned char)s[0];
        return 1;
    }
    return (int)k;
}

// Rust's char::is_whitespace (the White_Space property).
static int is_ws(int32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

// The regex crate's \w: alphabetic, marks, decimal digits, connector
// punctuation, joiners (approximated by general categories).
static int is_word_char(int32_t c) {
    if (c == 0x200C || c == 0x200D) return 1;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

// Last code point before s+end (end > 0).
static int32_t utf8_prev_cp(const char *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    int32_t cp;
    utf8_next(s + i, end - i, &cp);
    if (start) *start = i;
    return cp;
}

// ----------------------------------------------------------------------------
// GPT-2 byte <-> unicode table

static char g_byte_enc[256][3]; // UTF-8 of the char standing for each byte
static uint8_t g_byte_enc_len[256];
static int16_t g_cp_byte[512]; // code point -> byte, -1 when not a byte char
static once_flag g_bytes_once = ONCE_FLAG_INIT;

static void bytes_init(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) g_cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = keep ? b : 256 + n++;
        g_cp_byte[cp] = (int16_t)b;
        utf8proc_uint8_t tmp[4];
        int k = (int)utf8proc_encode_char(cp, tmp);
        memcpy(g_byte_enc[b], tmp, (size_t)k);
        g_byte_enc_len[b] = (uint8_t)k;
    }
}

// ----------------------------------------------------------------------------
// regexes

typedef struct {
    pcre2_code *code;
    int jit;
} tok_re;

static int re_compile(tok_re *re, const char *pat, size_t len, const char *where, sl_err *err) {
    int ec;
    PCRE2_SIZE eo;
    re->code = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &ec,
                             &eo, NULL);
    if (!re->code) {
        char msg[256];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
        return sl_errf(err, "%s: regex /%.*s/ does not compile at offset %zu: %s", where,
                       (int)len, pat, (size_t)eo, msg);
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

// A literal string as a PCRE2 pattern (HF escapes String patterns too).
static char *re_escape(const char *s, size_t n, size_t *out_len) {
    tbuf b = {0};
    tb_reserve(&b, 2 * n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                          (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80))
            tb_putc(&b, '\\');
        tb_putc(&b, (char)c);
    }
    *out_len = b.n;
    return b.p;
}

typedef struct {
    size_t s, e;
} span;

typedef struct {
    span *v;
    int n, cap;
} spans;

static void spans_push(spans *a, size_t s, size_t e) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = sl_realloc(a->v, (size_t)a->cap * sizeof(span));
    }
    a->v[a->n++] = (span){s, e};
}

// Every match of re in subj[0..n), with Oniguruma's find_iter rule for empty
// matches (an empty match right where the previous one ended is skipped).
static void re_find_all(const tok_re *re, pcre2_match_data *md, const char *subj, size_t n,
                        spans *out) {
    out->n = 0;
    size_t pos = 0;
    int have_last = 0;
    size_t last_end = 0;
    while (pos <= n) {
        int rc = -1;
        if (re->jit)
            rc = pcre2_jit_match(re->code, (PCRE2_SPTR)subj, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (!re->jit || rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re->code, (PCRE2_SPTR)subj, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (s == e && have_last && last_end == e) {
            if (pos >= n) break;
            int32_t cp;
            pos += utf8_next(subj + pos, n - pos, &cp);
            continue;
        }
        spans_push(out, s, e);
        pos = e;
        have_last = 1;
        last_end = e;
    }
}

// ----------------------------------------------------------------------------
// components

enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_NEVER, PREPEND_ALWAYS, PREPEND_FIRST };

typedef enum {
    NORM_SEQ, NORM_PREPEND, NORM_REPLACE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD,
    NORM_LOWER, NORM_STRIP, NORM_BYTELEVEL
} norm_kind;

typedef struct tok_norm {
    norm_kind kind;
    struct tok_norm *sub; // (nsub) for NORM_SEQ
    int nsub;
    char *a, *b; // Prepend text / Replace literal pattern and content
    size_t alen, blen;
    tok_re re; // Replace with a Regex pattern (re.code NULL for literals)
    int left, right;
} tok_norm;

typedef enum { PRE_SEQ, PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE } pre_kind;

typedef struct tok_pre {
    pre_kind kind;
    struct tok_pre *sub;
    int nsub;
    tok_re re; // Split pattern; ByteLevel's GPT-2 regex when use_regex
    int behavior, invert;
    int add_prefix_space, use_regex;
    char repl[8]; // Metaspace replacement (UTF-8)
    size_t repl_len;
    int prepend, split;
} tok_pre;

typedef enum {
    DEC_SEQ, DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE
} dec_kind;

typedef struct tok_dec {
    dec_kind kind;
    struct tok_dec *sub;
    int nsub;
    char *a, *b; // Replace pattern (literal) and content
    size_t alen, blen;
    tok_re re;
    int32_t cp; // Strip content / Metaspace replacement
    int start, stop, prepend;
} tok_dec;

typedef struct {
    char *content; // as written in the file
    size_t len;
    char *pat; // what is matched: content, normalized when `normalized`
    size_t plen;
    int32_t id;
    int single_word, lstrip, rstrip, normalized, special;
} tok_added;

// Added tokens indexed by first byte, longest first, for leftmost-longest.
typedef struct {
    int *idx;  // indices into Tokenizer.added
    int start[257];
} tok_matchset;

struct Tokenizer {
    char *path;
    tok_bpe bpe;
    tok_added *added;
    int n_added;
    int32_t *added_by_id; // (vocab_size) index into added, -1
    tok_matchset ms_raw, ms_norm;
    int has_raw, has_norm;
    tok_norm *norm;
    tok_pre *pre;
    tok_dec *dec;
    int32_t *prefix, *suffix;
    int nprefix, nsuffix;
    int vocab_size;
};

// ----------------------------------------------------------------------------
// per-call scratch

typedef struct {
    size_t off, len;
    int first; // starts at offset 0 of the original text
} piece;

typedef struct {
    tbuf buf;
    piece *p;
    int n, cap;
} plist;

static void pl_clear(plist *l) {
    l->buf.n = 0;
    l->n = 0;
}

static void pl_add(plist *l, const char *s, size_t n, int first) {
    if (n == 0) return; // HF drops empty splits
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 32;
        l->p = sl_realloc(l->p, (size_t)l->cap * sizeof(piece));
    }
    l->p[l->n++] = (piece){l->buf.n, n, first};
    tb_put(&l->buf, s, n);
}

static void pl_free(plist *l) {
    free(l->buf.p);
    free(l->p);
}

typedef struct {
    pcre2_match_data *md;
    spans sp;
    tbuf t1, t2, t3;
    plist a, b;
} enc_ctx;

// ----------------------------------------------------------------------------
// normalizers

// Replaces every non-overlapping occurrence (left to right) of the literal
// pat, or of the regex, in in[0..n) with rep, into out.
static void replace_all(enc_ctx *c, const tok_re *re, const char *pat, size_t plen,
                        const char *rep, size_t rlen, const char *in, size_t n, tbuf *out) {
    out->n = 0;
    tb_reserve(out, n);
    if (re && re->code) {
        re_find_all(re, c->md, in, n, &c->sp);
        size_t prev = 0;
        for (int i = 0; i < c->sp.n; i++) {
            tb_put(out, in + prev, c->sp.v[i].s - prev);
            tb_put(out, rep, rlen);
            prev = c->sp.v[i].e;
        }
        tb_put(out, in + prev, n - prev);
        return;
    }
    size_t i = 0;
    while (i < n) {
        const char *f = plen ? memmem(in + i, n - i, pat, plen) : NULL;
        if (!f) break;
        size_t at = (size_t)(f - in);
        tb_put(out, in + i, at - i);
        tb_put(out, rep, rlen);
        i = at + plen;
    }
    tb_put(out, in + i, n - i);
}

static void utf8proc_into(const char *in, size_t n, int opts, tbuf *out) {
    utf8proc_uint8_t *dst = NULL;
    out->n = 0;
    if (n == 0) {
        tb_reserve(out, 0);
        out->p[0] = 0;
        return;
    }
    utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)(UTF8PROC_STABLE | opts));
    if (k < 0) { // cannot happen on validated input; keep the text as is
        tb_put(out, in, n);
        return;
    }
    tb_put(out, dst, (size_t)k);
    free(dst);
}

// Applies nm to in[0..n) and leaves the result in *res (one of c's buffers).
static void normalize(enc_ctx *c, const tok_norm *nm, const char *in, size_t n, tbuf *out) {
    switch (nm->kind) {
    case NORM_SEQ: {
        tbuf tmp = {0};
        out->n = 0;
        tb_put(out, in, n);
        for (int i = 0; i < nm->nsub; i++) {
            normalize(c, &nm->sub[i], out->p, out->n, &tmp);
            tbuf sw = *out;
            *out = tmp;
            tmp = sw;
        }
        free(tmp.p);
        return;
    }
    case NORM_PREPEND:
        out->n = 0;
        if (n) tb_put(out, nm->a, nm->alen);
        tb_put(out, in, n);
        if (!out->p) tb_reserve(out, 0);
        return;
    case NORM_REPLACE:
        replace_all(c, &nm->re, nm->a, nm->alen, nm->b, nm->blen, in, n, out);
        return;
    case NORM_NFC: utf8proc_into(in, n, UTF8PROC_COMPOSE, out); return;
    case NORM_NFD: utf8proc_into(in, n, UTF8PROC_DECOMPOSE, out); return;
    case NORM_NFKC: utf8proc_into(in, n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out); return;
    case NORM_NFKD: utf8proc_into(in, n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out); return;
    case NORM_LOWER:
        out->n = 0;
        tb_reserve(out, n);
        for (size_t i = 0; i < n;) {
            int32_t cp;
            i += utf8_next(in + i, n - i, &cp);
            if (cp == 0x130) { // Rust's full lowercase mapping: "i̇"
                tb_put(out, "i\xCC\x87", 3);
                continue;
            }
            tb_put_cp(out, utf8proc_tolower(cp));
        }
        return;
    case NORM_STRIP: {
        size_t s = 0, e = n;
        if (nm->left)
            while (s < e) {
                int32_t cp;
                int k = utf8_next(in + s, e - s, &cp);
                if (!is_ws(cp)) break;
                s += k;
            }
        if (nm->right)
            while (e > s) {
                size_t st;
                if (!is_ws(utf8_prev_cp(in, e, &st))) break;
                e = st;
            }
        out->n = 0;
        tb_put(out, in + s, e - s);
        if (!out->p) tb_reserve(out, 0);
        return;
    }
    case NORM_BYTELEVEL:
        out->n = 0;
        tb_reserve(out, 2 * n);
        for (size_t i = 0; i < n; i++) {
            unsigned char b = (unsigned char)in[i];
            tb_put(out, g_byte_enc[b], g_byte_enc_len[b]);
        }
        return;
    }
}

// ----------------------------------------------------------------------------
// pre-tokenizers

// HF's NormalizedString::split: the matches of re (or of the literal
// character when re is NULL) cut s[0..n) according to behavior.
static void split_piece(enc_ctx *c, const tok_re *re, const char *lit, size_t llen,
                        int behavior, int invert, const char *s, size_t n, int first,
                        plist *out) {
    spans *m = &c->sp;
    if (re) re_find_all(re, c->md, s, n, m);
    else {
        m->n = 0;
        for (size_t i = 0; i + llen <= n;) {
            const char *f = memmem(s + i, n - i, lit, llen);
            if (!f) break;
            size_t at = (size_t)(f - s);
            spans_push(m, at, at + llen);
            i = at + llen;
        }
    }
    // (offsets, is_match) covering the whole piece
    int cap = 2 * m->n + 2, k = 0;
    struct seg {
        size_t s, e;
        int m;
    } *sg = sl_malloc((size_t)cap * sizeof(*sg));
    size_t prev = 0;
    for (int i = 0; i < m->n; i++) {
        if (prev != m->v[i].s) sg[k++] = (struct seg){prev, m->v[i].s, 0};
        sg[k++] = (struct seg){m->v[i].s, m->v[i].e, 1};
        prev = m->v[i].e;
    }
    if (prev != n || k == 0) sg[k++] = (struct seg){prev, n, 0};
    if (invert)
        for (int i = 0; i < k; i++) sg[i].m = !sg[i].m;
    // apply the behaviour: the result is a list of (offsets, removed)
    int r = 0;
    switch (behavior) {
    case SPLIT_ISOLATED:
        for (int i = 0; i < k; i++) sg[i].m = 0;
        r = k;
        break;
    case SPLIT_REMOVED:
        r = k;
        break;
    case SPLIT_CONTIGUOUS: {
        int pm = -1;
        for (int i = 0; i < k; i++) {
            if (sg[i].m == pm && r > 0) sg[r - 1].e = sg[i].e;
            else sg[r++] = (struct seg){sg[i].s, sg[i].e, 0};
            pm = sg[i].m;
        }
        for (int i = 0; i < r; i++) sg[i].m = 0;
        break;
    }
    case SPLIT_MERGED_PREV: {
        int pm = 0;
        for (int i = 0; i < k; i++) {
            int im = sg[i].m;
            if (im && !pm && r > 0) sg[r - 1].e = sg[i].e;
            else sg[r++] = (struct seg){sg[i].s, sg[i].e, 0};
            pm = im;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: { // same fold from the right
        int pm = 0;
        r = k;
        int w = k; // write position from the end
        for (int i = k - 1; i >= 0; i--) {
            int im = sg[i].m;
            if (im && !pm && w < k) sg[w].s = sg[i].s;
            else sg[--w] = (struct seg){sg[i].s, sg[i].e, 0};
            pm = im;
        }
        memmove(sg, sg + w, (size_t)(k - w) * sizeof(*sg));
        r = k - w;
        break;
    }
    }
    for (int i = 0; i < r; i++)
        if (!sg[i].m) pl_add(out, s + sg[i].s, sg[i].e - sg[i].s, first && sg[i].s == 0);
    free(sg);
}

// Runs pre-tokenizer p over every piece of in, writing the pieces to out.
static void pre_tokenize(enc_ctx *c, const tok_pre *p, plist *in, plist *out) {
    if (p->kind == PRE_SEQ) {
        plist *x = in, *y = out;
        for (int i = 0; i < p->nsub; i++) {
            pl_clear(y);
            pre_tokenize(c, &p->sub[i], x, y);
            plist *t = x;
            x = y;
            y = t;
        }
        if (x != out) { // result must end in out
            plist t = *out;
            *out = *x;
            *x = t;
        }
        return;
    }
    pl_clear(out);
    for (int i = 0; i < in->n; i++) {
        const char *s = in->buf.p + in->p[i].off;
        size_t n = in->p[i].len;
        int first = in->p[i].first;
        if (p->kind == PRE_SPLIT) {
            split_piece(c, &p->re, NULL, 0, p->behavior, p->invert, s, n, first, out);
        } else if (p->kind == PRE_METASPACE) {
            tbuf *t = &c->t3;
            t->n = 0;
            int add = (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && first)) &&
                      !(n >= 1 && s[0] == ' ') &&
                      !(n >= p->repl_len && memcmp(s, p->repl, p->repl_len) == 0);
            if (add) tb_put(t, p->repl, p->repl_len);
            for (size_t k = 0; k < n; k++) {
                if (s[k] == ' ') tb_put(t, p->repl, p->repl_len);
                else tb_putc(t, s[k]);
            }
            if (!t->p) continue;
            // s began with ' ' means the replaced text starts with the replacement
            if (p->split)
                split_piece(c, NULL, p->repl, p->repl_len, SPLIT_MERGED_NEXT, 0, t->p, t->n,
                            first, out);
            else pl_add(out, t->p, t->n, first);
        } else { // PRE_BYTELEVEL: optional prefix space, GPT-2 regex, byte mapping
            tbuf *t = &c->t3;
            t->n = 0;
            if (p->add_prefix_space && !(n >= 1 && s[0] == ' ')) tb_putc(t, ' ');
            tb_put(t, s, n);
            int start = out->n;
            if (p->use_regex)
                split_piece(c, &p->re, NULL, 0, SPLIT_ISOLATED, 0, t->p, t->n, first, out);
            else pl_add(out, t->p, t->n, first);
            // map bytes of the new pieces in place (into a fresh tail)
            for (int j = start; j < out->n; j++) {
                tbuf *u = &c->t2;
                u->n = 0;
                const unsigned char *q = (const unsigned char *)out->buf.p + out->p[j].off;
                for (size_t k = 0; k < out->p[j].len; k++)
                    tb_put(u, g_byte_enc[q[k]], g_byte_enc_len[q[k]]);
                out->p[j].off = out->buf.n;
                out->p[j].len = u->n;
                tb_put(&out->buf, u->p, u->n);
            }
        }
    }
}

// ----------------------------------------------------------------------------
// added tokens

static void matchset_build(tok_matchset *ms, const tok_added *a, int n, int normalized) {
    int cnt[256] = {0};
    for (int i = 0; i < n; i++)
        if (a[i].normalized == normalized && a[i].plen) cnt[(unsigned char)a[i].pat[0]]++;
    ms->start[0] = 0;
    for (int b = 0; b < 256; b++) ms->start[b + 1] = ms->start[b] + cnt[b];
    ms->idx = sl_malloc((size_t)(ms->start[256] + 1) * sizeof(int));
    int fill[256];
    for (int b = 0; b < 256; b++) fill[b] = ms->start[b];
    for (int i = 0; i < n; i++)
        if (a[i].normalized == normalized && a[i].plen)
            ms->idx[fill[(unsigned char)a[i].pat[0]]++] = i;
    // longest first within each bucket (insertion sort; buckets are small)
    for (int b = 0; b < 256; b++)
        for (int i = ms->start[b] + 1; i < ms->start[b + 1]; i++) {
            int v = ms->idx[i], j = i;
            while (j > ms->start[b] && a[ms->idx[j - 1]].plen < a[v].plen) {
                ms->idx[j] = ms->idx[j - 1];
                j--;
            }
            ms->idx[j] = v;
        }
}

// Leftmost-longest match at or after pos; returns the added index or -1.
static int matchset_find(const Tokenizer *t, const tok_matchset *ms, const char *s, size_t n,
                         size_t pos, size_t *at) {
    for (size_t i = pos; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        for (int k = ms->start[b]; k < ms->start[b + 1]; k++) {
            const tok_added *a = &t->added[ms->idx[k]];
            if (a->plen <= n - i && memcmp(s + i, a->pat, a->plen) == 0) {
                *at = i;
                return ms->idx[k];
            }
        }
    }
    return -1;
}

typedef struct {
    size_t s, e;
    int added; // index into t->added, or -1 for text
} aseg;

// HF's AddedVocabulary::find_matches: cuts s into text and added-token segments.
static int added_split(const Tokenizer *t, const tok_matchset *ms, const char *s, size_t n,
                       aseg **out, int *cap) {
    int k = 0;
#define PUSH(S, E, A)                                                                          \
    do {                                                                                       \
        if (k == *cap) {                                                                       \
            *cap = *cap ? *cap * 2 : 16;                                                       \
            *out = sl_realloc(*out, (size_t)*cap * sizeof(aseg));                              \
        }                                                                                      \
        (*out)[k++] = (aseg){(S), (E), (A)};                                                   \
    } while (0)
    size_t start_offset = 0, pos = 0, at;
    int ai;
    while (pos < n && (ai = matchset_find(t, ms, s, n, pos, &at)) >= 0) {
        const tok_added *a = &t->added[ai];
        size_t start = at, stop = at + a->plen;
        pos = stop;
        if (a->single_word) {
            int start_space = start == 0 || !is_word_char(utf8_prev_cp(s, start, NULL));
            int32_t cp = 0;
            if (stop < n) utf8_next(s + stop, n - stop, &cp);
            int stop_space = stop == n || !is_word_char(cp);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t st;
                if (!is_ws(utf8_prev_cp(s, ns, &st))) break;
                ns = st;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip)
            while (stop < n) {
                int32_t cp;
                int l = utf8_next(s + stop, n - stop, &cp);
                if (!is_ws(cp)) break;
                stop += l;
            }
        if (start_offset < start) PUSH(start_offset, start, -1);
        PUSH(start, stop, ai);
        start_offset = stop;
    }
    if (start_offset != n || n == 0) PUSH(start_offset, n, -1);
#undef PUSH
    return k;
}

// ----------------------------------------------------------------------------
// encode

static void encode_text(const Tokenizer *t, enc_ctx *c, const char *s, size_t n, int first,
                        tok_ids *out) {
    // steps 3 and 4: pre-tokenize then BPE each word
    if (!t->pre) {
        tok_bpe_word(&t->bpe, s, n, out);
        return;
    }
    pl_clear(&c->a);
    pl_add(&c->a, s, n, first);
    if (!c->a.n) return;
    pre_tokenize(c, t->pre, &c->a, &c->b);
    for (int i = 0; i < c->b.n; i++)
        tok_bpe_word(&t->bpe, c->b.buf.p + c->b.p[i].off, c->b.p[i].len, out);
}

int tok_encode(const Tokenizer *t, const char *text, size_t len, int add_special,
               int32_t **ids, int *n, sl_err *err) {
    *ids = NULL;
    *n = 0;
    size_t bad = utf8_invalid_at((const unsigned char *)text, len);
    if (bad != len)
        return sl_errf(err, "tokenizer %s: input is not valid UTF-8 at byte offset %zu (0x%02x)",
                       t->path, bad, (unsigned char)text[bad]);
    enc_ctx c = {0};
    c.md = pcre2_match_data_create(1, NULL);
    tok_ids out = {0};
    aseg *raw = NULL, *sub = NULL;
    int rcap = 0, scap = 0;
    if (add_special)
        for (int i = 0; i < t->nprefix; i++) tok_ids_push(&out, t->prefix[i]);
    int nr = t->has_raw ? added_split(t, &t->ms_raw, text, len, &raw, &rcap) : 0;
    if (!t->has_raw) {
        raw = sl_malloc(sizeof(aseg));
        raw[0] = (aseg){0, len, -1};
        nr = 1;
    }
    for (int i = 0; i < nr; i++) {
        if (raw[i].added >= 0) {
            tok_ids_push(&out, t->added[raw[i].added].id);
            continue;
        }
        const char *s = text + raw[i].s;
        size_t sn = raw[i].e - raw[i].s;
        int first = raw[i].s == 0;
        if (sn == 0) continue;
        if (t->norm) {
            normalize(&c, t->norm, s, sn, &c.t1);
            s = c.t1.p;
            sn = c.t1.n;
        }
        if (!t->has_norm) {
            encode_text(t, &c, s, sn, first, &out);
            continue;
        }
        int ns = added_split(t, &t->ms_norm, s, sn, &sub, &scap);
        for (int j = 0; j < ns; j++) {
            if (sub[j].added >= 0) tok_ids_push(&out, t->added[sub[j].added].id);
            else if (sub[j].e > sub[j].s)
                encode_text(t, &c, s + sub[j].s, sub[j].e - sub[j].s, first && sub[j].s == 0,
                            &out);
        }
    }
    if (add_special)
        for (int i = 0; i < t->nsuffix; i++) tok_ids_push(&out, t->suffix[i]);
    free(raw);
    free(sub);
    pcre2_match_data_free(c.md);
    free(c.sp.v);
    free(c.t1.p);
    free(c.t2.p);
    free(c.t3.p);
    pl_free(&c.a);
    pl_free(&c.b);
    if (!out.v) out.v = sl_malloc(sizeof(int32_t));
    *ids = out.v;
    *n = out.n;
    return 0;
}

// ----------------------------------------------------------------------------
// decode

typedef struct {
    tbuf *v;
    int n, cap;
} slist;

static void sl_add(slist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 32;
        l->v = sl_realloc(l->v, (size_t)l->cap * sizeof(tbuf));
    }
    l->v[l->n] = (tbuf){0};
    tb_put(&l->v[l->n], s, n);
    l->n++;
}

static void slist_free(slist *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i].p);
    free(l->v);
    *l = (slist){0};
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

// "<0xNN>" -> NN, else -1 (u8::from_str_radix accepts a leading '+').
static int byte_token(const tbuf *b) {
    if (b->n != 6 || memcmp(b->p, "<0x", 3) != 0 || b->p[5] != '>') return -1;
    int h = hexval(b->p[3]), l = hexval(b->p[4]);
    if (b->p[3] == '+' && l >= 0) return l;
    return h >= 0 && l >= 0 ? h * 16 + l : -1;
}

// One decoder step of HF's decode_chain: in -> out (in is consumed).
static void decode_chain(const tok_dec *d, slist *in, slist *out, pcre2_match_data *md,
                         spans *sp) {
    *out = (slist){0};
    switch (d->kind) {
    case DEC_SEQ: {
        slist cur = *in;
        *in = (slist){0};
        for (int i = 0; i < d->nsub; i++) {
            slist nx;
            decode_chain(&d->sub[i], &cur, &nx, md, sp);
            slist_free(&cur);
            cur = nx;
        }
        *out = cur;
        return;
    }
    case DEC_BYTELEVEL: {
        tbuf raw = {0}, res = {0};
        for (int i = 0; i < in->n; i++) {
            const tbuf *tk = &in->v[i];
            size_t mark = raw.n;
            int ok = 1;
            for (size_t k = 0; k < tk->n;) {
                int32_t cp;
                k += utf8_next(tk->p + k, tk->n - k, &cp);
                if (cp >= 512 || g_cp_byte[cp] < 0) {
                    ok = 0;
                    break;
                }
                tb_putc(&raw, (char)g_cp_byte[cp]);
            }
            if (!ok) {
                raw.n = mark;
                tb_put(&raw, tk->p, tk->n);
            }
        }
        utf8_lossy_append(&res, (const unsigned char *)raw.p, raw.n);
        sl_add(out, res.p ? res.p : "", res.n);
        free(raw.p);
        free(res.p);
        return;
    }
    case DEC_REPLACE:
        for (int i = 0; i < in->n; i++) {
            enc_ctx c = {0};
            c.md = md;
            c.sp = *sp;
            tbuf r = {0};
            replace_all(&c, &d->re, d->a, d->alen, d->b, d->blen, in->v[i].p, in->v[i].n, &r);
            *sp = c.sp;
            sl_add(out, r.p ? r.p : "", r.n);
            free(r.p);
        }
        return;
    case DEC_BYTEFALLBACK: {
        tbuf bytes = {0};
        for (int i = 0; i <= in->n; i++) {
            int b = i < in->n ? byte_token(&in->v[i]) : -1;
            if (b >= 0) {
                tb_putc(&bytes, (char)b);
                continue;
            }
            if (bytes.n) {
                if (utf8_invalid_at((const unsigned char *)bytes.p, bytes.n) == bytes.n)
                    sl_add(out, bytes.p, bytes.n);
                else
                    for (size_t k = 0; k < bytes.n; k++) sl_add(out, "\xEF\xBF\xBD", 3);
                bytes.n = 0;
            }
            if (i < in->n) sl_add(out, in->v[i].p, in->v[i].n);
        }
        free(bytes.p);
        return;
    }
    case DEC_FUSE: {
        tbuf r = {0};
        for (int i = 0; i < in->n; i++) tb_put(&r, in->v[i].p, in->v[i].n);
        sl_add(out, r.p ? r.p : "", r.n);
        free(r.p);
        return;
    }
    case DEC_STRIP:
        for (int i = 0; i < in->n; i++) {
            const char *s = in->v[i].p;
            size_t b = 0, e = in->v[i].n;
            for (int k = 0; k < d->start && b < e; k++) {
                int32_t cp;
                int l = utf8_next(s + b, e - b, &cp);
                if (cp != d->cp) break;
                b += l;
            }
            for (int k = 0; k < d->stop && e > b; k++) {
                size_t st;
                if (utf8_prev_cp(s, e, &st) != d->cp) break;
                e = st;
            }
            sl_add(out, s + b, e - b);
        }
        return;
    case DEC_METASPACE:
        for (int i = 0; i < in->n; i++) {
            tbuf r = {0};
            tb_reserve(&r, in->v[i].n);
            for (size_t k = 0; k < in->v[i].n;) {
                int32_t cp;
                int l = utf8_next(in->v[i].p + k, in->v[i].n - k, &cp);
                if (cp == d->cp) {
                    if (!(i == 0 && d->prepend != PREPEND_NEVER)) tb_putc(&r, ' ');
                } else tb_put(&r, in->v[i].p + k, l);
                k += l;
            }
            sl_add(out, r.p, r.n);
            free(r.p);
        }
        return;
    }
}

int tok_decode(const Tokenizer *t, const int32_t *ids, int n, int skip_special, char **text,
               size_t *text_len, sl_err *err) {
    slist toks = {0};
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0) continue;
        if (id < t->vocab_size && t->added_by_id[id] >= 0) {
            const tok_added *a = &t->added[t->added_by_id[id]];
            // HF (>= 0.22) decodes a `normalized` added token from its normalized
            // form, so that the decoder can invert the normalizer
            if (!(skip_special && a->special)) sl_add(&toks, a->pat, a->plen);
        } else if (id < t->bpe.n_ids && t->bpe.tok[id]) {
            sl_add(&toks, t->bpe.tok[id], t->bpe.tok_len[id]);
        }
    }
    tbuf r = {0};
    if (t->dec) {
        slist out;
        pcre2_match_data *md = pcre2_match_data_create(1, NULL);
        spans sp = {0};
        decode_chain(t->dec, &toks, &out, md, &sp);
        pcre2_match_data_free(md);
        free(sp.v);
        for (int i = 0; i < out.n; i++) tb_put(&r, out.v[i].p, out.v[i].n);
        slist_free(&out);
    } else {
        for (int i = 0; i < toks.n; i++) {
            if (i) tb_putc(&r, ' ');
            tb_put(&r, toks.v[i].p, toks.v[i].n);
        }
    }
    slist_free(&toks);
    if (!r.p) tb_reserve(&r, 0), r.p[0] = 0;
    *text = r.p;
    if (text_len) *text_len = r.n;
    return 0;
}

// ----------------------------------------------------------------------------
// streaming decode (HF's DecodeStream)

struct TokStream {
    const Tokenizer *t;
    int skip;
    tok_ids ids;
    char *prefix;
    size_t prefix_len;
    int prefix_index;
};

TokStream *tok_stream_new(const Tokenizer *t, int skip_special) {
    TokStream *s = sl_calloc(1, sizeof(*s));
    s->t = t;
    s->skip = skip_special;
    s->prefix = sl_strdup("");
    return s;
}

void tok_stream_free(TokStream *s) {
    if (!s) return;
    free(s->ids.v);
    free(s->prefix);
    free(s);
}

static int ends_fffd(const char *s, size_t n) {
    return n >= 3 && memcmp(s + n - 3, "\xEF\xBF\xBD", 3) == 0;
}

int tok_stream_step(TokStream *s, int32_t id, char **text, size_t *text_len, sl_err *err) {
    *text = NULL;
    *text_len = 0;
    char *str = NULL;
    size_t sl;
    if (s->prefix_len == 0 && s->ids.n > 0) {
        if (tok_decode(s->t, s->ids.v, s->ids.n, s->skip, &str, &sl, err)) return -1;
        if (!ends_fffd(str, sl)) {
            free(s->prefix);
            s->prefix = str;
            s->prefix_len = sl;
            s->prefix_index = s->ids.n;
        } else free(str);
    }
    tok_ids_push(&s->ids, id);
    if (tok_decode(s->t, s->ids.v, s->ids.n, s->skip, &str, &sl, err)) return -1;
    if (sl > s->prefix_len && !ends_fffd(str, sl)) {
        if (memcmp(str, s->prefix, s->prefix_len) != 0) {
            free(str);
            return sl_errf(err, "tokenizer %s: stream decode: text no longer extends its prefix",
                           s->t->path);
        }
        size_t nl = sl - s->prefix_len;
        *text = sl_malloc(nl + 1);
        memcpy(*text, str + s->prefix_len, nl);
        (*text)[nl] = 0;
        *text_len = nl;
        free(str);
        int new_prefix_index = s->ids.n - s->prefix_index;
        memmove(s->ids.v, s->ids.v + s->prefix_index,
                (size_t)(s->ids.n - s->prefix_index) * sizeof(int32_t));
        s->ids.n -= s->prefix_index;
        free(s->prefix);
        if (tok_decode(s->t, s->ids.v, s->ids.n, s->skip, &s->prefix, &s->prefix_len, err))
            return -1;
        s->prefix_index = new_prefix_index;
        return 0;
    }
    free(str);
    return 0;
}

int tok_stream_flush(TokStream *s, char **text, size_t *text_len, sl_err *err) {
    char *str;
    size_t sl;
    if (tok_decode(s->t, s->ids.v, s->ids.n, s->skip, &str, &sl, err)) return -1;
    size_t skip = (sl >= s->prefix_len && memcmp(str, s->prefix, s->prefix_len) == 0)
                      ? s->prefix_len : 0;
    memmove(str, str + skip, sl - skip + 1);
    *text = str;
    *text_len = sl - skip;
    s->ids.n = 0;
    s->prefix_len = 0;
    s->prefix[0] = 0;
    s->prefix_index = 0;
    return 0;
}

// ----------------------------------------------------------------------------
// small public queries

int tok_vocab_size(const Tokenizer *t) { return t->vocab_size; }

int tok_bos_id(const Tokenizer *t) { return t->nprefix > 0 ? t->prefix[0] : -1; }

int tok_token_to_id(const Tokenizer *t, const char *token) {
    size_t n = strlen(token);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, token, n) == 0)
            return t->added[i].id;
    return tok_bpe_lookup(&t->bpe, token, n);
}

const char *tok_id_to_token(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    if (t->added_by_id[id] >= 0) return t->added[t->added_by_id[id]].content;
    return id < t->bpe.n_ids ? t->bpe.tok[id] : NULL;
}

int tok_is_special(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->vocab_size || t->added_by_id[id] < 0) return 0;
    return t->added[t->added_by_id[id]].special;
}

// ----------------------------------------------------------------------------
// loading tokenizer.json

static atomic_uint_fast64_t g_uid = 1;

// Reads a {"String": s} / {"Regex": r} pattern object: literal into *lit, or
// a compiled regex into re.
static int load_pattern(json_t *j, tok_re *re, char **lit, size_t *litlen, const char *path,
                        const char *where, sl_err *err) {
    json_t *s = json_object_get(j, "String"), *r = json_object_get(j, "Regex");
    if (json_is_string(s)) {
        *litlen = json_string_length(s);
        *lit = sl_malloc(*litlen + 1);
        memcpy(*lit, json_string_value(s), *litlen + 1);
        return 0;
    }
    if (json_is_string(r)) {
        char w[512];
        snprintf(w, sizeof w, "%s: %s.pattern", path, where);
        return re_compile(re, json_string_value(r), json_string_length(r), w, err);
    }
    return sl_errf(err, "%s: %s: pattern must be {\"String\": ...} or {\"Regex\": ...}", path,
                   where);
}

static int jbool(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static const char *jtype(json_t *o) {
    json_t *v = json_object_get(o, "type");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int unsupported(sl_err *err, const char *path, const char *where, const char *what,
                       const char *type, const char *supported) {
    return sl_errf(err, "%s: %s: unsupported %s type \"%s\" (sluice supports %s)", path, where,
                   what, type ? type : "(missing)", supported);
}

static int load_norm(tok_norm *nm, json_t *j, const char *path, const char *where,
                     sl_err *err) {
    const char *ty = jtype(j);
    char w[512];
    if (!ty) ty = "(missing)";
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(j, "normalizers");
        if (!json_is_array(a))
            return sl_errf(err, "%s: %s.normalizers: expected an array", path, where);
        nm->kind = NORM_SEQ;
        nm->nsub = (int)json_array_size(a);
        nm->sub = sl_calloc((size_t)nm->nsub + 1, sizeof(tok_norm));
        for (int i = 0; i < nm->nsub; i++) {
            snprintf(w, sizeof w, "%s.normalizers[%d]", where, i);
            if (load_norm(&nm->sub[i], json_array_get(a, (size_t)i), path, w, err)) return -1;
        }
    } else if (!strcmp(ty, "Prepend")) {
        json_t *p = json_object_get(j, "prepend");
        if (!json_is_string(p))
            return sl_errf(err, "%s: %s.prepend: expected a string", path, where);
        nm->kind = NORM_PREPEND;
        nm->a = sl_strdup(json_string_value(p));
        nm->alen = json_string_length(p);
    } else if (!strcmp(ty, "Replace")) {
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c))
            return sl_errf(err, "%s: %s.content: expected a string", path, where);
        nm->kind = NORM_REPLACE;
        nm->b = sl_strdup(json_string_value(c));
        nm->blen = json_string_length(c);
        if (load_pattern(json_object_get(j, "pattern"), &nm->re, &nm->a, &nm->alen, path, where,
                         err))
            return -1;
    } else if (!strcmp(ty, "NFC")) nm->kind = NORM_NFC;
    else if (!strcmp(ty, "NFD")) nm->kind = NORM_NFD;
    else if (!strcmp(ty, "NFKC")) nm->kind = NORM_NFKC;
    else if (!strcmp(ty, "NFKD")) nm->kind = NORM_NFKD;
    else if (!strcmp(ty, "Lowercase")) nm->kind = NORM_LOWER;
    else if (!strcmp(ty, "ByteLevel")) nm->kind = NORM_BYTELEVEL;
    else if (!strcmp(ty, "Strip")) {
        nm->kind = NORM_STRIP;
        nm->left = jbool(j, "strip_left", 1);
        nm->right = jbool(j, "strip_right", 1);
    } else
        return unsupported(err, path, where, "normalizer", ty,
                           "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, "
                           "ByteLevel");
    return 0;
}

static const char *GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
                                  "|\\s+(?!\\S)|\\s+";

static int load_pre(tok_pre *p, json_t *j, const char *path, const char *where, sl_err *err) {
    const char *ty = jtype(j);
    char w[512];
    if (!ty) ty = "(missing)";
    snprintf(w, sizeof w, "%s: %s", path, where);
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(j, "pretokenizers");
        if (!json_is_array(a))
            return sl_errf(err, "%s: %s.pretokenizers: expected an array", path, where);
        p->kind = PRE_SEQ;
        p->nsub = (int)json_array_size(a);
        p->sub = sl_calloc((size_t)p->nsub + 1, sizeof(tok_pre));
        for (int i = 0; i < p->nsub; i++) {
            snprintf(w, sizeof w, "%s.pretokenizers[%d]", where, i);
            if (load_pre(&p->sub[i], json_array_get(a, (size_t)i), path, w, err)) return -1;
        }
    } else if (!strcmp(ty, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = jbool(j, "add_prefix_space", 1);
        p->use_regex = jbool(j, "use_regex", 1);
        if (p->use_regex && re_compile(&p->re, GPT2_PATTERN, strlen(GPT2_PATTERN), w, err))
            return -1;
    } else if (!strcmp(ty, "Split")) {
        p->kind = PRE_SPLIT;
        const char *b = json_string_value(json_object_get(j, "behavior"));
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                      "MergedWithNext", "Contiguous"};
        p->behavior = -1;
        for (int i = 0; i < 5; i++)
            if (b && !strcmp(b, names[i])) p->behavior = i;
        if (p->behavior < 0)
            return sl_errf(err, "%s: %s.behavior: unknown split behavior \"%s\"", path, where,
                           b ? b : "(missing)");
        p->invert = jbool(j, "invert", 0);
        char *lit = NULL;
        size_t ll = 0;
        if (load_pattern(json_object_get(j, "pattern"), &p->re, &lit, &ll, path, where, err))
            return -1;
        if (lit) { // a String pattern is the escaped literal as a regex
            size_t el;
            char *esc = re_escape(lit, ll, &el);
            int rc = re_compile(&p->re, esc, el, w, err);
            free(esc);
            free(lit);
            if (rc) return -1;
        }
    } else if (!strcmp(ty, "Digits")) {
        p->kind = PRE_SPLIT;
        p->behavior = SPLIT_ISOLATED;
        const char *pat = jbool(j, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+";
        if (re_compile(&p->re, pat, strlen(pat), w, err)) return -1;
    } else if (!strcmp(ty, "Metaspace")) {
        p->kind = PRE_METASPACE;
        json_t *r = json_object_get(j, "replacement");
        const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
        if (!json_is_string(r) || json_string_length(r) == 0 || json_string_length(r) > 4)
            return sl_errf(err, "%s: %s.replacement: expected one character", path, where);
        p->repl_len = json_string_length(r);
        memcpy(p->repl, json_string_value(r), p->repl_len);
        if (ps) {
            if (!strcmp(ps, "always")) p->prepend = PREPEND_ALWAYS;
            else if (!strcmp(ps, "first")) p->prepend = PREPEND_FIRST;
            else if (!strcmp(ps, "never")) p->prepend = PREPEND_NEVER;
            else
                return sl_errf(err, "%s: %s.prepend_scheme: unknown value \"%s\"", path, where,
                               ps);
        } else p->prepend = jbool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        p->split = jbool(j, "split", 1);
    } else
        return unsupported(err, path, where, "pre_tokenizer", ty,
                           "Sequence, ByteLevel, Split, Digits, Metaspace");
    return 0;
}

static int load_dec(tok_dec *d, json_t *j, const char *path, const char *where, sl_err *err) {
    const char *ty = jtype(j);
    char w[512];
    if (!ty) ty = "(missing)";
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(j, "decoders");
        if (!json_is_array(a))
            return sl_errf(err, "%s: %s.decoders: expected an array", path, where);
        d->kind = DEC_SEQ;
        d->nsub = (int)json_array_size(a);
        d->sub = sl_calloc((size_t)d->nsub + 1, sizeof(tok_dec));
        for (int i = 0; i < d->nsub; i++) {
            snprintf(w, sizeof w, "%s.decoders[%d]", where, i);
            if (load_dec(&d->sub[i], json_array_get(a, (size_t)i), path, w, err)) return -1;
        }
    } else if (!strcmp(ty, "ByteLevel")) d->kind = DEC_BYTELEVEL;
    else if (!strcmp(ty, "ByteFallback")) d->kind = DEC_BYTEFALLBACK;
    else if (!strcmp(ty, "Fuse")) d->kind = DEC_FUSE;
    else if (!strcmp(ty, "Replace")) {
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c))
            return sl_errf(err, "%s: %s.content: expected a string", path, where);
        d->kind = DEC_REPLACE;
        d->b = sl_strdup(json_string_value(c));
        d->blen = json_string_length(c);
        if (load_pattern(json_object_get(j, "pattern"), &d->re, &d->a, &d->alen, path, where,
                         err))
            return -1;
    } else if (!strcmp(ty, "Strip") || !strcmp(ty, "Metaspace")) {
        int strip = !strcmp(ty, "Strip");
        json_t *c = json_object_get(j, strip ? "content" : "replacement");
        int32_t cp = -1;
        if (json_is_string(c) && json_string_length(c) > 0)
            utf8_next(json_string_value(c), json_string_length(c), &cp);
        if (cp < 0)
            return sl_errf(err, "%s: %s.%s: expected one character", path, where,
                           strip ? "content" : "replacement");
        d->cp = cp;
        if (strip) {
            d->kind = DEC_STRIP;
            d->start = (int)json_integer_value(json_object_get(j, "start"));
            d->stop = (int)json_integer_value(json_object_get(j, "stop"));
        } else {
            d->kind = DEC_METASPACE;
            const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
            d->prepend = ps ? (!strcmp(ps, "never") ? PREPEND_NEVER : PREPEND_ALWAYS)
                            : (jbool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER);
        }
    } else
        return unsupported(err, path, where, "decoder", ty,
                           "Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace");
    return 0;
}

// Appends the ids of a post-processor to prefix/suffix.
static int load_post(Tokenizer *t, json_t *j, const char *where, sl_err *err) {
    const char *ty = jtype(j), *path = t->path;
    char w[512];
    if (!ty) ty = "(missing)";
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(j, "processors");
        if (!json_is_array(a))
            return sl_errf(err, "%s: %s.processors: expected an array", path, where);
        for (size_t i = 0; i < json_array_size(a); i++) {
            snprintf(w, sizeof w, "%s.processors[%zu]", where, i);
            if (load_post(t, json_array_get(a, i), w, err)) return -1;
        }
        return 0;
    }
    if (!strcmp(ty, "ByteLevel")) return 0; // offsets only
    int32_t pre[64], suf[64];
    int np = 0, ns = 0;
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) {
        json_t *cls = json_object_get(j, "cls"), *sep = json_object_get(j, "sep");
        if (!json_is_integer(json_array_get(cls, 1)) || !json_is_integer(json_array_get(sep, 1)))
            return sl_errf(err, "%s: %s: cls/sep must be [token, id]", path, where);
        pre[np++] = (int32_t)json_integer_value(json_array_get(cls, 1));
        suf[ns++] = (int32_t)json_integer_value(json_array_get(sep, 1));
    } else if (!strcmp(ty, "TemplateProcessing")) {
        json_t *single = json_object_get(j, "single"), *sp = json_object_get(j, "special_tokens");
        if (!json_is_array(single))
            return sl_errf(err, "%s: %s.single: expected an array", path, where);
        int seen_a = 0;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *it = json_array_get(single, i);
            json_t *stok = json_object_get(it, "SpecialToken");
            if (json_object_get(it, "Sequence")) {
                seen_a = 1;
                continue;
            }
            const char *name = json_string_value(json_object_get(stok, "id"));
            json_t *ids = json_object_get(json_object_get(sp, name ? name : ""), "ids");
            if (!name || !json_is_array(ids))
                return sl_errf(err, "%s: %s.single[%zu]: special token \"%s\" not found in "
                               "special_tokens", path, where, i, name ? name : "(missing)");
            for (size_t k = 0; k < json_array_size(ids); k++) {
                int32_t id = (int32_t)json_integer_value(json_array_get(ids, k));
                if (np >= 64 || ns >= 64)
                    return sl_errf(err, "%s: %s: template too long", path, where);
                if (seen_a) suf[ns++] = id;
                else pre[np++] = id;
            }
        }
    } else
        return unsupported(err, path, where, "post_processor", ty,
                           "TemplateProcessing, Sequence, ByteLevel, RobertaProcessing, "
                           "BertProcessing");
    int32_t *p2 = sl_malloc((size_t)(np + t->nprefix + 1) * sizeof(int32_t));
    memcpy(p2, pre, (size_t)np * sizeof(int32_t));
    if (t->nprefix) memcpy(p2 + np, t->prefix, (size_t)t->nprefix * sizeof(int32_t));
    free(t->prefix);
    t->prefix = p2;
    t->nprefix += np;
    t->suffix = sl_realloc(t->suffix, (size_t)(t->nsuffix + ns + 1) * sizeof(int32_t));
    memcpy(t->suffix + t->nsuffix, suf, (size_t)ns * sizeof(int32_t));
    t->nsuffix += ns;
    return 0;
}

static int load_model(Tokenizer *t, json_t *m, sl_err *err) {
    const char *path = t->path, *ty = jtype(m);
    json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
    if (ty && strcmp(ty, "BPE"))
        return unsupported(err, path, "model", "model", ty, "BPE");
    if (!json_is_object(vocab))
        return sl_errf(err, "%s: model.vocab: expected an object of token -> id", path);
    if (!json_is_array(merges))
        return sl_errf(err, "%s: model.merges: expected an array", path);
    json_t *dropout = json_object_get(m, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) != 0.0)
        return sl_errf(err, "%s: model.dropout: BPE dropout is unsupported (encoding would be "
                       "random)", path);
    static const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const char *v = json_string_value(json_object_get(m, affixes[i]));
        if (v && *v)
            return sl_errf(err, "%s: model.%s: \"%s\" is unsupported", path, affixes[i], v);
    }
    const char *key;
    json_t *val;
    int32_t max_id = -1;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) > INT32_MAX - 1)
            return sl_errf(err, "%s: model.vocab[\"%s\"]: id must be a non-negative integer",
                           path, key);
        // the id -> token tables are sized by the largest id: a stray huge id
        // would allocate gigabytes (found by fuzz_tokenizer)
        if (json_integer_value(val) > TOK_MAX_ID)
            return sl_errf(err, "%s: model.vocab[\"%s\"]: id %lld is past the largest id sluice "
                           "takes (%d; vocabularies have up to a few hundred thousand tokens)",
                           path, key, (long long)json_integer_value(val), TOK_MAX_ID);
        if (json_integer_value(val) > max_id) max_id = (int32_t)json_integer_value(val);
    }
    tok_bpe *b = &t->bpe;
    tok_bpe_reserve(b, (int)json_object_size(vocab), (int)json_array_size(merges), max_id);
    b->uid = atomic_fetch_add(&g_uid, 1);
    json_object_foreach(vocab, key, val) {
        char w[64 + 256];
        snprintf(w, sizeof w, "%s: model.vocab", path);
        if (tok_bpe_add_token(b, key, strlen(key), (int32_t)json_integer_value(val), w, err))
            return -1;
    }
    tbuf nt = {0};
    for (size_t i = 0; i < json_array_size(merges); i++) {
        json_t *mg = json_array_get(merges, i);
        const char *pa, *pb;
        size_t la, lb;
        if (json_is_string(mg)) { // legacy "a b"
            const char *s = json_string_value(mg), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(nt.p);
                return sl_errf(err, "%s: model.merges[%zu]: \"%s\" is not \"a b\"", path, i, s);
            }
            pa = s, la = (size_t)(sp - s), pb = sp + 1, lb = strlen(sp + 1);
        } else if (json_is_array(mg) && json_array_size(mg) == 2 &&
                   json_is_string(json_array_get(mg, 0)) &&
                   json_is_string(json_array_get(mg, 1))) {
            pa = json_string_value(json_array_get(mg, 0));
            la = json_string_length(json_array_get(mg, 0));
            pb = json_string_value(json_array_get(mg, 1));
            lb = json_string_length(json_array_get(mg, 1));
        } else {
            free(nt.p);
            return sl_errf(err, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", path,
                           i);
        }
        int32_t ia = tok_bpe_lookup(b, pa, la), ib = tok_bpe_lookup(b, pb, lb);
        nt.n = 0;
        tb_put(&nt, pa, la);
        tb_put(&nt, pb, lb);
        int32_t inew = tok_bpe_lookup(b, nt.p, nt.n);
        if (ia < 0 || ib < 0 || inew < 0) {
            int rc = sl_errf(err, "%s: model.merges[%zu]: token \"%.*s\" is not in the vocab",
                             path, i, ia < 0 ? (int)la : ib < 0 ? (int)lb : (int)nt.n,
                             ia < 0 ? pa : ib < 0 ? pb : nt.p);
            free(nt.p);
            return rc;
        }
        tok_bpe_add_merge(b, ia, ib, (int32_t)i, inew);
    }
    free(nt.p);
    b->byte_fallback = jbool(m, "byte_fallback", 0);
    b->ignore_merges = jbool(m, "ignore_merges", 0);
    b->fuse_unk = jbool(m, "fuse_unk", 0);
    const char *unk = json_string_value(json_object_get(m, "unk_token"));
    if (unk) {
        b->unk_id = tok_bpe_lookup(b, unk, strlen(unk));
        if (b->unk_id < 0)
            return sl_errf(err, "%s: model.unk_token: \"%s\" is not in the vocab", path, unk);
    }
    if (b->byte_fallback)
        for (int i = 0; i < 256; i++) {
            char s[8];
            snprintf(s, sizeof s, "<0x%02X>", i);
            b->byte_id[i] = tok_bpe_lookup(b, s, 6);
        }
    return 0;
}

static int load_added(Tokenizer *t, json_t *a, sl_err *err) {
    if (!a || json_is_null(a)) return 0;
    if (!json_is_array(a)) return sl_errf(err, "%s: added_tokens: expected an array", t->path);
    t->n_added = (int)json_array_size(a);
    t->added = sl_calloc((size_t)t->n_added + 1, sizeof(tok_added));
    enc_ctx c = {0};
    c.md = pcre2_match_data_create(1, NULL);
    int rc = 0;
    for (int i = 0; i < t->n_added; i++) {
        json_t *o = json_array_get(a, (size_t)i);
        json_t *content = json_object_get(o, "content"), *id = json_object_get(o, "id");
        if (!json_is_string(content) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > INT32_MAX - 1) {
            rc = sl_errf(err, "%s: added_tokens[%d]: needs a string \"content\" and an integer "
                         "\"id\"", t->path, i);
            break;
        }
        tok_added *at = &t->added[i];
        at->len = json_string_length(content);
        at->content = sl_malloc(at->len + 1);
        memcpy(at->content, json_string_value(content), at->len + 1);
        at->id = (int32_t)json_integer_value(id);
        at->single_word = jbool(o, "single_word", 0);
        at->lstrip = jbool(o, "lstrip", 0);
        at->rstrip = jbool(o, "rstrip", 0);
        at->special = jbool(o, "special", 0);
        at->normalized = jbool(o, "normalized", !at->special);
        if (at->normalized && t->norm) {
            tbuf nb = {0};
            normalize(&c, t->norm, at->content, at->len, &nb);
            at->pat = nb.p ? nb.p : sl_strdup("");
            at->plen = nb.n;
        } else {
            at->pat = sl_strdup(at->content);
            at->plen = at->len;
        }
        if (at->id + 1 > t->vocab_size) t->vocab_size = at->id + 1;
    }
    pcre2_match_data_free(c.md);
    free(c.sp.v);
    free(c.t1.p);
    free(c.t2.p);
    free(c.t3.p);
    pl_free(&c.a);
    pl_free(&c.b);
    return rc;
}

int tok_load(Tokenizer **out, const char *path, sl_err *err) {
    *out = NULL;
    call_once(&g_bytes_once, bytes_init);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return sl_errf(err, "%s: cannot read tokenizer: %s (line %d)", path, je.text, je.line);
    Tokenizer *t = sl_calloc(1, sizeof(*t));
    t->path = sl_strdup(path);
    json_t *j;
    if (!json_is_object(root)) {
        sl_errf(err, "%s: not a tokenizer.json (top level is not an object)", path);
        goto fail;
    }
    if (!json_is_object(json_object_get(root, "model"))) {
        sl_errf(err, "%s: model: missing", path);
        goto fail;
    }
    if (load_model(t, json_object_get(root, "model"), err)) goto fail;
    t->vocab_size = t->bpe.n_ids;
    if ((j = json_object_get(root, "normalizer")) && !json_is_null(j)) {
        t->norm = sl_calloc(1, sizeof(tok_norm));
        if (load_norm(t->norm, j, path, "normalizer", err)) goto fail;
    }
    if ((j = json_object_get(root, "pre_tokenizer")) && !json_is_null(j)) {
        t->pre = sl_calloc(1, sizeof(tok_pre));
        if (load_pre(t->pre, j, path, "pre_tokenizer", err)) goto fail;
    }
    if ((j = json_object_get(root, "decoder")) && !json_is_null(j)) {
        t->dec = sl_calloc(1, sizeof(tok_dec));
        if (load_dec(t->dec, j, path, "decoder", err)) goto fail;
    }
    if ((j = json_object_get(root, "post_processor")) && !json_is_null(j))
        if (load_post(t, j, "post_processor", err)) goto fail;
    if (load_added(t, json_object_get(root, "added_tokens"), err)) goto fail;
    static const char *ignored[] = {"truncation", "padding"};
    for (int i = 0; i < 2; i++)
        if ((j = json_object_get(root, ignored[i])) && !json_is_null(j))
            LOGW("%s: %s is set; sluice never truncates or pads (the caller enforces lengths)",
                 path, ignored[i]);
    t->added_by_id = sl_malloc((size_t)(t->vocab_size + 1) * sizeof(int32_t));
    memset(t->added_by_id, 0xff, (size_t)(t->vocab_size + 1) * sizeof(int32_t));
    for (int i = 0; i < t->n_added; i++) t->added_by_id[t->added[i].id] = i;
    for (int i = 0; i < t->nprefix + t->nsuffix; i++) {
        int32_t id = i < t->nprefix ? t->prefix[i] : t->suffix[i - t->nprefix];
        if (id < 0 || id >= t->vocab_size) {
            sl_errf(err, "%s: post_processor: special id %d is outside the vocabulary (%d)", path,
                    (int)id, t->vocab_size);
            goto fail;
        }
    }
    matchset_build(&t->ms_raw, t->added, t->n_added, 0);
    matchset_build(&t->ms_norm, t->added, t->n_added, 1);
    t->has_raw = t->ms_raw.start[256] > 0;
    t->has_norm = t->ms_norm.start[256] > 0;
    json_decref(root);
    *out = t;
    return 0;
fail:
    json_decref(root);
    tok_free(t);
    return -1;
}

int tok_load_dir(Tokenizer **out, const char *dir, sl_err *err) {
    char *p = sl_path_join(dir, "tokenizer.json");
    int rc = tok_load(out, p, err);
    free(p);
    return rc;
}

static void norm_free(tok_norm *n) {
    for (int i = 0; i < n->nsub; i++) norm_free(&n->sub[i]);
    free(n->sub);
    free(n->a);
    free(n->b);
    pcre2_code_free(n->re.code);
}

static void pre_free(tok_pre *p) {
    for (int i = 0; i < p->nsub; i++) pre_free(&p->sub[i]);
    free(p->sub);
    pcre2_code_free(p->re.code);
}

static void dec_free(tok_dec *d) {
    for (int i = 0; i < d->nsub; i++) dec_free(&d->sub[i]);
    free(d->sub);
    free(d->a);
    free(d->b);
    pcre2_code_free(d->re.code);
}

void tok_free(Tokenizer *t) {
    if (!t) return;
    tok_bpe_free_fields(&t->bpe);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pat);
    }
    free(t->added);
    free(t->added_by_id);
    free(t->ms_raw.idx);
    free(t->ms_norm.idx);
    if (t->norm) norm_free(t->norm);
    if (t->pre) pre_free(t->pre);
    if (t->dec) dec_free(t->dec);
    free(t->norm);
    free(t->pre);
    free(t->dec);
    free(t->prefix);
    free(t->suffix);
    free(t->path);
    free(t);
}
