// ops_cuda.h: the C entry points of sluice's CUDA kernels.
//
// Each kernel file (kernels/cuda/<op>.cu) has three levels: a static
// __global__ kernel, a launcher that picks the grid for the shapes, and one
// extern "C" entry point declared here, taking the stream last. Every entry
// point has a CPU twin in kernels/cpu/ops_cpu.h with the same arguments minus
// the stream, and the GPU tests compare the two on random data.
//
// Activations and the KV cache are bf16 (sl_bf16), row-major; norm weights
// and rotary frequencies are fp32. Shapes as in ops_cpu.h. All pointers are
// device memory. Nothing here allocates.
#ifndef SLUICE_OPS_CUDA_H
#define SLUICE_OPS_CUDA_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// out (n, dim) = table[tokens[i], :]
void cuda_embed(sl_bf16 *out, const sl_bf16 *table, const int32_t *tokens, int n, int dim,
                cudaStream_t stream);

// out (n, dim) = x * rsqrt(mean(x^2) + eps) * w   (fp32 math)
void cuda_rmsnorm(sl_bf16 *out, const sl_bf16 *x, const float *w, int n, int dim, float eps,
                  cudaStream_t stream);

// x (n, dim) += r (in place, rounded to bf16); out = rmsnorm(x) * w.
// out may alias r, not x.
void cuda_add_rmsnorm(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w, int n,
                      int dim, float eps, cudaStream_t stream);

// qkv (n, (n_heads + 2*n_kv_heads)*head_dim): rotate q and k in place by
// pos[i] (HF rotate_half convention), then write k, v into the paged cache at
// slots[i] (distinct within a call; slots[i] < 0 marks a padding row, which
// is rotated but not cached); k_cache, v_cache (n_blocks, n_kv_heads,
// block_size, head_dim).
void cuda_rope_kv_write(sl_bf16 *qkv, sl_bf16 *k_cache, sl_bf16 *v_cache, const int32_t *pos,
                        const int32_t *slots, const float *inv_freq, int n, int n_heads,
                        int n_kv_heads, int head_dim, int block_size, cudaStream_t stream);

// LayerNorm with bias (b may be NULL), and x += r then LayerNorm (out may
// alias r, not x); fp32 statistics (layernorm.cu). Twins: cpu_layernorm,
// cpu_add_layernorm.
void cuda_layernorm(sl_bf16 *out, const sl_bf16 *x, const float *w, const float *b, int n,
                    int dim, float eps, cudaStream_t stream);
void cuda_add_layernorm(sl_bf16 *out, sl_bf16 *x, const sl_bf16 *r, const float *w,
                        const float *b, int n, int dim, float eps, cudaStream_t stream);

// x (n) += r (n) (add.cu). Twin: cpu_add.
void cuda_add(sl_bf16 *x, const sl_bf16 *r, size_t n, cudaStream_t stream);

// GELU, plain (in (n, hidden)) or gated (GeGLU, in (n, 2*hidden) = [gate |
// up]), tanh approximation or erf (gelu.cu). Twin: cpu_gelu.
void cuda_gelu(sl_bf16 *out, const sl_bf16 *in, int n, int hidden, int gated, int tanh_approx,
               cudaStream_t stream);

// cuda_rope_kv_write with partial rotary (the first rotary_dim dims of each
// head) and/or GPT-J's interleaved pairs (rope_partial.cu). Twin:
// cpu_rope_kv_write_ex.
void cuda_rope_kv_write_partial(sl_bf16 *qkv, sl_bf16 *k_cache, sl_bf16 *v_cache,
                                const int32_t *pos, const int32_t *slots, const float *inv_freq,
                                int n, int n_heads, int n_kv_heads, int head_dim, int block_size,
                                int rotary_dim, int interleaved, cudaStream_t stream);

// gu (n, 2*hidden) = [gate | up]; out (n, hidden) = silu(gate) * up
void cuda_swiglu(sl_bf16 *out, const sl_bf16 *gu, int n, int hidden, cudaStream_t stream);

// out (m, dim) = x[rows[j], :]
void cuda_gather_rows(sl_bf16 *out, const sl_bf16 *x, const int32_t *rows, int m, int dim,
                      cudaStream_t stream);

// Conversions used at load time and by tests.
void cuda_f32_to_bf16(sl_bf16 *out, const float *in, size_t n, cudaStream_t stream);
void cuda_bf16_to_f32(float *out, const sl_bf16 *in, size_t n, cudaStream_t stream);

// Causal attention over the paged cache (see cpu_paged_attention). Rows of a
// sequence are contiguous: seq_start (n_seqs + 1). Rows with many keys (prefill
// chunks) and single decode rows may be mixed in one call; the entry point
// dispatches to the prefill (flash-attention style, online softmax) and decode
// (split-K flash-decoding) kernels. `workspace` holds at least
// cuda_attention_workspace_bytes(...) bytes.
size_t cuda_attention_workspace_bytes(int max_tokens, int n_heads, int head_dim,
                                      int max_seq_len);
void cuda_paged_attention(sl_bf16 *out, const sl_bf16 *qkv, const sl_bf16 *k_cache,
                          const sl_bf16 *v_cache, const int32_t *pos, const int32_t *seq_of,
                          const int32_t *seq_start, const int32_t *kv_len,
                          const int32_t *block_tables, int max_blocks, int n_tokens, int n_seqs,
                          int max_kv_len, int n_heads, int n_kv_heads, int head_dim,
                          int block_size, float scale, void *workspace, cudaStream_t stream);
// The same with a sliding window: row i attends to (pos[i] - window, pos[i]]
// (window 0: no window), and ALiBi biases alibi[h] * (t - pos[i]) when alibi
// (n_heads fp32 slopes, device) is set. Twin: cpu_paged_attention_ex.
void cuda_paged_attention_window(sl_bf16 *out, const sl_bf16 *qkv, const sl_bf16 *k_cache,
                                 const sl_bf16 *v_cache, const int32_t *pos,
                                 const int32_t *seq_of, const int32_t *seq_start,
                                 const int32_t *kv_len, const int32_t *block_tables,
                                 int max_blocks, int n_tokens, int n_seqs, int max_kv_len,
                                 int n_heads, int n_kv_heads, int head_dim, int block_size,
                                 float scale, int window, const float *alibi, void *workspace,
                                 cudaStream_t stream);

// out[r] = the index of the largest of logits (n, vocab) row r (fp32); ties
// to the lowest index, NaN counts as -inf (greedy decoding on the device).
void cuda_argmax_rows(int32_t *out, const float *logits, int n, int vocab, cudaStream_t stream);

// dst[i] = mean + std * N(0,1) from a counter-based generator keyed by
// (seed, i); the twin of cpu_fill_normal (benchmarks with random weights).
void cuda_fill_normal_bf16(sl_bf16 *dst, size_t n, uint64_t seed, float mean, float std,
                           cudaStream_t stream);
void cuda_fill_normal_f32(float *dst, size_t n, uint64_t seed, float mean, float std,
                          cudaStream_t stream);

// ----------------------------------------------------------------------------
// FP8 E4M3 and the activation type as a parameter (act_f32: 1 fp32, 0 bf16).
// An FP8 output is two arrays: q (n, dim) e4m3 codes and scales (n) fp32, one
// per row; with static_scale > 0 every row gets that scale, else its own
// absmax / 448 (src/fp8.h has the rounding rules; kernels/cpu/fp8_cpu.c the
// twins).

// q, scales = quantise(x (n, dim)), x fp32 (x_f32) or bf16 (fp8.cu).
void cuda_quantize_fp8_rows(uint8_t *q, float *scales, const void *x, int x_f32, int n, int dim,
                            float static_scale, cudaStream_t stream);

// y (n, out) = acc (n, out) fp32 * x_scales[i] * w_scales[o] (+ bias[o]),
// y bf16 or fp32 (y_f32): the epilogue of the FP8 GEMM's fallback.
void cuda_fp8_scale_rows(void *y, int y_f32, const float *acc, const float *x_scales,
                         const float *w_scales, const float *bias, int n, int out,
                         cudaStream_t stream);

// RMSNorm (with add: x += r in place first, rounded to the activation type)
// writing either the activation type (q_out NULL: into out) or FP8 (into
// q_out, scales; out unused): the fused quantisation of the next linear's
// input. out/q_out must not alias x or r.
void cuda_rmsnorm_ex(void *out, uint8_t *q_out, float *scales, void *x, const void *r,
                     const float *w, int n, int dim, float eps, int act_f32, float static_scale,
                     cudaStream_t stream);

// SwiGLU in the activation type, writing the activation type (q_out NULL) or
// FP8 codes + per-row scales. out/q_out must not alias gu.
void cuda_swiglu_ex(void *out, uint8_t *q_out, float *scales, const void *gu, int n, int hidden,
                    int act_f32, float static_scale, cudaStream_t stream);

// cuda_rope_kv_write with the activation type and the cache type as
// parameters: kv_fp8 stores e4m3(k / k_scale), e4m3(v / v_scale).
void cuda_rope_kv_write_ex(void *qkv, void *k_cache, void *v_cache, const int32_t *pos,
                           const int32_t *slots, const float *inv_freq, int n, int n_heads,
                           int n_kv_heads, int head_dim, int block_size, int act_f32, int kv_fp8,
                           float k_scale, float v_scale, cudaStream_t stream);

// The model zoo's ops with the activation type as a parameter (act_f32: fp32,
// the --dtype f32 mode; else bf16); same semantics as the bf16 entry points
// above, which they call for bf16. Twins: cpu_layernorm / cpu_add_layernorm,
// cpu_add, cpu_gelu, cpu_rope_kv_write_ex (+ cpu_kv_round_fp8).
// LayerNorm: r NULL is the plain form (out may equal x), else x += r first
// (rounded to the activation type; out may alias r, not x).
void cuda_layernorm_ex(void *out, void *x, const void *r, const float *w, const float *b, int n,
                       int dim, float eps, int act_f32, cudaStream_t stream);
void cuda_add_ex(void *x, const void *r, size_t n, int act_f32, cudaStream_t stream);
void cuda_gelu_ex(void *out, const void *in, int n, int hidden, int gated, int tanh_approx,
                  int act_f32, cudaStream_t stream);
// Partial / interleaved rotary (rotary_dim 0: none) writing a cache of the
// activation type or, with kv_fp8, e4m3(k / k_scale), e4m3(v / v_scale).
void cuda_rope_kv_write_partial_ex(void *qkv, void *k_cache, void *v_cache, const int32_t *pos,
                                   const int32_t *slots, const float *inv_freq, int n,
                                   int n_heads, int n_kv_heads, int head_dim, int block_size,
                                   int rotary_dim, int interleaved, int act_f32, int kv_fp8,
                                   float k_scale, float v_scale, cudaStream_t stream);

// cuda_paged_attention with the activation type and the cache type as
// parameters. bf16 activations use the tensor-core prefill and split-K decode
// kernels (an FP8 cache is decoded to bf16 as it is loaded, k_scale folded
// into the softmax scale and v_scale into the output); fp32 activations a
// plain fp32 kernel that follows cpu_paged_attention step by step.
void cuda_paged_attention_ex(void *out, const void *qkv, const void *k_cache,
                             const void *v_cache, const int32_t *pos, const int32_t *seq_of,
                             const int32_t *seq_start, const int32_t *kv_len,
                             const int32_t *block_tables, int max_blocks, int n_tokens,
                             int n_seqs, int max_kv_len, int n_heads, int n_kv_heads,
                             int head_dim, int block_size, float scale, int act_f32, int kv_fp8,
                             float k_scale, float v_scale, int window, const float *alibi,
                             void *workspace, cudaStream_t stream);

// Which kernel the decode rows over an FP8 cache (head_dim 64/128) take: 1
// the tensor-core kernel (default), 2 the same with two steps of loads in
// flight, 0 the CUDA-core kernel; -1 goes back to SLUICE_DECODE_TC (the same
// values), read once. For A/B tests and benchmarks; not thread-safe.
void cuda_attention_fp8_decode_kernel(int kind);
// The same over a bf16 cache: 0 the CUDA-core kernel, 1 / 2 the tensor-core
// kernel on bf16 operands at 3 / 2 CTAs per SM, -1 the default (2 for steps
// whose context bound max_kv_len is 1024 or more, else 0); -2 goes back to
// SLUICE_DECODE_TC_BF16 (the same values), read once. For A/B tests and
// benchmarks; not thread-safe.
void cuda_attention_bf16_decode_kernel(int kind);
// Whether a bf16-cache call's decode rows take the tensor-core kernel (which
// rounds P to bf16, as prefill does) at this head_dim and max_kv_len (16-byte
// aligned rows assumed).
int cuda_attention_bf16_decode_uses_tc(int head_dim, int max_kv_len);
// Stages of the bf16-cache decode kernel's shared-memory ring of K/V loads
// (head_dim 64/128): 3 (default), 4 or 6; 0 loads into registers instead;
// -1 goes back to SLUICE_DECODE_RING (the same values), read once. For A/B
// tests and benchmarks; not thread-safe.
void cuda_attention_decode_ring(int stages);
// Prefill attention kernel for head_dim 128 (16-byte aligned operands): 1 =
// warpgroup MMAs (wgmma), 2 = the same with the two warpgroups' MMAs issued
// in turns (ping-pong), 3 = warp-specialised and persistent (a producer
// warpgroup feeds two consumer warpgroups; ping-pong), 4 = the same without
// ping-pong, 0 = the mma.sync kernel every other head dim takes; -1 goes
// back to SLUICE_PREFILL_WG (the same values, read once), whose default is 1
// over a bf16 cache and 3 over an FP8 one. For tests and comparisons; not
// thread-safe.
void cuda_attention_prefill_wg(int mode);
// The mode in effect over a bf16 (0) or FP8 (1) cache.
int cuda_attention_prefill_wg_mode(int fp8_cache);
// Grid of the warp-specialised prefill kernel (modes 3, 4), which is
// persistent: n CTAs, each taking every n-th work item (head x 128 rows);
// 0 goes back to one CTA per SM. For tests; not thread-safe.
void cuda_attention_prefill_ws_ctas(int n);

#ifdef __cplusplus
}
#endif

#endif
