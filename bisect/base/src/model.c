// model.c: the Llama-family decoder (RMSNorm, RoPE incl. llama3 scaling,
// MHA/GQA/MQA, SwiGLU, tied or untied embeddings) on any backend.
//
// Loading reads each tensor's slice for this tensor-parallel rank from the
// mmap'd safetensors (Megatron layout: q/k/v and gate/up split by output rows,
// o and down split by input columns), converts it to fp32 on the host one
// tensor at a time, and hands it to the backend, which keeps it in its own
// format. q, k, v are fused into one (qkv) matrix and gate, up into one (gu)
// so each sublayer is one GEMM.
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops_cpu.h"

// ----------------------------------------------------------------------------
// loading helpers

// Copies rows [r0, r0+nr) x cols [c0, c0+nc) of the 2-D tensor `name`, which
// must have shape (R, C), into dst (nr, nc) as fp32.
static int load_slice(const st_file *st, const char *name, int64_t R, int64_t C, int64_t r0,
                      int64_t nr, int64_t c0, int64_t nc, float *dst, sl_err *err) {
    const st_tensor *t;
    int64_t shape[2] = {R, C};
    if (st_expect(st, name, 2, shape, &t, err)) return -1;
    for (int64_t r = 0; r < nr; r++) st_to_f32(t, (r0 + r) * C + c0, nc, dst + r * nc);
    return 0;
}

static int load_vec(const st_file *st, const char *name, int64_t n, int64_t first, int64_t count,
                    float *dst, sl_err *err) {
    const st_tensor *t;
    if (st_expect(st, name, 1, &n, &t, err)) return -1;
    st_to_f32(t, first, count, dst);
    return 0;
}

// Name of layer l's tensor: "model.layers.<l>.<suffix>".
static const char *lname(char *buf, size_t n, int l, const char *suffix) {
    snprintf(buf, n, "model.layers.%d.%s", l, suffix);
    return buf;
}

// Loads layer l's weights (this rank's slices).
static int load_layer(Model *m, const st_file *st, int l, float *tmp, float *tmp_bias,
                      sl_err *err) {
    const ModelConfig *c = &m->cfg;
    Backend *be = m->be;
    LayerWeights *L = &m->layers[l];
    int r = m->opt.tp_rank, hd = c->head_dim, dim = c->dim;
    int nh = m->attn.n_heads, nkv = m->attn.n_kv_heads, hid = m->hidden_local;
    char nm[256];

    // norms
    if (load_vec(st, lname(nm, sizeof nm, l, "input_layernorm.weight"), dim, 0, dim, tmp, err))
        return -1;
    L->attn_norm = be->upload_f32(be, tmp, dim);
    if (load_vec(st, lname(nm, sizeof nm, l, "post_attention_layernorm.weight"), dim, 0, dim,
                 tmp, err))
        return -1;
    L->ffn_norm = be->upload_f32(be, tmp, dim);

    // qkv: rows [q heads of this rank | k heads | v heads]. With fewer kv
    // heads than ranks, each kv head is replicated on tp / n_kv_heads ranks:
    // rank r holds kv head r / (tp / n_kv_heads), the one its q heads use.
    int kv_first = c->n_kv_heads >= m->opt.tp_size ? r * nkv
                                                   : r / (m->opt.tp_size / c->n_kv_heads);
    struct { const char *w, *b; int heads, total, first; } parts[3] = {
        {"self_attn.q_proj.weight", "self_attn.q_proj.bias", nh, c->n_heads, r * nh},
        {"self_attn.k_proj.weight", "self_attn.k_proj.bias", nkv, c->n_kv_heads, kv_first},
        {"self_attn.v_proj.weight", "self_attn.v_proj.bias", nkv, c->n_kv_heads, kv_first},
    };
    int64_t row = 0;
    for (int p = 0; p < 3; p++) {
        int64_t rows = (int64_t)parts[p].heads * hd, r0 = (int64_t)parts[p].first * hd;
        if (load_slice(st, lname(nm, sizeof nm, l, parts[p].w), (int64_t)parts[p].total * hd,
                       dim, r0, rows, 0, dim, tmp + row * dim, err))
            return -1;
        if (c->attn_bias &&
            load_vec(st, lname(nm, sizeof nm, l, parts[p].b), (int64_t)parts[p].total * hd, r0,
                     rows, tmp_bias + row, err))
            return -1;
        row += rows;
    }
    if (be->load_linear(be, &L->wqkv, tmp, c->attn_bias ? tmp_bias : NULL, (int)row, dim, err))
        return -1;

    // o: this rank's input columns; its bias is added once (rank 0)
    int64_t q_all = (int64_t)c->n_heads * hd, q_loc = (int64_t)nh * hd;
    if (load_slice(st, lname(nm, sizeof nm, l, "self_attn.o_proj.weight"), dim, q_all, 0, dim,
                   (int64_t)r * q_loc, q_loc, tmp, err))
        return -1;
    int o_bias = c->attn_bias && r == 0;
    if (o_bias && load_vec(st, lname(nm, sizeof nm, l, "self_attn.o_proj.bias"), dim, 0, dim,
                           tmp_bias, err))
        return -1;
    if (be->load_linear(be, &L->wo, tmp, o_bias ? tmp_bias : NULL, dim, (int)q_loc, err))
        return -1;

    // gate | up: this rank's rows of each
    const char *gu_names[2] = {"mlp.gate_proj", "mlp.up_proj"};
    for (int p = 0; p < 2; p++) {
        char wn[64], bn[64];
        snprintf(wn, sizeof wn, "%s.weight", gu_names[p]);
        snprintf(bn, sizeof bn, "%s.bias", gu_names[p]);
        if (load_slice(st, lname(nm, sizeof nm, l, wn), c->hidden_dim, dim, (int64_t)r * hid,
                       hid, 0, dim, tmp + (int64_t)p * hid * dim, err))
            return -1;
        if (c->mlp_bias && load_vec(st, lname(nm, sizeof nm, l, bn), c->hidden_dim,
                                    (int64_t)r * hid, hid, tmp_bias + (int64_t)p * hid, err))
            return -1;
    }
    if (be->load_linear(be, &L->wgu, tmp, c->mlp_bias ? tmp_bias : NULL, 2 * hid, dim, err))
        return -1;

    // down: this rank's input columns
    if (load_slice(st, lname(nm, sizeof nm, l, "mlp.down_proj.weight"), dim, c->hidden_dim, 0,
                   dim, (int64_t)r * hid, hid, tmp, err))
        return -1;
    int d_bias = c->mlp_bias && r == 0;
    if (d_bias && load_vec(st, lname(nm, sizeof nm, l, "mlp.down_proj.bias"), dim, 0, dim,
                           tmp_bias, err))
        return -1;
    return be->load_linear(be, &L->wdown, tmp, d_bias ? tmp_bias : NULL, dim, hid, err);
}

// ----------------------------------------------------------------------------
// load / free

// The parts of a Model that do not depend on where the weights come from:
// shapes for this rank, checks that the tensor-parallel size fits them.
static Model *model_new(const ModelConfig *cfg, Backend *be, const ModelOptions *opt,
                        sl_err *err) {
    int tp = opt->tp_size > 0 ? opt->tp_size : 1;
    // kv heads split over the ranks, or (fewer kv heads than ranks) each
    // replicated on tp / n_kv_heads ranks
    int kv_ok = cfg->n_kv_heads >= tp ? cfg->n_kv_heads % tp == 0 : tp % cfg->n_kv_heads == 0;
    if (cfg->n_heads % tp || !kv_ok || cfg->hidden_dim % tp) {
        sl_errf(err,
                "--tp %d does not divide the model's heads (%d query, %d key/value) "
                "and intermediate size (%d)",
                tp, cfg->n_heads, cfg->n_kv_heads, cfg->hidden_dim);
        return NULL;
    }
    if (cfg->head_dim % 2) {
        sl_errf(err, "config.json: head_dim %d is odd; rotary embeddings need it even",
                cfg->head_dim);
        return NULL;
    }
    Model *m = sl_calloc(1, sizeof *m);
    m->cfg = *cfg;
    m->opt = *opt;
    m->opt.tp_size = tp;
    m->be = be;
    m->attn.n_heads = cfg->n_heads / tp;
    m->attn.n_kv_heads = cfg->n_kv_heads >= tp ? cfg->n_kv_heads / tp : 1;
    m->attn.head_dim = cfg->head_dim;
    m->attn.scale = 1.0f / sqrtf((float)cfg->head_dim);
    m->hidden_local = cfg->hidden_dim / tp;
    m->layers = sl_calloc(cfg->n_layers, sizeof *m->layers);
    return m;
}

static int qkv_rows(const Model *m) {
    return (m->attn.n_heads + 2 * m->attn.n_kv_heads) * m->attn.head_dim;
}

// Rotary frequencies and every activation buffer, sized once for the worst step.
static void model_finish_init(Model *m, float *tmp) {
    Backend *be = m->be;
    const ModelConfig *cfg = &m->cfg;
    int dim = cfg->dim, hd = cfg->head_dim;
    cpu_rope_inv_freq(tmp, hd, cfg->rope_type, cfg->rope_theta, cfg->rope_factor,
                      cfg->rope_low_freq_factor, cfg->rope_high_freq_factor,
                      cfg->rope_orig_max_pos);
    m->inv_freq = be->upload_f32(be, tmp, hd / 2);
    size_t T = m->opt.max_tokens, S = m->opt.max_seqs, ab = be->act_bytes;
    m->x = be->alloc(be, T * dim * ab);
    m->h = be->alloc(be, T * dim * ab);
    m->qkv = be->alloc(be, T * qkv_rows(m) * ab);
    m->att = be->alloc(be, T * m->attn.n_heads * hd * ab);
    m->o = be->alloc(be, T * dim * ab);
    m->gu = be->alloc(be, T * 2 * m->hidden_local * ab);
    m->act = be->alloc(be, T * m->hidden_local * ab);
    m->xl = be->alloc(be, S * dim * ab);
    m->hl = be->alloc(be, S * dim * ab);
}

int model_load_from(Model **out, const ModelConfig *cfg, const st_file *st, Backend *be,
                    const ModelOptions *opt, sl_err *err) {
    *out = NULL;
    Model *m = model_new(cfg, be, opt, err);
    if (!m) return -1;

    // One host scratch big enough for the largest tensor slice we convert.
    int dim = cfg->dim, hd = cfg->head_dim;
    size_t qr = (size_t)qkv_rows(m);
    size_t biggest = (size_t)cfg->vocab_size * dim;
    size_t cand[3] = {qr * dim, (size_t)2 * m->hidden_local * dim,
                      (size_t)dim * (m->hidden_local > (int)(m->attn.n_heads * hd)
                                         ? m->hidden_local
                                         : m->attn.n_heads * hd)};
    for (int i = 0; i < 3; i++)
        if (cand[i] > biggest) biggest = cand[i];
    float *tmp = sl_malloc(sizeof(float) * biggest);
    float *tmp_bias = sl_malloc(sizeof(float) * (qr + 2 * m->hidden_local + dim + 1));

    // embeddings, final norm, head
    if (load_slice(st, "model.embed_tokens.weight", cfg->vocab_size, dim, 0, cfg->vocab_size, 0,
                   dim, tmp, err))
        goto fail;
    m->embed = be->upload_table(be, tmp, cfg->vocab_size, dim);
    const char *head = "lm_head.weight";
    if (cfg->tie_embeddings) {
        head = "model.embed_tokens.weight";
    } else if (!st_find(st, head)) {
        // st_expect's message names the checkpoint ("DIR: tensor ... missing")
        sl_err miss = {{0}};
        st_expect(st, head, 2, NULL, NULL, &miss);
        sl_errf(err, "%s (tie_word_embeddings is false)", miss.msg);
        goto fail;
    }
    if (load_slice(st, head, cfg->vocab_size, dim, 0, cfg->vocab_size, 0, dim, tmp, err)) goto fail;
    if (be->load_linear(be, &m->lm_head, tmp, NULL, cfg->vocab_size, dim, err)) goto fail;
    if (load_vec(st, "model.norm.weight", dim, 0, dim, tmp, err)) goto fail;
    m->final_norm = be->upload_f32(be, tmp, dim);

    for (int l = 0; l < cfg->n_layers; l++)
        if (load_layer(m, st, l, tmp, tmp_bias, err)) goto fail;

    model_finish_init(m, tmp);
    free(tmp);
    free(tmp_bias);
    *out = m;
    return 0;
fail:
    free(tmp);
    free(tmp_bias);
    model_free(m);
    return -1;
}

// Random weights: normal(0, 0.02) matrices and embeddings, unit norm weights,
// filled by the backend itself (on the GPU: no host traffic at all).
static void random_linear(Model *m, LinearWeight *w, int out_dim, int in_dim, uint64_t seed) {
    m->be->alloc_linear(m->be, w, out_dim, in_dim);
    m->be->fill_normal(m->be, w->data, (size_t)out_dim * in_dim, w->fmt == WFMT_F32, seed, 0.0f,
                       0.02f);
}

static void *unit_vector(Model *m, int n, float *tmp) {
    for (int i = 0; i < n; i++) tmp[i] = 1.0f;
    return m->be->upload_f32(m->be, tmp, n);
}

int model_init_random(Model **out, const ModelConfig *cfg, Backend *be, const ModelOptions *opt,
                      uint64_t seed, sl_err *err) {
    *out = NULL;
    Model *m = model_new(cfg, be, opt, err);
    if (!m) return -1;
    int dim = cfg->dim;
    float *tmp = sl_malloc(sizeof(float) * (dim > cfg->head_dim ? dim : cfg->head_dim));
    // Every tensor gets its own stream: seed + a tensor counter (ranks differ).
    uint64_t k = seed * 1000003ull + (uint64_t)m->opt.tp_rank * 7919ull;
    size_t emb = (size_t)cfg->vocab_size * dim;
    m->embed = be->alloc(be, emb * be->act_bytes);
    be->fill_normal(be, m->embed, emb, be->act_bytes == 4, k++, 0.0f, 1.0f);
    random_linear(m, &m->lm_head, cfg->vocab_size, dim, k++);
    m->final_norm = unit_vector(m, dim, tmp);
    for (int l = 0; l < cfg->n_layers; l++) {
        LayerWeights *L = &m->layers[l];
        L->attn_norm = unit_vector(m, dim, tmp);
        L->ffn_norm = unit_vector(m, dim, tmp);
        random_linear(m, &L->wqkv, qkv_rows(m), dim, k++);
        random_linear(m, &L->wo, dim, m->attn.n_heads * cfg->head_dim, k++);
        random_linear(m, &L->wgu, 2 * m->hidden_local, dim, k++);
        random_linear(m, &L->wdown, dim, m->hidden_local, k++);
    }
    model_finish_init(m, tmp);
    free(tmp);
    *out = m;
    return 0;
}

int model_load(Model **out, const char *dir, Backend *be, const ModelOptions *opt,
               sl_err *err) {
    ModelConfig cfg;
    st_file *st = NULL;
    *out = NULL;
    if (config_load(&cfg, dir, err)) return -1;
    if (st_open_dir(&st, dir, err)) return -1;
    int rc = model_load_from(out, &cfg, st, be, opt, err);
    st_close(st); // weights now live in backend memory
    return rc;
}

static void free_linear(Backend *be, LinearWeight *w) {
    if (w->data) be->free(be, w->data);
    if (w->scale) be->free(be, w->scale);
    if (w->zeros) be->free(be, w->zeros);
    if (w->bias) be->free(be, w->bias);
}

void model_free(Model *m) {
    if (!m) return;
    Backend *be = m->be;
    void *bufs[] = {m->embed, m->final_norm, m->inv_freq, m->k_cache, m->v_cache, m->x, m->h,
                    m->qkv, m->att, m->o, m->gu, m->act, m->xl, m->hl};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free_linear(be, &m->lm_head);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            LayerWeights *L = &m->layers[l];
            if (L->attn_norm) be->free(be, L->attn_norm);
            if (L->ffn_norm) be->free(be, L->ffn_norm);
            free_linear(be, &L->wqkv);
            free_linear(be, &L->wo);
            free_linear(be, &L->wgu);
            free_linear(be, &L->wdown);
        }
        free(m->layers);
    }
    free(m);
}

// ----------------------------------------------------------------------------
// KV pool

size_t model_kv_block_bytes(const Model *m, int block_size) {
    return (size_t)2 * m->cfg.n_layers * m->attn.n_kv_heads * block_size * m->attn.head_dim *
           backend_kv_bytes(m->be);
}

void model_kv_alloc(Model *m, int n_blocks, int block_size) {
    Backend *be = m->be;
    m->attn.block_size = block_size;
    m->kv_blocks = n_blocks;
    m->kv_layer_elems = (size_t)n_blocks * m->attn.n_kv_heads * block_size * m->attn.head_dim;
    size_t bytes = m->kv_layer_elems * m->cfg.n_layers * backend_kv_bytes(be);
    m->k_cache = be->alloc(be, bytes);
    m->v_cache = be->alloc(be, bytes);
    be->reserve(be, m->opt.max_tokens, m->opt.max_seqs, m->cfg.max_seq_len, block_size,
                m->attn.n_heads, m->attn.head_dim);
}

// ----------------------------------------------------------------------------
// forward

static void *layer_kv(const Model *m, void *base, int l) {
    return (char *)base + (size_t)l * m->kv_layer_elems * backend_kv_bytes(m->be);
}

static void allreduce(Model *m, void *buf, size_t n) {
    if (m->opt.allreduce) m->opt.allreduce(m->opt.allreduce_ctx, buf, n);
}

// The whole step up to the final norm of the rows that want logits (left in
// m->hl); returns 0 when no row does.
static int forward_body(Model *m, const Batch *hb);

void model_forward(Model *m, const Batch *hb, float *logits) {
    if (forward_body(m, hb)) m->be->logits(m->be, logits, m->hl, &m->lm_head, hb->n_logits);
}

void model_forward_greedy(Model *m, const Batch *hb, int32_t *ids) {
    if (forward_body(m, hb)) m->be->argmax(m->be, ids, m->hl, &m->lm_head, hb->n_logits);
}

static int forward_body(Model *m, const Batch *hb) {
    Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    int n = hb->n_tokens, dim = c->dim;
    float eps = c->norm_eps;
    SL_CHECK(n <= m->opt.max_tokens && hb->n_logits <= m->opt.max_seqs);
    const Batch *b = be->set_batch(be, hb);

    be->embed(be, m->x, m->embed, b, dim);
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *L = &m->layers[l];
        void *kc = layer_kv(m, m->k_cache, l), *vc = layer_kv(m, m->v_cache, l);
        // attention sublayer; the previous layer's MLP output joins the residual here
        if (l == 0)
            be->rmsnorm(be, m->h, m->x, L->attn_norm, n, dim, eps);
        else
            be->add_rmsnorm(be, m->h, m->x, m->o, L->attn_norm, n, dim, eps);
        be->linear(be, m->qkv, m->h, &L->wqkv, n);
        be->rope_kv_write(be, m->qkv, kc, vc, b, m->inv_freq, &m->attn);
        be->attention(be, m->att, m->qkv, kc, vc, b, &m->attn);
        be->linear(be, m->o, m->att, &L->wo, n);
        allreduce(m, m->o, (size_t)n * dim);
        // MLP sublayer
        be->add_rmsnorm(be, m->h, m->x, m->o, L->ffn_norm, n, dim, eps);
        be->linear(be, m->gu, m->h, &L->wgu, n);
        be->swiglu(be, m->act, m->gu, n, m->hidden_local);
        be->linear(be, m->o, m->act, &L->wdown, n);
        allreduce(m, m->o, (size_t)n * dim);
    }
    if (hb->n_logits == 0) return 0;
    // Only the rows that need logits finish the residual and the head.
    be->gather_rows(be, m->xl, m->x, b, dim);
    be->gather_rows(be, m->hl, m->o, b, dim);
    be->add_rmsnorm(be, m->hl, m->xl, m->hl, m->final_norm, hb->n_logits, dim, eps);
    return 1;
}
