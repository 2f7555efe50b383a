// comm.h: the job's ranks: MPI for bootstrap and control (and, on the CPU
// backend, for tensor-parallel all-reduces); NCCL joins in the CUDA backend.
//
// A process started without a launcher (no mpirun/srun environment) runs as a
// single rank without initialising MPI at all.
#ifndef SLUICE_COMM_H
#define SLUICE_COMM_H

#include <stddef.h>

typedef struct {
    int rank, size;   // world
    int local_rank;   // rank within the node (picks the GPU)
    int mpi;          // 1 when MPI was initialised
} Comm;

// Initialises MPI when launched by mpirun/srun, sets MPI_ERRORS_RETURN, and
// installs an abort hook so a fatal error on one rank ends the whole job.
// Sets the log identity. Never fails: an MPI error here is fatal.
void comm_init(Comm *c, int *argc, char ***argv);
void comm_finalize(Comm *c);

// In-place sum of n floats across all ranks (no-op on one rank).
void comm_allreduce_sum_f32(Comm *c, float *buf, size_t n);
// In-place max / sum of one int across ranks (agreement on pass/fail, errors).
int comm_allreduce_max_int(Comm *c, int v);
void comm_barrier(Comm *c);

#endif
