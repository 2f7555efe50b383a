// cli_run.c: `sluice run`: prompts.h5 + a Hugging Face model directory in,
// OUTDIR/completions.h5 + OUTDIR/report.json out.
//
// Order of work is chosen so that bad input never leaves half-written output:
// arguments, the prompts file, the model and every request are checked before
// anything is created under OUTDIR. Completions then stream into a part file
// as they finish; at the end the part files are merged into completions.h5
// (written under a temporary name and renamed) and report.json is written
// the same way.
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "engine.h"
#include "h5io.h"
#include "model.h"
#include "prompts_text.h"
#include "tokenizer.h"

static void run_usage(FILE *f) {
    fprintf(f,
        "usage: sluice run --model DIR --input PROMPTS.h5 --output OUTDIR [options]\n"
        "\n"
        "Generates a completion for every prompt in PROMPTS.h5 with the Hugging Face\n"
        "checkpoint in DIR and writes OUTDIR/completions.h5 and OUTDIR/report.json.\n"
        "\n"
        "required:\n"
        "  --model DIR            config.json + *.safetensors (+ generation_config.json)\n"
        "  --input FILE           prompts file (docs/HDF5.md)\n"
        "  --output DIR           output directory (created if missing)\n"
        "generation (defaults for requests whose file gives no value):\n"
        "  --max-new-tokens N     tokens to generate per prompt (default 128)\n"
        "  --temperature T        0 = greedy (default 0)\n"
        "  --top-k K              0 = off (default 0)\n"
        "  --top-p P              1 = off (default 1)\n"
        "  --min-p P              0 = off (default 0)\n"
        "  --repetition-penalty R 1 = off;  --presence-penalty P, --frequency-penalty F: 0 = off\n"
        "  --seed S               base seed of per-request random streams (default 0)\n"
        "  --ignore-eos           keep generating past end-of-sequence tokens\n"
        "  --stop-token-ids LIST  comma-separated ids that also end a completion\n"
        "  --logprobs             also write the chosen tokens' log probabilities\n"
        "  --top-logprobs N       and the N (1..20) most likely tokens at each position with\n"
        "                         their log probabilities (implies --logprobs)\n"
        "  --max-seq-len N        context length (default: the model's max_position_embeddings)\n"
        "batching and memory:\n"
        "  --max-batch N          sequences per step (default 256)\n"
        "  --max-num-tokens N     token rows per step; longer prompts are chunked (default 8192)\n"
        "  --kv-block-size N      tokens per KV block, a power of two (default 32)\n"
        "  --kv-blocks N          KV pool size in blocks (default: from --kv-mem-gb on the CPU)\n"
        "  --kv-mem-gb G          CPU KV pool budget in GiB when --kv-blocks is not given (default 1)\n"
        "  --kv-fraction F        GPU KV pool: this share of the memory free after the weights\n"
        "                         (default 0.90)\n"
        "  --sched POLICY         preempt (default): fill memory, preempt the newest when it runs\n"
        "                         out; reserve: admit only with worst-case blocks free\n"
        "execution:\n"
        "  --backend NAME         auto (default: the GPU when one is usable), cpu, cuda\n"
        "  --cuda-graphs on|off   replay decode steps from CUDA graphs (default on; cuda only)\n"
        "  --threads N            CPU threads (default: the node's cores shared by its ranks)\n"
        "  --dtype T              auto (default: bf16 on a GPU, f32 on the CPU), bf16, f32 (fp32\n"
        "                         activations and GEMMs on the GPU too), fp8 (FP8 E4M3 linear\n"
        "                         layers quantised at load, per-channel scales, dynamic per-token\n"
        "                         activation scales; FP8 checkpoints load as FP8 regardless)\n"
        "  --kv-dtype T           auto (the activation dtype) or fp8 (E4M3 KV cache, scales from\n"
        "                         the checkpoint's k_scale/v_scale, else 1)\n"
        "  --tp T                 tensor-parallel ranks per replica; the job's N ranks form\n"
        "                         N/T data-parallel replicas (default 1)\n"
        "  --strict               fail the job on any bad request instead of reporting it\n"
        "  --overwrite            start over: remove earlier output in OUTDIR\n"
        "  --force                resume OUTDIR although its job record (run.json) differs\n"
        "  --checkpoint SECONDS   seconds between checkpoints of finished completions (default 10)\n"
        "  --grace SECONDS        after SIGTERM/SIGINT/SIGUSR1: finish running requests for up to\n"
        "                         this long, then stop (default 30; a second signal: at once)\n"
        "\n"
        "Rerunning the same command with the same OUTDIR resumes the job: completions\n"
        "already written are kept and skipped. Exit codes: 0 done, 1 failed, 2 bad usage,\n"
        "3 stopped by a signal (rerun to resume).\n"
        "  --progress SECONDS     seconds between progress lines (default 5; 0 = none)\n"
        "  --quiet, --verbose     less / more logging\n"
        "  --help\n");
}

// ----------------------------------------------------------------------------
// OUTDIR handling

static int mkdir_p(const char *path, sl_err *err) {
    char *p = sl_strdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST) {
            sl_errf(err, "%s: cannot create directory: %s", p, strerror(errno));
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0777) && errno != EEXIST) rc = sl_errf(err, "%s: cannot create directory: %s",
                                                        p, strerror(errno));
    struct stat st;
    if (!rc && (stat(p, &st) || !S_ISDIR(st.st_mode)))
        rc = sl_errf(err, "%s: exists and is not a directory", p);
    free(p);
    return rc;
}

// Every part of OUTDIR that exists must be a directory (a mistyped path fails
// at once, not after the model has loaded).
static int check_outdir_path(const char *outdir, sl_err *err) {
    char *p = sl_strdup(outdir);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        char c = *s;
        if (c != '/' && c != 0) continue;
        *s = 0;
        struct stat stt;
        if (stat(p, &stt) == 0 && !S_ISDIR(stt.st_mode)) {
            rc = sl_errf(err, "--output %s: %s exists and is not a directory", outdir, p);
            break;
        }
        *s = c;
        if (c == 0) break;
    }
    free(p);
    return rc;
}

// Removes OUTDIR/<pattern> matches; returns how many there were (-1 on error).
static int remove_matching(const char *outdir, const char *pattern, int do_remove, sl_err *err) {
    char *pat = sl_path_join(outdir, pattern);
    glob_t g;
    int found = glob(pat, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    for (int k = 0; k < found && do_remove; k++)
        if (unlink(g.gl_pathv[k])) {
            sl_errf(err, "%s: cannot remove: %s", g.gl_pathv[k], strerror(errno));
            found = -1;
            break;
        }
    if (found) globfree(&g);
    free(pat);
    return found;
}

// FNV-1a over a whole file: ties a job record to the exact prompts it ran.
static int hash_file(const char *path, uint64_t *hash, int64_t *size, sl_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sl_errf(err, "%s: cannot open: %s", path, strerror(errno));
    uint64_t h = 1469598103934665603ull;
    int64_t n = 0;
    unsigned char buf[1 << 16];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < r; i++) h = (h ^ buf[i]) * 1099511628211ull;
        n += (int64_t)r;
    }
    fclose(f);
    *hash = h;
    *size = n;
    return 0;
}

// What makes two runs the same job: the model's config, the prompts file,
// and every setting that changes a completion (not batch sizes, backends
// or rank counts: those change only how fast it is made).
static json_t *job_record(const char *model_dir, const char *input, const EngineOptions *eo,
                          sl_err *err) {
    uint64_t hin, hcfg;
    int64_t nin, ncfg;
    char *cfg_path = sl_path_join(model_dir, "config.json");
    int rc = hash_file(input, &hin, &nin, err) || hash_file(cfg_path, &hcfg, &ncfg, err);
    free(cfg_path);
    if (rc) return NULL;
    char hi[32], hc[32];
    snprintf(hi, sizeof hi, "%016llx", (unsigned long long)hin);
    snprintf(hc, sizeof hc, "%016llx", (unsigned long long)hcfg);
    json_t *stops = json_array();
    for (int i = 0; i < eo->n_stop; i++) json_array_append_new(stops, json_integer(eo->stop_ids[i]));
    const SamplingParams *p = &eo->sampling;
    return json_pack("{s:s,s:s,s:s,s:s,s:I,s:{s:i,s:i,s:b,s:o,s:f,s:i,s:f,s:f,s:f,s:f,s:f,s:I}}",
                     "sluice_job", "v1", "model", model_dir, "model_config_fnv64", hc,
                     "input_fnv64", hi, "input_bytes", (json_int_t)nin, "generation",
                     "max_new_tokens", eo->max_new_tokens, "max_seq_len", eo->max_seq_len,
                     "ignore_eos", eo->ignore_eos, "stop_token_ids", stops, "temperature",
                     p->temperature, "top_k", p->top_k, "top_p", p->top_p, "min_p", p->min_p,
                     "repetition_penalty", p->repetition_penalty, "presence_penalty",
                     p->presence_penalty, "frequency_penalty", p->frequency_penalty, "seed",
                     (json_int_t)p->seed);
}

// The first field in which two job records differ, or NULL.
static const char *record_diff(json_t *a, json_t *b) {
    static const char *top[] = {"model_config_fnv64", "input_fnv64", "input_bytes"};
    for (int i = 0; i < 3; i++)
        if (!json_equal(json_object_get(a, top[i]), json_object_get(b, top[i]))) return top[i];
    json_t *ga = json_object_get(a, "generation"), *gb = json_object_get(b, "generation");
    const char *key;
    json_t *v;
    json_object_foreach(ga, key, v) if (!json_equal(v, json_object_get(gb, key))) return key;
    if (json_object_size(ga) != json_object_size(gb)) return "generation";
    // --dtype / --kv-dtype (absent: the defaults)
    if (!json_equal(json_object_get(a, "numerics"), json_object_get(b, "numerics")) &&
        (json_object_get(a, "numerics") || json_object_get(b, "numerics")))
        return "numerics (--dtype / --kv-dtype)";
    return NULL;
}

static int write_json_atomic(const char *outdir, const char *name, json_t *j, sl_err *err) {
    char *path = sl_path_join(outdir, name);
    size_t n = strlen(path) + 8;
    char *tmp = sl_malloc(n);
    snprintf(tmp, n, "%s.tmp", path);
    int rc = 0;
    if (json_dump_file(j, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) || rename(tmp, path)) {
        rc = sl_errf(err, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(path);
    free(tmp);
    return rc;
}

// Makes OUTDIR ready (rank 0 only). A fresh or emptied directory gets the
// job record run.json; a directory with the same job's record is resumed
// (*resuming = 1); anything else is refused unless --overwrite (start over)
// or, for a record that differs, --force (resume anyway).
static int prepare_outdir(const char *outdir, json_t *rec, int overwrite, int force,
                          int *resuming, sl_err *err) {
    *resuming = 0;
    if (mkdir_p(outdir, err)) return -1;
    const char *ours[] = {"part-*.h5", "part-*.h5.tmp", "completions.h5", "completions.h5.tmp",
                          "report.json", "run.json"};
    if (overwrite)
        for (int i = 0; i < 6; i++)
            if (remove_matching(outdir, ours[i], 1, err) < 0) return -1;
    char *run_path = sl_path_join(outdir, "run.json");
    json_error_t je;
    json_t *old = NULL;
    struct stat stt;
    if (stat(run_path, &stt) == 0) {
        old = json_load_file(run_path, 0, &je);
        if (!old) {
            sl_errf(err, "%s: unreadable job record (%s); pass --overwrite to start over",
                    run_path, je.text);
            free(run_path);
            return -1;
        }
    }
    free(run_path);
    int rc = 0;
    if (old) {
        const char *diff = record_diff(old, rec);
        if (diff && !force) {
            rc = sl_errf(err,
                         "%s holds a different job ('%s' differs from this run's); pass --force "
                         "to resume it anyway or --overwrite to start over",
                         outdir, diff);
        } else {
            if (diff) LOGW("resuming %s although '%s' differs (--force)", outdir, diff);
            *resuming = 1;
        }
        json_decref(old);
    } else {
        for (int i = 0; i < 3 && rc == 0; i++) {
            int found = remove_matching(outdir, ours[i == 1 ? 2 : i], 0, err);
            if (found < 0) rc = -1;
            else if (found)
                rc = sl_errf(err, "%s already holds output (%s) but no job record (run.json); "
                                  "pass --overwrite to replace it",
                             outdir, ours[i == 1 ? 2 : i]);
        }
    }
    // unfinished segments of an interrupted attempt are never part of the output
    if (rc == 0 && remove_matching(outdir, "part-*.h5.tmp", 1, err) < 0) rc = -1;
    if (rc == 0 && (!*resuming || force)) rc = write_json_atomic(outdir, "run.json", rec, err);
    return rc;
}

// Marks the prompts that earlier attempts completed (their finished segments).
static int load_done(const char *outdir, int64_t n_prompts, uint8_t *done, int64_t *n_done,
                     sl_err *err) {
    *n_done = 0;
    char *pat = sl_path_join(outdir, "part-*.h5");
    glob_t g;
    int found = glob(pat, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    free(pat);
    int rc = 0;
    for (int k = 0; k < found && rc == 0; k++) {
        CompletionSet cs;
        if (h5_completions_read(&cs, g.gl_pathv[k], err)) {
            rc = sl_errctx(err, "resuming");
            break;
        }
        for (int64_t i = 0; i < cs.n; i++) {
            int64_t p = cs.prompt_index[i];
            if (p < 0 || p >= n_prompts) {
                rc = sl_errf(err, "%s: prompt_index %ld is outside this input's %ld prompts",
                             g.gl_pathv[k], (long)p, (long)n_prompts);
                break;
            }
            if (!done[p]) (*n_done)++;
            done[p] = 1;
        }
        h5_completions_free(&cs);
    }
    if (found) globfree(&g);
    return rc;
}

// ----------------------------------------------------------------------------
// signals: SIGTERM, SIGINT, SIGUSR1 (Slurm's --signal) stop the job cleanly

static volatile sig_atomic_t g_signals;

static void on_signal(int sig) {
    (void)sig;
    g_signals++;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

typedef struct {
    Comm *comm;
    double grace; // seconds to let running requests finish after the first signal
    double t_first;
} StopCtx;

// The group leader decides (first signal: drain for up to `grace` seconds;
// a second signal or the end of the grace period: stop now) and tells its
// group, so all of a group's ranks stop at the same step.
static int stop_check(void *ctx) {
    StopCtx *sc = ctx;
    int v = 0;
    if (sc->comm->tp_rank == 0 && g_signals > 0) {
        double now = sl_now();
        if (sc->t_first == 0) sc->t_first = now;
        v = (g_signals > 1 || now - sc->t_first >= sc->grace) ? 2 : 1;
    }
    if (sc->comm->tp > 1) comm_tp_bcast(sc->comm, &v, sizeof v);
    return v;
}

// ----------------------------------------------------------------------------
// report.json

static json_t *pcts(const double *v, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += v[i];
    return json_pack("{s:f,s:f,s:f,s:f}", "p50", engine_percentile(v, n, 50), "p90",
                     engine_percentile(v, n, 90), "p99", engine_percentile(v, n, 99), "mean",
                     n ? sum / n : 0.0);
}

// report.json (written whole under a temporary name, then renamed). `status`
// is "complete" or "interrupted" (then counts cover this attempt so far);
// resumed is how many completions earlier attempts had written.
static int write_report(const char *outdir, json_t *cfg, const EngineStats *st,
                        const char *backend, double load_s, const char *status, int64_t resumed,
                        sl_err *err) {
    double secs = st->seconds > 0 ? st->seconds : 1e-9;
    json_t *r = json_pack(
        "{s:s,s:s,s:s,s:I,s:f,s:{s:I,s:I,s:I,s:I},s:I,s:I,s:f,s:f,s:f,s:f,s:o,s:o,s:o,s:I,s:I,"
        "s:i,s:i,s:O}",
        "sluice_report", "v1", "status", status, "backend", backend, "resumed_completions",
        (json_int_t)resumed, "load_seconds", load_s, "requests", "total",
        (json_int_t)st->n_requests, "stop", (json_int_t)st->n_stop, "length",
        (json_int_t)st->n_length, "error", (json_int_t)st->n_errors, "prompt_tokens",
        (json_int_t)st->prompt_tokens, "output_tokens", (json_int_t)st->output_tokens,
        "seconds", st->seconds, "output_tokens_per_s", st->output_tokens / secs,
        "total_tokens_per_s", (st->output_tokens + st->prompt_tokens) / secs, "requests_per_s",
        (st->n_ok) / secs, "ttft_s", pcts(st->ttft_s, st->n_lat), "tpot_s",
        pcts(st->tpot_s, st->n_lat), "latency_s", pcts(st->latency_s, st->n_lat), "steps",
        (json_int_t)st->steps, "preemptions", (json_int_t)st->preemptions, "max_batch_seen",
        st->max_seqs_seen, "max_step_tokens_seen", st->max_rows_seen, "config", cfg);
    if (!r) return sl_errf(err, "report.json: could not build the report");
    json_object_set_new(r, "cuda_graph_steps", json_integer(st->graph_steps));
    int rc = write_json_atomic(outdir, "report.json", r, err);
    json_decref(r);
    return rc;
}

// ----------------------------------------------------------------------------
// text

static char *decode_text(void *ctx, const int32_t *ids, int n) {
    return prompts_decode_completion(ctx, ids, n);
}

// The model directory's tokenizer.json, when it has one (*tok stays NULL when not).
static int load_tokenizer(const char *model_dir, Tokenizer **tok, sl_err *err) {
    *tok = NULL;
    char *p = sl_path_join(model_dir, "tokenizer.json");
    struct stat stt;
    int rc = stat(p, &stt) == 0 ? tok_load(tok, p, err) : 0;
    free(p);
    return rc;
}

// ----------------------------------------------------------------------------
// several ranks


static const EngineOptions *g_cost_eo;
static const PromptSet *g_cost_ps;

static int64_t req_cost(int64_t i) {
    int64_t plen = g_cost_ps->offsets[i + 1] - g_cost_ps->offsets[i];
    int64_t mn = g_cost_ps->max_new_tokens ? g_cost_ps->max_new_tokens[i]
                                           : g_cost_eo->max_new_tokens;
    return plen + (mn > 0 ? mn : 0);
}

static int cmp_cost_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    int64_t cx = req_cost(x), cy = req_cost(y);
    if (cx != cy) return cx > cy ? -1 : 1;
    return (x > y) - (x < y);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

// Replica `rep`'s prompts among those not done: largest first to the least loaded replica (by
// prompt + completion tokens), so replicas finish together; in prompt order.
// The same on every rank. Returns a fresh array (the caller frees) of *n ids.
static int64_t *assign_share(const PromptSet *ps, const EngineOptions *eo, const uint8_t *done,
                             int n_rep, int rep, int64_t *n) {
    int64_t *order = sl_malloc(sizeof(int64_t) * (ps->n ? ps->n : 1)), todo = 0;
    for (int64_t i = 0; i < ps->n; i++)
        if (!done[i]) order[todo++] = i;
    if (n_rep == 1) {
        *n = todo;
        return order;
    }
    g_cost_eo = eo;
    g_cost_ps = ps;
    qsort(order, todo, sizeof(int64_t), cmp_cost_desc);
    int64_t *load = sl_calloc(n_rep, sizeof(int64_t)), k = 0;
    for (int64_t j = 0; j < todo; j++) {
        int best = 0;
        for (int r = 1; r < n_rep; r++)
            if (load[r] < load[best]) best = r;
        load[best] += req_cost(order[j]) + 1;
        if (best == rep) order[k++] = order[j]; // k <= j: in-place compaction
    }
    free(load);
    qsort(order, k, sizeof(int64_t), cmp_i64);
    *n = k;
    return order;
}

// Sums the replicas' statistics into st on rank 0 (counts summed, the wall
// time and batch sizes maxed, latency samples gathered).
static void gather_stats(Comm *c, EngineStats *st) {
    if (c->size == 1) return;
    int64_t sums[9] = {st->n_requests, st->n_ok,          st->n_errors,
                       st->n_stop,     st->n_length,      st->prompt_tokens,
                       st->output_tokens, (int64_t)st->steps, (int64_t)st->preemptions};
    comm_sum_i64(c, sums, 9);
    double maxes[3] = {st->seconds, st->max_seqs_seen, st->max_rows_seen};
    comm_max_f64(c, maxes, 3);
    double *ttft, *tpot, *lat;
    int64_t n1, n2, n3;
    comm_gather_f64(c, st->ttft_s, st->n_lat, &ttft, &n1);
    comm_gather_f64(c, st->tpot_s, st->n_lat, &tpot, &n2);
    comm_gather_f64(c, st->latency_s, st->n_lat, &lat, &n3);
    engine_stats_free(st);
    st->n_requests = sums[0], st->n_ok = sums[1], st->n_errors = sums[2];
    st->n_stop = sums[3], st->n_length = sums[4], st->prompt_tokens = sums[5];
    st->output_tokens = sums[6], st->steps = (long)sums[7], st->preemptions = (long)sums[8];
    st->seconds = maxes[0];
    st->max_seqs_seen = (int)maxes[1], st->max_rows_seen = (int)maxes[2];
    st->ttft_s = ttft, st->tpot_s = tpot, st->latency_s = lat, st->n_lat = n1;
}

// ----------------------------------------------------------------------------
// the command

enum {
    OPT_MODEL = 1000, OPT_INPUT, OPT_OUTPUT, OPT_MAX_NEW, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP,
    OPT_REP, OPT_PRES, OPT_FREQ, OPT_SEED, OPT_IGNORE_EOS, OPT_LOGPROBS, OPT_MAX_SEQ,
    OPT_MAX_BATCH, OPT_MAX_TOKENS, OPT_BLOCK, OPT_KV_BLOCKS, OPT_KV_MEM, OPT_SCHED, OPT_BACKEND,
    OPT_THREADS, OPT_DTYPE, OPT_KV_DTYPE, OPT_STRICT, OPT_OVERWRITE, OPT_PROGRESS, OPT_QUIET, OPT_VERBOSE, OPT_HELP, OPT_STOP, OPT_KV_FRAC, OPT_TP, OPT_FORCE, OPT_GRACE, OPT_CKPT, OPT_TOPLP, OPT_GRAPHS,
};

int cli_run(int argc, char **argv, Comm *comm) {
    static const struct option longopts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"input", required_argument, 0, OPT_INPUT},
        {"output", required_argument, 0, OPT_OUTPUT},
        {"max-new-tokens", required_argument, 0, OPT_MAX_NEW},
        {"temperature", required_argument, 0, OPT_TEMP},
        {"top-k", required_argument, 0, OPT_TOPK},
        {"top-p", required_argument, 0, OPT_TOPP},
        {"min-p", required_argument, 0, OPT_MINP},
        {"repetition-penalty", required_argument, 0, OPT_REP},
        {"presence-penalty", required_argument, 0, OPT_PRES},
        {"frequency-penalty", required_argument, 0, OPT_FREQ},
        {"seed", required_argument, 0, OPT_SEED},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"stop-token-ids", required_argument, 0, OPT_STOP},
        {"logprobs", no_argument, 0, OPT_LOGPROBS},
        {"top-logprobs", required_argument, 0, OPT_TOPLP},
        {"max-seq-len", required_argument, 0, OPT_MAX_SEQ},
        {"max-batch", required_argument, 0, OPT_MAX_BATCH},
        {"max-num-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"kv-block-size", required_argument, 0, OPT_BLOCK},
        {"kv-blocks", required_argument, 0, OPT_KV_BLOCKS},
        {"kv-mem-gb", required_argument, 0, OPT_KV_MEM},
        {"kv-fraction", required_argument, 0, OPT_KV_FRAC},
        {"tp", required_argument, 0, OPT_TP},
        {"force", no_argument, 0, OPT_FORCE},
        {"grace", required_argument, 0, OPT_GRACE},
        {"checkpoint", required_argument, 0, OPT_CKPT},
        {"sched", required_argument, 0, OPT_SCHED},
        {"backend", required_argument, 0, OPT_BACKEND},
        {"dtype", required_argument, 0, OPT_DTYPE},
        {"kv-dtype", required_argument, 0, OPT_KV_DTYPE},
        {"cuda-graphs", required_argument, 0, OPT_GRAPHS},
        {"threads", required_argument, 0, OPT_THREADS},
        {"strict", no_argument, 0, OPT_STRICT},
        {"overwrite", no_argument, 0, OPT_OVERWRITE},
        {"progress", required_argument, 0, OPT_PROGRESS},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"verbose", no_argument, 0, OPT_VERBOSE},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *input = NULL, *outdir = NULL, *backend = "auto";
    const char *dtype = "auto", *kv_dtype = "auto";
    CliDtype dt;
    EngineOptions eo;
    engine_options_defaults(&eo);
    long threads = 0, kv_blocks = 0, tp = 1;
    double kv_mem_gb = 1.0, kv_fraction = 0.90;
    int overwrite = 0, force = 0;
    StopCtx stopc = {.comm = comm, .grace = 30.0};
    long v;
    double d;
    const char *C = "run";
    optind = 1;
    opterr = 0;
    for (;;) {
        int oi = 0, c = getopt_long(argc, argv, "", longopts, &oi);
        if (c == -1) break;
        switch (c) {
        case OPT_MODEL: model_dir = optarg; break;
        case OPT_INPUT: input = optarg; break;
        case OPT_OUTPUT: outdir = optarg; break;
        case OPT_MAX_NEW:
            if (cli_int(C, "--max-new-tokens", optarg, 1, 1 << 24, &v)) return EXIT_USAGE;
            eo.max_new_tokens = (int)v;
            break;
        case OPT_TEMP:
            if (cli_float(C, "--temperature", optarg, 0, 1e4, &d)) return EXIT_USAGE;
            eo.sampling.temperature = (float)d;
            break;
        case OPT_TOPK:
            if (cli_int(C, "--top-k", optarg, 0, 1 << 30, &v)) return EXIT_USAGE;
            eo.sampling.top_k = (int)v;
            break;
        case OPT_TOPP:
            if (cli_float(C, "--top-p", optarg, 1e-9, 1, &d)) return EXIT_USAGE;
            eo.sampling.top_p = (float)d;
            break;
        case OPT_MINP:
            if (cli_float(C, "--min-p", optarg, 0, 1, &d)) return EXIT_USAGE;
            eo.sampling.min_p = (float)d;
            break;
        case OPT_REP:
            if (cli_float(C, "--repetition-penalty", optarg, 1e-6, 1e6, &d)) return EXIT_USAGE;
            eo.sampling.repetition_penalty = (float)d;
            break;
        case OPT_PRES:
            if (cli_float(C, "--presence-penalty", optarg, -1e4, 1e4, &d)) return EXIT_USAGE;
            eo.sampling.presence_penalty = (float)d;
            break;
        case OPT_FREQ:
            if (cli_float(C, "--frequency-penalty", optarg, -1e4, 1e4, &d)) return EXIT_USAGE;
            eo.sampling.frequency_penalty = (float)d;
            break;
        case OPT_SEED:
            if (cli_int(C, "--seed", optarg, 0, 0x7fffffffffffffffL, &v)) return EXIT_USAGE;
            eo.sampling.seed = (uint64_t)v;
            break;
        case OPT_IGNORE_EOS: eo.ignore_eos = 1; break;
        case OPT_STOP: {
            char *list = sl_strdup(optarg), *save = NULL;
            eo.n_stop = 0;
            for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (eo.n_stop == (int)(sizeof eo.stop_ids / sizeof eo.stop_ids[0]) ||
                    cli_int(C, "--stop-token-ids", t, 0, INT32_MAX, &v)) {
                    if (eo.n_stop == 64) fprintf(stderr, "sluice run: --stop-token-ids: at most 64 ids\n");
                    free(list);
                    return EXIT_USAGE;
                }
                eo.stop_ids[eo.n_stop++] = (int32_t)v;
            }
            free(list);
            break;
        }
        case OPT_LOGPROBS: eo.logprobs = 1; break;
        case OPT_TOPLP:
            if (cli_int(C, "--top-logprobs", optarg, 1, 20, &v)) return EXIT_USAGE;
            eo.top_logprobs = (int)v;
            eo.logprobs = 1;
            break;
        case OPT_MAX_SEQ:
            if (cli_int(C, "--max-seq-len", optarg, 2, 1 << 24, &v)) return EXIT_USAGE;
            eo.max_seq_len = (int)v;
            break;
        case OPT_MAX_BATCH:
            if (cli_int(C, "--max-batch", optarg, 1, 1 << 16, &v)) return EXIT_USAGE;
            eo.max_batch = (int)v;
            break;
        case OPT_MAX_TOKENS:
            if (cli_int(C, "--max-num-tokens", optarg, 1, 1 << 22, &v)) return EXIT_USAGE;
            eo.max_tokens = (int)v;
            break;
        case OPT_BLOCK:
            if (cli_int(C, "--kv-block-size", optarg, 1, 4096, &v)) return EXIT_USAGE;
            if (v & (v - 1)) {
                fprintf(stderr, "sluice run: --kv-block-size: %ld is not a power of two\n", v);
                return EXIT_USAGE;
            }
            eo.block_size = (int)v;
            break;
        case OPT_KV_BLOCKS:
            if (cli_int(C, "--kv-blocks", optarg, 1, 1L << 30, &kv_blocks)) return EXIT_USAGE;
            break;
        case OPT_KV_MEM:
            if (cli_float(C, "--kv-mem-gb", optarg, 1e-6, 1e6, &kv_mem_gb)) return EXIT_USAGE;
            break;
        case OPT_FORCE: force = 1; break;
        case OPT_GRACE:
            if (cli_float(C, "--grace", optarg, 0, 1e6, &stopc.grace)) return EXIT_USAGE;
            break;
        case OPT_CKPT:
            if (cli_float(C, "--checkpoint", optarg, 0, 1e6, &eo.checkpoint_every)) return EXIT_USAGE;
            break;
        case OPT_TP:
            if (cli_int(C, "--tp", optarg, 1, 1 << 16, &tp)) return EXIT_USAGE;
            break;
        case OPT_KV_FRAC:
            if (cli_float(C, "--kv-fraction", optarg, 0.01, 0.99, &kv_fraction)) return EXIT_USAGE;
            break;
        case OPT_SCHED:
            if (!strcmp(optarg, "reserve")) eo.policy = SCHED_RESERVE;
            else if (!strcmp(optarg, "preempt")) eo.policy = SCHED_PREEMPT;
            else {
                fprintf(stderr, "sluice run: --sched: '%s' is not one of reserve, preempt\n",
                        optarg);
                return EXIT_USAGE;
            }
            break;
        case OPT_BACKEND: backend = optarg; break;
        case OPT_DTYPE: dtype = optarg; break;
        case OPT_KV_DTYPE: kv_dtype = optarg; break;
        case OPT_GRAPHS:
            if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
                fprintf(stderr, "sluice run: --cuda-graphs: '%s' is not one of on, off\n", optarg);
                return EXIT_USAGE;
            }
            eo.cuda_graphs = strcmp(optarg, "on") == 0;
            break;
        case OPT_THREADS:
            if (cli_int(C, "--threads", optarg, 1, 4096, &threads)) return EXIT_USAGE;
            break;
        case OPT_STRICT: eo.strict = 1; break;
        case OPT_OVERWRITE: overwrite = 1; break;
        case OPT_PROGRESS:
            if (cli_float(C, "--progress", optarg, 0, 1e6, &d)) return EXIT_USAGE;
            eo.progress_every = d;
            break;
        case OPT_QUIET: sl_log_set_level(LOG_WARN); break;
        case OPT_VERBOSE: sl_log_set_level(LOG_DEBUG); break;
        case OPT_HELP: run_usage(stdout); return EXIT_OK;
        default:
            if (optopt && optopt < 1000)
                fprintf(stderr, "sluice run: unknown option '%s'\n", argv[optind - 1]);
            else
                fprintf(stderr, "sluice run: option '%s' is unknown or lacks its value\n",
                        argv[optind - 1]);
            fprintf(stderr, "try 'sluice run --help'\n");
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluice run: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!model_dir || !input || !outdir) {
        fprintf(stderr, "sluice run: --model, --input and --output are required "
                        "(try 'sluice run --help')\n");
        return EXIT_USAGE;
    }
    if (strcmp(backend, "cpu") && strcmp(backend, "cuda") && strcmp(backend, "auto")) {
        fprintf(stderr, "sluice run: --backend: '%s' is not one of auto, cpu, cuda\n", backend);
        return EXIT_USAGE;
    }
    if (cli_dtype("run", dtype, kv_dtype, &dt)) return EXIT_USAGE;
    {
        char why[256];
        if (comm_setup_groups(comm, (int)tp, why, sizeof why)) {
            if (comm->rank == 0) fprintf(stderr, "sluice run: %s\n", why);
            return EXIT_USAGE;
        }
    }
    // Ranks on one node share its cores unless told otherwise.
    if (threads == 0 && comm->local_size > 1 && !getenv("OMP_NUM_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores / comm->local_size > 0 ? cores / comm->local_size : 1;
    }
    if (comm->tp_rank != 0 && sl_log_level() == LOG_INFO) sl_log_set_level(LOG_WARN);

    sl_err err = {{0}};
    int rc = EXIT_FAIL;
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    Backend *be = NULL;
    Model *m = NULL;
    h5_writer *w = NULL;
    EngineStats st;
    memset(&st, 0, sizeof st);
    json_t *cfg_json = NULL;
    int64_t *mine = NULL, n_done = 0;
    uint8_t *done = NULL;
    json_t *rec = NULL;
    int resuming = 0;
    Tokenizer *tok = NULL;
    void *tp_state = NULL;
    double t_load = sl_now();

    install_signals();

    // 1) everything that can be wrong with the inputs, before touching OUTDIR;
    //    a text-only prompts file is tokenized here with the model's tokenizer
    if (check_outdir_path(outdir, &err)) goto fail; // before any slow loading
    sl_err tok_err = {{0}};
    if (load_tokenizer(model_dir, &tok, &tok_err)) {
        // Token ids in, token ids out still works: only text needs it.
        LOGW("%s; completions will carry no text", tok_err.msg);
        tok = NULL;
    }
    if (prompts_load(&ps, input, tok, (int)threads, &err)) {
        if (tok_err.msg[0]) {
            char why[SL_ERR_MAX];
            memcpy(why, err.msg, sizeof why);
            sl_errf(&err, "%.500s (and tokenizer.json could not be used: %.400s)", why,
                    tok_err.msg);
        }
        goto fail;
    }
    be = cli_backend_create_dt(backend, (int)threads, comm->local_rank, &dt, &err);
    if (!be) goto fail;
    ModelOptions mo = {.max_tokens = eo.max_tokens, .max_seqs = eo.max_batch,
                       .weight_fp8 = dt.weight_fp8, .kv_fp8 = dt.kv_fp8};
    if (cli_tp_attach(comm, be, &mo, &eo, &tp_state, &err)) goto fail;
    if (model_load(&m, model_dir, be, &mo, &err)) goto fail;
    if (eo.max_seq_len <= 0 || eo.max_seq_len > m->cfg.max_seq_len)
        eo.max_seq_len = m->cfg.max_seq_len;
    if (cli_size_kv(m, &eo, kv_blocks, kv_mem_gb, kv_fraction, &err)) goto fail;
    cli_tp_agree_kv(comm, &eo);
    {
        char desc[256];
        config_describe(&m->cfg, desc, sizeof desc);
        LOGI("model %s: %s", model_dir, desc);
        LOGI("backend %s; KV pool %d blocks x %d tokens (%.1f MiB); max batch %d, "
             "max tokens/step %d, %s scheduling",
             be->name, eo.kv_blocks, eo.block_size,
             (double)model_kv_block_bytes(m, eo.block_size) * eo.kv_blocks / (1 << 20),
             eo.max_batch, eo.max_tokens, eo.policy == SCHED_RESERVE ? "reserve" : "preempt");
    }
    if (eo.strict) {
        for (int64_t i = 0; i < ps.n; i++) {
            char why[512];
            if (engine_check_request(&m->cfg, &ps, i, &eo, eo.kv_blocks, why, sizeof why)) {
                sl_errf(&err, "%s: request %ld: %s (--strict)", input, (long)i, why);
                goto fail;
            }
        }
    }
    t_load = sl_now() - t_load;

    // 2) the job record and OUTDIR (rank 0), then what earlier attempts finished
    if (comm->rank == 0) {
        if (!(rec = job_record(model_dir, input, &eo, &err))) goto fail;
        // number formats change the tokens: part of the record (only when
        // not the default, so records of earlier runs still match)
        if (dt.act_f32 || dt.weight_fp8 || dt.kv_fp8)
            json_object_set_new(rec, "numerics",
                                json_pack("{s:s,s:s}", "dtype", dt.name, "kv_dtype",
                                          dt.kv_fp8 ? "fp8" : "auto"));
        if (prepare_outdir(outdir, rec, overwrite, force, &resuming, &err)) goto fail;
    }
    comm_barrier(comm);
    done = sl_calloc(ps.n ? ps.n : 1, 1);
    if (load_done(outdir, ps.n, done, &n_done, &err)) goto fail;
    if (n_done) LOGI("resuming: %ld of %ld completions already written", (long)n_done, (long)ps.n);

    // 3) this replica's share of the rest, generated and streamed into its
    //    part file (written by the replica's first rank)
    int64_t n_mine = 0;
    mine = assign_share(&ps, &eo, done, comm->n_replicas, comm->replica, &n_mine);
    if (tok) {
        eo.decode = decode_text;
        eo.decode_ctx = tok;
    }
    if (comm->tp_rank == 0 &&
        h5_writer_open(&w, outdir, comm->replica, tok != NULL,
                       eo.logprobs ? 1 + eo.top_logprobs : 0, &err))
        goto fail;
    LOGI("%ld prompts from %s -> %s (replica %d of %d: %ld prompts, %d tensor-parallel ranks)",
         (long)(ps.n - n_done), input, outdir, comm->replica, comm->n_replicas, (long)n_mine,
         comm->tp);
    eo.should_stop = stop_check;
    eo.stop_ctx = &stopc;
    if (engine_run(m, &ps, mine, n_mine, &eo, w, &st, &err)) goto fail;
    if (w && h5_writer_close(w, &err)) {
        w = NULL;
        goto fail;
    }
    w = NULL;
    int interrupted = comm_allreduce_max_int(comm, st.interrupted);

    // 4) every replica done: rank 0 merges the part files and reports the sums
    if (comm->tp_rank != 0) { // the group leader already counts this replica
        EngineStats none;
        memset(&none, 0, sizeof none);
        engine_stats_free(&st);
        st = none;
    }
    gather_stats(comm, &st);
    comm_barrier(comm);
    if (comm->rank == 0) {
        if (!interrupted && h5_merge_parts(outdir, ps.n, &err)) goto fail;
        cfg_json = json_pack(
            "{s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:s,s:i,s:f,s:i,s:f,s:f,s:f,s:f,s:f,s:I,s:b,s:b,s:i,"
            "s:i,s:i}",
            "model", model_dir, "backend", be->name, "input", input, "max_new_tokens",
            eo.max_new_tokens, "max_batch", eo.max_batch, "max_num_tokens", eo.max_tokens,
            "kv_block_size", eo.block_size, "kv_blocks", eo.kv_blocks, "sched",
            eo.policy == SCHED_RESERVE ? "reserve" : "preempt", "max_seq_len", eo.max_seq_len,
            "temperature", eo.sampling.temperature, "top_k", eo.sampling.top_k, "top_p",
            eo.sampling.top_p, "min_p", eo.sampling.min_p, "repetition_penalty",
            eo.sampling.repetition_penalty, "presence_penalty", eo.sampling.presence_penalty,
            "frequency_penalty", eo.sampling.frequency_penalty, "seed",
            (json_int_t)eo.sampling.seed, "ignore_eos", eo.ignore_eos, "strict", eo.strict,
            "ranks", comm->size, "tp", comm->tp, "replicas", comm->n_replicas);
        if (write_report(outdir, cfg_json, &st, be->name, t_load,
                         interrupted ? "interrupted" : "complete", n_done, &err))
            goto fail;
        if (interrupted)
            LOGW("stopped by a signal: %ld completions of this attempt are safe in %s; rerun the "
                 "same command to resume",
                 (long)(st.n_ok + st.n_errors), outdir);
        else LOGI("done: %ld requests (%ld stop, %ld length, %ld error), %ld output tokens in %.2f s "
             "(%.1f tok/s); %s/completions.h5",
             (long)st.n_requests, (long)st.n_stop, (long)st.n_length, (long)st.n_errors,
             (long)st.output_tokens, st.seconds,
             st.output_tokens / (st.seconds > 0 ? st.seconds : 1), outdir);
    }
    comm_barrier(comm);
    rc = interrupted ? EXIT_INTERRUPTED : EXIT_OK;
fail:
    if (rc == EXIT_FAIL) {
        fprintf(stderr, "sluice run: error: %s\n", err.msg);
        // One rank's failure ends the whole job at once: no rank may be left
        // waiting in a collective.
        if (comm->size > 1) comm_abort(comm, EXIT_FAIL);
    }
    free(mine);
    free(done);
    json_decref(rec);
    if (w) h5_writer_close(w, NULL);
    json_decref(cfg_json);
    engine_stats_free(&st);
    model_free(m);
    cli_tp_detach(be, tp_state);
    if (be) be->destroy(be);
    h5_prompts_free(&ps);
    tok_free(tok);
    return rc;
}
