// fp8_cpu.c: FP8 E4M3 on the CPU: the emulation the CPU backend runs and the
// reference the GPU FP8 kernels are tested against (kernels/cpu/ops_cpu.h).
//
// Every code is produced by the rules of src/fp8.h, so the CPU and the GPU
// agree on each e4m3 byte given the same fp32 inputs and scales; only the
// order of the fp32 accumulation in the GEMM differs.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu/ops_cpu.h"
#include "fp8.h"

// 8 independent accumulators, as ops_cpu.c's dot (vectorisable).
static inline float dot8(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// The 256 decoded values, built on first use (NaN codes decode to NaN).
static float lut[256];
static int lut_ready;

static const float *e4m3_lut(void) {
    if (!lut_ready) {
#pragma omp critical(sl_e4m3_lut)
        if (!lut_ready) {
            for (int c = 0; c < 256; c++) lut[c] = sl_e4m3_to_f32((uint8_t)c);
            lut_ready = 1;
        }
    }
    return lut;
}

void cpu_quantize_fp8_rows(uint8_t *q, float *scales, const float *x, int n, int dim,
                           float static_scale) {
#pragma omp parallel for schedule(static) if (n > 8)
    for (int i = 0; i < n; i++) {
        const float *xr = x + (size_t)i * dim;
        float s = static_scale;
        if (!(s > 0)) {
            float mx = 0.0f;
            for (int j = 0; j < dim; j++) mx = fmaxf(mx, fabsf(xr[j]));
            s = sl_fp8_dyn_scale(mx);
        }
        float inv = 1.0f / s;
        for (int j = 0; j < dim; j++) q[(size_t)i * dim + j] = sl_f32_to_e4m3(xr[j] * inv);
        scales[i] = s;
    }
}

void cpu_quantize_weight_fp8(uint8_t *q, float *scales, const float *w, int out_dim, int in_dim,
                             int per_row, const float *given) {
    if (given) per_row = 1;
    if (!per_row) {
        float mx = 0.0f;
        for (size_t k = 0; k < (size_t)out_dim * in_dim; k++) mx = fmaxf(mx, fabsf(w[k]));
        scales[0] = sl_fp8_dyn_scale(mx);
    }
#pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++) {
        const float *wr = w + (size_t)o * in_dim;
        float s;
        if (given) {
            s = given[o];
        } else if (per_row) {
            float mx = 0.0f;
            for (int j = 0; j < in_dim; j++) mx = fmaxf(mx, fabsf(wr[j]));
            s = sl_fp8_dyn_scale(mx);
        } else {
            s = scales[0];
        }
        if (per_row) scales[o] = s;
        float inv = 1.0f / s;
        for (int j = 0; j < in_dim; j++) q[(size_t)o * in_dim + j] = sl_f32_to_e4m3(wr[j] * inv);
    }
}

void cpu_linear_fp8(float *y, const uint8_t *xq, const float *xs, const uint8_t *wq,
                    const float *ws, int ws_per_row, const float *bias, int n, int in_dim,
                    int out_dim) {
    const float *L = e4m3_lut();
    // Decode x once (n rows), then each thread decodes one weight row at a time.
    float *xd = malloc(sizeof(float) * ((size_t)n * in_dim + 1));
    SL_CHECK(xd != NULL);
    for (size_t k = 0; k < (size_t)n * in_dim; k++) xd[k] = L[xq[k]];
#pragma omp parallel
    {
        float *wd = malloc(sizeof(float) * ((size_t)in_dim + 1));
#pragma omp for schedule(static)
        for (int o = 0; o < out_dim; o++) {
            const uint8_t *wr = wq + (size_t)o * in_dim;
            for (int j = 0; j < in_dim; j++) wd[j] = L[wr[j]];
            float so = ws[ws_per_row ? o : 0];
            for (int i = 0; i < n; i++) {
                float acc = dot8(xd + (size_t)i * in_dim, wd, in_dim);
                float v = acc * (xs[i] * so);
                if (bias) v += bias[o];
                y[(size_t)i * out_dim + o] = v;
            }
        }
        free(wd);
    }
    free(xd);
}

void cpu_kv_round_fp8(float *k_cache, float *v_cache, const int32_t *slots, int n,
                      int n_kv_heads, int head_dim, int block_size, float k_scale,
                      float v_scale) {
    for (int i = 0; i < n; i++) {
        if (slots[i] < 0) continue;
        int blk = slots[i] / block_size, off = slots[i] % block_size;
        for (int h = 0; h < n_kv_heads; h++) {
            size_t b = (((size_t)blk * n_kv_heads + h) * block_size + off) * head_dim;
            for (int d = 0; d < head_dim; d++) {
                k_cache[b + d] = sl_fp8_fake(k_cache[b + d], k_scale);
                v_cache[b + d] = sl_fp8_fake(v_cache[b + d], v_scale);
            }
        }
    }
}
