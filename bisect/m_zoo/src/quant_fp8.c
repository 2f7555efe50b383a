// quant_fp8.c: reading FP8 checkpoints (compressed-tensors and ModelOpt
// layouts, see quant.h) for model.c's loader.
//
// The loader works in fp32 on the host; an FP8 weight is handed over
// dequantised (code * weight_scale) together with its row scales, and the
// backend quantises it again with those same scales (Fp8Spec.w_scale): the
// product of an e4m3 value and its scale divided by the scale rounds back to
// the same code, so the codes of the checkpoint are kept exactly.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fp8.h"
#include "quant.h"

QuantCkpt quant_detect(const st_file *st) {
    const st_tensor *t = st_find(st, "model.layers.0.self_attn.q_proj.weight");
    return t && t->dtype == ST_F8_E4M3 ? QCKPT_FP8 : QCKPT_NONE;
}

// name = wname with its last component ("weight") replaced by `what`
static void sibling(char *buf, size_t n, const char *wname, const char *what) {
    const char *dot = strrchr(wname, '.');
    size_t keep = dot ? (size_t)(dot - wname + 1) : 0;
    snprintf(buf, n, "%.*s%s", (int)keep, wname, what);
}

static int64_t numel(const st_tensor *t) {
    int64_t k = 1;
    for (int i = 0; i < t->ndim; i++) k *= t->shape[i];
    return k;
}

// A scalar scale tensor (any shape of one element, float dtype) -> *v.
static int scalar_of(const st_tensor *t, float *v, sl_err *err) {
    if (numel(t) != 1 || (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16))
        return sl_errf(err, "%s: tensor '%s' should be one F32/BF16/F16 scale", t->file,
                       t->name);
    st_to_f32(t, 0, 1, v);
    if (!(*v > 0) || !isfinite(*v))
        return sl_errf(err, "%s: tensor '%s' is %g; a scale must be positive and finite",
                       t->file, t->name, *v);
    return 0;
}

int quant_fp8_slice(const st_file *st, const char *wname, int64_t R, int64_t C, int64_t r0,
                    int64_t nr, int64_t c0, int64_t nc, float *dst, float *row_scale,
                    float *in_scale, int *no_in_scale, sl_err *err) {
    const st_tensor *w = st_find(st, wname);
    if (!w) return sl_errf(err, "FP8 checkpoint: tensor '%s' missing", wname);
    if (w->dtype != ST_F8_E4M3)
        return sl_errf(err, "%s: tensor '%s' has dtype %s; in an FP8 checkpoint every linear "
                       "weight must be F8_E4M3", w->file, wname, st_dtype_name(w->dtype));
    if (w->ndim != 2 || w->shape[0] != R || w->shape[1] != C)
        return sl_errf(err, "%s: tensor '%s' should have shape [%lld, %lld]", w->file, wname,
                       (long long)R, (long long)C);
    char nm[300];
    sibling(nm, sizeof nm, wname, "weight_scale");
    const st_tensor *s = st_find(st, nm);
    if (!s) return sl_errf(err, "%s: FP8 weight '%s' has no '%s'", w->file, wname, nm);
    int64_t ns = numel(s);
    if (ns == 1) {
        float v;
        if (scalar_of(s, &v, err)) return -1;
        for (int64_t r = 0; r < nr; r++) row_scale[r] = v;
    } else if (ns == R && (s->dtype == ST_F32 || s->dtype == ST_BF16 || s->dtype == ST_F16)) {
        st_to_f32(s, r0, nr, row_scale);
        for (int64_t r = 0; r < nr; r++)
            if (!(row_scale[r] > 0) || !isfinite(row_scale[r]))
                return sl_errf(err, "%s: '%s' row %lld is %g; scales must be positive", s->file,
                               nm, (long long)(r0 + r), row_scale[r]);
    } else {
        return sl_errf(err, "%s: '%s' has %lld elements; expected 1 (per tensor) or %lld (per "
                       "output channel; block-wise scales are not supported)", s->file, nm,
                       (long long)ns, (long long)R);
    }
    const uint8_t *codes = (const uint8_t *)w->data;
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *src = codes + (size_t)(r0 + r) * C + c0;
        float sc = row_scale[r];
        for (int64_t j = 0; j < nc; j++) dst[r * nc + j] = sl_e4m3_to_f32(src[j]) * sc;
    }
    sibling(nm, sizeof nm, wname, "input_scale");
    const st_tensor *is = st_find(st, nm);
    if (is) {
        float v;
        if (scalar_of(is, &v, err)) return -1;
        if (v > *in_scale) *in_scale = v;
    } else {
        *no_in_scale = 1;
    }
    return 0;
}

int quant_kv_scales(const st_file *st, int layer, float *k, float *v, sl_err *err) {
    static const char *kn[2] = {"self_attn.k_scale", "self_attn.k_proj.k_scale"};
    static const char *vn[2] = {"self_attn.v_scale", "self_attn.v_proj.v_scale"};
    const st_tensor *kt = NULL, *vt = NULL;
    char nm[256];
    for (int i = 0; i < 2 && !kt; i++) {
        snprintf(nm, sizeof nm, "model.layers.%d.%s", layer, kn[i]);
        kt = st_find(st, nm);
    }
    for (int i = 0; i < 2 && !vt; i++) {
        snprintf(nm, sizeof nm, "model.layers.%d.%s", layer, vn[i]);
        vt = st_find(st, nm);
    }
    if (!kt && !vt) return 0;
    if (!kt || !vt)
        return sl_errf(err, "layer %d: the checkpoint has only one of k_scale / v_scale", layer);
    if (scalar_of(kt, k, err) || scalar_of(vt, v, err)) return -1;
    return 1;
}
