// cli_quantize.c: `sluice quantize`: writes a quantised checkpoint.
//
// One dispatch, one writer per scheme:
//   --fp8        FP8 E4M3 (quant_write_fp8, quant_fp8_write.c)
//   (--int4-awq  INT4 AWQ goes here: add its flag to QuantScheme, parse its
//                options below, and call its writer in the switch.)
// Options every scheme shares (--model, --output, --calib, --backend,
// --threads) are parsed once and handed over in QuantJob.
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "quant.h"

static void quantize_usage(FILE *f) {
    fprintf(f,
        "usage: sluice quantize --fp8 --model DIR --output OUTDIR [options]\n"
        "\n"
        "Writes a quantised copy of the Hugging Face checkpoint in DIR to OUTDIR\n"
        "(config.json with quantization_config, model.safetensors, tokenizer files).\n"
        "\n"
        "schemes (one):\n"
        "  --fp8                  FP8 E4M3 linear layers (lm_head and embeddings stay bf16)\n"
        "options:\n"
        "  --model DIR            the source checkpoint (bf16/fp16/fp32)\n"
        "  --output DIR           where to write (created; existing files are overwritten)\n"
        "  --format F             compressed-tensors (default) or modelopt\n"
        "  --per-tensor           one weight scale per tensor (default: per output channel;\n"
        "                         modelopt is always per tensor)\n"
        "  --calib PROMPTS.h5     run these prompts (prefill) to collect activation ranges:\n"
        "                         static input scales (absmax / 448) and KV cache scales;\n"
        "                         without it activations are dynamic per token and no KV\n"
        "                         scales are written\n"
        "  --calib-max N          use at most N prompts (default 64)\n"
        "  --threads N            CPU threads\n");
}

int cli_quantize(int argc, char **argv, Comm *comm) {
    enum { Q_FP8 = 1000, Q_MODEL, Q_OUTPUT, Q_FORMAT, Q_PER_TENSOR, Q_CALIB, Q_CALIB_MAX,
           Q_THREADS, Q_HELP };
    static const struct option lo[] = {
        {"fp8", no_argument, 0, Q_FP8},
        {"model", required_argument, 0, Q_MODEL},
        {"output", required_argument, 0, Q_OUTPUT},
        {"format", required_argument, 0, Q_FORMAT},
        {"per-tensor", no_argument, 0, Q_PER_TENSOR},
        {"calib", required_argument, 0, Q_CALIB},
        {"calib-max", required_argument, 0, Q_CALIB_MAX},
        {"threads", required_argument, 0, Q_THREADS},
        {"help", no_argument, 0, Q_HELP},
        {0, 0, 0, 0},
    };
    QuantJob job = {.calib_max = 64};
    QuantScheme scheme = QUANT_NONE;
    const char *format = "compressed-tensors";
    long v;
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", lo, NULL);
        if (c == -1) break;
        switch (c) {
        case Q_FP8: scheme = QUANT_FP8; break;
        case Q_MODEL: job.model_dir = optarg; break;
        case Q_OUTPUT: job.out_dir = optarg; break;
        case Q_FORMAT: format = optarg; break;
        case Q_PER_TENSOR: job.per_tensor = 1; break;
        case Q_CALIB: job.calib = optarg; break;
        case Q_CALIB_MAX:
            if (cli_int("quantize", "--calib-max", optarg, 1, 1 << 20, &v)) return EXIT_USAGE;
            job.calib_max = (int)v;
            break;
        case Q_THREADS:
            if (cli_int("quantize", "--threads", optarg, 1, 4096, &v)) return EXIT_USAGE;
            job.threads = (int)v;
            break;
        case Q_HELP: quantize_usage(stdout); return EXIT_OK;
        default:
            fprintf(stderr, "sluice quantize: unknown option '%s' (try --help)\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (scheme == QUANT_NONE) {
        fprintf(stderr, "sluice quantize: choose a scheme (--fp8)\n");
        return EXIT_USAGE;
    }
    if (!job.model_dir || !job.out_dir) {
        fprintf(stderr, "sluice quantize: --model and --output are required\n");
        return EXIT_USAGE;
    }
    if (!strcmp(format, "compressed-tensors")) {
        job.format = QFMT_COMPRESSED_TENSORS;
    } else if (!strcmp(format, "modelopt")) {
        job.format = QFMT_MODELOPT;
        job.per_tensor = 1;
    } else {
        fprintf(stderr, "sluice quantize: --format: '%s' is not one of compressed-tensors, "
                        "modelopt\n", format);
        return EXIT_USAGE;
    }
    if (comm->size > 1 && comm->rank != 0) return EXIT_OK; // one writer

    sl_err err = {{0}};
    int rc = -1;
    switch (scheme) {
    case QUANT_FP8: rc = quant_write_fp8(&job, &err); break;
    // case QUANT_INT4_AWQ: rc = quant_write_int4_awq(&job, &err); break;
    default: break;
    }
    if (rc) {
        fprintf(stderr, "sluice quantize: %s\n", err.msg);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}
