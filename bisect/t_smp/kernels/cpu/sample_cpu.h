// sample_cpu.h: the CPU twin of kernels/cuda/sample.cu (on-device sampling).
//
// Penalty histories are count tables: counts (n_slots, vocab) uint32, entry
// bit 31 = "the id is in the request's prompt or completion", bits 0..30 =
// "times generated". That is all the penalties of sampling.c read, so
// applying them from the table gives the same bits as sampling_apply_penalties
// over the token list.
#ifndef SLUICE_SAMPLE_CPU_H
#define SLUICE_SAMPLE_CPU_H

#include <stdint.h>

#include "backend.h"

#define SAMPLE_SEEN 0x80000000u // counts entry: id in the history

// Clears slots reset_slots[0..n_reset) of counts (n_slots, vocab), then adds
// the entries: hist_tok[i] (id | SAMPLE_HIST_GEN when generated) to slot
// hist_slot[i]. Ids outside [0, vocab) and slots < 0 are ignored.
void cpu_sample_hist_update(uint32_t *counts, int vocab, const int32_t *reset_slots,
                            int n_reset, const int32_t *hist_slot, const uint32_t *hist_tok,
                            int n_hist);

// The penalties of p (repetition, presence, frequency) applied in place to
// logits (vocab) from one slot's row of the count table, cnt (vocab).
void cpu_sample_penalties(const SampleRow *p, float *logits, int vocab, const uint32_t *cnt);

// For each row r of logits (n, vocab) fp32 (modified in place): when top_n >
// 0, top_ids/top_lps (n, top_n) get the row's top_n (id, logprob) BEFORE any
// sampling setting (sampling_topn_logprobs; entries past vocab are (0, 0));
// then the penalties of rows[r].slot's history in counts (NULL when no row
// has a slot), and sampling_sample's pipeline with u = sampling_uniform(seed,
// step): ids[r] is the token, logprob[r] (NULL: not wanted) its logprob.
void cpu_sample_rows(int32_t *ids, float *logprob, int32_t *top_ids, float *top_lps, int top_n,
                     float *logits, int n, int vocab, const SampleRow *rows,
                     const uint32_t *counts);

#endif
