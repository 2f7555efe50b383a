// scheduler.h: the paged KV block pool and the iteration-level scheduler.
//
// The pool holds n_blocks blocks of block_size tokens; each sequence owns a
// block table. The scheduler decides, step by step, which token rows run:
// first one decode token for every running sequence that has one, then
// prefill chunks of partly prefilled sequences, then new sequences admitted
// from the waiting queue (FIFO) while the step's budgets (max_seqs sequences,
// max_tokens rows) and the pool allow. Prompts longer than the token budget
// are split into chunks over several steps.
//
// Two policies:
//   SCHED_RESERVE  a sequence is admitted only when blocks for its worst case
//                  (prompt + max new tokens) are free, and takes them at once:
//                  a started sequence is never evicted.
//   SCHED_PREEMPT  blocks are taken as tokens arrive; when the pool runs dry,
//                  the most recently admitted running sequence is preempted:
//                  its blocks are freed and it goes back to the head of the
//                  queue, to be recomputed (prompt + what it generated so far)
//                  when blocks allow.
// The scheduler knows nothing about models or sampling: a sequence is a
// growing token array.
#ifndef SLUICE_SCHEDULER_H
#define SLUICE_SCHEDULER_H

#include <stdint.h>

#include "batch.h"

typedef enum { SCHED_RESERVE = 0, SCHED_PREEMPT = 1 } SchedPolicy;

typedef enum { SEQ_WAITING = 0, SEQ_RUNNING, SEQ_FINISHED } SeqStatus;

typedef struct {
    int64_t id;         // the caller's request id
    int32_t *tokens;    // (max_len) prompt, then generated tokens; owned by the caller
    int prompt_len;
    int len;            // prompt_len + generated so far
    int max_len;        // len never exceeds this (prompt + max new, capped by the context)
    int n_computed;     // leading tokens whose K/V are in the cache
    int32_t *blocks;    // (blocks_for(max_len)) block table; owned by the scheduler
    int n_blocks;
    SeqStatus status;
    uint64_t admit_order; // larger = admitted more recently
    int n_preempted;
    uint64_t stamp;     // scheduler-private: the step that last took this sequence
    void *user;         // the caller's per-request state
} Seq;

typedef struct {
    SchedPolicy policy;
    int max_seqs, max_tokens;
    int block_size, n_blocks;
    // pool
    int32_t *free_blocks; // stack of free block ids
    int n_free;
    uint8_t *block_used;  // (n_blocks) 1 while owned, for leak / double-use checks
    // queues
    Seq **waiting;        // ring buffer, FIFO; preempted sequences go to the front
    int wait_head, wait_count, wait_cap;
    Seq **running;        // in admission order
    int n_running;
    uint64_t next_order;
    long n_preemptions;
    uint64_t step_no;
    int no_admit;         // set to stop admitting waiting sequences (draining)
    // the step being built (host arrays sized once)
    Batch batch;
    Seq **step_seqs;      // (max_seqs) sequence of each batch sequence slot
    int *step_chunk;      // (max_seqs) rows of each
} Sched;

// Sizes the pool and the step arrays. max_seq_len bounds any sequence's
// length (for block tables). n_queue bounds how many sequences may wait.
void sched_init(Sched *s, SchedPolicy policy, int max_seqs, int max_tokens, int block_size,
                int n_blocks, int max_seq_len, int n_queue);
void sched_free(Sched *s);

// Blocks needed to hold n tokens.
int sched_blocks_for(const Sched *s, int n);

// Queues a sequence (status SEQ_WAITING). seq->blocks must be NULL; the
// scheduler allocates it. The sequence's max_len must fit the pool.
void sched_add(Sched *s, Seq *seq);

// Builds the next step. Returns the number of rows (0 when nothing can run:
// nothing is waiting or running). The batch (s->batch) and s->step_seqs stay
// valid until the next call. A sequence whose rows reach its current length
// (len) has a logits row: the last of its rows.
int sched_step(Sched *s);

// After the caller appended a token to a sequence whose logits were produced
// (or decided it is finished), records the step's progress. Must be called
// once after each sched_step, before finishing sequences.
void sched_commit(Sched *s);

// Removes a running sequence (finished): its blocks return to the pool at once.
void sched_finish(Sched *s, Seq *seq);

// Blocks in use; 0 once every sequence has finished.
int sched_blocks_in_use(const Sched *s);

// Consistency check for tests: every block is owned by exactly one running
// sequence or free; returns 0 when consistent, else -1 (and prints why).
int sched_check(const Sched *s);

#endif
