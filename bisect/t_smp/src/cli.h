// cli.h: sluice's subcommands. Each takes the arguments after its name
// (argv[0] is the subcommand) and returns the process exit code.
#ifndef SLUICE_CLI_H
#define SLUICE_CLI_H

#include "backend.h"
#include "comm.h"
#include "engine.h"
#include "model.h"

// Exit codes shared by every subcommand (documented in the README).
enum {
    EXIT_OK = 0,
    EXIT_FAIL = 1,  // the job failed (bad model, bad input file, I/O error)
    EXIT_USAGE = 2, // bad command line
    EXIT_INTERRUPTED = 3, // stopped by a signal; rerun the same command to resume
};

int cli_run(int argc, char **argv, Comm *comm);
int cli_bench(int argc, char **argv, Comm *comm);
int cli_export(int argc, char **argv, Comm *comm);
int cli_prep(int argc, char **argv, Comm *comm); // text prompts -> prompts.h5 (cli_prep.c)

// Parses a whole decimal integer / float flag value; on error prints
// "sluice <cmd>: --flag: ..." and returns -1.
int cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
int cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);

// "cpu", "cuda" or "auto" (the GPU when one is usable, else the CPU); device
// is the GPU index (the node-local rank). NULL with err when it cannot be had.
Backend *cli_backend_create(const char *name, int threads, int device, sl_err *err);

// Sets eo->kv_blocks: kv_blocks when > 0, else from the budget: kv_mem_gb GiB
// on the CPU, kv_fraction of the free GPU memory on a GPU; never more than
// max_batch sequences at max_seq_len need. eo->max_seq_len must be final.
int cli_size_kv(Model *m, EngineOptions *eo, long kv_blocks, double kv_mem_gb,
                double kv_fraction, sl_err *err);

#endif
