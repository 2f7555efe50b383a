// prompts_text.c: prompts as text (see prompts_text.h).
//
// Readers: the whole file is read into memory and split on '\n'; every line
// is checked to be UTF-8 (utf8proc) before anything else looks at it, so the
// error can name the line and byte rather than echo jansson's decoding
// complaint. JSONL lines are parsed by jansson one at a time.
//
// Tokenization: each prompt is encoded on its own (tok_encode is thread-safe
// on a shared Tokenizer), into its own buffer, by an OpenMP loop with dynamic
// scheduling (prompt lengths vary a lot); offsets are then a prefix sum in
// prompt order and the buffers are copied into place in parallel. Nothing
// depends on which thread encoded what, so any thread count gives the same
// arrays.
#include "prompts_text.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

// ----------------------------------------------------------------------------
// lines

// Byte offset of the first invalid UTF-8 sequence in s[0..n), or -1.
static long utf8_bad_at(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k < 0) return (long)i;
        i += (size_t)k;
    }
    return -1;
}

// Checks one line (no NUL, valid UTF-8); errors name path:line.
static int check_line(const char *path, long line, const char *s, size_t n, sl_err *err) {
    const char *nul = memchr(s, 0, n);
    if (nul) return sl_errf(err, "%s:%ld: NUL byte at line %ld (byte %ld of the line)", path,
                            line, line, (long)(nul - s));
    long bad = utf8_bad_at(s, n);
    if (bad >= 0) return sl_errf(err, "%s:%ld: invalid UTF-8 at line %ld (byte %ld of the line)",
                                 path, line, line, bad);
    return 0;
}

// Next line of buf[*pos..len): sets *s, *n (without '\n' and a '\r' before
// it) and advances *pos. Returns 0 at the end. A final line without '\n'
// counts; nothing after a final '\n' does.
static int next_line(const char *buf, size_t len, size_t *pos, const char **s, size_t *n) {
    if (*pos >= len) return 0;
    const char *b = buf + *pos;
    const char *nl = memchr(b, '\n', len - *pos);
    size_t k = nl ? (size_t)(nl - b) : len - *pos;
    *pos += k + (nl ? 1 : 0);
    if (k > 0 && b[k - 1] == '\r') k--;
    *s = b;
    *n = k;
    return 1;
}

static char *dup_n(const char *s, size_t n) {
    char *d = sl_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

// ----------------------------------------------------------------------------
// growing a PromptSet row by row

typedef struct {
    PromptSet *ps;
    int64_t cap;
    // which optional fields some line gave
    int has_max_new, has_temp, has_top_p, has_top_k, has_seed, has_rid;
    int has_min_p, has_rep, has_pres, has_freq;
} Rows;

// Appends one row holding text (taken over) and every optional field unset.
static void rows_push(Rows *r, char *text) {
    PromptSet *ps = r->ps;
    if (ps->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 1024;
        size_t c = (size_t)r->cap;
        ps->prompt_text = sl_realloc(ps->prompt_text, c * sizeof(char *));
        ps->request_id = sl_realloc(ps->request_id, c * sizeof(char *));
        ps->max_new_tokens = sl_realloc(ps->max_new_tokens, c * sizeof(int32_t));
        ps->temperature = sl_realloc(ps->temperature, c * sizeof(float));
        ps->top_p = sl_realloc(ps->top_p, c * sizeof(float));
        ps->top_k = sl_realloc(ps->top_k, c * sizeof(int32_t));
        ps->seed = sl_realloc(ps->seed, c * sizeof(int64_t));
        ps->min_p = sl_realloc(ps->min_p, c * sizeof(float));
        ps->repetition_penalty = sl_realloc(ps->repetition_penalty, c * sizeof(float));
        ps->presence_penalty = sl_realloc(ps->presence_penalty, c * sizeof(float));
        ps->frequency_penalty = sl_realloc(ps->frequency_penalty, c * sizeof(float));
    }
    int64_t i = ps->n++;
    ps->prompt_text[i] = text;
    ps->request_id[i] = NULL;
    ps->max_new_tokens[i] = PROMPT_UNSET_INT;
    ps->temperature[i] = NAN;
    ps->top_p[i] = NAN;
    ps->top_k[i] = PROMPT_UNSET_INT;
    ps->seed[i] = PROMPT_UNSET_INT;
    ps->min_p[i] = ps->repetition_penalty[i] = NAN;
    ps->presence_penalty[i] = ps->frequency_penalty[i] = NAN;
}

// Drops the arrays of fields no row gave; fills absent request ids with "".
static void rows_finish(Rows *r) {
    PromptSet *ps = r->ps;
#define DROP(flag, field)                                                                      \
    if (!r->flag) {                                                                            \
        free(ps->field);                                                                       \
        ps->field = NULL;                                                                      \
    }
    DROP(has_max_new, max_new_tokens)
    DROP(has_temp, temperature)
    DROP(has_top_p, top_p)
    DROP(has_top_k, top_k)
    DROP(has_seed, seed)
    DROP(has_min_p, min_p)
    DROP(has_rep, repetition_penalty)
    DROP(has_pres, presence_penalty)
    DROP(has_freq, frequency_penalty)
#undef DROP
    if (!r->has_rid) {
        for (int64_t i = 0; i < ps->n; i++) free(ps->request_id ? ps->request_id[i] : NULL);
        free(ps->request_id);
        ps->request_id = NULL;
    } else {
        for (int64_t i = 0; i < ps->n; i++)
            if (!ps->request_id[i]) ps->request_id[i] = sl_strdup("");
    }
}

// Frees a partly built set (request_id may hold NULLs, which free accepts).
static void rows_abort(Rows *r) {
    PromptSet *ps = r->ps;
    for (int64_t i = 0; i < ps->n; i++) {
        free(ps->prompt_text[i]);
        free(ps->request_id[i]);
    }
    free(ps->prompt_text);
    free(ps->request_id);
    ps->prompt_text = ps->request_id = NULL;
    h5_prompts_free(ps);
}

// ----------------------------------------------------------------------------
// JSONL

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

// Integer field in [lo, hi]; returns 1 when set, 0 when absent/null, -1 on error.
static int get_int(const json_t *o, const char *key, long long lo, long long hi,
                   const char *path, long line, long long *out, sl_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v))
        return sl_errf(err, "%s:%ld: field \"%s\" must be an integer, found %s", path, line, key,
                       json_type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return sl_errf(err, "%s:%ld: field \"%s\" is %lld, expected %lld..%lld", path, line, key,
                       x, lo, hi);
    *out = x;
    return 1;
}

// Number field (integer or real) in [lo, hi], or (lo, hi] when lo_open.
// Returns 1 when set, 0 when absent/null, -1 on error.
static int get_num(const json_t *o, const char *key, double lo, int lo_open, double hi,
                   const char *path, long line, float *out, sl_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v))
        return sl_errf(err, "%s:%ld: field \"%s\" must be a number, found %s", path, line, key,
                       json_type_name(v));
    double x = json_number_value(v);
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
        return sl_errf(err, "%s:%ld: field \"%s\" is %g, expected a number in %c%g, %g]", path,
                       line, key, x, lo_open ? '(' : '[', lo, hi);
    *out = (float)x;
    return 1;
}

static const char *const KNOWN_KEYS[] = {
    "prompt", "max_new_tokens",     "temperature",      "top_p",             "top_k", "seed",
    "min_p",  "repetition_penalty", "presence_penalty", "frequency_penalty", "request_id", NULL};

// One parsed line into row i of r. Errors name path:line and the field.
static int jsonl_row(Rows *r, const json_t *o, const char *path, long line, int *warned,
                     sl_err *err) {
    const char *expect = "expected a JSON object with a \"prompt\" string";
    if (!json_is_object(o))
        return sl_errf(err, "%s:%ld: %s, found %s", path, line, expect, json_type_name(o));
    json_t *p = json_object_get(o, "prompt");
    if (!p) return sl_errf(err, "%s:%ld: %s (no \"prompt\" field)", path, line, expect);
    if (!json_is_string(p))
        return sl_errf(err, "%s:%ld: field \"prompt\" must be a string, found %s", path, line,
                       json_type_name(p));
    if (!*warned) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)o, key, val) {
            int known = 0;
            for (int k = 0; KNOWN_KEYS[k]; k++) known |= !strcmp(key, KNOWN_KEYS[k]);
            if (!known) {
                LOGW("%s:%ld: ignoring field \"%s\" (known fields: prompt, max_new_tokens, "
                     "temperature, top_p, top_k, seed, min_p, repetition_penalty, "
                     "presence_penalty, frequency_penalty, request_id); further unknown "
                     "fields are ignored silently",
                     path, line, key);
                *warned = 1;
                break;
            }
        }
    }
    rows_push(r, dup_n(json_string_value(p), json_string_length(p)));
    PromptSet *ps = r->ps;
    int64_t i = ps->n - 1;
    long long x;
    int g;
    if ((g = get_int(o, "max_new_tokens", 1, 1 << 24, path, line, &x, err)) < 0) return -1;
    if (g) ps->max_new_tokens[i] = (int32_t)x, r->has_max_new = 1;
    if ((g = get_int(o, "top_k", 0, 1 << 30, path, line, &x, err)) < 0) return -1;
    if (g) ps->top_k[i] = (int32_t)x, r->has_top_k = 1;
    if ((g = get_int(o, "seed", 0, LLONG_MAX, path, line, &x, err)) < 0) return -1;
    if (g) ps->seed[i] = (int64_t)x, r->has_seed = 1;
    // the ranges of run's flags (cli_run.c), so a file value is never one the flag refuses
    struct {
        const char *key;
        double lo;
        int lo_open;
        double hi;
        float *dst;
        int *has;
    } nums[] = {
        {"temperature", 0, 0, 1e4, &ps->temperature[i], &r->has_temp},
        {"top_p", 0, 1, 1, &ps->top_p[i], &r->has_top_p},
        {"min_p", 0, 0, 1, &ps->min_p[i], &r->has_min_p},
        {"repetition_penalty", 1e-6, 0, 1e6, &ps->repetition_penalty[i], &r->has_rep},
        {"presence_penalty", -1e4, 0, 1e4, &ps->presence_penalty[i], &r->has_pres},
        {"frequency_penalty", -1e4, 0, 1e4, &ps->frequency_penalty[i], &r->has_freq},
    };
    for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++) {
        g = get_num(o, nums[k].key, nums[k].lo, nums[k].lo_open, nums[k].hi, path, line,
                    nums[k].dst, err);
        if (g < 0) return -1;
        *nums[k].has |= g;
    }
    json_t *id = json_object_get(o, "request_id");
    if (id && !json_is_null(id)) {
        if (json_is_string(id)) {
            ps->request_id[i] = dup_n(json_string_value(id), json_string_length(id));
        } else if (json_is_integer(id)) {
            char b[32];
            snprintf(b, sizeof b, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
            ps->request_id[i] = sl_strdup(b);
        } else {
            return sl_errf(err, "%s:%ld: field \"request_id\" must be a string or an integer, "
                                "found %s",
                           path, line, json_type_name(id));
        }
        r->has_rid = 1;
    }
    return 0;
}

static int only_space(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t') return 0;
    return 1;
}

int prompts_read_jsonl(PromptSet *ps, const char *path, sl_err *err) {
    memset(ps, 0, sizeof *ps);
    size_t len = 0;
    char *buf = sl_read_file(path, &len, err);
    if (!buf) return -1;
    Rows r = {.ps = ps};
    size_t pos = 0, n;
    const char *s;
    long line = 0, blank = 0; // blank: first empty line not yet followed by a prompt
    int warned = 0;
    while (next_line(buf, len, &pos, &s, &n)) {
        line++;
        if (check_line(path, line, s, n, err)) goto fail;
        if (only_space(s, n)) {
            if (!blank) blank = line;
            continue;
        }
        if (blank) {
            sl_errf(err, "%s:%ld: empty line; expected a JSON object with a \"prompt\" string "
                         "(only the end of the file may hold empty lines)",
                    path, blank);
            goto fail;
        }
        json_error_t je;
        json_t *o = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
        if (!o) {
            sl_errf(err, "%s:%ld: expected a JSON object with a \"prompt\" string: %s "
                         "(column %d)",
                    path, line, je.text, je.column);
            goto fail;
        }
        int rc = jsonl_row(&r, o, path, line, &warned, err);
        json_decref(o);
        if (rc) goto fail;
    }
    free(buf);
    rows_finish(&r);
    return 0;
fail:
    free(buf);
    rows_abort(&r);
    return -1;
}

// ----------------------------------------------------------------------------
// plain text

int prompts_read_text(PromptSet *ps, const char *path, sl_err *err) {
    memset(ps, 0, sizeof *ps);
    size_t len = 0;
    char *buf = sl_read_file(path, &len, err);
    if (!buf) return -1;
    Rows r = {.ps = ps};
    size_t pos = 0, n;
    const char *s;
    long line = 0;
    while (next_line(buf, len, &pos, &s, &n)) {
        line++;
        if (check_line(path, line, s, n, err)) {
            free(buf);
            rows_abort(&r);
            return -1;
        }
        rows_push(&r, dup_n(s, n));
    }
    free(buf);
    rows_finish(&r);
    return 0;
}

// ----------------------------------------------------------------------------
// tokenization

int prompts_tokenize(PromptSet *ps, const Tokenizer *tok, int add_special, int threads,
                     sl_err *err) {
    int64_t n = ps->n;
    if (n > 0 && !ps->prompt_text)
        return sl_errf(err, "prompts: nothing to tokenize (no prompt_text)");
    if (threads <= 0) threads = omp_get_max_threads();
    int32_t **ids = sl_calloc((size_t)(n ? n : 1), sizeof *ids);
    int *lens = sl_calloc((size_t)(n ? n : 1), sizeof *lens);
    int64_t first_bad = INT64_MAX;
    sl_err bad_err = {{0}};

    // 1) encode each prompt into its own buffer
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        sl_err e = {{0}};
        const char *t = ps->prompt_text[i];
        if (tok_encode(tok, t, strlen(t), add_special, &ids[i], &lens[i], &e)) {
            ids[i] = NULL;
#pragma omp critical(prompts_tokenize_err)
            if (i < first_bad) {
                first_bad = i;
                bad_err = e;
            }
        }
    }
    if (first_bad != INT64_MAX) {
        sl_errf(err, "prompt %" PRId64 ": %s", first_bad, bad_err.msg);
        for (int64_t i = 0; i < n; i++) free(ids[i]);
        free(ids);
        free(lens);
        return -1;
    }

    // 2) offsets in prompt order, then the copies in parallel
    int64_t *off = sl_malloc(sizeof(int64_t) * (size_t)(n + 1));
    off[0] = 0;
    for (int64_t i = 0; i < n; i++) off[i + 1] = off[i] + lens[i];
    int32_t *all = sl_malloc(sizeof(int32_t) * (size_t)(off[n] ? off[n] : 1));
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        memcpy(all + off[i], ids[i], sizeof(int32_t) * (size_t)lens[i]);
        free(ids[i]);
    }
    free(ids);
    free(lens);
    free(ps->tokens);
    free(ps->offsets);
    ps->tokens = all;
    ps->offsets = off;
    ps->n_tokens = off[n];
    return 0;
}

int prompts_load(PromptSet *ps, const char *path, const Tokenizer *tok, int threads,
                 sl_err *err) {
    if (h5_prompts_read(ps, path, err)) return -1;
    if (ps->offsets) return 0; // already tokenized
    if (!ps->prompt_text) {    // cannot happen with io/h5io.c's checks; be safe
        h5_prompts_free(ps);
        return sl_errf(err, "%s: no 'prompt_tokens' and no 'prompt_text'", path);
    }
    if (!tok) {
        h5_prompts_free(ps);
        return sl_errf(err, "%s: holds 'prompt_text' but no 'prompt_tokens', and the model "
                            "directory has no tokenizer.json to tokenize it with (run "
                            "`sluice prep --tokenizer DIR` first)",
                       path);
    }
    double t0 = sl_now();
    if (prompts_tokenize(ps, tok, 1, threads, err)) {
        sl_errctx(err, "%s: tokenizing 'prompt_text'", path);
        h5_prompts_free(ps);
        return -1;
    }
    LOGI("%s: tokenized %" PRId64 " prompts (%" PRId64 " tokens) in %.2f s", path, ps->n,
         ps->n_tokens, sl_now() - t0);
    return 0;
}

char *prompts_decode_completion(const Tokenizer *tok, const int32_t *ids, int n) {
    if (!tok) return NULL;
    char *text = NULL;
    if (tok_decode(tok, ids, n, 1, &text, NULL, NULL)) return NULL;
    return text;
}
