// testutil.h: shared helpers for sluice's CUnit test binaries.
//
// Each tests/test_*.c is its own binary (build/tests/test_*): it defines its
// suites and calls tu_main(). The runner exits non-zero when any assertion
// failed (CU_basic_run_tests alone returns 0 even then).
#ifndef SLUICE_TESTUTIL_H
#define SLUICE_TESTUTIL_H

#include <CUnit/Basic.h>
#include <stdint.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} tu_test;

// Registers one suite per call: tests is NULL-terminated ({NULL, NULL}).
void tu_suite(const char *name, const tu_test *tests);

// Runs every registered suite; returns the process exit code.
int tu_main(void);

// A fresh directory under $TMPDIR (or /tmp) that the caller may fill; removed
// at exit unless SLUICE_KEEP_TMP=1. The returned string lives until exit.
const char *tu_tmpdir(void);

// Path of a repo-relative file (tests run from the repo root; SLUICE_ROOT
// overrides). Returned buffer is static per call slot (8 slots rotate).
const char *tu_path(const char *rel);

// Writes len bytes to path; returns 0 on success.
int tu_write_file(const char *path, const void *data, size_t len);

// Deterministic random numbers (splitmix64) for test data.
uint64_t tu_rand_u64(uint64_t *state);
float tu_rand_uniform(uint64_t *state); // [0, 1)
float tu_rand_normal(uint64_t *state);

// Compares got to ref element by element with |got-ref| <= atol + rtol*|ref|;
// prints the first few mismatches with their index. Returns mismatch count.
long tu_compare_f32(const char *what, const float *got, const float *ref, long n,
                    float atol, float rtol);

// Runs a shell command, captures combined stdout+stderr (up to cap-1 bytes) into
// out and returns the exit status (or -1 on failure to run).
int tu_run_cmd(const char *cmd, char *out, size_t cap);

#endif
