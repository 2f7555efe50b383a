// cli_common.c: what several subcommands share: number parsing, choosing
// the backend, and sizing the KV pool.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#ifdef SLUICE_CUDA
#include "nccl_tp.h"
#endif

// ----------------------------------------------------------------------------
// number parsing shared by the subcommands

int cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, "sluice %s: %s: '%s' is not an integer\n", cmd, flag, s);
        return -1;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "sluice %s: %s: %ld is outside [%ld, %ld]\n", cmd, flag, v, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
              double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "sluice %s: %s: '%s' is not a finite number\n", cmd, flag, s);
        return -1;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "sluice %s: %s: %g is outside [%g, %g]\n", cmd, flag, v, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

// ----------------------------------------------------------------------------
// backend and KV pool

int cli_dtype(const char *cmd, const char *dtype, const char *kv_dtype, CliDtype *out) {
    memset(out, 0, sizeof *out);
    out->name = dtype ? dtype : "auto";
    if (!dtype || !strcmp(dtype, "auto") || !strcmp(dtype, "bf16")) {
    } else if (!strcmp(dtype, "f32") || !strcmp(dtype, "fp32")) {
        out->act_f32 = 1;
        out->name = "f32";
    } else if (!strcmp(dtype, "fp8")) {
        out->weight_fp8 = 1;
    } else {
        fprintf(stderr, "sluice %s: --dtype: '%s' is not one of auto, bf16, f32, fp8\n", cmd,
                dtype);
        return -1;
    }
    if (!kv_dtype || !strcmp(kv_dtype, "auto")) {
    } else if (!strcmp(kv_dtype, "fp8")) {
        out->kv_fp8 = 1;
    } else {
        fprintf(stderr, "sluice %s: --kv-dtype: '%s' is not one of auto, fp8\n", cmd, kv_dtype);
        return -1;
    }
    return 0;
}

Backend *cli_backend_create(const char *name, int threads, int device, sl_err *err) {
    CliDtype d = {.name = "auto"};
    return cli_backend_create_dt(name, threads, device, &d, err);
}

Backend *cli_backend_create_dt(const char *name, int threads, int device, const CliDtype *d,
                               sl_err *err) {
    if (!strcmp(name, "cpu")) return backend_cpu_create(threads);
#ifdef SLUICE_CUDA
    if (!strcmp(name, "cuda") || !strcmp(name, "auto")) {
        sl_err e2 = {{0}};
        Backend *be = backend_cuda_create_ex(device, d->act_f32, &e2);
        if (be) return be;
        if (!strcmp(name, "cuda")) {
            sl_errf(err, "--backend cuda: %s", e2.msg);
            return NULL;
        }
        LOGI("no usable GPU (%s); using the CPU backend", e2.msg);
        return backend_cpu_create(threads);
    }
#else
    if (!strcmp(name, "auto")) return backend_cpu_create(threads);
    if (!strcmp(name, "cuda")) {
        sl_errf(err, "--backend cuda: this build has no CUDA backend (nvcc was not found when "
                     "it was built)");
        return NULL;
    }
#endif
    sl_errf(err, "--backend: '%s' is not one of auto, cpu, cuda", name);
    return NULL;
}

int cli_size_kv(Model *m, EngineOptions *eo, long kv_blocks, double kv_mem_gb,
                double kv_fraction, sl_err *err) {
    Backend *be = m->be;
    size_t bb = model_kv_block_bytes(m, eo->block_size);
    long full = (eo->max_seq_len + eo->block_size - 1) / eo->block_size;
    long want = full * eo->max_batch; // every sequence at full length: no point in more
    if (kv_blocks <= 0) {
        double budget;
        if (!strcmp(be->name, "cpu")) {
            budget = kv_mem_gb * (double)(1ull << 30);
        } else {
            // A share of what is free after the weights and activations, less
            // room for the per-step buffers reserve() takes after the pool.
            budget = kv_fraction * (double)be->mem_free(be) - (double)(512u << 20);
        }
        kv_blocks = budget > 0 ? (long)(budget / (double)bb) : 0;
        if (kv_blocks > want) kv_blocks = want;
    }
    if (kv_blocks < 1 || kv_blocks > (1L << 30))
        return sl_errf(err, "not enough memory for the KV cache: a block of %d tokens takes "
                            "%.1f MiB (--kv-blocks, --kv-fraction, --kv-mem-gb set the pool)",
                       eo->block_size, bb / 1048576.0);
    eo->kv_blocks = (int)kv_blocks;
    return 0;
}

// ----------------------------------------------------------------------------
// tensor parallelism

static void tp_allreduce_mpi(void *ctx, void *buf, size_t n) { comm_tp_allreduce_f32(ctx, buf, n); }

#ifdef SLUICE_CUDA
static void tp_allreduce_none(void *ctx, void *buf, size_t n) { (void)ctx, (void)buf, (void)n; }
#endif

static void tp_sync_tokens(void *ctx, int32_t *tokens, float *logprobs, int n) {
    comm_tp_bcast(ctx, tokens, sizeof(int32_t) * (size_t)n);
    comm_tp_bcast(ctx, logprobs, sizeof(float) * (size_t)n);
}

int cli_tp_attach(Comm *comm, Backend *be, ModelOptions *mo, EngineOptions *eo, void **state,
                  sl_err *err) {
    *state = NULL;
    mo->tp_rank = comm->tp_rank;
    mo->tp_size = comm->tp;
    if (comm->tp == 1) return 0;
    // every rank samples the same tokens: the group's rank 0 decides them
    eo->sync_tokens = tp_sync_tokens;
    eo->sync_ctx = comm;
    if (!strcmp(be->name, "cpu")) {
        mo->allreduce = tp_allreduce_mpi;
        mo->allreduce_ctx = comm;
        return 0;
    }
#ifdef SLUICE_CUDA
    NcclTp *t = nccl_tp_create(comm, backend_cuda_stream(be), be->act_bytes, err);
    if (!t) return -1;
    mo->allreduce = nccl_tp_allreduce;
    mo->allreduce_ctx = t;
    *state = t;
    const char *ab = getenv("SLUICE_TP_ABLATE_ALLREDUCE");
    if (ab && !strcmp(ab, "1")) { // timing experiments only (docs/PERF.md)
        LOGW("SLUICE_TP_ABLATE_ALLREDUCE=1: the all-reduces are skipped; outputs are wrong");
        mo->allreduce = tp_allreduce_none;
    }
    return 0;
#else
    return sl_errf(err, "--tp %d: no tensor parallelism on the %s backend", comm->tp, be->name);
#endif
}

void cli_tp_detach(Backend *be, void *state) {
#ifdef SLUICE_CUDA
    if (!state) return;
    if (be && be->set_graph_mode) be->set_graph_mode(be, 0);
    nccl_tp_destroy(state);
#else
    (void)state;
#endif
}

void cli_tp_agree_kv(Comm *comm, EngineOptions *eo) {
    if (comm->tp == 1) return;
    int64_t v = eo->kv_blocks;
    comm_tp_min_i64(comm, &v);
    eo->kv_blocks = (int)v;
}

// configs/arch/NAME.json next to the binary's tree, in the current directory,
// or NAME itself when it is a path.
char *cli_find_arch(const char *name) {
    struct stat st;
    if (strchr(name, '/') || strstr(name, ".json")) return sl_strdup(name);
    char buf[4096];
    const char *env = getenv("SLUICE_CONFIGS");
    if (env) {
        snprintf(buf, sizeof buf, "%s/arch/%s.json", env, name);
        if (stat(buf, &st) == 0) return sl_strdup(buf);
    }
    snprintf(buf, sizeof buf, "configs/arch/%s.json", name);
    if (stat(buf, &st) == 0) return sl_strdup(buf);
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(buf, sizeof buf, "%s/../configs/arch/%s.json", exe, name);
        if (stat(buf, &st) == 0) return sl_strdup(buf);
        snprintf(buf, sizeof buf, "%s/../share/sluice/arch/%s.json", exe, name);
        if (stat(buf, &st) == 0) return sl_strdup(buf);
    }
    return NULL;
}
