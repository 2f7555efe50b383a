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
        "  --max-seq-len N        context length (default: the model's max_position_embeddings)\n"
        "batching and memory:\n"
        "  --max-batch N          sequences per step (default 256)\n"
        "  --max-num-tokens N     token rows per step; longer prompts are chunked (default 8192)\n"
        "  --kv-block-size N      tokens per KV block, a power of two (default 32)\n"
        "  --kv-blocks N          KV pool size in blocks (default: from --kv-mem-gb on the CPU)\n"
        "  --kv-mem-gb G          CPU KV pool budget in GiB when --kv-blocks is not given (default 1)\n"
        "  --sched POLICY         preempt (default): fill memory, preempt the newest when it runs\n"
        "                         out; reserve: admit only with worst-case blocks free\n"
        "execution:\n"
        "  --backend NAME         cpu (default: cpu in this build)\n"
        "  --threads N            CPU threads (default: all cores)\n"
        "  --strict               fail the job on any bad request instead of reporting it\n"
        "  --overwrite            replace existing output in OUTDIR\n"
        "  --progress SECONDS     seconds between progress lines (default 5; 0 = none)\n"
        "  --quiet, --verbose     less / more logging\n"
        "  --help\n");
}

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

// Refuses to mix with earlier output unless told to overwrite it.
static int prepare_outdir(const char *outdir, int overwrite, sl_err *err) {
    if (mkdir_p(outdir, err)) return -1;
    const char *pats[] = {"part-*.h5", "completions.h5", "report.json"};
    for (int i = 0; i < 3; i++) {
        char *pat = sl_path_join(outdir, pats[i]);
        glob_t g;
        int found = glob(pat, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
        for (int k = 0; k < found && overwrite; k++)
            if (unlink(g.gl_pathv[k])) {
                sl_errf(err, "%s: cannot remove: %s", g.gl_pathv[k], strerror(errno));
                globfree(&g);
                free(pat);
                return -1;
            }
        if (found) globfree(&g);
        free(pat);
        if (found && !overwrite)
            return sl_errf(err, "%s already holds output (%s); pass --overwrite to replace it",
                           outdir, pats[i]);
    }
    return 0;
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

static int write_report(const char *outdir, json_t *cfg, const EngineStats *st,
                        const char *backend, double load_s, sl_err *err) {
    double secs = st->seconds > 0 ? st->seconds : 1e-9;
    json_t *r = json_pack(
        "{s:s,s:s,s:f,s:{s:I,s:I,s:I,s:I},s:I,s:I,s:f,s:f,s:f,s:f,s:o,s:o,s:o,s:I,s:I,s:i,s:i,s:o}",
        "sluice_report", "v1", "backend", backend, "load_seconds", load_s, "requests", "total",
        (json_int_t)st->n_requests, "stop", (json_int_t)st->n_stop, "length",
        (json_int_t)st->n_length, "error", (json_int_t)st->n_errors, "prompt_tokens",
        (json_int_t)st->prompt_tokens, "output_tokens", (json_int_t)st->output_tokens,
        "seconds", st->seconds, "output_tokens_per_s", st->output_tokens / secs,
        "total_tokens_per_s", (st->output_tokens + st->prompt_tokens) / secs, "requests_per_s",
        (st->n_ok) / secs, "ttft_s", pcts(st->ttft_s, st->n_lat), "tpot_s",
        pcts(st->tpot_s, st->n_lat), "latency_s", pcts(st->latency_s, st->n_lat), "steps",
        (json_int_t)st->steps, "preemptions", (json_int_t)st->preemptions, "max_batch_seen",
        st->max_seqs_seen, "max_step_tokens_seen", st->max_rows_seen, "config", json_incref(cfg));
    if (!r) return sl_errf(err, "report.json: could not build the report");
    char *path = sl_path_join(outdir, "report.json");
    char *tmp = sl_path_join(outdir, ".report.json.tmp");
    int rc = 0;
    if (json_dump_file(r, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) || rename(tmp, path)) {
        rc = sl_errf(err, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
    }
    json_decref(r);
    free(path);
    free(tmp);
    return rc;
}

// ----------------------------------------------------------------------------
// the command

enum {
    OPT_MODEL = 1000, OPT_INPUT, OPT_OUTPUT, OPT_MAX_NEW, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP,
    OPT_REP, OPT_PRES, OPT_FREQ, OPT_SEED, OPT_IGNORE_EOS, OPT_LOGPROBS, OPT_MAX_SEQ,
    OPT_MAX_BATCH, OPT_MAX_TOKENS, OPT_BLOCK, OPT_KV_BLOCKS, OPT_KV_MEM, OPT_SCHED, OPT_BACKEND,
    OPT_THREADS, OPT_STRICT, OPT_OVERWRITE, OPT_PROGRESS, OPT_QUIET, OPT_VERBOSE, OPT_HELP, OPT_STOP,
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
        {"max-seq-len", required_argument, 0, OPT_MAX_SEQ},
        {"max-batch", required_argument, 0, OPT_MAX_BATCH},
        {"max-num-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"kv-block-size", required_argument, 0, OPT_BLOCK},
        {"kv-blocks", required_argument, 0, OPT_KV_BLOCKS},
        {"kv-mem-gb", required_argument, 0, OPT_KV_MEM},
        {"sched", required_argument, 0, OPT_SCHED},
        {"backend", required_argument, 0, OPT_BACKEND},
        {"threads", required_argument, 0, OPT_THREADS},
        {"strict", no_argument, 0, OPT_STRICT},
        {"overwrite", no_argument, 0, OPT_OVERWRITE},
        {"progress", required_argument, 0, OPT_PROGRESS},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"verbose", no_argument, 0, OPT_VERBOSE},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *input = NULL, *outdir = NULL, *backend = "cpu";
    EngineOptions eo;
    engine_options_defaults(&eo);
    long threads = 0, kv_blocks = 0;
    double kv_mem_gb = 1.0;
    int overwrite = 0;
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
    if (strcmp(backend, "cpu") != 0) {
        fprintf(stderr, "sluice run: --backend: '%s' is not available in this build "
                        "(available: cpu)\n", backend);
        return EXIT_USAGE;
    }
    if (comm->size > 1) {
        fprintf(stderr, "sluice run: several ranks are not supported yet; run one process\n");
        return EXIT_USAGE;
    }

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
    double t_load = sl_now();

    // 1) everything that can be wrong with the inputs, before touching OUTDIR
    if (h5_prompts_read(&ps, input, &err)) goto fail;
    be = backend_cpu_create((int)threads);
    ModelOptions mo = {.max_tokens = eo.max_tokens, .max_seqs = eo.max_batch, .tp_size = 1};
    if (model_load(&m, model_dir, be, &mo, &err)) goto fail;
    if (eo.max_seq_len <= 0 || eo.max_seq_len > m->cfg.max_seq_len)
        eo.max_seq_len = m->cfg.max_seq_len;
    {
        size_t bb = model_kv_block_bytes(m, eo.block_size);
        int full = (eo.max_seq_len + eo.block_size - 1) / eo.block_size;
        if (kv_blocks <= 0) {
            double budget = kv_mem_gb * (double)(1ull << 30);
            long from_mem = (long)(budget / bb);
            long want = (long)full * eo.max_batch;
            kv_blocks = from_mem < want ? from_mem : want;
            if (kv_blocks < full) kv_blocks = full;
        }
        eo.kv_blocks = (int)kv_blocks;
        char desc[256];
        config_describe(&m->cfg, desc, sizeof desc);
        LOGI("model %s: %s", model_dir, desc);
        LOGI("backend %s; KV pool %d blocks x %d tokens (%.1f MiB); max batch %d, "
             "max tokens/step %d, %s scheduling",
             be->name, eo.kv_blocks, eo.block_size, (double)bb * eo.kv_blocks / (1 << 20),
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

    // 2) generate, streaming completions into the part file
    if (prepare_outdir(outdir, overwrite, &err)) goto fail;
    if (h5_writer_open(&w, outdir, comm->rank, 0, eo.logprobs, &err)) goto fail;
    LOGI("%ld prompts from %s -> %s", (long)ps.n, input, outdir);
    if (engine_run(m, &ps, NULL, ps.n, &eo, w, &st, &err)) goto fail;
    if (h5_writer_close(w, &err)) {
        w = NULL;
        goto fail;
    }
    w = NULL;

    // 3) merge and report
    if (h5_merge_parts(outdir, ps.n, &err)) goto fail;
    cfg_json = json_pack(
        "{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:s,s:i,s:f,s:i,s:f,s:f,s:f,s:f,s:f,s:I,s:b,s:b,s:i}",
        "model", model_dir, "input", input, "max_new_tokens", eo.max_new_tokens, "max_batch",
        eo.max_batch, "max_num_tokens", eo.max_tokens, "kv_block_size", eo.block_size,
        "kv_blocks", eo.kv_blocks, "sched", eo.policy == SCHED_RESERVE ? "reserve" : "preempt",
        "max_seq_len", eo.max_seq_len, "temperature", eo.sampling.temperature, "top_k",
        eo.sampling.top_k, "top_p", eo.sampling.top_p, "min_p", eo.sampling.min_p,
        "repetition_penalty", eo.sampling.repetition_penalty, "presence_penalty",
        eo.sampling.presence_penalty, "frequency_penalty", eo.sampling.frequency_penalty, "seed",
        (json_int_t)eo.sampling.seed, "ignore_eos", eo.ignore_eos, "strict", eo.strict,
        "ranks", comm->size);
    if (write_report(outdir, cfg_json, &st, be->name, t_load, &err)) goto fail;
    LOGI("done: %ld requests (%ld stop, %ld length, %ld error), %ld output tokens in %.2f s "
         "(%.1f tok/s); %s/completions.h5",
         (long)st.n_requests, (long)st.n_stop, (long)st.n_length, (long)st.n_errors,
         (long)st.output_tokens, st.seconds, st.output_tokens / (st.seconds > 0 ? st.seconds : 1),
         outdir);
    rc = EXIT_OK;
fail:
    if (rc != EXIT_OK) fprintf(stderr, "sluice run: error: %s\n", err.msg);
    if (w) h5_writer_close(w, NULL);
    json_decref(cfg_json);
    engine_stats_free(&st);
    model_free(m);
    if (be) be->destroy(be);
    h5_prompts_free(&ps);
    return rc;
}
