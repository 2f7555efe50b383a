// quant_awq.c: AutoAWQ INT4 checkpoints in (see quant_awq.h for the format).
//
// A fused matrix (q|k|v or gate|up) is assembled from its projections' slices
// directly in sluice's INT4 layout (rows = output features, kernels/cpu/
// int4_cpu.h), then handed to the backend's load_linear_int4. Repacking is a
// plain transpose of nibbles: AWQ packs 8 output columns per word in the
// interleaved order AWQ_ORDER, sluice packs 8 consecutive inputs per word.
#include "quant_awq.h"

#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cpu/int4_cpu.h"

const int AWQ_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};
static const int AWQ_REVERSE[8] = {0, 4, 1, 5, 2, 6, 3, 7}; // nibble of column c

// ----------------------------------------------------------------------------
// config.json

int awq_check_config(const char *dir, int *group, sl_err *err) {
    *group = 0;
    char *path = sl_path_join(dir, "config.json");
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    int rc = -1;
    if (!root) {
        sl_errf(err, "%s: %s (line %d)", path, je.text, je.line);
        goto out;
    }
    json_t *q = json_object_get(root, "quantization_config");
    if (!q) {
        rc = 0;
        goto out;
    }
    const char *method = json_string_value(json_object_get(q, "quant_method"));
    if (!method || strcasecmp(method, "awq")) {
        sl_errf(err, "%s: quantization_config.quant_method is \"%s\"; this loader reads \"awq\"",
                path, method ? method : "(missing)");
        goto out;
    }
    json_t *bits = json_object_get(q, "bits");
    if (!bits) bits = json_object_get(q, "w_bit");
    if (!json_is_integer(bits) || json_integer_value(bits) != 4) {
        sl_errf(err, "%s: quantization_config.bits must be 4 for AWQ", path);
        goto out;
    }
    const char *ver = json_string_value(json_object_get(q, "version"));
    if (ver && strcasecmp(ver, "gemm")) {
        sl_errf(err, "%s: quantization_config.version is \"%s\"; only \"gemm\" is supported", path,
                ver);
        goto out;
    }
    json_t *zp = json_object_get(q, "zero_point");
    if (zp && json_is_false(zp)) {
        sl_errf(err, "%s: quantization_config.zero_point is false; AWQ gemm checkpoints without "
                "zero points are not supported", path);
        goto out;
    }
    json_t *gs = json_object_get(q, "group_size");
    if (!gs) gs = json_object_get(q, "q_group_size");
    if (!json_is_integer(gs) || (json_integer_value(gs) <= 0 && json_integer_value(gs) != -1)) {
        sl_errf(err, "%s: quantization_config.group_size is missing or not a positive integer",
                path);
        goto out;
    }
    *group = (int)json_integer_value(gs);
    rc = 0;
out:
    json_decref(root);
    free(path);
    return rc;
}

// ----------------------------------------------------------------------------
// one projection's slice

// The parts of one fused matrix.
typedef struct {
    const char *proj;    // "self_attn.q_proj"
    int64_t out_all, in_all; // the full projection's shape
    int64_t r0, nr;      // output rows of this rank
    int64_t c0, nc;      // input columns of this rank
    int bias;            // load "<proj>.bias" rows [r0, r0+nr)
} Part;

static const st_tensor *find_int(const st_file *st, const char *name, int64_t d0, int64_t d1,
                                 sl_err *err) {
    const st_tensor *t = st_find(st, name);
    if (!t) {
        sl_errf(err, "AWQ checkpoint: tensor %s is missing", name);
        return NULL;
    }
    if (t->dtype != ST_I32 || t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
        sl_errf(err, "%s: tensor %s is %s with %d dims (%lld, %lld); expected I32 (%lld, %lld)",
                t->file, name, st_dtype_name(t->dtype), t->ndim, (long long)t->shape[0],
                (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)d0, (long long)d1);
        return NULL;
    }
    return t;
}

// Group size of an AWQ projection from its qzeros' shape.
static int part_group(const st_file *st, const char *pre, int64_t in_all, sl_err *err) {
    char nm[256];
    snprintf(nm, sizeof nm, "%.150s.qzeros", pre);
    const st_tensor *t = st_find(st, nm);
    if (!t) return sl_errf(err, "AWQ checkpoint: tensor %s is missing (sluice reads AWQ gemm "
                           "checkpoints with zero points)", nm);
    if (t->ndim != 2 || t->shape[0] <= 0 || in_all % t->shape[0])
        return sl_errf(err, "%s: tensor %s has %lld rows, which do not divide in_features %lld",
                       t->file, nm, (long long)t->shape[0], (long long)in_all);
    int64_t g = in_all / t->shape[0];
    if (g % 32)
        return sl_errf(err, "%s: tensor %s implies group size %lld; sluice's INT4 kernels need "
                       "a multiple of 32", t->file, nm, (long long)g);
    return (int)g;
}

// Repacks part p (AWQ, group g) into rows [row, row + p->nr) of sluice's layout
// qw (rows, nc/8), sc, zz (rows, nc/g).
static int part_repack(const st_file *st, const char *pre, const Part *p, int g, int tp,
                       uint32_t *qw, uint16_t *sc, uint8_t *zz, int64_t row, sl_err *err) {
    char nq[256], nz[256], ns[256];
    snprintf(nq, sizeof nq, "%.150s.qweight", pre);
    snprintf(nz, sizeof nz, "%.150s.qzeros", pre);
    snprintf(ns, sizeof ns, "%.150s.scales", pre);
    int64_t O = p->out_all, I = p->in_all;
    if (O % 8)
        return sl_errf(err, "AWQ checkpoint: %s has %lld output features, not a multiple of 8",
                       pre, (long long)O);
    if (p->r0 % 8 || p->nr % 8)
        return sl_errf(err, "--tp %d: this rank's rows [%lld, %lld) of %s do not fall on AWQ's "
                       "8-column packing", tp, (long long)p->r0, (long long)(p->r0 + p->nr), nq);
    if (p->c0 % g || p->nc % g)
        return sl_errf(err, "--tp %d: this rank's input rows [%lld, %lld) of %s do not fall on "
                       "its groups of %d; use a --tp that splits %lld into multiples of %d",
                       tp, (long long)p->c0, (long long)(p->c0 + p->nc), nq, g, (long long)I, g);
    const st_tensor *tq = find_int(st, nq, I, O / 8, err);
    if (!tq) return -1;
    const st_tensor *tz = find_int(st, nz, I / g, O / 8, err);
    if (!tz) return -1;
    const st_tensor *ts;
    int64_t sshape[2] = {I / g, O};
    if (st_expect(st, ns, 2, sshape, &ts, err)) return -1;

    const uint32_t *q = tq->data, *z = tz->data; // little-endian int32 words
    int64_t nc = p->nc, ngl = nc / g;
    float *srow = sl_malloc(sizeof(float) * (size_t)p->nr);
    for (int64_t k = 0; k < nc; k++) {
        const uint32_t *qk = q + (size_t)(p->c0 + k) * (O / 8);
        for (int64_t o = 0; o < p->nr; o++) {
            int64_t col = p->r0 + o;
            uint32_t v = (qk[col / 8] >> (4 * AWQ_REVERSE[col % 8])) & 15u;
            qw[(size_t)(row + o) * (nc / 8) + k / 8] |= v << (4 * (k % 8));
        }
    }
    for (int64_t gi = 0; gi < ngl; gi++) {
        int64_t gk = p->c0 / g + gi;
        const uint32_t *zk = z + (size_t)gk * (O / 8);
        st_to_f32(ts, gk * O + p->r0, p->nr, srow);
        for (int64_t o = 0; o < p->nr; o++) {
            int64_t col = p->r0 + o;
            zz[(size_t)(row + o) * ngl + gi] = (zk[col / 8] >> (4 * AWQ_REVERSE[col % 8])) & 15u;
            sc[(size_t)(row + o) * ngl + gi] = sl_f32_to_f16(srow[o]); // exact from F16
        }
    }
    free(srow);
    return 0;
}

// The plain (unquantised) slice of part p into dst (nr, nc) fp32.
static int part_plain(const st_file *st, const char *pre, const Part *p, float *dst,
                      sl_err *err) {
    char nm[256];
    snprintf(nm, sizeof nm, "%.150s.weight", pre);
    const st_tensor *t;
    int64_t shape[2] = {p->out_all, p->in_all};
    if (st_expect(st, nm, 2, shape, &t, err)) return -1;
    for (int64_t r = 0; r < p->nr; r++)
        st_to_f32(t, (p->r0 + r) * p->in_all + p->c0, p->nc, dst + r * p->nc);
    return 0;
}

// Loads the fused matrix of parts[0..np) (stacked by output rows, same input
// slice) into w.
static int load_fused(Model *m, const st_file *st, int l, const Part *parts, int np, float *tmp,
                      float *tmp_bias, int cfg_group, LinearWeight *w, sl_err *err) {
    Backend *be = m->be;
    char pre[8][160];
    int quant[8], nq = 0, g = 0, any_bias = 0;
    int64_t rows = 0, nc = parts[0].nc;
    for (int i = 0; i < np; i++) {
        snprintf(pre[i], sizeof pre[i], "model.layers.%d.%s", l, parts[i].proj);
        char nm[200];
        snprintf(nm, sizeof nm, "%.150s.qweight", pre[i]);
        quant[i] = st_find(st, nm) != NULL;
        if (quant[i]) {
            int gi = part_group(st, pre[i], parts[i].in_all, err);
            if (gi < 0) return -1;
            if (cfg_group > 0 && gi != cfg_group)
                return sl_errf(err, "AWQ checkpoint: %s.qzeros implies group size %d, but "
                               "config.json's quantization_config.group_size is %d", pre[i], gi,
                               cfg_group);
            if (g && gi != g)
                return sl_errf(err, "AWQ checkpoint: %s has group size %d, %s has %d; a fused "
                               "matrix needs one", pre[i], gi, pre[0], g);
            g = gi;
            nq++;
        }
        rows += parts[i].nr;
        any_bias |= parts[i].bias;
    }
    // biases (fp32, stacked like the rows)
    int64_t row = 0;
    for (int i = 0; i < np; i++) {
        if (parts[i].bias) {
            char nm[200];
            snprintf(nm, sizeof nm, "%.150s.bias", pre[i]);
            const st_tensor *t;
            int64_t n = parts[i].out_all;
            if (st_expect(st, nm, 1, &n, &t, err)) return -1;
            st_to_f32(t, parts[i].r0, parts[i].nr, tmp_bias + row);
        }
        row += parts[i].nr;
    }
    const float *bias = any_bias ? tmp_bias : NULL;
    int tp = m->opt.tp_size;

    if (nq == 0) { // modules_to_not_convert: plain weights
        for (int i = 0, r = 0; i < np; r += (int)parts[i].nr, i++)
            if (part_plain(st, pre[i], &parts[i], tmp + (size_t)r * nc, err)) return -1;
        return be->load_linear(be, w, tmp, bias, (int)rows, (int)nc, err);
    }
    size_t ngl = (size_t)(nc / g);
    uint32_t *qw = sl_calloc((size_t)rows * (nc / 8), sizeof *qw);
    uint16_t *sc = sl_calloc((size_t)rows * ngl, sizeof *sc);
    uint8_t *zz = sl_calloc((size_t)rows * ngl, 1);
    int rc = -1;
    row = 0;
    for (int i = 0; i < np; i++) {
        if (quant[i] && part_repack(st, pre[i], &parts[i], g, tp, qw, sc, zz, row, err)) goto out;
        row += parts[i].nr;
    }
    if (nq == np) {
        rc = be->load_linear_int4(be, w, qw, sc, zz, bias, (int)rows, (int)nc, g, err);
    } else { // mixed: dequantise the AWQ parts, load everything plain
        LOGW("layer %d: the projections fused with %s mix AWQ and plain weights "
             "(modules_to_not_convert); loading the fused matrix unquantised", l, parts[0].proj);
        row = 0;
        for (int i = 0; i < np; i++) {
            float *dst = tmp + (size_t)row * nc;
            if (quant[i]) {
                for (int64_t o = 0; o < parts[i].nr; o++)
                    cpu_int4_dequant_row(dst + (size_t)o * nc, qw + (size_t)row * (nc / 8),
                                         sc + (size_t)row * ngl, zz + (size_t)row * ngl, (int)o,
                                         (int)nc, g);
            } else if (part_plain(st, pre[i], &parts[i], dst, err)) {
                goto out;
            }
            row += parts[i].nr;
        }
        rc = be->load_linear(be, w, tmp, bias, (int)rows, (int)nc, err);
    }
out:
    free(qw);
    free(sc);
    free(zz);
    return rc;
}

// ----------------------------------------------------------------------------
// a layer

static const char *const PROJS[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                     "mlp.down_proj"};

int awq_load_layer(Model *m, const st_file *st, int l, float *tmp, float *tmp_bias,
                   sl_err *err) {
    char nm[200];
    const st_tensor *first = NULL;
    for (int i = 0; i < 7 && !first; i++) {
        snprintf(nm, sizeof nm, "model.layers.%d.%s.qweight", l, PROJS[i]);
        first = st_find(st, nm);
    }
    if (!first) return 1;

    // config.json next to the checkpoint, when there is one
    int cfg_group = 0;
    if (first->file) {
        char *f = sl_strdup(first->file);
        char *dir = dirname(f);
        char *cfgp = sl_path_join(dir, "config.json");
        int rc = 0;
        if (access(cfgp, R_OK) == 0) rc = awq_check_config(dir, &cfg_group, err);
        free(cfgp);
        free(f);
        if (rc) return -1;
    }

    const ModelConfig *c = &m->cfg;
    int r = m->opt.tp_rank, tp = m->opt.tp_size, hd = c->head_dim, dim = c->dim;
    int nh = m->attn.n_heads, nkv = m->attn.n_kv_heads, hid = m->hidden_local;
    LayerWeights *L = &m->layers[l];
    // as model.c: fewer kv heads than ranks replicate each kv head
    int kv_first = c->n_kv_heads >= tp ? r * nkv : r / (tp / c->n_kv_heads);
    int64_t q_all = (int64_t)c->n_heads * hd;
    Part qkv[3] = {
        {"self_attn.q_proj", q_all, dim, (int64_t)r * nh * hd, (int64_t)nh * hd, 0, dim,
         c->attn_bias},
        {"self_attn.k_proj", (int64_t)c->n_kv_heads * hd, dim, (int64_t)kv_first * hd,
         (int64_t)nkv * hd, 0, dim, c->attn_bias},
        {"self_attn.v_proj", (int64_t)c->n_kv_heads * hd, dim, (int64_t)kv_first * hd,
         (int64_t)nkv * hd, 0, dim, c->attn_bias},
    };
    if (load_fused(m, st, l, qkv, 3, tmp, tmp_bias, cfg_group, &L->wqkv, err)) return -1;
    Part o = {"self_attn.o_proj", dim, q_all, 0, dim, (int64_t)r * nh * hd, (int64_t)nh * hd,
              c->attn_bias && r == 0};
    if (load_fused(m, st, l, &o, 1, tmp, tmp_bias, cfg_group, &L->wo, err)) return -1;
    Part gu[2] = {
        {"mlp.gate_proj", c->hidden_dim, dim, (int64_t)r * hid, hid, 0, dim, c->mlp_bias},
        {"mlp.up_proj", c->hidden_dim, dim, (int64_t)r * hid, hid, 0, dim, c->mlp_bias},
    };
    if (load_fused(m, st, l, gu, 2, tmp, tmp_bias, cfg_group, &L->wgu, err)) return -1;
    Part d = {"mlp.down_proj", dim, c->hidden_dim, 0, dim, (int64_t)r * hid, hid,
              c->mlp_bias && r == 0};
    return load_fused(m, st, l, &d, 1, tmp, tmp_bias, cfg_group, &L->wdown, err) ? -1 : 0;
}

// ============================================================================
// writing AWQ checkpoints
// ============================================================================

#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include "cpu/ops_cpu.h"
#include "h5io.h"
#include "tokenizer.h"

void awq_quant_options_defaults(AwqQuantOptions *o) {
    memset(o, 0, sizeof *o);
    o->method = AWQ_QUANT_AWQ;
    o->group = 128;
    o->max_calib_tokens = 4096;
    o->search_rows = 256;
    o->clip_rows = 128;
    o->n_grid = 20;
}

// ----------------------------------------------------------------------------
// a minimal safetensors writer: tensors collected in memory, written at once

typedef struct {
    char *name;
    const char *dtype; // "F32", "F16", "BF16", "I32"
    int ndim;
    int64_t shape[2];
    void *data;        // owned
    size_t nbytes;
} OutTensor;

typedef struct {
    OutTensor *t;
    int n, cap;
} OutList;

static void out_add(OutList *l, const char *name, const char *dtype, int ndim, int64_t d0,
                    int64_t d1, void *data, size_t nbytes) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->t = sl_realloc(l->t, sizeof *l->t * (size_t)l->cap);
    }
    OutTensor *t = &l->t[l->n++];
    t->name = sl_strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = data;
    t->nbytes = nbytes;
}

static void out_free(OutList *l) {
    for (int i = 0; i < l->n; i++) free(l->t[i].name), free(l->t[i].data);
    free(l->t);
}

static int out_write(const OutList *l, const char *path, sl_err *err) {
    json_t *h = json_object();
    json_object_set_new(h, "__metadata__", json_pack("{s:s,s:s}", "format", "pt", "producer",
                                                     "sluice quantize"));
    uint64_t off = 0;
    for (int i = 0; i < l->n; i++) {
        const OutTensor *t = &l->t[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(h, t->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", t->dtype, "shape", shape,
                                      "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + t->nbytes)));
        off += t->nbytes;
    }
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    size_t hl = strlen(hs), pad = (8 - hl % 8) % 8;
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp", path) < 0) tmp = NULL;
    FILE *f = tmp ? fopen(tmp, "wb") : NULL;
    int rc = -1;
    if (!f) {
        sl_errf(err, "%s: cannot write: %s", path, strerror(errno));
        goto out;
    }
    uint64_t n8 = hl + pad;
    int ok = fwrite(&n8, 8, 1, f) == 1 && fwrite(hs, 1, hl, f) == hl;
    for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < l->n; i++)
        ok = l->t[i].nbytes == 0 || fwrite(l->t[i].data, 1, l->t[i].nbytes, f) == l->t[i].nbytes;
    if (fclose(f) || !ok || rename(tmp, path)) {
        sl_errf(err, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    free(tmp);
    free(hs);
    return rc;
}

// ----------------------------------------------------------------------------
// calibration: the model on the CPU backend, inputs of every linear recorded

enum { LIN_QKV = 0, LIN_O, LIN_GU, LIN_DOWN, LIN_N };

typedef struct {
    int in;           // input features
    double *absum;    // (in) sum of |x| over every calibration row
    long rows_seen;
    float *rows;      // (cap, in) kept rows (a spread subsample)
    int n, cap;
} ActStats;

static struct {
    Model *m;
    ActStats *st;     // (n_layers, LIN_N)
    void (*linear)(Backend *, void *, const void *, const LinearWeight *, int);
    long stride;      // keep every stride-th row
} g_hook;

static void hook_linear(Backend *be, void *y, const void *x, const LinearWeight *w, int n) {
    Model *m = g_hook.m;
    const char *base = (const char *)m->layers;
    size_t off = (size_t)((const char *)w - base);
    if ((const char *)w >= base && off < sizeof(LayerWeights) * (size_t)m->cfg.n_layers) {
        int l = (int)(off / sizeof(LayerWeights));
        const LayerWeights *L = &m->layers[l];
        int k = w == &L->wqkv ? LIN_QKV : w == &L->wo ? LIN_O : w == &L->wgu ? LIN_GU : LIN_DOWN;
        ActStats *a = &g_hook.st[l * LIN_N + k];
        const float *xf = x;
        for (int i = 0; i < n; i++) {
            const float *r = xf + (size_t)i * a->in;
            for (int j = 0; j < a->in; j++) a->absum[j] += fabsf(r[j]);
            if (a->rows_seen++ % g_hook.stride == 0 && a->n < a->cap)
                memcpy(a->rows + (size_t)a->n++ * a->in, r, sizeof(float) * a->in);
        }
    }
    g_hook.linear(be, y, x, w, n);
}

// Reads the calibration prompts (tokenizing text-only files), at most
// max_tokens tokens, each prompt cut at 512: *tok / *off (n + 1).
static int calib_tokens(const AwqQuantOptions *o, int32_t **tok, int64_t **off, int *n,
                        sl_err *err) {
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    if (h5_prompts_read(&ps, o->calib_path, err)) return -1;
    Tokenizer *tk = NULL;
    if (!ps.tokens && tok_load_dir(&tk, o->model_dir, err)) {
        h5_prompts_free(&ps);
        return sl_errctx(err, "--calib %s holds text only", o->calib_path);
    }
    *tok = sl_malloc(sizeof(int32_t) * (size_t)o->max_calib_tokens);
    *off = sl_malloc(sizeof(int64_t) * (size_t)(ps.n + 1));
    int total = 0, k = 0;
    (*off)[0] = 0;
    for (int64_t i = 0; i < ps.n && total < o->max_calib_tokens; i++) {
        int32_t *ids = NULL;
        int len = 0;
        if (tk) {
            if (tok_encode(tk, ps.prompt_text[i], strlen(ps.prompt_text[i]), 1, &ids, &len, err))
                break;
        } else {
            len = (int)(ps.offsets[i + 1] - ps.offsets[i]);
        }
        const int32_t *src = tk ? ids : ps.tokens + ps.offsets[i];
        if (len > 512) len = 512;
        if (len > o->max_calib_tokens - total) len = o->max_calib_tokens - total;
        if (len >= 2) {
            memcpy(*tok + total, src, sizeof(int32_t) * len);
            total += len;
            (*off)[++k] = total;
        }
        free(ids);
    }
    tok_free(tk);
    h5_prompts_free(&ps);
    *n = k;
    if (k == 0) return sl_errf(err, "--calib %s: no prompt of 2 or more tokens", o->calib_path);
    return 0;
}

// Runs the calibration prompts through the model (CPU backend) and fills
// st (n_layers, LIN_N).
static int calibrate(const AwqQuantOptions *o, const ModelConfig *cfg, ActStats *st,
                     sl_err *err) {
    int32_t *tok = NULL;
    int64_t *off = NULL;
    int np = 0;
    if (calib_tokens(o, &tok, &off, &np, err)) return -1;
    long total = off[np];
    Backend *be = backend_cpu_create(0);
    Model *m = NULL;
    ModelOptions mo = {.max_tokens = 512, .max_seqs = 1, .tp_size = 1};
    int rc = -1;
    if (model_load(&m, o->model_dir, be, &mo, err)) goto out;
    int bs = 16, nb = 512 / bs;
    model_kv_alloc(m, nb, bs);
    int ins[LIN_N] = {cfg->dim, cfg->n_heads * cfg->head_dim, cfg->dim, cfg->hidden_dim};
    for (int l = 0; l < cfg->n_layers; l++)
        for (int k = 0; k < LIN_N; k++) {
            ActStats *a = &st[l * LIN_N + k];
            a->in = ins[k];
            a->absum = sl_calloc((size_t)a->in, sizeof(double));
            a->cap = o->search_rows;
            a->rows = sl_malloc(sizeof(float) * (size_t)a->cap * a->in);
        }
    g_hook.m = m;
    g_hook.st = st;
    g_hook.linear = be->linear;
    g_hook.stride = total / o->search_rows > 1 ? total / o->search_rows : 1;
    be->linear = hook_linear;
    int32_t pos[512], seq_of[512], slots[512], bt[512 / 16];
    for (int i = 0; i < 512; i++) pos[i] = i, seq_of[i] = 0, slots[i] = i;
    for (int i = 0; i < nb; i++) bt[i] = i;
    LOGI("calibrating on %d prompts, %ld tokens", np, total);
    for (int p = 0; p < np; p++) {
        int n = (int)(off[p + 1] - off[p]);
        int32_t seq_start[2] = {0, n}, kv_len[1] = {n};
        Batch b = {.n_tokens = n, .n_seqs = 1, .tokens = tok + off[p], .pos = pos,
                   .seq_of = seq_of, .slots = slots, .seq_start = seq_start, .kv_len = kv_len,
                   .block_tables = bt, .max_blocks = nb, .n_logits = 0};
        model_forward(m, &b, NULL);
    }
    be->linear = g_hook.linear;
    rc = 0;
out:
    model_free(m);
    be->destroy(be);
    free(tok);
    free(off);
    return rc;
}

// ----------------------------------------------------------------------------
// the searches

// wq (rows, in) = the fp32 weights INT4 quantisation (group g, zero points)
// gives back for w (rows, in); clip as cpu_int4_quantize.
static void fake_quant(float *wq, const float *w, const float *clip, int rows, int in, int g) {
    uint32_t *q = sl_malloc(sizeof(uint32_t) * (size_t)rows * (in / 8));
    uint16_t *s = sl_malloc(sizeof(uint16_t) * (size_t)rows * (in / g));
    uint8_t *z = sl_malloc((size_t)rows * (in / g));
    cpu_int4_quantize(q, s, z, w, clip, rows, in, g);
    cpu_int4_dequant(wq, q, s, z, rows, in, g);
    free(q), free(s), free(z);
}

static double sq_err(const float *a, const float *b, size_t n) {
    double e = 0;
    for (size_t i = 0; i < n; i++) e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return e / (double)n;
}

// AWQ's scale search for w (rows, in) fed by a's rows: s = mean|x|^alpha
// (normalised by sqrt(max * min)), alpha on a grid, minimising the output
// error of quant(w * s) / s. s (in) receives the best (all ones when
// alpha = 0 wins). Returns the best alpha.
static float search_scales(const float *w, int rows, int in, const ActStats *a, int g,
                           int n_grid, float *s) {
    int n = a->n;
    float *mean = sl_malloc(sizeof(float) * in), *ws = sl_malloc(sizeof(float) * rows * in);
    float *wq = sl_malloc(sizeof(float) * rows * in), *cand = sl_malloc(sizeof(float) * in);
    float *yref = sl_malloc(sizeof(float) * (size_t)n * rows);
    float *y = sl_malloc(sizeof(float) * (size_t)n * rows);
    for (int j = 0; j < in; j++) mean[j] = (float)(a->absum[j] / (a->rows_seen ? a->rows_seen : 1));
    cpu_linear(yref, a->rows, w, NULL, n, in, rows);
    double best = INFINITY;
    float best_alpha = 0;
    for (int j = 0; j < in; j++) s[j] = 1.0f;
    for (int gi = 0; gi < n_grid; gi++) {
        float alpha = (float)gi / n_grid;
        float mx = 0, mn = INFINITY;
        for (int j = 0; j < in; j++) {
            cand[j] = fmaxf(powf(mean[j], alpha), 1e-4f);
            mx = fmaxf(mx, cand[j]);
            mn = fminf(mn, cand[j]);
        }
        float norm = sqrtf(mx * mn);
        for (int j = 0; j < in; j++) cand[j] /= norm;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < in; j++) ws[(size_t)r * in + j] = w[(size_t)r * in + j] * cand[j];
        fake_quant(wq, ws, NULL, rows, in, g);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < in; j++) wq[(size_t)r * in + j] /= cand[j];
        cpu_linear(y, a->rows, wq, NULL, n, in, rows);
        double e = sq_err(y, yref, (size_t)n * rows);
        if (e < best) {
            best = e;
            best_alpha = alpha;
            memcpy(s, cand, sizeof(float) * in);
        }
    }
    free(mean), free(ws), free(wq), free(cand), free(yref), free(y);
    return best_alpha;
}

// AWQ's clipping search: per (row, group) the largest |w| allowed, from
// max|w| * (1 - i/20), i = 0..10, minimising that group's contribution error
// to the output over x's first n rows (x already divided by the scales).
static void search_clip(float *clip, const float *w, int rows, int in, const float *x, int n,
                        int g) {
    int ng = in / g;
#pragma omp parallel
    {
        float *wc = sl_malloc(sizeof(float) * g), *ref = sl_malloc(sizeof(float) * (n ? n : 1));
        uint32_t *q = sl_malloc(sizeof(uint32_t) * (size_t)(g / 8));
        uint16_t sc;
        uint8_t z;
        float *wq = sl_malloc(sizeof(float) * g);
#pragma omp for schedule(dynamic, 16)
        for (int idx = 0; idx < rows * ng; idx++) {
            int r = idx / ng, gi = idx % ng;
            const float *wg = w + (size_t)r * in + (size_t)gi * g;
            float amax = 0;
            for (int k = 0; k < g; k++) amax = fmaxf(amax, fabsf(wg[k]));
            for (int t = 0; t < n; t++) {
                const float *xt = x + (size_t)t * in + (size_t)gi * g;
                float acc = 0;
                for (int k = 0; k < g; k++) acc += xt[k] * wg[k];
                ref[t] = acc;
            }
            double best = INFINITY;
            float best_c = amax;
            for (int i = 0; i <= 10; i++) {
                float c = amax * (1.0f - i / 20.0f);
                if (!(c > 0)) break;
                memcpy(wc, wg, sizeof(float) * g);
                cpu_int4_quantize(q, &sc, &z, wc, &c, 1, g, g);
                cpu_int4_dequant(wq, q, &sc, &z, 1, g, g);
                double e = 0;
                for (int t = 0; t < n; t++) {
                    const float *xt = x + (size_t)t * in + (size_t)gi * g;
                    float acc = 0;
                    for (int k = 0; k < g; k++) acc += xt[k] * wq[k];
                    e += ((double)acc - ref[t]) * ((double)acc - ref[t]);
                }
                if (e < best) best = e, best_c = c;
            }
            clip[idx] = best_c;
        }
        free(wc), free(ref), free(wq), free(q);
    }
}

// ----------------------------------------------------------------------------
// the layer's weights on the host

static const char *const LIN_PROJ[LIN_N][3] = {
    {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
    {"self_attn.o_proj", NULL, NULL},
    {"mlp.gate_proj", "mlp.up_proj", NULL},
    {"mlp.down_proj", NULL, NULL},
};

typedef struct {
    float *w[LIN_N];       // fused (rows, in)
    int rows[LIN_N], in[LIN_N];
    int part_rows[LIN_N][3];
    float *norm[2];        // input_layernorm, post_attention_layernorm (dim)
} HostLayer;

static int read_f32(const st_file *st, const char *name, int ndim, const int64_t *shape,
                    float *dst, sl_err *err) {
    const st_tensor *t;
    if (st_expect(st, name, ndim, shape, &t, err)) return -1;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    st_to_f32(t, 0, n, dst);
    return 0;
}

static int host_layer_load(HostLayer *h, const st_file *st, const ModelConfig *c, int l,
                           sl_err *err) {
    int hd = c->head_dim, q = c->n_heads * hd, kv = c->n_kv_heads * hd;
    int prow[LIN_N][3] = {{q, kv, kv}, {c->dim, 0, 0}, {c->hidden_dim, c->hidden_dim, 0},
                          {c->dim, 0, 0}};
    int ins[LIN_N] = {c->dim, q, c->dim, c->hidden_dim};
    char nm[256];
    memset(h, 0, sizeof *h);
    for (int k = 0; k < LIN_N; k++) {
        h->in[k] = ins[k];
        for (int p = 0; p < 3; p++) h->rows[k] += prow[k][p], h->part_rows[k][p] = prow[k][p];
        h->w[k] = sl_malloc(sizeof(float) * (size_t)h->rows[k] * h->in[k]);
        int r = 0;
        for (int p = 0; p < 3 && LIN_PROJ[k][p]; p++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, LIN_PROJ[k][p]);
            int64_t shape[2] = {prow[k][p], ins[k]};
            if (read_f32(st, nm, 2, shape, h->w[k] + (size_t)r * ins[k], err)) return -1;
            r += prow[k][p];
        }
    }
    const char *norms[2] = {"input_layernorm.weight", "post_attention_layernorm.weight"};
    for (int i = 0; i < 2; i++) {
        h->norm[i] = sl_malloc(sizeof(float) * c->dim);
        snprintf(nm, sizeof nm, "model.layers.%d.%s", l, norms[i]);
        int64_t n = c->dim;
        if (read_f32(st, nm, 1, &n, h->norm[i], err)) return -1;
    }
    return 0;
}

static void host_layer_free(HostLayer *h) {
    for (int k = 0; k < LIN_N; k++) free(h->w[k]);
    free(h->norm[0]), free(h->norm[1]);
}

// AWQ on one layer: scales (folded into the previous op), then clipping.
// clip[k] receives (rows, in/g) per fused matrix.
static void awq_layer(HostLayer *h, const ActStats *st, const ModelConfig *c, int g, int n_grid,
                      int clip_rows, float *clip[LIN_N], int l, int verbose) {
    float *s[LIN_N] = {0};
    float alpha[LIN_N] = {-1, -1, -1, -1};
    int fold_o = c->n_heads == c->n_kv_heads; // o's input channels are v's output rows
    for (int k = 0; k < LIN_N; k++) {
        if (k == LIN_O && !fold_o) continue;
        s[k] = sl_malloc(sizeof(float) * h->in[k]);
        alpha[k] = search_scales(h->w[k], h->rows[k], h->in[k], &st[k], g, n_grid, s[k]);
    }
    // apply: W *= s (columns); the op producing the input divides by s
    for (int k = 0; k < LIN_N; k++) {
        if (!s[k]) continue;
        for (int r = 0; r < h->rows[k]; r++)
            for (int j = 0; j < h->in[k]; j++) h->w[k][(size_t)r * h->in[k] + j] *= s[k][j];
    }
    for (int j = 0; j < c->dim; j++) h->norm[0][j] /= s[LIN_QKV][j], h->norm[1][j] /= s[LIN_GU][j];
    int up0 = c->hidden_dim; // up rows follow gate rows in the fused gate|up
    for (int j = 0; j < c->hidden_dim; j++)
        for (int i = 0; i < c->dim; i++) h->w[LIN_GU][(size_t)(up0 + j) * c->dim + i] /= s[LIN_DOWN][j];
    if (s[LIN_O]) {
        int v0 = c->n_heads * c->head_dim + c->n_kv_heads * c->head_dim; // v rows in q|k|v
        for (int j = 0; j < h->in[LIN_O]; j++)
            for (int i = 0; i < c->dim; i++) h->w[LIN_QKV][(size_t)(v0 + j) * c->dim + i] /= s[LIN_O][j];
    }
    // clipping on the scaled weights, with the inputs the scaled layer sees
    for (int k = 0; k < LIN_N; k++) {
        int n = st[k].n < clip_rows ? st[k].n : clip_rows, in = h->in[k];
        float *x = sl_malloc(sizeof(float) * (size_t)(n ? n : 1) * in);
        for (int t = 0; t < n; t++)
            for (int j = 0; j < in; j++)
                x[(size_t)t * in + j] = st[k].rows[(size_t)t * in + j] / (s[k] ? s[k][j] : 1.0f);
        clip[k] = sl_malloc(sizeof(float) * (size_t)h->rows[k] * (in / g));
        // as AutoAWQ: q and k are not clipped (errors in q.k pass through the
        // softmax's exponential); only the v rows of q|k|v are searched
        int r0 = k == LIN_QKV ? (c->n_heads + c->n_kv_heads) * c->head_dim : 0;
        for (size_t i = 0; i < (size_t)r0 * (in / g); i++) clip[k][i] = INFINITY;
        search_clip(clip[k] + (size_t)r0 * (in / g), h->w[k] + (size_t)r0 * in, h->rows[k] - r0,
                    in, x, n, g);
        free(x);
    }
    if (verbose)
        LOGI("layer %d: alpha qkv %.2f o %.2f gate|up %.2f down %.2f", l, alpha[0], alpha[1],
             alpha[2], alpha[3]);
    for (int k = 0; k < LIN_N; k++) free(s[k]);
}

// Appends the AWQ tensors of rows [r0, r0 + nr) of a quantised fused matrix
// (sluice layout, in inputs) as projection `pre`.
static void emit_awq(OutList *out, const char *pre, const uint32_t *q, const uint16_t *sc,
                     const uint8_t *zz, int r0, int nr, int in, int g) {
    int ng = in / g, wpr = in / 8;
    uint32_t *qw = sl_calloc((size_t)in * (nr / 8), 4);
    uint32_t *qz = sl_calloc((size_t)ng * (nr / 8), 4);
    uint16_t *s = sl_malloc(2 * (size_t)ng * nr);
    for (int o = 0; o < nr; o++) {
        int c = o / 8, nib = AWQ_REVERSE[o % 8];
        const uint32_t *qr = q + (size_t)(r0 + o) * wpr;
        for (int k = 0; k < in; k++)
            qw[(size_t)k * (nr / 8) + c] |= ((qr[k / 8] >> (4 * (k % 8))) & 15u) << (4 * nib);
        for (int gi = 0; gi < ng; gi++) {
            qz[(size_t)gi * (nr / 8) + c] |= (uint32_t)zz[(size_t)(r0 + o) * ng + gi] << (4 * nib);
            s[(size_t)gi * nr + o] = sc[(size_t)(r0 + o) * ng + gi];
        }
    }
    char nm[256];
    snprintf(nm, sizeof nm, "%s.qweight", pre);
    out_add(out, nm, "I32", 2, in, nr / 8, qw, 4 * (size_t)in * (nr / 8));
    snprintf(nm, sizeof nm, "%s.qzeros", pre);
    out_add(out, nm, "I32", 2, ng, nr / 8, qz, 4 * (size_t)ng * (nr / 8));
    snprintf(nm, sizeof nm, "%s.scales", pre);
    out_add(out, nm, "F16", 2, ng, nr, s, 2 * (size_t)ng * nr);
}

static int copy_file(const char *src, const char *dst, sl_err *err) {
    size_t len = 0;
    char *buf = sl_read_file(src, &len, err);
    if (!buf) return -1;
    FILE *f = fopen(dst, "wb");
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f && fclose(f)) ok = 0;
    free(buf);
    return ok ? 0 : sl_errf(err, "%s: cannot write: %s", dst, strerror(errno));
}

int awq_quantize(const AwqQuantOptions *o, sl_err *err) {
    ModelConfig cfg;
    st_file *st = NULL;
    OutList out = {0};
    ActStats *acts = NULL;
    json_t *cj = NULL;
    int rc = -1, g = o->group;
    if (config_load(&cfg, o->model_dir, err) || st_open_dir(&st, o->model_dir, err)) goto done;
    {
        int q = cfg.n_heads * cfg.head_dim, kv = cfg.n_kv_heads * cfg.head_dim;
        if (g <= 0 || g % 32 || cfg.dim % g || q % g || cfg.hidden_dim % g) {
            sl_errf(err, "--group %d must be a multiple of 32 dividing the layers' input sizes "
                    "(%d, %d, %d) of %s", g, cfg.dim, q, cfg.hidden_dim, o->model_dir);
            goto done;
        }
        if (q % 8 || kv % 8 || cfg.dim % 8 || cfg.hidden_dim % 8) {
            sl_errf(err, "%s: AWQ packs 8 output features per word; the layer sizes (%d, %d, %d, "
                    "%d) are not multiples of 8", o->model_dir, q, kv, cfg.dim, cfg.hidden_dim);
            goto done;
        }
    }
    for (int i = 0; i < st_count(st); i++)
        if (strstr(st_get(st, i)->name, ".qweight")) {
            sl_errf(err, "%s is already quantised (tensor %s)", o->model_dir, st_get(st, i)->name);
            goto done;
        }
    if (mkdir(o->out_dir, 0755) && errno != EEXIST) {
        sl_errf(err, "--output %s: cannot create: %s", o->out_dir, strerror(errno));
        goto done;
    }
    if (o->method == AWQ_QUANT_AWQ) {
        if (cfg.attn_bias || cfg.mlp_bias) {
            sl_errf(err, "%s: --int4-awq does not fold scales into biases yet (attention_bias / "
                    "mlp_bias); use --int4-rtn", o->model_dir);
            goto done;
        }
        if (!o->calib_path) {
            sl_errf(err, "--int4-awq needs --calib prompts.h5 (calibration prompts)");
            goto done;
        }
        acts = sl_calloc((size_t)cfg.n_layers * LIN_N, sizeof *acts);
        if (calibrate(o, &cfg, acts, err)) goto done;
    }

    // every layer's linear layers
    for (int l = 0; l < cfg.n_layers; l++) {
        HostLayer h;
        if (host_layer_load(&h, st, &cfg, l, err)) {
            host_layer_free(&h);
            goto done;
        }
        float *clip[LIN_N] = {0};
        if (acts) awq_layer(&h, acts + (size_t)l * LIN_N, &cfg, g, o->n_grid, o->clip_rows, clip, l,
                            o->verbose);
        for (int k = 0; k < LIN_N; k++) {
            int rows = h.rows[k], in = h.in[k];
            uint32_t *q = sl_malloc(4 * (size_t)rows * (in / 8));
            uint16_t *sc = sl_malloc(2 * (size_t)rows * (in / g));
            uint8_t *zz = sl_malloc((size_t)rows * (in / g));
            cpu_int4_quantize(q, sc, zz, h.w[k], clip[k], rows, in, g);
            for (int p = 0, r0 = 0; p < 3 && LIN_PROJ[k][p]; r0 += h.part_rows[k][p], p++) {
                char pre[160];
                snprintf(pre, sizeof pre, "model.layers.%d.%s", l, LIN_PROJ[k][p]);
                emit_awq(&out, pre, q, sc, zz, r0, h.part_rows[k][p], in, g);
            }
            free(q), free(sc), free(zz), free(clip[k]);
        }
        if (acts) { // the norms took the scales: written F32
            const char *norms[2] = {"input_layernorm.weight", "post_attention_layernorm.weight"};
            for (int i = 0; i < 2; i++) {
                char nm[160];
                snprintf(nm, sizeof nm, "model.layers.%d.%s", l, norms[i]);
                out_add(&out, nm, "F32", 1, cfg.dim, 0, h.norm[i], sizeof(float) * cfg.dim);
                h.norm[i] = NULL;
            }
        }
        host_layer_free(&h);
        LOGD("layer %d quantised", l);
    }
    // everything else as it was
    for (int i = 0; i < st_count(st); i++) {
        const st_tensor *t = st_get(st, i);
        int l = -1, used = 0;
        char rest[200] = "";
        if (sscanf(t->name, "model.layers.%d.%199s", &l, rest) == 2) {
            for (int k = 0; k < LIN_N; k++)
                for (int p = 0; p < 3 && LIN_PROJ[k][p]; p++) {
                    char w[64];
                    snprintf(w, sizeof w, "%s.weight", LIN_PROJ[k][p]);
                    if (!strcmp(rest, w)) used = 1;
                }
            if (acts && (!strcmp(rest, "input_layernorm.weight") ||
                         !strcmp(rest, "post_attention_layernorm.weight")))
                used = 1;
        }
        if (used) continue;
        void *d = sl_malloc(t->nbytes ? t->nbytes : 1);
        memcpy(d, t->data, t->nbytes);
        out_add(&out, t->name, st_dtype_name(t->dtype), t->ndim, t->shape[0],
                t->ndim > 1 ? t->shape[1] : 0, d, t->nbytes);
        if (t->ndim > 2) {
            sl_errf(err, "%s: tensor %s has %d dims; not a Llama checkpoint", t->file, t->name,
                    t->ndim);
            goto done;
        }
    }
    char *path = sl_path_join(o->out_dir, "model.safetensors");
    int wr = out_write(&out, path, err);
    free(path);
    if (wr) goto done;

    // config.json with quantization_config; tokenizer and generation files
    char *cp = sl_path_join(o->model_dir, "config.json");
    json_error_t je;
    cj = json_load_file(cp, 0, &je);
    free(cp);
    if (!cj) {
        sl_errf(err, "%s/config.json: %s", o->model_dir, je.text);
        goto done;
    }
    json_object_set_new(cj, "quantization_config",
                        json_pack("{s:s,s:i,s:i,s:b,s:s,s:[]}", "quant_method", "awq", "bits", 4,
                                  "group_size", g, "zero_point", 1, "version", "gemm",
                                  "modules_to_not_convert"));
    json_object_set_new(cj, "sluice_quantize",
                        json_string(o->method == AWQ_QUANT_AWQ ? "awq" : "rtn"));
    cp = sl_path_join(o->out_dir, "config.json");
    int jr = json_dump_file(cj, cp, JSON_INDENT(2));
    free(cp);
    if (jr) {
        sl_errf(err, "%s/config.json: cannot write", o->out_dir);
        goto done;
    }
    static const char *const extra[] = {"tokenizer.json", "tokenizer_config.json",
                                        "generation_config.json", "special_tokens_map.json",
                                        "tokenizer.model"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        char *src = sl_path_join(o->model_dir, extra[i]), *dst = sl_path_join(o->out_dir, extra[i]);
        int cr = access(src, R_OK) == 0 ? copy_file(src, dst, err) : 0;
        free(src), free(dst);
        if (cr) goto done;
    }
    rc = 0;
done:
    if (acts) {
        for (int i = 0; i < cfg.n_layers * LIN_N; i++) free(acts[i].absum), free(acts[i].rows);
        free(acts);
    }
    json_decref(cj);
    out_free(&out);
    st_close(st);
    return rc;
}
