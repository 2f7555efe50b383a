// test_mpi.c: real MPI ranks (mpirun) on the CPU backend: tensor parallelism
// (all-reduces over MPI) and data-parallel replicas give exactly the tokens
// of one rank, and logprobs within fp32 tolerance:
//   - the demo model at T=2 (one replica) and D=2 (two replicas of one rank);
//   - a random GQA fixture (8 query heads, 2 kv heads, llama3 rope) at T=4
//     (kv heads replicated) and D=2 x T=2, checked against HF's tokens too;
//   - a --tp the job or the model cannot take fails fast with a clear error.
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h5io.h"
#include "testutil.h"

static char g_out[1 << 16];

static const char *tmp(const char *name) {
    static char slots[16][512];
    static int k;
    char *p = slots[k++ & 15];
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

// Runs the binary under `np` ranks (np 0: no launcher); exit status returned.
static int run(int np, const char *args) {
    const char *bin = getenv("SLUICE_BIN") ? getenv("SLUICE_BIN") : "build/sluice";
    char cmd[8192];
    if (np > 0)
        snprintf(cmd, sizeof cmd,
                 "OMP_NUM_THREADS=1 timeout 120 mpirun --allow-run-as-root --oversubscribe "
                 "-np %d %s run %s",
                 np, bin, args);
    else
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 timeout 120 %s run %s", bin, args);
    int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
    if (getenv("SLUICE_TEST_VERBOSE")) fprintf(stderr, "$ %s\n%s[exit %d]\n", cmd, g_out, rc);
    return rc;
}

static int have_mpirun(void) {
    char out[256];
    return tu_run_cmd("command -v mpirun", out, sizeof out) == 0;
}

// Golden prompts of a fixture directory (golden.json or golden_greedy.json).
static json_t *fixture(const char *dir, const char *file, const char *prompts_path) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", tu_path(dir), file);
    json_error_t je;
    json_t *g = json_load_file(p, 0, &je);
    CU_ASSERT_FATAL(g != NULL);
    json_t *cases = json_object_get(g, "cases");
    int n = (int)json_array_size(cases);
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    ps.n = n;
    ps.offsets = calloc(n + 1, sizeof(int64_t));
    ps.tokens = calloc(4096, sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        json_t *ids = json_object_get(json_array_get(cases, i), "prompt_ids");
        ps.offsets[i + 1] = ps.offsets[i] + (int64_t)json_array_size(ids);
        for (size_t k = 0; k < json_array_size(ids); k++)
            ps.tokens[ps.offsets[i] + k] = (int32_t)json_integer_value(json_array_get(ids, k));
    }
    ps.n_tokens = ps.offsets[n];
    sl_err err = {{0}};
    CU_ASSERT_FATAL(h5_prompts_write(prompts_path, &ps, &err) == 0);
    free(ps.offsets);
    free(ps.tokens);
    return g;
}

static void read_cs(const char *outdir, CompletionSet *cs) {
    char p[1024];
    snprintf(p, sizeof p, "%s/completions.h5", outdir);
    sl_err err = {{0}};
    int rc = h5_completions_read(cs, p, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
}

// Same tokens and finish reasons; logprobs within tol.
static int same(const CompletionSet *a, const CompletionSet *b, float tol) {
    if (a->n != b->n || a->offsets[a->n] != b->offsets[b->n]) return 0;
    for (int64_t i = 0; i < a->n; i++)
        if (a->offsets[i + 1] != b->offsets[i + 1] || a->finish[i] != b->finish[i]) return 0;
    if (memcmp(a->tokens, b->tokens, sizeof(int32_t) * a->offsets[a->n])) return 0;
    if (a->logprobs && b->logprobs)
        return tu_compare_f32("logprobs", b->logprobs, a->logprobs, (long)a->offsets[a->n], tol,
                              tol) == 0;
    return 1;
}

static void check_layouts(const char *dir, const char *golden_file, int n_new, const int *nps,
                          const int *tps, int n_layouts) {
    if (!have_mpirun()) {
        CU_FAIL("mpirun not found (install openmpi-bin)");
        return;
    }
    char name[64];
    snprintf(name, sizeof name, "mpi-%d.h5", n_new);
    const char *in = tmp(name);
    json_t *g = fixture(dir, golden_file, in);
    char args[4096];
    const char *ref_out = tmp("mpi-ref");
    snprintf(args, sizeof args,
             "--model %s --input %s --output %s --max-new-tokens %d --ignore-eos --logprobs "
             "--backend cpu --overwrite --progress 0",
             tu_path(dir), in, ref_out, n_new);
    int rc = run(0, args);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    CompletionSet ref;
    read_cs(ref_out, &ref);
    // one rank equals HF's greedy tokens
    json_t *cases = json_object_get(g, "cases");
    for (int64_t i = 0; i < ref.n; i++) {
        json_t *want = json_object_get(json_array_get(cases, i), "greedy_ids");
        for (int k = 0; k < n_new; k++)
            CU_ASSERT_EQUAL(ref.tokens[ref.offsets[i] + k],
                            (int32_t)json_integer_value(json_array_get(want, k)));
    }
    for (int l = 0; l < n_layouts; l++) {
        char out[600];
        snprintf(out, sizeof out, "%s/mpi-np%d-tp%d-%d", tu_tmpdir(), nps[l], tps[l], n_new);
        snprintf(args, sizeof args,
                 "--model %s --input %s --output %s --max-new-tokens %d --ignore-eos --logprobs "
                 "--backend cpu --tp %d --progress 0",
                 tu_path(dir), in, out, n_new, tps[l]);
        rc = run(nps[l], args);
        if (rc) fprintf(stderr, "  -np %d --tp %d failed:\n%s\n", nps[l], tps[l], g_out);
        CU_ASSERT_FATAL(rc == 0);
        CompletionSet cs;
        read_cs(out, &cs);
        int ok = same(&ref, &cs, 1e-3f);
        if (!ok) fprintf(stderr, "  -np %d --tp %d differs from one rank\n", nps[l], tps[l]);
        CU_ASSERT(ok);
        h5_completions_free(&cs);
    }
    h5_completions_free(&ref);
    json_decref(g);
}

static void test_demo_tp2_dp2(void) {
    int nps[] = {2, 2}, tps[] = {2, 1};
    check_layouts("tests/models/tiny-code-llama", "golden_greedy.json", 48, nps, tps, 2);
}

static void test_gqa_tp4_and_dp2xtp2(void) {
    int nps[] = {4, 4}, tps[] = {4, 2};
    check_layouts("tests/golden/llama-gqa4-llama3rope-f16", "golden.json", 16, nps, tps, 2);
}

static void test_bad_tp(void) {
    if (!have_mpirun()) {
        CU_FAIL("mpirun not found");
        return;
    }
    const char *in = tmp("badtp.h5");
    json_t *g = fixture("tests/models/tiny-code-llama", "golden_greedy.json", in);
    json_decref(g);
    char args[2048];
    // 2 ranks cannot form groups of 4
    snprintf(args, sizeof args, "--model %s --input %s --output %s --backend cpu --tp 4",
             tu_path("tests/models/tiny-code-llama"), in, tmp("badtp-out1"));
    int rc = run(2, args);
    CU_ASSERT(rc != 0 && rc != 124);
    CU_ASSERT(strstr(g_out, "--tp 4 does not divide the 2 ranks") != NULL);
    // the demo model's 6 query heads cannot be split 4 ways: every rank stops
    snprintf(args, sizeof args, "--model %s --input %s --output %s --backend cpu --tp 4",
             tu_path("tests/models/tiny-code-llama"), in, tmp("badtp-out2"));
    rc = run(4, args);
    CU_ASSERT(rc != 0 && rc != 124); // 124: timeout, i.e. a hang
    CU_ASSERT(strstr(g_out, "does not divide the model's heads") != NULL);
}

int main(void) {
    static const tu_test t[] = {{"demo_tp2_and_dp2_equal_one_rank", test_demo_tp2_dp2},
                                {"gqa_tp4_and_dp2xtp2_equal_one_rank", test_gqa_tp4_and_dp2xtp2},
                                {"bad_tp_fails_fast", test_bad_tp},
                                {NULL, NULL}};
    tu_suite("mpi_cpu", t);
    return tu_main();
}
