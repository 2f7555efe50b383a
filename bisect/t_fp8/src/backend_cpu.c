// backend_cpu.c: the CPU backend: fp32 everywhere, kernels from kernels/cpu.
//
// It is the reference every other backend is checked against, so it stays a
// thin, obvious layer over ops_cpu.c.
//
// FP8 is emulated exactly (kernels/cpu/fp8_cpu.c): FP8 weights keep their
// e4m3 codes and scales, activations entering an FP8 linear are quantised by
// the same rules as on the GPU (static scale or per-token absmax), and an FP8
// KV cache holds fp32 values rounded through e4m3 with the layer's scales.
// So the CPU backend is the FP8 path's twin, and FP8 accuracy can be measured
// without a GPU (sluice eval).
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/ops_cpu.h"

static void *cpu_alloc(Backend *be, size_t bytes) { return sl_calloc(1, bytes); }
static void cpu_free(Backend *be, void *p) { free(p); }

static size_t cpu_mem_free(Backend *be) {
    // The CPU KV pool is sized by --kv-blocks; report "plenty".
    return (size_t)1 << 40;
}

static void *cpu_upload_f32(Backend *be, const float *host, size_t n) {
    float *p = sl_malloc(sizeof(float) * (n ? n : 1));
    memcpy(p, host, sizeof(float) * n);
    return p;
}

static void *cpu_upload_table(Backend *be, const float *host, size_t rows, size_t cols) {
    return cpu_upload_f32(be, host, rows * cols);
}

static int cpu_load_linear(Backend *be, LinearWeight *w, const float *host, const float *bias,
                           int out_dim, int in_dim, sl_err *err) {
    memset(w, 0, sizeof *w);
    w->fmt = WFMT_F32;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->data = cpu_upload_f32(be, host, (size_t)out_dim * in_dim);
    w->bias = bias ? cpu_upload_f32(be, bias, out_dim) : NULL;
    return 0;
}

static int cpu_load_linear_fp8(Backend *be, LinearWeight *w, const float *host,
                               const float *bias, int out_dim, int in_dim, const Fp8Spec *spec,
                               sl_err *err) {
    memset(w, 0, sizeof *w);
    w->fmt = WFMT_FP8_E4M3;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->scale_per_row = spec->w_scale ? 1 : spec->per_row;
    w->in_scale = spec->in_scale;
    w->data = sl_malloc((size_t)out_dim * in_dim);
    w->scale = sl_malloc(sizeof(float) * (size_t)out_dim);
    cpu_quantize_weight_fp8(w->data, w->scale, host, out_dim, in_dim, w->scale_per_row,
                            spec->w_scale);
    w->bias = bias ? cpu_upload_f32(be, bias, out_dim) : NULL;
    return 0;
}

static void cpu_random_linear_fp8(Backend *be, LinearWeight *w, int out_dim, int in_dim,
                                  uint64_t seed, float std) {
    float *tmp = sl_malloc(sizeof(float) * (size_t)out_dim * in_dim);
    cpu_fill_normal(tmp, (size_t)out_dim * in_dim, seed, 0.0f, std);
    Fp8Spec spec = {.per_row = 1};
    cpu_load_linear_fp8(be, w, tmp, NULL, out_dim, in_dim, &spec, NULL);
    free(tmp);
}

static void cpu_reserve(Backend *be, int max_tokens, int max_seqs, int max_seq_len,
                        int block_size, int n_heads, int head_dim) {}

static void cpu_alloc_linear(Backend *be, LinearWeight *w, int out_dim, int in_dim) {
    memset(w, 0, sizeof *w);
    w->fmt = WFMT_F32;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->data = sl_malloc(sizeof(float) * (size_t)out_dim * in_dim);
}

static void cpu_fill_normal_op(Backend *be, void *dst, size_t n, int f32, uint64_t seed,
                               float mean, float std) {
    cpu_fill_normal(dst, n, seed, mean, std); // everything is fp32 here
}

static const Batch *cpu_set_batch(Backend *be, const Batch *host) { return host; }

static void cpu_embed_op(Backend *be, void *out, const void *table, const Batch *b, int dim) {
    cpu_embed(out, table, b->tokens, b->n_tokens, dim);
}

static void cpu_rmsnorm_op(Backend *be, void *out, const void *x, const void *w, int n, int dim,
                           float eps) {
    cpu_rmsnorm(out, x, w, n, dim, eps);
}

static void cpu_add_rmsnorm_op(Backend *be, void *out, void *x, const void *r, const void *w,
                               int n, int dim, float eps) {
    cpu_add_rmsnorm(out, x, r, w, n, dim, eps);
}

static void cpu_linear_op(Backend *be, void *y, const void *x, const LinearWeight *w, int n) {
    if (n <= 0) return;
    if (w->fmt == WFMT_FP8_E4M3) {
        // x quantised as the GPU's producing kernel would, then the FP8 GEMM
        uint8_t *xq = sl_malloc((size_t)n * w->in_dim);
        float *xs = sl_malloc(sizeof(float) * (size_t)n);
        cpu_quantize_fp8_rows(xq, xs, x, n, w->in_dim, w->in_scale);
        cpu_linear_fp8(y, xq, xs, w->data, w->scale, w->scale_per_row, w->bias, n, w->in_dim,
                       w->out_dim);
        free(xq);
        free(xs);
        return;
    }
    SL_CHECK(w->fmt == WFMT_F32);
    cpu_linear(y, x, w->data, w->bias, n, w->in_dim, w->out_dim);
}

// The CPU keeps fp32 between ops: the *_q ops are the plain ones and
// linear_q quantises inside (the same codes the GPU's fused kernels emit).
static void cpu_rmsnorm_q_op(Backend *be, void *out, const void *x, const void *w, int n,
                             int dim, float eps, const LinearWeight *next) {
    cpu_rmsnorm(out, x, w, n, dim, eps);
}

static void cpu_add_rmsnorm_q_op(Backend *be, void *out, void *x, const void *r, const void *w,
                                 int n, int dim, float eps, const LinearWeight *next) {
    cpu_add_rmsnorm(out, x, r, w, n, dim, eps);
}

static void cpu_swiglu_q_op(Backend *be, void *out, const void *gu, int n, int hidden,
                            const LinearWeight *next) {
    cpu_swiglu(out, gu, n, hidden);
}

static void cpu_rope_kv_write_op(Backend *be, void *qkv, void *k_cache, void *v_cache,
                                 const Batch *b, const void *inv_freq, const AttnShape *s) {
    cpu_rope_kv_write(qkv, k_cache, v_cache, b->pos, b->slots, inv_freq, b->n_tokens,
                      s->n_heads, s->n_kv_heads, s->head_dim, s->block_size);
    if (s->kv_fp8)
        cpu_kv_round_fp8(k_cache, v_cache, b->slots, b->n_tokens, s->n_kv_heads, s->head_dim,
                         s->block_size, s->k_scale, s->v_scale);
}

static void cpu_attention_op(Backend *be, void *out, const void *qkv, const void *k_cache,
                             const void *v_cache, const Batch *b, const AttnShape *s) {
    cpu_paged_attention(out, qkv, k_cache, v_cache, b->pos, b->seq_of, b->block_tables,
                        b->max_blocks, b->n_tokens, s->n_heads, s->n_kv_heads, s->head_dim,
                        s->block_size, s->scale);
}

static void cpu_swiglu_op(Backend *be, void *out, const void *gu, int n, int hidden) {
    cpu_swiglu(out, gu, n, hidden);
}

static void cpu_gather_rows_op(Backend *be, void *out, const void *x, const Batch *b, int dim) {
    cpu_gather_rows(out, x, b->logit_rows, b->n_logits, dim);
}

static void cpu_logits_op(Backend *be, float *logits_host, const void *x, const LinearWeight *w,
                          int n) {
    cpu_linear_op(be, logits_host, x, w, n);
}

// The CPU backend's argmax computes the logits it needs, row by row, in a
// scratch row: the same values cpu_logits_op would return.
static void cpu_argmax_op(Backend *be, int32_t *ids_host, const void *x, const LinearWeight *w,
                          int n) {
    float *row = sl_malloc(sizeof(float) * (size_t)w->out_dim);
    for (int r = 0; r < n; r++) {
        cpu_linear_op(be, row, (const float *)x + (size_t)r * w->in_dim, w, 1);
        cpu_argmax_rows(ids_host + r, row, 1, w->out_dim);
    }
    free(row);
}

static void *cpu_host_alloc(Backend *be, size_t bytes) { return sl_malloc(bytes); }
static void cpu_host_free(Backend *be, void *p) { free(p); }

static void cpu_destroy(Backend *be) { free(be); }

Backend *backend_cpu_create(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    Backend *be = sl_calloc(1, sizeof *be);
    be->name = "cpu";
    be->act_bytes = 4;
    be->kv_fp8_bytes = 4; // emulated: fp32 values rounded through e4m3
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->mem_free = cpu_mem_free;
    be->upload_f32 = cpu_upload_f32;
    be->upload_table = cpu_upload_table;
    be->load_linear = cpu_load_linear;
    be->load_linear_fp8 = cpu_load_linear_fp8;
    be->random_linear_fp8 = cpu_random_linear_fp8;
    be->reserve = cpu_reserve;
    be->alloc_linear = cpu_alloc_linear;
    be->fill_normal = cpu_fill_normal_op;
    be->set_batch = cpu_set_batch;
    be->embed = cpu_embed_op;
    be->rmsnorm = cpu_rmsnorm_op;
    be->add_rmsnorm = cpu_add_rmsnorm_op;
    be->linear = cpu_linear_op;
    be->rope_kv_write = cpu_rope_kv_write_op;
    be->attention = cpu_attention_op;
    be->swiglu = cpu_swiglu_op;
    be->rmsnorm_q = cpu_rmsnorm_q_op;
    be->add_rmsnorm_q = cpu_add_rmsnorm_q_op;
    be->swiglu_q = cpu_swiglu_q_op;
    be->linear_q = cpu_linear_op;
    be->gather_rows = cpu_gather_rows_op;
    be->logits = cpu_logits_op;
    be->argmax = cpu_argmax_op;
    be->host_alloc = cpu_host_alloc;
    be->host_free = cpu_host_free;
    be->destroy = cpu_destroy;
    return be;
}
