// sample_cpu.c: the CPU twin of the on-device sampler (see sample_cpu.h).
//
// Written on top of the reference sampler itself (src/sampling.c): the only
// new code is the penalty step reading a count table instead of a token
// list, with sampling_apply_penalties' arithmetic (double, rounded once).
#include "cpu/sample_cpu.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "sampling.h"

void cpu_sample_hist_update(uint32_t *counts, int vocab, const int32_t *reset_slots,
                            int n_reset, const int32_t *hist_slot, const uint32_t *hist_tok,
                            int n_hist) {
    for (int i = 0; i < n_reset; i++)
        if (reset_slots[i] >= 0)
            memset(counts + (size_t)reset_slots[i] * vocab, 0, sizeof(uint32_t) * vocab);
    for (int i = 0; i < n_hist; i++) {
        uint32_t id = hist_tok[i] & ~SAMPLE_HIST_GEN;
        if (hist_slot[i] < 0 || id >= (uint32_t)vocab) continue;
        uint32_t *c = counts + (size_t)hist_slot[i] * vocab + id;
        *c |= SAMPLE_SEEN;
        if (hist_tok[i] & SAMPLE_HIST_GEN) (*c)++;
    }
}

// sampling_apply_penalties over a count table (same operations, same order).
void cpu_sample_penalties(const SampleRow *p, float *logits, int vocab,
                                  const uint32_t *cnt) {
    const double rep = p->repetition_penalty;
    const double pres = p->presence_penalty, freq = p->frequency_penalty;
    const int do_rep = p->repetition_penalty != 1.0f;
    const int do_pf = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (!do_rep && !do_pf) return;
    for (int i = 0; i < vocab; i++) {
        uint32_t c = cnt[i];
        if (!c) continue;
        uint32_t gen = c & ~SAMPLE_SEEN;
        double l = logits[i];
        if (do_rep) l = l > 0 ? l / rep : l * rep;
        if (do_pf && gen > 0) l -= pres + freq * (double)gen;
        logits[i] = (float)l;
    }
}

void cpu_sample_rows(int32_t *ids, float *logprob, int32_t *top_ids, float *top_lps, int top_n,
                     float *logits, int n, int vocab, const SampleRow *rows,
                     const uint32_t *counts) {
    size_t scr_bytes = sampling_scratch_size(vocab);
    int nthreads = omp_get_max_threads();
    void *scratch = sl_malloc(scr_bytes * (size_t)nthreads);
#pragma omp parallel for schedule(dynamic, 1) if (n > 4)
    for (int r = 0; r < n; r++) {
        const SampleRow *p = &rows[r];
        float *row = logits + (size_t)r * vocab;
        if (top_n > 0) {
            int32_t *ti = top_ids + (size_t)r * top_n;
            float *tl = top_lps + (size_t)r * top_n;
            sampling_topn_logprobs(row, vocab, top_n, ti, tl);
            for (int j = vocab; j < top_n; j++) ti[j] = 0, tl[j] = 0.0f;
        }
        if (p->slot >= 0 && counts)
            cpu_sample_penalties(p, row, vocab, counts + (size_t)p->slot * vocab);
        SamplingParams sp = sampling_defaults();
        sp.temperature = p->temperature;
        sp.top_k = p->top_k;
        sp.top_p = p->top_p;
        sp.min_p = p->min_p;
        sp.seed = p->seed; // penalties are done: sampling_sample gets no history
        float lp = 0;
        void *scr = (char *)scratch + scr_bytes * omp_get_thread_num();
        ids[r] = sampling_sample(&sp, row, vocab, NULL, 0, 0, p->step, logprob ? &lp : NULL, scr);
        if (logprob) logprob[r] = lp;
    }
    free(scratch);
}
