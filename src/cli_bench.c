// cli_bench.c: `sluice bench`: throughput of the whole engine on synthetic
// requests with fixed input/output lengths (like trtllm-bench with a
// zero-deviation token distribution: every request has --isl prompt tokens
// and generates exactly --osl tokens, eos ignored), against a checkpoint or
// against random weights of a real architecture's shapes (configs/arch).
//
// It prints a short table and writes the same figures as JSON: output
// tokens/s, requests/s, TTFT / TPOT percentiles, memory used, the batch sizes
// reached, and the fraction of the compute roofline (the output tokens/s the
// GPU's peak matrix rate would allow: peak / (2 * matmul params * (isl+osl)/osl)).
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "h5io.h"
#include "model.h"

static void bench_usage(FILE *f) {
    fprintf(f,
        "usage: sluice bench (--arch NAME | --model DIR) [options]\n"
        "\n"
        "Runs --requests synthetic requests of --isl random prompt tokens, each generating\n"
        "exactly --osl tokens, and reports throughput and latency.\n"
        "\n"
        "  --arch NAME            random weights (normal, std 0.02) of configs/arch/NAME.json's\n"
        "                         shapes, generated on the device; NAME may be a path to a json\n"
        "  --model DIR            a Hugging Face checkpoint instead\n"
        "  --isl N                input tokens per request (default 128)\n"
        "  --osl N                output tokens per request (default 128)\n"
        "  --requests N           number of requests (default 1000)\n"
        "  --seed S               seed of the prompts and random weights (default 1)\n"
        "  --backend NAME         auto (default), cpu, cuda\n"
        "  --dtype T              auto/bf16 (default), f32, fp8 (FP8 E4M3 linear layers; with\n"
        "                         --arch generated and quantised on the device), int4 (--arch\n"
        "                         only: group-wise INT4 with zero points, W4A16, random nibbles\n"
        "                         made on the device)\n"
        "  --int4-group G         group size of --dtype int4 (default 128)\n"
        "  --fp8-per-tensor       --dtype fp8 with one scale per weight and a static\n"
        "                         activation scale (as TensorRT-LLM / ModelOpt FP8\n"
        "                         checkpoints); default: per-channel weights, per-token\n"
        "                         dynamic activations\n"
        "  --kv-dtype T           auto (the activation dtype) or fp8 (E4M3 KV cache, scale 1)\n"
        "  --max-batch N          sequences per step (default 256)\n"
        "  --max-num-tokens N     token rows per step (default 8192)\n"
        "  --kv-block-size N      tokens per KV block (default 32)\n"
        "  --kv-blocks N          KV pool size in blocks (default: --kv-fraction / --kv-mem-gb)\n"
        "  --kv-fraction F        GPU KV pool share of free memory (default 0.90)\n"
        "  --kv-mem-gb G          CPU KV pool budget (default 1)\n"
        "  --sched POLICY         preempt (default) or reserve\n"
        "  --peak-tflops F        matrix peak used for the roofline fraction (default 810,\n"
        "                         twice that with --dtype fp8,\n"
        "                         the BF16 GEMM rate measured on an H200 here)\n"
        "  --threads N            CPU threads\n"
        "  --tp T                 tensor-parallel ranks (start the job with mpirun -np T);\n"
        "                         the roofline then counts T GPUs\n"
        "  --cuda-graphs on|off   replay decode steps from CUDA graphs (default on; cuda only)\n"
        "  --output FILE          also write the results as JSON\n"
        "  --warmup N             untimed requests (same isl, 2 output tokens) run first;\n"
        "                         default: enough to fill one step of --max-num-tokens\n"
        "                         (at most --requests), so one-time work (GEMM plans, kernel\n"
        "                         loading) stays out of the timing; 0: none\n"
        "  -v, --verbose          debug logging (e.g. the GEMM tuner's choices)\n");
}

static double matmul_params(const ModelConfig *c) {
    double qkv = (double)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim * c->dim;
    double o = (double)c->n_heads * c->head_dim * c->dim;
    double mlp = (c->gated ? 3.0 : 2.0) * c->dim * c->hidden_dim; // gate+up+down or up+down
    return c->n_layers * (qkv + o + mlp) + (double)c->vocab_size * c->dim;
}

enum {
    B_ARCH = 1000, B_MODEL, B_ISL, B_OSL, B_REQ, B_SEED, B_BACKEND, B_MAXB, B_MAXT, B_BLOCK,
    B_KVB, B_KVF, B_KVM, B_SCHED, B_PEAK, B_THREADS, B_OUT, B_TP, B_HELP, B_DTYPE, B_GROUP,
    B_KV_DTYPE, B_GRAPHS, B_FP8_PT, B_WARMUP, B_VERBOSE = 'v'
};

int cli_bench(int argc, char **argv, Comm *comm) {
    static const struct option longopts[] = {
        {"arch", required_argument, 0, B_ARCH},
        {"model", required_argument, 0, B_MODEL},
        {"isl", required_argument, 0, B_ISL},
        {"osl", required_argument, 0, B_OSL},
        {"requests", required_argument, 0, B_REQ},
        {"seed", required_argument, 0, B_SEED},
        {"backend", required_argument, 0, B_BACKEND},
        {"dtype", required_argument, 0, B_DTYPE},
        {"kv-dtype", required_argument, 0, B_KV_DTYPE},
        {"max-batch", required_argument, 0, B_MAXB},
        {"max-num-tokens", required_argument, 0, B_MAXT},
        {"kv-block-size", required_argument, 0, B_BLOCK},
        {"kv-blocks", required_argument, 0, B_KVB},
        {"kv-fraction", required_argument, 0, B_KVF},
        {"kv-mem-gb", required_argument, 0, B_KVM},
        {"sched", required_argument, 0, B_SCHED},
        {"peak-tflops", required_argument, 0, B_PEAK},
        {"threads", required_argument, 0, B_THREADS},
        {"cuda-graphs", required_argument, 0, B_GRAPHS},
        {"verbose", no_argument, 0, B_VERBOSE},
        {"warmup", required_argument, 0, B_WARMUP},
        {"fp8-per-tensor", no_argument, 0, B_FP8_PT},
        {"output", required_argument, 0, B_OUT},
        {"tp", required_argument, 0, B_TP},
        {"dtype", required_argument, 0, B_DTYPE},
        {"int4-group", required_argument, 0, B_GROUP},
        {"help", no_argument, 0, B_HELP},
        {0, 0, 0, 0},
    };
    const char *arch = NULL, *model_dir = NULL, *backend = "auto", *out = NULL;
    long isl = 128, osl = 128, nreq = 1000, seed = 1, threads = 0, kv_blocks = 0, tp = 1, v;
    long warmup = -1; // -1: one step's worth (see --warmup)
    const char *dtype = "auto", *kv_dtype = "auto";
    CliDtype dt;
    long int4_group = 128;
    int fp8_per_tensor = 0;
    double kv_fraction = 0.90, kv_mem_gb = 1.0, peak = 810.0;
    int peak_set = 0;
    EngineOptions eo;
    engine_options_defaults(&eo);
    const char *C = "bench";
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "v", longopts, NULL);
        if (c == -1) break;
        switch (c) {
        case B_ARCH: arch = optarg; break;
        case B_GRAPHS:
            if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
                fprintf(stderr, "sluice bench: --cuda-graphs: '%s' is not one of on, off\n",
                        optarg);
                return EXIT_USAGE;
            }
            eo.cuda_graphs = strcmp(optarg, "on") == 0;
            break;
        case B_MODEL: model_dir = optarg; break;
        case B_ISL: if (cli_int(C, "--isl", optarg, 1, 1 << 20, &isl)) return EXIT_USAGE; break;
        case B_OSL: if (cli_int(C, "--osl", optarg, 1, 1 << 20, &osl)) return EXIT_USAGE; break;
        case B_REQ: if (cli_int(C, "--requests", optarg, 1, 1L << 30, &nreq)) return EXIT_USAGE; break;
        case B_SEED: if (cli_int(C, "--seed", optarg, 0, 1L << 62, &seed)) return EXIT_USAGE; break;
        case B_BACKEND:
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "sluice bench: --backend: '%s' is not one of auto, cpu, cuda\n",
                        optarg);
                return EXIT_USAGE;
            }
            backend = optarg;
            break;
        case B_MAXB:
            if (cli_int(C, "--max-batch", optarg, 1, 1 << 16, &v)) return EXIT_USAGE;
            eo.max_batch = (int)v;
            break;
        case B_MAXT:
            if (cli_int(C, "--max-num-tokens", optarg, 1, 1 << 22, &v)) return EXIT_USAGE;
            eo.max_tokens = (int)v;
            break;
        case B_BLOCK:
            if (cli_int(C, "--kv-block-size", optarg, 1, 4096, &v)) return EXIT_USAGE;
            if (v & (v - 1)) {
                fprintf(stderr, "sluice bench: --kv-block-size: %ld is not a power of two\n", v);
                return EXIT_USAGE;
            }
            eo.block_size = (int)v;
            break;
        case B_KVB: if (cli_int(C, "--kv-blocks", optarg, 1, 1L << 30, &kv_blocks)) return EXIT_USAGE; break;
        case B_KVF: if (cli_float(C, "--kv-fraction", optarg, 0.01, 0.99, &kv_fraction)) return EXIT_USAGE; break;
        case B_KVM: if (cli_float(C, "--kv-mem-gb", optarg, 1e-6, 1e6, &kv_mem_gb)) return EXIT_USAGE; break;
        case B_SCHED:
            if (!strcmp(optarg, "reserve")) eo.policy = SCHED_RESERVE;
            else if (!strcmp(optarg, "preempt")) eo.policy = SCHED_PREEMPT;
            else {
                fprintf(stderr, "sluice bench: --sched: '%s' is not one of reserve, preempt\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case B_PEAK: if (cli_float(C, "--peak-tflops", optarg, 1e-3, 1e6, &peak)) return EXIT_USAGE; peak_set = 1; break;
        case B_THREADS: if (cli_int(C, "--threads", optarg, 1, 4096, &threads)) return EXIT_USAGE; break;
        case B_OUT: out = optarg; break;
        case B_VERBOSE: sl_log_set_level(LOG_DEBUG); break;
        case B_WARMUP: if (cli_int(C, "--warmup", optarg, 0, 1L << 30, &warmup)) return EXIT_USAGE; break;
        case B_TP: if (cli_int(C, "--tp", optarg, 1, 1 << 16, &tp)) return EXIT_USAGE; break;
        case B_GROUP:
            if (cli_int(C, "--int4-group", optarg, 32, 1 << 20, &int4_group)) return EXIT_USAGE;
            if (int4_group % 32) {
                fprintf(stderr, "sluice bench: --int4-group: %ld is not a multiple of 32\n",
                        int4_group);
                return EXIT_USAGE;
            }
            break;
        case B_HELP: bench_usage(stdout); return EXIT_OK;
        case B_DTYPE: dtype = optarg; break;
        case B_KV_DTYPE: kv_dtype = optarg; break;
        case B_FP8_PT: fp8_per_tensor = 1; break;
        default:
            fprintf(stderr, "sluice bench: option '%s' is unknown or lacks its value\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluice bench: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!arch == !model_dir) {
        fprintf(stderr, "sluice bench: give exactly one of --arch NAME or --model DIR "
                        "(try 'sluice bench --help')\n");
        return EXIT_USAGE;
    }
    if (tp != comm->size) {
        fprintf(stderr, "sluice bench: --tp %ld needs exactly %ld ranks (this job has %d); "
                        "bench runs one replica\n", tp, tp, comm->size);
        return EXIT_USAGE;
    }
    if (tp > 1) {
        char why[256];
        if (comm_setup_groups(comm, (int)tp, why, sizeof why)) {
            fprintf(stderr, "sluice bench: %s\n", why);
            return EXIT_USAGE;
        }
        if (comm->tp_rank != 0 && sl_log_level() == LOG_INFO) sl_log_set_level(LOG_WARN);
    }

    int int4 = !strcmp(dtype, "int4");
    if (!int4 && strcmp(dtype, "auto") && strcmp(dtype, "bf16") && strcmp(dtype, "f32") &&
        strcmp(dtype, "fp32") && strcmp(dtype, "fp8")) {
        fprintf(stderr, "sluice bench: --dtype: '%s' is not one of auto, bf16, f32, fp8, int4\n",
                dtype);
        return EXIT_USAGE;
    }
    if (int4 && model_dir) {
        fprintf(stderr, "sluice bench: --dtype int4 makes random weights of --arch; with --model "
                        "the checkpoint's own format is used (an AWQ checkpoint runs INT4)\n");
        return EXIT_USAGE;
    }

    sl_err err = {{0}};
    int rc = EXIT_FAIL;
    void *tp_state = NULL;
    Backend *be = NULL;
    Model *m = NULL;
    char *arch_path = NULL;
    char *json_text = NULL;
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    EngineStats st;
    memset(&st, 0, sizeof st);
    ModelConfig cfg;
    eo.ignore_eos = 1;
    eo.max_new_tokens = (int)osl;
    eo.progress_every = 10;

    if (arch) {
        arch_path = cli_find_arch(arch);
        if (!arch_path) {
            sl_errf(&err, "--arch %s: no configs/arch/%s.json (run from the source tree or set "
                          "SLUICE_CONFIGS)", arch, arch);
            goto fail;
        }
        json_text = sl_read_file(arch_path, NULL, &err);
        if (!json_text || config_parse(&cfg, json_text, NULL, arch_path, &err)) goto fail;
    } else if (config_load(&cfg, model_dir, &err)) {
        goto fail;
    }
    if (isl + osl > cfg.max_seq_len) {
        sl_errf(&err, "--isl %ld + --osl %ld exceeds the model's context of %d tokens", isl, osl,
                cfg.max_seq_len);
        goto fail;
    }
    eo.max_seq_len = (int)(isl + osl);
    cfg.max_seq_len = (int)(isl + osl); // size per-step buffers for this run only
    if (cli_dtype("bench", int4 ? "bf16" : dtype, kv_dtype, &dt)) return EXIT_USAGE;
    // FP8 GEMMs run at twice the BF16 rate on Hopper
    if (dt.weight_fp8 && !peak_set) peak *= 2.0;
    be = cli_backend_create_dt(backend, (int)threads, comm->local_rank, &dt, &err);
    if (!be) goto fail;
    size_t free0 = be->mem_free(be);
    double t_load = sl_now();
    ModelOptions mo = {.max_tokens = eo.max_tokens, .max_seqs = eo.max_batch,
                       .weight_fp8 = dt.weight_fp8, .kv_fp8 = dt.kv_fp8,
                       .fp8_per_tensor = fp8_per_tensor};
    if (cli_tp_attach(comm, be, &mo, &eo, &tp_state, &err)) goto fail;
    if (int4) {
        int g = (int)int4_group, qd = cfg.n_heads * cfg.head_dim;
        if (cfg.dim % g || qd % g || cfg.hidden_dim % g) {
            sl_errf(&err, "--int4-group %d does not divide the layers' input sizes (%d, %d, %d) "
                    "of %s", g, cfg.dim, qd, cfg.hidden_dim, arch_path);
            goto fail;
        }
        mo.int4_group = g;
    }
    if (arch ? model_init_random(&m, &cfg, be, &mo, (uint64_t)seed, &err)
             : model_load(&m, model_dir, be, &mo, &err))
        goto fail;
    m->cfg.max_seq_len = (int)(isl + osl);
    if (cli_size_kv(m, &eo, kv_blocks, kv_mem_gb, kv_fraction, &err)) goto fail;
    cli_tp_agree_kv(comm, &eo);
    model_kv_alloc(m, eo.kv_blocks, eo.block_size);
    t_load = sl_now() - t_load;
    size_t used = free0 - be->mem_free(be);

    // synthetic prompts: random ids (never special ids 0..2), fixed length
    ps.n = nreq;
    ps.n_tokens = nreq * isl;
    ps.tokens = sl_malloc(sizeof(int32_t) * ps.n_tokens);
    ps.offsets = sl_malloc(sizeof(int64_t) * (nreq + 1));
    uint64_t r = (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < ps.n_tokens; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        ps.tokens[i] = 3 + (int32_t)(r % (uint64_t)(cfg.vocab_size - 3));
    }
    for (int64_t i = 0; i <= nreq; i++) ps.offsets[i] = i * isl;

    char desc[256];
    config_describe(&m->cfg, desc, sizeof desc);
    LOGI("bench %s on %s: %s", arch ? arch_path : model_dir, be->name, desc);
    LOGI("%ld requests, isl %ld, osl %ld; KV pool %d blocks x %d; max batch %d, max tokens %d",
         nreq, isl, osl, eo.kv_blocks, eo.block_size, eo.max_batch, eo.max_tokens);
    // warm-up: the first prompts, 2 output tokens each, untimed
    if (warmup < 0) warmup = (eo.max_tokens + isl - 1) / isl;
    if (warmup > nreq) warmup = nreq;
    double t_warm = sl_now();
    if (warmup > 0) {
        PromptSet wps = ps;
        wps.n = warmup;
        wps.n_tokens = warmup * isl;
        EngineOptions wo = eo;
        wo.max_new_tokens = osl < 2 ? (int)osl : 2;
        wo.progress_every = 0;
        EngineStats wst;
        memset(&wst, 0, sizeof wst);
        int wrc = engine_run(m, &wps, NULL, wps.n, &wo, NULL, &wst, &err);
        engine_stats_free(&wst);
        if (wrc) goto fail;
    }
    t_warm = sl_now() - t_warm;
    if (engine_run(m, &ps, NULL, ps.n, &eo, NULL, &st, &err)) goto fail;

    double secs = st.seconds > 0 ? st.seconds : 1e-9;
    double tok_s = st.output_tokens / secs;
    double flops_per_tok = 2.0 * matmul_params(&m->cfg) * (double)(isl + osl) / (double)osl;
    double bound = peak * tp * 1e12 / flops_per_tok;
    if (comm->rank != 0) { // one report per job: the group's rank 0 writes it
        rc = EXIT_OK;
        goto fail;
    }
    printf("\nsluice bench: %s, %s backend, %s weights, isl %ld osl %ld, %ld requests, tp %ld\n",
           arch ? arch : model_dir, be->name, int4 ? "int4 (W4A16)" : dt.name, isl, osl, nreq, tp);
    printf("  output tokens/s      %10.1f   (compute roofline %.0f at %.0f TFLOP/s: %.1f%%)\n",
           tok_s, bound, peak, 100.0 * tok_s / bound);
    printf("  requests/s           %10.2f\n", st.n_ok / secs);
    printf("  TTFT s  p50/p90/p99  %10.4f %.4f %.4f\n", engine_percentile(st.ttft_s, st.n_lat, 50),
           engine_percentile(st.ttft_s, st.n_lat, 90), engine_percentile(st.ttft_s, st.n_lat, 99));
    printf("  TPOT s  p50/p90/p99  %10.5f %.5f %.5f\n", engine_percentile(st.tpot_s, st.n_lat, 50),
           engine_percentile(st.tpot_s, st.n_lat, 90), engine_percentile(st.tpot_s, st.n_lat, 99));
    printf("  max batch / tokens   %10d / %d per step, %ld steps, %ld preemptions\n",
           st.max_seqs_seen, st.max_rows_seen, st.steps, st.preemptions);
    printf("  memory used          %10.2f GiB per rank (weights, activations, KV pool)\n",
           used / 1073741824.0);
    printf("  wall                 %10.2f s (+ %.2f s setup, %.2f s warm-up of %ld requests)\n",
           st.seconds, t_load, t_warm, warmup);
    int graphs_used = st.graph_steps > 0;
    if (graphs_used)
        printf("  CUDA graphs          %10s (%ld captured; %ld of %ld steps replayed)\n", "used",
               st.graph_captures, st.graph_steps, st.steps);
    else
        printf("  CUDA graphs          %10s\n",
               be->graph_begin ? (eo.cuda_graphs ? "not used" : "off") : "n/a");
    if (out) {
        json_t *j = json_pack(
            "{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:{s:f,s:f,s:f},s:{s:f,s:f,s:f},"
            "s:i,s:i,s:I,s:I,s:f,s:f,s:i,s:i,s:i,s:I}",
            "model", arch ? arch : model_dir, "backend", be->name, "dtype",
            int4 ? "int4" : dt.name, "kv_dtype", dt.kv_fp8 ? "fp8" : "auto", "isl",
            (json_int_t)isl, "osl", (json_int_t)osl, "requests", (json_int_t)nreq,
            "output_tokens_per_s", tok_s, "requests_per_s", st.n_ok / secs, "roofline_tokens_per_s",
            bound, "roofline_fraction", tok_s / bound, "peak_tflops", peak, "ttft_s", "p50",
            engine_percentile(st.ttft_s, st.n_lat, 50), "p90",
            engine_percentile(st.ttft_s, st.n_lat, 90), "p99",
            engine_percentile(st.ttft_s, st.n_lat, 99), "tpot_s", "p50",
            engine_percentile(st.tpot_s, st.n_lat, 50), "p90",
            engine_percentile(st.tpot_s, st.n_lat, 90), "p99",
            engine_percentile(st.tpot_s, st.n_lat, 99), "max_batch_seen", st.max_seqs_seen,
            "max_step_tokens_seen", st.max_rows_seen, "steps", (json_int_t)st.steps, "preemptions",
            (json_int_t)st.preemptions, "memory_used_gib", used / 1073741824.0, "seconds",
            st.seconds, "max_batch", eo.max_batch, "max_num_tokens", eo.max_tokens, "kv_blocks",
            eo.kv_blocks, "tp", (json_int_t)tp);
        if (!j) {
            sl_errf(&err, "%s: cannot build the JSON report", out);
            goto fail;
        }
        json_object_set_new(j, "warmup_requests", json_integer(warmup));
        json_object_set_new(j, "warmup_s", json_real(t_warm));
        json_object_set_new(j, "cuda_graphs", json_boolean(graphs_used));
        json_object_set_new(j, "cuda_graph_captures", json_integer(st.graph_captures));
        json_object_set_new(j, "cuda_graph_steps", json_integer(st.graph_steps));
        if (json_dump_file(j, out, JSON_INDENT(2))) {
            json_decref(j);
            sl_errf(&err, "%s: cannot write: %s", out, strerror(errno));
            goto fail;
        }
        json_decref(j);
    }
    rc = EXIT_OK;
fail:
    if (rc != EXIT_OK) {
        fprintf(stderr, "sluice bench: error: %s\n", err.msg);
        if (comm->size > 1) comm_abort(comm, EXIT_FAIL); // no rank left in a collective
    }
    free(ps.tokens);
    free(ps.offsets);
    free(arch_path);
    free(json_text);
    engine_stats_free(&st);
    model_free(m);
    cli_tp_detach(be, tp_state);
    if (be) be->destroy(be);
    return rc;
}
