// comm.c: MPI bootstrap, groups and the few collectives sluice needs (see comm.h).
#include "comm.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// Generated from the one check family of common.h: print, then abort the job.
#define MPI_CHECK(stmt)                                                        \
    do {                                                                       \
        int rc_ = (stmt);                                                      \
        if (rc_ != MPI_SUCCESS) {                                              \
            char msg_[MPI_MAX_ERROR_STRING];                                   \
            int len_ = 0;                                                      \
            MPI_Error_string(rc_, msg_, &len_);                                \
            SL_FATAL("MPI", msg_, #stmt);                                      \
        }                                                                      \
    } while (0)

static void mpi_abort_hook(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

static int launched_by_mpi(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

static int env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

void comm_init(Comm *c, int *argc, char ***argv) {
    memset(c, 0, sizeof *c);
    c->size = c->local_size = c->tp = c->n_replicas = 1;
    if (!launched_by_mpi()) return;
    int provided;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    c->mpi = 1;
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &c->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &c->size));
    c->local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("SLURM_LOCALID", 0));
    c->local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE",
                            env_int("SLURM_NTASKS_PER_NODE", c->size));
    c->n_replicas = c->size;
    sl_set_abort_hook(mpi_abort_hook);
    sl_log_set_identity(c->rank, -1);
}

void comm_finalize(Comm *c) {
    if (c->tp_comm) {
        MPI_Comm_free((MPI_Comm *)c->tp_comm);
        free(c->tp_comm);
        c->tp_comm = NULL;
    }
    if (c->mpi) MPI_Finalize();
    c->mpi = 0;
}

int comm_setup_groups(Comm *c, int tp, char *why, size_t n) {
    if (tp < 1 || c->size % tp) {
        snprintf(why, n, "--tp %d does not divide the %d ranks of this job", tp, c->size);
        return -1;
    }
    c->tp = tp;
    c->tp_rank = c->rank % tp;
    c->replica = c->rank / tp;
    c->n_replicas = c->size / tp;
    if (c->mpi) {
        MPI_Comm *g = sl_malloc(sizeof *g);
        MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, c->replica, c->tp_rank, g));
        MPI_CHECK(MPI_Comm_set_errhandler(*g, MPI_ERRORS_RETURN));
        c->tp_comm = g;
        // A tensor-parallel group all-reduces every layer: it must not span
        // nodes. Ranks are filled node by node, so this fails only when the
        // ranks per node are not a multiple of tp.
        MPI_Comm node;
        int on_node = 0, bad, any_bad = 0;
        MPI_CHECK(MPI_Comm_split_type(*g, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
        MPI_CHECK(MPI_Comm_size(node, &on_node));
        MPI_CHECK(MPI_Comm_free(&node));
        bad = on_node != tp;
        MPI_CHECK(MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
        if (any_bad) {
            snprintf(why, n,
                     "--tp %d: a tensor-parallel group would span nodes (rank %d shares a node "
                     "with %d of its group's %d ranks); start a multiple of %d ranks per node",
                     tp, c->rank, on_node, tp, tp);
            return -1;
        }
    }
    return 0;
}

void comm_abort(Comm *c, int code) {
    fflush(stdout);
    fflush(stderr);
    if (c->mpi && c->size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

void comm_tp_allreduce_f32(Comm *c, float *buf, size_t n) {
    if (c->tp == 1 || !c->tp_comm) return;
    MPI_Comm g = *(MPI_Comm *)c->tp_comm;
    // MPI counts are int: large buffers go in pieces.
    for (size_t off = 0; off < n; off += (size_t)1 << 30) {
        size_t k = n - off < ((size_t)1 << 30) ? n - off : ((size_t)1 << 30);
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM, g));
    }
}

void comm_tp_bcast(Comm *c, void *buf, size_t bytes) {
    if (c->tp == 1 || !c->tp_comm || bytes == 0) return;
    MPI_CHECK(MPI_Bcast(buf, (int)bytes, MPI_BYTE, 0, *(MPI_Comm *)c->tp_comm));
}

void comm_tp_min_i64(Comm *c, int64_t *v) {
    if (c->tp == 1 || !c->tp_comm) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, 1, MPI_INT64_T, MPI_MIN, *(MPI_Comm *)c->tp_comm));
}

void comm_sum_i64(Comm *c, int64_t *v, int n) {
    if (!c->mpi || c->size == 1) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
}

void comm_max_f64(Comm *c, double *v, int n) {
    if (!c->mpi || c->size == 1) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
}

void comm_gather_f64(Comm *c, const double *v, int64_t n, double **out, int64_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (!c->mpi || c->size == 1) {
        *out = sl_malloc(sizeof(double) * (n ? n : 1));
        memcpy(*out, v, sizeof(double) * n);
        *n_out = n;
        return;
    }
    int cnt = (int)n, *counts = NULL, *displs = NULL;
    if (c->rank == 0) {
        counts = sl_malloc(sizeof(int) * c->size);
        displs = sl_malloc(sizeof(int) * c->size);
    }
    MPI_CHECK(MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, MPI_COMM_WORLD));
    if (c->rank == 0) {
        int64_t total = 0;
        for (int i = 0; i < c->size; i++) {
            displs[i] = (int)total;
            total += counts[i];
        }
        *out = sl_malloc(sizeof(double) * (total ? total : 1));
        *n_out = total;
    }
    MPI_CHECK(MPI_Gatherv(v, cnt, MPI_DOUBLE, *out, counts, displs, MPI_DOUBLE, 0,
                          MPI_COMM_WORLD));
    free(counts);
    free(displs);
}

int comm_allreduce_max_int(Comm *c, int v) {
    if (!c->mpi || c->size == 1) return v;
    int out;
    MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return out;
}

void comm_barrier(Comm *c) {
    if (c->mpi) MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}
