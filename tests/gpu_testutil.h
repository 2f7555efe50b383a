// gpu_testutil.h: what the GPU test binaries (tests/test_gpu_*.c) share: the
// skip rule and small device-memory helpers.
//
// tu_gpu_ready() returns 1 when a CUDA device is there. Otherwise it prints
// "skipped: no CUDA device" and returns 0, so the test passes on CPU-only
// machines (CI) -- unless SLUICE_REQUIRE_GPU=1 (make test-gpu), where the
// missing device is a test failure.
#ifndef SLUICE_GPU_TESTUTIL_H
#define SLUICE_GPU_TESTUTIL_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cuda/cuda_common.h"
#include "testutil.h"

// f rounded to the nearest bf16, as fp32.
static inline float bf16r(float f) { return sl_bf16_to_f32(sl_f32_to_bf16(f)); }

static inline void *dev_alloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

// Device memory of `bytes`, every byte 0xFF (NaN as bf16 and as fp32): an
// output a kernel fails to write cannot pass for a right one.
static inline void *dev_poisoned(size_t bytes) {
    void *p = dev_alloc(bytes);
    CUDA_CHECK(cudaMemset(p, 0xFF, bytes ? bytes : 1));
    return p;
}

static inline void *dev_copy(const void *src, size_t bytes) {
    void *d = dev_alloc(bytes);
    if (bytes) CUDA_CHECK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
    return d;
}

static inline int tu_gpu_ready(void) {
    static int known = -1; // -1: not asked yet
    if (known < 0) {
        int n = 0;
        known = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
        if (!known) (void)cudaGetLastError();
    }
    if (known) return 1;
    const char *req = getenv("SLUICE_REQUIRE_GPU");
    if (req && strcmp(req, "1") == 0) {
        fprintf(stderr, "no CUDA device, but SLUICE_REQUIRE_GPU=1\n");
        CU_FAIL("no CUDA device, but SLUICE_REQUIRE_GPU=1");
    } else {
        printf("skipped: no CUDA device\n");
    }
    return 0;
}

#endif
