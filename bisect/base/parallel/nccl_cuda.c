// nccl_cuda.c: NCCL communicators for tensor-parallel groups (see nccl_tp.h).
#include "nccl_tp.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct NcclTp {
    ncclComm_t comm;
    cudaStream_t stream;
    ncclDataType_t dtype;
    double timeout_s;
    int tp, tp_rank, replica;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Waits while a non-blocking communicator still works on the last call; the
// result of that call, or ncclInProgress after the deadline.
static ncclResult_t wait_comm(ncclComm_t comm, double timeout_s) {
    double end = now_s() + timeout_s;
    ncclResult_t st = ncclInProgress;
    for (long spins = 0;; spins++) {
        if (ncclCommGetAsyncError(comm, &st) != ncclSuccess) return ncclInternalError;
        if (st != ncclInProgress) return st;
        if (now_s() > end) return ncclInProgress;
        if (spins > 1000) usleep(100);
    }
}

static void die(const NcclTp *t, const char *what, ncclResult_t st) {
    char msg[512];
    if (st == ncclInProgress)
        snprintf(msg, sizeof msg,
                 "%s: no progress in %.0f s (replica %d, tensor-parallel rank %d of %d): another "
                 "rank of the group is gone or stuck; raise SLUICE_NCCL_TIMEOUT if this is a "
                 "slow start",
                 what, t->timeout_s, t->replica, t->tp_rank, t->tp);
    else
        snprintf(msg, sizeof msg, "%s: %s (replica %d, tensor-parallel rank %d of %d)", what,
                 ncclGetErrorString(st), t->replica, t->tp_rank, t->tp);
    ncclCommAbort(t->comm);
    SL_FATAL("NCCL", msg, what);
}

NcclTp *nccl_tp_create(Comm *c, void *stream, int elem_bytes, sl_err *err) {
    NcclTp *t = sl_calloc(1, sizeof *t);
    t->stream = (cudaStream_t)stream;
    t->dtype = elem_bytes == 2 ? ncclBfloat16 : ncclFloat32;
    t->tp = c->tp, t->tp_rank = c->tp_rank, t->replica = c->replica;
    const char *to = getenv("SLUICE_NCCL_TIMEOUT");
    t->timeout_s = to && atof(to) > 0 ? atof(to) : 600.0;

    // rank 0 of the group makes the id; a failure there must reach the
    // others, so the id travels with a status byte
    struct { ncclUniqueId id; int ok; char why[200]; } boot;
    memset(&boot, 0, sizeof boot);
    if (c->tp_rank == 0) {
        ncclResult_t st = ncclGetUniqueId(&boot.id);
        boot.ok = st == ncclSuccess;
        if (!boot.ok) snprintf(boot.why, sizeof boot.why, "%s", ncclGetErrorString(st));
    }
    comm_tp_bcast(c, &boot, sizeof boot);
    if (!boot.ok) {
        sl_errf(err, "NCCL: the tensor-parallel group of replica %d could not make its id: %s",
                c->replica, boot.why);
        free(t);
        return NULL;
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; // so that a missing rank is a timeout, not a hang
    ncclResult_t st = ncclCommInitRankConfig(&t->comm, c->tp, boot.id, c->tp_rank, &cfg);
    if (st == ncclInProgress || st == ncclSuccess) st = wait_comm(t->comm, t->timeout_s);
    if (st != ncclSuccess) {
        sl_errf(err,
                "NCCL: joining the tensor-parallel group (replica %d, rank %d of %d) failed: %s%s",
                c->replica, c->tp_rank, c->tp,
                st == ncclInProgress ? "timed out" : ncclGetErrorString(st),
                st == ncclInProgress ? " (SLUICE_NCCL_TIMEOUT)" : "");
        if (t->comm) ncclCommAbort(t->comm);
        free(t);
        return NULL;
    }
    return t;
}

void nccl_tp_allreduce(void *ctx, void *buf, size_t n) {
    NcclTp *t = ctx;
    ncclResult_t st = ncclAllReduce(buf, buf, n, t->dtype, ncclSum, t->comm, t->stream);
    if (st == ncclInProgress) st = wait_comm(t->comm, t->timeout_s);
    if (st != ncclSuccess) die(t, "ncclAllReduce", st);
}

void nccl_tp_destroy(NcclTp *t) {
    if (!t) return;
    ncclResult_t st = ncclCommFinalize(t->comm);
    if (st == ncclInProgress) st = wait_comm(t->comm, t->timeout_s);
    if (st == ncclSuccess) ncclCommDestroy(t->comm);
    else ncclCommAbort(t->comm);
    free(t);
}
