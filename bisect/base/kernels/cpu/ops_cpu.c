// ops_cpu.c: fp32 reference kernels (see ops_cpu.h).
//
// Written for clarity first. The two places that matter for speed on the CPU,
// the matrix product and attention, are parallel with OpenMP and written so
// the compiler can vectorise the inner loops without reassociating sums
// (8 independent partial sums), which keeps results deterministic.
#include "ops_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// helpers

// Dot product with 8 independent accumulators (vectorisable without
// -ffast-math; the summation order depends only on n).
static inline float dot_f32(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// ----------------------------------------------------------------------------
// embedding, norms, activations

void cpu_embed(float *out, const float *table, const int32_t *tokens, int n, int dim) {
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * dim, table + (size_t)tokens[i] * dim, sizeof(float) * dim);
}

static void rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps) {
    double ss = 0; // double: the reference should not lose bits in the mean
    for (int j = 0; j < dim; j++) ss += (double)x[j] * x[j];
    float inv = (float)(1.0 / sqrt(ss / dim + eps));
    for (int j = 0; j < dim; j++) out[j] = w[j] * (x[j] * inv);
}

void cpu_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
#pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++)
        rmsnorm_row(out + (size_t)i * dim, x + (size_t)i * dim, w, dim, eps);
}

void cpu_add_rmsnorm(float *out, float *x, const float *r, const float *w, int n, int dim,
                     float eps) {
#pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * dim;
        const float *ri = r + (size_t)i * dim;
        for (int j = 0; j < dim; j++) xi[j] += ri[j];
        rmsnorm_row(out + (size_t)i * dim, xi, w, dim, eps);
    }
}

void cpu_swiglu(float *out, const float *gu, int n, int hidden) {
#pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++) {
        const float *g = gu + (size_t)i * 2 * hidden, *u = g + hidden;
        float *o = out + (size_t)i * hidden;
        for (int j = 0; j < hidden; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

void cpu_gather_rows(float *out, const float *x, const int32_t *rows, int m, int dim) {
    for (int j = 0; j < m; j++)
        memcpy(out + (size_t)j * dim, x + (size_t)rows[j] * dim, sizeof(float) * dim);
}

// ----------------------------------------------------------------------------
// linear: y = x @ w^T. Parallel over output features so each weight row is
// read once per call and reused across all rows of x (decode batches are
// small, weights are large).

void cpu_linear(float *y, const float *x, const float *w, const float *bias, int n,
                int in_dim, int out_dim) {
#pragma omp parallel for schedule(static)
    for (int j = 0; j < out_dim; j++) {
        const float *wj = w + (size_t)j * in_dim;
        float b = bias ? bias[j] : 0.0f;
        for (int i = 0; i < n; i++)
            y[(size_t)i * out_dim + j] = dot_f32(x + (size_t)i * in_dim, wj, in_dim) + b;
    }
}

// ----------------------------------------------------------------------------
// rotary embeddings

void cpu_rope_inv_freq(float *inv_freq, int head_dim, int rope_type, float theta,
                       float factor, float low_freq_factor, float high_freq_factor,
                       int orig_max_pos) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        // As HF computes it, in float32: 1 / theta^(2i/d)
        float expo = (float)(2 * i) / (float)head_dim;
        float f = 1.0f / powf(theta, expo);
        if (rope_type == 1) { // linear: positions / factor
            f = f / factor;
        } else if (rope_type == 2) { // llama3: scale long wavelengths, blend the middle band
            float wavelen = 2.0f * (float)M_PI / f;
            float low_wl = (float)orig_max_pos / low_freq_factor;
            float high_wl = (float)orig_max_pos / high_freq_factor;
            if (wavelen > low_wl) {
                f = f / factor;
            } else if (wavelen >= high_wl) {
                float smooth = ((float)orig_max_pos / wavelen - low_freq_factor) /
                               (high_freq_factor - low_freq_factor);
                f = (1.0f - smooth) * f / factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

static void rotate_head(float *v, int pos, const float *inv_freq, int half) {
    for (int i = 0; i < half; i++) {
        float a = (float)pos * inv_freq[i]; // fp32 angle, as HF computes it
        float c = cosf(a), s = sinf(a);
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}

void cpu_rope_kv_write(float *qkv, float *k_cache, float *v_cache, const int32_t *pos,
                       const int32_t *slots, const float *inv_freq, int n, int n_heads,
                       int n_kv_heads, int head_dim, int block_size) {
    int stride = (n_heads + 2 * n_kv_heads) * head_dim;
    int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++) {
        float *row = qkv + (size_t)i * stride;
        for (int h = 0; h < n_heads + n_kv_heads; h++) // q heads then k heads
            rotate_head(row + (size_t)h * head_dim, pos[i], inv_freq, half);
        if (slots[i] < 0) continue; // padding row: rotated, not cached
        int blk = slots[i] / block_size, off = slots[i] % block_size;
        for (int h = 0; h < n_kv_heads; h++) {
            size_t dst = (((size_t)blk * n_kv_heads + h) * block_size + off) * head_dim;
            memcpy(k_cache + dst, row + (size_t)(n_heads + h) * head_dim, sizeof(float) * head_dim);
            memcpy(v_cache + dst, row + (size_t)(n_heads + n_kv_heads + h) * head_dim,
                   sizeof(float) * head_dim);
        }
    }
}

// ----------------------------------------------------------------------------
// paged attention: plain two-pass softmax per (row, head); scores for one row
// live in a thread-private buffer sized to the row's context.

void cpu_paged_attention(float *out, const float *qkv, const float *k_cache,
                         const float *v_cache, const int32_t *pos, const int32_t *seq_of,
                         const int32_t *block_tables, int max_blocks, int n, int n_heads,
                         int n_kv_heads, int head_dim, int block_size, float scale) {
    int stride = (n_heads + 2 * n_kv_heads) * head_dim;
    int group = n_heads / n_kv_heads;
    int max_ctx = 0;
    for (int i = 0; i < n; i++)
        if (pos[i] + 1 > max_ctx) max_ctx = pos[i] + 1;
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (max_ctx > 0 ? max_ctx : 1));
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < n_heads; h++) {
                const float *q = qkv + (size_t)i * stride + (size_t)h * head_dim;
                const int32_t *bt = block_tables + (size_t)seq_of[i] * max_blocks;
                int kvh = h / group, ctx = pos[i] + 1;
                float mx = -INFINITY;
                for (int t = 0; t < ctx; t++) {
                    int blk = bt[t / block_size], off = t % block_size;
                    const float *k =
                        k_cache + (((size_t)blk * n_kv_heads + kvh) * block_size + off) * head_dim;
                    scores[t] = dot_f32(q, k, head_dim) * scale;
                    if (scores[t] > mx) mx = scores[t];
                }
                float sum = 0;
                for (int t = 0; t < ctx; t++) {
                    scores[t] = expf(scores[t] - mx);
                    sum += scores[t];
                }
                float *o = out + (size_t)i * n_heads * head_dim + (size_t)h * head_dim;
                for (int d = 0; d < head_dim; d++) o[d] = 0;
                for (int t = 0; t < ctx; t++) {
                    int blk = bt[t / block_size], off = t % block_size;
                    const float *v =
                        v_cache + (((size_t)blk * n_kv_heads + kvh) * block_size + off) * head_dim;
                    float p = scores[t] / sum;
                    for (int d = 0; d < head_dim; d++) o[d] += p * v[d];
                }
            }
        }
        free(scores);
    }
}

// ----------------------------------------------------------------------------
// greedy

void cpu_argmax_rows(int32_t *out, const float *logits, int n, int vocab) {
    for (int r = 0; r < n; r++) {
        const float *row = logits + (size_t)r * vocab;
        float best = -INFINITY;
        int idx = 0;
        for (int j = 0; j < vocab; j++) {
            float x = isnan(row[j]) ? -INFINITY : row[j];
            if (x > best) {
                best = x;
                idx = j;
            }
        }
        out[r] = idx;
    }
}

// ----------------------------------------------------------------------------
// random fill (mirrors kernels/cuda/random.cu)

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cpu_fill_normal(float *dst, size_t n, uint64_t seed, float mean, float std) {
    uint64_t key = mix64(seed + 0x9e3779b97f4a7c15ull);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mix64(key ^ (i * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull));
        // two 24-bit uniforms in (0, 1]; Box-Muller
        float u1 = ((float)(r >> 40) + 1.0f) * (1.0f / 16777216.0f);
        float u2 = (float)((r >> 16) & 0xffffff) * (1.0f / 16777216.0f);
        dst[i] = mean + std * sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
    }
}
