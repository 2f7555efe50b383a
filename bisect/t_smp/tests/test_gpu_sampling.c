// test_gpu_sampling.c: sampling on the device against the CPU twins.
//
// - cuda_argmax_rows vs cpu_argmax_rows on random logits: vocabularies not
//   multiples of the block (1, 7, 1000, 32000, 128256, 151936), many rows,
//   planted ties (the lowest index must win), NaN and -inf entries, all -inf
//   rows.
// - cuda_sample_hist_update vs cpu_sample_hist_update: the penalty count
//   tables must be identical (the device table is poisoned first; resets must
//   clear it).
// - cuda_sample_rows vs cpu_sample_rows (the reference sampler, src/sampling.c)
//   on vocabularies 7, 1000, 32003, 128257 with a different mix of
//   temperature / top-k / top-p / min-p / penalties / seed / step on every row,
//   planted ties, NaN, +-inf, an all -inf row: the same token on every row
//   except provable near-ties (the draw lands within 1e-9 of the kept mass of
//   a cumulative boundary between the two tokens, recomputed here from
//   scratch), chosen-token logprobs and top-n logprobs within 1e-3, top-n ids
//   identical. Again with logprobs off: the same tokens.
// - a population test: 1024 draws (steps 0..1023) of one request on one row,
//   GPU tokens == CPU tokens, so the GPU inherits the chi-square tests of the
//   CPU sampler (tests/test_sampling.c).
// Outputs are poisoned first. Skips without a GPU unless SLUICE_REQUIRE_GPU=1.
#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops_cpu.h"
#include "cpu/sample_cpu.h"
#include "cuda/ops_cuda.h"
#include "cuda/sample_cuda.h"
#include "gpu_testutil.h"
#include "sampling.h"
#include "testutil.h"


static void test_argmax_rows(void) {
    if (!tu_gpu_ready()) return;
    static const int vocabs[] = {1, 7, 1000, 32000, 128256, 151936};
    const int n = 67;
    uint64_t rng = 2024;
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        int V = vocabs[v];
        float *h = malloc(sizeof(float) * (size_t)n * V);
        for (size_t i = 0; i < (size_t)n * V; i++) h[i] = 4.0f * tu_rand_normal(&rng);
        for (int r = 0; r < n; r++) {
            float *row = h + (size_t)r * V;
            int a = (int)(tu_rand_u64(&rng) % V), b = (int)(tu_rand_u64(&rng) % V);
            if (r % 3 == 0) row[a] = row[b] = 100.0f;   // a tie at the top
            if (r % 5 == 1) row[a] = NAN;               // NaN never wins
            if (r % 7 == 2) row[b] = -INFINITY;
            if (r == n - 1)
                for (int j = 0; j < V; j++) row[j] = -INFINITY; // all -inf: token 0
        }
        int32_t *want = malloc(sizeof(int32_t) * n), *got = malloc(sizeof(int32_t) * n);
        cpu_argmax_rows(want, h, n, V);
        float *d;
        int32_t *dout;
        CU_ASSERT_FATAL(cudaMalloc((void **)&d, sizeof(float) * (size_t)n * V) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dout, sizeof(int32_t) * n) == cudaSuccess);
        cudaMemcpy(d, h, sizeof(float) * (size_t)n * V, cudaMemcpyHostToDevice);
        cudaMemset(dout, 0xff, sizeof(int32_t) * n);
        cuda_argmax_rows(dout, d, n, V, 0);
        CU_ASSERT_FATAL(cudaDeviceSynchronize() == cudaSuccess);
        cudaMemcpy(got, dout, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
        int bad = 0;
        for (int r = 0; r < n; r++)
            if (got[r] != want[r]) {
                if (bad++ < 5) fprintf(stderr, "  vocab %d row %d: got %d want %d\n", V, r, got[r], want[r]);
            }
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(want[n - 1], 0);
        cudaFree(d);
        cudaFree(dout);
        free(h);
        free(want);
        free(got);
    }
}

// ----------------------------------------------------------------------------
// sampling rows

typedef struct {
    float key;
    int32_t id;
    uint64_t q;
} TieCand;

static int tie_cmp(const void *pa, const void *pb) {
    const TieCand *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

// 1 when tokens a and b (the CPU's and the GPU's picks for this row) differ
// by a near-tie: recomputes sampling.c's candidate masses from the raw row,
// and checks that both are kept and that the draw target lies within 1e-9 of
// the kept mass of the cumulative boundary that separates them.
static int near_tie(const SampleRow *p, const float *raw, int V, const uint32_t *cnt, int32_t a,
                    int32_t b) {
    if (!(p->temperature > 0)) return 0; // greedy is exact
    float *l = malloc(sizeof(float) * V);
    memcpy(l, raw, sizeof(float) * V);
    if (p->slot >= 0) cpu_sample_penalties(p, l, V, cnt);
    float m = -INFINITY;
    for (int i = 0; i < V; i++) {
        if (isnan(l[i])) l[i] = -INFINITY;
        else if (l[i] == INFINITY) l[i] = FLT_MAX;
        if (l[i] > m) m = l[i];
    }
    TieCand *c = malloc(sizeof(TieCand) * V);
    for (int i = 0; i < V; i++) c[i] = (TieCand){l[i] == 0.0f ? 0.0f : l[i], i, 0};
    float vk = -INFINITY;
    int topk = p->top_k > 0 && p->top_k < V;
    if (topk) {
        qsort(c, V, sizeof *c, tie_cmp);
        vk = c[p->top_k - 1].key;
    }
    int bits = 0;
    while (bits < 62 && (1ll << bits) < V) bits++;
    double scale = ldexp(1.0, 63 - bits);
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (l[i] == -INFINITY || (topk && l[i] < vk)) continue;
        double e = exp(((double)l[i] - (double)m) / p->temperature);
        uint64_t q = (uint64_t)(e * scale);
        if (e < p->min_p || q == 0) continue;
        c[n++] = (TieCand){l[i] == 0.0f ? 0.0f : l[i], i, q};
    }
    qsort(c, n, sizeof *c, tie_cmp);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += c[i].q;
    if (p->top_p < 1.0f) {
        double bound = ceil((double)p->top_p * (double)total);
        uint64_t need = bound < 1 ? 1 : bound >= (double)total ? total : (uint64_t)bound;
        uint64_t cum = 0;
        for (int i = 0; i < n; i++) {
            cum += c[i].q;
            if (cum >= need) {
                n = i + 1;
                total = cum;
                break;
            }
        }
    }
    uint64_t target = (uint64_t)(sampling_uniform(p->seed, p->step) * (double)total);
    if (target >= total) target = total - 1;
    int pa = -1, pb = -1;
    uint64_t cum = 0, boundary = 0;
    for (int i = 0; i < n; i++) {
        cum += c[i].q;
        if (c[i].id == a) pa = i;
        if (c[i].id == b) pb = i;
        if ((pa >= 0) != (pb >= 0) && (i == pa || i == pb)) boundary = cum; // after the earlier one
    }
    int ok = pa >= 0 && pb >= 0 &&
             fabs((double)boundary - (double)target) <= 1e-9 * (double)total + 2.0;
    free(l);
    free(c);
    return ok;
}

// Row r's sampling settings: every combination turns up across the rows.
static SampleRow row_params(int r, int V, int n_slots) {
    static const float temps[] = {0.0f, 0.5f, 0.8f, 1.0f, 1.3f, 2.0f, 0.05f};
    static const float top_ps[] = {1.0f, 0.95f, 0.6f, 0.1f, 1.0f};
    static const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.3f};
    static const float reps[] = {1.0f, 1.3f, 0.8f};
    int top_ks[] = {0, 1, 3, 40, V + 5, 0, V - 1};
    SampleRow p = {0};
    p.temperature = temps[r % 7];
    p.top_k = top_ks[(r / 2) % 7];
    p.top_p = top_ps[(r / 3) % 5];
    p.min_p = min_ps[(r / 5) % 4];
    p.repetition_penalty = 1.0f;
    p.slot = -1;
    if (r % 3 == 0) {
        p.slot = (r / 3) % n_slots;
        p.repetition_penalty = reps[(r / 7) % 3];
        p.presence_penalty = r % 2 ? 0.5f : 0.0f;
        p.frequency_penalty = r % 4 == 3 ? 0.3f : r % 4 == 0 ? -0.2f : 0.0f;
    }
    p.seed = 1000u + (uint64_t)r * 7919u;
    p.step = (uint64_t)r * 3u;
    return p;
}

#define NS 6 // history slots

static void test_sample_rows(void) {
    if (!tu_gpu_ready()) return;
    static const int vocabs[] = {7, 1000, 32003, 128257};
    const int n = 57, top_n = 5;
    uint64_t rng = 77;
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        const int V = vocabs[v], tn = V < 10 ? 10 : top_n; // 10 > vocab 7: padding entries
        size_t nv = (size_t)n * V;
        float *raw = malloc(sizeof(float) * nv), *hc = malloc(sizeof(float) * nv);
        for (size_t i = 0; i < nv; i++) raw[i] = 3.0f * tu_rand_normal(&rng);
        for (int r = 0; r < n; r++) {
            float *row = raw + (size_t)r * V;
            int a = (int)(tu_rand_u64(&rng) % V), b = (int)(tu_rand_u64(&rng) % V);
            if (r % 4 == 0) row[a] = row[b] = 14.0f;   // a tie at the top
            if (r % 4 == 1) row[a] = -0.0f, row[b] = 0.0f; // +-0 compare equal
            if (r % 5 == 1) row[b] = NAN;
            if (r % 7 == 2) row[a] = -INFINITY;
            if (r == 10) row[a] = INFINITY;
            if (r == n - 1)
                for (int j = 0; j < V; j++) row[j] = -INFINITY;
        }
        // histories: prompt and generated ids, some repeated, some among the
        // row's best tokens so that the penalties change the outcome
        int nh = 400;
        int32_t resets[NS], *hs = malloc(sizeof(int32_t) * nh);
        uint32_t *ht = malloc(sizeof(uint32_t) * nh);
        for (int s2 = 0; s2 < NS; s2++) resets[s2] = s2;
        for (int i = 0; i < nh; i++) {
            hs[i] = i % NS;
            uint32_t id = (uint32_t)(tu_rand_u64(&rng) % (V < 50 ? V : 50));
            if (i % 3 == 0) id = (uint32_t)(tu_rand_u64(&rng) % V);
            ht[i] = id | (i % 2 ? SAMPLE_HIST_GEN : 0u);
        }
        hs[nh - 1] = -1; // ignored
        uint32_t *cnt = calloc((size_t)NS * V, sizeof(uint32_t));
        for (size_t i = 0; i < (size_t)NS * V; i++) cnt[i] = 0x12345u; // reset must clear
        cpu_sample_hist_update(cnt, V, resets, NS, hs, ht, nh);

        SampleRow *rows = malloc(sizeof(SampleRow) * n);
        for (int r = 0; r < n; r++) rows[r] = row_params(r, V, NS);

        // device inputs
        float *dl;
        uint32_t *dcnt, *dht;
        int32_t *dres, *dhs, *dids, *dtop;
        float *dlp, *dtlp;
        SampleRow *drows;
        CU_ASSERT_FATAL(cudaMalloc((void **)&dl, sizeof(float) * nv) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dcnt, sizeof(uint32_t) * NS * V) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dht, sizeof(uint32_t) * nh) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dres, sizeof(int32_t) * NS) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dhs, sizeof(int32_t) * nh) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dids, sizeof(int32_t) * n) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dtop, sizeof(int32_t) * n * tn) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dlp, sizeof(float) * n) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&dtlp, sizeof(float) * n * tn) == cudaSuccess);
        CU_ASSERT_FATAL(cudaMalloc((void **)&drows, sizeof(SampleRow) * n) == cudaSuccess);
        cudaMemset(dcnt, 0x5a, sizeof(uint32_t) * NS * V);
        cudaMemcpy(dht, ht, sizeof(uint32_t) * nh, cudaMemcpyHostToDevice);
        cudaMemcpy(dhs, hs, sizeof(int32_t) * nh, cudaMemcpyHostToDevice);
        cudaMemcpy(dres, resets, sizeof(int32_t) * NS, cudaMemcpyHostToDevice);
        cudaMemcpy(drows, rows, sizeof(SampleRow) * n, cudaMemcpyHostToDevice);
        cuda_sample_hist_update(dcnt, V, dres, NS, dhs, dht, nh, 0);
        CU_ASSERT_FATAL(cudaDeviceSynchronize() == cudaSuccess);
        uint32_t *gcnt = malloc(sizeof(uint32_t) * NS * V);
        cudaMemcpy(gcnt, dcnt, sizeof(uint32_t) * NS * V, cudaMemcpyDeviceToHost);
        CU_ASSERT_EQUAL(memcmp(gcnt, cnt, sizeof(uint32_t) * NS * V), 0);

        // CPU reference
        int32_t *cid = malloc(sizeof(int32_t) * n), *ctop = malloc(sizeof(int32_t) * n * tn);
        float *clp = malloc(sizeof(float) * n), *ctlp = malloc(sizeof(float) * n * tn);
        memcpy(hc, raw, sizeof(float) * nv);
        cpu_sample_rows(cid, clp, ctop, ctlp, tn, hc, n, V, rows, cnt);

        // GPU, outputs poisoned
        int32_t *gid = malloc(sizeof(int32_t) * n), *gtop = malloc(sizeof(int32_t) * n * tn);
        float *glp = malloc(sizeof(float) * n), *gtlp = malloc(sizeof(float) * n * tn);
        for (int pass = 0; pass < 2; pass++) { // 0: with logprobs; 1: tokens only
            cudaMemcpy(dl, raw, sizeof(float) * nv, cudaMemcpyHostToDevice);
            cudaMemset(dids, 0xff, sizeof(int32_t) * n);
            cudaMemset(dlp, 0xff, sizeof(float) * n);
            cudaMemset(dtop, 0xff, sizeof(int32_t) * n * tn);
            cudaMemset(dtlp, 0xff, sizeof(float) * n * tn);
            cuda_sample_rows(dids, pass ? NULL : dlp, dtop, dtlp, pass ? 0 : tn, dl, n, V, drows,
                             dcnt, 0);
            CU_ASSERT_FATAL(cudaDeviceSynchronize() == cudaSuccess);
            int32_t *ids_now = pass ? malloc(sizeof(int32_t) * n) : gid;
            cudaMemcpy(ids_now, dids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
            if (pass) {
                for (int r = 0; r < n; r++)
                    if (ids_now[r] != gid[r])
                        fprintf(stderr, "  vocab %d row %d: %d without logprobs, %d with\n", V,
                                r, ids_now[r], gid[r]);
                CU_ASSERT_EQUAL(memcmp(ids_now, gid, sizeof(int32_t) * n), 0);
                free(ids_now);
                continue;
            }
            cudaMemcpy(glp, dlp, sizeof(float) * n, cudaMemcpyDeviceToHost);
            cudaMemcpy(gtop, dtop, sizeof(int32_t) * n * tn, cudaMemcpyDeviceToHost);
            cudaMemcpy(gtlp, dtlp, sizeof(float) * n * tn, cudaMemcpyDeviceToHost);
        }
        int bad = 0, ties = 0, lpbad = 0, topbad = 0;
        for (int r = 0; r < n; r++) {
            const float *row = raw + (size_t)r * V;
            if (gid[r] != cid[r]) {
                if (near_tie(&rows[r], row, V, rows[r].slot >= 0 ? cnt + (size_t)rows[r].slot * V
                                                                 : NULL,
                             cid[r], gid[r])) {
                    ties++;
                    fprintf(stderr, "  vocab %d row %d: near-tie %d (cpu) vs %d (gpu)\n", V, r,
                            cid[r], gid[r]);
                } else if (bad++ < 8) {
                    fprintf(stderr, "  vocab %d row %d: got %d want %d (T %g k %d p %g minp %g "
                                    "slot %d)\n",
                            V, r, gid[r], cid[r], rows[r].temperature, rows[r].top_k,
                            rows[r].top_p, rows[r].min_p, rows[r].slot);
                }
                continue; // logprobs of different tokens do not compare
            }
            int same_inf = isinf(clp[r]) && clp[r] == glp[r];
            if (!same_inf && !(fabsf(glp[r] - clp[r]) <= 1e-3f)) {
                if (lpbad++ < 5)
                    fprintf(stderr, "  vocab %d row %d: logprob %g want %g\n", V, r, glp[r],
                            clp[r]);
            }
            for (int j = 0; j < tn; j++) {
                size_t at = (size_t)r * tn + j;
                int ok = gtop[at] == ctop[at] &&
                         ((isinf(ctlp[at]) && ctlp[at] == gtlp[at]) ||
                          fabsf(gtlp[at] - ctlp[at]) <= 1e-3f);
                if (!ok && topbad++ < 5)
                    fprintf(stderr, "  vocab %d row %d top %d: (%d, %g) want (%d, %g)\n", V, r, j,
                            gtop[at], gtlp[at], ctop[at], ctlp[at]);
            }
        }
        if (ties) printf("  vocab %d: %d near-tie(s) of %d rows\n", V, ties, n);
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT(ties <= 1);
        CU_ASSERT_EQUAL(lpbad, 0);
        CU_ASSERT_EQUAL(topbad, 0);
        CU_ASSERT_EQUAL(cid[n - 1], 0); // all -inf: token 0
        CU_ASSERT_EQUAL(gid[n - 1], 0);

        cudaFree(dl), cudaFree(dcnt), cudaFree(dht), cudaFree(dres), cudaFree(dhs);
        cudaFree(dids), cudaFree(dtop), cudaFree(dlp), cudaFree(dtlp), cudaFree(drows);
        free(raw), free(hc), free(hs), free(ht), free(cnt), free(gcnt), free(rows);
        free(cid), free(ctop), free(clp), free(ctlp), free(gid), free(gtop), free(glp), free(gtlp);
    }
}

// 1024 draws of one request (steps 0..1023, one row each): the GPU's tokens
// are the CPU's, so the GPU sampler has the CPU sampler's statistics.
static void test_sample_population(void) {
    if (!tu_gpu_ready()) return;
    const int V = 1000, n = 1024;
    uint64_t rng = 5;
    float *one = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++) one[i] = 2.0f * tu_rand_normal(&rng);
    float *raw = malloc(sizeof(float) * (size_t)n * V);
    SampleRow *rows = malloc(sizeof(SampleRow) * n);
    for (int r = 0; r < n; r++) {
        memcpy(raw + (size_t)r * V, one, sizeof(float) * V);
        SampleRow p = {0};
        p.temperature = 0.9f;
        p.top_p = r < n / 2 ? 1.0f : 0.8f;
        p.top_k = r % 3 == 0 ? 50 : 0;
        p.min_p = r % 5 == 0 ? 0.01f : 0.0f;
        p.repetition_penalty = 1.0f;
        p.slot = -1;
        p.seed = 42;
        p.step = (uint64_t)r;
        rows[r] = p;
    }
    int32_t *cid = malloc(sizeof(int32_t) * n), *gid = malloc(sizeof(int32_t) * n);
    float *d;
    int32_t *dids;
    SampleRow *drows;
    CU_ASSERT_FATAL(cudaMalloc((void **)&d, sizeof(float) * (size_t)n * V) == cudaSuccess);
    CU_ASSERT_FATAL(cudaMalloc((void **)&dids, sizeof(int32_t) * n) == cudaSuccess);
    CU_ASSERT_FATAL(cudaMalloc((void **)&drows, sizeof(SampleRow) * n) == cudaSuccess);
    cudaMemcpy(d, raw, sizeof(float) * (size_t)n * V, cudaMemcpyHostToDevice);
    cudaMemcpy(drows, rows, sizeof(SampleRow) * n, cudaMemcpyHostToDevice);
    cudaMemset(dids, 0xff, sizeof(int32_t) * n);
    cpu_sample_rows(cid, NULL, NULL, NULL, 0, raw, n, V, rows, NULL);
    cuda_sample_rows(dids, NULL, NULL, NULL, 0, d, n, V, drows, NULL, 0);
    CU_ASSERT_FATAL(cudaDeviceSynchronize() == cudaSuccess);
    cudaMemcpy(gid, dids, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
    int bad = 0, distinct = 0;
    char *seen = calloc(V, 1);
    for (int r = 0; r < n; r++) {
        if (gid[r] != cid[r] && bad++ < 5)
            fprintf(stderr, "  draw %d: got %d want %d\n", r, gid[r], cid[r]);
        if (cid[r] >= 0 && cid[r] < V && !seen[cid[r]]) seen[cid[r]] = 1, distinct++;
    }
    CU_ASSERT(bad <= 1); // at most one near-tie in 1024 draws
    CU_ASSERT(distinct > 20); // it does sample
    cudaFree(d), cudaFree(dids), cudaFree(drows);
    free(one), free(raw), free(rows), free(cid), free(gid), free(seen);
}

int main(void) {
    static const tu_test t[] = {{"argmax_rows_vs_cpu", test_argmax_rows},
                                {"sample_rows_vs_cpu", test_sample_rows},
                                {"sample_population_vs_cpu", test_sample_population},
                                {NULL, NULL}};
    tu_suite("gpu_sampling", t);
    return tu_main();
}
