// gemm.cu: the linear layers (y = x @ W^T + b) through cuBLASLt.
//
// Row-major to cuBLASLt's column-major: a row-major (r, c) matrix is the
// column-major (c, r) matrix with the same bytes. So with W (out, in), x (n,
// in) and y (n, out) all row-major:
//   A = W  seen as col-major (in x out), ld = in, transa = T -> op(A) (out x in)
//   B = x  seen as col-major (in x n),   ld = in, transb = N
//   D = y  seen as col-major (out x n),  ld = out = op(A) @ B
// This "TN" form is also the only one Hopper's FP8 GEMMs accept, so FP8
// weights can reuse the same layouts with e4m3 types and scale pointers.
//
// Choosing an algorithm (cublasLtMatmulAlgoGetHeuristic) costs far more than
// a small GEMM, so it is done once per shape and cached together with the
// descriptors in a small open-addressing hash map; a step only sets the bias
// pointer and calls cublasLtMatmul.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// common.h (through gemm.h) has no extern "C" guard of its own yet: its
// functions (sl_fatal, sl_calloc) are C symbols, so include it as C.
extern "C" {
#include "gemm.h"
}
#include "ops_cuda.h"

// The cuBLAS member of the check family (see cuda_common.h).
#define CUBLAS_CHECK(stmt)                                                       \
    do {                                                                         \
        cublasStatus_t s_ = (stmt);                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                         \
            SL_FATAL("cuBLAS", cublasLtGetStatusString(s_), #stmt);              \
    } while (0)

// ----------------------------------------------------------------------------
// the algorithm cache

// What makes two GEMMs need a different plan. align is the smallest power of
// two (<= 256) that divides every pointer of the call: cuBLASLt's kernels
// assume the alignment the heuristic was told about.
typedef struct {
    int n, out, in;
    int ytype;    // GemmOut
    int has_bias;
    int fmt;      // WeightFormat (implies the input type)
    int align;
    int scalar;   // FP8 with one weight scale and one activation scale (static):
                  // cuBLASLt's per-tensor scale pointers, no outer vectors
} GemmKey;

typedef struct {
    GemmKey key;
    int used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
    int fp8;      // scale pointers are set per call
    int fallback; // FP8 without outer-vector scaling: fp32 out, scales applied after
} GemmPlan;

struct cuda_gemm {
    cublasLtHandle_t lt;
    cudaStream_t stream;
    void *workspace;       // device, ws_bytes
    size_t ws_bytes;
    GemmPlan *plans;       // open addressing, linear probing; cap is a power of 2
    int cap, count;
    float *fb;             // FP8 fallback's fp32 products, made with the first fallback plan
    size_t fb_cap;         // floats allocated
    size_t fb_want;        // floats to allocate then (cuda_gemm_reserve_fp8)
};

static uint64_t key_hash(const GemmKey *k) {
    // FNV-1a over the key's ints; good enough for a few hundred entries.
    const int v[8] = {k->n, k->out, k->in, k->ytype, k->has_bias, k->fmt, k->align, k->scalar};
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 8; i++) {
        h ^= (uint32_t)v[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int key_eq(const GemmKey *a, const GemmKey *b) {
    return a->n == b->n && a->out == b->out && a->in == b->in && a->ytype == b->ytype &&
           a->has_bias == b->has_bias && a->fmt == b->fmt && a->align == b->align &&
           a->scalar == b->scalar;
}

// Slot of key k in the table: the matching entry or the empty slot to fill.
static GemmPlan *plan_slot(GemmPlan *plans, int cap, const GemmKey *k) {
    size_t i = key_hash(k) & (size_t)(cap - 1);
    while (plans[i].used && !key_eq(&plans[i].key, k)) i = (i + 1) & (size_t)(cap - 1);
    return &plans[i];
}

// Doubles the table (keeps the load factor under 1/2).
static void plans_grow(cuda_gemm *g) {
    int ncap = g->cap ? g->cap * 2 : 64;
    GemmPlan *np = (GemmPlan *)sl_calloc((size_t)ncap, sizeof *np);
    for (int i = 0; i < g->cap; i++)
        if (g->plans[i].used) *plan_slot(np, ncap, &g->plans[i].key) = g->plans[i];
    free(g->plans);
    g->plans = np;
    g->cap = ncap;
}

static int ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a & (uintptr_t)(al - 1))) al >>= 1;
    return al;
}

static const char *fmt_name(int fmt) {
    switch (fmt) {
    case WFMT_F32: return "f32";
    case WFMT_BF16: return "bf16";
    case WFMT_FP8_E4M3: return "fp8-e4m3";
    case WFMT_INT4: return "int4";
    default: return "unknown";
    }
}

// Creates p's descriptors for k (fast_accum: FP8's faster, less exact
// accumulation, tried first); returns the heuristic's verdict in *found.
// fallback: FP8 with unit scales into fp32 (no bias), scaled afterwards.
static void plan_try(cuda_gemm *g, GemmPlan *p, const GemmKey *k, int fast_accum, int fallback,
                     int *found, cublasLtMatmulHeuristicResult_t *res) {
    cudaDataType_t wt = CUDA_R_16BF, xt = CUDA_R_16BF;
    if (k->fmt == WFMT_F32) wt = xt = CUDA_R_32F;
    if (k->fmt == WFMT_FP8_E4M3) wt = xt = CUDA_R_8F_E4M3;
    cudaDataType_t yt = k->ytype == GEMM_OUT_F32 || fallback ? CUDA_R_32F : CUDA_R_16BF;
    int has_bias = k->has_bias && !fallback;
    // CUBLAS_COMPUTE_32F with fp32 inputs is true fp32: TF32 only ever comes
    // from CUBLAS_COMPUTE_32F_FAST_TF32, which sluice never asks for.
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    p->fp8 = k->fmt == WFMT_FP8_E4M3;
    p->fallback = fallback;
    if (p->fp8 && !fallback) {
        // per-output-channel weight scales (A's outer dimension) and per-token
        // activation scales (B's outer dimension); with per-tensor weights and a
        // static activation scale, the classic per-tensor scale pointers
        if (!k->scalar) {
            int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                                                        &mode, sizeof mode));
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                                                        &mode, sizeof mode));
        }
        int8_t fa = (int8_t)fast_accum;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa,
                                                    sizeof fa));
    }
    if (has_bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                    sizeof epi));
        // the bias is stored in the output's type (see cuda_gemm_bias_bf16_offset)
        // (fp32 bias with a bf16 output is refused by the heuristic: "an
        // unsupported value", seen with CUDA 13.0 on an H200)
        int32_t bt = (int32_t)yt;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                    &bt, sizeof bt));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, wt, (uint64_t)k->in, (uint64_t)k->out, k->in));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, xt, (uint64_t)k->in, (uint64_t)k->n, k->in));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, yt, (uint64_t)k->out, (uint64_t)k->n, k->out));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = g->ws_bytes;
    uint32_t al = (uint32_t)k->align;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &al, sizeof al));

    *found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g->lt, p->op, p->a, p->b, p->d, p->d, pref,
                                                       1, res, found);
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (st != CUBLAS_STATUS_SUCCESS) *found = 0; // e.g. NOT_SUPPORTED: try the next variant
}

static void plan_release(GemmPlan *p);
static void fb_alloc(cuda_gemm *g);

// Builds the descriptors for k and asks the heuristic for the best algorithm
// that fits the workspace and the alignment. FP8 tries fast accumulation
// first (what FP8 inference engines use on Hopper; SLUICE_FP8_FAST_ACCUM=0
// turns it off), then the exact one.
static void plan_build(cuda_gemm *g, GemmPlan *p, const GemmKey *k) {
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    const char *fa_env = getenv("SLUICE_FP8_FAST_ACCUM");
    int fast_first = k->fmt == WFMT_FP8_E4M3 && !(fa_env && fa_env[0] == '0');
    int tried = 0;
    for (int attempt = fast_first ? 0 : 1; attempt < 2 && found < 1; attempt++, tried++) {
        if (tried) plan_release(p);
        plan_try(g, p, k, attempt == 0, 0, &found, &res);
    }
    if (found < 1 && k->fmt == WFMT_FP8_E4M3) {
        // no outer-vector scaling here: unit-scale FP8 GEMM into fp32, then
        // cuda_fp8_scale_rows applies both scales and the bias (one more pass)
        plan_release(p);
        plan_try(g, p, k, 0, 1, &found, &res);
        if (found >= 1) fb_alloc(g);
        if (found >= 1)
            LOGW("cuBLASLt has no outer-vector-scaled FP8 GEMM for (%d, %d, %d): using the "
                 "fp32 + rescale fallback", k->n, k->out, k->in);
    }
    if (found < 1) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "no cuBLASLt algorithm for y (%d, %d) %s = x (%d, %d) @ W^T (%s)%s, alignment %d"
                 " (FP8 needs in/out multiples of 16 and cuBLAS 12.9+ outer-vector scaling)",
                 k->n, k->out, k->ytype == GEMM_OUT_F32 ? "f32" : "bf16", k->n, k->in,
                 fmt_name(k->fmt), k->has_bias ? " + bias" : "", k->align);
        SL_FATAL("cuBLAS", msg, "cublasLtMatmulAlgoGetHeuristic");
    }
    p->algo = res.algo;
    p->key = *k;
    p->used = 1;
}

static void plan_release(GemmPlan *p) {
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->d);
    cublasLtMatmulDescDestroy(p->op);
}

// ----------------------------------------------------------------------------
// public entry points

extern "C" cuda_gemm *cuda_gemm_create(cudaStream_t stream, size_t workspace_bytes) {
    cuda_gemm *g = (cuda_gemm *)sl_calloc(1, sizeof *g);
    g->stream = stream;
    g->ws_bytes = workspace_bytes ? workspace_bytes : CUDA_GEMM_WORKSPACE_BYTES;
    CUBLAS_CHECK(cublasLtCreate(&g->lt));
    CUDA_CHECK(cudaMalloc(&g->workspace, g->ws_bytes));
    plans_grow(g);
    return g;
}

// Allocates the fallback scratch (fb_want floats) if it is smaller.
static void fb_alloc(cuda_gemm *g) {
    if (g->fb_want <= g->fb_cap) return;
    if (g->fb) CUDA_CHECK(cudaFree(g->fb));
    CUDA_CHECK(cudaMalloc(&g->fb, g->fb_want * sizeof(float)));
    g->fb_cap = g->fb_want;
}

extern "C" void cuda_gemm_reserve_fp8(cuda_gemm *g, size_t floats) {
    if (floats > g->fb_want) g->fb_want = floats;
    if (g->fb) fb_alloc(g); // already in use: keep it big enough
}

extern "C" void cuda_gemm_destroy(cuda_gemm *g) {
    if (!g) return;
    if (g->fb) CUDA_CHECK(cudaFree(g->fb));
    for (int i = 0; i < g->cap; i++)
        if (g->plans[i].used) plan_release(&g->plans[i]);
    free(g->plans);
    if (g->workspace) CUDA_CHECK(cudaFree(g->workspace));
    CUBLAS_CHECK(cublasLtDestroy(g->lt));
    free(g);
}

extern "C" int cuda_gemm_cache_size(const cuda_gemm *g) { return g->count; }

extern "C" void cuda_gemm_linear(cuda_gemm *g, void *y, GemmOut ytype, const sl_bf16 *x,
                                 const LinearWeight *w, int n) {
    cuda_gemm_linear_ex(g, y, ytype, x, GEMM_IN_BF16, NULL, w, n);
}

extern "C" void cuda_gemm_linear_ex(cuda_gemm *g, void *y, GemmOut ytype, const void *x,
                                    GemmIn xtype, const float *x_scales, const LinearWeight *w,
                                    int n) {
    if (n <= 0) return;
    int ok = (w->fmt == WFMT_BF16 && xtype == GEMM_IN_BF16) ||
             (w->fmt == WFMT_F32 && xtype == GEMM_IN_F32 && ytype == GEMM_OUT_F32) ||
             (w->fmt == WFMT_FP8_E4M3 && xtype == GEMM_IN_FP8 && x_scales && w->scale);
    if (!ok) {
        // INT4: a dequantising GEMM kernel, not here yet.
        char msg[200];
        snprintf(msg, sizeof msg, "weight format %s (%d) with input type %d and output %s is "
                 "not supported by the CUDA GEMM", fmt_name(w->fmt), (int)w->fmt, (int)xtype,
                 ytype == GEMM_OUT_F32 ? "f32" : "bf16");
        SL_FATAL("sluice", msg, "cuda_gemm_linear_ex");
    }
    const void *bias = NULL;
    if (w->bias)
        bias = ytype == GEMM_OUT_F32
                   ? w->bias
                   : (const void *)((const char *)w->bias + cuda_gemm_bias_bf16_offset(w->out_dim));

    int al = ptr_align(y);
    int ax = ptr_align(x), aw = ptr_align(w->data);
    if (ax < al) al = ax;
    if (aw < al) al = aw;
    if (bias && ptr_align(bias) < al) al = ptr_align(bias);
    // every row of x shares one scale when the activation scale is static
    int scalar = w->fmt == WFMT_FP8_E4M3 && !w->scale_per_row && w->in_scale > 0.0f;
    GemmKey k = {n, w->out_dim, w->in_dim, (int)ytype, bias != NULL, (int)w->fmt, al, scalar};

    GemmPlan *p = plan_slot(g->plans, g->cap, &k);
    if (!p->used) {
        if (2 * (g->count + 1) > g->cap) {
            plans_grow(g);
            p = plan_slot(g->plans, g->cap, &k);
        }
        plan_build(g, p, &k);
        g->count++;
    }
    // (the fallback's plan has no bias epilogue: cuda_fp8_scale_rows adds the
    // bias, and cuBLASLt refuses a bias pointer there, "unsupported value")
    if (bias && !p->fallback)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof bias));
    if (p->fallback) {
        if ((size_t)n * w->out_dim > g->fb_cap) {
            char msg[160];
            snprintf(msg, sizeof msg, "FP8 fallback GEMM needs %zu floats of scratch, %zu "
                     "reserved (cuda_gemm_reserve_fp8)", (size_t)n * w->out_dim, g->fb_cap);
            SL_FATAL("sluice", msg, "cuda_gemm_linear_ex");
        }
        const float one = 1.0f, zero = 0.0f;
        CUBLAS_CHECK(cublasLtMatmul(g->lt, p->op, &one, w->data, p->a, x, p->b, &zero, g->fb,
                                    p->d, g->fb, p->d, &p->algo, g->workspace, g->ws_bytes,
                                    g->stream));
        cuda_fp8_scale_rows(y, ytype == GEMM_OUT_F32, g->fb, x_scales, (const float *)w->scale,
                            (const float *)w->bias, n, w->out_dim, g->stream);
        return;
    }
    if (p->fp8) {
        const void *as = w->scale, *bs = x_scales;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                    &as, sizeof as));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                    &bs, sizeof bs));
    }
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(g->lt, p->op, &alpha, w->data, p->a, x, p->b, &beta, y, p->d, y,
                                p->d, &p->algo, g->workspace, g->ws_bytes, g->stream));
}
