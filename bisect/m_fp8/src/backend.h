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
    void *scale;         // FP8/INT4 scales (backend memory) or NULL; INT4: fp16 (out, in/group)
    void *zeros;         // INT4 zero points uint8 (out, in/group) or NULL (symmetric: 8)
    int group_size;      // INT4 group size along in_dim (layout: kernels/cpu/int4_cpu.h)
    int scale_per_row;   // FP8: 1 per-out-channel scales, 0 per-tensor
    void *bias;          // (out_dim) fp32 or NULL
    // FP8: the activation scale. > 0: static per-tensor (from the checkpoint
    // or calibration): x is quantised as e4m3(x / in_scale). 0: dynamic, one
    // scale per token row (absmax / 448), computed where x is produced.
    float in_scale;
} LinearWeight;

// How load_linear_fp8 quantises one weight (fp8.h has the rounding rules).
typedef struct {
    // Host (out_dim) weight scales to quantise with (pre-quantized
    // checkpoints: the checkpoint's own, so the codes come back exactly), or
    // NULL: scales from the weight's absmax, per row or per tensor.
    const float *w_scale;
    int per_row;     // with w_scale NULL: 1 per-out-channel scales, 0 one per tensor
    float in_scale;  // static activation scale, 0 = dynamic per token
} Fp8Spec;

// Shapes of the attention part of a layer, for the ops that need them.
typedef struct {
    int n_heads, n_kv_heads, head_dim; // this rank's heads
    int block_size;                    // tokens per KV block
    float scale;                       // softmax scale, 1/sqrt(head_dim)
    // KV cache format: 0 the activation dtype, 1 FP8 E4M3 with per-tensor
    // scales (this layer's): stored code = e4m3(k / k_scale).
    int kv_fp8;
    float k_scale, v_scale;
} AttnShape;

typedef struct Backend Backend;
struct Backend {
    const char *name; // "cpu", "cuda"
    int act_bytes;    // bytes per activation element (4 on the CPU, 2 for bf16)
    int kv_fp8_bytes; // bytes per FP8 KV element: 1 on the GPU, 4 on the CPU (emulated)
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
    // Fills w as WFMT_INT4 from host arrays in sluice's INT4 layout
    // (kernels/cpu/int4_cpu.h): qweight (out, in/8), scales fp16 (out, in/group),
    // zeros (out, in/group) or NULL (symmetric), optional fp32 bias (out). The
    // arrays are copied; group is a multiple of 32 dividing in_dim.
    int (*load_linear_int4)(Backend *be, LinearWeight *w, const uint32_t *qweight,
                            const uint16_t *scales, const uint8_t *zeros, const float *bias,
                            int out_dim, int in_dim, int group, sl_err *err);

    // Same, stored as FP8 E4M3 (WFMT_FP8_E4M3) as spec says. The CPU backend
    // keeps the e4m3 codes and emulates the FP8 GEMM exactly (same codes,
    // same scales as the GPU).
    int (*load_linear_fp8)(Backend *be, LinearWeight *w, const float *host, const float *bias,
                           int out_dim, int in_dim, const Fp8Spec *spec, sl_err *err);

    // Sizes the per-step buffers (step metadata, attention workspace) once for
    // the job's limits. Called by model_kv_alloc, before the first step.
    void (*reserve)(Backend *be, int max_tokens, int max_seqs, int max_seq_len, int block_size,
                    int n_heads, int head_dim);

    // --- random weights (benchmarks) ---
    // Allocates w for an (out_dim, in_dim) matrix in the backend's weight
    // format, contents undefined.
    void (*alloc_linear)(Backend *be, LinearWeight *w, int out_dim, int in_dim);
    // Allocates w as WFMT_INT4 (asymmetric, zero points) and fills it with
    // random nibbles, zero points and scales (cpu_int4_fill_random's values,
    // generated where the weights live: no host traffic on a GPU).
    void (*random_linear_int4)(Backend *be, LinearWeight *w, int out_dim, int in_dim, int group,
                               uint64_t seed, float scale);
    // An FP8 (out_dim, in_dim) weight of normal(0, std) values, generated
    // and quantised (per-row scales, dynamic activations) on the device.
    void (*random_linear_fp8)(Backend *be, LinearWeight *w, int out_dim, int in_dim,
                              uint64_t seed, float std);
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

    // The same three ops writing `out` in the input format of the linear
    // layer `next` that consumes it, and the linear that reads such an input.
    // For an FP8 `next` the GPU emits e4m3 codes plus one fp32 scale per row
    // straight from the norm / gate kernel (no extra pass over memory); for
    // other formats they are the plain ops. The CPU backend keeps fp32 and
    // quantises inside linear_q: the same codes. An `out` buffer sized for n
    // rows of the activation dtype plus backend_q_extra(n) bytes holds either.
    void (*rmsnorm_q)(Backend *be, void *out, const void *x, const void *w, int n, int dim,
                      float eps, const LinearWeight *next);
    void (*add_rmsnorm_q)(Backend *be, void *out, void *x, const void *r, const void *w, int n,
                          int dim, float eps, const LinearWeight *next);
    void (*swiglu_q)(Backend *be, void *out, const void *gu, int n, int hidden,
                     const LinearWeight *next);
    void (*linear_q)(Backend *be, void *y, const void *xq, const LinearWeight *w, int n);
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
// The cudaStream_t every op of this backend runs on (for NCCL, parallel/).
void *backend_cuda_stream(Backend *be);
// Same; act_f32 = 1 keeps activations, the KV cache and dense weights in fp32
// with true fp32 GEMMs (no TF32): the CPU backend's results on the GPU.
Backend *backend_cuda_create_ex(int device, int act_f32, sl_err *err);
#endif

// Bytes per element of a KV cache entry on this backend (the activation dtype).
static inline size_t backend_kv_bytes(const Backend *be) { return (size_t)be->act_bytes; }

// Bytes per element of a KV cache entry of the given format (AttnShape.kv_fp8).
// The CPU backend emulates an FP8 cache in fp32 (values rounded through e4m3).
static inline size_t backend_kv_elem_bytes(const Backend *be, int kv_fp8) {
    return kv_fp8 ? (size_t)be->kv_fp8_bytes : (size_t)be->act_bytes;
}

// Extra bytes an activation buffer of n rows needs beyond n rows of the
// activation dtype to also hold an FP8 input (codes + per-row scales).
static inline size_t backend_q_extra(size_t n) { return 256 + 4 * n + 256; }

// Byte offset of the per-row fp32 scales in an FP8 input of n rows x dim.
static inline size_t backend_q_scale_offset(size_t n, size_t dim) {
    return (n * dim + 255) & ~(size_t)255;
}

#endif
