// arch.c: the family table (see arch.h). One row per supported architecture;
// the decoder in model.c is shared by all of them.
//
// Sources for each row: the family's Hugging Face modeling and configuration
// files (tensor names, defaults) and the reference fixtures in
// tests/golden/zoo-*, which transformers produced from random checkpoints.
#include "arch.h"

#include "config.h" // ArchKind

#include <stddef.h>
#include <string.h>

// Llama-style names, shared by the families that kept them.
#define LLAMA_NAMES                                                                        \
    .embed = "model.embed_tokens", .final_norm = "model.norm", .lm_head = "lm_head",       \
    .layer_prefix = "model.layers.", .attn_norm = "input_layernorm",                       \
    .ffn_norm = "post_attention_layernorm", .q = "self_attn.q_proj", .k = "self_attn.k_proj", \
    .v = "self_attn.v_proj", .o = "self_attn.o_proj", .gate = "mlp.gate_proj",             \
    .up = "mlp.up_proj", .down = "mlp.down_proj"

#define RMS_EPS .eps_keys = {"rms_norm_eps"}, .norm = NORM_RMS
#define SILU_ACT .act_keys = {"hidden_act"}, .act_default = "silu", .acts_ok = "silu"

// GPT-2 / GPT-J config spellings
#define GPT_ALIASES                                                                        \
    {{"n_embd", "hidden_size"}, {"n_layer", "num_hidden_layers"},                          \
     {"n_head", "num_attention_heads"}, {"n_inner", "intermediate_size"},                  \
     {"n_positions", "max_position_embeddings"}}

#define FALCON_COMMON                                                                      \
    .aliases = {{"num_kv_heads", "num_key_value_heads"},                                   \
                {"ffn_hidden_size", "intermediate_size"}},                                 \
    .inter_mult = 4, .bias_key = "bias", .refuse_key = "alibi",                            \
    .eps_keys = {"layer_norm_epsilon"}, .norm = NORM_LAYER, .act_keys = {"activation"},    \
    .act_default = "gelu", .acts_ok = "gelu", .tie_default = 1,                            \
    .embed = "transformer.word_embeddings", .final_norm = "transformer.ln_f",              \
    .lm_head = "lm_head", .layer_prefix = "transformer.h.",                                \
    .qkv = "self_attention.query_key_value", .o = "self_attention.dense",                  \
    .up = "mlp.dense_h_to_4h", .down = "mlp.dense_4h_to_h"

static const ArchFamily families[] = {
    {.arch = "LlamaForCausalLM", .kind = 0, .name = "llama", RMS_EPS, SILU_ACT, .gated = 1,
     .bias_from_config = 1, LLAMA_NAMES},
    // Qwen2: q, k, v carry biases, o does not.
    {.arch = "Qwen2ForCausalLM", .kind = 1, .name = "qwen2", RMS_EPS, SILU_ACT, .gated = 1,
     .qkv_bias = 1, .windowed = 1, LLAMA_NAMES},
    // Mistral: Llama plus a sliding attention window.
    {.arch = "MistralForCausalLM", .kind = 2, .name = "mistral", RMS_EPS, SILU_ACT, .gated = 1,
     .windowed = 1, .window_default = 4096, LLAMA_NAMES},
    // Phi-3: fused qkv_proj and gate_up_proj.
    {.arch = "Phi3ForCausalLM", .kind = 3, .name = "phi3", RMS_EPS, SILU_ACT, .gated = 1, .windowed = 1,
     .qkv_layout = QKV_FUSED, .gu_layout = GU_FUSED, LLAMA_NAMES, .qkv = "self_attn.qkv_proj",
     .gate_up = "mlp.gate_up_proj"},
    // Gemma: GeGLU, RMSNorm scaling by (1 + w), embeddings times sqrt(hidden).
    {.arch = "GemmaForCausalLM", .kind = 4, .name = "gemma", RMS_EPS,
     .act_keys = {"hidden_activation", "hidden_act"}, .act_default = "gelu_pytorch_tanh",
     .acts_ok = "gelu_pytorch_tanh, gelu_new, gelu", .gelu_means_tanh = 1, .gated = 1,
     .norm_offset = 1.0f, .embed_scale = 1, .tie_default = 1, LLAMA_NAMES},
    // GPT-NeoX: LayerNorm with bias, partial rotary, parallel residual with two
    // norms, per-head fused query_key_value, plain GELU MLP, biases everywhere.
    {.arch = "GPTNeoXForCausalLM", .kind = 5, .name = "gpt_neox", .eps_keys = {"layer_norm_eps"},
     .norm = NORM_LAYER, .act_keys = {"hidden_act"}, .act_default = "gelu",
     .acts_ok = "gelu, gelu_new, gelu_pytorch_tanh", .parallel_residual = 1,
     .parallel_key = "use_parallel_residual", .qkv_bias = 1, .o_bias = 1, .mlp_bias = 1, .bias_from_config = 2,
     .rotary_default = 0.25f,
     .qkv_layout = QKV_PER_HEAD, .embed = "gpt_neox.embed_in",
     .final_norm = "gpt_neox.final_layer_norm", .lm_head = "embed_out", .lm_head_alt = "lm_head",
     .layer_prefix = "gpt_neox.layers.", .attn_norm = "input_layernorm",
     .ffn_norm = "post_attention_layernorm", .qkv = "attention.query_key_value",
     .o = "attention.dense", .up = "mlp.dense_h_to_4h", .down = "mlp.dense_4h_to_h"},
    // GPT-J: parallel attention + MLP from one LayerNorm, interleaved rotary
    // on the first rotary_dim dims, biased MLP and LM head, unbiased attention.
    {.arch = "GPTJForCausalLM", .kind = 6, .name = "gptj", .aliases = GPT_ALIASES, .inter_mult = 4,
     .eps_keys = {"layer_norm_epsilon"}, .norm = NORM_LAYER,
     .act_keys = {"activation_function"}, .act_default = "gelu_new",
     .acts_ok = "gelu_new, gelu_pytorch_tanh, gelu", .parallel_residual = 1,
     .shared_norm = 1, .mlp_bias = 1, .head_bias = 1, .rope_interleaved = 1,
     .embed = "transformer.wte", .final_norm = "transformer.ln_f", .lm_head = "lm_head",
     .layer_prefix = "transformer.h.", .attn_norm = "ln_1", .q = "attn.q_proj",
     .k = "attn.k_proj", .v = "attn.v_proj", .o = "attn.out_proj", .up = "mlp.fc_in",
     .down = "mlp.fc_out"},
    // GPT-2: learned positions, Conv1D weights stored (in, out) with q|k|v
    // fused in c_attn, biases everywhere, tied head, no rotary.
    {.arch = "GPT2LMHeadModel", .kind = 7, .name = "gpt2", .aliases = GPT_ALIASES, .inter_mult = 4,
     .eps_keys = {"layer_norm_epsilon"}, .norm = NORM_LAYER,
     .act_keys = {"activation_function"}, .act_default = "gelu_new",
     .acts_ok = "gelu_new, gelu_pytorch_tanh, gelu", .qkv_bias = 1, .o_bias = 1,
     .mlp_bias = 1, .tie_default = 1, .no_rotary = 1, .transposed = 1,
     .qkv_layout = QKV_FUSED, .embed = "transformer.wte", .pos_embed = "transformer.wpe",
     .final_norm = "transformer.ln_f", .lm_head = "lm_head", .layer_prefix = "transformer.h.",
     .opt_prefix = "transformer.", .attn_norm = "ln_1", .ffn_norm = "ln_2",
     .qkv = "attn.c_attn", .o = "attn.c_proj", .up = "mlp.c_fc", .down = "mlp.c_proj"},
    // MPT: ALiBi (MPT's slopes, attn_config.alibi_bias_max), fused Wqkv,
    // no linear biases, plain GELU MLP of 4 x d_model, tied head.
    {.arch = "MptForCausalLM", .kind = 9, .name = "mpt",
     .aliases = {{"d_model", "hidden_size"}, {"n_layers", "num_hidden_layers"},
                 {"n_heads", "num_attention_heads"}, {"max_seq_len", "max_position_embeddings"}},
     .inter_mult = 4, .eps_keys = {"layer_norm_epsilon"}, .norm = NORM_LAYER,
     .norm_bias_optional = 1, .act_default = "gelu", .acts_ok = "gelu", .tie_default = 1,
     .no_rotary = 1, .alibi = 2, .qkv_layout = QKV_FUSED, .embed = "transformer.wte",
     .final_norm = "transformer.norm_f", .lm_head = "lm_head",
     .layer_prefix = "transformer.blocks.", .attn_norm = "norm_1", .ffn_norm = "norm_2",
     .qkv = "attn.Wqkv", .o = "attn.out_proj", .up = "ffn.up_proj", .down = "ffn.down_proj"},
    // BLOOM: ALiBi (BLOOM's slopes), LayerNorm after the embedding, per-head
    // fused query_key_value, tanh GELU, biases everywhere, tied head.
    {.arch = "BloomForCausalLM", .kind = 10, .name = "bloom",
     .aliases = {{"n_layer", "num_hidden_layers"}, {"n_head", "num_attention_heads"},
                 {"seq_length", "max_position_embeddings"}},
     .inter_mult = 4, .refuse_key = "apply_residual_connection_post_layernorm",
     .eps_keys = {"layer_norm_epsilon"}, .norm = NORM_LAYER, .act_default = "gelu_pytorch_tanh",
     .acts_ok = "gelu_pytorch_tanh", .tie_default = 1, .no_rotary = 1, .alibi = 1,
     .qkv_bias = 1, .o_bias = 1, .mlp_bias = 1, .qkv_layout = QKV_PER_HEAD,
     .embed = "transformer.word_embeddings", .embed_norm = "transformer.word_embeddings_layernorm",
     .final_norm = "transformer.ln_f", .lm_head = "lm_head", .layer_prefix = "transformer.h.",
     .opt_prefix = "transformer.", .attn_norm = "input_layernorm",
     .ffn_norm = "post_attention_layernorm", .qkv = "self_attention.query_key_value",
     .o = "self_attention.dense", .up = "mlp.dense_h_to_4h", .down = "mlp.dense_4h_to_h"},
    // Falcon, three layouts of query_key_value chosen by the config:
    // new_decoder_architecture (40B/180B): grouped kv, ln_attn + ln_mlp, parallel;
    // multi_query (7B): one kv head, parallel from one norm (or sequential);
    // neither (RW-style): per-head q k v.
    {.arch = "FalconForCausalLM", .kind = 8, .name = "falcon-new", .match_key = "new_decoder_architecture",
     .match_value = 1, FALCON_COMMON, .parallel_residual = 1, .qkv_layout = QKV_GROUPED,
     .attn_norm = "ln_attn", .ffn_norm = "ln_mlp"},
    {.arch = "FalconForCausalLM", .kind = 8, .name = "falcon-mq", .match_key = "multi_query",
     .match_default = 1, .match_value = 1, FALCON_COMMON, .parallel_residual = 1,
     .parallel_key = "parallel_attn", .shared_norm = 1, .one_kv_head = 1,
     .qkv_layout = QKV_FUSED, .attn_norm = "input_layernorm",
     .ffn_norm = "post_attention_layernorm"},
    {.arch = "FalconForCausalLM", .kind = 8, .name = "falcon", FALCON_COMMON, .parallel_residual = 1,
     .parallel_key = "parallel_attn", .shared_norm = 1, .qkv_layout = QKV_PER_HEAD,
     .attn_norm = "input_layernorm", .ffn_norm = "post_attention_layernorm"},
};

#define N_FAMILIES (sizeof families / sizeof families[0])

const ArchFamily *arch_find(const char *arch, int k) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i].arch, arch) == 0 && k-- == 0) return &families[i];
    return NULL;
}

const char *arch_supported(void) {
    static char list[512];
    if (!list[0]) {
        size_t k = 0;
        for (size_t i = 0; i < N_FAMILIES; i++) {
            size_t n = strlen(families[i].arch);
            if (i && strcmp(families[i - 1].arch, families[i].arch) == 0) continue;
            if (k + n + 3 >= sizeof list) break;
            if (i) {
                memcpy(list + k, ", ", 2);
                k += 2;
            }
            memcpy(list + k, families[i].arch, n);
            k += n;
        }
        list[k] = 0;
    }
    return list;
}
