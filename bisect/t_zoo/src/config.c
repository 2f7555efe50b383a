// config.c: reads a Hugging Face model's config.json (+ generation_config.json)
// into a ModelConfig (see config.h).
//
// The file comes from outside, so every field is type-checked and every
// unsupported feature (architecture, activation, rope variant) is refused here
// with a message naming the file and the field, instead of surfacing later as
// wrong logits. Defaults follow transformers' LlamaConfig where it has a
// sensible one (num_key_value_heads, head_dim, rope_theta, eps, biases); the
// shape-defining fields (vocab, hidden, intermediate, layers, heads) are
// required, because a silent default there would only fail at weight load.
//
// Rope parameters come in two spellings: transformers 5 writes
//   "rope_parameters": {"rope_theta": .., "rope_type": .., "factor": .., ...}
// and transformers 4 writes top-level "rope_theta" plus "rope_scaling"
// (null, or {"rope_type" or "type": .., "factor": .., ...}).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "config.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CFG_SUPPORTED_ROPE "default, linear, llama3"

// ----------------------------------------------------------------------------
// typed field access: each returns 0 (value set, or default kept when absent),
// or -1 with err naming path and field. JSON null counts as absent.

static const char *cfg_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static json_t *cfg_get(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

// Integer field `key` of obj (reported as prefix+key). Required fields fail
// when absent; present ones must be integers > 0 when positive is set.
static int cfg_int(json_t *obj, const char *prefix, const char *key, int required,
                   int positive, int *out, const char *path, sl_err *err) {
    json_t *v = cfg_get(obj, key);
    if (!v) {
        if (required) return sl_errf(err, "%s: missing required field '%s%s'", path, prefix, key);
        return 0;
    }
    if (!json_is_integer(v))
        return sl_errf(err, "%s: field '%s%s' must be an integer, got %s", path, prefix, key,
                       cfg_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x > INT_MAX || x < INT_MIN || (positive && x <= 0))
        return sl_errf(err, "%s: field '%s%s' = %lld is out of range%s", path, prefix, key,
                       (long long)x, positive ? " (must be a positive int)" : "");
    *out = (int)x;
    return 0;
}

// Number field (integer or real accepted, since writers differ: 10000 vs 10000.0).
static int cfg_num(json_t *obj, const char *prefix, const char *key, int required,
                   float *out, const char *path, sl_err *err) {
    json_t *v = cfg_get(obj, key);
    if (!v) {
        if (required) return sl_errf(err, "%s: missing required field '%s%s'", path, prefix, key);
        return 0;
    }
    if (!json_is_number(v))
        return sl_errf(err, "%s: field '%s%s' must be a number, got %s", path, prefix, key,
                       cfg_type_name(v));
    *out = (float)json_number_value(v);
    return 0;
}

static int cfg_bool(json_t *obj, const char *key, int *out, const char *path, sl_err *err) {
    json_t *v = cfg_get(obj, key);
    if (!v) return 0;
    if (!json_is_boolean(v))
        return sl_errf(err, "%s: field '%s' must be true or false, got %s", path, key,
                       cfg_type_name(v));
    *out = json_is_true(v);
    return 0;
}

// Copies a string field into buf[n]; too long is an error, not a truncation.
static int cfg_str(json_t *obj, const char *prefix, const char *key, char *buf, size_t n,
                   const char *path, sl_err *err) {
    json_t *v = cfg_get(obj, key);
    if (!v) return 0;
    if (!json_is_string(v))
        return sl_errf(err, "%s: field '%s%s' must be a string, got %s", path, prefix, key,
                       cfg_type_name(v));
    const char *s = json_string_value(v);
    if (strlen(s) >= n)
        return sl_errf(err, "%s: field '%s%s' = '%.40s...' is too long", path, prefix, key, s);
    memcpy(buf, s, strlen(s) + 1);
    return 0;
}

static json_t *cfg_parse_json(const char *text, const char *path, sl_err *err) {
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    if (!root) {
        sl_errf(err, "%s: invalid JSON at line %d, column %d: %s", path, je.line, je.column,
                je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        sl_errf(err, "%s: top level is not a JSON object", path);
        return NULL;
    }
    return root;
}

// ----------------------------------------------------------------------------
// rope

// Reads rope settings from `obj` (the rope_parameters or rope_scaling object;
// `pfx` is its name for messages, with the trailing dot). theta is left alone
// when obj has no rope_theta (transformers 4 keeps it at the top level).
static int cfg_rope(ModelConfig *c, json_t *obj, const char *pfx, const char *path,
                    sl_err *err) {
    const char *tkey = cfg_get(obj, "rope_type") ? "rope_type" : "type";
    char type[32] = "default";
    if (cfg_str(obj, pfx, tkey, type, sizeof type, path, err)) return -1;
    if (cfg_num(obj, pfx, "rope_theta", 0, &c->rope_theta, path, err)) return -1;

    if (strcmp(type, "default") == 0) {
        c->rope_type = ROPE_DEFAULT;
        return 0;
    }
    if (strcmp(type, "linear") == 0) {
        c->rope_type = ROPE_LINEAR;
        if (cfg_num(obj, pfx, "factor", 1, &c->rope_factor, path, err)) return -1;
    } else if (strcmp(type, "llama3") == 0) {
        c->rope_type = ROPE_LLAMA3;
        if (cfg_num(obj, pfx, "factor", 1, &c->rope_factor, path, err) ||
            cfg_num(obj, pfx, "low_freq_factor", 1, &c->rope_low_freq_factor, path, err) ||
            cfg_num(obj, pfx, "high_freq_factor", 1, &c->rope_high_freq_factor, path, err) ||
            cfg_int(obj, pfx, "original_max_position_embeddings", 1, 1, &c->rope_orig_max_pos,
                    path, err))
            return -1;
        // The llama3 ramp divides by (high - low).
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return sl_errf(err, "%s: %shigh_freq_factor (%g) must exceed %slow_freq_factor (%g)",
                           path, pfx, c->rope_high_freq_factor, pfx, c->rope_low_freq_factor);
    } else {
        return sl_errf(err, "%s: %srope_type '%s' is not supported (supported: " CFG_SUPPORTED_ROPE
                       ")", path, pfx, type);
    }
    if (!(c->rope_factor > 0))
        return sl_errf(err, "%s: %sfactor (%g) must be positive", path, pfx, c->rope_factor);
    return 0;
}

// ----------------------------------------------------------------------------
// special tokens

// Reads bos/eos from obj if there; a field absent (or null) in obj leaves the
// previous value, which is how generation_config.json overrides config.json.
static int cfg_tokens(ModelConfig *c, json_t *obj, const char *path, sl_err *err) {
    if (cfg_int(obj, "", "bos_token_id", 0, 0, &c->bos_id, path, err)) return -1;
    if (c->bos_id < -1 || (c->bos_id >= c->vocab_size))
        return sl_errf(err, "%s: bos_token_id %d is outside the vocabulary [0, %d)", path,
                       c->bos_id, c->vocab_size);
    json_t *e = cfg_get(obj, "eos_token_id");
    if (!e) return 0;
    int ids[CFG_MAX_EOS], n = 0;
    if (json_is_integer(e)) {
        ids[n++] = (int)json_integer_value(e);
        if (json_integer_value(e) != ids[0]) ids[0] = -1; // out of int range
    } else if (json_is_array(e)) {
        size_t i;
        json_t *x;
        if (json_array_size(e) > CFG_MAX_EOS)
            return sl_errf(err, "%s: eos_token_id has %zu entries, at most %d supported", path,
                           json_array_size(e), CFG_MAX_EOS);
        json_array_foreach(e, i, x) {
            if (!json_is_integer(x))
                return sl_errf(err, "%s: eos_token_id[%zu] must be an integer, got %s", path, i,
                               cfg_type_name(x));
            ids[n] = (int)json_integer_value(x);
            if (json_integer_value(x) != ids[n]) ids[n] = -1;
            n++;
        }
    } else {
        return sl_errf(err, "%s: field 'eos_token_id' must be an integer or a list of them, got %s",
                       path, cfg_type_name(e));
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sl_errf(err, "%s: eos_token_id %d is outside the vocabulary [0, %d)", path,
                           ids[i], c->vocab_size);
    memcpy(c->eos_ids, ids, sizeof(int) * n);
    c->n_eos = n;
    return 0;
}

// ----------------------------------------------------------------------------
// the whole config

// generation_config.json beside config.json, for messages: "DIR/generation_config.json".
static void cfg_gen_path(char *buf, size_t n, const char *path) {
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    snprintf(buf, n, "%.*sgeneration_config.json", dirlen, path);
}

int config_parse(ModelConfig *c, const char *json, const char *gen_json, const char *path,
                 sl_err *err) {
    memset(c, 0, sizeof *c);
    json_t *root = NULL, *gen = NULL;
    char gpath[1024];
    cfg_gen_path(gpath, sizeof gpath, path);
    if (!(root = cfg_parse_json(json, path, err))) goto fail;
    if (gen_json && !(gen = cfg_parse_json(gen_json, gpath, err))) goto fail;

    // architecture
    json_t *archs = json_object_get(root, "architectures");
    if (!json_is_array(archs) || json_array_size(archs) == 0 ||
        !json_is_string(json_array_get(archs, 0))) {
        sl_errf(err, "%s: field 'architectures' must be a non-empty list of strings", path);
        goto fail;
    }
    const char *arch = json_string_value(json_array_get(archs, 0));
    // the family's row: the first whose match_key (if any) agrees with the config
    const ArchFamily *fam = NULL;
    for (int k = 0; !fam; k++) {
        const ArchFamily *f = arch_find(arch, k);
        if (!f) break;
        int v = f->match_default;
        if (f->match_key && cfg_bool(root, f->match_key, &v, path, err)) goto fail;
        if (!f->match_key || v == f->match_value) fam = f;
    }
    if (!fam) {
        sl_errf(err, "%s: unsupported architecture '%s' (supported: %s)", path, arch,
                arch_supported());
        goto fail;
    }
    c->family = fam;
    c->arch = (ArchKind)fam->kind;
    if (fam->refuse_key) {
        int on = 0;
        if (cfg_bool(root, fam->refuse_key, &on, path, err)) goto fail;
        if (on) {
            sl_errf(err, "%s: %s with '%s' true is not supported", path, arch, fam->refuse_key);
            goto fail;
        }
    }
    // the family's own spellings of Llama's keys (n_embd -> hidden_size, ...)
    for (int i = 0; i < 8 && fam->aliases[i][0]; i++) {
        json_t *v = cfg_get(root, fam->aliases[i][0]);
        if (v && !cfg_get(root, fam->aliases[i][1])) json_object_set(root, fam->aliases[i][1], v);
    }
    if (fam->inter_mult && !cfg_get(root, "intermediate_size")) {
        json_t *h = cfg_get(root, "hidden_size");
        if (json_is_integer(h))
            json_object_set_new(root, "intermediate_size",
                                json_integer(json_integer_value(h) * fam->inter_mult));
    }
    snprintf(c->architecture, sizeof c->architecture, "%s", arch);
    if (cfg_str(root, "", "model_type", c->model_type, sizeof c->model_type, path, err))
        goto fail;

    // shapes: required
    if (cfg_int(root, "", "vocab_size", 1, 1, &c->vocab_size, path, err) ||
        cfg_int(root, "", "hidden_size", 1, 1, &c->dim, path, err) ||
        cfg_int(root, "", "intermediate_size", 1, 1, &c->hidden_dim, path, err) ||
        cfg_int(root, "", "num_hidden_layers", 1, 1, &c->n_layers, path, err) ||
        cfg_int(root, "", "num_attention_heads", 1, 1, &c->n_heads, path, err))
        goto fail;

    // shapes with defaults
    c->n_kv_heads = c->n_heads;
    if (cfg_int(root, "", "num_key_value_heads", 0, 1, &c->n_kv_heads, path, err)) goto fail;
    if (fam->one_kv_head) c->n_kv_heads = 1; // multi-query layout (Falcon-7B)
    if (c->n_heads % c->n_kv_heads != 0) {
        sl_errf(err,
                "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                path, c->n_heads, c->n_kv_heads);
        goto fail;
    }
    c->head_dim = 0;
    if (cfg_int(root, "", "head_dim", 0, 1, &c->head_dim, path, err)) goto fail;
    if (c->head_dim == 0) {
        if (c->dim % c->n_heads != 0) {
            sl_errf(err,
                    "%s: no head_dim and hidden_size (%d) is not a multiple of "
                    "num_attention_heads (%d)",
                    path, c->dim, c->n_heads);
            goto fail;
        }
        c->head_dim = c->dim / c->n_heads;
    }
    c->max_seq_len = 2048;
    c->norm_eps = 1e-6f;
    if (cfg_int(root, "", "max_position_embeddings", 0, 1, &c->max_seq_len, path, err))
        goto fail;
    // the family's epsilon key (rms_norm_eps, layer_norm_eps, ...)
    for (int i = 0; i < 3 && fam->eps_keys[i]; i++) {
        if (!cfg_get(root, fam->eps_keys[i])) continue;
        if (cfg_num(root, "", fam->eps_keys[i], 0, &c->norm_eps, path, err)) goto fail;
        if (!(c->norm_eps > 0)) {
            sl_errf(err, "%s: %s (%g) must be positive", path, fam->eps_keys[i], c->norm_eps);
            goto fail;
        }
        break;
    }
    c->tie_embeddings = fam->tie_default;
    c->attn_bias = fam->qkv_bias;
    c->mlp_bias = fam->mlp_bias;
    c->qkv_bias = fam->qkv_bias;
    c->o_bias = fam->o_bias;
    if (cfg_bool(root, "tie_word_embeddings", &c->tie_embeddings, path, err)) goto fail;
    if (fam->bias_key) {
        int on = 0;
        if (cfg_bool(root, fam->bias_key, &on, path, err)) goto fail;
        c->attn_bias = c->qkv_bias = c->o_bias = c->mlp_bias = on;
    }
    c->head_bias = fam->head_bias;
    c->no_rotary = fam->no_rotary;
    c->alibi = fam->alibi;
    if (fam->alibi == 2) {
        // MPT: attn_config {alibi, alibi_bias_max, clip_qkv, qk_ln, softmax_scale, ...}
        json_t *ac = cfg_get(root, "attn_config");
        int on = 1, qk_ln = 0, prefix_lm = 0;
        char type[32] = "multihead_attention";
        c->alibi_bias_max = 8.0f;
        if (ac && !json_is_object(ac)) {
            sl_errf(err, "%s: field 'attn_config' must be an object, got %s", path,
                    cfg_type_name(ac));
            goto fail;
        }
        if (ac) {
            if (cfg_bool(ac, "alibi", &on, path, err) || cfg_bool(ac, "qk_ln", &qk_ln, path, err) ||
                cfg_bool(ac, "prefix_lm", &prefix_lm, path, err) ||
                cfg_num(ac, "attn_config.", "alibi_bias_max", 0, &c->alibi_bias_max, path, err) ||
                cfg_num(ac, "attn_config.", "softmax_scale", 0, &c->attn_scale, path, err) ||
                cfg_str(ac, "attn_config.", "attn_type", type, sizeof type, path, err))
                goto fail;
            if (cfg_get(ac, "clip_qkv")) {
                sl_errf(err, "%s: attn_config.clip_qkv is not supported", path);
                goto fail;
            }
        }
        if (!on || qk_ln || prefix_lm || strcmp(type, "multihead_attention") != 0) {
            sl_errf(err, "%s: MPT with attn_config alibi %s, qk_ln %s, prefix_lm %s, attn_type "
                    "'%s' is not supported (supported: alibi true, qk_ln false, prefix_lm "
                    "false, multihead_attention)", path, on ? "true" : "false",
                    qk_ln ? "true" : "false", prefix_lm ? "true" : "false", type);
            goto fail;
        }
    }
    if (fam->bias_from_config) {
        c->attn_bias = fam->qkv_bias;
        if (cfg_bool(root, "attention_bias", &c->attn_bias, path, err) ||
            (fam->bias_from_config == 1 && cfg_bool(root, "mlp_bias", &c->mlp_bias, path, err)))
            goto fail;
        c->qkv_bias = c->o_bias = c->attn_bias;
    }

    // layer layout from the family
    c->norm = fam->norm;
    c->norm_offset = fam->norm_offset;
    c->embed_scale = fam->embed_scale ? sqrtf((float)c->dim) : 0.0f;
    c->gated = fam->gated;
    c->parallel_residual = fam->parallel_residual;
    c->shared_norm = fam->shared_norm;
    if (fam->parallel_key && cfg_bool(root, fam->parallel_key, &c->parallel_residual, path, err))
        goto fail;
    c->rope_interleaved = fam->rope_interleaved;

    // activation: the family's key and accepted names
    strcpy(c->hidden_act, fam->act_default);
    for (int i = 0; i < 3 && fam->act_keys[i]; i++) {
        if (!cfg_get(root, fam->act_keys[i])) continue;
        if (cfg_str(root, "", fam->act_keys[i], c->hidden_act, sizeof c->hidden_act, path, err))
            goto fail;
        break;
    }
    {
        static const struct { const char *name; ActKind act; } acts[] = {
            {"silu", ACT_SILU}, {"gelu_pytorch_tanh", ACT_GELU_TANH},
            {"gelu_new", ACT_GELU_TANH}, {"gelu", ACT_GELU}};
        int found = 0;
        for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
            size_t n = strlen(acts[i].name);
            // the family accepts it: a whole item of its comma-separated list
            const char *p = strstr(fam->acts_ok, acts[i].name);
            while (p && !((p == fam->acts_ok || p[-1] == ' ') && (p[n] == 0 || p[n] == ',')))
                p = strstr(p + 1, acts[i].name);
            if (p && strcmp(c->hidden_act, acts[i].name) == 0) {
                c->act = acts[i].act;
                if (c->act == ACT_GELU && fam->gelu_means_tanh) c->act = ACT_GELU_TANH;
                found = 1;
            }
        }
        if (!found) {
            sl_errf(err, "%s: hidden_act '%s' is not supported for %s (supported: %s)", path,
                    c->hidden_act, arch, fam->acts_ok);
            goto fail;
        }
    }

    // sliding window (Mistral, Phi-3; Qwen2 only with use_sliding_window)
    if (fam->windowed) {
        int use = 1;
        if (c->arch == ARCH_QWEN2) {
            use = 0;
            if (cfg_bool(root, "use_sliding_window", &use, path, err)) goto fail;
            int mwl = c->n_layers;
            if (cfg_int(root, "", "max_window_layers", 0, 0, &mwl, path, err)) goto fail;
            if (use && mwl != 0 && mwl < c->n_layers) {
                sl_errf(err, "%s: use_sliding_window with max_window_layers %d < %d layers "
                        "(windows on some layers only) is not supported", path, mwl,
                        c->n_layers);
                goto fail;
            }
            if (use && mwl >= c->n_layers) use = 0; // no layer is windowed
        }
        if (use && !json_object_get(root, "sliding_window")) c->sliding_window = fam->window_default;
        if (use && cfg_int(root, "", "sliding_window", 0, 1, &c->sliding_window, path, err))
            goto fail;
    }
    // transformers 5 writes "dtype", 4 wrote "torch_dtype".
    if (cfg_str(root, "", "torch_dtype", c->dtype, sizeof c->dtype, path, err) ||
        cfg_str(root, "", "dtype", c->dtype, sizeof c->dtype, path, err))
        goto fail;

    // rope
    c->rope_type = ROPE_DEFAULT;
    c->rope_theta = 10000.0f;
    c->rope_factor = 1.0f;
    if (cfg_num(root, "", "rotary_emb_base", 0, &c->rope_theta, path, err) ||
        cfg_num(root, "", "rope_theta", 0, &c->rope_theta, path, err))
        goto fail;
    json_t *rp = cfg_get(root, "rope_parameters");
    const char *rname = "rope_parameters.";
    if (!rp) {
        rp = cfg_get(root, "rope_scaling");
        rname = "rope_scaling.";
    }
    if (rp) {
        if (!json_is_object(rp)) {
            sl_errf(err, "%s: field '%.*s' must be an object, got %s", path,
                    (int)strlen(rname) - 1, rname, cfg_type_name(rp));
            goto fail;
        }
        if (cfg_rope(c, rp, rname, path, err)) goto fail;
    }
    if (!(c->rope_theta > 0)) {
        sl_errf(err, "%s: rope_theta (%g) must be positive", path, c->rope_theta);
        goto fail;
    }
    // partial rotary: partial_rotary_factor (top level or in rope_parameters)
    // or GPT-NeoX's rotary_pct
    {
        float frac = fam->rotary_default > 0 ? fam->rotary_default : 1.0f;
        if (cfg_num(root, "", "rotary_pct", 0, &frac, path, err) ||
            cfg_num(root, "", "partial_rotary_factor", 0, &frac, path, err) ||
            (rp && cfg_num(rp, rname, "partial_rotary_factor", 0, &frac, path, err)))
            goto fail;
        if (!(frac > 0 && frac <= 1)) {
            sl_errf(err, "%s: partial_rotary_factor (%g) must be in (0, 1]", path, frac);
            goto fail;
        }
        c->rotary_dim = (int)((float)c->head_dim * frac); // as HF: int(head_dim * factor)
        // GPT-J gives it in dims
        if (cfg_int(root, "", "rotary_dim", 0, 1, &c->rotary_dim, path, err)) goto fail;
        if (c->rotary_dim > c->head_dim) {
            sl_errf(err, "%s: rotary_dim %d exceeds the head dimension %d", path, c->rotary_dim,
                    c->head_dim);
            goto fail;
        }
    }
    if (c->no_rotary) {
        c->rotary_dim = 0; // learned positions: nothing rotates
    } else if (c->rotary_dim == c->head_dim && c->head_dim % 2) { // rotary rotates pairs
        sl_errf(err, "%s: head_dim %d is odd; rotary embeddings need it even", path, c->head_dim);
        goto fail;
    } else if (c->rotary_dim % 2 || c->rotary_dim <= 0) {
        sl_errf(err, "%s: rotary dimension %d (head_dim %d) is not a positive even number", path,
                c->rotary_dim, c->head_dim);
        goto fail;
    }

    // special tokens: config.json first, then generation_config.json on top
    c->bos_id = -1;
    if (cfg_tokens(c, root, path, err)) goto fail;
    if (gen && cfg_tokens(c, gen, gpath, err)) goto fail;

    json_decref(root);
    json_decref(gen);
    return 0;
fail:
    json_decref(root);
    json_decref(gen);
    return -1;
}

int config_load(ModelConfig *c, const char *model_dir, sl_err *err) {
    int rc = -1;
    char *cpath = sl_path_join(model_dir, "config.json");
    char *gpath = sl_path_join(model_dir, "generation_config.json");
    char *text = NULL, *gtext = NULL;
    if (!(text = sl_read_file(cpath, NULL, err))) goto fail;
    if (access(gpath, F_OK) == 0 && !(gtext = sl_read_file(gpath, NULL, err))) goto fail;
    rc = config_parse(c, text, gtext, cpath, err);
fail:
    free(text);
    free(gtext);
    free(cpath);
    free(gpath);
    return rc;
}

void config_describe(const ModelConfig *c, char *buf, int n) {
    static const char *ropes[] = {"default", "linear", "llama3"};
    char eos[64] = "";
    int k = 0;
    for (int i = 0; i < c->n_eos && k < (int)sizeof eos - 12; i++)
        k += snprintf(eos + k, sizeof eos - k, "%s%d", i ? "," : "", c->eos_ids[i]);
    snprintf(buf, n,
             "%s: vocab %d, dim %d, ffn %d, %d layers, %d heads (%d kv, head_dim %d), "
             "rope %s theta %g factor %g, max_seq %d, eps %g%s, bos %d eos [%s], %s",
             c->architecture, c->vocab_size, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
             c->n_kv_heads, c->head_dim, ropes[c->rope_type], c->rope_theta, c->rope_factor,
             c->max_seq_len, c->norm_eps, c->tie_embeddings ? ", tied embeddings" : "",
             c->bos_id, eos, c->dtype[0] ? c->dtype : "dtype unknown");
    // the family's extras, only where they differ from Llama's layout
    int len = (int)strlen(buf);
    if (c->rotary_dim != c->head_dim && len < n)
        len += snprintf(buf + len, n - len, ", rotary_dim %d", c->rotary_dim);
    if (c->sliding_window && len < n)
        len += snprintf(buf + len, n - len, ", sliding window %d", c->sliding_window);
    if (c->parallel_residual && len < n)
        len += snprintf(buf + len, n - len, ", parallel residual");
    if (c->norm == NORM_LAYER && len < n)
        len += snprintf(buf + len, n - len, ", layernorm");
}
