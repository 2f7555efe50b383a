// cli_quantize_int4.c: the INT4 half of `sluice quantize`:
//
//   sluice quantize --int4-awq --model DIR --calib prompts.h5 --output OUT
//   sluice quantize --int4-rtn --model DIR --output OUT
//   sluice quantize --int4-eval --model DIR --compare OUT1[,OUT2...] --eval held.h5
//
// The first two write an AutoAWQ gemm checkpoint (src/quant_awq.c); the third
// prints the accuracy table of docs/ACCURACY.md: teacher-forced top-1
// agreement and mean KL(reference || quantised) of each compared model
// against the reference model DIR on held-out prompts, plus each model's
// perplexity on them, all on the CPU backend (whose INT4 path dequantises
// exactly like the GPU kernels, kernels/cpu/int4_cpu.h).
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "h5io.h"
#include "model.h"
#include "quant_awq.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: sluice quantize --int4-awq --model DIR --calib prompts.h5 --output OUT [options]\n"
        "       sluice quantize --int4-rtn --model DIR --output OUT [options]\n"
        "       sluice quantize --int4-eval --model DIR --compare OUT[,OUT...] --eval held.h5\n"
        "\n"
        "Writes DIR's decoder linear layers as group-wise INT4 (W4A16) in AutoAWQ's gemm\n"
        "format (config.json quantization_config, model.safetensors, tokenizer files):\n"
        "  --int4-awq             activation-aware scales (grid over alpha, s = mean|x|^alpha)\n"
        "                         and weight clipping, searched on calibration activations\n"
        "                         recorded on the CPU backend, then round-to-nearest\n"
        "  --int4-rtn             round-to-nearest only (the baseline)\n"
        "  --calib FILE           calibration prompts (sluice prep output, or text only)\n"
        "  --calib-tokens N       calibration tokens used (default 4096; prompts cut at 512)\n"
        "  --group G              group size (default 128; a multiple of 32)\n"
        "  --search-rows N        activation rows per layer for the scale search (default 256)\n"
        "  --grid N               alpha grid points (default 20)\n"
        "  --int4-eval            print the accuracy table instead (see above)\n"
        "  --eval FILE            held-out prompts (not the calibration ones)\n"
        "  --eval-window N        tokens per prompt evaluated (default 256)\n"
        "  --threads N            CPU threads\n");
}

// ----------------------------------------------------------------------------
// the accuracy table

typedef struct {
    const char *name;
    Model *m;
    double agree, kl, nll, hit; // sums (hit: argmax == the next token)
    long n_pos, n_next;
} EvalModel;

static void log_softmax(double *out, const float *x, int n) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++) s += exp(x[i] - mx);
    double ls = mx + log(s);
    for (int i = 0; i < n; i++) out[i] = x[i] - ls;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int run_eval(const char *ref_dir, const char *compare, const char *eval_path, int window,
                    sl_err *err) {
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    if (h5_prompts_read(&ps, eval_path, err)) return -1;
    Tokenizer *tk = NULL;
    if (!ps.tokens && tok_load_dir(&tk, ref_dir, err)) {
        h5_prompts_free(&ps);
        return sl_errctx(err, "--eval %s holds text only", eval_path);
    }
    EvalModel ms[9];
    int nm = 0, rc = -1;
    Backend *be = backend_cpu_create(0);
    ModelOptions mo = {.max_tokens = window, .max_seqs = window, .tp_size = 1};
    char *list = sl_strdup(compare);
    ms[nm++] = (EvalModel){.name = ref_dir};
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && nm < 9; t = strtok_r(NULL, ",", &save))
        ms[nm++] = (EvalModel){.name = t};
    for (int i = 0; i < nm; i++) {
        if (model_load(&ms[i].m, ms[i].name, be, &mo, err)) {
            sl_errctx(err, "%s", ms[i].name);
            goto out;
        }
        if (ms[i].m->cfg.vocab_size != ms[0].m->cfg.vocab_size) {
            sl_errf(err, "%s: vocabulary %d differs from the reference's %d", ms[i].name,
                    ms[i].m->cfg.vocab_size, ms[0].m->cfg.vocab_size);
            goto out;
        }
        int bs = 16;
        model_kv_alloc(ms[i].m, (window + bs - 1) / bs, bs);
    }
    int V = ms[0].m->cfg.vocab_size;
    float *lg[9];
    for (int i = 0; i < nm; i++) lg[i] = sl_malloc(sizeof(float) * (size_t)window * V);
    double *lp0 = sl_malloc(sizeof(double) * V), *lp = sl_malloc(sizeof(double) * V);
    int32_t *pos = sl_malloc(sizeof(int32_t) * window * 4), *seq_of = pos + window,
            *slots = pos + 2 * window, *rows = pos + 3 * window;
    int32_t bt[4096];
    for (int i = 0; i < window; i++) pos[i] = slots[i] = rows[i] = i, seq_of[i] = 0;
    for (int i = 0; i < (window + 15) / 16 && i < 4096; i++) bt[i] = i;
    long total = 0;
    for (int64_t p = 0; p < ps.n; p++) {
        int32_t *ids = NULL;
        int n = 0;
        if (tk) {
            if (tok_encode(tk, ps.prompt_text[p], strlen(ps.prompt_text[p]), 1, &ids, &n, err))
                goto out2;
        } else {
            n = (int)(ps.offsets[p + 1] - ps.offsets[p]);
        }
        const int32_t *tok = tk ? ids : ps.tokens + ps.offsets[p];
        if (n > window) n = window;
        if (n < 2) {
            free(ids);
            continue;
        }
        int32_t seq_start[2] = {0, n}, kv_len[1] = {n};
        Batch b = {.n_tokens = n, .n_seqs = 1, .tokens = (int32_t *)tok, .pos = pos,
                   .seq_of = seq_of, .slots = slots, .seq_start = seq_start, .kv_len = kv_len,
                   .block_tables = bt, .max_blocks = (n + 15) / 16, .n_logits = n,
                   .logit_rows = rows};
        for (int i = 0; i < nm; i++) model_forward(ms[i].m, &b, lg[i]);
        for (int t = 0; t < n; t++) {
            const float *r0 = lg[0] + (size_t)t * V;
            log_softmax(lp0, r0, V);
            int a0 = argmax(r0, V);
            for (int i = 0; i < nm; i++) {
                const float *ri = lg[i] + (size_t)t * V;
                log_softmax(lp, ri, V);
                double kl = 0;
                for (int v = 0; v < V; v++) kl += exp(lp0[v]) * (lp0[v] - lp[v]);
                ms[i].kl += kl;
                ms[i].agree += argmax(ri, V) == a0;
                ms[i].n_pos++;
                if (t + 1 < n) {
                    ms[i].nll -= lp[tok[t + 1]];
                    ms[i].hit += argmax(ri, V) == tok[t + 1];
                    ms[i].n_next++;
                }
            }
        }
        total += n;
        free(ids);
    }
    printf("\nINT4 accuracy on the CPU backend: %ld teacher-forced positions of %s\n"
           "(reference %s; top-1 agree: argmax equals the reference's; KL(ref || model) in nats;\n"
           " perplexity and next-token (argmax == the text's next token) on the text itself)\n\n",
           total, eval_path, ref_dir);
    printf("| %-40s | %11s | %10s | %10s | %10s |\n", "model", "top-1 agree", "mean KL",
           "perplexity", "next-token");
    printf("|%.*s|%.*s|%.*s|%.*s|%.*s|\n", 42, "------------------------------------------", 13,
           "-------------", 12, "------------", 12, "------------", 12, "------------");
    for (int i = 0; i < nm; i++) {
        double np = ms[i].n_pos ? (double)ms[i].n_pos : 1.0;
        double nn = ms[i].n_next ? (double)ms[i].n_next : 1.0;
        printf("| %-40s | %10.2f%% | %10.5f | %10.3f | %9.2f%% |\n", ms[i].name,
               100.0 * ms[i].agree / np, ms[i].kl / np, exp(ms[i].nll / nn),
               100.0 * ms[i].hit / nn);
    }
    rc = 0;
out2:
    for (int i = 0; i < nm; i++) free(lg[i]);
    free(lp0), free(lp), free(pos);
out:
    for (int i = 0; i < nm; i++) model_free(ms[i].m);
    be->destroy(be);
    free(list);
    tok_free(tk);
    h5_prompts_free(&ps);
    return rc;
}

// ----------------------------------------------------------------------------
// the command

enum { Q_AWQ = 1000, Q_RTN, Q_EVAL, Q_MODEL, Q_OUT, Q_CALIB, Q_CTOK, Q_GROUP, Q_ROWS, Q_GRID,
       Q_CMP, Q_EVALF, Q_WIN, Q_THREADS, Q_VERBOSE, Q_HELP };

int cli_quantize_int4(int argc, char **argv, Comm *comm) {
    static const struct option longopts[] = {
        {"int4-awq", no_argument, 0, Q_AWQ},
        {"int4-rtn", no_argument, 0, Q_RTN},
        {"int4-eval", no_argument, 0, Q_EVAL},
        {"model", required_argument, 0, Q_MODEL},
        {"output", required_argument, 0, Q_OUT},
        {"calib", required_argument, 0, Q_CALIB},
        {"calib-tokens", required_argument, 0, Q_CTOK},
        {"group", required_argument, 0, Q_GROUP},
        {"search-rows", required_argument, 0, Q_ROWS},
        {"grid", required_argument, 0, Q_GRID},
        {"compare", required_argument, 0, Q_CMP},
        {"eval", required_argument, 0, Q_EVALF},
        {"eval-window", required_argument, 0, Q_WIN},
        {"threads", required_argument, 0, Q_THREADS},
        {"verbose", no_argument, 0, Q_VERBOSE},
        {"help", no_argument, 0, Q_HELP},
        {0, 0, 0, 0},
    };
    const char *C = "quantize";
    AwqQuantOptions o;
    awq_quant_options_defaults(&o);
    int mode = 0; // Q_AWQ, Q_RTN, Q_EVAL
    const char *compare = NULL, *eval = NULL;
    long v, window = 256, threads = 0;
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", longopts, NULL);
        if (c == -1) break;
        switch (c) {
        case Q_AWQ: case Q_RTN: case Q_EVAL:
            if (mode && mode != c) {
                fprintf(stderr, "sluice quantize: give one of --int4-awq, --int4-rtn, --int4-eval\n");
                return EXIT_USAGE;
            }
            mode = c;
            break;
        case Q_MODEL: o.model_dir = optarg; break;
        case Q_OUT: o.out_dir = optarg; break;
        case Q_CALIB: o.calib_path = optarg; break;
        case Q_CTOK: if (cli_int(C, "--calib-tokens", optarg, 2, 1 << 24, &v)) return EXIT_USAGE; o.max_calib_tokens = (int)v; break;
        case Q_GROUP: if (cli_int(C, "--group", optarg, 32, 1 << 16, &v)) return EXIT_USAGE; o.group = (int)v; break;
        case Q_ROWS: if (cli_int(C, "--search-rows", optarg, 1, 1 << 16, &v)) return EXIT_USAGE; o.search_rows = (int)v; break;
        case Q_GRID: if (cli_int(C, "--grid", optarg, 1, 1000, &v)) return EXIT_USAGE; o.n_grid = (int)v; break;
        case Q_CMP: compare = optarg; break;
        case Q_EVALF: eval = optarg; break;
        case Q_WIN: if (cli_int(C, "--eval-window", optarg, 2, 4096 * 16, &window)) return EXIT_USAGE; break;
        case Q_THREADS: if (cli_int(C, "--threads", optarg, 1, 4096, &threads)) return EXIT_USAGE; break;
        case Q_VERBOSE: o.verbose = 1; break;
        case Q_HELP: usage(stdout); return EXIT_OK;
        default:
            fprintf(stderr, "sluice quantize: option '%s' is unknown or lacks its value\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluice quantize: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!mode) {
        fprintf(stderr, "sluice quantize: give --int4-awq, --int4-rtn or --int4-eval "
                        "(try 'sluice quantize --help')\n");
        return EXIT_USAGE;
    }
    if (!o.model_dir) {
        fprintf(stderr, "sluice quantize: --model DIR is required\n");
        return EXIT_USAGE;
    }
    if (threads > 0) {
        Backend *b = backend_cpu_create((int)threads); // sets OpenMP's thread count
        b->destroy(b);
    }
    sl_err err = {{0}};
    int rc;
    if (mode == Q_EVAL) {
        if (!compare || !eval) {
            fprintf(stderr, "sluice quantize: --int4-eval needs --compare DIR[,DIR...] and "
                            "--eval prompts.h5\n");
            return EXIT_USAGE;
        }
        rc = run_eval(o.model_dir, compare, eval, (int)window, &err);
    } else {
        if (!o.out_dir) {
            fprintf(stderr, "sluice quantize: --output DIR is required\n");
            return EXIT_USAGE;
        }
        if (mode == Q_AWQ && !o.calib_path) {
            fprintf(stderr, "sluice quantize: --int4-awq needs --calib prompts.h5\n");
            return EXIT_USAGE;
        }
        o.method = mode == Q_AWQ ? AWQ_QUANT_AWQ : AWQ_QUANT_RTN;
        double t0 = sl_now();
        rc = awq_quantize(&o, &err);
        if (!rc)
            LOGI("wrote %s (%s, group %d) in %.1f s", o.out_dir,
                 o.method == AWQ_QUANT_AWQ ? "AWQ" : "RTN", o.group, sl_now() - t0);
    }
    (void)comm;
    if (rc) {
        fprintf(stderr, "sluice quantize: error: %s\n", err.msg);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}
