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
//
// Autotuning. The heuristic's first choice is an estimate, and it ranks
// the candidates by their speed at full clock. A prefill-heavy job runs the
// GPU at its power limit, where the SM clock settles 20-25% lower and the
// candidates rank differently: on an H200 (tests/gpu/gemm_power_probe.cu,
// random data, 2.5 s of back-to-back GEMMs each) the first choice for the
// 8B gate/up projection in FP8 (192x192 tiles) was the fastest in a burst
// from idle and 8% slower than 168x128 / 176x128 tiles under sustained load.
// So a new plan for n >= SLUICE_GEMM_TUNE_MIN_N rows (default 1024; smaller
// GEMMs are short, decode-sized, and gain less than timing costs) asks for
// up to 8 candidates and times them on the call's own buffers under load:
// the context's first timing runs ~100 ms of GEMMs to bring the clock down,
// then the candidates take turns (3 rounds of 2 runs each, CUDA events on
// the context's stream), so each sees the same clock, and the lowest total
// wins. Running candidates on the real buffers is harmless: every call has
// beta = 0, so the real call that follows overwrites y (or the fallback's
// scratch). Candidates that fail to launch are skipped; the real call still
// dies with the usual message if it fails. Timing waits for the stream (a
// host synchronisation), once per tuned plan.
// Prefill steps see many distinct n, each a plan of its own, so the winners
// are also kept per size bucket (tune_bucket): a new plan whose bucket has a
// winner takes it without timing, once cublasLtMatmulAlgoCheck accepts it
// for the new sizes and it fits the workspace.
// While the stream is being captured into a CUDA graph nothing is timed and
// nothing waits: a plan first made then takes its bucket's winner if there
// is one, else the heuristic's first choice, and keeps it.
// Default: on for FP8 weights, off otherwise (SLUICE_GEMM_TUNE=1 / 0 turns
// it on / off for all). Same-run A/B on H200s, Llama-3.1-8B shape: FP8
// 2048/128 +1.5-1.8% end to end on two machines, FP8 128/128 +0.3%; BF16
// -0.6% at 2048/128 and -0.4% at 128/128 (noise level; docs/PERF.md, tenth
// session). The timing costs ~0.1-0.2 s per weight shape and bucket inside
// the job (`sluice bench` warms up first, outside its timing). Another
// algorithm sums in another order (tile shape, split-K), so a tuned run can
// differ in the last bits from an untuned one, and, since timings are noisy,
// between tuned runs.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <limits.h>
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

// How a plan's algorithm was chosen.
enum { PLAN_HEURISTIC = 0, PLAN_TIMED, PLAN_REUSED };

// Descriptor variants of one key (plan_build's attempts): a winner only
// serves plans of its own variant.
enum { VARIANT_FAST_ACCUM = 0, VARIANT_EXACT, VARIANT_FALLBACK };

typedef struct {
    GemmKey key;
    int used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
    int fp8;      // scale pointers are set per call
    int fallback; // FP8 without outer-vector scaling: fp32 out, scales applied after
    int variant;  // VARIANT_*
    int tuned;    // PLAN_*
    int rank;     // the algorithm's place in the heuristic's list (0: its first
                  // choice); a reused winner's rank where it was timed
} GemmPlan;

// Up to this many heuristic candidates are timed per tuned plan (the H200
// sweep found the best within the top 8). Timing (plan_tune): a warm-up of
// GEMM_TUNE_WARM_MS of back-to-back GEMMs, then GEMM_TUNE_ROUNDS rounds in
// which each candidate runs GEMM_TUNE_RUNS times in a row.
#define GEMM_TUNE_CANDIDATES 8
#define GEMM_TUNE_RUNS 2
#define GEMM_TUNE_ROUNDS 3
#define GEMM_TUNE_WARM_MS 100.0f
#define GEMM_TUNE_EVENTS (GEMM_TUNE_CANDIDATES * GEMM_TUNE_ROUNDS + 1)

// A timed winner, shared by the plans of its size bucket.
typedef struct {
    GemmKey key; // key.n is the bucket (tune_bucket)
    int variant;
    int rank;
    cublasLtMatmulAlgo_t algo;
} GemmWinner;

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
    int tune;              // SLUICE_GEMM_TUNE: 1 on, 0 off, -1 unset (FP8 plans only)
    int tune_min_n;        // SLUICE_GEMM_TUNE_MIN_N (1024)
    int tuned, reused;     // plans chosen by timing / by their bucket's winner
    int warmed;            // the first timing's warm-up is done
    // the heuristic's candidates for the plan plan_build just made
    cublasLtMatmulHeuristicResult_t cand[GEMM_TUNE_CANDIDATES];
    int ncand;
    // Winners: a plain array searched linearly. It is only looked at when a
    // plan is made (which already costs a heuristic query) and holds a few
    // entries per weight shape and bucket.
    GemmWinner *wins;
    int nwins, wins_cap;
    cudaEvent_t ev[GEMM_TUNE_EVENTS]; // made with the first timing
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
// accumulation, tried first); returns the heuristic's best `want` (<=
// GEMM_TUNE_CANDIDATES) algorithms in res, best first, and their number in
// *found. fallback: FP8 with unit scales into fp32 (no bias), scaled
// afterwards.
static void plan_try(cuda_gemm *g, GemmPlan *p, const GemmKey *k, int fast_accum, int fallback,
                     int want, int *found, cublasLtMatmulHeuristicResult_t *res) {
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
                                                       want, res, found);
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (st != CUBLAS_STATUS_SUCCESS) *found = 0; // e.g. NOT_SUPPORTED: try the next variant
}

static void plan_release(GemmPlan *p);
static void fb_alloc(cuda_gemm *g);

// Whether a plan for k times its candidates: n of at least tune_min_n rows,
// and SLUICE_GEMM_TUNE=1, or unset and an FP8 weight (the one case where
// timing paid end to end; see the top of the file).
static int tune_on(const cuda_gemm *g, const GemmKey *k) {
    if (k->n < g->tune_min_n) return 0;
    return g->tune == 1 || (g->tune < 0 && k->fmt == WFMT_FP8_E4M3);
}

// Builds the descriptors for k and asks the heuristic for the best algorithm
// that fits the workspace and the alignment. FP8 tries fast accumulation
// first (what FP8 inference engines use on Hopper; SLUICE_FP8_FAST_ACCUM=0
// turns it off), then the exact one. p->algo is the heuristic's first choice
// of the first variant that has one; when the plan may be tuned, its other
// candidates are left in g->cand for plan_tune.
static void plan_build(cuda_gemm *g, GemmPlan *p, const GemmKey *k) {
    cublasLtMatmulHeuristicResult_t *res = g->cand;
    int found = 0;
    int want = tune_on(g, k) ? GEMM_TUNE_CANDIDATES : 1;
    const char *fa_env = getenv("SLUICE_FP8_FAST_ACCUM");
    int fast_first = k->fmt == WFMT_FP8_E4M3 && !(fa_env && fa_env[0] == '0');
    int tried = 0, attempt = fast_first ? 0 : 1;
    for (; attempt < 2; attempt++, tried++) {
        if (tried) plan_release(p);
        plan_try(g, p, k, attempt == 0, 0, want, &found, res);
        if (found >= 1) break;
    }
    p->variant = attempt == 0 ? VARIANT_FAST_ACCUM : VARIANT_EXACT;
    if (found < 1 && k->fmt == WFMT_FP8_E4M3) {
        // no outer-vector scaling here: unit-scale FP8 GEMM into fp32, then
        // cuda_fp8_scale_rows applies both scales and the bias (one more pass)
        plan_release(p);
        plan_try(g, p, k, 0, 1, want, &found, res);
        p->variant = VARIANT_FALLBACK;
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
    p->algo = res[0].algo;
    p->tuned = PLAN_HEURISTIC;
    p->rank = 0;
    g->ncand = found;
    p->key = *k;
    p->used = 1;
}

// ----------------------------------------------------------------------------
// autotuning (see the top of the file)

// The size bucket whose plans share a timed winner. What makes an algorithm
// fast is how its tiles cover (out, n) in waves over the SMs and how split-K
// divides `in`, so a winner carries over to nearby n but not across sizes
// that differ by a large factor. Buckets: powers of two up to 1024 rows
// (reached only with a lower SLUICE_GEMM_TUNE_MIN_N, where n varies by large
// factors), then n rounded up to a multiple of 1024 (so 1025..2048 share one
// winner, 7168..8192 another: at most 7 timings per weight shape and plan
// variant for a max_tokens of 8192), then 8 buckets per doubling above 8192
// (steps of 1/8 of n's power of two, so n within 12.5%) so that a very large
// max_tokens adds buckets only logarithmically. Returned as the bucket's
// largest n.
static int tune_bucket(int n) {
    if (n <= 1024) {
        int b = 1;
        while (b < n) b <<= 1;
        return b;
    }
    int step = 1024;
    while (step <= n / 16) step *= 2; // max(1024, (largest power of two <= n) / 8)
    int q = (n - 1) / step + 1;
    return q > INT_MAX / step ? INT_MAX : q * step;
}

static GemmWinner *winner_find(cuda_gemm *g, const GemmKey *bk, int variant) {
    for (int i = 0; i < g->nwins; i++)
        if (g->wins[i].variant == variant && key_eq(&g->wins[i].key, bk)) return &g->wins[i];
    return NULL;
}

// Enqueues `runs` GEMMs with algo on p's descriptors and pointers (alpha 1,
// beta 0); 0 when cuBLASLt refuses the algorithm.
static int run_candidate(cuda_gemm *g, GemmPlan *p, const cublasLtMatmulAlgo_t *algo,
                         const void *a, const void *b, void *d, int runs) {
    const float one = 1.0f, zero = 0.0f;
    for (int r = 0; r < runs; r++)
        if (cublasLtMatmul(g->lt, p->op, &one, a, p->a, b, p->b, &zero, d, p->d, d, p->d, algo,
                           g->workspace, g->ws_bytes, g->stream) != CUBLAS_STATUS_SUCCESS)
            return 0;
    return 1;
}

// Chooses the algorithm of the plan just made (p, its candidates in g->cand),
// called before its first real call with that call's pointers, every scale
// and bias pointer already set on p->op: a = W, b = x, d = y (the fallback's
// scratch for a fallback plan). Keeps the heuristic's first choice when
// tuning is off, n is small, or the stream is being captured.
static void plan_tune(cuda_gemm *g, GemmPlan *p, const void *a, const void *b, void *d) {
    const GemmKey *k = &p->key;
    if (!tune_on(g, k)) return;
    GemmKey bk = *k;
    bk.n = tune_bucket(k->n);
    GemmWinner *win = winner_find(g, &bk, p->variant);
    if (win) {
        // the winner was timed for another n: cuBLASLt must accept it for this
        // one (an algorithm's tile and split-K limits depend on the sizes)
        cublasLtMatmulHeuristicResult_t chk;
        memset(&chk, 0, sizeof chk);
        if (cublasLtMatmulAlgoCheck(g->lt, p->op, p->a, p->b, p->d, p->d, &win->algo, &chk) ==
                CUBLAS_STATUS_SUCCESS &&
            chk.workspaceSize <= g->ws_bytes) {
            p->algo = win->algo;
            p->tuned = PLAN_REUSED;
            p->rank = win->rank;
            g->reused++;
            return;
        }
    }
    if (g->ncand < 2) return; // nothing to choose from
    // Never time (launch extra work, wait) while the stream is being captured:
    // the runs would become part of the graph and waiting is illegal there.
    // An error (the legacy stream while another stream captures) counts as
    // capturing.
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(g->stream, &cs) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    if (cs != cudaStreamCaptureStatusNone) return;
    if (!g->ev[0])
        for (int i = 0; i < GEMM_TUNE_EVENTS; i++) CUDA_CHECK(cudaEventCreate(&g->ev[i]));
    // Sustained load, not a burst: a prefill-heavy job runs the GPU at its
    // power limit, with the SM clock well below its maximum, and the
    // candidates rank differently there (gemm_power_probe on an H200: the
    // heuristic's first choice for the 8B gate/up projection was fastest in
    // a burst from idle and 8% slower than another tile shape once the clock
    // had settled). So: one launch of each candidate (drops the ones cuBLASLt
    // refuses; loads their kernels), GEMM_TUNE_WARM_MS of the first one to
    // bring the clock down to where the job runs, then rounds in which the
    // candidates take turns, so that each sees the same clock.
    int ok[GEMM_TUNE_CANDIDATES], nok = 0, first = -1;
    for (int i = 0; i < g->ncand; i++) {
        const cublasLtMatmulHeuristicResult_t *c = &g->cand[i];
        ok[i] = c->state == CUBLAS_STATUS_SUCCESS && c->workspaceSize <= g->ws_bytes &&
                run_candidate(g, p, &c->algo, a, b, d, 1);
        if (ok[i] && first < 0) first = i;
        nok += ok[i];
    }
    if (nok == 0) return; // none ran: the real call reports why
    CUDA_CHECK(cudaEventRecord(g->ev[0], g->stream));
    run_candidate(g, p, &g->cand[first].algo, a, b, d, 2);
    CUDA_CHECK(cudaEventRecord(g->ev[1], g->stream));
    CUDA_CHECK(cudaEventSynchronize(g->ev[1]));
    float ms2 = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms2, g->ev[0], g->ev[1]));
    // The first timing of the context warms up; later ones come while the
    // job keeps the GPU busy, its clock already where the load puts it.
    if (!g->warmed) {
        int warm = ms2 > 0.0f ? (int)(GEMM_TUNE_WARM_MS / (ms2 / 2)) + 1 : 1;
        if (warm > 4096) warm = 4096;
        run_candidate(g, p, &g->cand[first].algo, a, b, d, warm);
        g->warmed = 1;
    }
    CUDA_CHECK(cudaEventRecord(g->ev[0], g->stream));
    int ne = 1;
    for (int r = 0; r < GEMM_TUNE_ROUNDS; r++)
        for (int i = 0; i < g->ncand; i++) {
            if (!ok[i]) continue;
            run_candidate(g, p, &g->cand[i].algo, a, b, d, GEMM_TUNE_RUNS);
            CUDA_CHECK(cudaEventRecord(g->ev[ne++], g->stream));
        }
    CUDA_CHECK(cudaEventSynchronize(g->ev[ne - 1]));
    float tot[GEMM_TUNE_CANDIDATES] = {0};
    ne = 1;
    for (int r = 0; r < GEMM_TUNE_ROUNDS; r++)
        for (int i = 0; i < g->ncand; i++) {
            if (!ok[i]) continue;
            float ms = 0.0f;
            CUDA_CHECK(cudaEventElapsedTime(&ms, g->ev[ne - 1], g->ev[ne]));
            tot[i] += ms;
            ne++;
        }
    int best = -1;
    float best_ms = 0.0f;
    const float scale = 1.0f / (GEMM_TUNE_ROUNDS * GEMM_TUNE_RUNS);
    for (int i = 0; i < g->ncand; i++)
        if (ok[i] && (best < 0 || tot[i] < best_ms)) best = i, best_ms = tot[i];
    best_ms *= scale;
    const float first_ms = tot[first] * scale;
    p->algo = g->cand[best].algo;
    p->tuned = PLAN_TIMED;
    p->rank = best;
    g->tuned++;
    int tile = -1;
    size_t wr = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&p->algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile,
                                         &wr);
    LOGD("GEMM y (%d, %d) = x @ W^T (in %d, %s): candidate %d of %d (tile id %d), %.3f ms "
         "(first choice %.3f ms, sustained load)", k->n, k->out, k->in, fmt_name(k->fmt), best,
         g->ncand, tile, best_ms, first_ms);
    if (!win) {
        if (g->nwins == g->wins_cap) {
            g->wins_cap = g->wins_cap ? 2 * g->wins_cap : 32;
            g->wins = (GemmWinner *)sl_realloc(g->wins, (size_t)g->wins_cap * sizeof *g->wins);
        }
        win = &g->wins[g->nwins++];
        win->key = bk;
        win->variant = p->variant;
    }
    // (an existing winner that failed the check above is replaced)
    win->rank = best;
    win->algo = p->algo;
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
    const char *tune = getenv("SLUICE_GEMM_TUNE");
    g->tune = !tune || !*tune ? -1 : strcmp(tune, "1") == 0 ? 1 : 0;
    if (tune && *tune && strcmp(tune, "0") && strcmp(tune, "1"))
        LOGW("SLUICE_GEMM_TUNE=%s is neither 0 nor 1: tuning off", tune);
    g->tune_min_n = 1024;
    const char *min_n = getenv("SLUICE_GEMM_TUNE_MIN_N");
    if (min_n && *min_n) {
        char *end = NULL;
        long v = strtol(min_n, &end, 10);
        if (*end == '\0' && v >= 1 && v <= INT_MAX)
            g->tune_min_n = (int)v;
        else
            LOGW("SLUICE_GEMM_TUNE_MIN_N=%s is not a row count >= 1: using %d", min_n,
                 g->tune_min_n);
    }
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
    free(g->wins);
    for (int i = 0; i < GEMM_TUNE_EVENTS; i++)
        if (g->ev[i]) CUDA_CHECK(cudaEventDestroy(g->ev[i]));
    if (g->workspace) CUDA_CHECK(cudaFree(g->workspace));
    CUBLAS_CHECK(cublasLtDestroy(g->lt));
    free(g);
}

extern "C" int cuda_gemm_cache_size(const cuda_gemm *g) { return g->count; }
extern "C" int cuda_gemm_tuned_count(const cuda_gemm *g) { return g->tuned; }
extern "C" int cuda_gemm_reused_count(const cuda_gemm *g) { return g->reused; }

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
    int fresh = !p->used; // a new plan: plan_tune picks its algorithm below
    if (fresh) {
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
        if (fresh) plan_tune(g, p, w->data, x, g->fb);
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
    if (fresh) plan_tune(g, p, w->data, x, y);
    // beta = 0 always (plan_tune relies on it: its runs leave nothing behind)
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(g->lt, p->op, &alpha, w->data, p->a, x, p->b, &beta, y, p->d, y,
                                p->d, &p->algo, g->workspace, g->ws_bytes, g->stream));
}
