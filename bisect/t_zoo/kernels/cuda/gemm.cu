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
    int fmt;      // WeightFormat
    int align;
} GemmKey;

typedef struct {
    GemmKey key;
    int used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} GemmPlan;

struct cuda_gemm {
    cublasLtHandle_t lt;
    cudaStream_t stream;
    void *workspace;       // device, ws_bytes
    size_t ws_bytes;
    GemmPlan *plans;       // open addressing, linear probing; cap is a power of 2
    int cap, count;
};

static uint64_t key_hash(const GemmKey *k) {
    // FNV-1a over the key's ints; good enough for a few hundred entries.
    const int v[7] = {k->n, k->out, k->in, k->ytype, k->has_bias, k->fmt, k->align};
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 7; i++) {
        h ^= (uint32_t)v[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int key_eq(const GemmKey *a, const GemmKey *b) {
    return a->n == b->n && a->out == b->out && a->in == b->in && a->ytype == b->ytype &&
           a->has_bias == b->has_bias && a->fmt == b->fmt && a->align == b->align;
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

// Builds the descriptors for k and asks the heuristic for the best algorithm
// that fits the workspace and the alignment.
static void plan_build(cuda_gemm *g, GemmPlan *p, const GemmKey *k) {
    cudaDataType_t wt = CUDA_R_16BF, xt = CUDA_R_16BF;
    cudaDataType_t yt = k->ytype == GEMM_OUT_F32 ? CUDA_R_32F : CUDA_R_16BF;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (k->has_bias) {
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

    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(g->lt, p->op, p->a, p->b, p->d, p->d, pref, 1,
                                                &res, &found));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (found < 1) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "no cuBLASLt algorithm for y (%d, %d) %s = x (%d, %d) @ W^T (%s)%s, alignment %d",
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

extern "C" void cuda_gemm_destroy(cuda_gemm *g) {
    if (!g) return;
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
    if (n <= 0) return;
    if (w->fmt != WFMT_BF16) {
        // FP8: the same plan with CUDA_R_8F_E4M3 for A, x quantised to e4m3
        // per row, CUBLASLT_MATMUL_DESC_{A,B}_SCALE_POINTER set per call.
        // INT4: a dequantising GEMM kernel. Neither exists yet.
        char msg[160];
        snprintf(msg, sizeof msg, "weight format %s (%d) is not supported by the CUDA GEMM yet "
                 "(only bf16)", fmt_name(w->fmt), (int)w->fmt);
        SL_FATAL("sluice", msg, "cuda_gemm_linear");
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
    GemmKey k = {n, w->out_dim, w->in_dim, (int)ytype, bias != NULL, (int)w->fmt, al};

    GemmPlan *p = plan_slot(g->plans, g->cap, &k);
    if (!p->used) {
        if (2 * (g->count + 1) > g->cap) {
            plans_grow(g);
            p = plan_slot(g->plans, g->cap, &k);
        }
        plan_build(g, p, &k);
        g->count++;
    }
    if (bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof bias));
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(g->lt, p->op, &alpha, w->data, p->a, x, p->b, &beta, y, p->d, y,
                                p->d, &p->algo, g->workspace, g->ws_bytes, g->stream));
}
