// test_e2e.c: the `sluice` binary end to end, as users run it.
//
// - `sluice run` on the demo model reproduces the 8 golden greedy
//   continuations recorded by Hugging Face transformers, and stops at eos
//   when not told to ignore it;
// - in-flight batching changes nothing: --max-batch 1 and --max-batch 64 with
//   a tight KV pool (forcing preemption), small chunks (splitting prompts) and
//   either policy give identical tokens, greedy and seeded sampling alike;
// - bad input (flags, model directories, prompt files, requests) gives a
//   clear error naming the culprit, a non-zero exit, and no completions.h5;
// - `sluice bench` keeps its warm-up requests out of the report.
#include <hdf5.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5io.h"
#include "testutil.h"

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
    return rc;
}

static int exists(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

static const char *tmp(const char *name) {
    static char slots[16][512];
    static int k;
    char *p = slots[k++ & 15];
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

// The golden prompts of the demo model.
static json_t *golden_cases(void) {
    json_error_t je;
    char p[512];
    snprintf(p, sizeof p, "%s/golden_greedy.json", model_dir());
    json_t *g = json_load_file(p, 0, &je);
    CU_ASSERT_FATAL(g != NULL);
    return g;
}

static void write_prompts(const char *path, int n, int32_t **prompts, const int *lens,
                          const int32_t *max_new, const float *temp, const float *top_p,
                          const int64_t *seed) {
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    ps.n = n;
    ps.offsets = calloc(n + 1, sizeof(int64_t));
    for (int i = 0; i < n; i++) ps.offsets[i + 1] = ps.offsets[i] + lens[i];
    ps.n_tokens = ps.offsets[n];
    ps.tokens = calloc(ps.n_tokens + 1, sizeof(int32_t));
    for (int i = 0; i < n; i++)
        memcpy(ps.tokens + ps.offsets[i], prompts[i], sizeof(int32_t) * lens[i]);
    ps.max_new_tokens = (int32_t *)max_new;
    ps.temperature = (float *)temp;
    ps.top_p = (float *)top_p;
    ps.seed = (int64_t *)seed;
    sl_err err = {{0}};
    int rc = h5_prompts_write(path, &ps, &err);
    if (rc) fprintf(stderr, "h5_prompts_write: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    free(ps.offsets);
    free(ps.tokens);
}

static void read_completions(const char *outdir, CompletionSet *cs) {
    char p[1024];
    snprintf(p, sizeof p, "%s/completions.h5", outdir);
    sl_err err = {{0}};
    int rc = h5_completions_read(cs, p, &err);
    if (rc) fprintf(stderr, "h5_completions_read: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
}

static int same_completions(const CompletionSet *a, const CompletionSet *b) {
    if (a->n != b->n) return 0;
    for (int64_t i = 0; i < a->n; i++) {
        int64_t la = a->offsets[i + 1] - a->offsets[i], lb = b->offsets[i + 1] - b->offsets[i];
        if (a->prompt_index[i] != b->prompt_index[i] || la != lb || a->finish[i] != b->finish[i] ||
            memcmp(a->tokens + a->offsets[i], b->tokens + b->offsets[i], sizeof(int32_t) * la)) {
            fprintf(stderr, "  completion %ld differs (len %ld vs %ld)\n", (long)i, (long)la,
                    (long)lb);
            return 0;
        }
    }
    return 1;
}

// ----------------------------------------------------------------------------
// golden

static void golden_prompts_file(const char *path, json_t *cases) {
    int n = (int)json_array_size(cases), lens[16];
    int32_t *pr[16];
    for (int i = 0; i < n; i++) {
        json_t *ids = json_object_get(json_array_get(cases, i), "prompt_ids");
        lens[i] = (int)json_array_size(ids);
        pr[i] = malloc(sizeof(int32_t) * lens[i]);
        for (int k = 0; k < lens[i]; k++) pr[i][k] = (int32_t)json_integer_value(json_array_get(ids, k));
    }
    write_prompts(path, n, pr, lens, NULL, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) free(pr[i]);
}

static void test_golden_greedy(void) {
    json_t *g = golden_cases();
    json_t *cases = json_object_get(g, "cases");
    const char *in = tmp("golden.h5"), *out = tmp("golden-out");
    golden_prompts_file(in, cases);
    int rc = sluice("run --model %s --input %s --output %s --max-new-tokens 48 --ignore-eos",
                    model_dir(), in, out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    CompletionSet cs;
    read_completions(out, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 8);
    for (int64_t i = 0; i < cs.n; i++) {
        json_t *want = json_object_get(json_array_get(cases, i), "greedy_ids");
        CU_ASSERT_EQUAL(cs.prompt_index[i], i);
        CU_ASSERT_EQUAL(cs.offsets[i + 1] - cs.offsets[i], 48);
        CU_ASSERT_EQUAL(cs.finish[i], FINISH_LENGTH);
        int bad = 0;
        for (int k = 0; k < 48; k++)
            bad += cs.tokens[cs.offsets[i] + k] != (int32_t)json_integer_value(json_array_get(want, k));
        if (bad) fprintf(stderr, "  case %ld: %d tokens differ from HF\n", (long)i, bad);
        CU_ASSERT_EQUAL(bad, 0);
    }
    h5_completions_free(&cs);
    // report.json carries throughput and the latency percentiles
    char rp[1024];
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_error_t je;
    json_t *r = json_load_file(rp, 0, &je);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "output_tokens")), 8 * 48);
    CU_ASSERT(json_real_value(json_object_get(r, "output_tokens_per_s")) > 0);
    json_t *ttft = json_object_get(r, "ttft_s");
    CU_ASSERT(json_real_value(json_object_get(ttft, "p99")) >=
              json_real_value(json_object_get(ttft, "p50")));
    CU_ASSERT(json_object_get(json_object_get(r, "tpot_s"), "p90") != NULL);
    json_decref(r);
    // part files are kept beside the merged file
    CU_ASSERT(exists(out, "part-00000-000000.h5"));

    // Without --ignore-eos, case 6 (whose golden continuation contains eos id 0)
    // stops right after it, with finish_reason stop.
    const char *out2 = tmp("golden-eos");
    CU_ASSERT_FATAL(sluice("run --model %s --input %s --output %s --max-new-tokens 48", model_dir(),
                           in, out2) == 0);
    read_completions(out2, &cs);
    int stopped = 0;
    for (int64_t i = 0; i < cs.n; i++) {
        json_t *want = json_object_get(json_array_get(cases, i), "greedy_ids");
        int eos_at = -1;
        for (int k = 0; k < 48 && eos_at < 0; k++)
            if (json_integer_value(json_array_get(want, k)) == 0) eos_at = k;
        int64_t len = cs.offsets[i + 1] - cs.offsets[i];
        if (eos_at >= 0) {
            stopped++;
            CU_ASSERT_EQUAL(len, eos_at + 1);
            CU_ASSERT_EQUAL(cs.finish[i], FINISH_STOP);
        } else {
            CU_ASSERT_EQUAL(len, 48);
        }
    }
    CU_ASSERT_EQUAL(stopped, 1);
    h5_completions_free(&cs);
    json_decref(g);
}

// --stop-token-ids ends a completion at the first listed id (kept in the
// output, finish_reason stop); a per-request repetition_penalty dataset changes
// the greedy continuation of that request only, and --logprobs records one
// log probability per generated token (<= 0; greedy picks the most likely).
static void test_stop_ids_and_per_request_penalty(void) {
    json_t *g = golden_cases();
    json_t *cases = json_object_get(g, "cases");
    json_t *want0 = json_object_get(json_array_get(cases, 0), "greedy_ids");
    int stop_tok = (int)json_integer_value(json_array_get(want0, 5));
    int first = 5; // the first occurrence of that id in case 0's continuation
    for (int k = 0; k < 5; k++)
        if (json_integer_value(json_array_get(want0, k)) == stop_tok) first = k;
    const char *in = tmp("stop.h5"), *out = tmp("stop-out");
    golden_prompts_file(in, cases);
    CU_ASSERT_FATAL(sluice("run --model %s --input %s --output %s --max-new-tokens 48 --ignore-eos "
                           "--stop-token-ids 8191,%d --top-logprobs 3",
                           model_dir(), in, out, stop_tok) == 0);
    CompletionSet cs;
    read_completions(out, &cs);
    CU_ASSERT_EQUAL(cs.offsets[1] - cs.offsets[0], first + 1);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_STOP);
    CU_ASSERT_EQUAL(cs.tokens[cs.offsets[0] + first], stop_tok);
    CU_ASSERT_FATAL(cs.logprobs != NULL);
    CU_ASSERT_EQUAL_FATAL(cs.top_n, 3);
    // greedy: the chosen token is the most likely one, with the same logprob;
    // the alternatives come in descending order and hold at most all the mass
    for (int64_t k = 0; k < cs.offsets[cs.n]; k++) {
        const int32_t *ids = cs.top_ids + k * 3;
        const float *lp = cs.top_logprobs + k * 3;
        CU_ASSERT(cs.logprobs[k] <= 0.0f);
        CU_ASSERT_EQUAL(ids[0], cs.tokens[k]);
        CU_ASSERT(fabsf(lp[0] - cs.logprobs[k]) < 1e-5f);
        CU_ASSERT(lp[0] >= lp[1] && lp[1] >= lp[2]);
        CU_ASSERT(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        CU_ASSERT(expf(lp[0]) + expf(lp[1]) + expf(lp[2]) <= 1.0f + 1e-5f);
    }
    h5_completions_free(&cs);

    // two copies of one prompt, the second with a repetition penalty
    json_t *ids = json_object_get(json_array_get(cases, 1), "prompt_ids");
    int len = (int)json_array_size(ids);
    int32_t *pr = malloc(sizeof(int32_t) * len);
    for (int k = 0; k < len; k++) pr[k] = (int32_t)json_integer_value(json_array_get(ids, k));
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    int64_t off[3] = {0, len, 2 * len};
    int32_t *tok = malloc(sizeof(int32_t) * 2 * len);
    memcpy(tok, pr, sizeof(int32_t) * len);
    memcpy(tok + len, pr, sizeof(int32_t) * len);
    float rep[2] = {1.0f, 1.5f};
    ps.n = 2;
    ps.n_tokens = 2 * len;
    ps.tokens = tok;
    ps.offsets = off;
    ps.repetition_penalty = rep;
    const char *in2 = tmp("rep.h5"), *out2 = tmp("rep-out");
    sl_err err = {{0}};
    CU_ASSERT_FATAL(h5_prompts_write(in2, &ps, &err) == 0);
    CU_ASSERT_FATAL(sluice("run --model %s --input %s --output %s --max-new-tokens 48 --ignore-eos",
                           model_dir(), in2, out2) == 0);
    read_completions(out2, &cs);
    json_t *want1 = json_object_get(json_array_get(cases, 1), "greedy_ids");
    int same0 = 1, same1 = 1;
    for (int k = 0; k < 48; k++) {
        same0 &= cs.tokens[cs.offsets[0] + k] == (int32_t)json_integer_value(json_array_get(want1, k));
        same1 &= cs.tokens[cs.offsets[1] + k] == (int32_t)json_integer_value(json_array_get(want1, k));
    }
    CU_ASSERT(same0);  // no penalty: HF's greedy continuation
    CU_ASSERT(!same1); // penalised: a different continuation
    h5_completions_free(&cs);
    free(pr);
    free(tok);
    json_decref(g);
}

// ----------------------------------------------------------------------------
// in-flight batching changes nothing

#define NB 24

static void batching_prompts(const char *path, int sampled) {
    uint64_t rng = 4242;
    int32_t *pr[NB], max_new[NB];
    int lens[NB];
    float temp[NB], top_p[NB];
    int64_t seed[NB];
    for (int i = 0; i < NB; i++) {
        lens[i] = 1 + (int)(tu_rand_u64(&rng) % 150);
        pr[i] = malloc(sizeof(int32_t) * lens[i]);
        for (int k = 0; k < lens[i]; k++) pr[i][k] = 1 + (int32_t)(tu_rand_u64(&rng) % 8000);
        max_new[i] = 1 + (int32_t)(tu_rand_u64(&rng) % 40);
        temp[i] = 0.5f + (float)(i % 4) * 0.25f;
        top_p[i] = i % 3 ? 0.9f : 1.0f;
        seed[i] = 1000 + i;
    }
    write_prompts(path, NB, pr, lens, max_new, sampled ? temp : NULL, sampled ? top_p : NULL,
                  sampled ? seed : NULL);
    for (int i = 0; i < NB; i++) free(pr[i]);
}

static void check_batching(int sampled) {
    const char *in = tmp(sampled ? "batch-sampled.h5" : "batch-greedy.h5");
    batching_prompts(in, sampled);
    const char *configs[] = {
        "--max-batch 1",
        "--max-batch 64 --kv-block-size 16 --kv-blocks 14 --max-num-tokens 37 --sched preempt",
        "--max-batch 7 --kv-block-size 8 --kv-blocks 40 --max-num-tokens 50 --sched reserve",
        "--max-batch 64 --kv-block-size 32",
    };
    CompletionSet ref;
    memset(&ref, 0, sizeof ref);
    for (int c = 0; c < 4; c++) {
        char out[512];
        snprintf(out, sizeof out, "%s/batch-%d-%d", tu_tmpdir(), sampled, c);
        int rc = sluice("run --model %s --input %s --output %s --ignore-eos --progress 0 %s",
                        model_dir(), in, out, configs[c]);
        if (rc) fprintf(stderr, "%s\n", g_out);
        CU_ASSERT_FATAL(rc == 0);
        CompletionSet cs;
        read_completions(out, &cs);
        CU_ASSERT_EQUAL(cs.n, NB);
        if (c == 0) {
            ref = cs;
            continue;
        }
        if (!same_completions(&ref, &cs)) fprintf(stderr, "  config '%s' differs\n", configs[c]);
        CU_ASSERT(same_completions(&ref, &cs));
        if (c == 1) { // the tight pool really forced preemption
            char rp[1024];
            snprintf(rp, sizeof rp, "%s/report.json", out);
            json_error_t je;
            json_t *r = json_load_file(rp, 0, &je);
            CU_ASSERT_FATAL(r != NULL);
            CU_ASSERT(json_integer_value(json_object_get(r, "preemptions")) > 0);
            json_decref(r);
        }
        h5_completions_free(&cs);
    }
    h5_completions_free(&ref);
}

static void test_batching_greedy(void) { check_batching(0); }
static void test_batching_sampled(void) { check_batching(1); }

// ----------------------------------------------------------------------------
// bad input

// Writes a prompts file with the raw HDF5 API, so it can be wrong in any way.
static void raw_prompts(const char *path, const int32_t *tok, hsize_t nt, const int64_t *off,
                        hsize_t no) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    hid_t s1 = H5Screate_simple(1, &nt, NULL);
    hid_t d1 = H5Dcreate2(f, "prompt_tokens", H5T_NATIVE_INT32, s1, H5P_DEFAULT, H5P_DEFAULT,
                          H5P_DEFAULT);
    if (nt) H5Dwrite(d1, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok);
    hid_t s2 = H5Screate_simple(1, &no, NULL);
    hid_t d2 = H5Dcreate2(f, "prompt_offsets", H5T_NATIVE_INT64, s2, H5P_DEFAULT, H5P_DEFAULT,
                          H5P_DEFAULT);
    H5Dwrite(d2, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
    H5Dclose(d2);
    H5Sclose(s2);
    H5Dclose(d1);
    H5Sclose(s1);
    H5Fclose(f);
}

// Copies the demo model into a fresh directory so a test can break it.
static const char *model_copy(const char *name) {
    const char *d = tmp(name);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && chmod -R u+w '%s'", model_dir(), d, d);
    CU_ASSERT_FATAL(system(cmd) == 0);
    return d;
}

typedef struct {
    const char *what;
    int want_rc;
    const char *want_msg; // substring of the output
} Expect;

static void expect(const Expect *e, int rc, const char *outdir) {
    int ok = rc == e->want_rc && strstr(g_out, e->want_msg) != NULL;
    if (!ok)
        fprintf(stderr, "  [%s] exit %d (want %d), output:\n%s  (wanted '%s')\n", e->what, rc,
                e->want_rc, g_out, e->want_msg);
    CU_ASSERT(ok);
    if (outdir) CU_ASSERT(!exists(outdir, "completions.h5"));
    if (rc != 0) CU_ASSERT(strstr(g_out, "Segmentation") == NULL && strstr(g_out, "Abort") == NULL);
}

static void test_bad_flags(void) {
    const char *in = tmp("flags.h5"), *out = tmp("flags-out");
    int32_t t[3] = {5, 6, 7};
    int64_t o[2] = {0, 3};
    raw_prompts(in, t, 3, o, 2);
    struct { const char *args; Expect e; } cases[] = {
        {"run --input X --output Y", {"missing --model", 2, "--model, --input and --output are required"}},
        {"run --model M --input X --output Y --max-batch 0", {"max-batch 0", 2, "--max-batch"}},
        {"run --model M --input X --output Y --max-batch lots", {"max-batch text", 2, "not an integer"}},
        {"run --model M --input X --output Y --kv-block-size 24", {"block not pow2", 2, "power of two"}},
        {"run --model M --input X --output Y --temperature nan", {"temp nan", 2, "--temperature"}},
        {"run --model M --input X --output Y --top-p 1.5", {"top-p", 2, "--top-p"}},
        {"run --model M --input X --output Y --sched greedy", {"sched", 2, "--sched"}},
        {"run --model M --input X --output Y --frobnicate", {"unknown flag", 2, "--frobnicate"}},
        {"run --model M --input X --output Y extra", {"extra arg", 2, "unexpected argument"}},
        {"frobnicate", {"unknown command", 2, "unknown command 'frobnicate'"}},
        {"run --help", {"help", 0, "--max-new-tokens"}},
        {"--help", {"top help", 0, "run"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = sluice("%s", cases[i].args);
        expect(&cases[i].e, rc, NULL);
    }
    CU_ASSERT(!exists(tu_tmpdir(), "Y"));
    (void)out;
}

static void test_bad_model(void) {
    const char *in = tmp("m.h5");
    int32_t t[3] = {5, 6, 7};
    int64_t o[2] = {0, 3};
    raw_prompts(in, t, 3, o, 2);
    char cmd[2048];

    const char *out = tmp("m-out0");
    int rc = sluice("run --model /nonexistent/dir --input %s --output %s", in, out);
    Expect e0 = {"missing model dir", 1, "/nonexistent/dir"};
    expect(&e0, rc, out);

    // a truncated shard
    const char *d1 = model_copy("m-trunc");
    snprintf(cmd, sizeof cmd, "truncate -s 5000000 '%s/model-00002-of-00003.safetensors'", d1);
    CU_ASSERT_FATAL(system(cmd) == 0);
    out = tmp("m-out1");
    rc = sluice("run --model %s --input %s --output %s", d1, in, out);
    Expect e1 = {"truncated shard", 1, "model-00002-of-00003.safetensors"};
    expect(&e1, rc, out);

    // a missing shard
    const char *d2 = model_copy("m-noshard");
    snprintf(cmd, sizeof cmd, "rm '%s/model-00003-of-00003.safetensors'", d2);
    CU_ASSERT_FATAL(system(cmd) == 0);
    out = tmp("m-out2");
    rc = sluice("run --model %s --input %s --output %s", d2, in, out);
    Expect e2 = {"missing shard", 1, "model-00003-of-00003.safetensors"};
    expect(&e2, rc, out);

    // an unsupported architecture
    const char *d3 = model_copy("m-arch");
    snprintf(cmd, sizeof cmd, "sed -i 's/LlamaForCausalLM/GPTBigCodeForCausalLM/' '%s/config.json'", d3);
    CU_ASSERT_FATAL(system(cmd) == 0);
    out = tmp("m-out3");
    rc = sluice("run --model %s --input %s --output %s", d3, in, out);
    Expect e3 = {"unsupported arch", 1, "GPTBigCodeForCausalLM"};
    expect(&e3, rc, out);

    // config shape that disagrees with the weights
    const char *d4 = model_copy("m-shape");
    snprintf(cmd, sizeof cmd, "sed -i 's/\"intermediate_size\": 1024/\"intermediate_size\": 1000/' '%s/config.json'", d4);
    CU_ASSERT_FATAL(system(cmd) == 0);
    out = tmp("m-out4");
    rc = sluice("run --model %s --input %s --output %s", d4, in, out);
    Expect e4 = {"wrong shape", 1, "mlp.gate_proj.weight"};
    expect(&e4, rc, out);

    // a missing config.json
    const char *d5 = model_copy("m-noconfig");
    snprintf(cmd, sizeof cmd, "rm '%s/config.json'", d5);
    CU_ASSERT_FATAL(system(cmd) == 0);
    out = tmp("m-out5");
    rc = sluice("run --model %s --input %s --output %s", d5, in, out);
    Expect e5 = {"no config", 1, "config.json"};
    expect(&e5, rc, out);
}

static void test_bad_prompts(void) {
    const char *out;
    int rc;
    // missing file
    out = tmp("p-out0");
    rc = sluice("run --model %s --input /nonexistent/p.h5 --output %s", model_dir(), out);
    Expect e0 = {"missing prompts", 1, "/nonexistent/p.h5"};
    expect(&e0, rc, out);
    // not HDF5
    const char *junk = tmp("junk.h5");
    tu_write_file(junk, "not hdf5 at all", 15);
    out = tmp("p-out1");
    rc = sluice("run --model %s --input %s --output %s", model_dir(), junk, out);
    Expect e1 = {"not hdf5", 1, "junk.h5"};
    expect(&e1, rc, out);
    // offsets going backwards
    int32_t t[6] = {5, 6, 7, 8, 9, 10};
    int64_t o_bad[4] = {0, 4, 2, 6};
    const char *p2 = tmp("backwards.h5");
    raw_prompts(p2, t, 6, o_bad, 4);
    out = tmp("p-out2");
    rc = sluice("run --model %s --input %s --output %s", model_dir(), p2, out);
    Expect e2 = {"offsets backwards", 1, "prompt_offsets"};
    expect(&e2, rc, out);
    // offsets past the end
    int64_t o_past[3] = {0, 3, 9};
    const char *p3 = tmp("past.h5");
    raw_prompts(p3, t, 6, o_past, 3);
    out = tmp("p-out3");
    rc = sluice("run --model %s --input %s --output %s", model_dir(), p3, out);
    Expect e3 = {"offsets past end", 1, "prompt_offsets"};
    expect(&e3, rc, out);
}

// Bad requests become error rows; the good ones still complete. --strict
// turns the first bad request into a failed job with nothing written.
static void test_bad_requests(void) {
    int32_t t[] = {5, 6, 7, 9000, 8, 9, 10, 11};
    int64_t o[] = {0, 3, 5, 5, 8}; // [5 6 7] [9000 8] [] [9 10 11]
    const char *p = tmp("reqs.h5");
    raw_prompts(p, t, 8, o, 5);
    const char *out = tmp("r-out");
    int rc = sluice("run --model %s --input %s --output %s --max-new-tokens 4 --ignore-eos",
                    model_dir(), p, out);
    CU_ASSERT_FATAL(rc == 0);
    CompletionSet cs;
    read_completions(out, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 4);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_LENGTH);
    CU_ASSERT_EQUAL(cs.offsets[1] - cs.offsets[0], 4);
    CU_ASSERT_EQUAL(cs.finish[1], FINISH_ERROR);
    CU_ASSERT(strstr(cs.error[1], "9000") != NULL && strstr(cs.error[1], "vocabulary") != NULL);
    CU_ASSERT_EQUAL(cs.finish[2], FINISH_ERROR);
    CU_ASSERT(strstr(cs.error[2], "empty prompt") != NULL);
    CU_ASSERT_EQUAL(cs.finish[3], FINISH_LENGTH);
    h5_completions_free(&cs);

    const char *out2 = tmp("r-out-strict");
    rc = sluice("run --model %s --input %s --output %s --strict", model_dir(), p, out2);
    Expect e = {"strict", 1, "request 1"};
    expect(&e, rc, out2);
    CU_ASSERT(!exists(out2, "part-00000-000000.h5"));

    // a prompt longer than the context
    int32_t *longp = malloc(sizeof(int32_t) * 1100);
    for (int i = 0; i < 1100; i++) longp[i] = 1 + i % 100;
    int64_t ol[2] = {0, 1100};
    const char *pl = tmp("long.h5");
    raw_prompts(pl, longp, 1100, ol, 2);
    free(longp);
    const char *out3 = tmp("r-out-long");
    rc = sluice("run --model %s --input %s --output %s", model_dir(), pl, out3);
    CU_ASSERT_FATAL(rc == 0);
    read_completions(out3, &cs);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_ERROR);
    CU_ASSERT(strstr(cs.error[0], "context") != NULL);
    h5_completions_free(&cs);

    // output already there: refused without --overwrite, replaced with it
    rc = sluice("run --model %s --input %s --output %s --max-new-tokens 2", model_dir(), p, out);
    Expect e2 = {"existing output", 1, "--overwrite"};
    expect(&e2, rc, NULL);
    rc = sluice("run --model %s --input %s --output %s --max-new-tokens 2 --overwrite", model_dir(),
                p, out);
    CU_ASSERT(rc == 0);
}

// export writes one JSON line per prompt in order.
static void test_export(void) {
    int32_t t[] = {5, 6, 7, 9, 10};
    int64_t o[] = {0, 3, 5};
    const char *p = tmp("exp.h5"), *out = tmp("exp-out"), *jl = tmp("exp.jsonl");
    raw_prompts(p, t, 5, o, 3);
    CU_ASSERT_FATAL(sluice("run --model %s --input %s --output %s --max-new-tokens 3 --ignore-eos",
                           model_dir(), p, out) == 0);
    CU_ASSERT_FATAL(sluice("export %s --output %s", out, jl) == 0);
    FILE *f = fopen(jl, "r");
    CU_ASSERT_FATAL(f != NULL);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        CU_ASSERT_FATAL(j != NULL);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "prompt_index")), n);
        CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "completion_ids")), 3);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "finish_reason")), "length");
        json_decref(j);
        n++;
    }
    fclose(f);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT(sluice("export %s/nothing-here", tu_tmpdir()) == 1);
}

// `sluice bench` on the CPU: the JSON report counts the timed requests only;
// the warm-up defaults to one step's worth of requests (ceil(max-num-tokens
// / isl), at most --requests) and --warmup 0 turns it off.
static void test_bench_warmup(void) {
    const char *js = tmp("bench.json");
    struct {
        const char *flags;
        long warm;
    } cases[] = {{"--max-num-tokens 64", 3}, {"--max-num-tokens 4096", 5}, {"--warmup 0", 0},
                 {"--warmup 2", 2}};
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_FATAL(sluice("bench --backend cpu --model %s --isl 30 --osl 3 --requests 5 %s "
                               "--output %s",
                               model_dir(), cases[i].flags, js) == 0);
        CU_ASSERT(strstr(g_out, "warm-up of") != NULL);
        json_error_t je;
        json_t *j = json_load_file(js, 0, &je);
        CU_ASSERT_FATAL(j != NULL);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "warmup_requests")), cases[i].warm);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "requests")), 5);
        CU_ASSERT(json_real_value(json_object_get(j, "output_tokens_per_s")) > 0);
        json_decref(j);
    }
    CU_ASSERT(sluice("bench --backend cpu --model %s --isl 30 --osl 3 --requests 5 --warmup -1",
                     model_dir()) == 2);
    CU_ASSERT(strstr(g_out, "--warmup") != NULL);
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    static const tu_test golden[] = {{"golden_greedy_and_eos", test_golden_greedy},
                                     {"stop_ids_penalty_logprobs", test_stop_ids_and_per_request_penalty},
                                     {NULL, NULL}};
    static const tu_test batching[] = {{"greedy_identical_across_batching", test_batching_greedy},
                                       {"seeded_sampling_identical_across_batching", test_batching_sampled},
                                       {NULL, NULL}};
    static const tu_test bad[] = {{"bad_flags", test_bad_flags},
                                  {"bad_model_dirs", test_bad_model},
                                  {"bad_prompt_files", test_bad_prompts},
                                  {"bad_requests_and_strict", test_bad_requests},
                                  {"export_jsonl", test_export},
                                  {"bench_warmup", test_bench_warmup},
                                  {NULL, NULL}};
    tu_suite("e2e_golden", golden);
    tu_suite("e2e_batching", batching);
    tu_suite("e2e_bad_input", bad);
    return tu_main();
}
