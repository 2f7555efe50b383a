// quant_fp8_write.c: `sluice quantize --fp8`: an FP8 checkpoint from a float
// one, in the compressed-tensors or the ModelOpt layout (quant.h), loadable
// by sluice, vLLM and TensorRT-LLM.
//
// Weights are quantised with the same code the backends use at load
// (cpu_quantize_weight_fp8), so loading the written checkpoint gives exactly
// the codes `--dtype fp8` would make (per-channel scales, or per tensor).
// Calibration (--calib) runs the prompts' prefills through the model on the
// CPU backend with two ops wrapped: linear / linear_q record the absmax of
// each layer's input, rope_kv_write the absmax of each layer's k and v; the
// static scales are absmax / 448. The model code is untouched.
//
// The safetensors file is written in one pass over the tensors after a
// header computed from the shapes alone, so no second copy of the model is
// held in memory.
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "config.h"
#include "cpu/ops_cpu.h"
#include "fp8.h"
#include "model.h"
#include "prompts_text.h"
#include "quant.h"
#include "tokenizer.h"

// ----------------------------------------------------------------------------
// calibration

// Per layer: the absmax of the inputs of qkv, o, gate|up, down, and of k, v.
typedef struct {
    float in[4];
    float k, v;
} LayerRange;

static struct {
    Model *m;
    LayerRange *r;
    int rope_calls;
    void (*linear)(Backend *, void *, const void *, const LinearWeight *, int);
    void (*linear_q)(Backend *, void *, const void *, const LinearWeight *, int);
    void (*rope)(Backend *, void *, void *, void *, const Batch *, const void *,
                 const AttnShape *);
} cal;

static float absmax(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

static void cal_note(const LinearWeight *w, const void *x, int n) {
    for (int l = 0; l < cal.m->cfg.n_layers; l++) {
        LayerWeights *L = &cal.m->layers[l];
        const LinearWeight *ws[4] = {&L->wqkv, &L->wo, &L->wgu, &L->wdown};
        for (int k = 0; k < 4; k++)
            if (ws[k] == w) {
                float a = absmax(x, (size_t)n * w->in_dim);
                if (a > cal.r[l].in[k]) cal.r[l].in[k] = a;
                return;
            }
    }
}

static void cal_linear(Backend *be, void *y, const void *x, const LinearWeight *w, int n) {
    cal_note(w, x, n);
    cal.linear(be, y, x, w, n);
}

static void cal_linear_q(Backend *be, void *y, const void *x, const LinearWeight *w, int n) {
    cal_note(w, x, n); // the CPU's *_q ops leave fp32 activations
    cal.linear_q(be, y, x, w, n);
}

static void cal_rope(Backend *be, void *qkv, void *kc, void *vc, const Batch *b,
                     const void *inv_freq, const AttnShape *s) {
    cal.rope(be, qkv, kc, vc, b, inv_freq, s);
    int l = cal.rope_calls++ % cal.m->cfg.n_layers;
    int stride = (s->n_heads + 2 * s->n_kv_heads) * s->head_dim, kv = s->n_kv_heads * s->head_dim;
    for (int i = 0; i < b->n_tokens; i++) {
        const float *row = (const float *)qkv + (size_t)i * stride + (size_t)s->n_heads * s->head_dim;
        cal.r[l].k = fmaxf(cal.r[l].k, absmax(row, kv));
        cal.r[l].v = fmaxf(cal.r[l].v, absmax(row + kv, kv));
    }
}

static int calibrate(const QuantJob *job, LayerRange *ranges, sl_err *err) {
    int rc = -1;
    Tokenizer *tok = NULL;
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    sl_err terr = {{0}};
    if (tok_load_dir(&tok, job->model_dir, &terr)) tok = NULL; // ids-only files still work
    if (prompts_load(&ps, job->calib, tok, job->threads, err)) goto done;
    Backend *be = backend_cpu_create(job->threads);
    const int T = 512;
    ModelOptions mo = {.max_tokens = T, .max_seqs = 1, .tp_size = 1};
    Model *m = NULL;
    if (model_load(&m, job->model_dir, be, &mo, err)) {
        be->destroy(be);
        goto done;
    }
    int bs = 16, maxlen = m->cfg.max_seq_len;
    model_kv_alloc(m, (maxlen + bs - 1) / bs, bs);
    cal.m = m;
    cal.r = ranges;
    cal.rope_calls = 0;
    cal.linear = be->linear;
    cal.linear_q = be->linear_q;
    cal.rope = be->rope_kv_write;
    be->linear = cal_linear;
    be->linear_q = cal_linear_q;
    be->rope_kv_write = cal_rope;
    int used = 0;
    int32_t *pos = sl_malloc(sizeof(int32_t) * 4 * T), *seq_of = pos + T, *slots = pos + 2 * T;
    int32_t *bt = sl_malloc(sizeof(int32_t) * ((maxlen + bs - 1) / bs));
    for (int i = 0; i < (maxlen + bs - 1) / bs; i++) bt[i] = i;
    for (int64_t p = 0; p < ps.n && used < job->calib_max; p++) {
        int len = (int)(ps.offsets[p + 1] - ps.offsets[p]);
        if (len > maxlen) len = maxlen;
        const int32_t *toks = ps.tokens + ps.offsets[p];
        for (int s = 0; s < len; s += T) { // chunked prefill, no logits
            int n = len - s < T ? len - s : T;
            for (int i = 0; i < n; i++) {
                pos[i] = s + i;
                seq_of[i] = 0;
                slots[i] = s + i;
            }
            int32_t seq_start[2] = {0, n}, kv_len[1] = {s + n};
            Batch b = {.n_tokens = n, .n_seqs = 1, .tokens = (int32_t *)toks + s, .pos = pos,
                       .seq_of = seq_of, .slots = slots, .seq_start = seq_start,
                       .kv_len = kv_len, .block_tables = bt,
                       .max_blocks = (s + n + bs - 1) / bs, .n_logits = 0};
            model_forward(m, &b, NULL);
        }
        used++;
    }
    LOGI("calibration: %d prompts from %s", used, job->calib);
    free(pos);
    free(bt);
    model_free(m);
    be->destroy(be);
    rc = used > 0 ? 0 : sl_errf(err, "%s: no prompts to calibrate with", job->calib);
done:
    h5_prompts_free(&ps);
    if (tok) tok_free(tok);
    return rc;
}

// ----------------------------------------------------------------------------
// the tensors of the output

typedef enum { OT_COPY_BF16, OT_FP8_WEIGHT, OT_WSCALE, OT_SCALAR } OutKind;

typedef struct {
    char name[320];
    OutKind kind;
    const st_tensor *src; // COPY_BF16, FP8_WEIGHT, WSCALE: the source weight
    int ndim;
    int64_t shape[2];
    float value;          // SCALAR
    int per_tensor;       // FP8_WEIGHT / WSCALE
    uint64_t off, bytes;
} OutTensor;

static const char *const LINEARS[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                      "self_attn.o_proj", "mlp.gate_proj",   "mlp.up_proj",
                                      "mlp.down_proj"};
static const int LINEAR_RANGE[7] = {0, 0, 0, 1, 2, 2, 3}; // which input they share

// layer index and linear index of "model.layers.<l>.<linear>.weight", or -1
static int linear_of(const char *name, int *layer) {
    int l, off = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &off) != 1 || off == 0) return -1;
    for (int k = 0; k < 7; k++) {
        size_t n = strlen(LINEARS[k]);
        if (!strncmp(name + off, LINEARS[k], n) && !strcmp(name + off + n, ".weight")) {
            *layer = l;
            return k;
        }
    }
    return -1;
}

static OutTensor *out_add(OutTensor **v, int *n, int *cap) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *v = realloc(*v, sizeof **v * (size_t)*cap);
    }
    OutTensor *t = &(*v)[(*n)++];
    memset(t, 0, sizeof *t);
    return t;
}

// Produces tensor t's bytes into buf (t->bytes).
static void out_fill(const OutTensor *t, void *buf) {
    const st_tensor *s = t->src;
    if (t->kind == OT_SCALAR) {
        memcpy(buf, &t->value, 4);
        return;
    }
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= s->shape[i];
    if (t->kind == OT_COPY_BF16) {
        if (s->dtype == ST_BF16) {
            memcpy(buf, s->data, (size_t)n * 2);
            return;
        }
        float *f = sl_malloc(sizeof(float) * (size_t)n);
        st_to_f32(s, 0, n, f);
        for (int64_t i = 0; i < n; i++) ((uint16_t *)buf)[i] = sl_f32_to_bf16(f[i]);
        free(f);
        return;
    }
    int out = (int)s->shape[0], in = (int)s->shape[1];
    float *f = sl_malloc(sizeof(float) * (size_t)n), *sc = sl_malloc(sizeof(float) * out);
    uint8_t *q = t->kind == OT_FP8_WEIGHT ? buf : sl_malloc((size_t)n);
    st_to_f32(s, 0, n, f);
    cpu_quantize_weight_fp8(q, sc, f, out, in, !t->per_tensor, NULL);
    if (t->kind == OT_WSCALE) memcpy(buf, sc, sizeof(float) * (t->per_tensor ? 1 : out));
    if (q != buf) free(q);
    free(f);
    free(sc);
}

// ----------------------------------------------------------------------------
// files

static int copy_file(const char *from, const char *to, sl_err *err) {
    size_t len;
    sl_err e2 = {{0}};
    char *d = sl_read_file(from, &len, &e2);
    if (!d) return 0; // optional files
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(d, 1, len, f) == len;
    if (f && fclose(f)) ok = 0;
    free(d);
    return ok ? 0 : sl_errf(err, "%s: cannot write", to);
}

static int write_configs(const QuantJob *job, int calibrated, sl_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", job->model_dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg) return sl_errf(err, "%s: %s", path, je.text);
    json_t *q;
    if (job->format == QFMT_COMPRESSED_TENSORS) {
        json_t *wq = json_pack("{s:i,s:s,s:s,s:b,s:b}", "num_bits", 8, "type", "float",
                               "strategy", job->per_tensor ? "tensor" : "channel", "symmetric",
                               1, "dynamic", 0);
        json_t *aq = json_pack("{s:i,s:s,s:s,s:b,s:b}", "num_bits", 8, "type", "float",
                               "strategy", calibrated ? "tensor" : "token", "symmetric", 1,
                               "dynamic", !calibrated);
        q = json_pack("{s:s,s:s,s:s,s:{s:{s:[s],s:o,s:o}},s:[s]}", "quant_method",
                      "compressed-tensors", "format", "float-quantized", "quantization_status",
                      "compressed", "config_groups", "group_0", "targets", "Linear", "weights",
                      wq, "input_activations", aq, "ignore", "lm_head");
        if (calibrated)
            json_object_set_new(q, "kv_cache_scheme",
                                json_pack("{s:i,s:s,s:s,s:b,s:b}", "num_bits", 8, "type", "float",
                                          "strategy", "tensor", "symmetric", 1, "dynamic", 0));
        else
            json_object_set_new(q, "kv_cache_scheme", json_null());
    } else {
        q = json_pack("{s:s,s:s,s:s}", "quant_method", "modelopt", "quant_algo", "FP8",
                      "kv_cache_quant_algo", calibrated ? "FP8" : "none");
        json_t *hq = json_pack("{s:{s:s,s:s},s:{s:s,s:s,s:[s]}}", "producer", "name", "modelopt",
                               "version", "sluice", "quantization", "quant_algo", "FP8",
                               "kv_cache_quant_algo", calibrated ? "FP8" : "none",
                               "exclude_modules", "lm_head");
        snprintf(path, sizeof path, "%s/hf_quant_config.json", job->out_dir);
        int bad = json_dump_file(hq, path, JSON_INDENT(2));
        json_decref(hq);
        if (bad) {
            json_decref(q);
            json_decref(cfg);
            return sl_errf(err, "%s: cannot write", path);
        }
    }
    json_object_set_new(cfg, "quantization_config", q);
    snprintf(path, sizeof path, "%s/config.json", job->out_dir);
    int bad = json_dump_file(cfg, path, JSON_INDENT(2));
    json_decref(cfg);
    if (bad) return sl_errf(err, "%s: cannot write", path);
    static const char *copies[] = {"tokenizer.json", "tokenizer_config.json",
                                   "generation_config.json", "golden_greedy.json"};
    for (int i = 0; i < 4; i++) {
        char from[4096], to[4096];
        snprintf(from, sizeof from, "%s/%s", job->model_dir, copies[i]);
        snprintf(to, sizeof to, "%s/%s", job->out_dir, copies[i]);
        if (copy_file(from, to, err)) return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// the writer

int quant_write_fp8(const QuantJob *job, sl_err *err) {
    ModelConfig cfg;
    st_file *st = NULL;
    if (config_load(&cfg, job->model_dir, err)) return -1;
    if (st_open_dir(&st, job->model_dir, err)) return -1;
    if (quant_detect(st) != QCKPT_NONE) {
        st_close(st);
        return sl_errf(err, "%s is already quantised", job->model_dir);
    }
    int rc = -1;
    LayerRange *ranges = sl_calloc((size_t)cfg.n_layers, sizeof *ranges);
    OutTensor *ot = NULL;
    int n = 0, cap = 0;
    FILE *f = NULL;
    char *hdr = NULL;
    if (job->calib && calibrate(job, ranges, err)) goto done;
    mkdir(job->out_dir, 0777);
    int ct = job->format == QFMT_COMPRESSED_TENSORS;

    // the list of output tensors, in the source's order
    for (int i = 0; i < st_count(st); i++) {
        const st_tensor *s = st_get(st, i);
        int layer = -1, k = linear_of(s->name, &layer);
        if (k < 0) {
            if (s->dtype != ST_F32 && s->dtype != ST_F16 && s->dtype != ST_BF16) {
                sl_errf(err, "%s: tensor '%s' has dtype %s; expected a float checkpoint", s->file,
                        s->name, st_dtype_name(s->dtype));
                goto done;
            }
            OutTensor *t = out_add(&ot, &n, &cap);
            snprintf(t->name, sizeof t->name, "%s", s->name);
            t->kind = OT_COPY_BF16;
            t->src = s;
            t->ndim = s->ndim;
            for (int d = 0; d < s->ndim && d < 2; d++) t->shape[d] = s->shape[d];
            if (s->ndim > 2) {
                sl_errf(err, "%s: tensor '%s' has %d dimensions", s->file, s->name, s->ndim);
                goto done;
            }
            continue;
        }
        if (s->ndim != 2 || (s->dtype != ST_F32 && s->dtype != ST_F16 && s->dtype != ST_BF16)) {
            sl_errf(err, "%s: linear weight '%s' must be a 2-D float tensor", s->file, s->name);
            goto done;
        }
        char base[200];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(s->name) - strlen(".weight")), s->name);
        OutTensor *t = out_add(&ot, &n, &cap);
        snprintf(t->name, sizeof t->name, "%s", s->name);
        t->kind = OT_FP8_WEIGHT;
        t->src = s;
        t->ndim = 2;
        t->shape[0] = s->shape[0];
        t->shape[1] = s->shape[1];
        t->per_tensor = job->per_tensor;
        t = out_add(&ot, &n, &cap);
        snprintf(t->name, sizeof t->name, "%s.weight_scale", base);
        t->kind = OT_WSCALE;
        t->src = s;
        t->per_tensor = job->per_tensor;
        if (job->per_tensor) {
            t->ndim = ct ? 1 : 0;
            t->shape[0] = 1;
        } else {
            t->ndim = 2;
            t->shape[0] = s->shape[0];
            t->shape[1] = 1;
        }
        if (job->calib) {
            t = out_add(&ot, &n, &cap);
            snprintf(t->name, sizeof t->name, "%s.input_scale", base);
            t->kind = OT_SCALAR;
            t->ndim = ct ? 1 : 0;
            t->shape[0] = 1;
            t->value = sl_fp8_dyn_scale(ranges[layer].in[LINEAR_RANGE[k]]);
            // the KV scales ride along with k_proj / v_proj
            if (k == 1 || k == 2) {
                t = out_add(&ot, &n, &cap);
                const char *which = k == 1 ? "k_scale" : "v_scale";
                if (ct) snprintf(t->name, sizeof t->name, "model.layers.%d.self_attn.%s", layer, which);
                else snprintf(t->name, sizeof t->name, "%s.%s", base, which);
                t->kind = OT_SCALAR;
                t->ndim = ct ? 1 : 0;
                t->shape[0] = 1;
                t->value = sl_fp8_dyn_scale(k == 1 ? ranges[layer].k : ranges[layer].v);
            }
        }
    }

    // header
    json_t *h = json_object();
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        OutTensor *t = &ot[i];
        int64_t el = 1;
        for (int d = 0; d < t->ndim; d++) el *= t->shape[d];
        const char *dt = t->kind == OT_COPY_BF16 ? "BF16" : t->kind == OT_FP8_WEIGHT ? "F8_E4M3" : "F32";
        t->bytes = (uint64_t)el * (t->kind == OT_COPY_BF16 ? 2 : t->kind == OT_FP8_WEIGHT ? 1 : 4);
        t->off = off;
        off += t->bytes;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(h, t->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", dt, "shape", shape,
                                      "data_offsets", (json_int_t)t->off,
                                      (json_int_t)(t->off + t->bytes)));
    }
    json_object_set_new(h, "__metadata__", json_pack("{s:s,s:s}", "format", "pt", "producer",
                                                     "sluice quantize --fp8"));
    hdr = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;

    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", job->out_dir);
    f = fopen(path, "wb");
    if (!f) {
        sl_errf(err, "%s: cannot create", path);
        goto done;
    }
    uint64_t hlen = padded;
    int ok = fwrite(&hlen, 8, 1, f) == 1 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < n; i++) {
        void *buf = sl_malloc(ot[i].bytes ? ot[i].bytes : 1);
        out_fill(&ot[i], buf);
        ok = fwrite(buf, 1, ot[i].bytes, f) == ot[i].bytes;
        free(buf);
    }
    if (fclose(f)) ok = 0;
    f = NULL;
    if (!ok) {
        sl_errf(err, "%s: write failed", path);
        goto done;
    }
    if (write_configs(job, job->calib != NULL, err)) goto done;
    LOGI("wrote %s: %d tensors, %.1f MiB (%s, %s weight scales, %s activations)", path, n,
         off / 1048576.0, ct ? "compressed-tensors" : "modelopt",
         job->per_tensor ? "per-tensor" : "per-channel", job->calib ? "static" : "dynamic");
    rc = 0;
done:
    if (f) fclose(f);
    free(hdr);
    free(ot);
    free(ranges);
    st_close(st);
    return rc;
}
