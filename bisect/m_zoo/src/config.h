// config.h: the model configuration, read from a Hugging Face model directory
// (config.json + optional generation_config.json).
//
// Both config styles are accepted: top-level `rope_theta` / `rope_scaling`
// (transformers 4) and `rope_parameters` (transformers 5). Unknown
// architectures and unsupported rope types are errors naming config.json and
// the field.
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include "arch.h"
#include "common.h"

#define CFG_MAX_EOS 16

typedef enum {
    ROPE_DEFAULT = 0,
    ROPE_LINEAR,  // positions divided by factor
    ROPE_LLAMA3,  // llama3 frequency-dependent scaling
} RopeType;

// The family (ArchFamily.kind in arch.c).
typedef enum {
    ARCH_LLAMA = 0, // LlamaForCausalLM
    ARCH_QWEN2,     // Qwen2ForCausalLM
    ARCH_MISTRAL,   // MistralForCausalLM
    ARCH_PHI3,      // Phi3ForCausalLM
    ARCH_GEMMA,     // GemmaForCausalLM
    ARCH_GPT_NEOX,  // GPTNeoXForCausalLM
    ARCH_GPTJ,      // GPTJForCausalLM
    ARCH_GPT2,      // GPT2LMHeadModel
    ARCH_FALCON,    // FalconForCausalLM (7B multi-query and 40B/180B layouts)
    ARCH_MPT,       // MptForCausalLM
    ARCH_BLOOM,     // BloomForCausalLM
} ArchKind;

typedef struct {
    char architecture[64]; // e.g. "LlamaForCausalLM"
    char model_type[32];   // e.g. "llama"
    ArchKind arch;
    const ArchFamily *family; // its row in arch.c (static)

    int vocab_size;
    int dim;          // hidden_size
    int hidden_dim;   // intermediate_size
    int n_layers;     // num_hidden_layers
    int n_heads;      // num_attention_heads
    int n_kv_heads;   // num_key_value_heads (defaults to n_heads)
    int head_dim;     // head_dim (defaults to dim / n_heads)
    int max_seq_len;  // max_position_embeddings
    float norm_eps;   // rms_norm_eps (layer_norm_eps, ...: the family's key)
    int tie_embeddings; // tie_word_embeddings (default false)
    int attn_bias;    // attention_bias (Llama: q, k, v and o)
    int mlp_bias;     // mlp_bias, or the family's fixed choice
    char hidden_act[24]; // "silu", "gelu_pytorch_tanh", ...

    // the layer layout, resolved from the family and the config
    NormKind norm;      // RMSNorm or LayerNorm (with bias)
    float norm_offset;  // added to norm weights at load (Gemma's 1 + w)
    float embed_scale;  // embeddings multiplied by this (Gemma: sqrt(hidden)); 0 = none
    ActKind act;        // MLP activation
    int gated;          // gate * act(up) MLP (SwiGLU, GeGLU) vs act(up)
    int parallel_residual; // x + attn(n1(x)) + mlp(n2(x))
    int shared_norm;    // n2 = n1 in the parallel layout
    int qkv_bias, o_bias; // biases on the q/k/v and o projections
    int rotary_dim;     // dims of each head that rotate (head_dim unless partial)
    int rope_interleaved; // GPT-J pairs (2i, 2i+1) instead of (i, i + rotary_dim/2)
    int sliding_window; // attend to at most this many latest positions; 0 = all
    int no_rotary;      // no rotary embedding (learned positions: GPT-2)
    int head_bias;      // the LM head has a bias (GPT-J)
    int alibi;          // ALiBi biases: 0 none, 1 BLOOM's slopes, 2 MPT's
    float alibi_bias_max; // MPT attn_config.alibi_bias_max (8)
    float attn_scale;   // softmax scale; 0: 1/sqrt(head_dim) (MPT attn_config.softmax_scale)

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
