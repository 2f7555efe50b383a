// backend.h: what the model asks of a compute backend.
//
// The model (model.c) is written once against this table of operations; the
// CPU backend (backend_cpu.c, fp32, the reference) and the CUDA backend
// (backend_cuda.c, bf16/fp8/int4 through kernels/cuda) implement it. Model code
// never sees CUDA syntax, and kernels never see the model.
//
// Memory: `void *` activations and weights are backend memory (host memory on
// the CPU, device memory on the GPU). Everything is allocated at start-up;
// no op allocates.
#ifndef SLUICE_BACKEND_H
#define SLUICE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "common.h"

// How a linear layer's weight is stored. The model describes each linear
// layer with one of these and never looks inside: FP8 and INT4 weights plug in
// here without touching the model code.
typedef enum {
    WFMT_F32 = 0,  // (out_dim, in_dim) float
    WFMT_BF16,     // (out_dim, in_dim) bf16
    WFMT_FP8_E4M3, // (out_dim, in_dim) e4m3, `scale` per tensor or per out channel
    WFMT_INT4,     // group-wise int4, `scale` / `zeros` per (out, in/group)
} WeightFormat;

typedef struct {
    WeightFormat fmt;
    int out_dim, in_dim; // y (n, out_dim) = x (n, in_dim) @ W^T
    void *data;          // backend memory, layout given by fmt
    void *scale;         // FP8/INT4 scales (backend memory) or NULL
    void *zeros;         // INT4 zero points or NULL (symmetric)
    int group_size;      // INT4 group size along in_dim
    int scale_per_row;   // FP8: 1 per-out-channel scales, 0 per-tensor
    void *bias;          // (out_dim) fp32 or NULL
} LinearWeight;

// Shapes of the attention part of a layer, for the ops that need them.
typedef struct {
    int n_heads, n_kv_heads, head_dim; // this rank's heads
    int block_size;                    // tokens per KV block
    float scale;                       // softmax scale, 1/sqrt(head_dim)
    int rotary_dim;       // leading dims of each head that rotate (0: head_dim)
    int no_rotary;        // nothing rotates (learned positions); k, v are only cached
    int rope_interleaved; // GPT-J pairs (2i, 2i+1) instead of rotate_half's halves
    int window;           // sliding window: attend to the last `window` positions; 0 = all
    const void *alibi;    // (n_heads) fp32 ALiBi slopes of this rank's heads, or NULL
} AttnShape;

typedef struct Backend Backend;
struct Backend {
    const char *name; // "cpu", "cuda"
    int act_bytes;    // bytes per activation element (4 on the CPU, 2 for bf16)
    void *impl;       // the backend's private state

    // --- memory (start-up only) ---
    void *(*alloc)(Backend *be, size_t bytes); // zeroed; dies cleanly when out of memory
    void (*free)(Backend *be, void *p);
    size_t (*mem_free)(Backend *be); // bytes still available for the KV pool

    // --- weights: host fp32 in, backend format out ---
    // A vector kept in fp32 (norm weights, rotary frequencies).
    void *(*upload_f32)(Backend *be, const float *host, size_t n);
    // A (rows, cols) table in the activation dtype (embeddings).
    void *(*upload_table)(Backend *be, const float *host, size_t rows, size_t cols);
    // Fills w from a host (out_dim, in_dim) fp32 matrix and optional bias.
    int (*load_linear)(Backend *be, LinearWeight *w, const float *host, const float *bias,
                       int out_dim, int in_dim, sl_err *err);

    // Sizes the per-step buffers (step metadata, attention workspace) once for
    // the job's limits. Called by model_kv_alloc, before the first step.
    void (*reserve)(Backend *be, int max_tokens, int max_seqs, int max_seq_len, int block_size,
                    int n_heads, int head_dim);

    // --- random weights (benchmarks) ---
    // Allocates w for an (out_dim, in_dim) matrix in the backend's weight
    // format, contents undefined.
    void (*alloc_linear)(Backend *be, LinearWeight *w, int out_dim, int in_dim);
    // n elements at dst = mean + std * N(0,1) (counter-based, keyed by seed):
    // fp32 when f32, else the activation dtype.
    void (*fill_normal)(Backend *be, void *dst, size_t n, int f32, uint64_t seed, float mean,
                        float std);

    // --- per step ---
    // Makes the step's metadata visible to the ops; returns a Batch whose
    // arrays are backend memory, valid until the next call.
    const Batch *(*set_batch)(Backend *be, const Batch *host);

    // --- ops (activations in the activation dtype, row-major) ---
    void (*embed)(Backend *be, void *out, const void *table, const Batch *b, int dim);
    void (*rmsnorm)(Backend *be, void *out, const void *x, const void *w, int n, int dim,
                    float eps);
    void (*add_rmsnorm)(Backend *be, void *out, void *x, const void *r, const void *w, int n,
                        int dim, float eps);
    // LayerNorm families (GPT-NeoX, ...): out = layernorm(x) * w + b, b may be NULL;
    // the add_ form first adds r into the residual x, as add_rmsnorm.
    void (*layernorm)(Backend *be, void *out, const void *x, const void *w, const void *b,
                      int n, int dim, float eps);
    void (*add_layernorm)(Backend *be, void *out, void *x, const void *r, const void *w,
                          const void *b, int n, int dim, float eps);
    // x (n) += r (n) activations (parallel residual: the MLP output joins the
    // attention output before the one all-reduce)
    void (*add)(Backend *be, void *x, const void *r, size_t n);
    void (*linear)(Backend *be, void *y, const void *x, const LinearWeight *w, int n);
    // Rotates the first s->rotary_dim dims of each q and k head (all when 0;
    // interleaved pairs when s->rope_interleaved), then caches k and v.
    void (*rope_kv_write)(Backend *be, void *qkv, void *k_cache, void *v_cache,
                          const Batch *b, const void *inv_freq, const AttnShape *s);
    // Causal paged attention; only the last s->window positions when set.
    void (*attention)(Backend *be, void *out, const void *qkv, const void *k_cache,
                      const void *v_cache, const Batch *b, const AttnShape *s);
    void (*swiglu)(Backend *be, void *out, const void *gu, int n, int hidden);
    // GELU MLPs: gated (GeGLU, gu (n, 2*hidden) = [gate | up]) or plain
    // (in (n, hidden)); tanh approximation or the exact erf form.
    void (*gelu)(Backend *be, void *out, const void *in, int n, int hidden, int gated,
                 int tanh_approx);
    void (*gather_rows)(Backend *be, void *out, const void *x, const Batch *b, int dim);
    // logits_host (n, out_dim) fp32 on the host = x (n, in_dim) @ W^T
    void (*logits)(Backend *be, float *logits_host, const void *x, const LinearWeight *w,
                   int n);
    // ids_host (n) = argmax of each row of x @ W^T (ties: lowest id): a greedy
    // step without moving logits off the device.
    void (*argmax)(Backend *be, int32_t *ids_host, const void *x, const LinearWeight *w, int n);

    // Host memory the device copies to and from fastest (pinned on a GPU);
    // for buffers the step loop moves every step.
    void *(*host_alloc)(Backend *be, size_t bytes);
    void (*host_free)(Backend *be, void *p);

    void (*destroy)(Backend *be);
};

// Creates the CPU backend (threads: 0 = OpenMP's default).
Backend *backend_cpu_create(int threads);

#ifdef SLUICE_CUDA
// Creates the CUDA backend on `device`; NULL with err when no usable GPU.
Backend *backend_cuda_create(int device, sl_err *err);
#endif

// Bytes per element of a KV cache entry on this backend (the activation dtype).
static inline size_t backend_kv_bytes(const Backend *be) { return (size_t)be->act_bytes; }

#endif
