// test_sampling.c: tests of the CPU sampler (src/sampling.c).
//
// Expected values never come from the sampler itself: penalties are checked
// against hand-derived numbers and a plain O(vocab * history) double loop;
// distributions against a separate double-precision reference that sorts the
// whole vocabulary and applies the filters one by one (ref_probs below);
// draws against a sequential double inverse CDF over that sorted order. The
// statistical tests use a chi-square goodness-of-fit at p = 0.001 and carry a
// negative control showing that they do reject a wrong distribution.
// stddef.h first: sampling.h uses size_t without including it (reported).
#include <stddef.h>

#include "sampling.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// independent references (double precision, full sort, no cleverness)

typedef struct {
    float l;
    int id;
} RefItem;

static int ref_cmp(const void *pa, const void *pb) {
    const RefItem *a = pa, *b = pb;
    if (a->l != b->l) return a->l > b->l ? -1 : 1;
    return a->id - b->id;
}

// order[0..V): ids by descending logit, ties by ascending id.
static void ref_order(const float *l, int V, int *order) {
    RefItem *it = malloc(sizeof *it * V);
    for (int i = 0; i < V; i++) it[i] = (RefItem){l[i], i};
    qsort(it, V, sizeof *it, ref_cmp);
    for (int i = 0; i < V; i++) order[i] = it[i].id;
    free(it);
}

// The final sampling distribution over already-penalised logits, following
// the documented rules literally: softmax(l / T); min-p (p < min_p * p_max
// dropped, on the full distribution); top-k (logit >= k-th largest); top-p
// over the survivors, walking the sorted order; renormalise. prob[i] = 0 for
// dropped tokens. Returns the number of tokens kept.
static int ref_probs(const float *l, int V, const SamplingParams *p, double *prob) {
    int *order = malloc(sizeof *order * V);
    double *sm = malloc(sizeof *sm * V);
    char *keep = malloc(V);
    ref_order(l, V, order);
    double T = p->temperature, M = l[order[0]], z = 0;
    for (int i = 0; i < V; i++) z += (sm[i] = exp(((double)l[i] - M) / T));
    double pmax = 0;
    for (int i = 0; i < V; i++) {
        sm[i] /= z;
        if (sm[i] > pmax) pmax = sm[i];
        keep[i] = 1;
    }
    if (p->min_p > 0)
        for (int i = 0; i < V; i++)
            if (sm[i] < (double)p->min_p * pmax) keep[i] = 0;
    if (p->top_k > 0 && p->top_k < V) {
        float kth = l[order[p->top_k - 1]];
        for (int i = 0; i < V; i++)
            if (l[i] < kth) keep[i] = 0;
    }
    if (p->top_p < 1) {
        double zk = 0, cum = 0;
        for (int i = 0; i < V; i++)
            if (keep[i]) zk += sm[i];
        for (int r = 0; r < V; r++) {
            int id = order[r];
            if (!keep[id]) continue;
            if (cum < (double)p->top_p * zk) cum += sm[id];
            else keep[id] = 0;
        }
    }
    double zf = 0;
    int kept = 0;
    for (int i = 0; i < V; i++)
        if (keep[i]) zf += sm[i], kept++;
    for (int i = 0; i < V; i++) prob[i] = keep[i] ? sm[i] / zf : 0.0;
    free(order);
    free(sm);
    free(keep);
    return kept;
}

// The inverse-CDF draw over prob in the sorted order of l.
static int ref_draw(const float *l, int V, const double *prob, double u) {
    int *order = malloc(sizeof *order * V);
    ref_order(l, V, order);
    double cum = 0;
    int last = -1, res = -1;
    for (int r = 0; r < V && res < 0; r++) {
        int id = order[r];
        if (prob[id] == 0) continue;
        last = id;
        cum += prob[id];
        if (cum > u) res = id;
    }
    free(order);
    return res >= 0 ? res : last;
}

// Penalties by the definition: for every vocab entry scan the whole history.
static void ref_penalties(const SamplingParams *p, const float *in, double *out, int V,
                          const int32_t *ids, int n, int np) {
    for (int v = 0; v < V; v++) {
        int seen = 0;
        long c = 0;
        for (int i = 0; i < n; i++)
            if (ids[i] == v) {
                seen = 1;
                if (i >= np) c++;
            }
        double l = in[v];
        if (seen) l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        if (c > 0) l -= p->presence_penalty + p->frequency_penalty * (double)c;
        out[v] = l;
    }
}

static void rand_logits(float *l, int V, uint64_t seed, float scale) {
    uint64_t s = seed;
    for (int i = 0; i < V; i++) l[i] = scale * tu_rand_normal(&s);
}

// Chi-square critical value at upper tail p = 0.001 by Wilson-Hilferty:
// df * (1 - 2/(9 df) + z sqrt(2/(9 df)))^3 with z = 3.0902 (the 0.999 normal
// quantile). It is within ~1.5% of the exact value for df >= 4 and slightly
// above it (conservative) at small df (df = 4: 18.72 vs exact 18.47).
static double chi2_crit_001(int df) {
    double a = 2.0 / (9.0 * df);
    double t = 1.0 - a + 3.0902 * sqrt(a);
    return df * t * t * t;
}

// Chi-square statistic of counts obs (N draws) against prob. Tokens with an
// expected count < 5 are pooled; a pool still below 5 is merged into the
// smallest regular bin. Returns the statistic, the degrees of freedom in *df
// and in *outside the number of draws of zero-probability tokens.
static double chi2_stat(const long *obs, const double *prob, int V, long N, int *df,
                        long *outside) {
    double *be = malloc(sizeof *be * (V + 1));
    long *bo = malloc(sizeof *bo * (V + 1));
    double pool_e = 0;
    long pool_o = 0;
    int bins = 0, smallest = -1;
    *outside = 0;
    for (int i = 0; i < V; i++) {
        if (prob[i] == 0) {
            *outside += obs[i];
            continue;
        }
        double e = N * prob[i];
        if (e >= 5) {
            be[bins] = e;
            bo[bins] = obs[i];
            if (smallest < 0 || e < be[smallest]) smallest = bins;
            bins++;
        } else {
            pool_e += e;
            pool_o += obs[i];
        }
    }
    if (pool_e >= 5 || (smallest < 0 && pool_e > 0)) {
        be[bins] = pool_e;
        bo[bins++] = pool_o;
    } else if (pool_e > 0) {
        be[smallest] += pool_e;
        bo[smallest] += pool_o;
    }
    double chi = 0;
    for (int b = 0; b < bins; b++) chi += (bo[b] - be[b]) * (bo[b] - be[b]) / be[b];
    *df = bins - 1;
    free(be);
    free(bo);
    return chi;
}

// ----------------------------------------------------------------------------
// validation

static void test_validate(void) {
    SamplingParams d = sampling_defaults();
    CU_ASSERT_PTR_NULL(sampling_validate(&d));
    CU_ASSERT_EQUAL(d.temperature, 0.0f);
    CU_ASSERT_EQUAL(d.top_k, 0);
    CU_ASSERT_EQUAL(d.top_p, 1.0f);
    CU_ASSERT_EQUAL(d.min_p, 0.0f);
    CU_ASSERT_EQUAL(d.repetition_penalty, 1.0f);

    // Boundary values that are valid.
    SamplingParams p = d;
    p.temperature = 0.7f;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.presence_penalty = -2.0f;
    p.top_k = -1;
    CU_ASSERT_PTR_NULL(sampling_validate(&p));

    struct {
        int field;
        float v;
        const char *want;
    } cases[] = {
        {0, -1.0f, "temperature must be >= 0 (got -1)"},
        {0, NAN, "temperature is NaN"},
        {1, 1.5f, "top_p must be in (0, 1] (got 1.5)"},
        {1, 0.0f, "top_p must be in (0, 1] (got 0)"},
        {1, -0.25f, "top_p must be in (0, 1] (got -0.25)"},
        {1, NAN, "top_p is NaN"},
        {2, 1.5f, "min_p must be in [0, 1] (got 1.5)"},
        {2, -0.5f, "min_p must be in [0, 1] (got -0.5)"},
        {2, NAN, "min_p is NaN"},
        {3, 0.0f, "repetition_penalty must be > 0 (got 0)"},
        {3, -1.0f, "repetition_penalty must be > 0 (got -1)"},
        {3, NAN, "repetition_penalty is NaN"},
        {4, NAN, "presence_penalty is NaN"},
        {5, NAN, "frequency_penalty is NaN"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        p = d;
        float *f[] = {&p.temperature, &p.top_p, &p.min_p, &p.repetition_penalty,
                      &p.presence_penalty, &p.frequency_penalty};
        *f[cases[c].field] = cases[c].v;
        const char *msg = sampling_validate(&p);
        CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
        if (!strstr(msg, cases[c].want))
            fprintf(stderr, "  case %zu: got '%s' want '%s'\n", c, msg, cases[c].want);
        CU_ASSERT_PTR_NOT_NULL(strstr(msg, cases[c].want));
    }
}

// ----------------------------------------------------------------------------
// penalties

static void test_penalties_hand(void) {
    // 6-token vocabulary; prompt {0, 1, 1, 4}, generated {3, 0, 3, 5, 3}.
    const float in[6] = {2.0f, -1.0f, 0.5f, 3.0f, -2.5f, 0.0f};
    const int32_t ids[9] = {0, 1, 1, 4, 3, 0, 3, 5, 3};
    unsigned char scratch[6 * 64];
    SamplingParams p = sampling_defaults();
    float l[6];

    // Repetition 1.5 only, once per distinct id over prompt + generated:
    // positive divided, negative multiplied, 0 unchanged, id 2 untouched.
    p.repetition_penalty = 1.5f;
    memcpy(l, in, sizeof l);
    memset(scratch, 0xab, sizeof scratch);
    sampling_apply_penalties(&p, l, 6, ids, 9, 4, scratch);
    const float want_rep[6] = {2.0f / 1.5f, -1.5f, 0.5f, 2.0f, -3.75f, 0.0f};
    CU_ASSERT_EQUAL(tu_compare_f32("rep", l, want_rep, 6, 1e-6f, 1e-6f), 0);

    // Presence 0.25 only: generated ids 0, 3, 5 (prompt-only 1, 4 untouched).
    p = sampling_defaults();
    p.presence_penalty = 0.25f;
    memcpy(l, in, sizeof l);
    sampling_apply_penalties(&p, l, 6, ids, 9, 4, scratch);
    const float want_pres[6] = {1.75f, -1.0f, 0.5f, 2.75f, -2.5f, -0.25f};
    CU_ASSERT_EQUAL(tu_compare_f32("pres", l, want_pres, 6, 1e-6f, 1e-6f), 0);

    // Frequency 0.5 only: counts over generated ids: 0 x1, 3 x3, 5 x1.
    p = sampling_defaults();
    p.frequency_penalty = 0.5f;
    memcpy(l, in, sizeof l);
    sampling_apply_penalties(&p, l, 6, ids, 9, 4, scratch);
    const float want_freq[6] = {1.5f, -1.0f, 0.5f, 1.5f, -2.5f, -0.5f};
    CU_ASSERT_EQUAL(tu_compare_f32("freq", l, want_freq, 6, 1e-6f, 1e-6f), 0);

    // All three: repetition first, then presence + frequency * count.
    //   id0: 2/1.5 - (0.25 + 0.5)  = 0.583333   id1: -1 * 1.5 = -1.5
    //   id3: 3/1.5 - (0.25 + 1.5)  = 0.25       id4: -2.5 * 1.5 = -3.75
    //   id5: 0 - (0.25 + 0.5)      = -0.75      id2: 0.5
    p.repetition_penalty = 1.5f;
    p.presence_penalty = 0.25f;
    memcpy(l, in, sizeof l);
    memset(scratch, 0xff, sizeof scratch);
    sampling_apply_penalties(&p, l, 6, ids, 9, 4, scratch);
    const float want_all[6] = {2.0f / 1.5f - 0.75f, -1.5f, 0.5f, 0.25f, -3.75f, -0.75f};
    CU_ASSERT_EQUAL(tu_compare_f32("all", l, want_all, 6, 1e-6f, 1e-6f), 0);

    // Out-of-range ids (padding) are ignored; n_prompt == n_ids means nothing
    // was generated, so presence / frequency do nothing.
    const int32_t bad[4] = {-1, 6, 2, 1000};
    memcpy(l, in, sizeof l);
    sampling_apply_penalties(&p, l, 6, bad, 4, 4, scratch);
    const float want_bad[6] = {2.0f, -1.0f, 0.5f / 1.5f, 3.0f, -2.5f, 0.0f};
    CU_ASSERT_EQUAL(tu_compare_f32("bad", l, want_bad, 6, 1e-6f, 1e-6f), 0);

    // A repetition penalty < 1 rewards instead: 3 / 0.5 = 6, -1 * 0.5 = -0.5.
    p = sampling_defaults();
    p.repetition_penalty = 0.5f;
    memcpy(l, in, sizeof l);
    sampling_apply_penalties(&p, l, 6, ids, 9, 4, scratch);
    const float want_low[6] = {4.0f, -0.5f, 0.5f, 6.0f, -1.25f, 0.0f};
    CU_ASSERT_EQUAL(tu_compare_f32("rep<1", l, want_low, 6, 1e-6f, 1e-6f), 0);
}

static void test_penalties_random(void) {
    enum { V = 300, N = 200, NP = 80 };
    float in[V], l[V], got_f[V], ref_f[V];
    double ref[V];
    int32_t ids[N];
    uint64_t s = 42;
    rand_logits(in, V, 7, 3.0f);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)(tu_rand_u64(&s) % 60); // many repeats
    void *scratch = malloc(sampling_scratch_size(V));
    const float params[4][3] = {{1.3f, 0.0f, 0.0f},
                                {1.0f, 0.4f, 0.0f},
                                {1.0f, 0.0f, 0.3f},
                                {0.8f, -0.3f, 0.15f}};
    for (int c = 0; c < 4; c++) {
        SamplingParams p = sampling_defaults();
        p.repetition_penalty = params[c][0];
        p.presence_penalty = params[c][1];
        p.frequency_penalty = params[c][2];
        memcpy(l, in, sizeof l);
        memset(scratch, c * 37, sampling_scratch_size(V));
        sampling_apply_penalties(&p, l, V, ids, N, NP, scratch);
        ref_penalties(&p, in, ref, V, ids, N, NP);
        for (int i = 0; i < V; i++) got_f[i] = l[i], ref_f[i] = (float)ref[i];
        CU_ASSERT_EQUAL(tu_compare_f32("penalties", got_f, ref_f, V, 1e-6f, 1e-6f), 0);
        int changed = 0; // the data must exercise the rule
        for (int i = 0; i < V; i++) changed += l[i] != in[i];
        CU_ASSERT(changed >= 20);
    }
    free(scratch);
}

// ----------------------------------------------------------------------------
// greedy

static void test_greedy(void) {
    enum { V = 1000 };
    float in[V], l[V];
    rand_logits(in, V, 11, 2.0f);
    void *scratch = malloc(sampling_scratch_size(V));
    SamplingParams p = sampling_defaults();

    int am = 0;
    for (int i = 1; i < V; i++)
        if (in[i] > in[am]) am = i;
    memcpy(l, in, sizeof l);
    float lp = 0;
    CU_ASSERT_EQUAL(sampling_sample(&p, l, V, NULL, 0, 0, 0, &lp, scratch), am);
    double z = 0;
    for (int i = 0; i < V; i++) z += exp((double)in[i]);
    double want = log(exp((double)in[am]) / z);
    CU_ASSERT(fabs(lp - want) < 1e-5);
    CU_ASSERT(lp < 0);

    // Ties go to the lowest id; filters and seeds do not matter for greedy.
    memcpy(l, in, sizeof l);
    l[700] = l[200] = in[am] + 1.0f;
    p.top_k = 1;
    p.top_p = 0.1f;
    p.min_p = 0.5f;
    p.seed = 99;
    for (int step = 0; step < 5; step++) {
        float t[V];
        memcpy(t, l, sizeof t);
        CU_ASSERT_EQUAL(sampling_sample(&p, t, V, NULL, 0, 0, step, &lp, scratch), 200);
    }
    // The logprob of a tied pair is at most log(1/2).
    CU_ASSERT(lp < log(0.5) + 1e-6);

    // Penalties act before the argmax: penalising the best id (generated twice)
    // hands the win to the runner-up; the logprob is under the penalised logits.
    int second = am == 0 ? 1 : 0;
    for (int i = 0; i < V; i++)
        if (i != am && in[i] > in[second]) second = i;
    int32_t hist[3] = {5, am, am};
    p = sampling_defaults();
    p.frequency_penalty = 10.0f;
    memcpy(l, in, sizeof l);
    CU_ASSERT_EQUAL(sampling_sample(&p, l, V, hist, 3, 1, 0, &lp, scratch), second);
    CU_ASSERT(fabs(l[am] - (in[am] - 20.0f)) < 1e-5);
    z = 0;
    for (int i = 0; i < V; i++) z += exp((double)l[i]);
    CU_ASSERT(fabs(lp - log(exp((double)in[second]) / z)) < 1e-5);

    // NaN logits are never chosen; all -inf gives token 0 and logprob -inf.
    memcpy(l, in, sizeof l);
    l[3] = NAN;
    CU_ASSERT_EQUAL(sampling_sample(&p, l, V, NULL, 0, 0, 0, NULL, scratch), am);
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    CU_ASSERT_EQUAL(sampling_sample(&p, l, V, NULL, 0, 0, 0, &lp, scratch), 0);
    CU_ASSERT(isinf(lp) && lp < 0);
    free(scratch);
}

// ----------------------------------------------------------------------------
// the random stream

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_uniform(void) {
    enum { SEEDS = 64, STEPS = 1024, N = SEEDS * STEPS };
    double *u = malloc(sizeof *u * N);
    int odd = 0;
    for (int s = 0; s < SEEDS; s++)
        for (int t = 0; t < STEPS; t++) {
            double v = sampling_uniform((uint64_t)s, (uint64_t)t);
            u[s * STEPS + t] = v;
            odd |= fmod(ldexp(v, 53), 2.0) == 1.0; // the low bit of 53 is used
        }
    CU_ASSERT(odd);
    // Pure function of (seed, step).
    CU_ASSERT_EQUAL(sampling_uniform(3, 17), u[3 * STEPS + 17]);
    CU_ASSERT_EQUAL(sampling_uniform(63, 1023), u[N - 1]);
    // Large seeds and steps behave too.
    double big = sampling_uniform(UINT64_MAX, UINT64_MAX);
    CU_ASSERT(big >= 0 && big < 1);

    // Mean within 5 sigma of 1/2; 20-bucket chi-square (df 19) at p = 0.001.
    double mean = 0;
    long bucket[20] = {0};
    for (int i = 0; i < N; i++) {
        CU_ASSERT_FATAL(u[i] >= 0 && u[i] < 1);
        mean += u[i];
        bucket[(int)(u[i] * 20)]++;
    }
    mean /= N;
    CU_ASSERT(fabs(mean - 0.5) < 5 * sqrt(1.0 / 12 / N));
    double chi = 0, e = N / 20.0;
    for (int b = 0; b < 20; b++) chi += (bucket[b] - e) * (bucket[b] - e) / e;
    printf("\n  uniform: mean %.5f, 20-bucket chi2 %.2f (crit %.2f)", mean, chi,
           chi2_crit_001(19));
    CU_ASSERT(chi < chi2_crit_001(19));

    // Lag-1 correlation along the steps of one seed and across seeds at one
    // step: |r| < 5 / sqrt(n).
    double sxy = 0, sxy2 = 0;
    for (int s = 0; s < SEEDS; s++)
        for (int t = 0; t + 1 < STEPS; t++)
            sxy += (u[s * STEPS + t] - 0.5) * (u[s * STEPS + t + 1] - 0.5);
    for (int s = 0; s + 1 < SEEDS; s++)
        for (int t = 0; t < STEPS; t++)
            sxy2 += (u[s * STEPS + t] - 0.5) * (u[(s + 1) * STEPS + t] - 0.5);
    double r1 = sxy / (SEEDS * (STEPS - 1)) * 12, r2 = sxy2 / ((SEEDS - 1) * STEPS) * 12;
    CU_ASSERT(fabs(r1) < 5 / sqrt((double)SEEDS * (STEPS - 1)));
    CU_ASSERT(fabs(r2) < 5 / sqrt((double)(SEEDS - 1) * STEPS));

    // All values distinct; Kolmogorov-Smirnov D * sqrt(N) below 1.95 (p ~ 0.001).
    qsort(u, N, sizeof *u, cmp_double);
    int dup = 0;
    double D = 0;
    for (int i = 0; i < N; i++) {
        if (i && u[i] == u[i - 1]) dup++;
        double d1 = (double)(i + 1) / N - u[i], d2 = u[i] - (double)i / N;
        if (d1 > D) D = d1;
        if (d2 > D) D = d2;
    }
    printf(", KS D*sqrt(N) %.3f ", D * sqrt(N));
    CU_ASSERT_EQUAL(dup, 0);
    CU_ASSERT(D * sqrt((double)N) < 1.95);
    free(u);
}

// ----------------------------------------------------------------------------
// exact, hand-derivable draws

static void test_inverse_cdf_hand(void) {
    void *scratch = malloc(sampling_scratch_size(8));
    SamplingParams p = sampling_defaults();
    p.temperature = 1.0f;
    p.seed = 1234;
    // Four equal logits: the sorted order is by id, so the inverse CDF picks
    // floor(4u).
    for (int step = 0; step < 500; step++) {
        float l[4] = {0.5f, 0.5f, 0.5f, 0.5f};
        int want = (int)(4 * sampling_uniform(p.seed, step));
        float lp;
        CU_ASSERT_EQUAL(sampling_sample(&p, l, 4, NULL, 0, 0, step, &lp, scratch), want);
        CU_ASSERT(fabs(lp - log(0.25)) < 1e-6);
    }
    // Five equal logits, top_p 0.5: masses before ids 0..4 are 0, .2, .4, .6,
    // .8, so ids 0, 1, 2 are kept (mass before < 0.5) and the draw is floor(3u).
    p.top_p = 0.5f;
    int seen[5] = {0};
    for (int step = 0; step < 500; step++) {
        float l[5] = {-1.0f, -1.0f, -1.0f, -1.0f, -1.0f};
        int want = (int)(3 * sampling_uniform(p.seed, step));
        int got = sampling_sample(&p, l, 5, NULL, 0, 0, step, NULL, scratch);
        CU_ASSERT_EQUAL(got, want);
        seen[got]++;
        if (step == 0) { // the filtered logits are left behind: -inf for 3, 4
            CU_ASSERT(l[0] == -1.0f && l[2] == -1.0f);
            CU_ASSERT(isinf(l[3]) && l[3] < 0 && isinf(l[4]) && l[4] < 0);
        }
    }
    CU_ASSERT(seen[0] > 0 && seen[1] > 0 && seen[2] > 0 && !seen[3] && !seen[4]);

    // Descending order: logits {0, 1, 2} at T = 1; u below p(2) picks 2, then
    // 1, then 0 (probabilities 0.6652, 0.2447, 0.0900).
    p.top_p = 1.0f;
    double z = exp(0) + exp(1) + exp(2), p2 = exp(2) / z, p1 = exp(1) / z;
    int hits[3] = {0};
    for (int step = 0; step < 2000; step++) {
        float l[3] = {0.0f, 1.0f, 2.0f};
        double u = sampling_uniform(p.seed, step);
        if (fabs(u - p2) < 1e-9 || fabs(u - p2 - p1) < 1e-9) continue;
        int want = u < p2 ? 2 : u < p2 + p1 ? 1 : 0;
        int got = sampling_sample(&p, l, 3, NULL, 0, 0, step, NULL, scratch);
        CU_ASSERT_EQUAL(got, want);
        hits[got]++;
    }
    CU_ASSERT(hits[0] > 100 && hits[1] > 300 && hits[2] > 1100);

    // top-k with ties at the k-th value keeps them all (vLLM / HF): logits
    // {3, 1, 2, 2, 0, 2}, top_k 2 -> k-th value 2 -> ids 0, 2, 3, 5 survive.
    p = sampling_defaults();
    p.temperature = 2.0f;
    p.top_k = 2;
    int cnt[6] = {0};
    for (int step = 0; step < 4000; step++) {
        float l[6] = {3, 1, 2, 2, 0, 2};
        int got = sampling_sample(&p, l, 6, NULL, 0, 0, step, NULL, scratch);
        cnt[got]++;
        if (step == 0) {
            const float want[6] = {1.5f, -INFINITY, 1.0f, 1.0f, -INFINITY, 1.0f};
            for (int i = 0; i < 6; i++) CU_ASSERT_EQUAL(l[i], want[i]);
        }
    }
    CU_ASSERT(cnt[1] == 0 && cnt[4] == 0);
    CU_ASSERT(cnt[0] > 0 && cnt[2] > 0 && cnt[3] > 0 && cnt[5] > 0);

    // min-p before top-p (vLLM V1), not after (HF): p = {.4, .3, .2, .1},
    // min_p 0.3 drops .1 (< .12); top_p 0.75 over the renormalised rest
    // {.444, .333, .222} drops .2 (mass before it .778 >= .75), so {0, 1} stay.
    // With HF's order top-p would keep .2 (mass before it .7 < .75).
    p = sampling_defaults();
    p.temperature = 1.0f;
    p.min_p = 0.3f;
    p.top_p = 0.75f;
    {
        float l[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
        float lp;
        int got = sampling_sample(&p, l, 4, NULL, 0, 0, 0, &lp, scratch);
        CU_ASSERT(got == 0 || got == 1);
        CU_ASSERT(isfinite(l[0]) && isfinite(l[1]));
        CU_ASSERT(isinf(l[2]) && isinf(l[3]));
        CU_ASSERT(fabs(lp - log(got == 0 ? 4.0 / 7 : 3.0 / 7)) < 1e-6);
    }
    free(scratch);
}

// ----------------------------------------------------------------------------
// sampling statistics

typedef struct {
    const char *name;
    float temperature, top_p, min_p, rep, pres, freq;
    int top_k;
} StatCase;

static void test_statistics(void) {
    enum { V = 50, N = 40000, NH = 40, NP = 15 };
    float base[V], pen[V], l[V];
    double prob[V], refpen[V];
    long obs[V];
    int32_t hist[NH];
    uint64_t hs = 5;
    rand_logits(base, V, 2024, 1.0f); // flat enough that filters keep several
    for (int i = 0; i < NH; i++) hist[i] = (int32_t)(tu_rand_u64(&hs) % 12);
    void *scratch = malloc(sampling_scratch_size(V));

    const StatCase cases[] = {
        {"temperature 0.7", 0.7f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"top-k 5", 1.0f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 5},
        {"top-p 0.8", 1.0f, 0.8f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"min-p 0.1", 1.0f, 1.0f, 0.1f, 1.0f, 0.0f, 0.0f, 0},
        {"T0.9 k20 p0.9 minp0.05", 0.9f, 0.9f, 0.05f, 1.0f, 0.0f, 0.0f, 20},
        {"T1.2 k30 p0.95 + penalties", 1.2f, 0.95f, 0.0f, 1.3f, 0.2f, 0.1f, 30},
        {"T1.0 min-p 0.1 then top-p 0.7", 1.0f, 0.7f, 0.1f, 1.0f, 0.0f, 0.0f, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const StatCase *sc = &cases[c];
        SamplingParams p = sampling_defaults();
        p.temperature = sc->temperature;
        p.top_k = sc->top_k;
        p.top_p = sc->top_p;
        p.min_p = sc->min_p;
        p.repetition_penalty = sc->rep;
        p.presence_penalty = sc->pres;
        p.frequency_penalty = sc->freq;
        CU_ASSERT_PTR_NULL(sampling_validate(&p));

        ref_penalties(&p, base, refpen, V, hist, NH, NP);
        for (int i = 0; i < V; i++) pen[i] = (float)refpen[i];
        int kept = ref_probs(pen, V, &p, prob);
        // The filters must be doing something on this data (but not everything).
        if (sc->top_k || sc->top_p < 1 || sc->min_p > 0) CU_ASSERT(kept > 1 && kept < V);

        memset(obs, 0, sizeof obs);
        long bad_lp = 0;
        for (int i = 0; i < N; i++) {
            p.seed = 1000 * c + (uint64_t)(i / 5000);
            memcpy(l, base, sizeof l);
            float lp;
            int tok = sampling_sample(&p, l, V, hist, NH, NP, (uint64_t)(i % 5000), &lp,
                                      scratch);
            CU_ASSERT_FATAL(tok >= 0 && tok < V);
            obs[tok]++;
            if (prob[tok] > 0 && !(fabs(lp - log(prob[tok])) < 2e-5)) bad_lp++;
        }
        CU_ASSERT_EQUAL(bad_lp, 0);
        int df;
        long outside;
        double chi = chi2_stat(obs, prob, V, N, &df, &outside);
        CU_ASSERT_EQUAL(outside, 0); // filtered-out tokens never appear
        double crit = chi2_crit_001(df);
        printf("\n  %-30s kept %2d  chi2 %7.2f  df %2d  crit %6.2f", sc->name, kept, chi, df,
               crit);
        CU_ASSERT(df >= 3);
        CU_ASSERT(chi < crit);

        // Negative control: the same counts against the distribution with the
        // temperature 10% off must be rejected, or the test has no power.
        SamplingParams wrong = p;
        wrong.temperature = p.temperature * 1.1f;
        double wprob[V];
        ref_probs(pen, V, &wrong, wprob);
        int wdf;
        long woutside;
        double wchi = chi2_stat(obs, wprob, V, N, &wdf, &woutside);
        printf("  (control: chi2 %.0f)", wchi);
        CU_ASSERT(woutside > 0 || wchi > chi2_crit_001(wdf));
    }
    printf("\n");
    free(scratch);
}

// ----------------------------------------------------------------------------
// exact agreement with the reference on a large, tie-heavy vocabulary

static void test_exact_large(void) {
    enum { V = 20000, DRAWS = 150 };
    float *base = malloc(sizeof(float) * V), *l = malloc(sizeof(float) * V);
    double *prob = malloc(sizeof(double) * V);
    rand_logits(base, V, 77, 1.0f);
    for (int i = 0; i < V; i++) base[i] = roundf(base[i] * 8) / 8; // many exact ties
    void *scratch = malloc(sampling_scratch_size(V));
    const StatCase cases[] = {
        {"plain T1", 1.0f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"top-k 40 (tied k-th)", 0.8f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 40},
        {"top-p 0.9", 1.1f, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"min-p 0.02", 1.0f, 1.0f, 0.02f, 1.0f, 0.0f, 0.0f, 0},
        {"k 500 p 0.6 minp 0.01", 0.7f, 0.6f, 0.01f, 1.0f, 0.0f, 0.0f, 500},
        {"top-k 1", 1.0f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const StatCase *sc = &cases[c];
        SamplingParams p = sampling_defaults();
        p.temperature = sc->temperature;
        p.top_k = sc->top_k;
        p.top_p = sc->top_p;
        p.min_p = sc->min_p;
        p.seed = 31 + c;
        int kept = ref_probs(base, V, &p, prob);
        long mism = 0, bad_lp = 0, bad_logits = 0;
        for (int d = 0; d < DRAWS; d++) {
            memcpy(l, base, sizeof(float) * V);
            memset(scratch, d & 1 ? 0xff : 0x00, sampling_scratch_size(V));
            float lp;
            int got = sampling_sample(&p, l, V, NULL, 0, 0, d, &lp, scratch);
            int want = ref_draw(base, V, prob, sampling_uniform(p.seed, d));
            if (got != want) {
                if (mism < 3) fprintf(stderr, "  %s draw %d: got %d want %d\n", sc->name, d, got, want);
                mism++;
            }
            if (!(fabs(lp - log(prob[got])) < 2e-5)) bad_lp++;
            if (d == 0)
                for (int i = 0; i < V; i++) {
                    float w = prob[i] > 0 ? (float)((double)base[i] / p.temperature) : -INFINITY;
                    if (!(l[i] == w || fabsf(l[i] - w) <= 1e-6f * fabsf(w))) bad_logits++;
                }
        }
        printf("\n  %-24s kept %5d  mismatches %ld", sc->name, kept, mism);
        CU_ASSERT_EQUAL(mism, 0);
        CU_ASSERT_EQUAL(bad_lp, 0);
        CU_ASSERT_EQUAL(bad_logits, 0);
    }
    // The tied top-k case really has ties at the k-th value.
    int *order = malloc(sizeof(int) * V);
    ref_order(base, V, order);
    CU_ASSERT(base[order[39]] == base[order[40]]);
    printf("\n");
    free(order);
    free(base);
    free(l);
    free(prob);
    free(scratch);
}

// ----------------------------------------------------------------------------
// determinism

static void test_determinism(void) {
    enum { V = 3000 };
    float base[V], l[V];
    rand_logits(base, V, 9, 1.5f);
    void *scratch = malloc(sampling_scratch_size(V));
    SamplingParams p = sampling_defaults();
    p.temperature = 1.0f;
    p.top_p = 0.95f;
    int32_t seq_a[64], seq_b[64], seq_c[64];
    int distinct = 0;
    for (int step = 0; step < 64; step++) {
        float lp1, lp2;
        p.seed = 5;
        memcpy(l, base, sizeof l);
        memset(scratch, 0x5a, sampling_scratch_size(V));
        seq_a[step] = sampling_sample(&p, l, V, NULL, 0, 0, step, &lp1, scratch);
        memcpy(l, base, sizeof l);
        memset(scratch, 0xc3, sampling_scratch_size(V));
        seq_b[step] = sampling_sample(&p, l, V, NULL, 0, 0, step, &lp2, scratch);
        CU_ASSERT_EQUAL(lp1, lp2);
        p.seed = 6;
        memcpy(l, base, sizeof l);
        seq_c[step] = sampling_sample(&p, l, V, NULL, 0, 0, step, NULL, scratch);
        for (int j = 0; j < step; j++)
            if (seq_a[j] == seq_a[step]) goto dup;
        distinct++;
    dup:;
    }
    CU_ASSERT_EQUAL(memcmp(seq_a, seq_b, sizeof seq_a), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(seq_a, seq_c, sizeof seq_a), 0);
    CU_ASSERT(distinct > 32); // a flat-ish distribution over 3000 tokens
    free(scratch);
}

// ----------------------------------------------------------------------------
// edge cases: no NaN, no crash, documented answers

static void test_edge_cases(void) {
    void *scratch = malloc(sampling_scratch_size(8));
    SamplingParams p = sampling_defaults();
    float lp;
    // A vanishing temperature: only the two tied maxima (ids 1, 4) have mass,
    // each with probability 1/2.
    p.temperature = 1e-30f;
    int hit[2] = {0};
    for (int step = 0; step < 200; step++) {
        float l[6] = {0.5f, 2.0f, 1.9999f, -3.0f, 2.0f, NAN};
        int got = sampling_sample(&p, l, 6, NULL, 0, 0, step, &lp, scratch);
        CU_ASSERT_FATAL(got == 1 || got == 4);
        hit[got == 4]++;
        CU_ASSERT(fabs(lp - log(0.5)) < 1e-6);
    }
    CU_ASSERT(hit[0] > 50 && hit[1] > 50);
    // +inf is clamped to FLT_MAX and wins; NaN is never drawn.
    p.temperature = 1.0f;
    for (int step = 0; step < 50; step++) {
        float l[4] = {1.0f, INFINITY, NAN, 2.0f};
        CU_ASSERT_EQUAL(sampling_sample(&p, l, 4, NULL, 0, 0, step, &lp, scratch), 1);
        CU_ASSERT(lp == 0.0f);
    }
    // vocab 1, top_k beyond the vocabulary (= off), min_p 1 (only the best).
    float one[1] = {-7.0f};
    p.top_k = 5;
    CU_ASSERT_EQUAL(sampling_sample(&p, one, 1, NULL, 0, 0, 3, &lp, scratch), 0);
    CU_ASSERT(lp == 0.0f);
    p.top_k = 0;
    p.min_p = 1.0f;
    for (int step = 0; step < 50; step++) {
        float l[5] = {0.1f, 0.3f, 0.2f, 0.3f, -1.0f};
        int got = sampling_sample(&p, l, 5, NULL, 0, 0, step, &lp, scratch);
        CU_ASSERT(got == 1 || got == 3);
    }
    free(scratch);
}

// ----------------------------------------------------------------------------
// top-n logprobs

static void test_topn(void) {
    enum { V = 1000, N = 12 };
    float l[V];
    rand_logits(l, V, 123, 2.0f);
    int order0[V];
    ref_order(l, V, order0);
    l[901] = l[order0[2]]; // tie with the third best at a higher id
    l[17] = l[order0[5]];
    int order[V];
    ref_order(l, V, order);
    double m = l[order[0]], z = 0;
    for (int i = 0; i < V; i++) z += exp((double)l[i] - m);
    int32_t ids[N];
    float lps[N];
    sampling_topn_logprobs(l, V, N, ids, lps);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(ids[i], order[i]);
        CU_ASSERT(fabs(lps[i] - ((double)l[order[i]] - m - log(z))) < 1e-5);
    }
    // n == vocab is a full sort.
    enum { S = 37 };
    float ls[S];
    int os[S];
    int32_t is[S];
    float ps[S];
    rand_logits(ls, S, 321, 1.0f);
    ls[30] = ls[4];
    ref_order(ls, S, os);
    sampling_topn_logprobs(ls, S, S, is, ps);
    double sum = 0;
    for (int i = 0; i < S; i++) {
        CU_ASSERT_EQUAL(is[i], os[i]);
        sum += exp(ps[i]);
    }
    CU_ASSERT(fabs(sum - 1) < 1e-5);
}

int main(void) {
    static const tu_test t_params[] = {{"validate", test_validate}, {NULL, NULL}};
    static const tu_test t_pen[] = {{"hand-derived 6-token vocab", test_penalties_hand},
                                    {"random vs direct loop", test_penalties_random},
                                    {NULL, NULL}};
    static const tu_test t_sample[] = {
        {"greedy", test_greedy},
        {"uniform stream", test_uniform},
        {"inverse CDF, hand-derived", test_inverse_cdf_hand},
        {"chi-square statistics", test_statistics},
        {"exact vs reference, V=20000 with ties", test_exact_large},
        {"determinism", test_determinism},
        {"edge cases", test_edge_cases},
        {"top-n logprobs", test_topn},
        {NULL, NULL}};
    tu_suite("sampling params", t_params);
    tu_suite("penalties", t_pen);
    tu_suite("sampling", t_sample);
    return tu_main();
}
