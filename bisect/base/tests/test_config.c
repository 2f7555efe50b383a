// test_config.c: the model-config reader (src/config.c).
//
// The bundled tests/models/tiny-code-llama config (transformers 5 style,
// rope_parameters) and a transformers 4 style Llama-3.1 config (rope_theta +
// rope_scaling llama3, a list of eos ids) are read field by field; defaults,
// generation_config.json overrides, and every refusal (bad JSON, unsupported
// architecture / rope / activation, wrong types, inconsistent heads, missing
// fields) are checked, the refusals on the -1 and on the message text.
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// helpers

// Llama-3.1-8B's config.json as transformers 4.4x wrote it (abridged:
// tie_word_embeddings, head_dim and max_position_embeddings-related fields
// left out so their defaults are exercised).
static const char *k_llama31 =
    "{\n"
    "  \"architectures\": [\"LlamaForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 128000,\n"
    "  \"eos_token_id\": [128001, 128008, 128009],\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 4096,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 14336,\n"
    "  \"max_position_embeddings\": 131072,\n"
    "  \"mlp_bias\": false,\n"
    "  \"model_type\": \"llama\",\n"
    "  \"num_attention_heads\": 32,\n"
    "  \"num_hidden_layers\": 32,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"pretraining_tp\": 1,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_scaling\": {\n"
    "    \"factor\": 8.0,\n"
    "    \"low_freq_factor\": 1.0,\n"
    "    \"high_freq_factor\": 4.0,\n"
    "    \"original_max_position_embeddings\": 8192,\n"
    "    \"rope_type\": \"llama3\"\n"
    "  },\n"
    "  \"rope_theta\": 500000.0,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.43.0.dev0\",\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 128256\n"
    "}\n";

// A small valid config to mutate in the error tests.
static const char *k_small =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\","
    " \"vocab_size\": 1000, \"hidden_size\": 256, \"intermediate_size\": 688,"
    " \"num_hidden_layers\": 3, \"num_attention_heads\": 8, \"num_key_value_heads\": 4,"
    " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"bos_token_id\": 1,"
    " \"eos_token_id\": 2}";

// k_small with `key` set to the JSON value `val` (NULL deletes the key);
// `sub` (when not NULL) names an object field of k_small to edit instead of the
// top level. The returned text is the caller's to free.
static char *mutate(const char *base, const char *sub, const char *key, const char *val) {
    json_error_t je;
    json_t *root = json_loads(base, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root);
    json_t *obj = root;
    if (sub) {
        obj = json_object_get(root, sub);
        if (!json_is_object(obj)) {
            obj = json_object();
            json_object_set_new(root, sub, obj);
        }
    }
    if (val) {
        json_t *v = json_loads(val, JSON_DECODE_ANY, &je);
        CU_ASSERT_PTR_NOT_NULL_FATAL(v);
        json_object_set_new(obj, key, v);
    } else {
        json_object_del(obj, key);
    }
    char *s = json_dumps(root, 0);
    json_decref(root);
    return s;
}

// rc must be -1 and err must contain every non-NULL needle.
static void check_err(int rc, const sl_err *e, const char *n1, const char *n2) {
    CU_ASSERT_EQUAL(rc, -1);
    const char *needles[2] = {n1, n2};
    for (int i = 0; i < 2; i++) {
        if (!needles[i]) continue;
        int ok = strstr(e->msg, needles[i]) != NULL;
        if (!ok) fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", e->msg, needles[i]);
        CU_ASSERT(ok);
    }
}

// Parses k_small mutated by (sub, key, val) and expects failure with the needles.
static void expect_bad(const char *sub, const char *key, const char *val, const char *n1,
                       const char *n2) {
    char *text = mutate(k_small, sub, key, val);
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_parse(&c, text, NULL, "m/config.json", &e);
    check_err(rc, &e, "m/config.json", n1);
    if (n2) check_err(rc, &e, n2, NULL);
    free(text);
}

static const char *mkdir_tmp(const char *name) {
    static char slots[8][1024];
    static int k;
    char *p = slots[k++ & 7];
    snprintf(p, 1024, "%s/%s", tu_tmpdir(), name);
    mkdir(p, 0755);
    return p;
}

static void write_in(const char *dir, const char *name, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    CU_ASSERT_FATAL(tu_write_file(p, text, strlen(text)) == 0);
}

// ----------------------------------------------------------------------------
// valid configs

static void test_tiny_code_llama(void) {
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_load(&c, tu_path("tests/models/tiny-code-llama"), &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(c.architecture, "LlamaForCausalLM");
    CU_ASSERT_STRING_EQUAL(c.model_type, "llama");
    CU_ASSERT_EQUAL(c.arch, ARCH_LLAMA);
    CU_ASSERT_EQUAL(c.vocab_size, 8192);
    CU_ASSERT_EQUAL(c.dim, 384);
    CU_ASSERT_EQUAL(c.hidden_dim, 1024);
    CU_ASSERT_EQUAL(c.n_layers, 8);
    CU_ASSERT_EQUAL(c.n_heads, 6);
    CU_ASSERT_EQUAL(c.n_kv_heads, 2);
    CU_ASSERT_EQUAL(c.head_dim, 64);
    CU_ASSERT_EQUAL(c.max_seq_len, 1024);
    CU_ASSERT_EQUAL(c.norm_eps, 1e-5f);
    CU_ASSERT_EQUAL(c.tie_embeddings, 1);
    CU_ASSERT_EQUAL(c.attn_bias, 0);
    CU_ASSERT_EQUAL(c.mlp_bias, 0);
    CU_ASSERT_STRING_EQUAL(c.hidden_act, "silu");
    CU_ASSERT_EQUAL(c.rope_type, ROPE_DEFAULT);
    CU_ASSERT_EQUAL(c.rope_theta, 10000.0f);
    CU_ASSERT_EQUAL(c.bos_id, 0);
    CU_ASSERT_EQUAL(c.n_eos, 1);
    CU_ASSERT_EQUAL(c.eos_ids[0], 0);
    CU_ASSERT_STRING_EQUAL(c.dtype, "bfloat16");

    char line[512];
    config_describe(&c, line, sizeof line);
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "LlamaForCausalLM"));
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "6 heads (2 kv, head_dim 64)"));
}

static void test_llama31_tf4(void) {
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_parse(&c, k_llama31, NULL, "llama31/config.json", &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(c.vocab_size, 128256);
    CU_ASSERT_EQUAL(c.dim, 4096);
    CU_ASSERT_EQUAL(c.hidden_dim, 14336);
    CU_ASSERT_EQUAL(c.n_layers, 32);
    CU_ASSERT_EQUAL(c.n_heads, 32);
    CU_ASSERT_EQUAL(c.n_kv_heads, 8);
    CU_ASSERT_EQUAL(c.head_dim, 128); // 4096 / 32: no head_dim field
    CU_ASSERT_EQUAL(c.max_seq_len, 131072);
    CU_ASSERT_EQUAL(c.tie_embeddings, 0); // absent: the Llama default
    CU_ASSERT_EQUAL(c.rope_type, ROPE_LLAMA3);
    CU_ASSERT_EQUAL(c.rope_theta, 500000.0f);
    CU_ASSERT_EQUAL(c.rope_factor, 8.0f);
    CU_ASSERT_EQUAL(c.rope_low_freq_factor, 1.0f);
    CU_ASSERT_EQUAL(c.rope_high_freq_factor, 4.0f);
    CU_ASSERT_EQUAL(c.rope_orig_max_pos, 8192);
    CU_ASSERT_EQUAL(c.bos_id, 128000);
    CU_ASSERT_EQUAL_FATAL(c.n_eos, 3);
    CU_ASSERT_EQUAL(c.eos_ids[0], 128001);
    CU_ASSERT_EQUAL(c.eos_ids[1], 128008);
    CU_ASSERT_EQUAL(c.eos_ids[2], 128009);
    CU_ASSERT_STRING_EQUAL(c.dtype, "bfloat16");
}

// The same Llama-3.1 rope in transformers 5 spelling gives the same config.
static void test_llama31_tf5(void) {
    char *t = mutate(k_llama31, NULL, "rope_scaling", NULL);
    char *t2 = mutate(t, NULL, "rope_theta", NULL);
    char *t3 = mutate(t2, NULL, "rope_parameters",
                      "{\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", \"factor\": 8,"
                      " \"low_freq_factor\": 1, \"high_freq_factor\": 4,"
                      " \"original_max_position_embeddings\": 8192}");
    ModelConfig a, b;
    sl_err e = {{0}};
    CU_ASSERT_EQUAL_FATAL(config_parse(&a, k_llama31, NULL, "a/config.json", &e), 0);
    int rc = config_parse(&b, t3, NULL, "b/config.json", &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(b.rope_type, ROPE_LLAMA3);
    CU_ASSERT_EQUAL(memcmp(&a, &b, sizeof a), 0); // both were memset by config_parse
    free(t);
    free(t2);
    free(t3);
}

// Defaults: no num_key_value_heads, head_dim null, no eps/max_pos/flags/act.
static void test_defaults(void) {
    const char *text =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 500,"
        " \"hidden_size\": 192, \"intermediate_size\": 512, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 3, \"head_dim\": null}";
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_parse(&c, text, NULL, "d/config.json", &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(c.n_kv_heads, 3);
    CU_ASSERT_EQUAL(c.head_dim, 64);
    CU_ASSERT_EQUAL(c.max_seq_len, 2048);
    CU_ASSERT_EQUAL(c.norm_eps, 1e-6f);
    CU_ASSERT_EQUAL(c.tie_embeddings, 0);
    CU_ASSERT_EQUAL(c.attn_bias, 0);
    CU_ASSERT_EQUAL(c.mlp_bias, 0);
    CU_ASSERT_STRING_EQUAL(c.hidden_act, "silu");
    CU_ASSERT_EQUAL(c.rope_type, ROPE_DEFAULT);
    CU_ASSERT_EQUAL(c.rope_theta, 10000.0f);
    CU_ASSERT_EQUAL(c.bos_id, -1);
    CU_ASSERT_EQUAL(c.n_eos, 0);
    CU_ASSERT_STRING_EQUAL(c.dtype, "");
    CU_ASSERT_STRING_EQUAL(c.model_type, "");

    // explicit head_dim that is not dim / n_heads (Gemma-like layouts)
    char *t = mutate(text, NULL, "head_dim", "128");
    CU_ASSERT_EQUAL_FATAL(config_parse(&c, t, NULL, "d/config.json", &e), 0);
    CU_ASSERT_EQUAL(c.head_dim, 128);
    free(t);
    // biases on, and eps given as an integer-valued real
    t = mutate(text, NULL, "attention_bias", "true");
    char *t2 = mutate(t, NULL, "mlp_bias", "true");
    CU_ASSERT_EQUAL_FATAL(config_parse(&c, t2, NULL, "d/config.json", &e), 0);
    CU_ASSERT_EQUAL(c.attn_bias, 1);
    CU_ASSERT_EQUAL(c.mlp_bias, 1);
    free(t);
    free(t2);
}

static void test_rope_linear(void) {
    // transformers 4 with the old "type" key
    char *t = mutate(k_small, NULL, "rope_scaling", "{\"type\": \"linear\", \"factor\": 4}");
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_parse(&c, t, NULL, "m/config.json", &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(c.rope_type, ROPE_LINEAR);
    CU_ASSERT_EQUAL(c.rope_factor, 4.0f);
    CU_ASSERT_EQUAL(c.rope_theta, 10000.0f);
    free(t);
    // rope_scaling {"rope_type": "default"} is the same as null
    t = mutate(k_small, NULL, "rope_scaling", "{\"rope_type\": \"default\"}");
    CU_ASSERT_EQUAL_FATAL(config_parse(&c, t, NULL, "m/config.json", &e), 0);
    CU_ASSERT_EQUAL(c.rope_type, ROPE_DEFAULT);
    free(t);
}

// generation_config.json overrides eos (and bos when it has one).
static void test_generation_config(void) {
    const char *dir = mkdir_tmp("gen");
    write_in(dir, "config.json", k_small); // bos 1, eos 2
    write_in(dir, "generation_config.json",
             "{\"_from_model_config\": false, \"eos_token_id\": [7, 9], \"do_sample\": true}");
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_load(&c, dir, &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(c.bos_id, 1); // not in generation_config: config.json's
    CU_ASSERT_EQUAL_FATAL(c.n_eos, 2);
    CU_ASSERT_EQUAL(c.eos_ids[0], 7);
    CU_ASSERT_EQUAL(c.eos_ids[1], 9);

    write_in(dir, "generation_config.json", "{\"bos_token_id\": 5, \"eos_token_id\": 6}");
    CU_ASSERT_EQUAL_FATAL(config_load(&c, dir, &e), 0);
    CU_ASSERT_EQUAL(c.bos_id, 5);
    CU_ASSERT_EQUAL(c.n_eos, 1);
    CU_ASSERT_EQUAL(c.eos_ids[0], 6);

    // null in generation_config counts as absent
    write_in(dir, "generation_config.json", "{\"bos_token_id\": null, \"eos_token_id\": null}");
    CU_ASSERT_EQUAL_FATAL(config_load(&c, dir, &e), 0);
    CU_ASSERT_EQUAL(c.bos_id, 1);
    CU_ASSERT_EQUAL(c.n_eos, 1);
    CU_ASSERT_EQUAL(c.eos_ids[0], 2);

    // broken generation_config.json: error names it
    write_in(dir, "generation_config.json", "{\"eos_token_id\": [7, 9,]}");
    rc = config_load(&c, dir, &e);
    check_err(rc, &e, "generation_config.json", "invalid JSON");
    write_in(dir, "generation_config.json", "{\"eos_token_id\": \"</s>\"}");
    rc = config_load(&c, dir, &e);
    check_err(rc, &e, "generation_config.json", "eos_token_id");

    // config_parse with generation text in memory
    rc = config_parse(&c, k_small, "{\"eos_token_id\": [3, 4, 5]}", "x/config.json", &e);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(c.n_eos, 3);
    CU_ASSERT_EQUAL(c.eos_ids[2], 5);
}

// ----------------------------------------------------------------------------
// refusals

static void test_missing_files(void) {
    ModelConfig c;
    sl_err e = {{0}};
    const char *dir = mkdir_tmp("empty");
    int rc = config_load(&c, dir, &e);
    check_err(rc, &e, dir, "config.json");
    rc = config_load(&c, "/nonexistent/model", &e);
    check_err(rc, &e, "/nonexistent/model/config.json", NULL);
}

static void test_bad_json(void) {
    ModelConfig c;
    sl_err e = {{0}};
    const char *text = "{\n  \"vocab_size\": 10,\n  \"hidden_size\": 12\n  \"x\": 1\n}\n";
    int rc = config_parse(&c, text, NULL, "j/config.json", &e);
    check_err(rc, &e, "j/config.json", "line 4"); // jansson: missing comma found on line 4
    rc = config_parse(&c, "[1, 2]", NULL, "j/config.json", &e);
    check_err(rc, &e, "j/config.json", "not a JSON object");
    rc = config_parse(&c, "", NULL, "j/config.json", &e);
    check_err(rc, &e, "j/config.json", "invalid JSON");

    // via config_load: the message names the file in the directory
    const char *dir = mkdir_tmp("badjson");
    write_in(dir, "config.json", text);
    rc = config_load(&c, dir, &e);
    check_err(rc, &e, "badjson/config.json", "line 4");
}

static void test_unsupported(void) {
    ModelConfig c;
    sl_err e = {{0}};
    char *t = mutate(k_small, NULL, "architectures", "[\"GPT2LMHeadModel\"]");
    int rc = config_parse(&c, t, NULL, "m/config.json", &e);
    check_err(rc, &e,
              "m/config.json: unsupported architecture 'GPT2LMHeadModel' (supported: "
              "LlamaForCausalLM)",
              NULL);
    free(t);

    expect_bad(NULL, "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4}",
               "m/config.json: rope_scaling.rope_type 'yarn' is not supported (supported: "
               "default, linear, llama3)",
               NULL);
    expect_bad(NULL, "rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2}",
               "'dynamic' is not supported", NULL);
    expect_bad(NULL, "rope_parameters", "{\"rope_type\": \"longrope\", \"rope_theta\": 1e4}",
               "rope_parameters.rope_type 'longrope' is not supported", NULL);
    expect_bad(NULL, "hidden_act", "\"gelu\"", "hidden_act 'gelu' is not supported", NULL);
    expect_bad(NULL, "architectures", "[]", "architectures", NULL);
    expect_bad(NULL, "architectures", NULL, "architectures", NULL);
}

static void test_wrong_types(void) {
    expect_bad(NULL, "hidden_size", "\"256\"", "'hidden_size' must be an integer",
               "a string");
    expect_bad(NULL, "num_hidden_layers", "3.0", "'num_hidden_layers' must be an integer",
               NULL);
    expect_bad(NULL, "num_key_value_heads", "[4]", "num_key_value_heads", NULL);
    expect_bad(NULL, "rms_norm_eps", "\"1e-5\"", "'rms_norm_eps' must be a number", NULL);
    expect_bad(NULL, "tie_word_embeddings", "1", "tie_word_embeddings", NULL);
    expect_bad(NULL, "rope_theta", "\"10000\"", "rope_theta", NULL);
    expect_bad(NULL, "rope_scaling", "\"llama3\"", "rope_scaling", "an object");
    expect_bad(NULL, "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": \"8\"}",
               "rope_scaling.factor", "must be a number");
    expect_bad(NULL, "model_type", "7", "model_type", NULL);
    expect_bad(NULL, "eos_token_id", "\"</s>\"", "eos_token_id", NULL);
    expect_bad(NULL, "eos_token_id", "[2, \"x\"]", "eos_token_id[1]", NULL);
    expect_bad(NULL, "bos_token_id", "true", "bos_token_id", NULL);
}

static void test_bad_values(void) {
    expect_bad(NULL, "num_key_value_heads", "3",
               "num_attention_heads (8) is not a multiple of num_key_value_heads (3)", NULL);
    expect_bad(NULL, "vocab_size", NULL, "missing required field 'vocab_size'", NULL);
    expect_bad(NULL, "intermediate_size", NULL, "intermediate_size", NULL);
    expect_bad(NULL, "hidden_size", "null", "missing required field 'hidden_size'", NULL);
    expect_bad(NULL, "num_attention_heads", "0", "num_attention_heads", "positive");
    expect_bad(NULL, "num_hidden_layers", "-1", "num_hidden_layers", NULL);
    expect_bad(NULL, "vocab_size", "4294967296", "vocab_size", "out of range");
    expect_bad(NULL, "hidden_size", "250", "hidden_size (250) is not a multiple", NULL);
    expect_bad(NULL, "rms_norm_eps", "0", "rms_norm_eps", NULL);
    expect_bad(NULL, "eos_token_id", "1000", "eos_token_id 1000 is outside the vocabulary",
               NULL);
    expect_bad(NULL, "bos_token_id", "5000", "bos_token_id 5000", NULL);
    expect_bad(NULL, "eos_token_id", "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]",
               "eos_token_id has 17 entries", NULL);
    // llama3 rope needs all four numbers, with high > low
    expect_bad("rope_scaling", "rope_type", "\"llama3\"", "rope_scaling.factor", NULL);
    char *t = mutate(k_llama31, "rope_scaling", "original_max_position_embeddings", NULL);
    ModelConfig c;
    sl_err e = {{0}};
    int rc = config_parse(&c, t, NULL, "m/config.json", &e);
    check_err(rc, &e, "rope_scaling.original_max_position_embeddings", NULL);
    free(t);
    t = mutate(k_llama31, "rope_scaling", "high_freq_factor", "1.0");
    rc = config_parse(&c, t, NULL, "m/config.json", &e);
    check_err(rc, &e, "high_freq_factor", "low_freq_factor");
    free(t);
    expect_bad(NULL, "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 0}",
               "rope_scaling.factor (0) must be positive", NULL);
}

int main(void) {
    static const tu_test good[] = {
        {"tiny-code-llama (transformers 5)", test_tiny_code_llama},
        {"Llama-3.1 (transformers 4, llama3 rope)", test_llama31_tf4},
        {"Llama-3.1 in rope_parameters spelling", test_llama31_tf5},
        {"defaults", test_defaults},
        {"linear rope, type key", test_rope_linear},
        {"generation_config.json overrides", test_generation_config},
        {NULL, NULL},
    };
    static const tu_test bad[] = {
        {"missing config.json", test_missing_files},
        {"invalid JSON", test_bad_json},
        {"unsupported features", test_unsupported},
        {"wrong JSON types", test_wrong_types},
        {"inconsistent or missing values", test_bad_values},
        {NULL, NULL},
    };
    tu_suite("config", good);
    tu_suite("config-malformed", bad);
    return tu_main();
}
