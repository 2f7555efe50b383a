// cli_prep.c: `sluice prep`: prompts as text (JSONL or one per line) in, a
// tokenized prompts.h5 (docs/HDF5.md) out.
//
// Everything is read and checked first (flags, tokenizer, every input line);
// the output is written only when all of it is good, under a temporary name
// that is renamed into place (h5_prompts_write), so a failed prep never
// leaves a file, whole or partial, under --output.
#include <getopt.h>
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "h5io.h"
#include "prompts_text.h"
#include "tokenizer.h"

static void prep_usage(FILE *f) {
    fprintf(f,
        "usage: sluice prep --input FILE --output PROMPTS.h5 (--tokenizer PATH | --model DIR)\n"
        "                   [options]\n"
        "\n"
        "Tokenizes text prompts into a prompts file for `sluice run` (docs/HDF5.md):\n"
        "prompt_tokens, prompt_offsets, prompt_text and the per-request fields.\n"
        "\n"
        "input formats:\n"
        "  jsonl   one JSON object per line: {\"prompt\": \"...\"} plus optional\n"
        "          \"max_new_tokens\", \"temperature\", \"top_p\", \"top_k\", \"seed\",\n"
        "          \"request_id\"; lines without a field use run's flag default\n"
        "  text    one prompt per line (CRLF accepted; an empty line is an empty prompt)\n"
        "\n"
        "options:\n"
        "  --input FILE           the prompts (.jsonl/.json -> jsonl, anything else -> text)\n"
        "  --output FILE          the prompts file to write (replaced if it exists)\n"
        "  --tokenizer PATH       a tokenizer.json, or a directory holding one\n"
        "  --model DIR            take the tokenizer from a model directory\n"
        "  --format jsonl|text    override the format guessed from the extension\n"
        "  --add-bos              apply the tokenizer's post-processor, e.g. a BOS (default)\n"
        "  --no-add-bos           bare ids, as HF's add_special_tokens=False\n"
        "  --threads N            tokenizer threads (default: all cores)\n"
        "  --quiet                no summary line\n"
        "  --help\n");
}

enum {
    P_INPUT = 1000, P_OUTPUT, P_TOKENIZER, P_MODEL, P_FORMAT, P_ADD_BOS, P_NO_ADD_BOS,
    P_THREADS, P_QUIET, P_HELP,
};

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int cli_prep(int argc, char **argv, Comm *comm) {
    static const struct option longopts[] = {
        {"input", required_argument, 0, P_INPUT},
        {"output", required_argument, 0, P_OUTPUT},
        {"tokenizer", required_argument, 0, P_TOKENIZER},
        {"model", required_argument, 0, P_MODEL},
        {"format", required_argument, 0, P_FORMAT},
        {"add-bos", no_argument, 0, P_ADD_BOS},
        {"no-add-bos", no_argument, 0, P_NO_ADD_BOS},
        {"threads", required_argument, 0, P_THREADS},
        {"quiet", no_argument, 0, P_QUIET},
        {"help", no_argument, 0, P_HELP},
        {0, 0, 0, 0},
    };
    const char *input = NULL, *output = NULL, *tok_path = NULL, *model = NULL, *format = NULL;
    int add_bos = -1, quiet = 0; // add_bos: -1 = not given (same as --add-bos)
    long threads = 0;
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", longopts, NULL);
        if (c == -1) break;
        switch (c) {
        case P_INPUT: input = optarg; break;
        case P_OUTPUT: output = optarg; break;
        case P_TOKENIZER: tok_path = optarg; break;
        case P_MODEL: model = optarg; break;
        case P_FORMAT:
            if (strcmp(optarg, "jsonl") && strcmp(optarg, "text")) {
                fprintf(stderr, "sluice prep: --format: '%s' is not one of jsonl, text\n", optarg);
                return EXIT_USAGE;
            }
            format = optarg;
            break;
        case P_ADD_BOS:
        case P_NO_ADD_BOS: {
            int v = c == P_ADD_BOS;
            if (add_bos >= 0 && add_bos != v) {
                fprintf(stderr, "sluice prep: --add-bos and --no-add-bos contradict each other\n");
                return EXIT_USAGE;
            }
            add_bos = v;
            break;
        }
        case P_THREADS:
            if (cli_int("prep", "--threads", optarg, 1, 4096, &threads)) return EXIT_USAGE;
            break;
        case P_QUIET: quiet = 1; sl_log_set_level(LOG_WARN); break;
        case P_HELP: prep_usage(stdout); return EXIT_OK;
        default:
            fprintf(stderr, "sluice prep: option '%s' is unknown or lacks its value\n",
                    argv[optind - 1]);
            fprintf(stderr, "try 'sluice prep --help'\n");
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluice prep: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!input || !output) {
        fprintf(stderr, "sluice prep: --input and --output are required (try 'sluice prep --help')\n");
        return EXIT_USAGE;
    }
    if (!tok_path && !model) {
        fprintf(stderr, "sluice prep: give --tokenizer PATH or --model DIR (the tokenizer.json "
                        "to encode with)\n");
        return EXIT_USAGE;
    }
    if (tok_path && model) {
        fprintf(stderr, "sluice prep: give --tokenizer or --model, not both\n");
        return EXIT_USAGE;
    }
    if (!format) format = ends_with(input, ".jsonl") || ends_with(input, ".json") ? "jsonl" : "text";
    if (threads <= 0) threads = omp_get_max_threads();
    (void)comm;

    sl_err err = {{0}};
    int rc = EXIT_FAIL;
    Tokenizer *tok = NULL;
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    double t0 = sl_now();

    // 1) the tokenizer, then every line of the input: nothing is written before both pass
    const char *tp = tok_path ? tok_path : model;
    struct stat st;
    int is_dir = stat(tp, &st) == 0 && S_ISDIR(st.st_mode);
    if ((is_dir ? tok_load_dir(&tok, tp, &err) : tok_load(&tok, tp, &err))) goto done;
    if (add_bos == 1 && tok_bos_id(tok) < 0)
        LOGW("--add-bos: %s adds no BOS (its post-processor has none); ids are unchanged", tp);
    double t_tok = sl_now();
    if ((!strcmp(format, "jsonl") ? prompts_read_jsonl(&ps, input, &err)
                                  : prompts_read_text(&ps, input, &err)))
        goto done;
    double t_read = sl_now();
    if (prompts_tokenize(&ps, tok, add_bos != 0, (int)threads, &err)) {
        sl_errctx(&err, "%s", input);
        goto done;
    }
    double t_enc = sl_now();
    if (ps.n == 0) LOGW("%s holds no prompts; writing an empty prompts file", input);

    // 2) the output, under a temporary name then renamed
    if (h5_prompts_write(output, &ps, &err)) goto done;
    double t_end = sl_now();
    if (!quiet) {
        int64_t longest = 0;
        for (int64_t i = 0; i < ps.n; i++)
            if (ps.offsets[i + 1] - ps.offsets[i] > longest)
                longest = ps.offsets[i + 1] - ps.offsets[i];
        double enc = t_enc - t_read;
        printf("sluice prep: %" PRId64 " prompts, %" PRId64 " tokens (longest %" PRId64
               ") -> %s in %.3f s (tokenizer load %.3f, read %.3f, tokenize %.3f on %ld "
               "threads = %.2f M tokens/s, write %.3f)\n",
               ps.n, ps.n_tokens, longest, output, t_end - t0, t_tok - t0, t_read - t_tok, enc,
               threads, enc > 0 ? ps.n_tokens / enc / 1e6 : 0.0, t_end - t_enc);
    }
    rc = EXIT_OK;
done:
    if (rc != EXIT_OK) fprintf(stderr, "sluice prep: error: %s\n", err.msg);
    h5_prompts_free(&ps);
    tok_free(tok);
    return rc;
}
