// sample.cu: per-request sampling on the GPU, so a sampling step copies a few
// numbers per row to the host instead of vocabulary-sized logits.
//
// The rules are src/sampling.c's, step for step (penalties, NaN/inf
// sanitising, greedy, temperature, min-p, top-k, top-p, the inverse-CDF draw
// with the request's counter-based uniform), and the decisions are made on the
// same integers: each surviving token's mass is q_i = floor(e_i * 2^s) with
// e_i = exp((l_i - max) / T) in double, and sums of integers do not depend on
// the order of a parallel reduction. So the GPU picks the CPU's token unless
// the CUDA and glibc exp() differ in the last bit right at a boundary (a
// "near-tie": the draw lands within a few units of 2^-46 of a cumulative
// boundary). Penalty arithmetic uses explicitly rounded double ops
// (__dmul_rn, ...) so nvcc cannot contract it into FMAs that the C reference
// (ISO C, no contraction) does not do.
//
// One CTA of 1024 threads per row; no sort. "The first token of the sorted
// order whose cumulative mass exceeds a target" (top-k's k-th token, top-p's
// cut, the draw, the top-n alternatives) is found by a radix descent: four
// passes over the 32-bit order-preserving image of the logit (8-bit digits,
// highest bucket first), building a histogram of mass per digit among the
// tokens that match the prefix found so far, then, among the tokens holding
// exactly that logit, up to three passes over the id digits (lowest first,
// the tie order of sampling.c). Histograms are warp-aggregated
// (__match_any_sync) before the shared-memory atomics, since logits crowd
// into a few buckets of the first digit.
//
// Penalty histories live in a count table (n_slots, vocab) uint32 (bit 31:
// seen in prompt or completion; bits 0..30: times generated), updated by
// cuda_sample_hist_update before the step.
#include <float.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "common.h"
}
#include "sample_cuda.h"

#define SMP_THREADS 1024
#define SMP_WARPS (SMP_THREADS / 32)
#define SMP_FULL 0xffffffffu
#define SMP_NOBUCKET 0xffffffffu
#define SMP_SEEN 0x80000000u
#define HIST_THREADS 256

typedef unsigned long long u64;

struct SmpShared {
    u64 hist[256];
    u64 ured[SMP_WARPS];
    double dred[SMP_WARPS];
    float fred[SMP_WARPS];
    int ired[SMP_WARPS];
    int pick;
    u64 acc, last;
    int n_list;
    int list[SAMPLE_MAX_TOP_N];
};

// ----------------------------------------------------------------------------
// helpers

// Order-preserving image of a float (no NaN): larger value, larger image;
// -0 and +0 map together (they compare equal in sampling.c).
static __device__ __forceinline__ uint32_t key_bits(float f) {
    uint32_t b = f == 0.0f ? 0u : __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
static __device__ __forceinline__ float bits_key(uint32_t u) {
    return __uint_as_float((u & 0x80000000u) ? (u ^ 0x80000000u) : ~u);
}

static __device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// sampling_uniform(seed, step), bit for bit.
static __device__ __forceinline__ double uniform_at(uint64_t seed, uint64_t step) {
    const uint64_t golden = 0x9e3779b97f4a7c15ull;
    uint64_t r = mix64(mix64(seed) + (step + 1) * golden);
    return (double)(r >> 11) * (1.0 / 9007199254740992.0); // 2^-53, exact
}

// Block-wide reductions: every thread returns the result; the warp partials
// are combined in the same order by every thread.
static __device__ u64 block_sum_u64(u64 v, SmpShared &sh) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(SMP_FULL, v, o);
    if ((threadIdx.x & 31) == 0) sh.ured[threadIdx.x >> 5] = v;
    __syncthreads();
    u64 s = 0;
    for (int w = 0; w < SMP_WARPS; w++) s += sh.ured[w];
    __syncthreads();
    return s;
}
static __device__ double block_sum_f64(double v, SmpShared &sh) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(SMP_FULL, v, o);
    if ((threadIdx.x & 31) == 0) sh.dred[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0;
    for (int w = 0; w < SMP_WARPS; w++) s += sh.dred[w];
    __syncthreads();
    return s;
}
static __device__ float block_max_f32(float v, SmpShared &sh) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(SMP_FULL, v, o));
    if ((threadIdx.x & 31) == 0) sh.fred[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = -INFINITY;
    for (int w = 0; w < SMP_WARPS; w++) s = fmaxf(s, sh.fred[w]);
    __syncthreads();
    return s;
}
static __device__ int block_min_i32(int v, SmpShared &sh) {
    for (int o = 16; o; o >>= 1) v = min(v, __shfl_xor_sync(SMP_FULL, v, o));
    if ((threadIdx.x & 31) == 0) sh.ired[threadIdx.x >> 5] = v;
    __syncthreads();
    int s = 0x7fffffff;
    for (int w = 0; w < SMP_WARPS; w++) s = min(s, sh.ired[w]);
    __syncthreads();
    return s;
}

// hist[bucket] += m, summed over the lanes of the warp with the same bucket
// first (one atomic per distinct bucket). Called by all 32 lanes.
static __device__ __forceinline__ void warp_hist_add(u64 *hist, uint32_t bucket, u64 m) {
    if (__all_sync(SMP_FULL, bucket == SMP_NOBUCKET)) return;
    const unsigned peers = __match_any_sync(SMP_FULL, bucket);
    u64 sum = 0;
#pragma unroll
    for (int j = 0; j < 32; j++) {
        u64 x = __shfl_sync(SMP_FULL, m, j);
        if ((peers >> j) & 1u) sum += x;
    }
    if (bucket != SMP_NOBUCKET && (int)(threadIdx.x & 31) == __ffs(peers) - 1)
        atomicAdd(&hist[bucket], sum);
}

// The order of sampling.c: a before b iff key(a) > key(b), or equal keys and
// a's id is lower. Given per-token masses, returns the first token (in that
// order) whose cumulative mass C exceeds target (target < total mass): its
// id, key and C. keyf(i) gives token i's key (no NaN), massf(i, key) its mass
// (0: not a candidate). Every thread of the block calls it and gets the same
// answer. Threads visit indices threadIdx.x + k * SMP_THREADS, as every loop
// of this file, so a thread only ever reads row entries it wrote itself.
template <class KeyF, class MassF>
static __device__ void find_cross(int vocab, int id_shift0, u64 target, KeyF keyf, MassF massf,
                                  SmpShared &sh, int *out_id, float *out_key, u64 *out_cum) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t kpre = 0, kmask = 0, ipre = 0, imask = 0;
    u64 acc = 0, last = 0;
    for (int pass = 0;; pass++) {
        const bool on_key = pass < 4;
        const int shift = on_key ? 24 - 8 * pass : id_shift0 - 8 * (pass - 4);
        if (shift < 0) break;
        for (int b = threadIdx.x; b < 256; b += SMP_THREADS) sh.hist[b] = 0;
        __syncthreads();
        for (int base = warp * 32; base < vocab; base += SMP_THREADS) {
            const int i = base + lane;
            uint32_t bucket = SMP_NOBUCKET;
            u64 m = 0;
            if (i < vocab) {
                const float k = keyf(i);
                const uint32_t kb = key_bits(k);
                const bool match = on_key ? (kb & kmask) == kpre
                                          : kb == kpre && ((uint32_t)i & imask) == ipre;
                if (match) {
                    m = massf(i, k);
                    if (m) bucket = on_key ? (kb >> shift) & 255u : ((uint32_t)i >> shift) & 255u;
                }
            }
            warp_hist_add(sh.hist, bucket, m);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int pick = -1, lastnz = -1;
            u64 a = acc;
            for (int j = 0; j < 256; j++) {
                const int b = on_key ? 255 - j : j; // keys descending, ids ascending
                const u64 h = sh.hist[b];
                if (!h) continue;
                lastnz = b;
                if (a + h > target) {
                    pick = b;
                    break;
                }
                a += h;
            }
            if (pick < 0) { // target >= total (cannot happen): the last candidate
                pick = lastnz < 0 ? 0 : lastnz;
                if (lastnz >= 0) a -= sh.hist[lastnz];
            }
            sh.pick = pick;
            sh.acc = a;
            sh.last = sh.hist[pick];
        }
        __syncthreads();
        const uint32_t pick = (uint32_t)sh.pick;
        acc = sh.acc;
        last = sh.last;
        if (on_key) kpre |= pick << shift, kmask |= 255u << shift;
        else ipre |= pick << shift, imask |= 255u << shift;
        __syncthreads(); // sh.pick/acc/last are rewritten by the next pass
    }
    *out_id = (int)ipre;
    *out_key = bits_key(kpre);
    *out_cum = acc + last;
}

struct UnitMass {
    __device__ u64 operator()(int, float) const { return 1; }
};

// q_i of sampling.c: 0 for -inf, tokens cut by top-k or min-p, and tokens
// whose e is below 2^-s.
struct QMass {
    double md, T, min_p, scale;
    float vk;
    bool topk;
    __device__ u64 operator()(int, float k) const {
        if (k == -INFINITY || (topk && k < vk)) return 0;
        const double e = exp(((double)k - md) / T);
        if (e < min_p) return 0;
        return (u64)(e * scale);
    }
};

// ----------------------------------------------------------------------------
// kernels

static __global__ void hist_reset_kernel(uint32_t *counts, int vocab, const int32_t *slots) {
    const int s = slots[blockIdx.y];
    if (s < 0) return;
    uint32_t *c = counts + (size_t)s * vocab;
    for (int i = blockIdx.x * HIST_THREADS + threadIdx.x; i < vocab; i += gridDim.x * HIST_THREADS)
        c[i] = 0;
}

static __global__ void hist_add_kernel(uint32_t *counts, int vocab, const int32_t *slot,
                                       const uint32_t *tok, int n) {
    const int i = blockIdx.x * HIST_THREADS + threadIdx.x;
    if (i >= n) return;
    const int s = slot[i];
    const uint32_t id = tok[i] & ~SAMPLE_HIST_GEN;
    if (s < 0 || id >= (uint32_t)vocab) return;
    uint32_t *c = counts + (size_t)s * vocab + id;
    atomicOr(c, SMP_SEEN);
    if (tok[i] & SAMPLE_HIST_GEN) atomicAdd(c, 1u);
}

static __global__ void __launch_bounds__(SMP_THREADS)
    sample_rows_kernel(int32_t *__restrict__ ids, float *__restrict__ logprob,
                       int32_t *__restrict__ top_ids, float *__restrict__ top_lps, int top_n,
                       float *__restrict__ logits, int vocab, const SampleRow *__restrict__ rows,
                       const uint32_t *__restrict__ counts, int id_shift0, int bits) {
    __shared__ SmpShared sh;
    const int r = blockIdx.x;
    float *row = logits + (size_t)r * vocab;
    const SampleRow p = rows[r];

    // 1) the model's own top-n, before anything changes the row
    if (top_n > 0) {
        const int N = min(top_n, vocab);
        auto rawkey = [row](int i) {
            const float l = row[i];
            return isnan(l) ? -INFINITY : l;
        };
        int idN;
        float kN;
        u64 cum;
        find_cross(vocab, id_shift0, (u64)(N - 1), rawkey, UnitMass(), sh, &idN, &kN, &cum);
        float m = -INFINITY;
        for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) m = fmaxf(m, row[i]); // NaN ignored
        m = block_max_f32(m, sh);
        if (m == INFINITY) m = FLT_MAX;
        double lse = -INFINITY;
        if (m > -INFINITY) {
            double s = 0;
            for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) {
                const float l = row[i];
                if (!isnan(l)) s += exp(fmin((double)l, (double)FLT_MAX) - (double)m);
            }
            s = block_sum_f64(s, sh);
            lse = (double)m + log(s);
        }
        if (threadIdx.x == 0) sh.n_list = 0;
        __syncthreads();
        const uint32_t kNb = key_bits(kN);
        for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) {
            const uint32_t kb = key_bits(rawkey(i));
            if (kb > kNb || (kb == kNb && i <= idN)) {
                const int at = atomicAdd(&sh.n_list, 1);
                if (at < SAMPLE_MAX_TOP_N) sh.list[at] = i;
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            const int cnt = min(sh.n_list, N);
            for (int a = 1; a < cnt; a++) { // insertion sort in sampling order
                const int x = sh.list[a];
                const uint32_t xb = key_bits(rawkey(x));
                int b = a - 1;
                while (b >= 0) {
                    const uint32_t yb = key_bits(rawkey(sh.list[b]));
                    if (!(xb > yb || (xb == yb && x < sh.list[b]))) break;
                    sh.list[b + 1] = sh.list[b];
                    b--;
                }
                sh.list[b + 1] = x;
            }
            int32_t *ti = top_ids + (size_t)r * top_n;
            float *tl = top_lps + (size_t)r * top_n;
            for (int j = 0; j < top_n; j++) {
                if (j < cnt) {
                    const float l = row[sh.list[j]];
                    ti[j] = sh.list[j];
                    tl[j] = (isnan(l) || lse == -INFINITY)
                                ? -INFINITY
                                : (float)(fmin((double)l, (double)FLT_MAX) - lse);
                } else {
                    ti[j] = 0, tl[j] = 0.0f;
                }
            }
        }
        __syncthreads();
    }

    // 2) penalties from the slot's history (sampling_apply_penalties' arithmetic)
    const bool do_rep = p.repetition_penalty != 1.0f;
    const bool do_pf = p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
    if (p.slot >= 0 && counts && (do_rep || do_pf)) {
        const uint32_t *cnt = counts + (size_t)p.slot * vocab;
        const double rep = p.repetition_penalty, pres = p.presence_penalty,
                     freq = p.frequency_penalty;
        for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) {
            const uint32_t c = cnt[i];
            if (!c) continue;
            const uint32_t gen = c & ~SMP_SEEN;
            double l = row[i];
            if (do_rep) l = l > 0 ? __ddiv_rn(l, rep) : __dmul_rn(l, rep);
            if (do_pf && gen > 0) l = __dsub_rn(l, __dadd_rn(pres, __dmul_rn(freq, (double)gen)));
            row[i] = __double2float_rn(l);
        }
    }

    // 3) NaN -> -inf, +inf -> FLT_MAX, and the maximum
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) {
        float l = row[i];
        if (isnan(l)) row[i] = l = -INFINITY;
        else if (l == INFINITY) row[i] = l = FLT_MAX;
        mx = fmaxf(mx, l);
    }
    mx = block_max_f32(mx, sh);
    if (mx == -INFINITY) { // nothing can be chosen
        if (threadIdx.x == 0) {
            ids[r] = 0;
            if (logprob) logprob[r] = -INFINITY;
        }
        return;
    }

    // 4) greedy: the first index holding the maximum
    if (!(p.temperature > 0)) {
        int best = 0x7fffffff;
        for (int i = threadIdx.x; i < vocab; i += SMP_THREADS)
            if (row[i] == mx) best = min(best, i);
        best = block_min_i32(best, sh);
        if (logprob) {
            double s = 0;
            for (int i = threadIdx.x; i < vocab; i += SMP_THREADS)
                s += exp((double)row[i] - (double)mx);
            s = block_sum_f64(s, sh);
            if (threadIdx.x == 0) logprob[r] = (float)(-log(s));
        }
        if (threadIdx.x == 0) ids[r] = best;
        return;
    }

    // 5) temperature, min-p, top-k: the candidates' integer masses
    auto key = [row](int i) { return row[i]; };
    QMass qm;
    qm.md = mx;
    qm.T = p.temperature;
    qm.min_p = p.min_p;
    qm.scale = ldexp(1.0, 63 - bits);
    qm.topk = p.top_k > 0 && p.top_k < vocab;
    qm.vk = -INFINITY;
    if (qm.topk) { // the k-th largest logit; ties with it stay
        int idk;
        u64 cum;
        find_cross(vocab, id_shift0, (u64)(p.top_k - 1), key, UnitMass(), sh, &idk, &qm.vk, &cum);
    }
    u64 total = 0;
    for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) total += qm(i, row[i]);
    total = block_sum_u64(total, sh);

    // 6) top-p: keep the prefix up to the first token where C >= ceil(top_p * total)
    const bool topp = p.top_p < 1.0f;
    int idp = 0;
    float kp = 0;
    if (topp) {
        const double bound = ceil((double)p.top_p * (double)total);
        const u64 need = bound < 1 ? 1 : bound >= (double)total ? total : (u64)bound;
        find_cross(vocab, id_shift0, need - 1, key, qm, sh, &idp, &kp, &total);
    }

    // 7) the draw, by inverse CDF in the same order
    const double u = uniform_at(p.seed, p.step);
    u64 target = (u64)(u * (double)total);
    if (target >= total) target = total - 1;
    int chosen;
    float kc;
    u64 cum;
    find_cross(vocab, id_shift0, target, key, qm, sh, &chosen, &kc, &cum);

    if (logprob) { // log of the chosen token's share of the kept mass
        const uint32_t kpb = key_bits(kp);
        double z = 0;
        for (int i = threadIdx.x; i < vocab; i += SMP_THREADS) {
            const float k = row[i];
            if (!qm(i, k)) continue;
            const uint32_t kb = key_bits(k);
            if (topp && !(kb > kpb || (kb == kpb && i <= idp))) continue;
            z += exp(((double)k - qm.md) / qm.T);
        }
        z = block_sum_f64(z, sh);
        if (threadIdx.x == 0) logprob[r] = (float)(((double)kc - qm.md) / qm.T - log(z));
    }
    if (threadIdx.x == 0) ids[r] = chosen;
}

// ----------------------------------------------------------------------------
// entry points

extern "C" void cuda_sample_hist_update(uint32_t *counts, int vocab, const int32_t *reset_slots,
                                        int n_reset, const int32_t *hist_slot,
                                        const uint32_t *hist_tok, int n_hist,
                                        cudaStream_t stream) {
    if (n_reset > 0) {
        int bx = (vocab + HIST_THREADS * 8 - 1) / (HIST_THREADS * 8);
        hist_reset_kernel<<<dim3(bx, n_reset), HIST_THREADS, 0, stream>>>(counts, vocab,
                                                                         reset_slots);
        CUDA_CHECK_LAUNCH();
    }
    if (n_hist > 0) {
        hist_add_kernel<<<(n_hist + HIST_THREADS - 1) / HIST_THREADS, HIST_THREADS, 0, stream>>>(
            counts, vocab, hist_slot, hist_tok, n_hist);
        CUDA_CHECK_LAUNCH();
    }
}

extern "C" void cuda_sample_rows(int32_t *ids, float *logprob, int32_t *top_ids, float *top_lps,
                                 int top_n, float *logits, int n, int vocab,
                                 const SampleRow *rows, const uint32_t *counts,
                                 cudaStream_t stream) {
    if (n <= 0) return;
    SL_CHECK(vocab >= 1 && vocab < (1 << 24));
    SL_CHECK(top_n >= 0 && top_n <= SAMPLE_MAX_TOP_N);
    // bits as in sampling.c: 2^bits >= vocab; id digits start at the highest
    // multiple of 8 below the bits of vocab - 1
    int bits = 0;
    while (bits < 62 && (1ll << bits) < vocab) bits++;
    int id_bits = 0;
    while ((1 << id_bits) < vocab) id_bits++;
    const int id_shift0 = id_bits <= 8 ? 0 : ((id_bits - 1) / 8) * 8;
    sample_rows_kernel<<<n, SMP_THREADS, 0, stream>>>(ids, logprob, top_ids, top_lps, top_n,
                                                      logits, vocab, rows, counts, id_shift0,
                                                      bits);
    CUDA_CHECK_LAUNCH();
}
