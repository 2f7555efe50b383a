// testutil.c: see testutil.h.
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[512];

static void tu_cleanup(void) {
    if (g_tmp[0] && !getenv("SLUICE_KEEP_TMP")) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
        if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmp);
    }
}

const char *tu_tmpdir(void) {
    if (!g_tmp[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmp, sizeof g_tmp, "%s/sluice-test-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(g_tmp)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(tu_cleanup);
    }
    return g_tmp;
}

const char *tu_path(const char *rel) {
    static char slots[8][1024];
    static int k;
    char *p = slots[k++ & 7];
    const char *root = getenv("SLUICE_ROOT");
    snprintf(p, 1024, "%s/%s", root ? root : ".", rel);
    return p;
}

int tu_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

uint64_t tu_rand_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float tu_rand_uniform(uint64_t *s) { return (tu_rand_u64(s) >> 40) * (1.0f / 16777216.0f); }

float tu_rand_normal(uint64_t *s) {
    float u1 = tu_rand_uniform(s), u2 = tu_rand_uniform(s);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

long tu_compare_f32(const char *what, const float *got, const float *ref, long n,
                    float atol, float rtol) {
    long bad = 0;
    for (long i = 0; i < n; i++) {
        float d = fabsf(got[i] - ref[i]);
        if (!(d <= atol + rtol * fabsf(ref[i]))) { // NaN counts as a mismatch
            if (bad < 5)
                fprintf(stderr, "  %s[%ld]: got %.6g want %.6g (diff %.3g)\n", what, i,
                        got[i], ref[i], d);
            bad++;
        }
    }
    if (bad) fprintf(stderr, "  %s: %ld of %ld mismatched\n", what, bad, n);
    return bad;
}

int tu_run_cmd(const char *cmd, char *out, size_t cap) {
    char full[8192];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = 0;
    if (cap) out[0] = 0;
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, p)) > 0) {
        if (cap && n + 1 < cap) {
            size_t take = r < cap - 1 - n ? r : cap - 1 - n;
            memcpy(out + n, buf, take);
            n += take;
            out[n] = 0;
        }
    }
    int st = pclose(p);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// ----------------------------------------------------------------------------
// runner

#define TU_MAX_SUITES 64
static struct { const char *name; const tu_test *tests; } g_suites[TU_MAX_SUITES];
static int g_nsuites;

void tu_suite(const char *name, const tu_test *tests) {
    if (g_nsuites < TU_MAX_SUITES) {
        g_suites[g_nsuites].name = name;
        g_suites[g_nsuites].tests = tests;
        g_nsuites++;
    }
}

int tu_main(void) {
    // SLUICE_TEST_ONLY=text: only the tests whose names contain it (e.g. to
    // profile one benchmark); a filter that matches nothing fails the run
    const char *only = getenv("SLUICE_TEST_ONLY");
    if (only && !*only) only = NULL;
    if (CU_initialize_registry() != CUE_SUCCESS) return 2;
    for (int i = 0; i < g_nsuites; i++) {
        CU_pSuite s = CU_add_suite(g_suites[i].name, NULL, NULL);
        if (!s) return 2;
        for (const tu_test *t = g_suites[i].tests; t->name; t++)
            if (!only || strstr(t->name, only))
                if (!CU_add_test(s, t->name, t->fn)) return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    unsigned run = CU_get_number_of_tests_run();
    unsigned tfail = CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    printf("%u passed, %u failed\n", run - tfail, tfail);
    return (fails != 0 || run == 0) ? 1 : 0;
}
