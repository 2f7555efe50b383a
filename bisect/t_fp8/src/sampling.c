// sampling.c: the per-request CPU sampler, the reference that the GPU sampler
// is checked against. Every rule below is part of the contract; the GPU
// version must implement the same ones.
//
// Pipeline for one request and one step (vLLM V1 order, see
// vllm/v1/sample/sampler.py and vllm/v1/sample/ops/{penalties,topk_topp}.py):
//
//   1. Penalties (sampling_apply_penalties), in place, in double precision and
//      rounded once to float per touched id. Ids outside [0, vocab) in the
//      history are ignored (vLLM pads with id == vocab the same way).
//        repetition (HF / vLLM): once per DISTINCT id of prompt + generated,
//            l = l > 0 ? l / r : l * r          (l == 0 stays 0)
//        presence / frequency (OpenAI / vLLM): for each id generated c > 0
//            times (prompt ids do not count), l -= presence + frequency * c
//      Repetition is applied first, then presence / frequency, as in vLLM.
//   2. NaN logits are treated as -inf (never chosen) and +inf as FLT_MAX, so
//      every later comparison is a total order.
//   3. temperature <= 0: greedy, argmax of the penalised logits, ties to the
//      lowest id. logprob = log softmax(penalised logits)[id] (double).
//      (vLLM treats temperature < 1e-5 as greedy; here only <= 0 is.)
//   4. Otherwise x_i = (l_i - max l) / T in double and e_i = exp(x_i), so the
//      best token has e = 1 and e_i = p_i / p_max exactly as a ratio.
//   5. min-p: drop tokens with p_i < min_p * p_max, i.e. e_i < min_p, over the
//      whole temperature-scaled distribution. vLLM V1 does this BEFORE top-k /
//      top-p (it is an "argmax-invariant logits processor"); HF transformers
//      and vLLM V0 do it after. The choice only matters when top_p is on too:
//      here top-p's cumulative mass is measured over the min-p survivors.
//   6. top-k: keep every token whose logit is >= the k-th largest logit, so
//      ties at the k-th value are all kept (exactly as vLLM and HF do).
//      top_k <= 0 or >= vocab: off.
//   7. top-p: sort the survivors by descending logit (= descending
//      probability), ties by ascending id; keep the smallest prefix whose mass
//      is >= top_p times the survivors' mass (a token is kept iff the mass
//      strictly before it is < top_p; at least one token is always kept).
//      top_p >= 1: off.
//   8. Renormalise over what is left and draw with u = sampling_uniform(seed,
//      step) by inverse CDF in the same sorted order: the chosen token is the
//      first one whose cumulative mass exceeds u times the total.
//   logprob (non-greedy) = x_id - log(sum of e over the kept tokens), the log
//   of the token's probability in the final renormalised distribution.
//   On return logits hold the penalised logits divided by T (float; may
//   overflow to +-inf for tiny T) for kept tokens and -inf for dropped ones;
//   after greedy they hold the penalised logits.
//
// Exactness. All masses used for decisions (steps 7 and 8) are integers: each
// e_i is truncated to fixed point q_i = floor(e_i * 2^s) with
// s = 63 - ceil(log2(vocab)), so any sum over the vocabulary fits in 64 bits
// and is the same in every summation order. That is what lets this file avoid
// a full sort (it walks the sorted order by quickselect-style partitioning, so
// a step is O(vocab) expected) and what lets a GPU reduction in any order
// reproduce the CPU's choice bit for bit, given the same e_i. Tokens with
// e_i < 2^-s (p < ~3e-14 of the best token at vocab 256k) get q = 0 and are
// never drawn. The top-p bound is ceil(top_p * Q) computed in double; the draw
// target is floor(u * Q), clamped to Q - 1.
//
// If every logit is -inf (or NaN) the result is token 0 with logprob -inf.
// sampling_sample assumes params that passed sampling_validate and vocab >= 1.
// stddef.h first: sampling.h uses size_t without including it (reported).
#include <stddef.h>

#include "sampling.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// One candidate token. The order used everywhere is "a before b" iff
// a.key > b.key, or equal keys and a.id < b.id: a strict total order.
typedef struct {
    double e;    // exp((logit - max) / T), in (0, 1]; 0 while not yet computed
    float key;   // penalised logit (NaN sanitised): the sort key, descending
    int32_t id;
} SampCand;

// Ranges at most this long are finished with an insertion sort.
#define SAMP_SMALL 16

// ----------------------------------------------------------------------------
// parameters and the random stream

SamplingParams sampling_defaults(void) {
    SamplingParams p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repetition_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.seed = 0;
    return p;
}

// The returned message lives in a thread-local buffer (only the messages that
// quote a value use it) and stays valid until this thread's next call.
const char *sampling_validate(const SamplingParams *p) {
    static _Thread_local char buf[160];
    if (!p) return "sampling params are NULL";
    if (isnan(p->temperature)) return "temperature is NaN";
    if (p->temperature < 0) {
        snprintf(buf, sizeof buf, "temperature must be >= 0 (got %g)", p->temperature);
        return buf;
    }
    if (isnan(p->top_p)) return "top_p is NaN";
    if (!(p->top_p > 0 && p->top_p <= 1)) {
        snprintf(buf, sizeof buf, "top_p must be in (0, 1] (got %g)", p->top_p);
        return buf;
    }
    if (isnan(p->min_p)) return "min_p is NaN";
    if (!(p->min_p >= 0 && p->min_p <= 1)) {
        snprintf(buf, sizeof buf, "min_p must be in [0, 1] (got %g)", p->min_p);
        return buf;
    }
    if (isnan(p->repetition_penalty)) return "repetition_penalty is NaN";
    if (!(p->repetition_penalty > 0)) {
        snprintf(buf, sizeof buf, "repetition_penalty must be > 0 (got %g)",
                 p->repetition_penalty);
        return buf;
    }
    if (isnan(p->presence_penalty)) return "presence_penalty is NaN";
    if (isnan(p->frequency_penalty)) return "frequency_penalty is NaN";
    return NULL;
}

// The splitmix64 output function (Stafford's mix13), a bijection on 64 bits.
static uint64_t samp_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// u(seed, step) is output number `step` (0-based) of a splitmix64 generator
// whose state starts at mix64(seed): mix64(mix64(seed) + (step + 1) * golden).
// Counter-based (O(1) to jump to any step, no state), a bijection of step for
// a fixed seed and of seed for a fixed step; the top 53 bits become the double.
double sampling_uniform(uint64_t seed, uint64_t step) {
    const uint64_t golden = 0x9e3779b97f4a7c15ull;
    uint64_t r = samp_mix64(samp_mix64(seed) + (step + 1) * golden);
    return (double)(r >> 11) * 0x1.0p-53;
}

size_t sampling_scratch_size(int vocab) {
    if (vocab <= 0) return 0;
    // The candidate array; the penalty counters (uint32 per id) alias it.
    return (size_t)vocab * sizeof(SampCand);
}

// ----------------------------------------------------------------------------
// penalties

void sampling_apply_penalties(const SamplingParams *p, float *logits, int vocab,
                              const int32_t *ids, int n_ids, int n_prompt,
                              void *scratch) {
    const double rep = p->repetition_penalty;
    const double pres = p->presence_penalty, freq = p->frequency_penalty;
    const int do_rep = p->repetition_penalty != 1.0f;
    const int do_pf = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if ((!do_rep && !do_pf) || n_ids <= 0 || !ids) return;
    if (n_prompt < 0) n_prompt = 0;
    if (n_prompt > n_ids) n_prompt = n_ids;

    // cnt[id]: generated-occurrence count, top bit = "already penalised". Only
    // the entries of ids in the history are ever touched, so the scratch need
    // not be cleared (O(n_ids), not O(vocab)).
    uint32_t *cnt = scratch;
    const uint32_t done = 0x80000000u;
    for (int i = 0; i < n_ids; i++)
        if (ids[i] >= 0 && ids[i] < vocab) cnt[ids[i]] = 0;
    for (int i = n_prompt; i < n_ids; i++)
        if (ids[i] >= 0 && ids[i] < vocab) cnt[ids[i]]++;
    for (int i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= vocab || (cnt[id] & done)) continue;
        uint32_t c = cnt[id];
        cnt[id] |= done;
        double l = logits[id];
        if (do_rep) l = l > 0 ? l / rep : l * rep;
        if (do_pf && c > 0) l -= pres + freq * (double)c;
        logits[id] = (float)l;
    }
}

// ----------------------------------------------------------------------------
// selection in the sorted order without sorting

static inline int cand_before(const SampCand *a, const SampCand *b) {
    // Bitwise, not short-circuit, so that partitioning compiles branch-free.
    return (a->key > b->key) | ((a->key == b->key) & (a->id < b->id));
}

static int cand_cmp(const void *pa, const void *pb) {
    const SampCand *a = pa, *b = pb;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

static inline void cand_swap(SampCand *a, SampCand *b) {
    SampCand t = *a;
    *a = *b;
    *b = t;
}

static void cand_insertion_sort(SampCand *a, int lo, int hi) {
    for (int i = lo + 1; i < hi; i++) {
        SampCand x = a[i];
        int j = i - 1;
        while (j >= lo && cand_before(&x, &a[j])) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = x;
    }
}

// Partitions a[lo..hi) (hi - lo >= 3) around a median-of-three pivot: on
// return a[lo..p) are before a[p] and a[p+1..hi) after it. Returns p.
static int cand_partition(SampCand *a, int lo, int hi) {
    int i0 = lo, i1 = lo + (hi - lo) / 2, i2 = hi - 1, med;
    if (cand_before(&a[i0], &a[i1]))
        med = cand_before(&a[i1], &a[i2]) ? i1 : cand_before(&a[i0], &a[i2]) ? i2 : i0;
    else
        med = cand_before(&a[i0], &a[i2]) ? i0 : cand_before(&a[i1], &a[i2]) ? i2 : i1;
    cand_swap(&a[med], &a[hi - 1]);
    const SampCand piv = a[hi - 1];
    int s = lo;
    // Branch-free Lomuto: always swap, advance s only when a[i] goes left.
    // On random keys the branchy form mispredicts half the time.
    for (int i = lo; i < hi - 1; i++) {
        SampCand x = a[i];
        int b = cand_before(&x, &piv);
        a[i] = a[s];
        a[s] = x;
        s += b;
    }
    cand_swap(&a[s], &a[hi - 1]);
    return s;
}

// Partition rounds allowed before falling back to qsort (guards against the
// quadratic worst case of quickselect on adversarial inputs).
static int cand_budget(int n) {
    int b = 16;
    while (n > 1) {
        n >>= 1;
        b += 2;
    }
    return b;
}

// Rearranges a[0..n) so that a[0..k) are the first k tokens of the order
// (as a set, unsorted). 0 < k < n.
static void cand_select_first(SampCand *a, int n, int k) {
    int lo = 0, hi = n, budget = cand_budget(n);
    while (hi - lo > SAMP_SMALL) {
        if (budget-- == 0) {
            qsort(a + lo, (size_t)(hi - lo), sizeof *a, cand_cmp);
            return;
        }
        int p = cand_partition(a, lo, hi);
        if (p == k || p == k - 1) return;
        if (p < k) lo = p + 1;
        else hi = p;
    }
    cand_insertion_sort(a, lo, hi);
}

static inline uint64_t cand_q(const SampCand *c, double scale) {
    return (uint64_t)(c->e * scale);
}

// Walks the sorted order of a[0..n) and returns the position j of the first
// token whose cumulative fixed-point mass C_j exceeds target (which must be
// below the total). On return a[0..j) hold the tokens before it (as a set)
// and a[j] the token itself; *mass receives C_j. Expected O(n).
static int cand_cross(SampCand *a, int n, uint64_t target, double scale,
                      uint64_t *mass) {
    int lo = 0, hi = n, budget = cand_budget(n);
    uint64_t acc = 0; // mass of a[0..lo), which are the first lo tokens
    while (hi - lo > SAMP_SMALL) {
        if (budget-- == 0) {
            qsort(a + lo, (size_t)(hi - lo), sizeof *a, cand_cmp);
            break;
        }
        int p = cand_partition(a, lo, hi);
        uint64_t m = acc;
        for (int i = lo; i < p; i++) m += cand_q(&a[i], scale);
        if (m > target) {
            hi = p;
            continue;
        }
        m += cand_q(&a[p], scale);
        if (m > target) {
            *mass = m;
            return p;
        }
        acc = m;
        lo = p + 1;
    }
    if (hi - lo <= SAMP_SMALL) cand_insertion_sort(a, lo, hi);
    for (int i = lo; i < hi; i++) {
        acc += cand_q(&a[i], scale);
        if (acc > target) {
            *mass = acc;
            return i;
        }
    }
    // Unreachable when target < total mass; return the last token examined.
    *mass = acc;
    return hi > lo ? hi - 1 : lo;
}

// ----------------------------------------------------------------------------
// sampling

// NaN -> -inf, +inf -> FLT_MAX, in place; returns the maximum.
static float samp_sanitise(float *logits, int vocab) {
    float m = -INFINITY;
    for (int i = 0; i < vocab; i++) {
        float l = logits[i];
        if (isnan(l)) logits[i] = l = -INFINITY;
        else if (l == INFINITY) logits[i] = l = FLT_MAX;
        if (l > m) m = l;
    }
    return m;
}

// log sum_i exp(l_i - m) over the vocabulary, in double.
static double samp_logsumexp(const float *logits, int vocab, float m) {
    double s = 0;
    for (int i = 0; i < vocab; i++) s += exp((double)logits[i] - (double)m);
    return log(s);
}

int32_t sampling_sample(const SamplingParams *p, float *logits, int vocab,
                        const int32_t *ids, int n_ids, int n_prompt, uint64_t step,
                        float *logprob, void *scratch) {
    sampling_apply_penalties(p, logits, vocab, ids, n_ids, n_prompt, scratch);
    const float m = samp_sanitise(logits, vocab);
    if (m == -INFINITY) { // nothing can be chosen
        if (logprob) *logprob = -INFINITY;
        return 0;
    }

    if (!(p->temperature > 0)) { // greedy: first index holding the maximum
        int32_t best = 0;
        while (logits[best] != m) best++;
        if (logprob) *logprob = (float)(-samp_logsumexp(logits, vocab, m));
        return best;
    }

    const double T = p->temperature, md = m, min_p = p->min_p;
    int bits = 0;
    while (bits < 62 && (1ll << bits) < vocab) bits++;
    const double scale = ldexp(1.0, 63 - bits); // vocab * scale <= 2^63
    SampCand *a = scratch;
    int n = 0;

    if (p->top_k > 0 && p->top_k < vocab) {
        // top-k on the logits first (cheap: exp only for the survivors), then
        // min-p and the zero-mass cut; the two filters commute, both being
        // thresholds on the logit.
        for (int i = 0; i < vocab; i++) a[i] = (SampCand){0.0, logits[i], i};
        int k = p->top_k;
        cand_select_first(a, vocab, k);
        float vk = a[0].key; // the k-th largest logit: the smallest in a[0..k)
        for (int i = 1; i < k; i++)
            if (a[i].key < vk) vk = a[i].key;
        for (int i = k; i < vocab; i++) // ties with the k-th value stay
            if (a[i].key == vk) cand_swap(&a[i], &a[k++]);
        for (int i = 0; i < k; i++) {
            if (a[i].key == -INFINITY) continue;
            double e = exp(((double)a[i].key - md) / T);
            if (e < min_p || (uint64_t)(e * scale) == 0) continue;
            a[n] = a[i];
            a[n++].e = e;
        }
    } else {
        for (int i = 0; i < vocab; i++) {
            float l = logits[i];
            if (l == -INFINITY) continue;
            double e = exp(((double)l - md) / T);
            if (e < min_p || (uint64_t)(e * scale) == 0) continue;
            a[n++] = (SampCand){e, l, i};
        }
    }
    // n >= 1: the best token has e = 1 and survives every filter.

    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += cand_q(&a[i], scale);
    if (p->top_p < 1.0f) {
        double bound = ceil((double)p->top_p * (double)total);
        uint64_t need = bound < 1 ? 1 : bound >= (double)total ? total : (uint64_t)bound;
        // The kept prefix ends at the first token where C_j >= need.
        n = cand_cross(a, n, need - 1, scale, &total) + 1;
    }

    const double u = sampling_uniform(p->seed, step);
    uint64_t target = (uint64_t)(u * (double)total);
    if (target >= total) target = total - 1;
    uint64_t dummy;
    const int j = cand_cross(a, n, target, scale, &dummy);
    const int32_t chosen = a[j].id;

    if (logprob) {
        double z = 0;
        for (int i = 0; i < n; i++) z += a[i].e;
        *logprob = (float)(((double)a[j].key - md) / T - log(z));
    }
    // Leave the final logits behind: scaled for the kept tokens, -inf elsewhere.
    for (int i = 0; i < vocab; i++) logits[i] = -INFINITY;
    for (int i = 0; i < n; i++) logits[a[i].id] = (float)((double)a[i].key / T);
    return chosen;
}

// ----------------------------------------------------------------------------
// top-n logprobs

// Heap helpers over token ids: the root is the worst (last in the order) of
// the ids held, so it is the one to evict.
static inline int samp_id_before(const float *l, int32_t a, int32_t b) {
    float la = isnan(l[a]) ? -INFINITY : l[a], lb = isnan(l[b]) ? -INFINITY : l[b];
    return la > lb || (la == lb && a < b);
}

static void samp_sift_down(const float *l, int32_t *h, int n, int i) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && samp_id_before(l, h[c], h[c + 1])) c++; // the worse child
        if (!samp_id_before(l, h[i], h[c])) return;
        int32_t t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

// O(vocab log n) with no scratch: ids itself is the heap. n is clamped to
// [0, vocab]; NaN logits count as -inf.
void sampling_topn_logprobs(const float *logits, int vocab, int n, int32_t *ids,
                            float *logprobs) {
    if (n > vocab) n = vocab;
    if (n <= 0) return;
    float m = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > m) m = logits[i];
    double lse = -INFINITY;
    if (m == INFINITY) m = FLT_MAX; // degenerate; keeps the arithmetic finite
    if (m > -INFINITY) {
        double s = 0;
        for (int i = 0; i < vocab; i++)
            if (!isnan(logits[i])) s += exp(fmin((double)logits[i], FLT_MAX) - m);
        lse = m + log(s);
    }

    int size = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (size < n) { // push, sift up
            int c = size++;
            ids[c] = i;
            while (c > 0) {
                int par = (c - 1) / 2;
                if (!samp_id_before(logits, ids[par], ids[c])) break;
                int32_t t = ids[par];
                ids[par] = ids[c];
                ids[c] = t;
                c = par;
            }
        } else if (samp_id_before(logits, i, ids[0])) {
            ids[0] = i;
            samp_sift_down(logits, ids, size, 0);
        }
    }
    // Pop the worst to the back until the heap is empty: best first.
    for (int end = size - 1; end > 0; end--) {
        int32_t t = ids[0];
        ids[0] = ids[end];
        ids[end] = t;
        samp_sift_down(logits, ids, end, 0);
    }
    for (int i = 0; i < n; i++) {
        float l = logits[ids[i]];
        logprobs[i] = (isnan(l) || lse == -INFINITY) ? -INFINITY
                                                      : (float)(fmin((double)l, FLT_MAX) - lse);
    }
}
