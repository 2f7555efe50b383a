// engine.c: the generation loop (see engine.h).
//
// Each iteration: the scheduler packs a step (decode tokens first, then
// prefill chunks, then new admissions); the model runs it and the backend
// samples a token for every sequence that reached its end (its own sampler
// settings and random stream, on the device on a GPU: only the tokens and the
// logprobs asked for come back); finished sequences leave at once and their
// KV blocks go back to the pool. The loop never allocates.
//
// CPU/GPU overlap: the step is enqueued (model_forward_sample returns before a
// GPU has finished it), then the host writes the completions that finished in
// the previous step (detokenizing, HDF5, stats) and the checkpoint, and only
// then waits for the step's tokens. Completions are written in the order they
// finished, one step later than they finished; their timings are taken when
// they finished.
//
// Penalty histories: a request with penalties owns one of max_batch backend
// slots while it runs. Every token the step feeds through the model for it
// (prompt chunks, the decode token) is added to the slot's history in the
// same step, so at sampling time the slot holds exactly prompt + completion.
// A preempted request keeps its slot while waiting (its recomputed tokens are
// already in the history) unless a newly running request needs a slot and
// none is free; a request that lost its slot starts a new one when it runs
// again from position 0.
#include "engine.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    Seq seq;             // tokens: prompt then completion
    int64_t index;       // row in the prompts file
    SamplingParams sp;
    float *logprobs;     // (max_len - prompt_len) or NULL
    int32_t *top_ids;    // (max_len - prompt_len, top_logprobs) or NULL
    float *top_lps;
    double t_admit, t_first;
    double t_done;       // when it finished (its completion is written a step later)
    FinishReason fin;
    int admitted;
    int pen;             // uses penalties: needs a history slot
    int slot;            // history slot on the backend, -1 none
    int hist_done;       // tokens [0, hist_done) are in the slot's history
} Req;

void engine_options_defaults(EngineOptions *o) {
    memset(o, 0, sizeof *o);
    o->max_batch = 256;
    o->max_tokens = 8192;
    o->block_size = 32;
    o->kv_blocks = 0;
    o->policy = SCHED_PREEMPT;
    o->max_new_tokens = 128;
    o->sampling = sampling_defaults();
    o->progress_every = 5.0;
    o->checkpoint_every = 10.0;
    o->cuda_graphs = 1;
}

// ----------------------------------------------------------------------------
// request checks

// Per-request values from the prompts file; a NaN float or a negative
// integer in a row means "not given for this request" (sluice prep writes
// these sentinels when only some lines set a field): the job's default holds.
static int req_max_new(const PromptSet *ps, int64_t i, const EngineOptions *o) {
    return ps->max_new_tokens && ps->max_new_tokens[i] >= 0 ? ps->max_new_tokens[i]
                                                             : o->max_new_tokens;
}

#define PICK_F(field, dst) \
    if (ps->field && !isnan(ps->field[i])) dst = ps->field[i]

static SamplingParams req_sampling(const PromptSet *ps, int64_t i, const EngineOptions *o) {
    SamplingParams p = o->sampling;
    PICK_F(temperature, p.temperature);
    PICK_F(top_p, p.top_p);
    PICK_F(min_p, p.min_p);
    PICK_F(repetition_penalty, p.repetition_penalty);
    PICK_F(presence_penalty, p.presence_penalty);
    PICK_F(frequency_penalty, p.frequency_penalty);
    if (ps->top_k && ps->top_k[i] >= 0) p.top_k = ps->top_k[i];
    if (ps->seed && ps->seed[i] >= 0) p.seed = (uint64_t)ps->seed[i];
    else p.seed = o->sampling.seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(i + 1));
    return p;
}

const char *engine_check_request(const ModelConfig *c, const PromptSet *ps, int64_t i,
                                 const EngineOptions *o, int kv_blocks_total, char *why,
                                 int n) {
    int64_t len = ps->offsets[i + 1] - ps->offsets[i];
    const int32_t *t = ps->tokens + ps->offsets[i];
    if (len == 0) return snprintf(why, n, "empty prompt"), why;
    for (int64_t j = 0; j < len; j++)
        if (t[j] < 0 || t[j] >= c->vocab_size)
            return snprintf(why, n, "token id %d at prompt position %ld is outside the vocabulary "
                                    "[0, %d)",
                            t[j], (long)j, c->vocab_size),
                   why;
    if (len >= o->max_seq_len)
        return snprintf(why, n, "prompt of %ld tokens leaves no room in the context of %d tokens",
                        (long)len, o->max_seq_len),
               why;
    int mn = req_max_new(ps, i, o);
    if (mn < 1) return snprintf(why, n, "max_new_tokens must be >= 1 (got %d)", mn), why;
    SamplingParams sp = req_sampling(ps, i, o);
    const char *bad = sampling_validate(&sp);
    if (bad) return snprintf(why, n, "%s", bad), why;
    int64_t max_len = len + mn < o->max_seq_len ? len + mn : o->max_seq_len;
    int64_t need = (max_len + o->block_size - 1) / o->block_size;
    if (kv_blocks_total > 0 && need > kv_blocks_total)
        return snprintf(why, n,
                        "needs %ld KV blocks of %d tokens but the pool holds %d "
                        "(raise --kv-blocks or lower max_new_tokens)",
                        (long)need, o->block_size, kv_blocks_total),
               why;
    return NULL;
}

// ----------------------------------------------------------------------------
// helpers

static int is_stop(const ModelConfig *c, const EngineOptions *o, int32_t t) {
    for (int i = 0; i < o->n_stop; i++)
        if (o->stop_ids[i] == t) return 1;
    if (o->ignore_eos) return 0;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == t) return 1;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double engine_percentile(const double *v, int64_t n, double p) {
    if (n <= 0) return 0;
    double *c = sl_malloc(sizeof(double) * n);
    memcpy(c, v, sizeof(double) * n);
    qsort(c, n, sizeof(double), cmp_double);
    double r = p / 100.0 * (n - 1);
    int64_t lo = (int64_t)floor(r), hi = lo + 1 < n ? lo + 1 : lo;
    double out = c[lo] + (c[hi] - c[lo]) * (r - lo);
    free(c);
    return out;
}

void engine_stats_free(EngineStats *st) {
    if (!st) return;
    free(st->ttft_s);
    free(st->tpot_s);
    free(st->latency_s);
    st->ttft_s = st->tpot_s = st->latency_s = NULL;
}

static void fmt_eta(char *buf, int n, double s) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "?");
        return;
    }
    long t = (long)(s + 0.5);
    snprintf(buf, n, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
}

static int emit(h5_writer *w, const EngineOptions *o, Req *r, FinishReason fin,
                const char *error, double t0, double now, EngineStats *st, sl_err *err) {
    // now: when the request finished
    Completion c = {0};
    c.prompt_index = r->index;
    c.prompt_len = r->seq.prompt_len;
    c.tokens = r->seq.tokens + r->seq.prompt_len;
    c.n_tokens = r->seq.len - r->seq.prompt_len;
    c.finish = fin;
    c.error = error;
    c.logprobs = r->logprobs;
    c.top_ids = r->top_ids;
    c.top_logprobs = r->top_lps;
    if (r->admitted) {
        c.queue_s = (float)(r->t_admit - t0);
        c.ttft_s = (float)(r->t_first - r->t_admit);
        c.latency_s = (float)(now - r->t_admit);
        int64_t k = st->n_lat++;
        st->ttft_s[k] = r->t_first - r->t_admit;
        st->latency_s[k] = now - r->t_admit;
        st->tpot_s[k] = c.n_tokens > 1 ? (now - r->t_first) / (c.n_tokens - 1) : 0.0;
    }
    if (fin == FINISH_ERROR) st->n_errors++;
    else st->n_ok++;
    if (fin == FINISH_STOP) st->n_stop++;
    if (fin == FINISH_LENGTH) st->n_length++;
    st->output_tokens += c.n_tokens;
    if (!w) return 0;
    char *text = o->decode ? o->decode(o->decode_ctx, c.tokens, c.n_tokens) : NULL;
    c.text = text;
    int rc = h5_writer_append(w, &c, err);
    free(text);
    return rc;
}

// Releases what a request holds once its completion is written.
static void req_release(Req *r) {
    free(r->seq.tokens);
    r->seq.tokens = NULL;
    free(r->logprobs);
    r->logprobs = NULL;
    free(r->top_ids);
    free(r->top_lps);
    r->top_ids = NULL;
    r->top_lps = NULL;
}

static int uses_penalties(const SamplingParams *p) {
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

// Penalty-history slots: a free stack and each slot's owner.
typedef struct {
    int n;
    int *free_stack, n_free;
    Req **owner;
} Slots;

// A slot for r (which is about to run): a free one, else one held by a
// request that is not running (preempted, waiting). There are as many slots
// as sequences may run at once, so one of the two exists.
static int slot_get(Slots *sl, Req *r) {
    int s = -1;
    if (sl->n_free > 0) {
        s = sl->free_stack[--sl->n_free];
    } else {
        for (int i = 0; i < sl->n && s < 0; i++)
            if (sl->owner[i] && sl->owner[i]->seq.status != SEQ_RUNNING) s = i;
        SL_CHECK(s >= 0);
        sl->owner[s]->slot = -1; // it starts a new history when it runs again
    }
    sl->owner[s] = r;
    r->slot = s;
    r->hist_done = 0;
    return s;
}

static void slot_put(Slots *sl, Req *r) {
    if (r->slot < 0) return;
    sl->owner[r->slot] = NULL;
    sl->free_stack[sl->n_free++] = r->slot;
    r->slot = -1;
}

// ----------------------------------------------------------------------------
// the loop

int engine_run(Model *m, const PromptSet *ps, const int64_t *indices, int64_t n,
               const EngineOptions *o_in, h5_writer *w, EngineStats *st, sl_err *err) {
    const ModelConfig *c = &m->cfg;
    EngineOptions o = *o_in;
    if (o.max_seq_len <= 0 || o.max_seq_len > c->max_seq_len) o.max_seq_len = c->max_seq_len;
    if (o.max_tokens < 1 || o.max_batch < 1 || o.block_size < 1 || o.kv_blocks < 1)
        return sl_errf(err, "engine: max_tokens, max_batch, block_size and kv_blocks must be >= 1");
    memset(st, 0, sizeof *st);
    if (!indices) n = ps->n;
    st->n_requests = n;
    int rc = -1;
    Req *reqs = sl_calloc(n ? n : 1, sizeof *reqs);
    char *bad = sl_calloc(n ? n : 1, 1);
    char **why = sl_calloc(n ? n : 1, sizeof(char *));
    st->ttft_s = sl_calloc(n ? n : 1, sizeof(double));
    st->tpot_s = sl_calloc(n ? n : 1, sizeof(double));
    st->latency_s = sl_calloc(n ? n : 1, sizeof(double));
    Sched S;
    memset(&S, 0, sizeof S);
    Slots slots;
    memset(&slots, 0, sizeof slots);
    Backend *be = m->be;

    // 1) check every request first; in strict mode one bad request stops the job
    for (int64_t k = 0; k < n; k++) {
        int64_t i = indices ? indices[k] : k;
        char buf[512];
        const char *r = engine_check_request(c, ps, i, &o, o.kv_blocks, buf, sizeof buf);
        if (r) {
            bad[k] = 1;
            why[k] = sl_strdup(r);
            if (o.strict) {
                sl_errf(err, "request %ld: %s (--strict)", (long)i, r);
                goto done;
            }
        }
    }
    if (!m->k_cache) model_kv_alloc(m, o.kv_blocks, o.block_size);
    if (m->attn.block_size != o.block_size) {
        sl_errf(err, "engine: KV pool block size %d differs from --kv-block-size %d",
                m->attn.block_size, o.block_size);
        goto done;
    }
    sched_init(&S, o.policy, o.max_batch, o.max_tokens, o.block_size, m->kv_blocks,
               o.max_seq_len, (int)(n ? n : 1));
    if (!be->sample || !be->sample_reserve || !be->sample_prepare || !be->sample_wait) {
        sl_errf(err, "engine: the %s backend cannot sample", be->name);
        goto done;
    }
    // history slots only when some request uses penalties
    int any_pen = 0;
    for (int64_t k = 0; k < n && !any_pen; k++) {
        int64_t i = indices ? indices[k] : k;
        if (!bad[k]) {
            SamplingParams sp = req_sampling(ps, i, &o);
            any_pen = uses_penalties(&sp);
        }
    }
    slots.n = any_pen ? o.max_batch : 0;
    slots.free_stack = sl_calloc(o.max_batch, sizeof(int));
    slots.owner = sl_calloc(o.max_batch, sizeof(Req *));
    for (int i = slots.n - 1; i >= 0; i--) slots.free_stack[slots.n_free++] = i;
    be->sample_reserve(be, slots.n, c->vocab_size, o.max_tokens, o.top_logprobs, o.logprobs);
    if (be->set_graph_mode) be->set_graph_mode(be, o.cuda_graphs ? 1 : 0);
    long graph_caps0 = 0, graph_steps0 = 0; // the backend's counters span its lifetime
    if (be->graph_stats) be->graph_stats(be, &graph_caps0, &graph_steps0);

    // 2) queue the good requests; write the bad ones' error rows right away
    double t0 = sl_now();
    for (int64_t k = 0; k < n; k++) {
        int64_t i = indices ? indices[k] : k;
        Req *r = &reqs[k];
        r->index = i;
        int64_t plen = ps->offsets[i + 1] - ps->offsets[i];
        r->seq.prompt_len = r->seq.len = (int)plen;
        if (bad[k]) {
            r->seq.tokens = NULL;
            r->seq.len = r->seq.prompt_len = plen > 0 ? (int)plen : 0;
            Completion cpl = {.prompt_index = i, .prompt_len = (int32_t)plen,
                              .finish = FINISH_ERROR, .error = why[k]};
            st->n_errors++;
            if (w && h5_writer_append(w, &cpl, err)) goto done;
            continue;
        }
        int mn = req_max_new(ps, i, &o);
        int max_len = plen + mn < o.max_seq_len ? (int)plen + mn : o.max_seq_len;
        r->seq.max_len = max_len;
        r->seq.id = i;
        r->seq.user = r;
        r->seq.tokens = sl_malloc(sizeof(int32_t) * max_len);
        memcpy(r->seq.tokens, ps->tokens + ps->offsets[i], sizeof(int32_t) * plen);
        r->sp = req_sampling(ps, i, &o);
        r->pen = uses_penalties(&r->sp);
        r->slot = -1;
        if (o.logprobs) r->logprobs = sl_calloc(max_len - plen, sizeof(float));
        if (o.top_logprobs > 0) {
            r->top_ids = sl_calloc((size_t)(max_len - plen) * o.top_logprobs, sizeof(int32_t));
            r->top_lps = sl_calloc((size_t)(max_len - plen) * o.top_logprobs, sizeof(float));
        }
        st->prompt_tokens += plen;
        sched_add(&S, &r->seq);
    }

    // 3) step until everything has finished
    int64_t done_count = st->n_errors;
    double last_report = t0, last_ckpt = t0;
    int64_t last_tokens = 0;
    int draining = 0;
    Seq **fin_list = sl_malloc(sizeof(Seq *) * o.max_batch);
    Req **pending = sl_malloc(sizeof(Req *) * o.max_batch); // finished, not yet written
    int n_pending = 0;
    int32_t *next_tok = sl_malloc(sizeof(int32_t) * o.max_batch);
    float *next_lp = sl_malloc(sizeof(float) * o.max_batch);
    int top_n = o.top_logprobs;
    int32_t *step_top_ids = sl_malloc(sizeof(int32_t) * o.max_batch * (top_n ? top_n : 1));
    float *step_top_lps = sl_malloc(sizeof(float) * o.max_batch * (top_n ? top_n : 1));
    Seq **lseq = sl_malloc(sizeof(Seq *) * o.max_batch);
    SampleRow *srows = sl_calloc(o.max_batch, sizeof(SampleRow));
    int32_t *reset_slots = sl_malloc(sizeof(int32_t) * o.max_batch);
    int32_t *hist_slot = sl_malloc(sizeof(int32_t) * o.max_tokens);
    uint32_t *hist_tok = sl_malloc(sizeof(uint32_t) * o.max_tokens);
    for (;;) {
        int stop = o.should_stop ? o.should_stop(o.stop_ctx) : 0;
        if (stop && !draining) {
            draining = 1;
            S.no_admit = 1;
            LOGW("stopping: admitting no new requests (%d running, %d waiting)", S.n_running,
                 S.wait_count);
        }
        if (stop == 2) {
            st->interrupted = S.n_running + S.wait_count > 0;
            break;
        }
        int rows = sched_step(&S);
        if (rows == 0) {
            // Nothing runnable: all done, drained, or the scheduler is stuck (a bug).
            SL_CHECK(S.n_running == 0 && (S.wait_count == 0 || draining));
            st->interrupted = S.wait_count > 0;
            break;
        }
        Batch *b = &S.batch;
        double now = sl_now();
        for (int k = 0; k < b->n_seqs; k++) {
            Req *r = S.step_seqs[k]->user;
            if (!r->admitted) {
                r->admitted = 1;
                r->t_admit = now;
            }
        }
        if (b->n_seqs > st->max_seqs_seen) st->max_seqs_seen = b->n_seqs;
        if (rows > st->max_rows_seen) st->max_rows_seen = rows;
        st->steps++;

        // The step's history updates (every token it feeds, for requests with
        // penalties) and, in logits-row order, its sampling requests.
        SampleHistory hist = {0, reset_slots, 0, hist_slot, hist_tok};
        int nl = 0;
        for (int k = 0; k < b->n_seqs; k++) {
            Seq *q = S.step_seqs[k];
            Req *r = q->user;
            int end = q->n_computed + S.step_chunk[k];
            if (r->pen) {
                if (r->slot < 0) reset_slots[hist.n_reset++] = slot_get(&slots, r);
                for (int t = r->hist_done; t < end; t++) {
                    SL_CHECK(hist.n_hist < o.max_tokens);
                    hist_slot[hist.n_hist] = r->slot;
                    hist_tok[hist.n_hist++] =
                        (uint32_t)q->tokens[t] | (t >= q->prompt_len ? SAMPLE_HIST_GEN : 0u);
                }
                if (end > r->hist_done) r->hist_done = end;
            }
            if (end != q->len) continue;
            const SamplingParams *sp = &r->sp;
            srows[nl] = (SampleRow){sp->temperature, sp->top_p, sp->min_p,
                                    sp->repetition_penalty, sp->presence_penalty,
                                    sp->frequency_penalty, sp->top_k, r->pen ? r->slot : -1,
                                    sp->seed, (uint64_t)(q->len - q->prompt_len)};
            lseq[nl++] = q;
        }
        SL_CHECK(nl == b->n_logits);

        // Enqueue the step, write what finished in the previous one while the
        // device computes, then wait for this step's tokens.
        be->sample_prepare(be, srows, nl, &hist);
        model_forward_sample(m, b);
        sched_commit(&S);
        for (int j = 0; j < n_pending; j++) {
            Req *r = pending[j];
            if (emit(w, &o, r, r->fin, NULL, t0, r->t_done, st, err)) goto loop_fail;
            req_release(r);
        }
        n_pending = 0;
        if (w && o.checkpoint_every >= 0 && now - last_ckpt >= o.checkpoint_every) {
            if (h5_writer_flush(w, err)) goto loop_fail; // finished rows are safe on disk
            last_ckpt = now;
        }
        SampleOut out = {next_tok, o.logprobs ? next_lp : NULL, top_n ? step_top_ids : NULL,
                         top_n ? step_top_lps : NULL};
        be->sample_wait(be, &out, nl);
        if (!o.logprobs)
            for (int j = 0; j < nl; j++) next_lp[j] = 0;

        if (o.sync_tokens) o.sync_tokens(o.sync_ctx, next_tok, next_lp, nl);

        now = sl_now();
        int nfin = 0;
        for (int j = 0; j < nl; j++) {
            Seq *q = lseq[j];
            Req *r = q->user;
            int32_t t = next_tok[j];
            if (q->len == q->prompt_len) r->t_first = now;
            if (r->logprobs) r->logprobs[q->len - q->prompt_len] = next_lp[j];
            if (r->top_ids) { // the model's own distribution, before sampling changed it
                size_t at = (size_t)(q->len - q->prompt_len) * top_n;
                memcpy(r->top_ids + at, step_top_ids + (size_t)j * top_n,
                       sizeof(int32_t) * top_n);
                memcpy(r->top_lps + at, step_top_lps + (size_t)j * top_n, sizeof(float) * top_n);
            }
            q->tokens[q->len++] = t;
            FinishReason fin = FINISH_ERROR;
            if (is_stop(c, &o, t)) fin = FINISH_STOP;
            else if (q->len >= q->max_len) fin = FINISH_LENGTH;
            if (fin != FINISH_ERROR) {
                r->fin = fin;
                r->t_done = now;
                pending[n_pending++] = r;
                fin_list[nfin++] = q;
            }
        }
        for (int j = 0; j < nfin; j++) {
            sched_finish(&S, fin_list[j]);
            slot_put(&slots, fin_list[j]->user);
        }
        done_count += nfin;

        if (o.progress_every > 0 && now - last_report >= o.progress_every) {
            double rate = (st->output_tokens - last_tokens) / (now - last_report);
            double req_rate = (done_count - st->n_errors) / (now - t0);
            char eta[32];
            fmt_eta(eta, sizeof eta, req_rate > 0 ? (n - done_count) / req_rate : -1);
            LOGI("progress: %ld/%ld done, %.0f tok/s, running %d, waiting %d, kv %d/%d blocks, "
                 "ETA %s",
                 (long)done_count, (long)n, rate, S.n_running, S.wait_count,
                 sched_blocks_in_use(&S), S.n_blocks, eta);
            last_report = now;
            last_tokens = st->output_tokens;
        }
    }
    // the last step's finished requests
    for (int j = 0; j < n_pending; j++) {
        Req *r = pending[j];
        if (emit(w, &o, r, r->fin, NULL, t0, r->t_done, st, err)) goto loop_fail;
        req_release(r);
    }
    n_pending = 0;
    st->seconds = sl_now() - t0;
    st->preemptions = S.n_preemptions;
    if (be->graph_stats) {
        be->graph_stats(be, &st->graph_captures, &st->graph_steps);
        st->graph_captures -= graph_caps0;
        st->graph_steps -= graph_steps0;
    }
    if (!st->interrupted) SL_CHECK(sched_blocks_in_use(&S) == 0); // every block came back
    rc = 0;
loop_fail:
    free(fin_list);
    free(pending);
    free(next_tok);
    free(next_lp);
    free(step_top_ids);
    free(step_top_lps);
    free(lseq);
    free(srows);
    free(reset_slots);
    free(hist_slot);
    free(hist_tok);
done:
    for (int64_t k = 0; k < n; k++) {
        free(reqs[k].seq.tokens);
        free(reqs[k].seq.blocks);
        free(reqs[k].logprobs);
        free(reqs[k].top_ids);
        free(reqs[k].top_lps);
        free(why[k]);
    }
    free(reqs);
    free(bad);
    free(why);
    free(slots.free_stack);
    free(slots.owner);
    sched_free(&S);
    return rc;
}
