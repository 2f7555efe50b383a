// arch.h: the model zoo: every supported decoder family described as data.
//
// sluice has one decoder (model.c). What differs between Llama, Qwen2,
// Mistral, Phi-3, Gemma, GPT-NeoX, ... is captured by one ArchFamily row in
// arch.c: the norm (RMSNorm or LayerNorm, its epsilon key, Gemma's 1 + w),
// the position encoding (rotary, full or partial, rotate-half or
// interleaved), the residual layout (sequential or parallel, one or two
// norms), the MLP activation (gated or not), which projections carry biases,
// tied embeddings, and the checkpoint's tensor names and fused layouts. The
// loader and the forward pass read only these fields.
//
// Adding a family is one row in arch.c plus fixtures (tests/golden/zoo-*).
#ifndef SLUICE_ARCH_H
#define SLUICE_ARCH_H

typedef enum {
    NORM_RMS = 0, // x / sqrt(mean(x^2) + eps) * w
    NORM_LAYER,   // (x - mean) / sqrt(var + eps) * w + b
} NormKind;

typedef enum {
    ACT_SILU = 0,  // silu (SwiGLU when gated)
    ACT_GELU_TANH, // gelu, tanh approximation (GeGLU when gated)
    ACT_GELU,      // gelu, exact erf form
} ActKind;

typedef enum {
    QKV_SPLIT = 0, // separate q, k, v tensors (out, dim) each
    QKV_FUSED,     // one tensor, rows [q heads | k heads | v heads] (Phi-3 qkv_proj)
    QKV_PER_HEAD,  // one tensor, rows [h0: q k v | h1: q k v | ...] (GPT-NeoX, MHA only)
    QKV_GROUPED,   // one tensor, per kv group [its q heads | k | v] (Falcon-40B/180B)
} QkvLayout;

typedef enum {
    GU_SPLIT = 0, // separate gate and up tensors (or only up when not gated)
    GU_FUSED,     // one tensor, rows [gate | up] (Phi-3 gate_up_proj)
} GuLayout;

// One decoder family. Tensor names are without the ".weight" / ".bias"
// suffix; layer tensors are "<layer_prefix><l>.<name>". NULL: not used.
typedef struct {
    const char *arch;       // config.json architectures[0], e.g. "Qwen2ForCausalLM"
    const char *name;       // short name for logs, "qwen2"
    int kind;               // ArchKind (config.h)
    // Several rows may share an arch (Falcon's layouts): a row applies when
    // the config's boolean match_key (match_default when absent) equals
    // match_value; NULL matches always. The first applicable row wins.
    const char *match_key;
    int match_default, match_value;

    // config.json keys this family spells differently: {theirs, Llama's}.
    // Llama's key is read from theirs when the config lacks it.
    const char *aliases[8][2];
    int inter_mult;           // intermediate_size absent or null: inter_mult * hidden_size
    const char *bias_key;     // one boolean that turns every linear bias on (Falcon "bias")
    const char *refuse_key;   // a boolean that, true, names an unsupported variant

    // config.json keys that differ between families (first found wins)
    const char *eps_keys[3];  // norm epsilon
    const char *act_keys[3];  // activation name
    const char *act_default;  // when no act key is present
    const char *acts_ok;      // accepted activation names, comma separated (for messages)

    NormKind norm;
    float norm_offset;        // added to every norm weight at load (Gemma: 1)
    int embed_scale;          // multiply embeddings by sqrt(hidden_size) (Gemma)
    int parallel_residual;    // x + attn(n1(x)) + mlp(n2(x)) (n2 = n1 when shared_norm)
    const char *parallel_key; // boolean config key that can switch it (use_parallel_residual)
    int shared_norm;          // one norm feeds both branches
    int gated;                // gate/up MLP (SwiGLU, GeGLU) or plain up/act/down
    int qkv_bias, o_bias, mlp_bias; // defaults; Llama reads attention_bias / mlp_bias
    int bias_from_config;     // 1: attention_bias / mlp_bias (Llama); 2: attention_bias sets
                              // q/k/v and o biases (GPT-NeoX)
    int tie_default;          // tie_word_embeddings when config.json does not say (Gemma)
    float rotary_default;     // partial rotary factor when config.json does not say (0: 1)
    int gelu_means_tanh;      // "gelu" is read as the tanh approximation (Gemma, as HF)
    int window_default;       // sliding window when config.json has no such key (Mistral)
    int no_rotary;            // positions are learned (pos_embed) or absent: no rotation
    int one_kv_head;          // multi-query whatever num_key_value_heads says (Falcon-7B)
    int transposed;           // linear weights stored (in, out), Conv1D (GPT-2)
    int head_bias;            // the LM head has a bias (GPT-J)
    int alibi;                // ALiBi position biases: 1 BLOOM's slopes, 2 MPT's (attn_config)
    int norm_bias_optional;   // a LayerNorm bias may be absent (MPT's no_bias checkpoints)
    int rope_interleaved;     // rotate (x0,x1),(x2,x3).. pairs instead of halves (GPT-J)
    int windowed;             // reads sliding_window (Mistral, Qwen2, Phi-3)

    QkvLayout qkv_layout;
    GuLayout gu_layout;

    // tensor names
    const char *embed, *final_norm, *lm_head, *layer_prefix;
    const char *lm_head_alt;  // the head's other name in some checkpoints, or NULL
    const char *pos_embed;    // learned position table (max_pos, hidden) (GPT-2), or NULL
    const char *embed_norm;   // LayerNorm right after the embedding (BLOOM), or NULL
    const char *opt_prefix;   // a prefix some checkpoints omit ("transformer." in GPT-2's)
    const char *attn_norm, *ffn_norm;
    const char *q, *k, *v, *qkv, *o;
    const char *gate, *up, *gate_up, *down;
} ArchFamily;

// The i-th row (0, 1, ...) whose arch matches architectures[0], or NULL
// past the last one.
const ArchFamily *arch_find(const char *arch, int i);

// "LlamaForCausalLM, Qwen2ForCausalLM, ...": every supported architecture,
// for error messages. A static string.
const char *arch_supported(void);

#endif
