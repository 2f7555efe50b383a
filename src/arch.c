// arch.c: the family table (see arch.h). One row per supported architecture;
// the decoder in model.c is shared by all of them.
//
// Sources for each row: the family's Hugging Face modeling and configuration
// files (tensor names, defaults) and the reference fixtures in
// tests/golden/zoo-*, which transformers produced from random checkpoints.
#include "arch.h"

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

static const ArchFamily families[] = {
    {.arch = "LlamaForCausalLM", .name = "llama", RMS_EPS, SILU_ACT, .gated = 1,
     .bias_from_config = 1, LLAMA_NAMES},
    // Qwen2: q, k, v carry biases, o does not.
    {.arch = "Qwen2ForCausalLM", .name = "qwen2", RMS_EPS, SILU_ACT, .gated = 1,
     .qkv_bias = 1, .windowed = 1, LLAMA_NAMES},
    // Mistral: Llama plus a sliding attention window.
    {.arch = "MistralForCausalLM", .name = "mistral", RMS_EPS, SILU_ACT, .gated = 1,
     .windowed = 1, .window_default = 4096, LLAMA_NAMES},
    // Phi-3: fused qkv_proj and gate_up_proj.
    {.arch = "Phi3ForCausalLM", .name = "phi3", RMS_EPS, SILU_ACT, .gated = 1, .windowed = 1,
     .qkv_layout = QKV_FUSED, .gu_layout = GU_FUSED, LLAMA_NAMES, .qkv = "self_attn.qkv_proj",
     .gate_up = "mlp.gate_up_proj"},
    // Gemma: GeGLU, RMSNorm scaling by (1 + w), embeddings times sqrt(hidden).
    {.arch = "GemmaForCausalLM", .name = "gemma", RMS_EPS,
     .act_keys = {"hidden_activation", "hidden_act"}, .act_default = "gelu_pytorch_tanh",
     .acts_ok = "gelu_pytorch_tanh, gelu_new, gelu", .gelu_means_tanh = 1, .gated = 1,
     .norm_offset = 1.0f, .embed_scale = 1, .tie_default = 1, LLAMA_NAMES},
    // GPT-NeoX: LayerNorm with bias, partial rotary, parallel residual with two
    // norms, per-head fused query_key_value, plain GELU MLP, biases everywhere.
    {.arch = "GPTNeoXForCausalLM", .name = "gpt_neox", .eps_keys = {"layer_norm_eps"},
     .norm = NORM_LAYER, .act_keys = {"hidden_act"}, .act_default = "gelu",
     .acts_ok = "gelu, gelu_new, gelu_pytorch_tanh", .parallel_residual = 1,
     .parallel_key = 1, .qkv_bias = 1, .o_bias = 1, .mlp_bias = 1, .bias_from_config = 2,
     .rotary_default = 0.25f,
     .qkv_layout = QKV_PER_HEAD, .embed = "gpt_neox.embed_in",
     .final_norm = "gpt_neox.final_layer_norm", .lm_head = "embed_out", .lm_head_alt = "lm_head",
     .layer_prefix = "gpt_neox.layers.", .attn_norm = "input_layernorm",
     .ffn_norm = "post_attention_layernorm", .qkv = "attention.query_key_value",
     .o = "attention.dense", .up = "mlp.dense_h_to_4h", .down = "mlp.dense_4h_to_h"},
};

#define N_FAMILIES (sizeof families / sizeof families[0])

const ArchFamily *arch_find(const char *arch) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i].arch, arch) == 0) return &families[i];
    return NULL;
}

const char *arch_supported(void) {
    static char list[512];
    if (!list[0]) {
        size_t k = 0;
        for (size_t i = 0; i < N_FAMILIES; i++) {
            size_t n = strlen(families[i].arch);
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
