// backend_cuda.c: the CUDA backend: backend.h on one GPU, bf16 activations.
//
// Plain C over the CUDA runtime API: the kernels are reached through
// kernels/cuda/ops_cuda.h and the linear layers through the cuBLASLt wrapper
// kernels/cuda/gemm.h. Every op is enqueued on one non-blocking stream; the
// only synchronisation of a step is the logits copy back to the host.
//
// Memory: weights and activations are allocated at load time (alloc, upload_*,
// load_linear), the per-step buffers once in reserve(): the packed step
// metadata (pinned host + device), the attention workspace and the fp32
// logits (device + pinned host). No per-step op allocates.
//
// Weights arrive as host fp32 and are rounded to bf16 (round to nearest even,
// sl_f32_to_bf16) on the host in chunks through one pinned staging buffer, so
// a huge tensor never needs a second full-size host copy.
//
// Number formats: activations bf16, or fp32 in the f32 mode
// (backend_cuda_create_ex: fp32 weights, true fp32 GEMMs, the CPU backend's
// numbers). FP8 linear layers (load_linear_fp8) are quantised on the host by
// the CPU twin's code (the same codes as the CPU emulation) and run as
// cuBLASLt FP8 GEMMs; their input comes as e4m3 codes + per-row scales
// straight from the norm / SwiGLU kernels (*_q ops), or is quantised into a
// scratch buffer (the attention output). The KV cache is the activation dtype
// or FP8 E4M3 (AttnShape.kv_fp8). The ops of every family (the model zoo's
// LayerNorm, GELU, add and partial rotary too) take both as parameters;
// INT4 layers alone are bf16-only.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "backend.h"
#include "cpu/ops_cpu.h"
#include "cuda/gemm.h"
#include "cuda/ops_cuda.h"
#include "cuda/w4a16.h"
#include "cuda/sample_cuda.h"

#define MAX_BUCKETS 32 // batch-size buckets of the decode graphs

// One decode graph: the whole step (model ops, sampling, result copy) for a
// batch of `bucket` decode rows whose block tables have `blocks` entries.
typedef struct {
    cudaGraphExec_t exec; // NULL until captured
    int blocks;
} DecodeGraph;

#define STAGE_ELEMS ((size_t)8 << 20) // bf16 elements per upload chunk (16 MiB pinned)

typedef struct {
    int device;
    int act_f32; // fp32 activations, weights and KV (the exact mode)
    cudaStream_t stream;
    cuda_gemm *gemm;
    sl_bf16 *stage; // pinned (STAGE_ELEMS) bf16 upload staging, made on first upload

    // sizes given to reserve (0 until then)
    int reserved;
    int max_tokens, max_seqs, max_blocks;
    int max_out_dim; // largest out_dim seen by load_linear (sizes the logits buffer)
    int max_in_fp8;  // largest in_dim of an FP8 linear (sizes qx)
    int max_out_fp8; // largest out_dim of an FP8 linear (sizes the GEMM fallback)

    // FP8 input of a linear whose producer wrote the activation dtype
    uint8_t *qx;      // (max_tokens, max_in_fp8) e4m3
    float *qx_scales; // (max_tokens)
    size_t qx_cap;    // bytes of qx

    // step metadata: every int32 array of a Batch packed into one buffer
    int32_t *meta_host; // pinned, meta_cap ints
    int32_t *meta_dev;  // device, meta_cap ints
    size_t meta_cap;
    cudaEvent_t meta_copied; // the previous step's copy has read meta_host

    void *attn_ws; // attention workspace (device)
    size_t attn_ws_bytes;

    int32_t *ids_dev; // (max_seqs) greedy ids on the device
    int32_t *ids_pin;            // (max_seqs) pinned host copy
    float *logits_dev;  // (max_seqs, max_out_dim) fp32 device
    float *logits_pin;  // same, pinned host
    size_t logits_cap;  // floats

    // INT4 weights (kernels/cuda/w4a16.h): calls of up to gemv_max_n rows run
    // the decode GEMV, up to mma_max_n the tensor-core W4A16 GEMM, larger ones
    // dequantise into int4_scratch (bf16, sized in reserve for the largest
    // INT4 layer) and run cuBLASLt.
    int gemv_max_n;
    int mma_max_n; // calls of up to this many rows run the tensor-core W4A16 GEMM
    // SLUICE_INT4_KERNELS: 3 (default) the v3 kernels on the tiled v3 layout
    // (w4a16_v3.cu; the weights are repacked at upload), 2 the w4a16_tc.cu
    // kernels on sluice's layout, 1 the first generation. Each backend keeps
    // one layout only.
    int int4_gen;
    size_t int4_max_elems; // largest out_dim * in_dim of an INT4 layer loaded
    int int4_max_out;      // largest out_dim of an INT4 layer loaded
    sl_bf16 *int4_scratch;
    size_t int4_scratch_elems;
    float *int4_ws;        // split-K workspace of the v2 / v3 GEMM, sized in reserve
    size_t int4_ws_floats;

    Batch batch;    // the device view returned by set_batch
    int max_kv_len; // of the current step (host value for launch sizes); -1: the
                    // bound max_blocks * block_size (graph steps: sizes depend
                    // on the bucket only)

    // on-device sampling (sample_reserve)
    int smp_vocab, smp_top_n, smp_want_lp, smp_slots, smp_max_hist;
    uint32_t *smp_counts;  // (smp_slots, vocab) penalty histories (device) or NULL
    SampleRow *smp_rows_pin, *smp_rows_dev; // (max_seqs) the step's requests
    int32_t *smp_hist_pin, *smp_hist_dev;   // [reset (max_seqs) | slot (max_hist) | tok (max_hist)]
    int32_t *smp_out_pin, *smp_out_dev;     // [ids | lp | top_ids | top_lps], row stride max_seqs
    int smp_n;                              // rows staged by sample_prepare
    cudaEvent_t smp_staged;                 // the last staging copy has read the pinned buffers

    // CUDA graphs of decode steps
    int graph_mode;   // 0 off, 1 on, 2 padded but eager (tests)
    int n_buckets;
    int buckets[MAX_BUCKETS]; // ascending; the last is min(max_seqs, max_tokens)
    DecodeGraph graphs[MAX_BUCKETS];
    int step_bucket;  // bucket index of the current step, -1: not a graph step
    int step_blocks;
    int capturing;    // bucket index being captured, -1: none
    long graph_captures, graph_steps;
} CudaImpl;

static CudaImpl *impl_of(Backend *be) { return (CudaImpl *)be->impl; }

// ----------------------------------------------------------------------------
// memory

// cudaMalloc that dies with the size and the free memory when it fails.
static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); // clear it: the message below says what happened
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        static char msg[256];
        snprintf(msg, sizeof msg, "out of GPU memory allocating %.1f MiB (free %.1f MiB of %.1f) [%s]",
                 bytes / 1048576.0, fr / 1048576.0, tot / 1048576.0, cudaGetErrorString(e));
        SL_FATAL("CUDA", msg, "cudaMalloc");
    }
    return p;
}

static void *pinned_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 64);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        static char msg[160];
        snprintf(msg, sizeof msg, "out of pinned host memory allocating %.1f MiB [%s]",
                 bytes / 1048576.0, cudaGetErrorString(e));
        SL_FATAL("CUDA", msg, "cudaMallocHost");
    }
    return p;
}

static void *cuda_alloc_op(Backend *be, size_t bytes) {
    void *p = dev_alloc(bytes);
    CUDA_CHECK(cudaMemset(p, 0, bytes ? bytes : 256));
    return p;
}

static void cuda_free_op(Backend *be, void *p) {
    if (p) CUDA_CHECK(cudaFree(p));
}

static size_t cuda_mem_free_op(Backend *be) {
    size_t fr = 0, tot = 0;
    CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    return fr;
}

// ----------------------------------------------------------------------------
// weights

static void *cuda_upload_f32_op(Backend *be, const float *host, size_t n) {
    float *p = dev_alloc(sizeof(float) * (n ? n : 1));
    if (n) CUDA_CHECK(cudaMemcpy(p, host, sizeof(float) * n, cudaMemcpyHostToDevice));
    return p;
}

// dst (n) bf16 device = round(host (n) fp32), chunk by chunk through the
// pinned staging buffer (synchronous: start-up only).
static void upload_bf16(CudaImpl *c, sl_bf16 *dst, const float *host, size_t n) {
    if (!c->stage) c->stage = pinned_alloc(STAGE_ELEMS * sizeof(sl_bf16));
    for (size_t off = 0; off < n; off += STAGE_ELEMS) {
        size_t cnt = n - off < STAGE_ELEMS ? n - off : STAGE_ELEMS;
        sl_bf16 *st = c->stage;
        const float *src = host + off;
#pragma omp parallel for schedule(static) if (cnt > 65536)
        for (size_t i = 0; i < cnt; i++) st[i] = sl_f32_to_bf16(src[i]);
        CUDA_CHECK(cudaMemcpy(dst + off, st, cnt * sizeof(sl_bf16), cudaMemcpyHostToDevice));
    }
}

static void *cuda_upload_table_op(Backend *be, const float *host, size_t rows, size_t cols) {
    size_t n = rows * cols;
    if (impl_of(be)->act_f32) return cuda_upload_f32_op(be, host, n);
    sl_bf16 *p = dev_alloc(n * sizeof(sl_bf16));
    upload_bf16(impl_of(be), p, host, n);
    return p;
}

static void logits_buffers_size(CudaImpl *c);
static void qx_size(CudaImpl *c);

static int cuda_load_linear_op(Backend *be, LinearWeight *w, const float *host, const float *bias,
                               int out_dim, int in_dim, sl_err *err) {
    CudaImpl *c = impl_of(be);
    memset(w, 0, sizeof *w);
    if (out_dim <= 0 || in_dim <= 0)
        return sl_errf(err, "CUDA backend: linear layer of shape (%d, %d) is empty", out_dim,
                       in_dim);
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    if (c->act_f32) {
        w->fmt = WFMT_F32;
        w->data = cuda_upload_f32_op(be, host, (size_t)out_dim * in_dim);
    } else {
        w->fmt = WFMT_BF16;
        w->data = dev_alloc((size_t)out_dim * in_dim * sizeof(sl_bf16));
        upload_bf16(c, w->data, host, (size_t)out_dim * in_dim);
    }
    if (bias) {
        // fp32 then bf16 copies in one allocation (cuda_gemm_bias_bf16_offset)
        char *b = cuda_alloc_op(be, cuda_gemm_bias_bytes(out_dim));
        CUDA_CHECK(cudaMemcpy(b, bias, sizeof(float) * out_dim, cudaMemcpyHostToDevice));
        upload_bf16(c, (sl_bf16 *)(b + cuda_gemm_bias_bf16_offset(out_dim)), bias, out_dim);
        w->bias = b;
    }
    if (out_dim > c->max_out_dim) {
        c->max_out_dim = out_dim;
        if (c->reserved) logits_buffers_size(c); // a head loaded after reserve
    }
    return 0;
}

// Bookkeeping of a new FP8 linear: the widest input sizes the scratch.
static void note_fp8_linear(CudaImpl *c, int out_dim, int in_dim) {
    if (in_dim > c->max_in_fp8 || out_dim > c->max_out_fp8) {
        if (in_dim > c->max_in_fp8) c->max_in_fp8 = in_dim;
        if (out_dim > c->max_out_fp8) c->max_out_fp8 = out_dim;
        if (c->reserved) qx_size(c);
    }
}

static int fp8_shape_ok(int out_dim, int in_dim, sl_err *err) {
    if (out_dim % 16 || in_dim % 16)
        return sl_errf(err, "CUDA backend: an FP8 linear layer of shape (%d, %d): cuBLASLt's "
                       "FP8 GEMM needs both dimensions to be multiples of 16 (use --dtype bf16)",
                       out_dim, in_dim);
    return 0;
}

// FP8: the codes are made on the host by cpu_quantize_weight_fp8 (the CPU
// backend's emulation, so both backends hold the same bytes), then uploaded
// with out_dim scales (a per-tensor scale replicated: the GEMM always scales
// per output channel).
static int cuda_load_linear_fp8_op(Backend *be, LinearWeight *w, const float *host,
                                   const float *bias, int out_dim, int in_dim,
                                   const Fp8Spec *spec, sl_err *err) {
    CudaImpl *c = impl_of(be);
    memset(w, 0, sizeof *w);
    if (out_dim <= 0 || in_dim <= 0)
        return sl_errf(err, "CUDA backend: linear layer of shape (%d, %d) is empty", out_dim,
                       in_dim);
    if (fp8_shape_ok(out_dim, in_dim, err)) return -1;
    w->fmt = WFMT_FP8_E4M3;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->scale_per_row = spec->w_scale ? 1 : spec->per_row;
    w->in_scale = spec->in_scale;
    size_t n = (size_t)out_dim * in_dim;
    uint8_t *q = sl_malloc(n);
    float *sc = sl_malloc(sizeof(float) * (size_t)out_dim);
    cpu_quantize_weight_fp8(q, sc, host, out_dim, in_dim, w->scale_per_row, spec->w_scale);
    if (!w->scale_per_row)
        for (int o = 1; o < out_dim; o++) sc[o] = sc[0];
    w->data = dev_alloc(n);
    CUDA_CHECK(cudaMemcpy(w->data, q, n, cudaMemcpyHostToDevice));
    w->scale = cuda_upload_f32_op(be, sc, (size_t)out_dim);
    free(q);
    free(sc);
    if (bias) {
        char *b = cuda_alloc_op(be, cuda_gemm_bias_bytes(out_dim));
        CUDA_CHECK(cudaMemcpy(b, bias, sizeof(float) * out_dim, cudaMemcpyHostToDevice));
        upload_bf16(c, (sl_bf16 *)(b + cuda_gemm_bias_bf16_offset(out_dim)), bias, out_dim);
        w->bias = b;
    }
    note_fp8_linear(c, out_dim, in_dim);
    return 0;
}

// Random FP8 weights for benchmarks: normal fp32 values generated on the
// device into a temporary buffer, quantised per output channel there.
static void cuda_random_linear_fp8_op(Backend *be, LinearWeight *w, int out_dim, int in_dim,
                                      uint64_t seed, float std, int per_tensor) {
    CudaImpl *c = impl_of(be);
    sl_err err = {{0}};
    if (fp8_shape_ok(out_dim, in_dim, &err)) SL_FATAL("sluice", err.msg, "random_linear_fp8");
    memset(w, 0, sizeof *w);
    w->fmt = WFMT_FP8_E4M3;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->scale_per_row = !per_tensor;
    w->in_scale = per_tensor ? FP8_BENCH_ACT_SCALE : 0.0f;
    size_t n = (size_t)out_dim * in_dim;
    float *tmp = dev_alloc(n * sizeof(float));
    w->data = dev_alloc(n);
    w->scale = dev_alloc(sizeof(float) * (size_t)out_dim);
    cuda_fill_normal_f32(tmp, n, seed, 0.0f, std, c->stream);
    // per tensor: one scale covering +-6 std for every row (so every row's
    // scale entry holds the tensor's); else each row's absmax / 448
    cuda_quantize_fp8_rows(w->data, w->scale, tmp, 1, out_dim, in_dim,
                           per_tensor ? 6.0f * std / 448.0f : 0.0f, c->stream);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    CUDA_CHECK(cudaFree(tmp));
    note_fp8_linear(c, out_dim, in_dim);
}

// Random weights for benchmarks: allocated in the weight format and filled
// on the device (no host traffic).
static void cuda_alloc_linear_op(Backend *be, LinearWeight *w, int out_dim, int in_dim) {
    CudaImpl *c = impl_of(be);
    memset(w, 0, sizeof *w);
    w->fmt = c->act_f32 ? WFMT_F32 : WFMT_BF16;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->data = dev_alloc((size_t)out_dim * in_dim * (c->act_f32 ? sizeof(float) : sizeof(sl_bf16)));
    if (out_dim > c->max_out_dim) {
        c->max_out_dim = out_dim;
        if (c->reserved) logits_buffers_size(c);
    }
}

static void note_linear(CudaImpl *c, const LinearWeight *w) {
    if (w->out_dim > c->max_out_dim) {
        c->max_out_dim = w->out_dim;
        if (c->reserved) logits_buffers_size(c);
    }
    if (w->fmt == WFMT_INT4 && (size_t)w->out_dim * w->in_dim > c->int4_max_elems)
        c->int4_max_elems = (size_t)w->out_dim * w->in_dim;
    if (w->fmt == WFMT_INT4 && w->out_dim > c->int4_max_out) c->int4_max_out = w->out_dim;
}

static void *dev_copy(const void *host, size_t bytes) {
    void *p = dev_alloc(bytes);
    CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return p;
}

// INT4 weights in sluice's layout (dq, ds, dz, device) -> w's own copy in the
// layout of the backend's kernels: the same buffers (v1, v2), or the v3 tiled
// copy (the inputs are freed). Synchronous: load time only.
static void int4_adopt(CudaImpl *c, LinearWeight *w, uint32_t *dq, uint16_t *ds, uint8_t *dz) {
    if (c->int4_gen != 3) {
        w->data = dq, w->scale = ds, w->zeros = dz;
        return;
    }
    int out = w->out_dim, in = w->in_dim, g = w->group_size;
    size_t ne = w4a16_v3_gelems(out, in, g);
    w->data = dev_alloc(sizeof(uint32_t) * w4a16_v3_qwords(out, in));
    w->scale = dev_alloc(sizeof(uint16_t) * ne);
    w->zeros = dz ? dev_alloc(ne) : NULL;
    // the inputs' copies from pageable memory (legacy stream) may still be in
    // flight: c->stream does not wait for them by itself
    CUDA_CHECK(cudaDeviceSynchronize());
    cuda_int4_repack_v3(w->data, w->scale, w->zeros, dq, ds, dz, out, in, g, c->stream);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    CUDA_CHECK(cudaFree(dq));
    CUDA_CHECK(cudaFree(ds));
    if (dz) CUDA_CHECK(cudaFree(dz));
}

// INT4 weights arrive already packed in sluice's layout (quant_awq.c): copied
// as they are, then tiled for the v3 kernels (int4_adopt).
static int cuda_load_linear_int4_op(Backend *be, LinearWeight *w, const uint32_t *qweight,
                                    const uint16_t *scales, const uint8_t *zeros,
                                    const float *bias, int out_dim, int in_dim, int group,
                                    sl_err *err) {
    CudaImpl *c = impl_of(be);
    memset(w, 0, sizeof *w);
    if (c->act_f32)
        return sl_errf(err, "CUDA backend: INT4 (AWQ) layers run with bf16 activations; "
                       "--dtype f32 cannot load them (use --dtype auto or bf16)");
    if (out_dim <= 0 || in_dim <= 0 || group <= 0 || group % 32 || in_dim % group)
        return sl_errf(err, "CUDA backend: INT4 linear layer (%d, %d) with group size %d: the "
                       "group must be a positive multiple of 32 dividing %d", out_dim, in_dim,
                       group, in_dim);
    size_t ng = (size_t)out_dim * (in_dim / group);
    w->fmt = WFMT_INT4;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->group_size = group;
    int4_adopt(c, w, dev_copy(qweight, sizeof(uint32_t) * (size_t)out_dim * (in_dim / 8)),
               dev_copy(scales, sizeof(uint16_t) * ng), zeros ? dev_copy(zeros, ng) : NULL);
    if (bias) {
        char *b = cuda_alloc_op(be, cuda_gemm_bias_bytes(out_dim));
        CUDA_CHECK(cudaMemcpy(b, bias, sizeof(float) * out_dim, cudaMemcpyHostToDevice));
        upload_bf16(c, (sl_bf16 *)(b + cuda_gemm_bias_bf16_offset(out_dim)), bias, out_dim);
        w->bias = b;
    }
    note_linear(c, w);
    return 0;
}

static void cuda_random_linear_int4_op(Backend *be, LinearWeight *w, int out_dim, int in_dim,
                                       int group, uint64_t seed, float scale) {
    CudaImpl *c = impl_of(be);
    memset(w, 0, sizeof *w);
    SL_CHECK(out_dim > 0 && group > 0 && group % 32 == 0 && in_dim % group == 0);
    size_t ng = (size_t)out_dim * (in_dim / group);
    w->fmt = WFMT_INT4;
    w->out_dim = out_dim;
    w->in_dim = in_dim;
    w->group_size = group;
    uint32_t *dq = dev_alloc(sizeof(uint32_t) * (size_t)out_dim * (in_dim / 8));
    uint16_t *ds = dev_alloc(sizeof(uint16_t) * ng);
    uint8_t *dz = dev_alloc(ng);
    cuda_int4_fill_random(dq, ds, dz, out_dim, in_dim, group, seed, scale, c->stream);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    int4_adopt(c, w, dq, ds, dz);
    note_linear(c, w);
}

static void cuda_fill_normal_op(Backend *be, void *dst, size_t n, int f32, uint64_t seed,
                                float mean, float std) {
    CudaImpl *c = impl_of(be);
    if (f32 || c->act_f32) cuda_fill_normal_f32(dst, n, seed, mean, std, c->stream);
    else cuda_fill_normal_bf16(dst, n, seed, mean, std, c->stream);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

// ----------------------------------------------------------------------------
// per-step buffers

// Ints of packed metadata for a step of at most T rows, S sequences and B
// blocks per sequence: tokens, pos, seq_of, slots (T each), seq_start (S+1),
// kv_len (S), block_tables (S*B), logit_rows (S).
static size_t meta_ints(int T, int S, int B) {
    return (size_t)4 * T + (S + 1) + S + (size_t)S * B + S;
}

// (Re)sizes the fp32 logits buffers for max_seqs rows of the widest layer
// seen so far. The LM head is loaded before model_kv_alloc calls reserve
// (model.c), so in practice this runs once, inside reserve.
static void logits_buffers_size(CudaImpl *c) {
    size_t need = (size_t)c->max_seqs * c->max_out_dim;
    if (need <= c->logits_cap) return;
    if (c->logits_dev) CUDA_CHECK(cudaFree(c->logits_dev));
    if (c->logits_pin) CUDA_CHECK(cudaFreeHost(c->logits_pin));
    c->logits_dev = dev_alloc(need * sizeof(float));
    c->logits_pin = pinned_alloc(need * sizeof(float));
    c->logits_cap = need;
}

// (Re)sizes the FP8 input scratch for max_tokens rows of the widest FP8 input.
static void qx_size(CudaImpl *c) {
    // only used where cuBLASLt lacks outer-vector scaling (see gemm.cu)
    cuda_gemm_reserve_fp8(c->gemm, (size_t)c->max_tokens * c->max_out_fp8);
    size_t need = (size_t)c->max_tokens * c->max_in_fp8;
    if (!c->max_in_fp8 || need <= c->qx_cap) return;
    if (c->qx) CUDA_CHECK(cudaFree(c->qx));
    if (c->qx_scales) CUDA_CHECK(cudaFree(c->qx_scales));
    c->qx = dev_alloc(need);
    c->qx_scales = dev_alloc(sizeof(float) * (size_t)c->max_tokens);
    c->qx_cap = need;
}

static void cuda_reserve_op(Backend *be, int max_tokens, int max_seqs, int max_seq_len,
                            int block_size, int n_heads, int head_dim) {
    CudaImpl *c = impl_of(be);
    SL_CHECK(max_tokens > 0 && max_seqs > 0 && max_seq_len > 0 && block_size > 0);
    int max_blocks = (max_seq_len + block_size - 1) / block_size;
    // A second reserve (another model on the same backend) only ever grows.
    if (c->reserved) {
        if (max_tokens < c->max_tokens) max_tokens = c->max_tokens;
        if (max_seqs < c->max_seqs) max_seqs = c->max_seqs;
        if (max_blocks < c->max_blocks) max_blocks = c->max_blocks;
    }
    CUDA_CHECK(cudaStreamSynchronize(c->stream));

    size_t mi = meta_ints(max_tokens, max_seqs, max_blocks);
    if (mi > c->meta_cap) {
        if (c->meta_dev) CUDA_CHECK(cudaFree(c->meta_dev));
        if (c->meta_host) CUDA_CHECK(cudaFreeHost(c->meta_host));
        c->meta_dev = dev_alloc(mi * sizeof(int32_t));
        c->meta_host = pinned_alloc(mi * sizeof(int32_t));
        c->meta_cap = mi;
    }
    size_t ws = cuda_attention_workspace_bytes(max_tokens, n_heads, head_dim,
                                               max_blocks * block_size);
    if (ws > c->attn_ws_bytes || !c->attn_ws) {
        if (c->attn_ws) CUDA_CHECK(cudaFree(c->attn_ws));
        c->attn_ws = dev_alloc(ws);
        c->attn_ws_bytes = ws;
    }
    c->max_tokens = max_tokens;
    c->max_seqs = max_seqs;
    c->max_blocks = max_blocks;
    c->reserved = 1;
    // decode graph buckets: 1, 2, 4, ... and the largest decode step
    int cap = max_seqs < max_tokens ? max_seqs : max_tokens;
    c->n_buckets = 0;
    for (int bsz = 1; bsz < cap && c->n_buckets < MAX_BUCKETS - 1; bsz *= 2)
        c->buckets[c->n_buckets++] = bsz;
    c->buckets[c->n_buckets++] = cap;
    for (int i = 0; i < MAX_BUCKETS; i++) // sizes changed: no graph is valid any more
        if (c->graphs[i].exec) {
            CUDA_CHECK(cudaGraphExecDestroy(c->graphs[i].exec));
            c->graphs[i].exec = NULL;
        }
    logits_buffers_size(c);
    // INT4 layers larger steps than the GEMV takes dequantise into this
    size_t se = max_tokens > c->gemv_max_n ? c->int4_max_elems : 0;
    if (se > c->int4_scratch_elems) {
        if (c->int4_scratch) CUDA_CHECK(cudaFree(c->int4_scratch));
        c->int4_scratch = dev_alloc(se * sizeof(sl_bf16));
        c->int4_scratch_elems = se;
    }
    // the tensor-core W4A16 GEMM's split-K partials (steps of gemv_max_n + 1
    // to mma_max_n rows; a bounded size, see cuda_w4a16_tc_workspace_floats)
    int mma_rows = max_tokens < c->mma_max_n ? max_tokens : c->mma_max_n;
    size_t wf = c->int4_gen == 1 || mma_rows <= c->gemv_max_n ? 0
                : c->int4_gen == 3 ? cuda_w4a16_v3_workspace_floats(mma_rows, c->int4_max_out)
                                   : cuda_w4a16_tc_workspace_floats(mma_rows, c->int4_max_out);
    if (wf > c->int4_ws_floats) {
        if (c->int4_ws) CUDA_CHECK(cudaFree(c->int4_ws));
        c->int4_ws = dev_alloc(wf * sizeof(float));
        c->int4_ws_floats = wf;
    }
    qx_size(c);
    if (!c->ids_pin) {
        c->ids_dev = dev_alloc(sizeof(int32_t) * (size_t)max_seqs);
        c->ids_pin = pinned_alloc(sizeof(int32_t) * (size_t)max_seqs);
    }
    // the upload staging is not needed once the weights are in
    if (c->stage) {
        CUDA_CHECK(cudaFreeHost(c->stage));
        c->stage = NULL;
    }
    LOGD("CUDA reserve: %d tokens, %d seqs, %d blocks/seq, attention workspace %.1f MiB, "
         "logits %d x %d",
         max_tokens, max_seqs, max_blocks, ws / 1048576.0, max_seqs, c->max_out_dim);
}

// Packs the host batch into the pinned buffer, copies it in one cudaMemcpyAsync
// and returns the device view. Also records the step's host-side sizes.
static const Batch *cuda_set_batch_op(Backend *be, const Batch *h) {
    CudaImpl *c = impl_of(be);
    if (!c->reserved) SL_FATAL("sluice", "CUDA backend: set_batch before reserve", "set_batch");
    if (h->n_tokens > c->max_tokens || h->n_seqs > c->max_seqs || h->n_logits > c->max_seqs ||
        h->max_blocks > c->max_blocks || h->n_tokens < 0 || h->n_seqs < 0 || h->n_logits < 0) {
        static char msg[256];
        snprintf(msg, sizeof msg,
                 "step of %d tokens, %d seqs, %d logits, %d blocks/seq exceeds the reserved "
                 "%d tokens, %d seqs, %d blocks/seq",
                 h->n_tokens, h->n_seqs, h->n_logits, h->max_blocks, c->max_tokens, c->max_seqs,
                 c->max_blocks);
        SL_FATAL("sluice", msg, "set_batch");
    }
    // The previous step's copy must have read meta_host before it is rewritten.
    CUDA_CHECK(cudaEventSynchronize(c->meta_copied));

    int T = h->n_tokens, S = h->n_seqs, B = h->max_blocks, L = h->n_logits;
    // A decode step (one row per sequence, every row sampled) runs as a graph
    // step: padded to its bucket with dummy sequences (token 0 at position 0,
    // slot -1 so no K/V is written, block table of block 0, which is only
    // read; their outputs are ignored), so that every size and every device
    // address of the step depends on the bucket alone.
    c->step_bucket = -1;
    int P = S; // rows after padding
    if (c->graph_mode && S > 0 && T == S && L == S) {
        for (int i = 0; i < c->n_buckets; i++)
            if (c->buckets[i] >= S) {
                c->step_bucket = i;
                P = c->buckets[i];
                break;
            }
    }
    c->step_blocks = B;
    int32_t *hp = c->meta_host;
    size_t off = 0;
    Batch *d = &c->batch;
    *d = *h;
    // PACK(field, count, padded count, value of padding entry k)
#define PACK(field, count, pcount, padv)                                              \
    do {                                                                              \
        size_t cnt_ = (size_t)(count), pc_ = (size_t)(pcount);                        \
        if (cnt_ && h->field) memcpy(hp + off, h->field, cnt_ * sizeof(int32_t));     \
        for (size_t k = cnt_; k < pc_; k++) hp[off + k] = (padv);                     \
        d->field = c->meta_dev + off;                                                 \
        off += pc_;                                                                   \
    } while (0)
    // Only a graph step is padded (there T == S == L); any other step packs
    // each array at its own length.
    const int g = c->step_bucket >= 0;
    PACK(tokens, T, g ? P : T, 0);
    PACK(pos, T, g ? P : T, 0);
    PACK(seq_of, T, g ? P : T, (int32_t)k);
    PACK(slots, T, g ? P : T, -1);
    PACK(seq_start, S + 1, g ? P + 1 : S + 1, (int32_t)k);
    PACK(kv_len, S, g ? P : S, 1);
    PACK(block_tables, (size_t)S * B, (size_t)(g ? P : S) * B, 0);
    PACK(logit_rows, L, g ? P : L, (int32_t)k);
#undef PACK
    if (P != S) d->n_tokens = d->n_seqs = d->n_logits = P;
    SL_CHECK(off <= c->meta_cap);
    if (off)
        CUDA_CHECK(cudaMemcpyAsync(c->meta_dev, hp, off * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaEventRecord(c->meta_copied, c->stream));

    int mk = 0;
    for (int s = 0; s < S; s++)
        if (h->kv_len[s] > mk) mk = h->kv_len[s];
    c->max_kv_len = c->step_bucket >= 0 ? -1 : mk;
    return d;
}

// ----------------------------------------------------------------------------
// ops: thin shims over the kernels' entry points, on the backend's stream

// Row copies move bytes: an fp32 row is 2*dim bf16-sized elements.
static void cuda_embed_op(Backend *be, void *out, const void *table, const Batch *b, int dim) {
    if (b->n_tokens <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_embed(out, table, b->tokens, b->n_tokens, c->act_f32 ? 2 * dim : dim, c->stream);
}

static void cuda_rmsnorm_op(Backend *be, void *out, const void *x, const void *w, int n, int dim,
                            float eps) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_rmsnorm_ex(out, NULL, NULL, (void *)x, NULL, w, n, dim, eps, c->act_f32, 0.0f,
                    c->stream);
}

static void cuda_add_rmsnorm_op(Backend *be, void *out, void *x, const void *r, const void *w,
                                int n, int dim, float eps) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_rmsnorm_ex(out, NULL, NULL, x, r, w, n, dim, eps, c->act_f32, 0.0f, c->stream);
}

// The model zoo's ops (LayerNorm, GELU, the residual add, partial rotary)
// take the activation type like the Llama ops, so --dtype f32 covers every
// family; the partial rotary also writes an FP8 KV cache.
static void cuda_layernorm_op(Backend *be, void *out, const void *x, const void *w,
                              const void *b, int n, int dim, float eps) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    // the plain form never writes x (it may run in place: out == x)
    cuda_layernorm_ex(out, (void *)x, NULL, w, b, n, dim, eps, c->act_f32, c->stream);
}

static void cuda_add_layernorm_op(Backend *be, void *out, void *x, const void *r, const void *w,
                                  const void *b, int n, int dim, float eps) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_layernorm_ex(out, x, r, w, b, n, dim, eps, c->act_f32, c->stream);
}

static void cuda_add_op(Backend *be, void *x, const void *r, size_t n) {
    CudaImpl *c = impl_of(be);
    cuda_add_ex(x, r, n, c->act_f32, c->stream);
}

static void cuda_gelu_op(Backend *be, void *out, const void *in, int n, int hidden, int gated,
                         int tanh_approx) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_gelu_ex(out, in, n, hidden, gated, tanh_approx, c->act_f32, c->stream);
}

// INT4: the GEMV for decode-sized steps, the tensor-core W4A16 GEMM for
// mid-size ones, else dequantise + cuBLASLt. bf16 activations only.
static void int4_linear(CudaImpl *c, void *y, const void *x, const LinearWeight *w, int n) {
    if (n <= 0) return;
    SL_CHECK(!c->act_f32);
    if (n <= c->gemv_max_n) {
        for (int i = 0; i < n; i += W4A16_GEMV_MAX_N) {
            int k = n - i < W4A16_GEMV_MAX_N ? n - i : W4A16_GEMV_MAX_N;
            sl_bf16 *yi = (sl_bf16 *)y + (size_t)i * w->out_dim;
            const sl_bf16 *xi = (const sl_bf16 *)x + (size_t)i * w->in_dim;
            if (c->int4_gen == 3)
                cuda_w4a16_gemv_v3(yi, xi, w->data, w->scale, w->zeros, w->bias, k, w->in_dim,
                                   w->out_dim, w->group_size, c->stream);
            else if (c->int4_gen == 2)
                cuda_w4a16_gemv_tc(yi, xi, w->data, w->scale, w->zeros, w->bias, k, w->in_dim,
                                   w->out_dim, w->group_size, c->stream);
            else
                cuda_w4a16_gemv(yi, xi, w->data, w->scale, w->zeros, w->bias, k, w->in_dim,
                                w->out_dim, w->group_size, c->stream);
        }
        return;
    }
    if (n <= c->mma_max_n && !((uintptr_t)x & 15)) {
        // v2 / v3: no split (ws NULL) if the call is larger than reserve planned for
        if (c->int4_gen == 3)
            cuda_w4a16_gemm_v3(y, x, w->data, w->scale, w->zeros, w->bias, n, w->in_dim,
                               w->out_dim, w->group_size, c->int4_ws, c->int4_ws_floats,
                               c->stream);
        else if (c->int4_gen == 2)
            cuda_w4a16_gemm_tc(y, x, w->data, w->scale, w->zeros, w->bias, n, w->in_dim,
                               w->out_dim, w->group_size, c->int4_ws, c->int4_ws_floats,
                               c->stream);
        else
            cuda_w4a16_gemm(y, x, w->data, w->scale, w->zeros, w->bias, n, w->in_dim,
                            w->out_dim, w->group_size, c->stream);
        return;
    }
    size_t elems = (size_t)w->out_dim * w->in_dim;
    if (elems > c->int4_scratch_elems)
        SL_FATAL("sluice", "INT4 layer larger than the dequantisation scratch sized in reserve",
                 "int4_linear");
    if (c->int4_gen == 3)
        cuda_int4_dequant_bf16_v3(c->int4_scratch, w->data, w->scale, w->zeros, w->out_dim,
                                  w->in_dim, w->group_size, c->stream);
    else
        cuda_int4_dequant_bf16(c->int4_scratch, w->data, w->scale, w->zeros, w->out_dim,
                               w->in_dim, w->group_size, c->stream);
    LinearWeight d = {.fmt = WFMT_BF16, .out_dim = w->out_dim, .in_dim = w->in_dim,
                      .data = c->int4_scratch, .bias = w->bias};
    cuda_gemm_linear_ex(c->gemm, y, GEMM_OUT_BF16, x, GEMM_IN_BF16, NULL, &d, n);
}

static GemmIn act_in(const CudaImpl *c) { return c->act_f32 ? GEMM_IN_F32 : GEMM_IN_BF16; }
static GemmOut act_out(const CudaImpl *c) { return c->act_f32 ? GEMM_OUT_F32 : GEMM_OUT_BF16; }

// x in the activation dtype. An FP8 layer's input is quantised into the
// scratch first (the attention output; the norms and SwiGLU emit FP8 themselves).
static void cuda_linear_op(Backend *be, void *y, const void *x, const LinearWeight *w, int n) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    if (w->fmt == WFMT_INT4) {
        int4_linear(c, y, x, w, n);
        return;
    }
    if (w->fmt == WFMT_FP8_E4M3) {
        SL_CHECK(c->qx && (size_t)n * w->in_dim <= c->qx_cap);
        cuda_quantize_fp8_rows(c->qx, c->qx_scales, x, c->act_f32, n, w->in_dim, w->in_scale,
                               c->stream);
        cuda_gemm_linear_ex(c->gemm, y, act_out(c), c->qx, GEMM_IN_FP8, c->qx_scales, w, n);
        return;
    }
    cuda_gemm_linear_ex(c->gemm, y, act_out(c), x, act_in(c), NULL, w, n);
}

// x as a *_q op wrote it for w: for FP8, codes then the row scales at
// backend_q_scale_offset(n, in_dim).
static void cuda_linear_q_op(Backend *be, void *y, const void *xq, const LinearWeight *w, int n) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    if (w->fmt != WFMT_FP8_E4M3) {
        cuda_linear_op(be, y, xq, w, n);
        return;
    }
    const float *xs = (const float *)((const char *)xq + backend_q_scale_offset(n, w->in_dim));
    cuda_gemm_linear_ex(c->gemm, y, act_out(c), xq, GEMM_IN_FP8, xs, w, n);
}

static void cuda_rmsnorm_q_op(Backend *be, void *out, const void *x, const void *w, int n,
                              int dim, float eps, const LinearWeight *next) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    if (next->fmt != WFMT_FP8_E4M3) {
        cuda_rmsnorm_op(be, out, x, w, n, dim, eps);
        return;
    }
    float *sc = (float *)((char *)out + backend_q_scale_offset(n, dim));
    cuda_rmsnorm_ex(NULL, out, sc, (void *)x, NULL, w, n, dim, eps, c->act_f32, next->in_scale,
                    c->stream);
}

static void cuda_add_rmsnorm_q_op(Backend *be, void *out, void *x, const void *r, const void *w,
                                  int n, int dim, float eps, const LinearWeight *next) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    if (next->fmt != WFMT_FP8_E4M3) {
        cuda_add_rmsnorm_op(be, out, x, r, w, n, dim, eps);
        return;
    }
    float *sc = (float *)((char *)out + backend_q_scale_offset(n, dim));
    cuda_rmsnorm_ex(NULL, out, sc, x, r, w, n, dim, eps, c->act_f32, next->in_scale, c->stream);
}

static void cuda_rope_kv_write_op(Backend *be, void *qkv, void *k_cache, void *v_cache,
                                  const Batch *b, const void *inv_freq, const AttnShape *s) {
    if (b->n_tokens <= 0) return;
    CudaImpl *c = impl_of(be);
    int rd = s->no_rotary ? 0 : s->rotary_dim > 0 ? s->rotary_dim : s->head_dim;
    if (rd != s->head_dim || s->rope_interleaved) { // partial / GPT-J / no rotary
        cuda_rope_kv_write_partial_ex(qkv, k_cache, v_cache, b->pos, b->slots, inv_freq,
                                      b->n_tokens, s->n_heads, s->n_kv_heads, s->head_dim,
                                      s->block_size, rd, s->rope_interleaved, c->act_f32,
                                      s->kv_fp8, s->k_scale, s->v_scale, c->stream);
    } else {
        cuda_rope_kv_write_ex(qkv, k_cache, v_cache, b->pos, b->slots, inv_freq, b->n_tokens,
                              s->n_heads, s->n_kv_heads, s->head_dim, s->block_size, c->act_f32,
                              s->kv_fp8, s->k_scale, s->v_scale, c->stream);
    }
}

static void cuda_attention_op(Backend *be, void *out, const void *qkv, const void *k_cache,
                              const void *v_cache, const Batch *b, const AttnShape *s) {
    CudaImpl *c = impl_of(be);
    if (b->n_tokens <= 0) return;
    // graph steps size the decode split-K by the context bound, not the step's
    // longest context: one graph serves every context length
    int mk = c->max_kv_len >= 0 ? c->max_kv_len : b->max_blocks * s->block_size;
    cuda_paged_attention_ex(out, qkv, k_cache, v_cache, b->pos, b->seq_of, b->seq_start,
                            b->kv_len, b->block_tables, b->max_blocks, b->n_tokens, b->n_seqs,
                            mk, s->n_heads, s->n_kv_heads, s->head_dim, s->block_size,
                            s->scale, c->act_f32, s->kv_fp8, s->k_scale, s->v_scale, s->window,
                            s->alibi, c->attn_ws, c->stream);
}

static void cuda_swiglu_op(Backend *be, void *out, const void *gu, int n, int hidden) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_swiglu_ex(out, NULL, NULL, gu, n, hidden, c->act_f32, 0.0f, c->stream);
}

static void cuda_swiglu_q_op(Backend *be, void *out, const void *gu, int n, int hidden,
                             const LinearWeight *next) {
    if (n <= 0) return;
    CudaImpl *c = impl_of(be);
    if (next->fmt != WFMT_FP8_E4M3) {
        cuda_swiglu_op(be, out, gu, n, hidden);
        return;
    }
    float *sc = (float *)((char *)out + backend_q_scale_offset(n, hidden));
    cuda_swiglu_ex(NULL, out, sc, gu, n, hidden, c->act_f32, next->in_scale, c->stream);
}

static void cuda_gather_rows_op(Backend *be, void *out, const void *x, const Batch *b, int dim) {
    if (b->n_logits <= 0) return;
    CudaImpl *c = impl_of(be);
    cuda_gather_rows(out, x, b->logit_rows, b->n_logits, c->act_f32 ? 2 * dim : dim, c->stream);
}

// fp32 GEMM into the device logits buffer, then back to the host. This is the
// step's one synchronisation point.
static void cuda_logits_op(Backend *be, float *logits_host, const void *x, const LinearWeight *w,
                           int n) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    size_t cnt = (size_t)n * w->out_dim;
    if (cnt > c->logits_cap) {
        static char msg[200];
        snprintf(msg, sizeof msg,
                 "logits (%d, %d) exceed the reserved buffer of %zu floats (reserve sizes it "
                 "from max_seqs and the widest layer loaded)",
                 n, w->out_dim, c->logits_cap);
        SL_FATAL("sluice", msg, "logits");
    }
    cuda_gemm_linear_ex(c->gemm, c->logits_dev, GEMM_OUT_F32, x, act_in(c), NULL, w, n);
    // A pinned destination can take the copy directly.
    struct cudaPointerAttributes pa;
    int pinned = cudaPointerGetAttributes(&pa, logits_host) == cudaSuccess &&
                 pa.type == cudaMemoryTypeHost;
    (void)cudaGetLastError(); // older runtimes flag unregistered pointers
    float *dst = pinned ? logits_host : c->logits_pin;
    CUDA_CHECK(cudaMemcpyAsync(dst, c->logits_dev, cnt * sizeof(float), cudaMemcpyDeviceToHost,
                               c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (!pinned) memcpy(logits_host, c->logits_pin, cnt * sizeof(float));
}

// ----------------------------------------------------------------------------
// life cycle

static void cuda_argmax_op(Backend *be, int32_t *ids_host, const void *x, const LinearWeight *w,
                           int n) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    SL_CHECK((size_t)n * w->out_dim <= c->logits_cap);
    cuda_gemm_linear_ex(c->gemm, c->logits_dev, GEMM_OUT_F32, x, act_in(c), NULL, w, n);
    // the ids go where the logits would: n ints at the start of the buffers
    cuda_argmax_rows((int32_t *)c->ids_dev, c->logits_dev, n, w->out_dim, c->stream);
    CUDA_CHECK(cudaMemcpyAsync(c->ids_pin, c->ids_dev, sizeof(int32_t) * n,
                               cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    memcpy(ids_host, c->ids_pin, sizeof(int32_t) * n);
}

// ----------------------------------------------------------------------------
// on-device sampling (kernels/cuda/sample.cu)

// Words of the result buffer: ids, logprobs, top ids, top logprobs, each a
// block of max_seqs rows, so the addresses do not depend on the step.
static size_t smp_out_words(const CudaImpl *c) {
    return (size_t)c->max_seqs * (2 + 2 * (size_t)c->smp_top_n);
}

static void smp_free(CudaImpl *c) {
    if (c->smp_counts) CUDA_CHECK(cudaFree(c->smp_counts));
    if (c->smp_rows_dev) CUDA_CHECK(cudaFree(c->smp_rows_dev));
    if (c->smp_rows_pin) CUDA_CHECK(cudaFreeHost(c->smp_rows_pin));
    if (c->smp_hist_dev) CUDA_CHECK(cudaFree(c->smp_hist_dev));
    if (c->smp_hist_pin) CUDA_CHECK(cudaFreeHost(c->smp_hist_pin));
    if (c->smp_out_dev) CUDA_CHECK(cudaFree(c->smp_out_dev));
    if (c->smp_out_pin) CUDA_CHECK(cudaFreeHost(c->smp_out_pin));
    c->smp_counts = NULL;
    c->smp_rows_dev = c->smp_rows_pin = NULL;
    c->smp_hist_dev = c->smp_hist_pin = NULL;
    c->smp_out_dev = c->smp_out_pin = NULL;
}

static void cuda_sample_reserve_op(Backend *be, int n_slots, int vocab, int max_hist, int top_n,
                                   int want_logprob) {
    CudaImpl *c = impl_of(be);
    if (!c->reserved) SL_FATAL("sluice", "CUDA backend: sample_reserve before reserve", "sample");
    SL_CHECK(vocab > 0 && vocab < (1 << 24) && top_n >= 0 && top_n <= SAMPLE_MAX_TOP_N &&
             n_slots >= 0 && max_hist >= 0);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    smp_free(c);
    c->smp_vocab = vocab;
    c->smp_top_n = top_n;
    c->smp_want_lp = want_logprob;
    c->smp_slots = n_slots;
    c->smp_max_hist = max_hist;
    size_t S = (size_t)c->max_seqs;
    if (n_slots > 0) c->smp_counts = cuda_alloc_op(be, (size_t)n_slots * vocab * sizeof(uint32_t));
    c->smp_rows_dev = dev_alloc(S * sizeof(SampleRow));
    c->smp_rows_pin = pinned_alloc(S * sizeof(SampleRow));
    size_t hw = S + 2 * (size_t)max_hist;
    c->smp_hist_dev = dev_alloc(hw * sizeof(int32_t));
    c->smp_hist_pin = pinned_alloc(hw * sizeof(int32_t));
    c->smp_out_dev = dev_alloc(smp_out_words(c) * sizeof(int32_t));
    c->smp_out_pin = pinned_alloc(smp_out_words(c) * sizeof(int32_t));
    // graphs captured before bake in the old buffers
    for (int i = 0; i < MAX_BUCKETS; i++)
        if (c->graphs[i].exec) {
            CUDA_CHECK(cudaGraphExecDestroy(c->graphs[i].exec));
            c->graphs[i].exec = NULL;
        }
    LOGD("CUDA sampling: %d history slots (%.1f MiB), top %d logprobs", n_slots,
         (double)n_slots * vocab * 4 / 1048576.0, top_n);
}

// Bucket size a step of n sampled rows is padded to (n when not a graph step).
static int smp_padded_rows(const CudaImpl *c, int n) {
    if (!c->graph_mode) return n;
    for (int i = 0; i < c->n_buckets; i++)
        if (c->buckets[i] >= n) return c->buckets[i];
    return n;
}

static void cuda_sample_prepare_op(Backend *be, const SampleRow *rows, int n,
                                   const SampleHistory *h) {
    CudaImpl *c = impl_of(be);
    if (!c->smp_rows_dev) SL_FATAL("sluice", "CUDA backend: sample_prepare before sample_reserve",
                                   "sample");
    SL_CHECK(n >= 0 && n <= c->max_seqs);
    // the previous staging copies must have read the pinned buffers
    CUDA_CHECK(cudaEventSynchronize(c->smp_staged));
    int P = smp_padded_rows(c, n);
    if (P > c->max_seqs) P = c->max_seqs;
    memcpy(c->smp_rows_pin, rows, sizeof(SampleRow) * n);
    for (int j = n; j < P; j++) { // padding rows of a graph step: greedy, no history
        SampleRow g = {0};
        g.top_p = 1.0f;
        g.repetition_penalty = 1.0f;
        g.slot = -1;
        c->smp_rows_pin[j] = g;
    }
    if (P > 0)
        CUDA_CHECK(cudaMemcpyAsync(c->smp_rows_dev, c->smp_rows_pin, sizeof(SampleRow) * P,
                                   cudaMemcpyHostToDevice, c->stream));
    c->smp_n = n;
    if (h && (h->n_reset || h->n_hist)) {
        if (!c->smp_counts)
            SL_FATAL("sluice", "CUDA backend: penalty history without history slots", "sample");
        SL_CHECK(h->n_reset <= c->max_seqs && h->n_hist <= c->smp_max_hist);
        int32_t *rs = c->smp_hist_pin, *hs = rs + c->max_seqs, *ht = hs + c->smp_max_hist;
        memcpy(rs, h->reset_slots, sizeof(int32_t) * h->n_reset);
        memcpy(hs, h->hist_slot, sizeof(int32_t) * h->n_hist);
        memcpy(ht, h->hist_tok, sizeof(int32_t) * h->n_hist);
        size_t words = (size_t)c->max_seqs + 2 * (size_t)c->smp_max_hist;
        CUDA_CHECK(cudaMemcpyAsync(c->smp_hist_dev, c->smp_hist_pin, words * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, c->stream));
        int32_t *drs = c->smp_hist_dev, *dhs = drs + c->max_seqs, *dht = dhs + c->smp_max_hist;
        cuda_sample_hist_update(c->smp_counts, c->smp_vocab, drs, h->n_reset, dhs,
                                (const uint32_t *)dht, h->n_hist, c->stream);
    }
    CUDA_CHECK(cudaEventRecord(c->smp_staged, c->stream));
}

// Logits GEMM, the sampling kernel and the copy of the results to pinned
// memory, all enqueued (and captured in a graph step); sample_wait waits.
static void cuda_sample_op(Backend *be, const void *x, const LinearWeight *w, int n) {
    CudaImpl *c = impl_of(be);
    if (n <= 0) return;
    SL_CHECK(w->out_dim == c->smp_vocab && (size_t)n * w->out_dim <= c->logits_cap &&
             n <= c->max_seqs);
    cuda_gemm_linear_ex(c->gemm, c->logits_dev, GEMM_OUT_F32, x, act_in(c), NULL, w, n);
    size_t S = (size_t)c->max_seqs, tn = (size_t)c->smp_top_n;
    int32_t *o = c->smp_out_dev;
    float *lp = c->smp_want_lp ? (float *)(o + S) : NULL;
    int32_t *ti = o + 2 * S;
    float *tl = (float *)(o + (2 + tn) * S);
    cuda_sample_rows(o, lp, ti, tl, c->smp_top_n, c->logits_dev, n, c->smp_vocab,
                     c->smp_rows_dev, c->smp_counts, c->stream);
    int32_t *hp = c->smp_out_pin;
    CUDA_CHECK(cudaMemcpyAsync(hp, o, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, c->stream));
    if (lp)
        CUDA_CHECK(cudaMemcpyAsync(hp + S, o + S, sizeof(float) * n, cudaMemcpyDeviceToHost,
                                   c->stream));
    if (tn) {
        CUDA_CHECK(cudaMemcpyAsync(hp + 2 * S, ti, sizeof(int32_t) * n * tn,
                                   cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK(cudaMemcpyAsync(hp + (2 + tn) * S, tl, sizeof(float) * n * tn,
                                   cudaMemcpyDeviceToHost, c->stream));
    }
}

static void cuda_sample_wait_op(Backend *be, const SampleOut *out, int n) {
    CudaImpl *c = impl_of(be);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (n <= 0) return;
    SL_CHECK(n <= c->max_seqs);
    size_t S = (size_t)c->max_seqs, tn = (size_t)c->smp_top_n;
    const int32_t *hp = c->smp_out_pin;
    memcpy(out->ids, hp, sizeof(int32_t) * n);
    if (out->logprobs && c->smp_want_lp) memcpy(out->logprobs, hp + S, sizeof(float) * n);
    if (out->top_ids && tn) {
        memcpy(out->top_ids, hp + 2 * S, sizeof(int32_t) * n * tn);
        memcpy(out->top_lps, hp + (2 + tn) * S, sizeof(float) * n * tn);
    }
}

// ----------------------------------------------------------------------------
// CUDA graphs of decode steps
//
// set_batch decides whether a step is a graph step (a decode step, padded to
// its bucket); graph_begin then replays the bucket's graph, or captures the
// step's ops (enqueued by the model between graph_begin and graph_end) and
// launches the new graph in graph_end. A graph bakes in the device addresses
// of the step metadata, the sampling buffers and the activations, all fixed
// at start-up, and the sizes of the bucket; the data it reads are copied in
// by set_batch and sample_prepare before the launch. The tensor-parallel
// all-reduce is captured with the rest (NCCL calls are capturable).

static int cuda_graph_begin_op(Backend *be) {
    CudaImpl *c = impl_of(be);
    c->capturing = -1;
    if (c->graph_mode != 1 || c->step_bucket < 0) return 0;
    DecodeGraph *g = &c->graphs[c->step_bucket];
    if (g->exec && g->blocks == c->step_blocks) {
        CUDA_CHECK(cudaGraphLaunch(g->exec, c->stream));
        c->graph_steps++;
        return 1;
    }
    if (g->exec) { // block-table width changed (another job's limits): capture again
        CUDA_CHECK(cudaGraphExecDestroy(g->exec));
        g->exec = NULL;
    }
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed));
    c->capturing = c->step_bucket;
    return 0;
}

static void cuda_graph_end_op(Backend *be) {
    CudaImpl *c = impl_of(be);
    if (c->capturing < 0) return;
    DecodeGraph *g = &c->graphs[c->capturing];
    c->capturing = -1;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (e == cudaSuccess) e = cudaGraphInstantiate(&g->exec, graph, 0);
    if (e != cudaSuccess) {
        static char msg[256];
        snprintf(msg, sizeof msg, "capturing the CUDA graph of a decode step failed: %s "
                 "(run with --cuda-graphs off to avoid graphs)", cudaGetErrorString(e));
        SL_FATAL("CUDA", msg, "cudaStreamEndCapture/cudaGraphInstantiate");
    }
    CUDA_CHECK(cudaGraphDestroy(graph));
    g->blocks = c->step_blocks;
    c->graph_captures++;
    LOGD("CUDA graph captured for decode bucket %d", c->buckets[(int)(g - c->graphs)]);
    CUDA_CHECK(cudaGraphLaunch(g->exec, c->stream));
    c->graph_steps++;
}

// Mode 0 also destroys the captured graphs: graphs that hold NCCL kernels
// must be gone before the NCCL communicator is finalised (cli_tp_detach).
static void cuda_set_graph_mode_op(Backend *be, int mode) {
    CudaImpl *c = impl_of(be);
    SL_CHECK(mode >= 0 && mode <= 2);
    c->graph_mode = mode;
    if (mode == 0) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        for (int i = 0; i < MAX_BUCKETS; i++)
            if (c->graphs[i].exec) {
                CUDA_CHECK(cudaGraphExecDestroy(c->graphs[i].exec));
                c->graphs[i].exec = NULL;
            }
    }
}

static void cuda_graph_stats_op(Backend *be, long *captured, long *replayed) {
    CudaImpl *c = impl_of(be);
    if (captured) *captured = c->graph_captures;
    if (replayed) *replayed = c->graph_steps;
}

static void *cuda_host_alloc_op(Backend *be, size_t bytes) { return pinned_alloc(bytes); }
static void cuda_host_free_op(Backend *be, void *p) {
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

static void cuda_destroy_op(Backend *be) {
    if (!be) return;
    CudaImpl *c = impl_of(be);
    if (c) {
        CUDA_CHECK(cudaSetDevice(c->device));
        if (c->stream) CUDA_CHECK(cudaStreamSynchronize(c->stream));
        cuda_gemm_destroy(c->gemm);
        if (c->stage) CUDA_CHECK(cudaFreeHost(c->stage));
        if (c->meta_host) CUDA_CHECK(cudaFreeHost(c->meta_host));
        if (c->meta_dev) CUDA_CHECK(cudaFree(c->meta_dev));
        if (c->meta_copied) CUDA_CHECK(cudaEventDestroy(c->meta_copied));
        if (c->attn_ws) CUDA_CHECK(cudaFree(c->attn_ws));
        if (c->int4_scratch) CUDA_CHECK(cudaFree(c->int4_scratch));
        if (c->int4_ws) CUDA_CHECK(cudaFree(c->int4_ws));
        if (c->logits_dev) CUDA_CHECK(cudaFree(c->logits_dev));
        if (c->logits_pin) CUDA_CHECK(cudaFreeHost(c->logits_pin));
        if (c->ids_dev) CUDA_CHECK(cudaFree(c->ids_dev));
        if (c->ids_pin) CUDA_CHECK(cudaFreeHost(c->ids_pin));
        if (c->qx) CUDA_CHECK(cudaFree(c->qx));
        if (c->qx_scales) CUDA_CHECK(cudaFree(c->qx_scales));
        smp_free(c);
        if (c->smp_staged) CUDA_CHECK(cudaEventDestroy(c->smp_staged));
        for (int i = 0; i < MAX_BUCKETS; i++)
            if (c->graphs[i].exec) CUDA_CHECK(cudaGraphExecDestroy(c->graphs[i].exec));
        if (c->stream) CUDA_CHECK(cudaStreamDestroy(c->stream));
        free(c);
    }
    free(be);
}

Backend *backend_cuda_create(int device, sl_err *err) {
    return backend_cuda_create_ex(device, 0, err);
}

Backend *backend_cuda_create_ex(int device, int act_f32, sl_err *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        sl_errf(err, "no usable CUDA device: %s", cudaGetErrorString(e));
        return NULL;
    }
    if (count == 0) {
        sl_errf(err, "no usable CUDA device: none found");
        return NULL;
    }
    // Ranks pass their node-local rank. When a launcher shows each task only
    // its own GPU(s) (srun --gpus-per-task), the index wraps onto those.
    if (device < 0) {
        sl_errf(err, "CUDA device %d does not exist", device);
        return NULL;
    }
    if (device >= count) {
        LOGD("device %d wraps to %d of the %d visible", device, device % count, count);
        device %= count;
    }
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        (void)cudaGetLastError();
        sl_errf(err, "CUDA device %d: %s", device, cudaGetErrorString(e));
        return NULL;
    }
    if (prop.major < 8) {
        sl_errf(err, "CUDA device %d (%s, compute capability %d.%d): sluice needs 8.0 or newer "
                "(bf16 tensor cores); its kernels are built for GPU_ARCH in the Makefile",
                device, prop.name, prop.major, prop.minor);
        return NULL;
    }

    const char *gen = getenv("SLUICE_INT4_KERNELS");
    if (gen && *gen && strcmp(gen, "v1") && strcmp(gen, "v2") && strcmp(gen, "v3")) {
        sl_errf(err, "SLUICE_INT4_KERNELS=%s: expected v1, v2 or v3 (default v3)", gen);
        return NULL;
    }

    sl_log_set_gpu(device);
    CudaImpl *c = sl_calloc(1, sizeof *c);
    c->device = device;
    c->act_f32 = act_f32;
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->meta_copied, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->smp_staged, cudaEventDisableTiming));
    c->step_bucket = c->capturing = -1;
    c->gemm = cuda_gemm_create(c->stream, 0);
    // SLUICE_INT4_GEMV_MAX_N: the largest step (rows) INT4 layers run through
    // the decode GEMV (in calls of up to 8 rows). 8 by default; tune per GPU
    // with the table of tests/test_gpu_int4 (SLUICE_GPU_BENCH=1).
    // SLUICE_INT4_MMA_MAX_N: up to this many rows, the tensor-core W4A16 GEMM;
    // above, dequantise to bf16 + cuBLASLt. 0 turns it off.
    // SLUICE_INT4_KERNELS=v3 (default) / v2 / v1: which generation of GEMV
    // and GEMM runs (w4a16_v3.cu on the tiled copy / w4a16_tc.cu on sluice's
    // layout / w4a16.cu + w4a16_mma.cu). Read once here: the weights' layout
    // follows it. v3 is the default since its GEMV's fast path (eighth
    // session, docs/INT4.md): 8B batch 1 326.5 tok/s against v2's 257.0 on
    // an H200.
    const char *kv = getenv("SLUICE_INT4_KERNELS");
    c->int4_gen = kv && strcmp(kv, "v1") == 0 ? 1 : kv && strcmp(kv, "v2") == 0 ? 2 : 3;
    c->gemv_max_n = W4A16_GEMV_MAX_N;
    const char *gm = getenv("SLUICE_INT4_GEMV_MAX_N");
    if (gm && atoi(gm) >= 0) c->gemv_max_n = atoi(gm);
    // 128 for both, measured on an H200 (test_gpu_int4, SLUICE_GPU_BENCH=1):
    // v2 crosses dequantise + cuBLASLt between n = 110 (6144 x 4096) and 150
    // (4096 x 4096); at 256 it is 1.5-1.7x slower, at 64 1.4-2x faster.
    c->mma_max_n = 128;
    const char *mm = getenv("SLUICE_INT4_MMA_MAX_N");
    if (mm && atoi(mm) >= 0) c->mma_max_n = atoi(mm);

    Backend *be = sl_calloc(1, sizeof *be);
    be->name = "cuda";
    be->act_bytes = act_f32 ? 4 : 2;
    be->kv_fp8_bytes = 1;
    be->impl = c;
    be->alloc = cuda_alloc_op;
    be->free = cuda_free_op;
    be->mem_free = cuda_mem_free_op;
    be->upload_f32 = cuda_upload_f32_op;
    be->upload_table = cuda_upload_table_op;
    be->load_linear = cuda_load_linear_op;
    be->load_linear_int4 = cuda_load_linear_int4_op;
    be->random_linear_int4 = cuda_random_linear_int4_op;
    be->load_linear_fp8 = cuda_load_linear_fp8_op;
    be->random_linear_fp8 = cuda_random_linear_fp8_op;
    be->reserve = cuda_reserve_op;
    be->alloc_linear = cuda_alloc_linear_op;
    be->fill_normal = cuda_fill_normal_op;
    be->set_batch = cuda_set_batch_op;
    be->embed = cuda_embed_op;
    be->rmsnorm = cuda_rmsnorm_op;
    be->add_rmsnorm = cuda_add_rmsnorm_op;
    be->layernorm = cuda_layernorm_op;
    be->add_layernorm = cuda_add_layernorm_op;
    be->add = cuda_add_op;
    be->gelu = cuda_gelu_op;
    be->linear = cuda_linear_op;
    be->rope_kv_write = cuda_rope_kv_write_op;
    be->attention = cuda_attention_op;
    be->swiglu = cuda_swiglu_op;
    be->rmsnorm_q = cuda_rmsnorm_q_op;
    be->add_rmsnorm_q = cuda_add_rmsnorm_q_op;
    be->swiglu_q = cuda_swiglu_q_op;
    be->linear_q = cuda_linear_q_op;
    be->gather_rows = cuda_gather_rows_op;
    be->logits = cuda_logits_op;
    be->argmax = cuda_argmax_op;
    be->sample_reserve = cuda_sample_reserve_op;
    be->sample_prepare = cuda_sample_prepare_op;
    be->sample = cuda_sample_op;
    be->sample_wait = cuda_sample_wait_op;
    be->graph_begin = cuda_graph_begin_op;
    be->graph_end = cuda_graph_end_op;
    be->set_graph_mode = cuda_set_graph_mode_op;
    be->graph_stats = cuda_graph_stats_op;
    be->host_alloc = cuda_host_alloc_op;
    be->host_free = cuda_host_free_op;
    be->destroy = cuda_destroy_op;
    LOGI("CUDA backend on %s, %.0f GiB%s", prop.name, prop.totalGlobalMem / 1073741824.0,
         act_f32 ? ", fp32 activations" : "");
    return be;
}

void *backend_cuda_stream(Backend *be) { return impl_of(be)->stream; }
