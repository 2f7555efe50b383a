// test_fuzz_regress.c: the fuzz corpora (tests/fuzz/corpus) replayed through
// the ordinary library build, so `make test` and `make asan` cover what the
// libFuzzer targets (tests/fuzz/fuzz_*.c) found, without clang or libFuzzer.
//
// Two kinds of checks:
// - regressions: inputs that crashed a fuzz target before a fix, each with
//   the exact error it must now give (file names start with "regress-");
// - seeds: the valid files each corpus was started from load and give the
//   values their writers put in (tensor counts from the Python writer,
//   config shapes from config.json, prompt counts from the JSONL lines).
// Every other file in the corpora must give 0 or -1 with a message.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "config.h"
#include "h5io.h"
#include "prompts_text.h"
#include "safetensors.h"
#include "testutil.h"
#include "tokenizer.h"

// ----------------------------------------------------------------------------
// regressions

// A prompts file whose 'prompt_offsets' dataspace claims 2^58 elements: the
// reader allocated for it first and died of "out of host memory" in
// sl_calloc (io/h5io.c, fixed by check_stored).
static void test_regress_huge_offsets(void) {
    const char *p = tu_path("tests/fuzz/corpus/h5prompts/regress-huge-offsets.h5");
    PromptSet ps;
    sl_err err = {0};
    CU_ASSERT_EQUAL(h5_prompts_read(&ps, p, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "regress-huge-offsets.h5"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'prompt_offsets' claims 288230376151711748 elements"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "file stores only 32 bytes"));
    CU_ASSERT_PTR_NULL(ps.offsets);
}

// The same in a completions file ('prompt_index' claims 2^40 - 510 rows),
// through h5_completions_read (what `sluice export` and the merge use).
static void test_regress_huge_index(void) {
    const char *p = tu_path("tests/fuzz/corpus/h5prompts/regress-huge-index.h5");
    CompletionSet cs;
    sl_err err = {0};
    CU_ASSERT_EQUAL(h5_completions_read(&cs, p, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "regress-huge-index.h5"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'prompt_index' claims 1099511627266 elements"));
}

// A tokenizer.json whose vocabulary holds the id 1777777770: the id -> token
// tables are sized by the largest id, and loading it asked for 14 GB
// (fuzz_tokenizer: out of memory in tok_bpe_reserve; fixed by TOK_MAX_ID).
static void test_regress_huge_vocab_id(void) {
    const char *p = tu_path("tests/fuzz/corpus/tokenizer/regress-huge-vocab-id.json");
    Tokenizer *t = NULL;
    sl_err err = {0};
    CU_ASSERT_EQUAL(tok_load(&t, p, &err), -1);
    CU_ASSERT_PTR_NULL(t);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "regress-huge-vocab-id.json"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "model.vocab[\"<0xA7>\"]: id 1777777770 is past"));
}

// ----------------------------------------------------------------------------
// seeds

static void test_seed_safetensors(void) {
    st_file *f = NULL;
    sl_err err = {0};
    CU_ASSERT_EQUAL_FATAL(
        st_open_file(&f, tu_path("tests/fuzz/corpus/safetensors/mixed.safetensors"), &err), 0);
    CU_ASSERT_EQUAL(st_count(f), 7);
    const st_tensor *t = st_find(f, "model.embed_tokens.weight");
    CU_ASSERT_FATAL(t != NULL);
    CU_ASSERT_EQUAL(t->dtype, ST_F32);
    CU_ASSERT_EQUAL(t->shape[0], 3);
    CU_ASSERT_EQUAL(t->shape[1], 4);
    t = st_find(f, "ids");
    CU_ASSERT_FATAL(t != NULL);
    int32_t ids[2]; // the data is not 4-byte aligned in this file: copy it out
    memcpy(ids, t->data, sizeof ids);
    CU_ASSERT_EQUAL(ids[0], 7); // written by numpy as [7, -1]
    CU_ASSERT_EQUAL(ids[1], -1);
    t = st_find(f, "scale");
    CU_ASSERT_FATAL(t != NULL);
    CU_ASSERT_EQUAL(t->ndim, 0);
    double scale;
    memcpy(&scale, t->data, sizeof scale);
    CU_ASSERT_EQUAL(scale, 0.5);
    st_close(f);
}

static void test_seed_config(void) {
    // config.json, NUL, generation_config.json of the bundled model
    size_t n = 0;
    sl_err err = {0};
    char *b = sl_read_file(tu_path("tests/fuzz/corpus/config/tiny-code-llama-with-gen.json"), &n,
                           &err);
    CU_ASSERT_FATAL(b != NULL);
    const char *nul = memchr(b, 0, n);
    CU_ASSERT_FATAL(nul != NULL);
    ModelConfig c;
    CU_ASSERT_EQUAL_FATAL(config_parse(&c, b, nul + 1, "config.json", &err), 0);
    CU_ASSERT_EQUAL(c.vocab_size, 8192);
    CU_ASSERT_EQUAL(c.dim, 384);
    CU_ASSERT_EQUAL(c.n_layers, 8);
    CU_ASSERT_EQUAL(c.n_kv_heads, 2);
    free(b);
}

static void test_seed_prompts(void) {
    PromptSet ps;
    sl_err err = {0};
    CU_ASSERT_EQUAL_FATAL(
        prompts_read_jsonl(&ps, tu_path("tests/fuzz/corpus/jsonl/all-fields.jsonl"), &err), 0);
    CU_ASSERT_EQUAL(ps.n, 3);
    CU_ASSERT_STRING_EQUAL(ps.request_id[0], "req-1");
    CU_ASSERT_STRING_EQUAL(ps.request_id[1], "42");
    CU_ASSERT_STRING_EQUAL(ps.prompt_text[1], "ids as ints \xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80");
    h5_prompts_free(&ps);
    CU_ASSERT_EQUAL_FATAL(
        h5_prompts_read(&ps, tu_path("tests/fuzz/corpus/h5prompts/tokens-i16-i32.h5"), &err), 0);
    CU_ASSERT_EQUAL(ps.n, 3);
    CU_ASSERT_EQUAL(ps.n_tokens, 5);
    CU_ASSERT_EQUAL(ps.offsets[2], 2); // written by h5py as int32 [0, 2, 2, 5]
    CU_ASSERT_EQUAL(ps.tokens[4], 9);
    h5_prompts_free(&ps);
}

// ----------------------------------------------------------------------------
// the whole corpora: 0, or -1 with a message

typedef int (*replay_fn)(const char *path, sl_err *err);

static int replay_safetensors(const char *p, sl_err *err) {
    st_file *f = NULL;
    int rc = st_open_file(&f, p, err);
    st_close(f);
    return rc;
}

static int replay_config(const char *p, sl_err *err) {
    size_t n = 0;
    char *b = sl_read_file(p, &n, err);
    if (!b) return -1;
    const char *nul = memchr(b, 0, n);
    ModelConfig c;
    int rc = config_parse(&c, b, nul ? nul + 1 : NULL, p, err);
    free(b);
    return rc;
}

static int replay_tokenizer(const char *p, sl_err *err) {
    Tokenizer *t = NULL;
    if (tok_load(&t, p, err)) return -1;
    int32_t *ids = NULL;
    int n = 0;
    int rc = tok_encode(t, "Hello, world! caf\xc3\xa9", 18, 1, &ids, &n, err);
    free(ids);
    tok_free(t);
    return rc;
}

static int replay_jsonl(const char *p, sl_err *err) {
    PromptSet ps;
    int rc = prompts_read_jsonl(&ps, p, err);
    h5_prompts_free(&ps);
    sl_err e2 = {0};
    if (prompts_read_text(&ps, p, &e2) != 0 && !e2.msg[0]) rc = -2; // -2: no message
    h5_prompts_free(&ps);
    return rc;
}

static int replay_h5prompts(const char *p, sl_err *err) {
    PromptSet ps;
    int rc = h5_prompts_read(&ps, p, err);
    if (rc == 0) h5_prompts_free(&ps);
    CompletionSet cs;
    sl_err e2 = {0};
    if (h5_completions_read(&cs, p, &e2) == 0)
        h5_completions_free(&cs);
    else if (!e2.msg[0])
        rc = -2;
    return rc;
}

static void replay_dir(const char *name, replay_fn fn) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_path("tests/fuzz/corpus"));
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", name);
    DIR *d = opendir(dir);
    CU_ASSERT_FATAL(d != NULL);
    int files = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        sl_err err = {0};
        int rc = fn(p, &err);
        if (!(rc == 0 || (rc == -1 && err.msg[0])))
            fprintf(stderr, "%s: rc=%d, message '%s'\n", p, rc, err.msg);
        CU_ASSERT(rc == 0 || (rc == -1 && err.msg[0]));
        files++;
    }
    closedir(d);
    CU_ASSERT(files >= 3); // every corpus holds at least three seeds
}

static void test_replay_all(void) {
    sl_log_set_level(LOG_ERROR);
    replay_dir("safetensors", replay_safetensors);
    replay_dir("config", replay_config);
    replay_dir("tokenizer", replay_tokenizer);
    replay_dir("jsonl", replay_jsonl);
    replay_dir("h5prompts", replay_h5prompts);
}

int main(void) {
    static const tu_test regress[] = {{"huge_prompt_offsets", test_regress_huge_offsets},
                                      {"huge_prompt_index", test_regress_huge_index},
                                      {"huge_vocab_id", test_regress_huge_vocab_id},
                                      {NULL, NULL}};
    static const tu_test seeds[] = {{"safetensors_seed", test_seed_safetensors},
                                    {"config_seed", test_seed_config},
                                    {"prompt_seeds", test_seed_prompts},
                                    {"replay_every_corpus_file", test_replay_all},
                                    {NULL, NULL}};
    tu_suite("fuzz_regressions", regress);
    tu_suite("fuzz_corpora", seeds);
    return tu_main();
}
