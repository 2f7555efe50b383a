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
                      float *tmp_bias, LinearWeight *w, sl_err *err) {
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
    if (first->file) {
        char *f = sl_strdup(first->file);
        char *dir = dirname(f);
        char *cfgp = sl_path_join(dir, "config.json");
        int g = 0, rc = 0;
        if (access(cfgp, R_OK) == 0) rc = awq_check_config(dir, &g, err);
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
    if (load_fused(m, st, l, qkv, 3, tmp, tmp_bias, &L->wqkv, err)) return -1;
    Part o = {"self_attn.o_proj", dim, q_all, 0, dim, (int64_t)r * nh * hd, (int64_t)nh * hd,
              c->attn_bias && r == 0};
    if (load_fused(m, st, l, &o, 1, tmp, tmp_bias, &L->wo, err)) return -1;
    Part gu[2] = {
        {"mlp.gate_proj", c->hidden_dim, dim, (int64_t)r * hid, hid, 0, dim, c->mlp_bias},
        {"mlp.up_proj", c->hidden_dim, dim, (int64_t)r * hid, hid, 0, dim, c->mlp_bias},
    };
    if (load_fused(m, st, l, gu, 2, tmp, tmp_bias, &L->wgu, err)) return -1;
    Part d = {"mlp.down_proj", dim, c->hidden_dim, 0, dim, (int64_t)r * hid, hid,
              c->mlp_bias && r == 0};
    return load_fused(m, st, l, &d, 1, tmp, tmp_bias, &L->wdown, err) ? -1 : 0;
}
