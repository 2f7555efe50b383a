// cli_eval.c: `sluice eval`: the accuracy of a reduced-precision mode (FP8
// weights, FP8 KV cache) against the BF16 checkpoint computed in fp32.
//
// Reference: the checkpoint on the CPU backend (bf16 weights widened exactly,
// fp32 activations and KV). Candidate: the same checkpoint with --dtype /
// --kv-dtype on --backend (default cpu, where FP8 is emulated exactly, so
// the figures need no GPU; cuda runs the real kernels). Two measures:
//   teacher-forced: the corpus files, tokenized and cut into chunks of --ctx
//     tokens; each chunk is one prefill with logits at every position. Top-1
//     agreement = share of positions whose argmax is the reference's; mean KL
//     = mean over positions of KL(ref || cand) of the softmaxed logits (nats).
//   greedy: the golden prompts of golden_greedy.json, each continued greedily
//     by the candidate for as many tokens as the golden file holds; exact
//     continuations, and the mean length of the agreeing prefix (the golden
//     ids are HF's fp32 greedy output, which the CPU reference reproduces).
// `--table` evaluates FP8 KV alone, FP8 weights alone and both, and prints
// the markdown table docs/ACCURACY.md holds.
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model.h"
#include "tokenizer.h"

#define EV_MAX_CORPUS 32

typedef struct {
    Model *m;
    Backend *be;
    float *logits; // (ctx, vocab)
    int vocab, ctx;
} EvRunner;

static int ev_open(EvRunner *r, Backend *be, const char *dir, int ctx, int weight_fp8,
                   int kv_fp8, sl_err *err) {
    memset(r, 0, sizeof *r);
    r->be = be;
    r->ctx = ctx;
    ModelOptions mo = {.max_tokens = ctx, .max_seqs = ctx, .tp_size = 1,
                       .weight_fp8 = weight_fp8, .kv_fp8 = kv_fp8};
    if (model_load(&r->m, dir, be, &mo, err)) return -1;
    int bs = 16;
    model_kv_alloc(r->m, (ctx + bs - 1) / bs + 1, bs);
    r->vocab = r->m->cfg.vocab_size;
    r->logits = sl_malloc(sizeof(float) * (size_t)r->vocab * ctx);
    return 0;
}

static void ev_close(EvRunner *r) {
    model_free(r->m);
    free(r->logits);
}

// One sequence on blocks 0.., rows [start, start+n) as one step; logits of
// every row (all = 1) or the last into r->logits.
static void ev_step(EvRunner *r, const int32_t *seq, int start, int n, int all) {
    int32_t *pos = sl_malloc(sizeof(int32_t) * 4 * n), *seq_of = pos + n, *slots = pos + 2 * n,
            *rows = pos + 3 * n;
    int nb = (start + n + 15) / 16;
    int32_t *bt = sl_malloc(sizeof(int32_t) * nb);
    for (int i = 0; i < nb; i++) bt[i] = i;
    for (int i = 0; i < n; i++) {
        pos[i] = start + i;
        seq_of[i] = 0;
        slots[i] = start + i;
        rows[i] = i;
    }
    int32_t seq_start[2] = {0, n}, kv_len[1] = {start + n};
    Batch b = {.n_tokens = n, .n_seqs = 1, .tokens = (int32_t *)seq + start, .pos = pos,
               .seq_of = seq_of, .slots = slots, .seq_start = seq_start, .kv_len = kv_len,
               .block_tables = bt, .max_blocks = nb, .n_logits = all ? n : 1,
               .logit_rows = all ? rows : rows + n - 1};
    model_forward(r->m, &b, r->logits);
    free(pos);
    free(bt);
}

static int ev_argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

// KL(p || q) of softmax(a), softmax(b), in nats.
static double ev_kl(const float *a, const float *b, int n) {
    double ma = -INFINITY, mb = -INFINITY, sa = 0, sb = 0, kl = 0;
    for (int i = 0; i < n; i++) {
        if (a[i] > ma) ma = a[i];
        if (b[i] > mb) mb = b[i];
    }
    for (int i = 0; i < n; i++) {
        sa += exp(a[i] - ma);
        sb += exp(b[i] - mb);
    }
    double la = log(sa), lb = log(sb);
    for (int i = 0; i < n; i++) {
        double lpa = a[i] - ma - la, lpb = b[i] - mb - lb;
        kl += exp(lpa) * (lpa - lpb);
    }
    return kl;
}

typedef struct {
    long positions, agree;
    double kl_sum;
    int greedy_cases, greedy_exact;
    double prefix_sum;
    int greedy_len;
} EvResult;

typedef struct {
    int32_t **chunks;
    int *lens;
    int n;
} EvCorpus;

static int corpus_load(EvCorpus *c, const Tokenizer *tok, char **files, int nf, int ctx,
                       int max_chunks, sl_err *err) {
    memset(c, 0, sizeof *c);
    for (int f = 0; f < nf; f++) {
        size_t len;
        char *text = sl_read_file(files[f], &len, err);
        if (!text) return -1;
        int32_t *ids;
        int n;
        if (tok_encode(tok, text, len, 0, &ids, &n, err)) {
            free(text);
            return -1;
        }
        free(text);
        for (int s = 0; s + 16 <= n && c->n < max_chunks; s += ctx) {
            int k = n - s < ctx ? n - s : ctx;
            c->chunks = realloc(c->chunks, sizeof(int32_t *) * (c->n + 1));
            c->lens = realloc(c->lens, sizeof(int) * (c->n + 1));
            c->chunks[c->n] = sl_malloc(sizeof(int32_t) * k);
            memcpy(c->chunks[c->n], ids + s, sizeof(int32_t) * k);
            c->lens[c->n++] = k;
        }
        free(ids);
    }
    if (c->n == 0) return sl_errf(err, "eval: the corpus gave no chunk of 16 tokens or more");
    return 0;
}

// Teacher-forced over the corpus, greedy over the golden cases.
static void evaluate(EvRunner *ref, EvRunner *cand, const EvCorpus *c, json_t *cases,
                     EvResult *res) {
    memset(res, 0, sizeof *res);
    int V = ref->vocab;
    for (int k = 0; k < c->n; k++) {
        int n = c->lens[k];
        ev_step(ref, c->chunks[k], 0, n, 1);
        ev_step(cand, c->chunks[k], 0, n, 1);
        for (int i = 0; i < n; i++) {
            const float *a = ref->logits + (size_t)i * V, *b = cand->logits + (size_t)i * V;
            res->agree += ev_argmax(a, V) == ev_argmax(b, V);
            res->kl_sum += ev_kl(a, b, V);
            res->positions++;
        }
    }
    for (size_t ci = 0; cases && ci < json_array_size(cases); ci++) {
        json_t *cs = json_array_get(cases, ci);
        json_t *p = json_object_get(cs, "prompt_ids"), *g = json_object_get(cs, "greedy_ids");
        int plen = (int)json_array_size(p), nw = (int)json_array_size(g);
        if (plen < 1 || plen + nw > cand->ctx) continue;
        int32_t *seq = sl_malloc(sizeof(int32_t) * (plen + nw));
        for (int i = 0; i < plen; i++) seq[i] = (int32_t)json_integer_value(json_array_get(p, i));
        ev_step(cand, seq, 0, plen, 0);
        int prefix = -1;
        for (int t = 0; t < nw; t++) {
            int tok = ev_argmax(cand->logits, V);
            if (prefix < 0 && tok != (int)json_integer_value(json_array_get(g, t))) prefix = t;
            seq[plen + t] = tok;
            if (t + 1 < nw) ev_step(cand, seq, plen + t, 1, 0);
        }
        if (prefix < 0) {
            prefix = nw;
            res->greedy_exact++;
        }
        res->prefix_sum += prefix;
        res->greedy_cases++;
        res->greedy_len = nw;
        free(seq);
    }
}

// --arch: random weights of a full-size shape (configs/arch, normal with std
// 0.02 as in `sluice bench`), cut to each of --depths layers. Each FP8 mode
// runs against the same random model in fp32: the relative L2 error of the
// logits at every position, and top-1 agreement. model_init_random draws
// every tensor from its own stream in a fixed order, so a model of depth L
// holds the first L layers of the deeper ones, and the rows show how the
// error grows with depth. CPU backend (FP8 emulated exactly), one sequence of
// --tokens random ids.
typedef struct {
    const char *name;
    int w, k, pt; // FP8 weights, FP8 KV, per-tensor weight scale + static activation scale
} EvMode;

static int ev_random(EvRunner *r, Backend *be, const ModelConfig *cfg, int tokens,
                     const EvMode *md, uint64_t seed, sl_err *err) {
    memset(r, 0, sizeof *r);
    r->be = be;
    r->ctx = tokens;
    ModelOptions mo = {.max_tokens = tokens, .max_seqs = tokens, .tp_size = 1};
    if (md) mo.weight_fp8 = md->w, mo.kv_fp8 = md->k, mo.fp8_per_tensor = md->pt;
    if (model_init_random(&r->m, cfg, be, &mo, seed, err)) return -1;
    model_kv_alloc(r->m, (tokens + 15) / 16 + 1, 16);
    r->vocab = cfg->vocab_size;
    r->logits = sl_malloc(sizeof(float) * (size_t)r->vocab * tokens);
    return 0;
}

static int eval_arch(const char *arch, const char *depths, int tokens, uint64_t seed,
                     int threads, sl_err *err) {
    char *path = cli_find_arch(arch);
    if (!path)
        return sl_errf(err, "--arch %s: no configs/arch/%s.json (run from the source tree or "
                            "set SLUICE_CONFIGS)", arch, arch);
    ModelConfig cfg;
    char *text = sl_read_file(path, NULL, err);
    int bad = !text || config_parse(&cfg, text, NULL, path, err);
    free(text);
    if (bad) {
        free(path);
        return -1;
    }
    int dl[32], nd = 0;
    for (const char *p = depths; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > cfg.n_layers || nd == 32 || (*end && *end != ',')) {
            sl_errf(err, "--depths '%s': want up to 32 comma-separated layer counts in "
                         "1..%d (%s has %d layers)", depths, cfg.n_layers, arch, cfg.n_layers);
            free(path);
            return -1;
        }
        dl[nd++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (nd == 0) {
        free(path);
        return sl_errf(err, "--depths: empty list");
    }
    if (tokens > cfg.max_seq_len) tokens = cfg.max_seq_len;
    cfg.max_seq_len = tokens; // per-step buffers for this run only
    int32_t *ids = sl_malloc(sizeof(int32_t) * tokens);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < tokens; i++) { // xorshift64: ids in [3, vocab)
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = 3 + (int32_t)(x % (uint64_t)(cfg.vocab_size - 3));
    }
    static const EvMode modes[] = {
        {"FP8 KV cache (scale 1)", 0, 1, 0},
        {"FP8 weights, per-channel + dynamic per-token activations", 1, 0, 0},
        {"FP8 weights, per-tensor + static activation scale 8/448", 1, 0, 1},
        {"full FP8 (per-tensor weights + KV)", 1, 1, 1},
    };
    Backend *be = backend_cpu_create(threads);
    printf("sluice eval: random weights of %s (%s), cut to depth L; %d random token ids, "
           "seed %llu; reference: the same weights in fp32; cpu backend (FP8 emulated "
           "exactly)\n\n| depth L | mode | logits rel L2, mean over positions | max | top-1 "
           "agreement |\n|---|---|---|---|---|\n",
           arch, path, tokens, (unsigned long long)seed);
    float *ref = sl_malloc(sizeof(float) * (size_t)cfg.vocab_size * tokens);
    int rc = 0;
    for (int d = 0; d < nd && !rc; d++) {
        ModelConfig c = cfg;
        c.n_layers = dl[d];
        EvRunner r;
        if (ev_random(&r, be, &c, tokens, NULL, seed, err)) {
            rc = -1;
            break;
        }
        ev_step(&r, ids, 0, tokens, 1);
        memcpy(ref, r.logits, sizeof(float) * (size_t)cfg.vocab_size * tokens);
        ev_close(&r);
        for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
            if (ev_random(&r, be, &c, tokens, &modes[mi], seed, err)) {
                rc = -1;
                break;
            }
            ev_step(&r, ids, 0, tokens, 1);
            double sum = 0, worst = 0;
            int agree = 0;
            for (int t = 0; t < tokens; t++) {
                const float *a = r.logits + (size_t)t * r.vocab, *b = ref + (size_t)t * r.vocab;
                double num = 0, den = 0;
                for (int v = 0; v < r.vocab; v++) {
                    double e = (double)a[v] - b[v];
                    num += e * e;
                    den += (double)b[v] * b[v];
                }
                double rel = sqrt(num / (den > 0 ? den : 1));
                sum += rel;
                if (!(rel <= worst)) worst = rel; // NaN sticks
                agree += ev_argmax(a, r.vocab) == ev_argmax(b, r.vocab);
            }
            printf("| %d | %s | %.2e | %.2e | %d/%d |\n", dl[d], modes[mi].name, sum / tokens,
                   worst, agree, tokens);
            fflush(stdout);
            ev_close(&r);
        }
    }
    free(ref);
    free(ids);
    free(path);
    be->destroy(be);
    return rc;
}

static void eval_usage(FILE *f) {
    fprintf(f,
        "usage: sluice eval --model DIR --corpus FILE [--corpus FILE ...] [options]\n"
        "       sluice eval --arch NAME [--depths 1,2,4] [--tokens N] [--seed S]\n"
        "\n"
        "Accuracy of --dtype / --kv-dtype against the BF16 checkpoint computed in fp32 on\n"
        "the CPU: teacher-forced top-1 agreement and mean KL over the corpus, greedy\n"
        "continuations of the golden prompts (DIR/golden_greedy.json when present).\n"
        "\n"
        "  --dtype T          bf16 (default) or fp8: the candidate's linear layers\n"
        "  --kv-dtype T       auto (default) or fp8: the candidate's KV cache\n"
        "  --table            evaluate FP8 KV, FP8 weights and both; print a markdown table\n"
        "  --candidate DIR    evaluate this checkpoint (e.g. an FP8 one from sluice quantize)\n"
        "                     against --model (default: --model itself)\n"
        "  --backend NAME     the candidate's backend: cpu (default, FP8 emulated exactly)\n"
        "                     or cuda\n"
        "  --ctx N            tokens per teacher-forced chunk (default 256)\n"
        "  --max-chunks N     at most N chunks (default 64)\n"
        "  --golden FILE      golden greedy file (default DIR/golden_greedy.json)\n"
        "  --threads N        CPU threads\n"
        "\n"
        "With --arch: random weights (normal, std 0.02) of configs/arch/NAME.json cut to\n"
        "each --depths layer count; the relative logits error and top-1 agreement of the\n"
        "FP8 modes against the same weights in fp32, on the CPU (FP8 emulated exactly).\n"
        "  --depths LIST      comma-separated layer counts (default 1,2,4)\n"
        "  --tokens N         random prompt length (default 32)\n"
        "  --seed S           seed of the weights and the prompt (default 1)\n");
}

int cli_eval(int argc, char **argv, Comm *comm) {
    enum { E_MODEL = 1000, E_CORPUS, E_DTYPE, E_KV, E_TABLE, E_BACKEND, E_CTX, E_MAXC, E_GOLDEN,
           E_THREADS, E_CAND, E_ARCH, E_DEPTHS, E_TOKENS, E_SEED, E_HELP };
    static const struct option lo[] = {
        {"model", required_argument, 0, E_MODEL},   {"corpus", required_argument, 0, E_CORPUS},
        {"dtype", required_argument, 0, E_DTYPE},   {"kv-dtype", required_argument, 0, E_KV},
        {"table", no_argument, 0, E_TABLE},         {"backend", required_argument, 0, E_BACKEND},
        {"ctx", required_argument, 0, E_CTX},       {"max-chunks", required_argument, 0, E_MAXC},
        {"golden", required_argument, 0, E_GOLDEN}, {"threads", required_argument, 0, E_THREADS},
        {"candidate", required_argument, 0, E_CAND}, {"arch", required_argument, 0, E_ARCH},
        {"depths", required_argument, 0, E_DEPTHS}, {"tokens", required_argument, 0, E_TOKENS},
        {"seed", required_argument, 0, E_SEED},
        {"help", no_argument, 0, E_HELP},           {0, 0, 0, 0},
    };
    const char *cand_dir = NULL;
    const char *dir = NULL, *dtype = "bf16", *kv = "auto", *backend = "cpu", *golden = NULL;
    char *corpus[EV_MAX_CORPUS];
    int nc = 0, table = 0;
    long ctx = 256, maxc = 64, threads = 0, tokens = 32, seed = 1;
    const char *arch = NULL, *depths = "1,2,4";
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", lo, NULL);
        if (c == -1) break;
        switch (c) {
        case E_MODEL: dir = optarg; break;
        case E_CORPUS:
            if (nc == EV_MAX_CORPUS) {
                fprintf(stderr, "sluice eval: at most %d --corpus files\n", EV_MAX_CORPUS);
                return EXIT_USAGE;
            }
            corpus[nc++] = optarg;
            break;
        case E_DTYPE: dtype = optarg; break;
        case E_KV: kv = optarg; break;
        case E_TABLE: table = 1; break;
        case E_BACKEND: backend = optarg; break;
        case E_CTX: if (cli_int("eval", "--ctx", optarg, 16, 4096, &ctx)) return EXIT_USAGE; break;
        case E_MAXC: if (cli_int("eval", "--max-chunks", optarg, 1, 1 << 20, &maxc)) return EXIT_USAGE; break;
        case E_GOLDEN: golden = optarg; break;
        case E_CAND: cand_dir = optarg; break;
        case E_ARCH: arch = optarg; break;
        case E_DEPTHS: depths = optarg; break;
        case E_TOKENS: if (cli_int("eval", "--tokens", optarg, 1, 4096, &tokens)) return EXIT_USAGE; break;
        case E_SEED: if (cli_int("eval", "--seed", optarg, 0, 1L << 40, &seed)) return EXIT_USAGE; break;
        case E_THREADS: if (cli_int("eval", "--threads", optarg, 1, 4096, &threads)) return EXIT_USAGE; break;
        case E_HELP: eval_usage(stdout); return EXIT_OK;
        default:
            fprintf(stderr, "sluice eval: unknown option '%s' (try --help)\n", argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (arch) {
        if (dir || nc) {
            fprintf(stderr, "sluice eval: --arch makes its own random model; it takes no "
                            "--model or --corpus\n");
            return EXIT_USAGE;
        }
        sl_err aerr = {{0}};
        if (eval_arch(arch, depths, (int)tokens, (uint64_t)seed, (int)threads, &aerr)) {
            fprintf(stderr, "sluice eval: %s\n", aerr.msg);
            return EXIT_FAIL;
        }
        (void)comm;
        return EXIT_OK;
    }
    if (!cand_dir) cand_dir = dir;
    if (!dir || nc == 0) {
        fprintf(stderr, "sluice eval: --model and at least one --corpus are required\n");
        return EXIT_USAGE;
    }
    CliDtype dt;
    if (cli_dtype("eval", dtype, kv, &dt)) return EXIT_USAGE;
    if (dt.act_f32) {
        fprintf(stderr, "sluice eval: --dtype f32 is the reference itself\n");
        return EXIT_USAGE;
    }
    sl_err err = {{0}};
    int rc = EXIT_FAIL;
    Tokenizer *tok = NULL;
    EvCorpus cor = {0};
    json_t *groot = NULL, *cases = NULL;
    Backend *rbe = backend_cpu_create((int)threads), *cbe = NULL;
    EvRunner ref = {0}, cand = {0};
    if (tok_load_dir(&tok, dir, &err)) goto fail;
    if (corpus_load(&cor, tok, corpus, nc, (int)ctx, (int)maxc, &err)) goto fail;
    char gpath[4096];
    snprintf(gpath, sizeof gpath, "%s/golden_greedy.json", dir);
    json_error_t je;
    groot = json_load_file(golden ? golden : gpath, 0, &je);
    if (!groot && golden) {
        sl_errf(&err, "%s: %s", golden, je.text);
        goto fail;
    }
    cases = groot ? json_object_get(groot, "cases") : NULL;
    if (ev_open(&ref, rbe, dir, (int)ctx, 0, 0, &err)) goto fail;
    cbe = !strcmp(backend, "cpu") ? rbe : cli_backend_create(backend, (int)threads, 0, &err);
    if (!cbe) goto fail;

    struct { const char *name; int w, k; } modes[3] = {
        {"FP8 KV cache only", 0, 1}, {"FP8 weights + activations", 1, 0}, {"full FP8", 1, 1}};
    int first = 0, last = 2;
    if (!table) {
        modes[0].name = "candidate";
        modes[0].w = dt.weight_fp8;
        modes[0].k = dt.kv_fp8;
        last = 0;
    }
    long toks = 0;
    for (int k = 0; k < cor.n; k++) toks += cor.lens[k];
    printf("sluice eval: reference %s (bf16 weights in fp32, cpu backend); candidate %s on the "
           "%s backend\ncorpus: %d files, %d chunks, %ld positions (ctx %ld); greedy: %d golden "
           "prompts\n\n",
           dir, cand_dir, cbe->name, nc, cor.n, toks, ctx, cases ? (int)json_array_size(cases) : 0);
    printf("| mode | backend | top-1 agreement | mean KL (nats) | greedy exact | mean agreeing "
           "prefix |\n|---|---|---|---|---|---|\n");
    for (int i = first; i <= last; i++) {
        if (ev_open(&cand, cbe, cand_dir, (int)ctx, modes[i].w, modes[i].k, &err)) goto fail;
        EvResult r;
        evaluate(&ref, &cand, &cor, cases, &r);
        printf("| %s | %s | %.2f%% (%ld/%ld) | %.2e | %d/%d | %.1f of %d |\n", modes[i].name,
               cbe->name, 100.0 * r.agree / (double)r.positions, r.agree, r.positions,
               r.kl_sum / (double)r.positions, r.greedy_exact, r.greedy_cases,
               r.greedy_cases ? r.prefix_sum / r.greedy_cases : 0.0, r.greedy_len);
        fflush(stdout);
        ev_close(&cand);
        memset(&cand, 0, sizeof cand);
    }
    rc = EXIT_OK;
fail:
    if (rc != EXIT_OK) fprintf(stderr, "sluice eval: %s\n", err.msg);
    if (ref.m) ev_close(&ref);
    if (cand.m) ev_close(&cand);
    for (int k = 0; k < cor.n; k++) free(cor.chunks[k]);
    free(cor.chunks);
    free(cor.lens);
    if (groot) json_decref(groot);
    if (tok) tok_free(tok);
    if (cbe && cbe != rbe) cbe->destroy(cbe);
    rbe->destroy(rbe);
    (void)comm;
    return rc;
}
