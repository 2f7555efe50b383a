// test_prep.c: the text path end to end: `sluice prep`, text prompts in
// `sluice run`, completion text in `sluice export`.
//
// Expected ids come from Hugging Face, not from sluice: golden_greedy.json
// (prompt_ids and greedy_ids recorded with transformers for the demo model)
// and tests/tokenizer/<family>/ids.txt (HF tokenizers' ids of every corpus
// line, add_special_tokens=False; the manifest gives the BOS prefix).
//
// - prep from JSONL and from plain text: ids equal HF's and tok_encode's,
//   prompt_text and per-request fields (with "unset" sentinels) as given;
// - --add-bos / --no-add-bos on a tokenizer whose template adds a BOS;
// - 1 thread and 3 threads give identical files on 5,000 prompts;
// - prep -> run -> export reproduces HF's greedy text; per-request fields
//   given on some lines only leave the others to the flags; a prompts file
//   holding text only is tokenized by `run` with the model's tokenizer;
// - bad input: exit 1, a message naming file and line, no output file; bad
//   flags: exit 2.
#include <hdf5.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5io.h"
#include "prompts_text.h"
#include "testutil.h"
#include "tokenizer.h"

static char g_out[1 << 16];

static const char *bin(void) {
    const char *b = getenv("SLUICE_BIN");
    return b ? b : "build/sluice";
}

static const char *model_dir(void) { return tu_path("tests/models/tiny-code-llama"); }

// Runs `sluice <args>`; returns the exit status, output in g_out.
static int sluice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sluice(const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s", bin(), args);
    int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
    if (getenv("SLUICE_TEST_VERBOSE")) fprintf(stderr, "$ %s\n%s[exit %d]\n", cmd, g_out, rc);
    // a crash, or a sanitizer report (ASAN=1 builds), fails the test whatever the exit code
    int clean = !strstr(g_out, "Sanitizer") && !strstr(g_out, "runtime error:") &&
                !strstr(g_out, "Segmentation") && !strstr(g_out, "Abort");
    if (!clean) fprintf(stderr, "$ %s\n%s[exit %d]\n", cmd, g_out, rc);
    CU_ASSERT(clean);
    return rc;
}

static const char *tmp(const char *name) {
    static char slots[32][512];
    static int k;
    char *p = slots[k++ & 31];
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void write_str(const char *path, const char *s) {
    CU_ASSERT_FATAL(tu_write_file(path, s, strlen(s)) == 0);
}

static json_t *golden_cases(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/golden_greedy.json", model_dir());
    json_error_t je;
    json_t *g = json_load_file(p, 0, &je);
    CU_ASSERT_FATAL(g != NULL);
    return g;
}

static int32_t jint(json_t *a, size_t k) { return (int32_t)json_integer_value(json_array_get(a, k)); }

// 1 when prompt i of ps is exactly want[0..n).
static int prompt_is(const PromptSet *ps, int64_t i, const int32_t *want, int64_t n) {
    int64_t len = ps->offsets[i + 1] - ps->offsets[i];
    return len == n && !memcmp(ps->tokens + ps->offsets[i], want, sizeof(int32_t) * (size_t)n);
}

static int prompt_is_json(const PromptSet *ps, int64_t i, json_t *ids) {
    int64_t n = (int64_t)json_array_size(ids);
    int32_t *w = malloc(sizeof(int32_t) * (size_t)(n + 1));
    for (int64_t k = 0; k < n; k++) w[k] = jint(ids, (size_t)k);
    int ok = prompt_is(ps, i, w, n);
    free(w);
    return ok;
}

static void read_prompts(const char *path, PromptSet *ps) {
    sl_err err = {{0}};
    int rc = h5_prompts_read(ps, path, &err);
    if (rc) fprintf(stderr, "h5_prompts_read: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
}

static Tokenizer *demo_tok(void) {
    Tokenizer *t = NULL;
    sl_err err = {{0}};
    CU_ASSERT_FATAL(tok_load_dir(&t, model_dir(), &err) == 0);
    return t;
}

// Lines of a text file (each malloc'd, without '\n'); *n gets the count.
static char **read_lines(const char *path, int *n) {
    sl_err err = {{0}};
    size_t len;
    char *buf = sl_read_file(path, &len, &err);
    CU_ASSERT_FATAL(buf != NULL);
    int cap = 1024, k = 0;
    char **v = malloc(sizeof(char *) * cap);
    for (char *s = buf; s < buf + len;) {
        char *nl = memchr(s, '\n', buf + len - s);
        size_t m = nl ? (size_t)(nl - s) : (size_t)(buf + len - s);
        if (k == cap) v = realloc(v, sizeof(char *) * (cap *= 2));
        v[k] = malloc(m + 1);
        memcpy(v[k], s, m);
        v[k++][m] = 0;
        s += m + 1;
    }
    free(buf);
    *n = k;
    return v;
}

static void free_lines(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

// Parses "1 2 3" into ids; returns the count.
static int parse_ids(const char *s, int32_t *ids, int cap) {
    int n = 0;
    char *end;
    for (;;) {
        long v = strtol(s, &end, 10);
        if (end == s) break;
        CU_ASSERT_FATAL(n < cap);
        ids[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

// ----------------------------------------------------------------------------
// prep from JSONL: HF's ids, text, per-request fields and sentinels

// The golden prompts as JSONL; odd lines carry per-request fields.
static const char *golden_jsonl(json_t *cases) {
    const char *path = tmp("golden.jsonl");
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *o = json_pack("{s:O}", "prompt", json_object_get(json_array_get(cases, i), "prompt"));
        if (i % 2) {
            json_object_set_new(o, "max_new_tokens", json_integer(10 + (json_int_t)i));
            json_object_set_new(o, "temperature", json_real(0.25 * (double)i));
            json_object_set_new(o, "request_id", json_integer(100 + (json_int_t)i));
        }
        if (i == 2) json_object_set_new(o, "request_id", json_string("two"));
        if (i == 5) {
            json_object_set_new(o, "min_p", json_real(0.05));
            json_object_set_new(o, "repetition_penalty", json_real(1.1));
            json_object_set_new(o, "presence_penalty", json_real(-0.5));
            json_object_set_new(o, "frequency_penalty", json_integer(1)); // an int is a number
            json_object_set_new(o, "top_k", json_integer(0));
            json_object_set_new(o, "seed", json_integer(123456789012345LL));
        }
        if (i == 4) json_object_set_new(o, "request_id", json_null()); // null = absent
        char *s = json_dumps(o, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(o);
    }
    fclose(f);
    return path;
}

static void test_jsonl_golden(void) {
    json_t *g = golden_cases(), *cases = json_object_get(g, "cases");
    const char *in = golden_jsonl(cases), *out = tmp("golden-prep.h5");
    int rc = sluice("prep --model %s --input %s --output %s", model_dir(), in, out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT(strstr(g_out, "8 prompts") != NULL);
    PromptSet ps;
    read_prompts(out, &ps);
    CU_ASSERT_EQUAL_FATAL(ps.n, 8);
    Tokenizer *tok = demo_tok();
    for (int64_t i = 0; i < ps.n; i++) {
        json_t *c = json_array_get(cases, (size_t)i);
        // ids recorded by HF
        int ok = prompt_is_json(&ps, i, json_object_get(c, "prompt_ids"));
        if (!ok) fprintf(stderr, "  prompt %ld: ids differ from HF's prompt_ids\n", (long)i);
        CU_ASSERT(ok);
        // and tok_encode of the line
        const char *text = json_string_value(json_object_get(c, "prompt"));
        int32_t *ids;
        int n;
        CU_ASSERT_FATAL(tok_encode(tok, text, strlen(text), 1, &ids, &n, NULL) == 0);
        CU_ASSERT(prompt_is(&ps, i, ids, n));
        free(ids);
        CU_ASSERT_STRING_EQUAL(ps.prompt_text[i], text);
    }
    // fields given on odd lines only: the others hold the "unset" sentinels
    CU_ASSERT_FATAL(ps.max_new_tokens && ps.temperature && ps.request_id);
    CU_ASSERT(ps.top_p == NULL);
    CU_ASSERT_FATAL(ps.top_k && ps.seed && ps.min_p && ps.repetition_penalty &&
                    ps.presence_penalty && ps.frequency_penalty);
    for (int64_t i = 0; i < ps.n; i++) {
        int five = i == 5;
        CU_ASSERT(five ? ps.min_p[i] == 0.05f : isnan(ps.min_p[i]));
        CU_ASSERT(five ? ps.repetition_penalty[i] == 1.1f : isnan(ps.repetition_penalty[i]));
        CU_ASSERT(five ? ps.presence_penalty[i] == -0.5f : isnan(ps.presence_penalty[i]));
        CU_ASSERT(five ? ps.frequency_penalty[i] == 1.0f : isnan(ps.frequency_penalty[i]));
        CU_ASSERT_EQUAL(ps.top_k[i], five ? 0 : PROMPT_UNSET_INT);
        CU_ASSERT_EQUAL(ps.seed[i], five ? 123456789012345LL : PROMPT_UNSET_INT);
    }
    for (int64_t i = 0; i < ps.n; i++) {
        if (i % 2) {
            CU_ASSERT_EQUAL(ps.max_new_tokens[i], 10 + i);
            CU_ASSERT_DOUBLE_EQUAL(ps.temperature[i], 0.25 * i, 1e-6);
            char want[32];
            snprintf(want, sizeof want, "%ld", 100 + (long)i);
            CU_ASSERT_STRING_EQUAL(ps.request_id[i], want);
        } else {
            CU_ASSERT_EQUAL(ps.max_new_tokens[i], PROMPT_UNSET_INT);
            CU_ASSERT(isnan(ps.temperature[i]));
            CU_ASSERT_STRING_EQUAL(ps.request_id[i], i == 2 ? "two" : "");
        }
    }
    tok_free(tok);
    h5_prompts_free(&ps);
    json_decref(g);
}

// ----------------------------------------------------------------------------
// prep from plain text

static void test_text_input(void) {
    // CRLF, an empty line (an empty prompt), UTF-8, no final newline
    const char *lines[] = {"def add(a, b):", "", "    return a + b", "naïve café — 日本語 🙂",
                           "  leading and trailing  ", "<|endoftext|> inline special",
                           "last line without newline"};
    const char *raw = "def add(a, b):\r\n"
                      "\n"
                      "    return a + b\n"
                      "naïve café — 日本語 🙂\r\n"
                      "  leading and trailing  \n"
                      "<|endoftext|> inline special\n"
                      "last line without newline";
    const int n_lines = 7;
    const char *in = tmp("prompts.txt"), *out = tmp("text-prep.h5");
    write_str(in, raw);
    int rc = sluice("prep --model %s --input %s --output %s --threads 2", model_dir(), in, out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    PromptSet ps;
    read_prompts(out, &ps);
    CU_ASSERT_EQUAL_FATAL(ps.n, n_lines);
    CU_ASSERT(ps.max_new_tokens == NULL && ps.request_id == NULL);
    Tokenizer *tok = demo_tok();
    for (int i = 0; i < n_lines; i++) {
        CU_ASSERT_STRING_EQUAL(ps.prompt_text[i], lines[i]);
        int32_t *ids;
        int n;
        CU_ASSERT_FATAL(tok_encode(tok, lines[i], strlen(lines[i]), 1, &ids, &n, NULL) == 0);
        CU_ASSERT(prompt_is(&ps, i, ids, n));
        free(ids);
    }
    CU_ASSERT_EQUAL(ps.offsets[2] - ps.offsets[1], 0); // the empty line
    // the special token's text is matched as the special token (id 0), as HF does
    CU_ASSERT_EQUAL(ps.tokens[ps.offsets[5]], 0);
    h5_prompts_free(&ps);
    tok_free(tok);

    // a final '\n' ends the last line and adds no prompt; "\n\n" adds an empty one
    const char *in2 = tmp("two.txt"), *out2 = tmp("two.h5");
    write_str(in2, "a\nb\n");
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s", model_dir(), in2, out2) == 0);
    read_prompts(out2, &ps);
    CU_ASSERT_EQUAL(ps.n, 2);
    h5_prompts_free(&ps);
    write_str(in2, "a\n\n");
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s", model_dir(), in2, out2) == 0);
    read_prompts(out2, &ps);
    CU_ASSERT_EQUAL(ps.n, 2);
    CU_ASSERT_STRING_EQUAL(ps.prompt_text[1], "");
    h5_prompts_free(&ps);
    // --format text on a .jsonl name reads lines as text
    const char *in3 = tmp("lines.jsonl"), *out3 = tmp("lines.h5");
    write_str(in3, "{\"prompt\": \"x\"}\n");
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s --format text", model_dir(),
                           in3, out3) == 0);
    read_prompts(out3, &ps);
    CU_ASSERT_EQUAL(ps.n, 1);
    CU_ASSERT_STRING_EQUAL(ps.prompt_text[0], "{\"prompt\": \"x\"}");
    h5_prompts_free(&ps);
}

// ----------------------------------------------------------------------------
// the corpus: HF's ids for every line, BOS on and off, thread counts

// The corpus lines (JSON strings) as {"prompt": ...} objects, `copies` times.
static const char *corpus_jsonl(const char *name, int copies, int *n_lines) {
    const char *path = tmp(name);
    char **lines;
    int n;
    lines = read_lines(tu_path("tests/tokenizer/corpus.jsonl"), &n);
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    for (int c = 0; c < copies; c++)
        for (int i = 0; i < n; i++) {
            fprintf(f, "{\"prompt\": %s}\n", lines[i]);
        }
    fclose(f);
    free_lines(lines, n);
    *n_lines = n;
    return path;
}

// Every prompt i of ps equals prefix + HF's ids of corpus line i % n_lines.
static long check_hf_ids(const PromptSet *ps, const char *ids_file, int32_t prefix) {
    int n;
    char **lines = read_lines(tu_path(ids_file), &n);
    long bad = 0;
    int32_t *ids = malloc(sizeof(int32_t) * 8192);
    for (int64_t i = 0; i < ps->n; i++) {
        int k = 0;
        if (prefix >= 0) ids[k++] = prefix;
        k += parse_ids(lines[i % n], ids + k, 8191);
        if (!prompt_is(ps, i, ids, k)) {
            if (bad < 3) fprintf(stderr, "  %s: prompt %ld differs from HF\n", ids_file, (long)i);
            bad++;
        }
    }
    free(ids);
    free_lines(lines, n);
    return bad;
}

static void test_corpus_and_bos(void) {
    int n_lines;
    const char *in = corpus_jsonl("corpus1.jsonl", 1, &n_lines);
    CU_ASSERT_EQUAL_FATAL(n_lines, 2500);
    // the demo model's tokenizer is the gpt2 family of the fixtures
    const char *out = tmp("corpus-gpt2.h5");
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s", model_dir(), in, out) == 0);
    PromptSet ps;
    read_prompts(out, &ps);
    CU_ASSERT_EQUAL_FATAL(ps.n, 2500);
    CU_ASSERT_EQUAL(check_hf_ids(&ps, "tests/tokenizer/gpt2/ids.txt", -1), 0);
    h5_prompts_free(&ps);

    // llama3's template adds <|begin_of_text|>; a model-less dir with only tokenizer.json
    const char *dir = tmp("tok-llama3");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s/'", dir,
             tu_path("tests/tokenizer/llama3/tokenizer.json"), dir);
    CU_ASSERT_FATAL(system(cmd) == 0);
    json_error_t je;
    json_t *tj = json_load_file(tu_path("tests/tokenizer/llama3/tokenizer.json"), 0, &je);
    CU_ASSERT_FATAL(tj != NULL);
    json_t *pp = json_object_get(json_object_get(tj, "post_processor"), "processors");
    json_t *tp = NULL;
    for (size_t k = 0; k < json_array_size(pp); k++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(pp, k), "type")),
                    "TemplateProcessing"))
            tp = json_array_get(pp, k);
    CU_ASSERT_FATAL(tp != NULL);
    int32_t bos = jint(json_object_get(json_object_get(json_object_get(tp, "special_tokens"),
                                                       "<|begin_of_text|>"),
                                       "ids"),
                       0);
    json_decref(tj);

    const char *flags[] = {"", "--add-bos", "--no-add-bos"};
    for (int f = 0; f < 3; f++) {
        const char *o = tmp(f == 0 ? "l3-default.h5" : f == 1 ? "l3-bos.h5" : "l3-nobos.h5");
        int rc = sluice("prep --tokenizer %s --input %s --output %s %s", dir, in, o, flags[f]);
        if (rc) fprintf(stderr, "%s\n", g_out);
        CU_ASSERT_FATAL(rc == 0);
        read_prompts(o, &ps);
        CU_ASSERT_EQUAL(check_hf_ids(&ps, "tests/tokenizer/llama3/ids.txt", f == 2 ? -1 : bos), 0);
        CU_ASSERT_EQUAL(ps.tokens[0], f == 2 ? ps.tokens[0] : bos);
        h5_prompts_free(&ps);
    }
    // --tokenizer also takes the file itself
    const char *o4 = tmp("l3-file.h5");
    CU_ASSERT_FATAL(sluice("prep --tokenizer %s/tokenizer.json --input %s --output %s "
                           "--no-add-bos",
                           dir, in, o4) == 0);
    read_prompts(o4, &ps);
    CU_ASSERT_EQUAL(check_hf_ids(&ps, "tests/tokenizer/llama3/ids.txt", -1), 0);
    h5_prompts_free(&ps);
}

static void test_threads_identical(void) {
    int n_lines;
    const char *in = corpus_jsonl("corpus2.jsonl", 2, &n_lines);
    const char *o1 = tmp("t1.h5"), *o3 = tmp("t3.h5");
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s --threads 1", model_dir(), in,
                           o1) == 0);
    CU_ASSERT(strstr(g_out, "5000 prompts") != NULL);
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s --threads 3", model_dir(), in,
                           o3) == 0);
    PromptSet a, b;
    read_prompts(o1, &a);
    read_prompts(o3, &b);
    CU_ASSERT_EQUAL_FATAL(a.n, 5000);
    CU_ASSERT_EQUAL_FATAL(b.n, a.n);
    CU_ASSERT_EQUAL_FATAL(b.n_tokens, a.n_tokens);
    CU_ASSERT(a.n_tokens > 50000);
    CU_ASSERT(!memcmp(a.offsets, b.offsets, sizeof(int64_t) * (size_t)(a.n + 1)));
    CU_ASSERT(!memcmp(a.tokens, b.tokens, sizeof(int32_t) * (size_t)a.n_tokens));
    CU_ASSERT_EQUAL(check_hf_ids(&b, "tests/tokenizer/gpt2/ids.txt", -1), 0);
    h5_prompts_free(&a);
    h5_prompts_free(&b);

    // and in-process, prompts_tokenize with 1 and 4 threads on the same set
    PromptSet p;
    sl_err err = {{0}};
    CU_ASSERT_FATAL(prompts_read_jsonl(&p, in, &err) == 0);
    Tokenizer *tok = demo_tok();
    CU_ASSERT_FATAL(prompts_tokenize(&p, tok, 1, 1, &err) == 0);
    int64_t nt = p.n_tokens;
    int32_t *t1 = malloc(sizeof(int32_t) * (size_t)nt);
    memcpy(t1, p.tokens, sizeof(int32_t) * (size_t)nt);
    CU_ASSERT_FATAL(prompts_tokenize(&p, tok, 1, 4, &err) == 0);
    CU_ASSERT_EQUAL(p.n_tokens, nt);
    CU_ASSERT(!memcmp(t1, p.tokens, sizeof(int32_t) * (size_t)nt));
    free(t1);
    tok_free(tok);
    h5_prompts_free(&p);
}

// ----------------------------------------------------------------------------
// bad input and bad flags

typedef struct {
    const char *what;
    const char *name;    // input file name (sets the format)
    const char *content; // written raw (NULL: the file does not exist)
    const char *want;    // substring of the output; "%s" is replaced by the input path
} BadCase;

static void test_bad_input(void) {
    BadCase cases[] = {
        {"bad JSON on line 3", "b1.jsonl", "{\"prompt\":\"a\"}\n{\"prompt\":\"b\"}\n{\"prompt\": \"c\",,}\n",
         "%s:3: expected a JSON object with a \"prompt\" string"},
        {"missing prompt", "b2.jsonl", "{\"prompt\":\"a\"}\n{\"text\":\"b\"}\n",
         "%s:2: expected a JSON object with a \"prompt\" string (no \"prompt\" field)"},
        {"prompt not a string", "b3.jsonl", "{\"prompt\": 5}\n",
         "%s:1: field \"prompt\" must be a string, found an integer"},
        {"wrong field type", "b4.jsonl", "{\"prompt\":\"a\"}\n{\"prompt\":\"b\",\"temperature\":\"hot\"}\n",
         "%s:2: field \"temperature\" must be a number, found a string"},
        {"float max_new_tokens", "b5.jsonl", "{\"prompt\":\"a\",\"max_new_tokens\":2.5}\n",
         "%s:1: field \"max_new_tokens\" must be an integer"},
        {"max_new_tokens 0", "b6.jsonl", "{\"prompt\":\"a\",\"max_new_tokens\":0}\n",
         "%s:1: field \"max_new_tokens\" is 0"},
        {"top_p out of range", "b7.jsonl", "{\"prompt\":\"a\"}\n{\"prompt\":\"b\",\"top_p\":1.5}\n",
         "%s:2: field \"top_p\" is 1.5"},
        {"negative seed", "b8.jsonl", "{\"prompt\":\"a\",\"seed\":-1}\n", "%s:1: field \"seed\""},
        {"request_id a list", "b9.jsonl", "{\"prompt\":\"a\",\"request_id\":[1]}\n",
         "%s:1: field \"request_id\" must be a string or an integer"},
        {"invalid UTF-8", "b10.jsonl", "{\"prompt\":\"a\"}\n{\"prompt\":\"caf\xc3\"}\n",
         "invalid UTF-8 at line 2"},
        {"overlong UTF-8", "b11.jsonl", "{\"prompt\":\"\xc0\xaf\"}\n", "invalid UTF-8 at line 1"},
        {"empty line in the middle", "b12.jsonl", "{\"prompt\":\"a\"}\n\n{\"prompt\":\"b\"}\n",
         "%s:2: empty line"},
        {"an array", "b13.jsonl", "[\"a\"]\n", "%s:1: expected a JSON object with a \"prompt\" string, found an array"},
        {"two objects on a line", "b14.jsonl", "{\"prompt\":\"a\"} {\"prompt\":\"b\"}\n", "%s:1:"},
        {"text invalid UTF-8", "b15.txt", "ok\nfine\nbad \xff byte\n", "%s:3: invalid UTF-8 at line 3"},
        {"text NUL byte", "b16.txt", "ok\nnul\x01", NULL}, // replaced below (embedded NUL)
        {"missing input", "nope.jsonl", NULL, "nope.jsonl"},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        BadCase *c = &cases[i];
        char in[512], out[600], want[1024];
        snprintf(in, sizeof in, "%s", tmp(c->name));
        snprintf(out, sizeof out, "%s.h5", in);
        if (c->content && !c->want) { // a NUL inside line 2
            CU_ASSERT_FATAL(tu_write_file(in, "ok\nn\0l\n", 7) == 0);
            snprintf(want, sizeof want, "%s:2: NUL byte at line 2", in);
        } else {
            if (c->content) write_str(in, c->content);
            const char *pct = strstr(c->want, "%s");
            if (pct)
                snprintf(want, sizeof want, "%.*s%s%s", (int)(pct - c->want), c->want, in, pct + 2);
            else
                snprintf(want, sizeof want, "%s", c->want);
        }
        int rc = sluice("prep --model %s --input %s --output %s", model_dir(), in, out);
        int ok = rc == 1 && strstr(g_out, want) != NULL;
        if (!ok)
            fprintf(stderr, "  [%s] exit %d (want 1), output:\n%s  (wanted '%s')\n", c->what, rc,
                    g_out, want);
        CU_ASSERT(ok);
        char t[700];
        snprintf(t, sizeof t, "%s.tmp", out);
        CU_ASSERT(!exists(out) && !exists(t));
    }

    // a bad tokenizer: exit 1, names it, no output
    const char *in = tmp("ok.jsonl"), *out = tmp("ok-bad-tok.h5");
    write_str(in, "{\"prompt\":\"a\"}\n\n\n"); // empty lines at the end are fine
    int rc = sluice("prep --tokenizer %s/missing-dir --input %s --output %s", tu_tmpdir(), in, out);
    CU_ASSERT(rc == 1 && strstr(g_out, "missing-dir") != NULL);
    CU_ASSERT(!exists(out));
    rc = sluice("prep --model %s --input %s --output %s", model_dir(), in, out);
    CU_ASSERT_FATAL(rc == 0);
    PromptSet ps;
    read_prompts(out, &ps);
    CU_ASSERT_EQUAL(ps.n, 1);
    h5_prompts_free(&ps);
}

static void test_bad_flags(void) {
    const char *in = tmp("flags.jsonl"), *out = tmp("flags.h5");
    write_str(in, "{\"prompt\":\"a\"}\n");
    char args[16][1024];
    const char *want[16];
    int n = 0;
#define CASE(w, ...) (snprintf(args[n], sizeof args[n], __VA_ARGS__), want[n++] = (w))
    CASE("--input and --output are required", "prep --model %s --output %s", model_dir(), out);
    CASE("--input and --output are required", "prep --model %s --input %s", model_dir(), in);
    CASE("give --tokenizer PATH or --model DIR", "prep --input %s --output %s", in, out);
    CASE("not both", "prep --model %s --tokenizer %s --input %s --output %s", model_dir(),
         model_dir(), in, out);
    CASE("--format: 'xml'", "prep --model %s --input %s --output %s --format xml", model_dir(),
         in, out);
    CASE("contradict", "prep --model %s --input %s --output %s --add-bos --no-add-bos",
         model_dir(), in, out);
    CASE("--threads", "prep --model %s --input %s --output %s --threads 0", model_dir(), in, out);
    CASE("--frobnicate", "prep --model %s --input %s --output %s --frobnicate", model_dir(), in,
         out);
    CASE("unexpected argument", "prep --model %s --input %s --output %s extra", model_dir(), in,
         out);
    CASE("--limit", "export %s --limit x", tu_tmpdir());
#undef CASE
    for (int i = 0; i < n; i++) {
        int rc = sluice("%s", args[i]);
        int ok = rc == 2 && strstr(g_out, want[i]) != NULL;
        if (!ok) fprintf(stderr, "  [%s] exit %d (want 2):\n%s\n", args[i], rc, g_out);
        CU_ASSERT(ok);
    }
    CU_ASSERT(!exists(out));
    CU_ASSERT(sluice("prep --help") == 0 && strstr(g_out, "--no-add-bos") != NULL);
    CU_ASSERT(sluice("--help") == 0 && strstr(g_out, "prep") != NULL);
}

// ----------------------------------------------------------------------------
// prep -> run -> export

// Lines of a JSONL file, parsed.
static json_t *load_jsonl(const char *path) {
    int n;
    char **lines = read_lines(path, &n);
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        if (!lines[i][0]) continue;
        json_error_t je;
        json_t *o = json_loads(lines[i], 0, &je);
        CU_ASSERT_FATAL(o != NULL);
        json_array_append_new(a, o);
    }
    free_lines(lines, n);
    return a;
}

// s with every occurrence of cut removed (a fresh string).
static char *without(const char *s, const char *cut) {
    char *r = malloc(strlen(s) + 1), *w = r;
    size_t k = strlen(cut);
    while (*s) {
        if (!strncmp(s, cut, k)) s += k;
        else *w++ = *s++;
    }
    *w = 0;
    return r;
}

static void test_round_trip(void) {
    json_t *g = golden_cases(), *cases = json_object_get(g, "cases");
    const char *in = tmp("rt.jsonl"), *h5 = tmp("rt.h5"), *out = tmp("rt-out"),
               *jl = tmp("rt.jsonl.out");
    FILE *f = fopen(in, "w");
    CU_ASSERT_FATAL(f != NULL);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *o = json_pack("{s:O,s:s}", "prompt",
                              json_object_get(json_array_get(cases, i), "prompt"), "request_id",
                              i == 3 ? "case-three" : "");
        char *s = json_dumps(o, JSON_COMPACT);
        fprintf(f, "%s\n", s);
        free(s);
        json_decref(o);
    }
    fclose(f);
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s", model_dir(), in, h5) == 0);
    int rc = sluice("run --model %s --input %s --output %s --max-new-tokens 48 --ignore-eos "
                    "--progress 0",
                    model_dir(), h5, out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    rc = sluice("export %s --prompts %s --output %s", out, h5, jl);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    json_t *rows = load_jsonl(jl);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 8);
    Tokenizer *tok = demo_tok();
    for (size_t i = 0; i < 8; i++) {
        json_t *r = json_array_get(rows, i), *c = json_array_get(cases, i);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "prompt_index")), (json_int_t)i);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "prompt")),
                               json_string_value(json_object_get(c, "prompt")));
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "request_id")),
                               i == 3 ? "case-three" : "");
        json_t *ids = json_object_get(r, "completion_ids"), *want = json_object_get(c, "greedy_ids");
        CU_ASSERT_FATAL(json_array_size(ids) == 48);
        CU_ASSERT(json_equal(ids, want));
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "n_tokens")), 48);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "prompt_len")),
                        (json_int_t)json_array_size(json_object_get(c, "prompt_ids")));
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "finish_reason")), "length");
        CU_ASSERT(json_object_get(r, "latency_s") && json_object_get(r, "ttft_s") &&
                  json_object_get(r, "queue_s"));
        // the text: tok_decode(ids, skip_special) and HF's greedy_text (decoded with
        // specials; case 6 holds <|endoftext|>, which skip_special drops)
        const char *text = json_string_value(json_object_get(r, "completion_text"));
        CU_ASSERT_FATAL(text != NULL);
        int32_t got[48];
        for (int k = 0; k < 48; k++) got[k] = jint(ids, (size_t)k);
        char *dec;
        CU_ASSERT_FATAL(tok_decode(tok, got, 48, 1, &dec, NULL, NULL) == 0);
        CU_ASSERT_STRING_EQUAL(text, dec);
        free(dec);
        char *hf = without(json_string_value(json_object_get(c, "greedy_text")), "<|endoftext|>");
        if (strcmp(text, hf)) fprintf(stderr, "  case %zu: text differs from HF\n", i);
        CU_ASSERT_STRING_EQUAL(text, hf);
        free(hf);
    }
    json_decref(rows);

    // --limit; without --prompts no prompt text
    CU_ASSERT_FATAL(sluice("export %s --limit 3 --output %s", out, jl) == 0);
    rows = load_jsonl(jl);
    CU_ASSERT_EQUAL(json_array_size(rows), 3);
    CU_ASSERT(json_object_get(json_array_get(rows, 0), "prompt") == NULL);
    CU_ASSERT(json_object_get(json_array_get(rows, 0), "completion_text") != NULL);
    json_decref(rows);
    // --prompts from another job: refused, names both files, no output
    const char *small = tmp("small.txt"), *small_h5 = tmp("small.h5"), *jl2 = tmp("bad.jsonl.out");
    write_str(small, "one\ntwo\n");
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s", model_dir(), small,
                           small_h5) == 0);
    rc = sluice("export %s --prompts %s --output %s", out, small_h5, jl2);
    CU_ASSERT(rc == 1 && strstr(g_out, "holds 2 prompts") != NULL);
    CU_ASSERT(!exists(jl2));
    tok_free(tok);
    json_decref(g);
}

// Per-request fields on some lines only: the others follow the flags.
static void test_sentinels_follow_flags(void) {
    json_t *g = golden_cases(), *cases = json_object_get(g, "cases");
    const char *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = json_string_value(json_object_get(json_array_get(cases, (size_t)i), "prompt"));
    // line 0: its own max_new_tokens; line 1: nothing; line 2: sampled with its own seed
    json_t *o0 = json_pack("{s:s,s:i}", "prompt", p[0], "max_new_tokens", 2);
    json_t *o1 = json_pack("{s:s}", "prompt", p[1]);
    json_t *o2 = json_pack("{s:s,s:f,s:f,s:i,s:i}", "prompt", p[2], "temperature", 0.9, "top_p",
                           0.95, "top_k", 40, "seed", 7);
    char *s0 = json_dumps(o0, 0), *s1 = json_dumps(o1, 0), *s2 = json_dumps(o2, 0);
    char buf[4096];
    snprintf(buf, sizeof buf, "%s\n%s\n%s\n", s0, s1, s2);
    free(s0), free(s1), free(s2);
    json_decref(o0), json_decref(o1), json_decref(o2);
    const char *in = tmp("sent.jsonl"), *h5 = tmp("sent.h5"), *out = tmp("sent-out");
    write_str(in, buf);
    CU_ASSERT_FATAL(sluice("prep --model %s --input %s --output %s", model_dir(), in, h5) == 0);
    int rc = sluice("run --model %s --input %s --output %s --max-new-tokens 5 --ignore-eos "
                    "--temperature 0 --progress 0",
                    model_dir(), h5, out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    CompletionSet cs;
    char cp[1024];
    snprintf(cp, sizeof cp, "%s/completions.h5", out);
    sl_err err = {{0}};
    CU_ASSERT_FATAL(h5_completions_read(&cs, cp, &err) == 0);
    CU_ASSERT_EQUAL_FATAL(cs.n, 3);
    for (int i = 0; i < 3; i++) {
        if (cs.finish[i] == FINISH_ERROR) fprintf(stderr, "  row %d: error %s\n", i, cs.error[i]);
        CU_ASSERT_EQUAL(cs.finish[i], FINISH_LENGTH);
    }
    CU_ASSERT_EQUAL(cs.offsets[1] - cs.offsets[0], 2);
    CU_ASSERT_EQUAL(cs.offsets[2] - cs.offsets[1], 5);
    CU_ASSERT_EQUAL(cs.offsets[3] - cs.offsets[2], 5);
    // rows 0 and 1 took the flag's temperature 0: HF's greedy ids
    for (int i = 0; i < 2; i++) {
        json_t *want = json_object_get(json_array_get(cases, (size_t)i), "greedy_ids");
        for (int64_t k = cs.offsets[i]; k < cs.offsets[i + 1]; k++)
            CU_ASSERT_EQUAL(cs.tokens[k], jint(want, (size_t)(k - cs.offsets[i])));
    }
    h5_completions_free(&cs);
    json_decref(g);
}

// Writes a prompts file holding prompt_text (and max_new_tokens) only.
static void text_only_prompts(const char *path, const char **texts, int n, int32_t max_new) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    hsize_t dims = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &dims, NULL);
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, H5T_VARIABLE);
    H5Tset_cset(st, H5T_CSET_UTF8);
    hid_t ds = H5Dcreate2(f, "prompt_text", st, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(H5Dwrite(ds, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, texts) >= 0);
    H5Dclose(ds);
    int32_t mn[16];
    for (int i = 0; i < n; i++) mn[i] = max_new;
    ds = H5Dcreate2(f, "max_new_tokens", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, mn) >= 0);
    H5Dclose(ds);
    H5Tclose(st);
    H5Sclose(sp);
    H5Fclose(f);
}

// `run` on a prompts file with text only tokenizes it with the model's tokenizer.
static void test_text_only_run(void) {
    json_t *g = golden_cases(), *cases = json_object_get(g, "cases");
    const char *texts[3];
    for (int i = 0; i < 3; i++)
        texts[i] = json_string_value(json_object_get(json_array_get(cases, (size_t)i), "prompt"));
    const char *h5 = tmp("textonly.h5"), *out = tmp("textonly-out");
    text_only_prompts(h5, texts, 3, 4);
    int rc = sluice("run --model %s --input %s --output %s --ignore-eos --progress 0",
                    model_dir(), h5, out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    CompletionSet cs;
    char cp[1024];
    snprintf(cp, sizeof cp, "%s/completions.h5", out);
    sl_err err = {{0}};
    CU_ASSERT_FATAL(h5_completions_read(&cs, cp, &err) == 0);
    CU_ASSERT_EQUAL_FATAL(cs.n, 3);
    CU_ASSERT_FATAL(cs.text != NULL);
    for (int i = 0; i < 3; i++) {
        json_t *c = json_array_get(cases, (size_t)i);
        CU_ASSERT_EQUAL(cs.prompt_len[i], (int32_t)json_array_size(json_object_get(c, "prompt_ids")));
        CU_ASSERT_EQUAL_FATAL(cs.offsets[i + 1] - cs.offsets[i], 4);
        for (int k = 0; k < 4; k++)
            CU_ASSERT_EQUAL(cs.tokens[cs.offsets[i] + k], jint(json_object_get(c, "greedy_ids"), (size_t)k));
    }
    h5_completions_free(&cs);
    // export reads the text-only prompts file for the prompt text
    const char *jl = tmp("textonly.jsonl");
    CU_ASSERT_FATAL(sluice("export %s --prompts %s --output %s", out, h5, jl) == 0);
    json_t *rows = load_jsonl(jl);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 3);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(rows, 1), "prompt")),
                           texts[1]);
    json_decref(rows);

    // a model directory without tokenizer.json cannot tokenize it: exit 1, nothing written
    const char *m = tmp("model-no-tok");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && for f in '%s'/*; do case \"$f\" in *tokenizer.json) ;; "
             "*) ln -s \"$f\" '%s/';; esac; done",
             m, model_dir(), m);
    CU_ASSERT_FATAL(system(cmd) == 0);
    const char *out2 = tmp("textonly-out2");
    rc = sluice("run --model %s --input %s --output %s", m, h5, out2);
    CU_ASSERT(rc == 1 && strstr(g_out, "tokenizer.json") != NULL && strstr(g_out, h5) != NULL);
    char p2[1024];
    snprintf(p2, sizeof p2, "%s/completions.h5", out2);
    CU_ASSERT(!exists(p2));
    json_decref(g);
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    static const tu_test prep[] = {{"jsonl_golden_ids_and_fields", test_jsonl_golden},
                                   {"text_lines", test_text_input},
                                   {"corpus_hf_ids_and_bos", test_corpus_and_bos},
                                   {"threads_identical", test_threads_identical},
                                   {"bad_input", test_bad_input},
                                   {"bad_flags", test_bad_flags},
                                   {NULL, NULL}};
    static const tu_test trip[] = {{"prep_run_export_text", test_round_trip},
                                   {"sentinels_follow_flags", test_sentinels_follow_flags},
                                   {"text_only_prompts_run", test_text_only_run},
                                   {NULL, NULL}};
    tu_suite("prep", prep);
    tu_suite("text_round_trip", trip);
    return tu_main();
}
