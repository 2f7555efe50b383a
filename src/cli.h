// cli.h: sluice's subcommands. Each takes the arguments after its name
// (argv[0] is the subcommand) and returns the process exit code.
#ifndef SLUICE_CLI_H
#define SLUICE_CLI_H

#include "comm.h"

// Exit codes shared by every subcommand (documented in the README).
enum {
    EXIT_OK = 0,
    EXIT_FAIL = 1,  // the job failed (bad model, bad input file, I/O error)
    EXIT_USAGE = 2, // bad command line
};

int cli_run(int argc, char **argv, Comm *comm);
int cli_export(int argc, char **argv, Comm *comm);

// Parses a whole decimal integer / float flag value; on error prints
// "sluice <cmd>: --flag: ..." and returns -1.
int cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
int cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);

#endif
