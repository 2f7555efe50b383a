// comm.h: the job's ranks: MPI for bootstrap and control (and, on the CPU
// backend, for the tensor-parallel all-reduces); NCCL joins in the CUDA
// backend for tensor traffic.
//
// Layout: N ranks form D = N / T data-parallel replicas of T tensor-parallel
// ranks; a replica is T consecutive ranks (so, with ranks filled node by node,
// a tensor-parallel group stays inside a node).
//
// A process started without a launcher (no mpirun/srun environment) runs as a
// single rank without initialising MPI at all.
#ifndef SLUICE_COMM_H
#define SLUICE_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int rank, size;               // world
    int local_rank, local_size;   // within the node (picks the GPU, shares the cores)
    int mpi;                      // 1 when MPI was initialised
    int tp, tp_rank;              // tensor-parallel group size and this rank's place in it
    int replica, n_replicas;      // data-parallel replica of this rank, and how many
    void *tp_comm;                // the group's MPI communicator (opaque here)
} Comm;

// Initialises MPI when launched by mpirun/srun, sets MPI_ERRORS_RETURN, and
// installs an abort hook so a fatal error on one rank ends the whole job.
// Sets the log identity. Never fails: an MPI error here is fatal.
void comm_init(Comm *c, int *argc, char ***argv);
void comm_finalize(Comm *c);

// Forms the replicas of tp ranks. Returns -1 (with a message in why) when the
// world size is not a multiple of tp; collective.
int comm_setup_groups(Comm *c, int tp, char *why, size_t n);

// Ends the whole job now with a non-zero exit (MPI_Abort when MPI is up).
void comm_abort(Comm *c, int code) __attribute__((noreturn));

// --- tensor-parallel group ---
// In-place sum of n floats across the group (no-op when tp == 1).
void comm_tp_allreduce_f32(Comm *c, float *buf, size_t n);
// Every rank of the group gets the group rank 0's bytes.
void comm_tp_bcast(Comm *c, void *buf, size_t bytes);

// --- world ---
// In-place sums / maxima across all ranks.
void comm_sum_i64(Comm *c, int64_t *v, int n);
void comm_max_f64(Comm *c, double *v, int n);
// Rank 0 receives the concatenation of every rank's v[0..n) (rank order) in a
// fresh *out (the caller's to free) of *n_out values; other ranks get NULL.
void comm_gather_f64(Comm *c, const double *v, int64_t n, double **out, int64_t *n_out);
int comm_allreduce_max_int(Comm *c, int v);
void comm_barrier(Comm *c);

#endif
