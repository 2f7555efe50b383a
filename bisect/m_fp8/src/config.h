// config.h: the model configuration, read from a Hugging Face model directory
// (config.json + optional generation_config.json).
//
// Both config styles are accepted: top-level `rope_theta` / `rope_scaling`
// (transformers 4) and `rope_parameters` (transformers 5). Unknown
// architectures and unsupported rope types are errors naming config.json and
// the field.
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include "common.h"

#define CFG_MAX_EOS 16

typedef enum {
    ROPE_DEFAULT = 0,
    ROPE_LINEAR,  // positions divided by factor
    ROPE_LLAMA3,  // llama3 frequency-dependent scaling
} RopeType;

typedef enum {
    ARCH_LLAMA = 0, // LlamaForCausalLM
} ArchKind;

typedef struct {
    char architecture[64]; // e.g. "LlamaForCausalLM"
    char model_type[32];   // e.g. "llama"
    ArchKind arch;

    int vocab_size;
    int dim;          // hidden_size
    int hidden_dim;   // intermediate_size
    int n_layers;     // num_hidden_layers
    int n_heads;      // num_attention_heads
    int n_kv_heads;   // num_key_value_heads (defaults to n_heads)
    int head_dim;     // head_dim (defaults to dim / n_heads)
    int max_seq_len;  // max_position_embeddings
    float norm_eps;   // rms_norm_eps
    int tie_embeddings; // tie_word_embeddings (default false)
    int attn_bias;    // attention_bias
    int mlp_bias;     // mlp_bias
    char hidden_act[16]; // "silu"

    // rotary embedding
    RopeType rope_type;
    float rope_theta;
    float rope_factor;            // linear / llama3
    float rope_low_freq_factor;   // llama3
    float rope_high_freq_factor;  // llama3
    int rope_orig_max_pos;        // llama3 original_max_position_embeddings

    // special tokens: generation_config.json wins over config.json
    int bos_id;  // -1 if unknown
    int n_eos;
    int eos_ids[CFG_MAX_EOS];

    char dtype[16]; // torch_dtype / dtype as written ("bfloat16"), may be empty
} ModelConfig;

// Reads DIR/config.json and, when present, DIR/generation_config.json.
// Returns 0, or -1 with err naming the file and field.
int config_load(ModelConfig *c, const char *model_dir, sl_err *err);

// Same from JSON text already in memory (path is only used in messages);
// gen_json may be NULL.
int config_parse(ModelConfig *c, const char *json, const char *gen_json,
                 const char *path, sl_err *err);

// One-line summary for the log.
void config_describe(const ModelConfig *c, char *buf, int n);

#endif
