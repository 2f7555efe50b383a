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
// `sluice quantize --int4-awq / --int4-rtn / --int4-eval` (cli_quantize_int4.c)
int cli_quantize_int4(int argc, char **argv, Comm *comm);
int cli_eval(int argc, char **argv, Comm *comm); // FP8 accuracy vs BF16 (cli_eval.c)
int cli_quantize(int argc, char **argv, Comm *comm); // quantised checkpoints (cli_quantize.c)

// Parses a whole decimal integer / float flag value; on error prints
// "sluice <cmd>: --flag: ..." and returns -1.
// configs/arch/NAME.json (SLUICE_CONFIGS/arch, ./configs/arch, or next to the
// binary), or NAME itself when it is a path; NULL when none exists. Freed by
// the caller.
char *cli_find_arch(const char *name);
int cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
int cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);

// "cpu", "cuda" or "auto" (the GPU when one is usable, else the CPU); device
// is the GPU index (the node-local rank). NULL with err when it cannot be had.
Backend *cli_backend_create(const char *name, int threads, int device, sl_err *err);

// The number formats of --dtype (auto, bf16, f32, fp8) and --kv-dtype (auto,
// fp8). On error prints "sluice <cmd>: --flag: ..." and returns -1.
typedef struct {
    int act_f32;    // --dtype f32: fp32 activations (the CUDA backend's exact mode)
    int weight_fp8; // --dtype fp8: FP8 E4M3 linear layers, quantised at load
    int kv_fp8;     // --kv-dtype fp8
    const char *name; // for reports: "bf16", "f32", "fp8", "auto"
} CliDtype;
int cli_dtype(const char *cmd, const char *dtype, const char *kv_dtype, CliDtype *out);

// cli_backend_create with the activation dtype of d (fp32 on a GPU for --dtype f32).
Backend *cli_backend_create_dt(const char *name, int threads, int device, const CliDtype *d,
                               sl_err *err);

// Sets eo->kv_blocks: kv_blocks when > 0, else from the budget: kv_mem_gb GiB
// on the CPU, kv_fraction of the free GPU memory on a GPU; never more than
// max_batch sequences at max_seq_len need. eo->max_seq_len must be final.
int cli_size_kv(Model *m, EngineOptions *eo, long kv_blocks, double kv_mem_gb,
                double kv_fraction, sl_err *err);

// Tensor parallelism for a model about to be loaded on be: sets mo's rank,
// size and all-reduce (MPI on the CPU backend, NCCL on the GPU) and eo's token
// broadcast from the group's rank 0. *state is the caller's to pass to
// cli_tp_detach. A no-op when comm->tp == 1. Collective over the group.
int cli_tp_attach(Comm *comm, Backend *be, ModelOptions *mo, EngineOptions *eo, void **state,
                  sl_err *err);
// Drops be's CUDA graphs (they may hold NCCL kernels), then the communicator.
void cli_tp_detach(Backend *be, void *state);
// The KV pool of every rank of a tensor-parallel group must hold the same
// number of blocks (each rank schedules the same batches): the group's minimum.
void cli_tp_agree_kv(Comm *comm, EngineOptions *eo);

#endif
