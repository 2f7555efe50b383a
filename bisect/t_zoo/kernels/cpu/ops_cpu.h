// ops_cpu.h: the CPU twins of sluice's kernels.
//
// Plain C, fp32, multi-threaded with OpenMP. Each function has the signature
// of its GPU counterpart (kernels/cuda/ops_cuda.h) minus the stream, and is
// both what the CPU backend runs and what the GPU kernels are tested against.
// Every output row depends only on its own inputs (never on how many other
// rows share the call), so a token computes to the same bits whatever batch it
// is in: the property in-flight batching tests rely on.
//
// Shapes are given in comments as (rows, cols), row-major.
#ifndef SLUICE_OPS_CPU_H
#define SLUICE_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

// out (n, dim) = table[tokens[i], :], table (vocab, dim)
void cpu_embed(float *out, const float *table, const int32_t *tokens, int n, int dim);

// out (n, dim) = x / sqrt(mean(x^2) + eps) * w          (w (dim))
void cpu_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps);

// x (n, dim) += r (in place, the residual stream); out = rmsnorm(x) * w
void cpu_add_rmsnorm(float *out, float *x, const float *r, const float *w, int n, int dim,
                     float eps);

// out (n, dim) = (x - mean(x)) / sqrt(var(x) + eps) * w + b   (biased variance,
// as torch.nn.LayerNorm; w, b (dim); b may be NULL)
void cpu_layernorm(float *out, const float *x, const float *w, const float *b, int n, int dim,
                   float eps);

// x (n, dim) += r (in place); out = layernorm(x) * w + b
void cpu_add_layernorm(float *out, float *x, const float *r, const float *w, const float *b,
                       int n, int dim, float eps);

// x (n) += r (n), elementwise (the parallel residual's two branch outputs)
void cpu_add(float *x, const float *r, size_t n);

// GELU MLP activation. gated: in (n, 2*hidden) = [gate | up],
// out (n, hidden) = gelu(gate) * up (GeGLU); else in (n, hidden), out = gelu(in).
// tanh_approx: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), else the erf form.
// out may alias in when not gated.
void cpu_gelu(float *out, const float *in, int n, int hidden, int gated, int tanh_approx);

// y (n, out_dim) = x (n, in_dim) @ w^T (+ bias), w (out_dim, in_dim)
void cpu_linear(float *y, const float *x, const float *w, const float *bias, int n,
                int in_dim, int out_dim);

// The rotary inverse frequencies (head_dim / 2) for a rope type; see rope.c.
// rope_type: 0 default, 1 linear, 2 llama3 (matches RopeType in config.h).
void cpu_rope_inv_freq(float *inv_freq, int head_dim, int rope_type, float theta,
                       float factor, float low_freq_factor, float high_freq_factor,
                       int orig_max_pos);

// qkv (n, (n_heads + 2*n_kv_heads) * head_dim): q heads, then k heads, then v.
// Rotates q and k of row i by position pos[i] (HF rotate_half convention, the
// two halves of each head pair up), in place, then writes k and v into the
// paged cache at slots[i] (slots of one call distinct; slots[i] < 0 marks a
// padding row, rotated but not cached):
//   k_cache, v_cache (n_blocks, n_kv_heads, block_size, head_dim)
void cpu_rope_kv_write(float *qkv, float *k_cache, float *v_cache, const int32_t *pos,
                       const int32_t *slots, const float *inv_freq, int n, int n_heads,
                       int n_kv_heads, int head_dim, int block_size);

// cpu_rope_kv_write generalised: only the first rotary_dim dims of each head
// rotate (partial rotary, GPT-NeoX / GPT-J; inv_freq has rotary_dim/2
// entries), pairing (i, i + rotary_dim/2) (rotate_half) or, when interleaved,
// (2i, 2i + 1) (GPT-J). rotary_dim == head_dim, interleaved 0 is
// cpu_rope_kv_write.
void cpu_rope_kv_write_ex(float *qkv, float *k_cache, float *v_cache, const int32_t *pos,
                          const int32_t *slots, const float *inv_freq, int n, int n_heads,
                          int n_kv_heads, int head_dim, int block_size, int rotary_dim,
                          int interleaved);

// Causal attention over the paged cache. Row i (sequence seq_of[i]) attends to
// positions [0, pos[i]] of its sequence, found through its block table.
// q is read from qkv rows (stride (n_heads + 2*n_kv_heads)*head_dim);
// out (n, n_heads * head_dim). Query head h reads kv head h / (n_heads/n_kv_heads).
void cpu_paged_attention(float *out, const float *qkv, const float *k_cache,
                         const float *v_cache, const int32_t *pos, const int32_t *seq_of,
                         const int32_t *block_tables, int max_blocks, int n, int n_heads,
                         int n_kv_heads, int head_dim, int block_size, float scale);

// cpu_paged_attention with a sliding window: row i attends to positions
// (pos[i] - window, pos[i]] only (window 0: all of [0, pos[i]]), as HF's
// sliding-window mask (Mistral, Phi-3, Qwen2); and ALiBi when alibi (n_heads
// slopes) is set: score(t) += alibi[h] * (t - pos[i]) (BLOOM, MPT; the same
// softmax as HF's slope * t, shifted per row).
void cpu_paged_attention_ex(float *out, const float *qkv, const float *k_cache,
                            const float *v_cache, const int32_t *pos, const int32_t *seq_of,
                            const int32_t *block_tables, int max_blocks, int n, int n_heads,
                            int n_kv_heads, int head_dim, int block_size, float scale,
                            int window, const float *alibi);

// ALiBi slopes of n_heads heads: mode 1 BLOOM's (geometric from 2^(-8/n) over
// the nearest power of two, odd powers of the next one for the rest), mode 2
// MPT's (1 / 2^(k * bias_max / n_pow2), interleaved when n is not a power of two).
void cpu_alibi_slopes(float *slopes, int n_heads, int mode, float bias_max);

// gu (n, 2*hidden) = [gate | up]; out (n, hidden) = silu(gate) * up
void cpu_swiglu(float *out, const float *gu, int n, int hidden);

// out (m, dim) = x[rows[j], :]
void cpu_gather_rows(float *out, const float *x, const int32_t *rows, int m, int dim);

// out[r] = index of the largest value of row r of logits (n, vocab); ties to
// the lowest index, NaN counts as -inf.
void cpu_argmax_rows(int32_t *out, const float *logits, int n, int vocab);

// dst[i] = mean + std * N(0,1), the normal drawn from a counter-based
// generator keyed by (seed, i) (splitmix64 + Box-Muller), so any backend can
// fill the same tensor in any order. For benchmarks with random weights.
void cpu_fill_normal(float *dst, size_t n, uint64_t seed, float mean, float std);

#endif
