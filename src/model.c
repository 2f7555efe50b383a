// model.c: the decoder of every family in the zoo (arch.h: Llama, Qwen2,
// Mistral, Phi-3, Gemma, GPT-NeoX) on any backend: RMSNorm or LayerNorm, RoPE
// (llama3 / linear scaling, partial, interleaved), MHA/GQA/MQA with an
// optional sliding window, SwiGLU / GeGLU / GELU MLPs, sequential or parallel
// residual, tied or untied embeddings. Families differ only by data
// (ModelConfig fields resolved from their ArchFamily row); the Llama path runs
// exactly the ops it always did.
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
#include "quant.h"
#include "quant_awq.h"

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

// The weights of one linear layer as they are gathered: with an FP8
// checkpoint, the row scales and the largest input scale of its parts
// (quant_fp8.c), handed to the backend with the dequantised values.
typedef struct {
    int fp8_ckpt;    // the checkpoint's linears are F8_E4M3
    float *rscale;   // (rows) scales of the rows gathered so far
    float in_scale;  // max over the parts' input_scale
    int dynamic;     // some part has no input_scale
} LinGather;

// Hands a gathered linear to the backend in the job's format.
static int load_lin(Model *m, LinGather *g, LinearWeight *w, const float *host,
                    const float *bias, int out_dim, int in_dim, sl_err *err) {
    Backend *be = m->be;
    int rc;
    if (g->fp8_ckpt) {
        Fp8Spec sp = {.w_scale = g->rscale, .per_row = 1,
                      .in_scale = g->dynamic ? 0.0f : g->in_scale};
        rc = be->load_linear_fp8(be, w, host, bias, out_dim, in_dim, &sp, err);
    } else if (m->opt.weight_fp8) {
        Fp8Spec sp = {.per_row = !m->opt.fp8_per_tensor};
        rc = be->load_linear_fp8(be, w, host, bias, out_dim, in_dim, &sp, err);
    } else {
        rc = be->load_linear(be, w, host, bias, out_dim, in_dim, err);
    }
    g->in_scale = 0.0f; // the next linear starts afresh
    g->dynamic = 0;
    return rc;
}

// Name of layer l's tensor: "<layer_prefix><l>.<name><suffix>" (the
// family's prefix, e.g. "model.layers.").
// Tensor names are the family's (arch.c); some checkpoints of a family omit
// its opt_prefix ("transformer." in GPT-2's), so a name that is not there is
// tried without it. Returns buf.
static const char *tname(const Model *m, const st_file *st, char *buf, size_t n,
                         const char *name, const char *suffix) {
    const char *pfx = m->cfg.family->opt_prefix;
    size_t pl = pfx ? strlen(pfx) : 0;
    snprintf(buf, n, "%s%s", name, suffix);
    if (!pl || strncmp(name, pfx, pl) != 0) return buf;
    // a norm's base name ("" suffix) is probed through its weight
    char probe[256];
    snprintf(probe, sizeof probe, "%s%s", name, suffix[0] ? suffix : ".weight");
    if (!st_find(st, probe) && st_find(st, probe + pl)) snprintf(buf, n, "%s%s", name + pl, suffix);
    return buf;
}

static const char *lname(const Model *m, const st_file *st, char *buf, size_t n, int l,
                         const char *name, const char *suffix) {
    char base[200];
    snprintf(base, sizeof base, "%s%d.%s", m->cfg.family->layer_prefix, l, name);
    return tname(m, st, buf, n, base, suffix);
}

// load_slice in the (out, in) coordinates of a linear layer, for families
// that store it transposed as (in, out) (GPT-2's Conv1D): rows [r0, r0+nr)
// are output features, columns [c0, c0+nc) input features either way.
// With an FP8 checkpoint (g->fp8_ckpt) the rows' scales land at row `at` of
// the layer's gathered rows.
static int load_w(const Model *m, LinGather *g, int64_t at, const st_file *st, const char *name,
                  int64_t R, int64_t C, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                  float *dst, sl_err *err) {
    if (g->fp8_ckpt) {
        if (m->cfg.family->transposed)
            return sl_errf(err, "%s: FP8 checkpoints of this family (transposed Conv1D "
                                "weights) are not supported", name);
        return quant_fp8_slice(st, name, R, C, r0, nr, c0, nc, dst, g->rscale + at,
                               &g->in_scale, &g->dynamic, err);
    }
    if (!m->cfg.family->transposed) return load_slice(st, name, R, C, r0, nr, c0, nc, dst, err);
    const st_tensor *t;
    int64_t shape[2] = {C, R};
    if (st_expect(st, name, 2, shape, &t, err)) return -1;
    float *row = sl_malloc(sizeof(float) * (nr > 0 ? nr : 1));
    for (int64_t c = 0; c < nc; c++) {
        st_to_f32(t, (c0 + c) * R + r0, nr, row);
        for (int64_t r = 0; r < nr; r++) dst[r * nc + c] = row[r];
    }
    free(row);
    return 0;
}

// A norm's weight (+ the family's offset, Gemma's 1 + w) and, for LayerNorm,
// its bias: "<base>.weight", "<base>.bias". base is a full tensor name.
static int load_norm(Model *m, const st_file *st, const char *base, void **w, void **b,
                     float *tmp, sl_err *err) {
    const ModelConfig *c = &m->cfg;
    char nm[256];
    int dim = c->dim;
    snprintf(nm, sizeof nm, "%s.weight", base);
    if (load_vec(st, nm, dim, 0, dim, tmp, err)) return -1;
    if (c->norm_offset != 0.0f)
        for (int i = 0; i < dim; i++) tmp[i] += c->norm_offset;
    *w = m->be->upload_f32(m->be, tmp, dim);
    if (c->norm == NORM_LAYER) {
        snprintf(nm, sizeof nm, "%s.bias", base);
        if (c->family->norm_bias_optional && !st_find(st, nm)) return 0; // MPT's no_bias
        if (load_vec(st, nm, dim, 0, dim, tmp, err)) return -1;
        *b = m->be->upload_f32(m->be, tmp, dim);
    }
    return 0;
}

// Row block [r0, r0 + nr) of layer l's 2-D tensor `name` (R, C) into dst, and
// when bias_dst is set the same rows of its bias.
static int load_rows(Model *m, LinGather *g, int64_t at, const st_file *st, int l,
                     const char *name, int64_t R, int64_t C, int64_t r0, int64_t nr, float *dst,
                     float *bias_dst, sl_err *err) {
    char nm[256];
    if (load_w(m, g, at, st, lname(m, st, nm, sizeof nm, l, name, ".weight"), R, C, r0, nr, 0, C,
               dst, err))
        return -1;
    if (bias_dst && load_vec(st, lname(m, st, nm, sizeof nm, l, name, ".bias"), R, r0, nr, bias_dst,
                             err))
        return -1;
    return 0;
}

// This rank's q, k, v rows in sluice's fused order [q heads | k heads | v heads]
// from the family's layout: separate tensors, one fused tensor of the same
// order (Phi-3, GPT-2, Falcon-7B), one tensor of per-head [q k v] groups
// (GPT-NeoX), or of per-kv-group [q.. k v] (Falcon-40B/180B). Fused tensors
// are sliced per head, so any rank's heads come from any layout.
static int load_qkv(Model *m, LinGather *g, const st_file *st, int l, float *tmp,
                    float *tmp_bias, sl_err *err) {
    const ModelConfig *c = &m->cfg;
    const ArchFamily *f = c->family;
    int r = m->opt.tp_rank, hd = c->head_dim, dim = c->dim;
    int nh = m->attn.n_heads, nkv = m->attn.n_kv_heads;
    // With fewer kv heads than ranks, each kv head is replicated on
    // tp / n_kv_heads ranks: rank r holds kv head r / (tp / n_kv_heads), the
    // one its q heads use.
    int kv_first = c->n_kv_heads >= m->opt.tp_size ? r * nkv
                                                   : r / (m->opt.tp_size / c->n_kv_heads);
    int64_t q_all = (int64_t)c->n_heads * hd, kv_all = (int64_t)c->n_kv_heads * hd;
    float *bias = c->qkv_bias ? tmp_bias : NULL;
    int64_t row = 0;
    if (f->qkv_layout != QKV_SPLIT) {
        // one fused tensor: first row of each global q head h / kv head g
        int64_t NH = c->n_heads, NKV = c->n_kv_heads, G = NH / NKV, total = q_all + 2 * kv_all;
        for (int p = 0; p < 3; p++) {
            int heads = p == 0 ? nh : nkv;
            for (int i = 0; i < heads; i++, row += hd) {
                int64_t h = p == 0 ? (int64_t)r * nh + i : kv_first + i, r0;
                switch (f->qkv_layout) {
                case QKV_PER_HEAD: r0 = (3 * h + p) * hd; break; // [h: q k v]
                case QKV_GROUPED: // [g: G q heads, k, v]
                    r0 = (p == 0 ? (h / G) * (G + 2) + h % G : h * (G + 2) + G + (p - 1)) * hd;
                    break;
                default: // QKV_FUSED: [q heads | k heads | v heads]
                    r0 = (p == 0 ? h : NH + (p - 1) * NKV + h) * hd;
                    break;
                }
                if (load_rows(m, g, row, st, l, f->qkv, total, dim, r0, hd, tmp + row * dim,
                              bias ? bias + row : NULL, err))
                    return -1;
            }
        }
        return 0;
    }
    struct { const char *name; int heads, first; int64_t total; } parts[3] = {
        {f->q, nh, r * nh, q_all},
        {f->k, nkv, kv_first, kv_all},
        {f->v, nkv, kv_first, kv_all},
    };
    for (int p = 0; p < 3; p++) {
        int64_t rows = (int64_t)parts[p].heads * hd, r0 = (int64_t)parts[p].first * hd;
        if (load_rows(m, g, row, st, l, parts[p].name, parts[p].total, dim, r0, rows,
                      tmp + row * dim, bias ? bias + row : NULL, err))
            return -1;
        row += rows;
    }
    return 0;
}

// Loads layer l's weights (this rank's slices).
static int load_layer(Model *m, const st_file *st, int l, float *tmp, float *tmp_bias,
                      LinGather *g, sl_err *err) {
    const ModelConfig *c = &m->cfg;
    const ArchFamily *f = c->family;
    LayerWeights *L = &m->layers[l];
    int r = m->opt.tp_rank, hd = c->head_dim, dim = c->dim;
    int nh = m->attn.n_heads, hid = m->hidden_local;
    char nm[256];

    // norms (a parallel layout with one shared norm has no second one)
    if (load_norm(m, st, lname(m, st, nm, sizeof nm, l, f->attn_norm, ""), &L->attn_norm,
                  &L->attn_norm_b, tmp, err))
        return -1;
    if (!(c->parallel_residual && c->shared_norm) &&
        load_norm(m, st, lname(m, st, nm, sizeof nm, l, f->ffn_norm, ""), &L->ffn_norm,
                  &L->ffn_norm_b, tmp, err))
        return -1;

    // FP8 checkpoints: this layer's KV cache scales (1 when absent)
    L->k_scale = L->v_scale = 1.0f;
    if (quant_kv_scales(st, l, &L->k_scale, &L->v_scale, err) < 0) return -1;

    // AutoAWQ INT4 checkpoints: the layer's linear layers come from quant_awq.c
    int q = awq_load_layer(m, st, l, tmp, tmp_bias, err); // 1: not AWQ
    if (q <= 0) return q;

    // qkv
    if (load_qkv(m, g, st, l, tmp, tmp_bias, err)) return -1;
    int qkv_rows = (nh + 2 * m->attn.n_kv_heads) * hd;
    if (load_lin(m, g, &L->wqkv, tmp, c->qkv_bias ? tmp_bias : NULL, qkv_rows, dim, err))
        return -1;

    // o: this rank's input columns; its bias is added once (rank 0)
    int64_t q_all = (int64_t)c->n_heads * hd, q_loc = (int64_t)nh * hd;
    if (load_w(m, g, 0, st, lname(m, st, nm, sizeof nm, l, f->o, ".weight"), dim, q_all, 0, dim,
               (int64_t)r * q_loc, q_loc, tmp, err))
        return -1;
    int o_bias = c->o_bias && r == 0;
    if (o_bias && load_vec(st, lname(m, st, nm, sizeof nm, l, f->o, ".bias"), dim, 0, dim, tmp_bias,
                           err))
        return -1;
    if (load_lin(m, g, &L->wo, tmp, o_bias ? tmp_bias : NULL, dim, (int)q_loc, err))
        return -1;

    // gate | up (or up alone): this rank's rows of each
    float *mb = c->mlp_bias ? tmp_bias : NULL;
    int n_parts = c->gated ? 2 : 1;
    const char *gu_names[2] = {c->gated ? f->gate : f->up, f->up};
    for (int p = 0; p < n_parts; p++) {
        int fused = f->gu_layout == GU_FUSED;
        int64_t R = fused ? 2 * (int64_t)c->hidden_dim : c->hidden_dim;
        int64_t r0 = (fused ? (int64_t)p * c->hidden_dim : 0) + (int64_t)r * hid;
        if (load_rows(m, g, (int64_t)p * hid, st, l, fused ? f->gate_up : gu_names[p], R, dim,
                      r0, hid, tmp + (int64_t)p * hid * dim, mb ? mb + (int64_t)p * hid : NULL,
                      err))
            return -1;
    }
    if (load_lin(m, g, &L->wgu, tmp, mb, n_parts * hid, dim, err)) return -1;

    // down: this rank's input columns
    if (load_w(m, g, 0, st, lname(m, st, nm, sizeof nm, l, f->down, ".weight"), dim,
               c->hidden_dim, 0, dim, (int64_t)r * hid, hid, tmp, err))
        return -1;
    int d_bias = c->mlp_bias && r == 0;
    if (d_bias && load_vec(st, lname(m, st, nm, sizeof nm, l, f->down, ".bias"), dim, 0, dim,
                           tmp_bias, err))
        return -1;
    return load_lin(m, g, &L->wdown, tmp, d_bias ? tmp_bias : NULL, dim, hid, err);
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
    if (!cfg->no_rotary && cfg->head_dim % 2 &&
        (cfg->rotary_dim == 0 || cfg->rotary_dim == cfg->head_dim)) {
        sl_errf(err, "config.json: head_dim %d is odd; rotary embeddings need it even",
                cfg->head_dim);
        return NULL;
    }
    if (!cfg->family) {
        sl_errf(err, "config for '%s' has no model family (not from config_parse)",
                cfg->architecture);
        return NULL;
    }
    if (cfg->family->qkv_layout == QKV_PER_HEAD && cfg->n_kv_heads != cfg->n_heads) {
        sl_errf(err, "config.json: %s keeps q, k, v per head and needs num_key_value_heads "
                "(%d) == num_attention_heads (%d)", cfg->architecture, cfg->n_kv_heads,
                cfg->n_heads);
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
    m->attn.rotary_dim = cfg->no_rotary ? 0 : cfg->rotary_dim > 0 ? cfg->rotary_dim : cfg->head_dim;
    m->attn.no_rotary = cfg->no_rotary;
    if (cfg->attn_scale > 0) m->attn.scale = cfg->attn_scale; // MPT softmax_scale
    m->attn.rope_interleaved = cfg->rope_interleaved;
    m->attn.window = cfg->sliding_window;
    m->attn.kv_fp8 = opt->kv_fp8;
    m->attn.k_scale = m->attn.v_scale = 1.0f;
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
    int dim = cfg->dim, hd = cfg->head_dim, rd = m->attn.rotary_dim;
    cpu_rope_inv_freq(tmp, rd, cfg->rope_type, cfg->rope_theta, cfg->rope_factor,
                      cfg->rope_low_freq_factor, cfg->rope_high_freq_factor,
                      cfg->rope_orig_max_pos);
    m->inv_freq = be->upload_f32(be, tmp, rd / 2);
    if (cfg->alibi) { // this rank's heads' slopes
        float *all = sl_malloc(sizeof(float) * cfg->n_heads);
        cpu_alibi_slopes(all, cfg->n_heads, cfg->alibi, cfg->alibi_bias_max);
        m->alibi = be->upload_f32(be, all + (size_t)m->opt.tp_rank * m->attn.n_heads,
                                  m->attn.n_heads);
        m->attn.alibi = m->alibi;
        free(all);
    }
    size_t T = m->opt.max_tokens, S = m->opt.max_seqs, ab = be->act_bytes;
    m->x = be->alloc(be, T * dim * ab);
    m->h = be->alloc(be, T * dim * ab + backend_q_extra(T)); // may hold an FP8 input
    m->qkv = be->alloc(be, T * qkv_rows(m) * ab);
    m->att = be->alloc(be, T * m->attn.n_heads * hd * ab);
    m->o = be->alloc(be, T * dim * ab);
    m->gu = be->alloc(be, T * 2 * m->hidden_local * ab);
    m->act = be->alloc(be, T * m->hidden_local * ab + backend_q_extra(T));
    m->xl = be->alloc(be, S * dim * ab);
    m->hl = be->alloc(be, S * dim * ab);
    if (cfg->parallel_residual) {
        m->o2 = be->alloc(be, T * dim * ab);
        if (!cfg->shared_norm) m->h2 = be->alloc(be, T * dim * ab);
    }
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
    LinGather g = {.fp8_ckpt = quant_detect(st) == QCKPT_FP8};
    g.rscale = sl_malloc(sizeof(float) * (qr + 2 * m->hidden_local + dim + 1));
    if (g.fp8_ckpt) LOGI("FP8 checkpoint: linear layers stay FP8 E4M3 with their own scales");

    // embeddings, final norm, head
    const ArchFamily *f = cfg->family;
    char embed_name[128], head_name[128], norm_name[128];
    tname(m, st, embed_name, sizeof embed_name, f->embed, ".weight");
    tname(m, st, head_name, sizeof head_name, f->lm_head, ".weight");
    if (load_slice(st, embed_name, cfg->vocab_size, dim, 0, cfg->vocab_size, 0, dim, tmp, err))
        goto fail;
    if (cfg->embed_scale != 0.0f) { // Gemma: the lookup is scaled, a tied head is not
        size_t ne = (size_t)cfg->vocab_size * dim;
        for (size_t i = 0; i < ne; i++) tmp[i] *= cfg->embed_scale;
    }
    m->embed = be->upload_table(be, tmp, cfg->vocab_size, dim);
    const char *head = head_name;
    if (!cfg->tie_embeddings && !st_find(st, head) && f->lm_head_alt) {
        snprintf(head_name, sizeof head_name, "%s.weight", f->lm_head_alt);
        if (!st_find(st, head_name)) snprintf(head_name, sizeof head_name, "%s.weight", f->lm_head);
    }
    if (cfg->tie_embeddings) {
        head = embed_name;
    } else if (!st_find(st, head)) {
        // st_expect's message names the checkpoint ("DIR: tensor ... missing")
        sl_err miss = {{0}};
        st_expect(st, head, 2, NULL, NULL, &miss);
        sl_errf(err, "%s (tie_word_embeddings is false)", miss.msg);
        goto fail;
    }
    if (load_slice(st, head, cfg->vocab_size, dim, 0, cfg->vocab_size, 0, dim, tmp, err)) goto fail;
    float *head_b = NULL;
    if (cfg->head_bias) { // GPT-J: lm_head.bias (vocab)
        char hb[128];
        tname(m, st, hb, sizeof hb, f->lm_head, ".bias");
        head_b = sl_malloc(sizeof(float) * cfg->vocab_size);
        if (load_vec(st, hb, cfg->vocab_size, 0, cfg->vocab_size, head_b, err)) {
            free(head_b);
            goto fail;
        }
    }
    int hrc = be->load_linear(be, &m->lm_head, tmp, head_b, cfg->vocab_size, dim, err);
    free(head_b);
    if (hrc) goto fail;
    if (f->embed_norm) { // BLOOM's LayerNorm on the embeddings
        char en[128];
        tname(m, st, en, sizeof en, f->embed_norm, "");
        if (load_norm(m, st, en, &m->embed_norm, &m->embed_norm_b, tmp, err)) goto fail;
    }
    if (f->pos_embed) { // learned positions (GPT-2): (max_position_embeddings, hidden)
        char pn[128];
        tname(m, st, pn, sizeof pn, f->pos_embed, ".weight");
        if (load_slice(st, pn, cfg->max_seq_len, dim, 0, cfg->max_seq_len, 0, dim, tmp, err))
            goto fail;
        m->pos_embed = be->upload_table(be, tmp, cfg->max_seq_len, dim);
    }
    tname(m, st, norm_name, sizeof norm_name, f->final_norm, "");
    if (load_norm(m, st, norm_name, &m->final_norm, &m->final_norm_b, tmp, err)) goto fail;

    for (int l = 0; l < cfg->n_layers; l++)
        if (load_layer(m, st, l, tmp, tmp_bias, &g, err)) goto fail;

    model_finish_init(m, tmp);
    free(tmp);
    free(tmp_bias);
    free(g.rscale);
    *out = m;
    return 0;
fail:
    free(tmp);
    free(tmp_bias);
    free(g.rscale);
    model_free(m);
    return -1;
}

// Random weights: normal(0, 0.02) matrices and embeddings, unit norm weights,
// filled by the backend itself (on the GPU: no host traffic at all).
static void random_linear(Model *m, LinearWeight *w, int out_dim, int in_dim, uint64_t seed) {
    if (m->opt.int4_group > 0 && w != &m->lm_head) { // scales ~ 0.02 / 8: |w| ~ 0.02
        m->be->random_linear_int4(m->be, w, out_dim, in_dim, m->opt.int4_group, seed, 0.0025f);
        return;
    }
    if (m->opt.weight_fp8 && w != &m->lm_head) { // the LM head stays in the activation dtype
        m->be->random_linear_fp8(m->be, w, out_dim, in_dim, seed, 0.02f, m->opt.fp8_per_tensor);
        return;
    }
    m->be->alloc_linear(m->be, w, out_dim, in_dim);
    m->be->fill_normal(m->be, w->data, (size_t)out_dim * in_dim, w->fmt == WFMT_F32, seed, 0.0f,
                       0.02f);
}

static void *unit_vector(Model *m, int n, float *tmp) {
    for (int i = 0; i < n; i++) tmp[i] = 1.0f;
    return m->be->upload_f32(m->be, tmp, n);
}

// A LayerNorm's zero bias (NULL for RMSNorm families).
static void *zero_bias(Model *m, int n, float *tmp) {
    if (m->cfg.norm != NORM_LAYER) return NULL;
    for (int i = 0; i < n; i++) tmp[i] = 0.0f;
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
    if (cfg->family && cfg->family->pos_embed) {
        size_t pe = (size_t)cfg->max_seq_len * dim;
        m->pos_embed = be->alloc(be, pe * be->act_bytes);
        be->fill_normal(be, m->pos_embed, pe, be->act_bytes == 4, k++, 0.0f, 0.02f);
    }
    m->final_norm = unit_vector(m, dim, tmp);
    m->final_norm_b = zero_bias(m, dim, tmp);
    if (cfg->family && cfg->family->embed_norm) {
        m->embed_norm = unit_vector(m, dim, tmp);
        m->embed_norm_b = zero_bias(m, dim, tmp);
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        LayerWeights *L = &m->layers[l];
        L->k_scale = L->v_scale = 1.0f;
        L->attn_norm = unit_vector(m, dim, tmp);
        L->attn_norm_b = zero_bias(m, dim, tmp);
        if (!(cfg->parallel_residual && cfg->shared_norm)) {
            L->ffn_norm = unit_vector(m, dim, tmp);
            L->ffn_norm_b = zero_bias(m, dim, tmp);
        }
        random_linear(m, &L->wqkv, qkv_rows(m), dim, k++);
        random_linear(m, &L->wo, dim, m->attn.n_heads * cfg->head_dim, k++);
        random_linear(m, &L->wgu, (cfg->gated ? 2 : 1) * m->hidden_local, dim, k++);
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
    void *bufs[] = {m->embed, m->pos_embed, m->embed_norm, m->embed_norm_b, m->alibi,
                    m->final_norm, m->final_norm_b, m->inv_freq, m->k_cache,
                    m->v_cache, m->x, m->h, m->qkv, m->att, m->o, m->gu, m->act, m->xl,
                    m->hl, m->h2, m->o2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free_linear(be, &m->lm_head);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            LayerWeights *L = &m->layers[l];
            void *norms[] = {L->attn_norm, L->attn_norm_b, L->ffn_norm, L->ffn_norm_b};
            for (int i = 0; i < 4; i++)
                if (norms[i]) be->free(be, norms[i]);
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
           backend_kv_elem_bytes(m->be, m->attn.kv_fp8);
}

void model_kv_alloc(Model *m, int n_blocks, int block_size) {
    Backend *be = m->be;
    m->attn.block_size = block_size;
    m->kv_blocks = n_blocks;
    m->kv_layer_elems = (size_t)n_blocks * m->attn.n_kv_heads * block_size * m->attn.head_dim;
    size_t bytes =
        m->kv_layer_elems * m->cfg.n_layers * backend_kv_elem_bytes(be, m->attn.kv_fp8);
    m->k_cache = be->alloc(be, bytes);
    m->v_cache = be->alloc(be, bytes);
    be->reserve(be, m->opt.max_tokens, m->opt.max_seqs, m->cfg.max_seq_len, block_size,
                m->attn.n_heads, m->attn.head_dim);
}

// ----------------------------------------------------------------------------
// forward

static void *layer_kv(const Model *m, void *base, int l) {
    return (char *)base +
           (size_t)l * m->kv_layer_elems * backend_kv_elem_bytes(m->be, m->attn.kv_fp8);
}

static void allreduce(Model *m, void *buf, size_t n) {
    if (m->opt.allreduce) m->opt.allreduce(m->opt.allreduce_ctx, buf, n);
}

// The whole step (b: the backend's view from set_batch) up to the final norm
// of the rows that want logits (left in m->hl); returns 0 when no row does.
static int forward_body(Model *m, const Batch *b);

void model_forward(Model *m, const Batch *hb, float *logits) {
    if (forward_body(m, m->be->set_batch(m->be, hb)))
        m->be->logits(m->be, logits, m->hl, &m->lm_head, hb->n_logits);
}

void model_forward_greedy(Model *m, const Batch *hb, int32_t *ids) {
    if (forward_body(m, m->be->set_batch(m->be, hb)))
        m->be->argmax(m->be, ids, m->hl, &m->lm_head, hb->n_logits);
}

// The family's norm of x (+ r joining the residual first). `next`, when set,
// is the linear layer that reads `out`: RMSNorm then writes out in its input
// format (FP8 codes + row scales for an FP8 layer; see backend.h).
static void norm(Model *m, void *out, void *x, const void *r, const void *w, const void *bias,
                 int n, const LinearWeight *next) {
    Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    if (c->norm == NORM_LAYER) {
        if (r) be->add_layernorm(be, out, x, r, w, bias, n, c->dim, c->norm_eps);
        else be->layernorm(be, out, x, w, bias, n, c->dim, c->norm_eps);
    } else if (next) {
        if (r) be->add_rmsnorm_q(be, out, x, r, w, n, c->dim, c->norm_eps, next);
        else be->rmsnorm_q(be, out, x, w, n, c->dim, c->norm_eps, next);
    } else {
        if (r) be->add_rmsnorm(be, out, x, r, w, n, c->dim, c->norm_eps);
        else be->rmsnorm(be, out, x, w, n, c->dim, c->norm_eps);
    }
}

// Whether `h` as norm() wrote it for `next` is in next's input format (only
// RMSNorm emits quantised inputs; LayerNorm leaves the activation dtype).
static int norm_emits_q(const Model *m) { return m->cfg.norm != NORM_LAYER; }

// out (n, dim) = the MLP of h (n, dim), this rank's share (not all-reduced).
// h_q: h is in wgu's input format (written by norm() for it).
static void mlp(Model *m, void *out, const void *h, int h_q, LayerWeights *L, int n) {
    Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    if (h_q) be->linear_q(be, m->gu, h, &L->wgu, n);
    else be->linear(be, m->gu, h, &L->wgu, n);
    if (c->act == ACT_SILU && c->gated) {
        be->swiglu_q(be, m->act, m->gu, n, m->hidden_local, &L->wdown);
        be->linear_q(be, out, m->act, &L->wdown, n);
        return;
    }
    be->gelu(be, m->act, m->gu, n, m->hidden_local, c->gated, c->act == ACT_GELU_TANH);
    be->linear(be, out, m->act, &L->wdown, n);
}

// The layer layouts (arch.h):
//   sequential: x += attn(n1(x)); x += mlp(n2(x))          (Llama, Qwen2, Gemma, ...)
//   parallel:   x += attn(n1(x)) + mlp(n2(x)), n2 = n1 when shared (GPT-NeoX)
// Each sublayer's output is added to x by the next norm (add_rmsnorm /
// add_layernorm), so the residual stream costs no pass of its own.
void model_forward_sample(Model *m, const Batch *hb) {
    Backend *be = m->be;
    const Batch *b = be->set_batch(be, hb);
    // a decode step the backend has a graph for runs from it, ops and all
    if (be->graph_begin && be->graph_begin(be)) return;
    if (forward_body(m, b)) be->sample(be, m->hl, &m->lm_head, b->n_logits);
    if (be->graph_end) be->graph_end(be);
}

static int forward_body(Model *m, const Batch *b) {
    Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    // b may hold more rows than the host batch (a decode step padded to a
    // CUDA graph's bucket): the ops run on b's sizes
    int n = b->n_tokens, dim = c->dim;
    SL_CHECK(n <= m->opt.max_tokens && b->n_logits <= m->opt.max_seqs);

    be->embed(be, m->x, m->embed, b, dim);
    if (m->pos_embed) { // learned positions: x += pos_embed[pos] (a lookup keyed by position)
        Batch pb = *b;
        pb.tokens = b->pos;
        be->embed(be, m->h, m->pos_embed, &pb, dim);
        be->add(be, m->x, m->h, (size_t)n * dim);
    }
    if (m->embed_norm) norm(m, m->x, m->x, NULL, m->embed_norm, m->embed_norm_b, n, NULL);
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *L = &m->layers[l];
        void *kc = layer_kv(m, m->k_cache, l), *vc = layer_kv(m, m->v_cache, l);
        AttnShape as = m->attn; // with this layer's KV cache scales
        as.k_scale = L->k_scale;
        as.v_scale = L->v_scale;
        // attention sublayer; the previous layer's output joins the residual here.
        // With a parallel residual h also feeds the MLP, so it stays unquantised.
        const int q_in = norm_emits_q(m) && !c->parallel_residual;
        norm(m, m->h, m->x, l == 0 ? NULL : m->o, L->attn_norm, L->attn_norm_b, n,
             q_in ? &L->wqkv : NULL);
        void *h_mlp = m->h;
        if (c->parallel_residual && !c->shared_norm) {
            norm(m, m->h2, m->x, NULL, L->ffn_norm, L->ffn_norm_b, n, NULL);
            h_mlp = m->h2;
        }
        if (q_in) be->linear_q(be, m->qkv, m->h, &L->wqkv, n);
        else be->linear(be, m->qkv, m->h, &L->wqkv, n);
        be->rope_kv_write(be, m->qkv, kc, vc, b, m->inv_freq, &as);
        be->attention(be, m->att, m->qkv, kc, vc, b, &as);
        be->linear(be, m->o, m->att, &L->wo, n);
        if (c->parallel_residual) {
            // both branches read the same x: one all-reduce for their sum
            mlp(m, m->o2, h_mlp, 0, L, n);
            be->add(be, m->o, m->o2, (size_t)n * dim);
            allreduce(m, m->o, (size_t)n * dim);
            continue;
        }
        allreduce(m, m->o, (size_t)n * dim);
        // MLP sublayer
        norm(m, m->h, m->x, m->o, L->ffn_norm, L->ffn_norm_b, n,
             norm_emits_q(m) ? &L->wgu : NULL);
        mlp(m, m->o, m->h, norm_emits_q(m), L, n);
        allreduce(m, m->o, (size_t)n * dim);
    }
    if (b->n_logits == 0) return 0;
    // Only the rows that need logits finish the residual and the head.
    be->gather_rows(be, m->xl, m->x, b, dim);
    be->gather_rows(be, m->hl, m->o, b, dim);
    norm(m, m->hl, m->xl, m->hl, m->final_norm, m->final_norm_b, b->n_logits, NULL);
    return 1;
}
