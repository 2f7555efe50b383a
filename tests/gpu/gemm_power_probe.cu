// gemm_power_probe.cu: cuBLASLt's candidates for the 8B model's prefill GEMMs
// under sustained load (a measurement tool, not part of the build). At
// 2048/128 the GPU runs at its power limit, so what counts is an algorithm's
// speed once the clock has settled there, not its speed in a short burst.
// For each candidate: random data (normal, like weights and activations; a
// constant fill draws far less power), GEMMs back to back for ~SECS seconds,
// the time per GEMM over the second half, and the board power sampled with
// nvidia-smi meanwhile.
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a tests/gpu/gemm_power_probe.cu \
//       -lcublasLt -o build/gemm_power_probe && build/gemm_power_probe [fp8|bf16] [secs]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cublasLt.h>

#define CK(x)                                                                      \
    do {                                                                           \
        cudaError_t e_ = (x);                                                      \
        if (e_ != cudaSuccess) {                                                   \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

static __device__ float hash_normal(uint64_t i, uint64_t seed) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27, x *= 0x94D049BB133111EBull, x ^= x >> 31;
    float u1 = ((x & 0xFFFFFF) + 1) * (1.0f / 16777217.0f), u2 = ((x >> 24) & 0xFFFFFF) * (1.0f / 16777216.0f);
    return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}
__global__ void fill(void *p, size_t n, int fp8, float sd, uint64_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = hash_normal(i, seed) * sd;
        if (fp8) ((__nv_fp8_e4m3 *)p)[i] = __nv_fp8_e4m3(v);
        else ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
    }
}

static int power_now(double *w, double *mhz) {
    FILE *f = popen("nvidia-smi --query-gpu=power.draw,clocks.sm --format=csv,noheader,nounits", "r");
    int ok = 0;
    if (f) {
        ok = fscanf(f, "%lf, %lf", w, mhz) == 2;
        pclose(f);
    }
    return ok;
}

int main(int argc, char **argv) {
    const int fp8 = argc < 2 || strcmp(argv[1], "bf16") != 0;
    const double secs = argc > 2 ? atof(argv[2]) : 2.5;
    static const int shapes[][3] = {{8192, 28672, 4096}, {8192, 4096, 14336}, {8192, 6144, 4096}, {8192, 4096, 4096}};
    const size_t ws_bytes = (size_t)32 << 20;
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    void *ws;
    CK(cudaMalloc(&ws, ws_bytes));
    float *dscale;
    const float sc = fp8 ? 0.01f : 1.0f;
    CK(cudaMalloc((void **)&dscale, sizeof(float)));
    CK(cudaMemcpy(dscale, &sc, sizeof sc, cudaMemcpyHostToDevice));
    const cudaDataType_t it = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    const size_t eb = fp8 ? 1 : 2;
    printf("%s GEMMs, random normal data, %.1f s per candidate\n", fp8 ? "e4m3 (fast accum)" : "bf16", secs);
    printf("  %6s %6s %6s  %4s %5s %4s %6s %6s %7s  %9s %9s %7s %6s\n", "n", "out", "in", "cand", "algo",
           "tile", "stages", "splitk", "cluster", "burst TF", "sust. TF", "W", "MHz");
    for (int s = 0; s < 4; s++) {
        const int n = shapes[s][0], out = shapes[s][1], in = shapes[s][2];
        void *dw, *dx, *dy;
        CK(cudaMalloc(&dw, (size_t)out * in * eb));
        CK(cudaMalloc(&dx, (size_t)n * in * eb));
        CK(cudaMalloc(&dy, (size_t)n * out * 2));
        fill<<<1024, 256>>>(dw, (size_t)out * in, fp8, fp8 ? 64.f : 0.02f, 1);
        fill<<<1024, 256>>>(dx, (size_t)n * in, fp8, fp8 ? 64.f : 1.0f, 2);
        CK(cudaDeviceSynchronize());
        cublasLtMatmulDesc_t op;
        cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        if (fp8) {
            int8_t fa = 1;
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof fa);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dscale, sizeof dscale);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dscale, sizeof dscale);
        }
        cublasLtMatrixLayout_t a, b, d;
        cublasLtMatrixLayoutCreate(&a, it, in, out, in);
        cublasLtMatrixLayoutCreate(&b, it, in, n, in);
        cublasLtMatrixLayoutCreate(&d, CUDA_R_16BF, out, n, out);
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        uint64_t wsb = ws_bytes;
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
        cublasLtMatmulHeuristicResult_t res[8];
        int found = 0;
        cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, d, d, pref, 8, res, &found);
        const double fl = 2.0 * n * out * in;
        const float one = 1.0f, zero = 0.0f;
        for (int i = 0; i < found; i++) {
            const cublasLtMatmulAlgo_t *al = &res[i].algo;
            int algo_id = 0, tile = 0, stages = 0, splitk = 0, cluster = 0;
            size_t w;
            cublasLtMatmulAlgoConfigGetAttribute(al, CUBLASLT_ALGO_CONFIG_ID, &algo_id, sizeof algo_id, &w);
            cublasLtMatmulAlgoConfigGetAttribute(al, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
            cublasLtMatmulAlgoConfigGetAttribute(al, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
            cublasLtMatmulAlgoConfigGetAttribute(al, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
            cublasLtMatmulAlgoConfigGetAttribute(al, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &w);
            auto run = [&](int k) {
                for (int j = 0; j < k; j++)
                    if (cublasLtMatmul(lt, op, &one, dw, a, dx, b, &zero, dy, d, dy, d, al, ws, ws_bytes, st) !=
                        CUBLAS_STATUS_SUCCESS)
                        return false;
                return true;
            };
            // burst: 5 GEMMs after a short idle
            CK(cudaStreamSynchronize(st));
            if (!run(2)) continue;
            CK(cudaEventRecord(e0, st));
            run(5);
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            const double burst = fl * 5 / (ms * 1e-3) / 1e12;
            // sustained: ~secs of GEMMs; the second half timed, power sampled meanwhile
            const int half = (int)(secs / 2 / (ms / 5 * 1e-3)) + 1;
            run(half);
            CK(cudaEventRecord(e0, st));
            run(half);
            CK(cudaEventRecord(e1, st));
            double pw = 0, mhz = 0;
            int np = 0;
            // sample while the first half drains and the second runs
            while (cudaEventQuery(e1) == cudaErrorNotReady) {
                double w = 0, c = 0;
                const int ok = power_now(&w, &c);
                if (ok && cudaEventQuery(e0) == cudaSuccess && cudaEventQuery(e1) == cudaErrorNotReady)
                    pw += w, mhz += c, np++;
            }
            cudaEventElapsedTime(&ms, e0, e1);
            const double sust = fl * half / (ms * 1e-3) / 1e12;
            printf("  %6d %6d %6d  %4d %5d %4d %6d %6d %7d  %9.1f %9.1f %7.0f %6.0f\n", n, out, in, i, algo_id,
                   tile, stages, splitk, cluster, burst, sust, np ? pw / np : 0.0, np ? mhz / np : 0.0);
            fflush(stdout);
        }
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(a), cublasLtMatrixLayoutDestroy(b), cublasLtMatrixLayoutDestroy(d);
        cublasLtMatmulDescDestroy(op);
        cudaFree(dw), cudaFree(dx), cudaFree(dy);
    }
    return 0;
}
