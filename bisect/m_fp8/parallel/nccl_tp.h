// nccl_tp.h: the tensor-parallel all-reduce on GPUs, over NCCL.
//
// MPI bootstraps it: the group's rank 0 makes the ncclUniqueId and broadcasts
// it over the group's MPI communicator; every rank then joins one NCCL
// communicator per tensor-parallel group. The all-reduce is enqueued on the
// backend's stream, so it orders with the kernels around it and can be
// captured in a CUDA graph.
//
// Nothing here waits forever: joining the communicator and every collective
// are polled against a deadline (SLUICE_NCCL_TIMEOUT seconds, default 600),
// and a rank that runs out of time aborts the whole job with a message naming
// the group and the rank instead of hanging.
#ifndef SLUICE_NCCL_TP_H
#define SLUICE_NCCL_TP_H

#include <stddef.h>

#include "comm.h"
#include "common.h"

typedef struct NcclTp NcclTp;

// Collective over c's tensor-parallel group. stream: the backend's
// cudaStream_t; elem_bytes: the activation size (2 = bf16, 4 = fp32).
// NULL with err on failure (every rank of the group reports it).
NcclTp *nccl_tp_create(Comm *c, void *stream, int elem_bytes, sl_err *err);

// In-place sum of n activations of buf (device memory) across the group;
// the signature of ModelOptions.allreduce (ctx is the NcclTp).
void nccl_tp_allreduce(void *ctx, void *buf, size_t n);

void nccl_tp_destroy(NcclTp *t); // NULL is a no-op

#endif
