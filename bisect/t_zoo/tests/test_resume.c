// test_resume.c: nothing lost. `sluice run` jobs on the CPU backend are
// killed at random moments (SIGTERM, SIGUSR1, SIGKILL; one rank and two MPI
// ranks) and resumed by rerunning the same command until they complete; the
// merged output must equal an uninterrupted run's exactly: every prompt once,
// same tokens, same finish reasons. Also: a resumed job refuses a different
// configuration unless --force, and a signalled job exits with code 3.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "h5io.h"
#include "testutil.h"

static char g_out[1 << 16];

static const char *bin(void) { return getenv("SLUICE_BIN") ? getenv("SLUICE_BIN") : "build/sluice"; }

static const char *tmp(const char *name) {
    static char slots[16][512];
    static int k;
    char *p = slots[k++ & 15];
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

// A workload of mixed lengths that takes a few seconds on the demo model.
static void make_prompts(const char *path, int n) {
    uint64_t rng = 99;
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    ps.n = n;
    ps.offsets = calloc(n + 1, sizeof(int64_t));
    ps.max_new_tokens = calloc(n, sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        ps.offsets[i + 1] = ps.offsets[i] + 1 + (int64_t)(tu_rand_u64(&rng) % 40);
        ps.max_new_tokens[i] = 1 + (int32_t)(tu_rand_u64(&rng) % 48);
    }
    ps.n_tokens = ps.offsets[n];
    ps.tokens = calloc(ps.n_tokens, sizeof(int32_t));
    for (int64_t k = 0; k < ps.n_tokens; k++) ps.tokens[k] = 1 + (int32_t)(tu_rand_u64(&rng) % 8000);
    sl_err err = {{0}};
    CU_ASSERT_FATAL(h5_prompts_write(path, &ps, &err) == 0);
    free(ps.offsets);
    free(ps.tokens);
    free(ps.max_new_tokens);
}

static char *run_args(const char *in, const char *out, const char *extra) {
    static char a[4096];
    snprintf(a, sizeof a,
             "run --model %s --input %s --output %s --ignore-eos --max-batch 8 --max-num-tokens 64 "
             "--checkpoint 0.2 --progress 0 --backend cpu %s",
             tu_path("tests/models/tiny-code-llama"), in, out, extra);
    return a;
}

// Starts `cmd` with /bin/sh in its own process group; returns the pid.
static pid_t spawn(const char *cmd) {
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open("/dev/null", 1);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

static int wait_status(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void read_cs(const char *outdir, CompletionSet *cs) {
    char p[1024];
    snprintf(p, sizeof p, "%s/completions.h5", outdir);
    sl_err err = {{0}};
    int rc = h5_completions_read(cs, p, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
}

static int same(const CompletionSet *a, const CompletionSet *b) {
    if (a->n != b->n) return 0;
    for (int64_t i = 0; i < a->n; i++)
        if (a->prompt_index[i] != b->prompt_index[i] || a->finish[i] != b->finish[i] ||
            a->offsets[i + 1] != b->offsets[i + 1])
            return 0;
    return memcmp(a->tokens, b->tokens, sizeof(int32_t) * a->offsets[a->n]) == 0;
}

static void reference(const char *in, const char *out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s", bin(), run_args(in, out, ""));
    int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
    if (rc) fprintf(stderr, "%s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
}

// Kills runs of `cmd_prefix` at random moments, then resumes to the end.
//   how: 0 SIGTERM to the process group, 1 SIGKILL, 2 SIGUSR1,
//   mpi: 1 to run under mpirun -np 2 (SIGKILL then goes to one rank).
static void kill_and_resume(const CompletionSet *ref, const char *in, int trials, int mpi,
                            uint64_t seed) {
    uint64_t rng = seed;
    int interrupted = 0;
    for (int t = 0; t < trials; t++) {
        char out[600], cmd[8192];
        snprintf(out, sizeof out, "%s/kill-%d-%d", tu_tmpdir(), mpi, t);
        int how = (int)(tu_rand_u64(&rng) % 3);
        const char *launch = mpi ? "exec mpirun --allow-run-as-root --oversubscribe -np 2 " : "exec ";
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s%s %s", launch, bin(),
                 run_args(in, out, mpi ? "--tp 1 --grace 0.5" : "--grace 0.5"));
        // one or two interruptions, then a run to completion
        int kills = 1 + (int)(tu_rand_u64(&rng) % 2);
        for (int k = 0; k < kills; k++) {
            pid_t pid = spawn(cmd);
            double wait_s = 0.3 + 2.5 * tu_rand_uniform(&rng);
            struct timespec ts = {(time_t)wait_s, (long)((wait_s - (int)wait_s) * 1e9)};
            nanosleep(&ts, NULL);
            if (how == 1 && mpi) {
                // a crashed rank: kill -9 one of mpirun's children
                char pk[128], o[256];
                snprintf(pk, sizeof pk, "pkill -KILL -n -P %d", (int)pid);
                tu_run_cmd(pk, o, sizeof o);
            } else {
                kill(-pid, how == 1 ? SIGKILL : how == 2 ? SIGUSR1 : SIGTERM);
            }
            int rc = wait_status(pid);
            if (rc == 3) interrupted++;
            // no rank of that run may outlive it (it would race the resumed run)
            char pg[800], o[256];
            // ("[s]luice" so that pgrep does not find this very shell)
            snprintf(pg, sizeof pg, "for i in $(seq 100); do pgrep -f '[s]luice run .*%s ' "
                     ">/dev/null || exit 0; sleep 0.1; done; exit 1", out);
            CU_ASSERT(tu_run_cmd(pg, o, sizeof o) == 0);
            // 0: it finished first; 3: stopped cleanly; others: killed
            if (how == 2 && !mpi) CU_ASSERT(rc == 0 || rc == 3);
        }
        int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
        if (rc) fprintf(stderr, "  trial %d resume failed (%d):\n%s\n", t, rc, g_out);
        CU_ASSERT_FATAL(rc == 0);
        CompletionSet cs;
        read_cs(out, &cs);
        int ok = same(ref, &cs);
        if (!ok) fprintf(stderr, "  trial %d (kill %d, mpi %d): output differs\n", t, how, mpi);
        CU_ASSERT(ok);
        h5_completions_free(&cs);
        char rm[700];
        snprintf(rm, sizeof rm, "rm -rf '%s'", out);
        if (system(rm) != 0) fprintf(stderr, "  could not remove %s\n", out);
    }
    printf("\n    %d trials, %d clean stops (exit 3)\n", trials, interrupted);
}

static void test_single_rank_kills(void) {
    const char *in = tmp("resume.h5"), *ref_out = tmp("resume-ref");
    make_prompts(in, 80);
    reference(in, ref_out);
    CompletionSet ref;
    read_cs(ref_out, &ref);
    kill_and_resume(&ref, in, 16, 0, 5);
    h5_completions_free(&ref);
}

static void test_two_rank_kills(void) {
    char o[256];
    if (tu_run_cmd("command -v mpirun", o, sizeof o) != 0) {
        CU_FAIL("mpirun not found (install openmpi-bin)");
        return;
    }
    const char *in = tmp("resume2.h5"), *ref_out = tmp("resume2-ref");
    make_prompts(in, 80);
    reference(in, ref_out);
    CompletionSet ref;
    read_cs(ref_out, &ref);
    kill_and_resume(&ref, in, 6, 1, 6);
    h5_completions_free(&ref);
}

// A job record that differs (here: --max-new-tokens) is refused without
// --force; report.json says how the job ended.
static void test_refuse_different_job(void) {
    const char *in = tmp("cfg.h5"), *out = tmp("cfg-out");
    make_prompts(in, 6);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s", bin(), run_args(in, out, "--max-new-tokens 4"));
    CU_ASSERT_FATAL(tu_run_cmd(cmd, g_out, sizeof g_out) == 0);
    snprintf(cmd, sizeof cmd, "%s %s", bin(), run_args(in, out, "--max-new-tokens 5 --temperature 0.5"));
    int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT(strstr(g_out, "holds a different job") != NULL && strstr(g_out, "--force") != NULL);
    // the same job again: already complete, nothing to redo, same output
    snprintf(cmd, sizeof cmd, "%s %s", bin(), run_args(in, out, "--max-new-tokens 4"));
    CU_ASSERT_EQUAL(tu_run_cmd(cmd, g_out, sizeof g_out), 0);
    CU_ASSERT(strstr(g_out, "6 of 6 completions already written") != NULL);
    char rp[700];
    snprintf(rp, sizeof rp, "grep -q '\"status\": \"complete\"' '%s/report.json'", out);
    CU_ASSERT(system(rp) == 0);
    // a different input file is a different job too
    const char *in2 = tmp("cfg2.h5");
    make_prompts(in2, 7);
    snprintf(cmd, sizeof cmd, "%s %s", bin(), run_args(in2, out, "--max-new-tokens 4"));
    CU_ASSERT_EQUAL(tu_run_cmd(cmd, g_out, sizeof g_out), 1);
    CU_ASSERT(strstr(g_out, "input_fnv64") != NULL);
}

int main(void) {
    static const tu_test t[] = {{"refuse_different_job", test_refuse_different_job},
                                {"single_rank_random_kills", test_single_rank_kills},
                                {"two_ranks_random_kills", test_two_rank_kills},
                                {NULL, NULL}};
    tu_suite("resume", t);
    return tu_main();
}
