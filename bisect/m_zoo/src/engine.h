// engine.h: the generation loop of one replica.
//
// Takes this replica's share of the prompts, checks each request, and runs the
// scheduler / model / sampler loop until every request has finished, handing
// each completion to the writer the moment it finishes.
#ifndef SLUICE_ENGINE_H
#define SLUICE_ENGINE_H

#include <stdint.h>

#include "h5io.h"
#include "model.h"
#include "sampling.h"
#include "scheduler.h"

typedef struct {
    int max_batch;          // sequences per step (--max-batch)
    int max_tokens;         // rows per step (--max-num-tokens)
    int block_size;         // tokens per KV block (--kv-block-size)
    int kv_blocks;          // KV pool size in blocks
    SchedPolicy policy;     // --sched reserve|preempt
    int max_new_tokens;     // default when the input has no per-request value
    int max_seq_len;        // context length (prompt + completion)
    int ignore_eos;         // do not stop at the model's eos ids
    int n_stop;             // extra stop token ids (job-wide), always honoured
    int32_t stop_ids[64];
    int strict;             // any bad request fails the job before it starts
    SamplingParams sampling; // job-wide defaults for fields the input lacks
    int logprobs;           // record the chosen tokens' log probabilities
    int top_logprobs;       // and the N most likely tokens at each position (0: none),
                            // under the model's distribution (before sampling settings)
    double progress_every;  // seconds between progress lines on stderr (0: none)
    double checkpoint_every; // seconds between writer checkpoints (finished segments)
    // Asked before every step (the same answer on every rank of a group):
    // 0 go on; 1 drain: admit nothing new, keep decoding running requests;
    // 2 stop now (running requests are left for a resumed job). NULL: never.
    int (*should_stop)(void *ctx);
    void *stop_ctx;
    // Text of a completion for the writer (malloc'd; the engine frees it), or
    // NULL for none. NULL callback: ids only.
    char *(*decode)(void *ctx, const int32_t *ids, int n);
    void *decode_ctx;
    // Tensor parallelism: after each step's sampling, makes every rank of the
    // group hold the group leader's tokens and logprobs (n of each), so the
    // ranks' schedulers can never diverge. NULL on a single rank.
    void (*sync_tokens)(void *ctx, int32_t *tokens, float *logprobs, int n);
    void *sync_ctx;
} EngineOptions;

typedef struct {
    int64_t n_requests, n_ok, n_errors, n_stop, n_length;
    int64_t prompt_tokens, output_tokens;
    double seconds;        // wall time of the generation loop
    int interrupted;       // stopped by should_stop before every request finished
    long steps, preemptions;
    int max_seqs_seen, max_rows_seen;
    int64_t n_lat;
    double *ttft_s;        // (n_lat) per finished request; freed by engine_stats_free
    double *tpot_s;        // (n_lat) time per output token after the first
    double *latency_s;     // (n_lat)
} EngineStats;

// Fills defaults (throughput-sized, greedy).
void engine_options_defaults(EngineOptions *o);

// Checks request i of ps against the model and options. Returns NULL when it
// is fine, else a reason (written into why[0..n)).
const char *engine_check_request(const ModelConfig *c, const PromptSet *ps, int64_t i,
                                 const EngineOptions *o, int kv_blocks_total, char *why,
                                 int n);

// Runs requests indices[0..n) of ps (all of them when indices is NULL) to
// completion on m, appending each completion to w. Allocates the model's KV
// pool (o->kv_blocks blocks) if it has none. w may be NULL (benchmarks: the
// completions are counted, not written). With o->strict, the first bad
// request fails the call before anything runs or is written. Returns 0, or -1
// with err.
int engine_run(Model *m, const PromptSet *ps, const int64_t *indices, int64_t n,
               const EngineOptions *o, h5_writer *w, EngineStats *st, sl_err *err);

void engine_stats_free(EngineStats *st);

// p-th percentile (0..100) of v[0..n) (sorts a copy); 0 when n == 0.
double engine_percentile(const double *v, int64_t n, double p);

#endif
