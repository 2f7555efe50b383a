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
} AttnShape;

// One logits row's sampling request for the `sample` op (plain data: the
// CUDA kernel reads an array of these from device memory). The semantics of
// every field are those of SamplingParams (sampling.h); seed and step pick the
// request's uniform draw, sampling_uniform(seed, step).
typedef struct {
    float temperature;        // <= 0: greedy
    float top_p;              // >= 1: off
    float min_p;              // <= 0: off
    float repetition_penalty; // 1: off
    float presence_penalty;   // 0: off
    float frequency_penalty;  // 0: off
    int32_t top_k;            // <= 0 or >= vocab: off
    int32_t slot;             // penalty-history slot of the request, -1: no penalties
    uint64_t seed;
    uint64_t step;            // index of the token being generated (0: the first)
} SampleRow;

// Token history updates for the penalties, applied by sample_prepare before
// the step's sampling. Each slot holds, per vocabulary id, "seen in the prompt
// or the completion" and "times generated": exactly what the penalties of
// sampling.c read. Resets come first, then the entries.
#define SAMPLE_HIST_GEN 0x80000000u // flag in hist_tok: a generated (not prompt) token
#define SAMPLE_MAX_TOP_N 32
typedef struct {
    int n_reset;
    const int32_t *reset_slots; // (n_reset) slots to clear
    int n_hist;
    const int32_t *hist_slot;   // (n_hist) slot of each entry
    const uint32_t *hist_tok;   // (n_hist) token id in [0, vocab), | SAMPLE_HIST_GEN if generated
} SampleHistory;

// What the sample op hands back for one step (host arrays, n rows).
typedef struct {
    int32_t *ids;      // (n) chosen tokens
    float *logprobs;   // (n) log probability of each (see sampling_sample), or NULL
    int32_t *top_ids;  // (n, top_n) the model's top_n tokens (before sampling settings), or NULL
    float *top_lps;    // (n, top_n)
} SampleOut;

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
    void (*linear)(Backend *be, void *y, const void *x, const LinearWeight *w, int n);
    void (*rope_kv_write)(Backend *be, void *qkv, void *k_cache, void *v_cache,
                          const Batch *b, const void *inv_freq, const AttnShape *s);
    void (*attention)(Backend *be, void *out, const void *qkv, const void *k_cache,
                      const void *v_cache, const Batch *b, const AttnShape *s);
    void (*swiglu)(Backend *be, void *out, const void *gu, int n, int hidden);
    void (*gather_rows)(Backend *be, void *out, const void *x, const Batch *b, int dim);
    // logits_host (n, out_dim) fp32 on the host = x (n, in_dim) @ W^T
    void (*logits)(Backend *be, float *logits_host, const void *x, const LinearWeight *w,
                   int n);
    // ids_host (n) = argmax of each row of x @ W^T (ties: lowest id): a greedy
    // step without moving logits off the device.
    void (*argmax)(Backend *be, int32_t *ids_host, const void *x, const LinearWeight *w, int n);

    // --- on-device sampling (NULL on a backend without it) ---
    // Sizes the sampling state once, at start-up: n_slots penalty histories of
    // vocab ids (0: no request uses penalties), at most max_hist history
    // entries per step, top_n alternatives per row (0..SAMPLE_MAX_TOP_N),
    // want_logprob: whether the chosen tokens' logprobs are wanted.
    void (*sample_reserve)(Backend *be, int n_slots, int vocab, int max_hist, int top_n,
                           int want_logprob);
    // Stages the step's per-row requests (n rows) and applies its history
    // updates. Call before the forward pass whose logits they sample.
    void (*sample_prepare)(Backend *be, const SampleRow *rows, int n, const SampleHistory *h);
    // Enqueues: logits of x (n, in_dim) @ W^T, then penalties, temperature,
    // min-p, top-k, top-p and the draw per row (sampling.c's rules and random
    // stream), plus the logprobs asked for in sample_reserve. Asynchronous on
    // backends that can be; sample_wait returns the results.
    void (*sample)(Backend *be, const void *x, const LinearWeight *w, int n);
    // Waits for the last sample call and copies its n rows out.
    void (*sample_wait)(Backend *be, const SampleOut *out, int n);

    // --- CUDA graphs (NULL on a backend without them) ---
    // graph_begin: called by the model after set_batch, before the ops of the
    // step. Returns 1 when the step was launched from a graph captured before
    // (the caller then enqueues nothing more for this step); 0 when the
    // caller must enqueue the ops, which are captured if the step is
    // graphable. graph_end closes what graph_begin opened (and launches a
    // freshly captured graph). mode: 0 off, 1 on (decode steps padded to a
    // bucket and replayed), 2 padded and eager (for tests: same launches as
    // a graph, no capture).
    int (*graph_begin)(Backend *be);
    void (*graph_end)(Backend *be);
    void (*set_graph_mode)(Backend *be, int mode);
    // Counters: graphs captured, steps replayed from a graph.
    void (*graph_stats)(Backend *be, long *captured, long *replayed);

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
