// gpu_testutil.h: the skip rule shared by the GPU test binaries (tests/test_gpu_*.c).
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

#include "testutil.h"

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
