// test_gpu_sampling.c: greedy decoding on the device (cuda_argmax_rows)
// against its CPU twin (cpu_argmax_rows) on random logits: vocabularies not
// multiples of the block (1, 7, 1000, 32000, 128256, 151936), many rows, planted
// ties (the lowest index must win), NaN and -inf entries, all -inf rows; the
// output is poisoned first. Skips without a GPU unless SLUICE_REQUIRE_GPU=1.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "gpu_testutil.h"
#include "testutil.h"


static void test_argmax_rows(void) {
    if (!tu_gpu_ready()) return;
    static const int vocabs[] = {1, 7, 1000, 32000, 128256, 151936};
    const int n = 67;
    uint64_t rng = 2024;
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        int V = vocabs[v];
        float *h = malloc(sizeof(float) * (size_t)n * V);
        for (size_t i = 0; i < (size_t)n * V; i++) h[i] = 4.0f * tu_rand_normal(&rng);
        for (int r = 0; r < n; r++) {
            float *row = h + (size_t)r * V;
            int a = (int)(tu_rand_u64(&rng) % V), b = (int)(tu_rand_u64(&rng) % V);
            if (r % 3 == 0) row[a] = row[b] = 100.0f;   // a tie at the top
            if (r % 5 == 1) row[a] = NAN;               // NaN never wins
            if (r % 7 == 2) row[b] = -INFINITY;
            if (r == n - 1)
                for (int j = 0; j < V; j++) row[j] = -INFINITY; // all -inf: token 0
        }
        int32_t *want = malloc(sizeof(int32_t) * n), *got = malloc(sizeof(int32_t) * n);
        cpu_argmax_rows(want, h, n, V);
        float *d;
        int32_t *dout;
        CU_ASSERT_FATAL(cudaMalloc((void **)&d, sizeof(float) * (size_t)n * V) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dout, sizeof(int32_t) * n) == cudaSuccess);
        cudaMemcpy(d, h, sizeof(float) * (size_t)n * V, cudaMemcpyHostToDevice);
        cudaMemset(dout, 0xff, sizeof(int32_t) * n);
        cuda_argmax_rows(dout, d, n, V, 0);
        CU_ASSERT_FATAL(cudaDeviceSynchronize() == cudaSuccess);
        cudaMemcpy(got, dout, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
        int bad = 0;
        for (int r = 0; r < n; r++)
            if (got[r] != want[r]) {
                if (bad++ < 5) fprintf(stderr, "  vocab %d row %d: got %d want %d\n", V, r, got[r], want[r]);
            }
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(want[n - 1], 0);
        cudaFree(d);
        cudaFree(dout);
        free(h);
        free(want);
        free(got);
    }
}

int main(void) {
    static const tu_test t[] = {{"argmax_rows_vs_cpu", test_argmax_rows}, {NULL, NULL}};
    tu_suite("gpu_sampling", t);
    return tu_main();
}
