// comm.c: MPI bootstrap (see comm.h).
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
    c->size = 1;
    if (!launched_by_mpi()) return;
    int provided;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    c->mpi = 1;
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &c->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &c->size));
    c->local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("SLURM_LOCALID", 0));
    sl_set_abort_hook(mpi_abort_hook);
    sl_log_set_identity(c->rank, -1);
}

void comm_finalize(Comm *c) {
    if (c->mpi) MPI_Finalize();
    c->mpi = 0;
}

void comm_allreduce_sum_f32(Comm *c, float *buf, size_t n) {
    if (!c->mpi || c->size == 1) return;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
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
