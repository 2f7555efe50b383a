// cuda_common.h: the CUDA members of sluice's one check family, usable from
// both C (backend, tests) and CUDA C (kernels).
//
// On failure they print [host rank gpu] file:line LIB: message (statement)
// and end the whole job (MPI_Abort through the abort hook once MPI is up).
#ifndef SLUICE_CUDA_COMMON_H
#define SLUICE_CUDA_COMMON_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common.h"

#define CUDA_CHECK(stmt)                                                       \
    do {                                                                       \
        cudaError_t e_ = (stmt);                                               \
        if (e_ != cudaSuccess) SL_FATAL("CUDA", cudaGetErrorString(e_), #stmt); \
    } while (0)

// After every kernel launch: catches bad launch configurations at once.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// bf16 as seen from C: the raw 16 bits (converted with sl_bf16_to_f32 etc.).
typedef uint16_t sl_bf16;

#endif
