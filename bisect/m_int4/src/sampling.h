// sampling.h: per-request token sampling on the CPU (the reference that the
// GPU sampler is checked against).
//
// Every request carries its own SamplingParams and its own random stream: the
// uniform number used for the t-th generated token of a request is a pure
// function of (seed, t), so a request's output never depends on what else
// shares its batch or on the batch order.
#ifndef SLUICE_SAMPLING_H
#define SLUICE_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temperature;        // <= 0: greedy (argmax, ties -> lowest id)
    int top_k;                // <= 0: off
    float top_p;              // >= 1: off
    float min_p;              // <= 0: off
    float repetition_penalty; // 1: off (HF semantics, over prompt + generated ids)
    float presence_penalty;   // 0: off (OpenAI semantics, over generated ids)
    float frequency_penalty;  // 0: off (OpenAI semantics, over generated ids)
    uint64_t seed;
} SamplingParams;

// Defaults: greedy, all filters off, seed 0.
SamplingParams sampling_defaults(void);

// Returns a message naming the offending field when params are invalid (NaN,
// temperature < 0, top_p outside (0, 1], min_p outside [0, 1],
// repetition_penalty <= 0), else NULL. The string is static: either a literal
// or a thread-local buffer that the same thread's next call overwrites.
const char *sampling_validate(const SamplingParams *p);

// The request's uniform draw in [0, 1) for its step-th generated token.
double sampling_uniform(uint64_t seed, uint64_t step);

// Scratch space needed by sampling_sample for a vocabulary of this size (bytes).
size_t sampling_scratch_size(int vocab);

// Applies the penalties in place to logits (vocab), given the request's
// history: ids[0..n_prompt) are the prompt, ids[n_prompt..n_ids) generated.
// The exact rules (documented in sampling.c):
//   repetition: for each distinct id in the whole history, l = l > 0 ? l / r : l * r
//   presence/frequency: for each id generated c > 0 times,
//                       l -= presence + frequency * c
void sampling_apply_penalties(const SamplingParams *p, float *logits, int vocab,
                              const int32_t *ids, int n_ids, int n_prompt,
                              void *scratch);

// Picks the next token. logits (vocab) are modified in place (penalties,
// temperature, filters). step is the index of the token being generated (0 for
// the first generated token). When logprob is non-NULL it receives the log
// probability of the chosen token under the final (filtered, renormalised)
// distribution; for greedy, under softmax(logits after penalties).
// scratch must hold sampling_scratch_size(vocab) bytes.
int32_t sampling_sample(const SamplingParams *p, float *logits, int vocab,
                        const int32_t *ids, int n_ids, int n_prompt, uint64_t step,
                        float *logprob, void *scratch);

// The top-n (id, logprob) pairs of softmax(logits) in descending order (ties ->
// lower id first); n <= vocab. Used for optional logprob output.
void sampling_topn_logprobs(const float *logits, int vocab, int n, int32_t *ids,
                            float *logprobs);

#endif
