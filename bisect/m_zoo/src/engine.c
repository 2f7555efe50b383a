// engine.c: the generation loop (see engine.h).
//
// Each iteration: the scheduler packs a step (decode tokens first, then
// prefill chunks, then new admissions); the model runs it; every sequence that
// reached its end gets a token from its own sampler; finished sequences leave
// at once, their KV blocks go back to the pool and their completion goes to
// the writer. The loop never allocates.
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
    int admitted;
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
    float *logits = NULL;
    void *scratch = NULL;

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
    sched_set_window(&S, m->attn.window); // sliding-window models free blocks as they slide
    // pinned on a GPU: the logits come back every step that samples
    logits = m->be->host_alloc(m->be, sizeof(float) * (size_t)o.max_batch * c->vocab_size);
    int nthreads = omp_get_max_threads();
    size_t scratch_bytes = sampling_scratch_size(c->vocab_size);
    scratch = sl_malloc(scratch_bytes * nthreads);

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
    int32_t *next_tok = sl_malloc(sizeof(int32_t) * o.max_batch);
    float *next_lp = sl_malloc(sizeof(float) * o.max_batch);
    Seq **lseq = sl_malloc(sizeof(Seq *) * o.max_batch);
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

        // A step whose sampling rows are all plain greedy takes the argmax on
        // the device: no logits cross to the host.
        int greedy = 1;
        for (int k = 0; k < b->n_seqs && greedy; k++) {
            Seq *q = S.step_seqs[k];
            if (q->n_computed + S.step_chunk[k] != q->len) continue;
            const SamplingParams *sp = &((Req *)q->user)->sp;
            greedy = sp->temperature <= 0 && sp->repetition_penalty == 1.0f &&
                     sp->presence_penalty == 0 && sp->frequency_penalty == 0 && !o.logprobs &&
                     o.top_logprobs == 0;
        }
        if (greedy) model_forward_greedy(m, b, next_tok);
        else model_forward(m, b, logits);
        sched_commit(&S);

        // sequences with logits, in logits-row order
        int nl = 0;
        for (int k = 0; k < b->n_seqs; k++)
            if (S.step_seqs[k]->n_computed == S.step_seqs[k]->len) lseq[nl++] = S.step_seqs[k];
        SL_CHECK(nl == b->n_logits);

        // sample: each request from its own stream, so threads cannot change results
#pragma omp parallel for schedule(dynamic, 1) if (nl > 4)
        for (int j = 0; j < (greedy ? 0 : nl); j++) {
            Seq *q = lseq[j];
            Req *r = q->user;
            void *scr = (char *)scratch + scratch_bytes * omp_get_thread_num();
            float lp = 0;
            float *row = logits + (size_t)j * c->vocab_size;
            if (r->top_ids) { // the model's own distribution, before sampling changes it
                size_t at = (size_t)(q->len - q->prompt_len) * o.top_logprobs;
                sampling_topn_logprobs(row, c->vocab_size, o.top_logprobs, r->top_ids + at,
                                       r->top_lps + at);
            }
            next_tok[j] = sampling_sample(&r->sp, logits + (size_t)j * c->vocab_size,
                                          c->vocab_size, q->tokens, q->len, q->prompt_len,
                                          (uint64_t)(q->len - q->prompt_len),
                                          r->logprobs ? &lp : NULL, scr);
            next_lp[j] = lp;
        }

        if (o.sync_tokens) o.sync_tokens(o.sync_ctx, next_tok, next_lp, nl);

        now = sl_now();
        int nfin = 0;
        for (int j = 0; j < nl; j++) {
            Seq *q = lseq[j];
            Req *r = q->user;
            int32_t t = next_tok[j];
            if (q->len == q->prompt_len) r->t_first = now;
            if (r->logprobs) r->logprobs[q->len - q->prompt_len] = next_lp[j];
            q->tokens[q->len++] = t;
            FinishReason fin = FINISH_ERROR;
            if (is_stop(c, &o, t)) fin = FINISH_STOP;
            else if (q->len >= q->max_len) fin = FINISH_LENGTH;
            if (fin != FINISH_ERROR) {
                if (emit(w, &o, r, fin, NULL, t0, now, st, err)) goto loop_fail;
                fin_list[nfin++] = q;
            }
        }
        for (int j = 0; j < nfin; j++) {
            Req *r = fin_list[j]->user;
            sched_finish(&S, fin_list[j]);
            free(r->seq.tokens);
            r->seq.tokens = NULL;
            free(r->logprobs);
            r->logprobs = NULL;
            free(r->top_ids);
            free(r->top_lps);
            r->top_ids = NULL;
            r->top_lps = NULL;
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
        if (w && o.checkpoint_every >= 0 && now - last_ckpt >= o.checkpoint_every) {
            if (h5_writer_flush(w, err)) goto loop_fail; // finished rows are safe on disk
            last_ckpt = now;
        }
    }
    st->seconds = sl_now() - t0;
    st->preemptions = S.n_preemptions;
    if (!st->interrupted) SL_CHECK(sched_blocks_in_use(&S) == 0); // every block came back
    rc = 0;
loop_fail:
    free(fin_list);
    free(next_tok);
    free(next_lp);
    free(lseq);
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
    if (logits) m->be->host_free(m->be, logits);
    free(scratch);
    sched_free(&S);
    return rc;
}
