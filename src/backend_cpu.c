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
#include "cpu/int4_cpu.h"
#include "cpu/ops_cpu.h"
#include "cpu/sample_cpu.h"

// The CPU backend's state: the sampling buffers (sample_reserve), sized once.
typedef struct {
    int max_seqs;       // from reserve
    int vocab, top_n, want_logprob;
    uint32_t *counts;   // (n_slots, vocab) penalty histories, or NULL
    SampleRow *rows;    // (max_seqs) the step's requests
    int n_rows;
    float *logits;      // (max_seqs, vocab)
    int32_t *ids;       // (max_seqs) results of the last sample call
    float *lps;         // (max_seqs)
    int32_t *top_ids;   // (max_seqs, top_n)
    float *top_lps;     // (max_seqs, top_n)
} CpuImpl;

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

static void *copy_host(const void *src, size_t bytes) {
    void *p = sl_malloc(bytes ? bytes : 1);
    if (bytes) memcpy(p, src, bytes);
    return p;
}

static int cpu_load_linear_int4(Backend *be, LinearWeight *w, const uint32_t *qweight,
                                const uint16_t *scales, const uint8_t *zeros, const float *bias,
                                int out_dim, int in_dim, int group, sl_err *err) {
    memset(w, 0, sizeof *w);
    if (group <= 0 || group % 32 || in_dim % group || out_dim <= 0)
        return sl_errf(err, "INT4 linear layer (%d, %d): group size %d must be a positive "
                       "multiple of 32 dividing %d", out_dim, in_dim, group, in_dim);
    size_t ng = (size_t)out_dim * (in_dim / group);
    w->fmt = WFMT_INT4;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->group_size = group;
    w->data = copy_host(qweight, sizeof(uint32_t) * (size_t)out_dim * (in_dim / 8));
    w->scale = copy_host(scales, sizeof(uint16_t) * ng);
    w->zeros = zeros ? copy_host(zeros, ng) : NULL;
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

static void cpu_random_linear_int4(Backend *be, LinearWeight *w, int out_dim, int in_dim,
                                   int group, uint64_t seed, float scale) {
    memset(w, 0, sizeof *w);
    SL_CHECK(group > 0 && group % 32 == 0 && in_dim % group == 0);
    size_t ng = (size_t)out_dim * (in_dim / group);
    w->fmt = WFMT_INT4;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->group_size = group;
    w->data = sl_malloc(sizeof(uint32_t) * (size_t)out_dim * (in_dim / 8));
    w->scale = sl_malloc(sizeof(uint16_t) * ng);
    w->zeros = sl_malloc(ng);
    cpu_int4_fill_random(w->data, w->scale, w->zeros, out_dim, in_dim, group, seed, scale);
}

static void cpu_random_linear_fp8(Backend *be, LinearWeight *w, int out_dim, int in_dim,
                                  uint64_t seed, float std, int per_tensor) {
    float *tmp = sl_malloc(sizeof(float) * (size_t)out_dim * in_dim);
    cpu_fill_normal(tmp, (size_t)out_dim * in_dim, seed, 0.0f, std);
    Fp8Spec spec = {.per_row = !per_tensor, .in_scale = per_tensor ? FP8_BENCH_ACT_SCALE : 0.0f};
    cpu_load_linear_fp8(be, w, tmp, NULL, out_dim, in_dim, &spec, NULL);
    free(tmp);
}

static void cpu_reserve(Backend *be, int max_tokens, int max_seqs, int max_seq_len,
                        int block_size, int n_heads, int head_dim) {
    CpuImpl *c = be->impl;
    if (max_seqs > c->max_seqs) c->max_seqs = max_seqs;
}

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

static void cpu_layernorm_op(Backend *be, void *out, const void *x, const void *w,
                             const void *b, int n, int dim, float eps) {
    cpu_layernorm(out, x, w, b, n, dim, eps);
}

static void cpu_add_layernorm_op(Backend *be, void *out, void *x, const void *r, const void *w,
                                 const void *b, int n, int dim, float eps) {
    cpu_add_layernorm(out, x, r, w, b, n, dim, eps);
}

static void cpu_add_op(Backend *be, void *x, const void *r, size_t n) { cpu_add(x, r, n); }

static void cpu_gelu_op(Backend *be, void *out, const void *in, int n, int hidden, int gated,
                        int tanh_approx) {
    cpu_gelu(out, in, n, hidden, gated, tanh_approx);
}

static void cpu_linear_op(Backend *be, void *y, const void *x, const LinearWeight *w, int n) {
    if (n <= 0) return;
    if (w->fmt == WFMT_INT4) {
        cpu_w4a16_linear(y, x, w->data, w->scale, w->zeros, w->bias, n, w->in_dim, w->out_dim,
                         w->group_size);
        return;
    }
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
    int rd = s->no_rotary ? 0 : s->rotary_dim > 0 ? s->rotary_dim : s->head_dim;
    cpu_rope_kv_write_ex(qkv, k_cache, v_cache, b->pos, b->slots, inv_freq, b->n_tokens,
                         s->n_heads, s->n_kv_heads, s->head_dim, s->block_size, rd,
                         s->rope_interleaved);
    if (s->kv_fp8)
        cpu_kv_round_fp8(k_cache, v_cache, b->slots, b->n_tokens, s->n_kv_heads, s->head_dim,
                         s->block_size, s->k_scale, s->v_scale);
}

static void cpu_attention_op(Backend *be, void *out, const void *qkv, const void *k_cache,
                             const void *v_cache, const Batch *b, const AttnShape *s) {
    cpu_paged_attention_ex(out, qkv, k_cache, v_cache, b->pos, b->seq_of, b->block_tables,
                           b->max_blocks, b->n_tokens, s->n_heads, s->n_kv_heads, s->head_dim,
                           s->block_size, s->scale, s->window, s->alibi);
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

// ----------------------------------------------------------------------------
// sampling: the CPU twin (kernels/cpu/sample_cpu.c) over the reference sampler

static void cpu_sample_free(CpuImpl *c) {
    free(c->counts);
    free(c->rows);
    free(c->logits);
    free(c->ids);
    free(c->lps);
    free(c->top_ids);
    free(c->top_lps);
}

static void cpu_sample_reserve(Backend *be, int n_slots, int vocab, int max_hist, int top_n,
                               int want_logprob) {
    CpuImpl *c = be->impl;
    SL_CHECK(c->max_seqs > 0 && vocab > 0 && top_n >= 0 && top_n <= SAMPLE_MAX_TOP_N);
    cpu_sample_free(c);
    size_t S = (size_t)c->max_seqs;
    c->vocab = vocab;
    c->top_n = top_n;
    c->want_logprob = want_logprob;
    c->counts = n_slots > 0 ? sl_calloc((size_t)n_slots * vocab, sizeof(uint32_t)) : NULL;
    c->rows = sl_calloc(S, sizeof(SampleRow));
    c->logits = sl_malloc(sizeof(float) * S * vocab);
    c->ids = sl_calloc(S, sizeof(int32_t));
    c->lps = sl_calloc(S, sizeof(float));
    c->top_ids = sl_calloc(S * (top_n ? top_n : 1), sizeof(int32_t));
    c->top_lps = sl_calloc(S * (top_n ? top_n : 1), sizeof(float));
}

static void cpu_sample_prepare(Backend *be, const SampleRow *rows, int n, const SampleHistory *h) {
    CpuImpl *c = be->impl;
    SL_CHECK(c->rows && n >= 0 && n <= c->max_seqs);
    memcpy(c->rows, rows, sizeof(SampleRow) * n);
    c->n_rows = n;
    if (h && (h->n_reset || h->n_hist)) {
        SL_CHECK(c->counts != NULL);
        cpu_sample_hist_update(c->counts, c->vocab, h->reset_slots, h->n_reset, h->hist_slot,
                               h->hist_tok, h->n_hist);
    }
}

static void cpu_sample_op(Backend *be, const void *x, const LinearWeight *w, int n) {
    CpuImpl *c = be->impl;
    if (n <= 0) return;
    SL_CHECK(n == c->n_rows && w->out_dim == c->vocab);
    cpu_linear_op(be, c->logits, x, w, n);
    cpu_sample_rows(c->ids, c->want_logprob ? c->lps : NULL, c->top_ids, c->top_lps, c->top_n,
                    c->logits, n, c->vocab, c->rows, c->counts);
}

static void cpu_sample_wait(Backend *be, const SampleOut *out, int n) {
    CpuImpl *c = be->impl;
    if (n <= 0) return;
    memcpy(out->ids, c->ids, sizeof(int32_t) * n);
    if (out->logprobs) memcpy(out->logprobs, c->lps, sizeof(float) * n);
    if (out->top_ids && c->top_n) {
        memcpy(out->top_ids, c->top_ids, sizeof(int32_t) * n * c->top_n);
        memcpy(out->top_lps, c->top_lps, sizeof(float) * n * c->top_n);
    }
}

static void *cpu_host_alloc(Backend *be, size_t bytes) { return sl_malloc(bytes); }
static void cpu_host_free(Backend *be, void *p) { free(p); }

static void cpu_destroy(Backend *be) {
    if (!be) return;
    if (be->impl) {
        cpu_sample_free(be->impl);
        free(be->impl);
    }
    free(be);
}

Backend *backend_cpu_create(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    Backend *be = sl_calloc(1, sizeof *be);
    be->name = "cpu";
    be->act_bytes = 4;
    be->kv_fp8_bytes = 4; // emulated: fp32 values rounded through e4m3
    be->impl = sl_calloc(1, sizeof(CpuImpl));
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->mem_free = cpu_mem_free;
    be->upload_f32 = cpu_upload_f32;
    be->upload_table = cpu_upload_table;
    be->load_linear = cpu_load_linear;
    be->load_linear_int4 = cpu_load_linear_int4;
    be->random_linear_int4 = cpu_random_linear_int4;
    be->load_linear_fp8 = cpu_load_linear_fp8;
    be->random_linear_fp8 = cpu_random_linear_fp8;
    be->reserve = cpu_reserve;
    be->alloc_linear = cpu_alloc_linear;
    be->fill_normal = cpu_fill_normal_op;
    be->set_batch = cpu_set_batch;
    be->embed = cpu_embed_op;
    be->rmsnorm = cpu_rmsnorm_op;
    be->add_rmsnorm = cpu_add_rmsnorm_op;
    be->layernorm = cpu_layernorm_op;
    be->add_layernorm = cpu_add_layernorm_op;
    be->add = cpu_add_op;
    be->gelu = cpu_gelu_op;
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
    be->sample_reserve = cpu_sample_reserve;
    be->sample_prepare = cpu_sample_prepare;
    be->sample = cpu_sample_op;
    be->sample_wait = cpu_sample_wait;
    be->host_alloc = cpu_host_alloc;
    be->host_free = cpu_host_free;
    be->destroy = cpu_destroy;
    return be;
}
