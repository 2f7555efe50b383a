// main.c: the sluice binary: dispatches to a subcommand.
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common.h"

#define SLUICE_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f,
            "sluice " SLUICE_VERSION ": batch LLM inference, HDF5 in, HDF5 out\n"
            "\n"
            "usage: sluice <command> [options]\n"
            "\n"
            "commands:\n"
            "  prep      tokenize text prompts (JSONL or one per line) into a prompts file\n"
            "  run       generate completions for a prompts file\n"
            "  export    write completions as JSON lines\n"
            "  bench     throughput on synthetic requests (a checkpoint or random weights)\n"
            "  quantize  write an INT4 (AWQ / RTN) checkpoint; --int4-eval: its accuracy\n"
            "\n"
            "`sluice <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("sluice %s\n", SLUICE_VERSION);
        return EXIT_OK;
    }
    Comm comm;
    comm_init(&comm, &argc, &argv);
    int rc;
    if (!strcmp(argv[1], "prep")) { // text path (cli_prep.c)
        rc = cli_prep(argc - 1, argv + 1, &comm);
    } else if (!strcmp(argv[1], "run")) {
        rc = cli_run(argc - 1, argv + 1, &comm);
    } else if (!strcmp(argv[1], "export")) {
        rc = cli_export(argc - 1, argv + 1, &comm);
    } else if (!strcmp(argv[1], "bench")) {
        rc = cli_bench(argc - 1, argv + 1, &comm);
    } else if (!strcmp(argv[1], "quantize")) { // INT4 half (cli_quantize_int4.c)
        rc = cli_quantize_int4(argc - 1, argv + 1, &comm);
    } else {
        fprintf(stderr, "sluice: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        rc = EXIT_USAGE;
    }
    comm_finalize(&comm);
    return rc;
}
