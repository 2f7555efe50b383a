// int4_cpu.c: group-wise INT4 weights on the CPU (see int4_cpu.h): dequantise,
// the W4A16 linear layer, round-to-nearest quantisation and random fills.
#include "int4_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ----------------------------------------------------------------------------
// helpers

// Dot product with 8 independent accumulators: the same order as ops_cpu.c's
// dot_f32, so an INT4 layer computes exactly what cpu_linear computes on the
// dequantised matrix.
static inline float dot8(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// ----------------------------------------------------------------------------
// dequantise

void cpu_int4_dequant_row(float *dst, const uint32_t *qweight, const uint16_t *scales,
                          const uint8_t *zeros, int o, int in_dim, int group) {
    int ng = in_dim / group, wpg = group / 8; // groups per row, words per group
    const uint32_t *q = qweight + (size_t)o * (in_dim / 8);
    for (int g = 0; g < ng; g++) {
        float s = sl_f16_to_f32(scales[(size_t)o * ng + g]);
        float z = zeros ? (float)zeros[(size_t)o * ng + g] : (float)INT4_SYM_ZERO;
        for (int j = 0; j < wpg; j++) {
            uint32_t wd = q[g * wpg + j];
            float *d = dst + (size_t)g * group + 8 * j;
            for (int p = 0; p < 8; p++) d[p] = ((float)((wd >> (4 * p)) & 15u) - z) * s;
        }
    }
}

void cpu_int4_dequant(float *dst, const uint32_t *qweight, const uint16_t *scales,
                      const uint8_t *zeros, int out_dim, int in_dim, int group) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++)
        cpu_int4_dequant_row(dst + (size_t)o * in_dim, qweight, scales, zeros, o, in_dim, group);
}

// ----------------------------------------------------------------------------
// linear

void cpu_w4a16_linear(float *y, const float *x, const uint32_t *qweight,
                      const uint16_t *scales, const uint8_t *zeros, const float *bias, int n,
                      int in_dim, int out_dim, int group) {
#pragma omp parallel
    {
        float *row = sl_malloc(sizeof(float) * (size_t)in_dim); // this thread's dequantised row
#pragma omp for schedule(static)
        for (int o = 0; o < out_dim; o++) {
            cpu_int4_dequant_row(row, qweight, scales, zeros, o, in_dim, group);
            float b = bias ? bias[o] : 0.0f;
            for (int i = 0; i < n; i++)
                y[(size_t)i * out_dim + o] = dot8(x + (size_t)i * in_dim, row, in_dim) + b;
        }
        free(row);
    }
}

// ----------------------------------------------------------------------------
// quantise (round to nearest)

void cpu_int4_quantize(uint32_t *qweight, uint16_t *scales, uint8_t *zeros, const float *w,
                       const float *clip, int out_dim, int in_dim, int group) {
    int ng = in_dim / group;
#pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++) {
        const float *wr = w + (size_t)o * in_dim;
        uint32_t *qr = qweight + (size_t)o * (in_dim / 8);
        memset(qr, 0, sizeof(uint32_t) * (size_t)(in_dim / 8));
        for (int g = 0; g < ng; g++) {
            const float *wg = wr + (size_t)g * group;
            float lo = wg[0], hi = wg[0];
            for (int k = 1; k < group; k++) {
                if (wg[k] < lo) lo = wg[k];
                if (wg[k] > hi) hi = wg[k];
            }
            if (clip) {
                float c = clip[(size_t)o * ng + g];
                if (hi > c) hi = c;
                if (lo < -c) lo = -c;
            }
            float s, z;
            if (zeros) {
                if (lo > 0) lo = 0; // the grid always holds 0 exactly
                if (hi < 0) hi = 0;
                s = (hi - lo) / 15.0f;
            } else {
                float m = fmaxf(fabsf(lo), fabsf(hi));
                s = m / 8.0f;
            }
            if (!(s > 1e-10f)) s = 1e-10f; // an all-zero group
            uint16_t sh = sl_f32_to_f16(s);
            if (sl_f16_to_f32(sh) == 0.0f) sh = 0x0001; // the smallest fp16 subnormal
            s = sl_f16_to_f32(sh);
            if (zeros) {
                z = roundf(-lo / s);
                if (z < 0) z = 0;
                if (z > 15) z = 15;
                zeros[(size_t)o * ng + g] = (uint8_t)z;
            } else {
                z = (float)INT4_SYM_ZERO;
            }
            scales[(size_t)o * ng + g] = sh;
            for (int k = 0; k < group; k++) {
                float v = wg[k];
                if (clip) v = fminf(fmaxf(v, lo), hi);
                float q = roundf(v / s) + z;
                if (q < 0) q = 0;
                if (q > 15) q = 15;
                int kk = g * group + k;
                qr[kk / 8] |= (uint32_t)q << (4 * (kk % 8));
            }
        }
    }
}

// ----------------------------------------------------------------------------
// random weights

void cpu_int4_fill_random(uint32_t *qweight, uint16_t *scales, uint8_t *zeros, int out_dim,
                          int in_dim, int group, uint64_t seed, float scale) {
    uint64_t key = mix64(seed + 0x9e3779b97f4a7c15ull);
    size_t nw = (size_t)out_dim * (in_dim / 8), ns = (size_t)out_dim * (in_dim / group);
    for (size_t i = 0; i < nw; i++)
        qweight[i] = (uint32_t)mix64(key ^ (i * 0x9e3779b97f4a7c15ull + 1));
    for (size_t i = 0; i < ns; i++) {
        uint64_t r = mix64(key ^ (i * 0x9e3779b97f4a7c15ull + 2));
        float u = (float)(r >> 40) * (1.0f / 16777216.0f); // [0, 1)
        scales[i] = sl_f32_to_f16(scale * (0.5f + u));
        if (zeros) zeros[i] = (uint8_t)((r >> 8) & 15u);
    }
}
