// tok_bpe.c: the BPE model of the tokenizer (Hugging Face `tokenizers`' BPE).
//
// A pre-token (one "word") is split into characters, each looked up in the
// vocabulary (with byte fallback to <0xNN> tokens, or the unk token), then
// pairs are merged lowest rank first, leftmost on ties, exactly as HF's
// Word::merge_all does with its binary heap. The vocabulary and the merges are
// open-addressed hash tables built once at load time and only read afterwards,
// so any number of threads may encode with one tok_bpe.
//
// Speed: results for words shorter than 256 bytes go into a per-thread,
// direct-mapped cache (no locks; each thread owns its own), keyed by the
// tokenizer's uid and the word, like HF's thread-local BPE cache.
#include <threads.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

// ----------------------------------------------------------------------------
// small helpers

void tok_ids_push(tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = sl_realloc(a->v, (size_t)a->cap * sizeof(int32_t));
    }
    a->v[a->n++] = id;
}

static inline uint64_t tok_mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

uint64_t tok_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001B3ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ tok_mix(w)) * 0x9E3779B97F4A7C15ULL;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ tok_mix(w ^ ((uint64_t)n << 56))) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

// ----------------------------------------------------------------------------
// vocabulary and merges

void tok_bpe_reserve(tok_bpe *m, int n_tokens, int n_merges, int32_t max_id) {
    m->n_ids = max_id + 1;
    m->tok = sl_calloc((size_t)m->n_ids, sizeof(char *));
    m->tok_len = sl_calloc((size_t)m->n_ids, sizeof(uint32_t));
    uint32_t vs = pow2_at_least((uint64_t)n_tokens * 2 + 1);
    m->vslots = sl_malloc(vs * sizeof(int32_t));
    memset(m->vslots, 0xff, vs * sizeof(int32_t));
    m->vmask = vs - 1;
    uint32_t ms = pow2_at_least((uint64_t)n_merges * 2 + 1);
    m->mslots = sl_malloc(ms * sizeof(tok_merge_slot));
    for (uint32_t i = 0; i < ms; i++) m->mslots[i].key = UINT64_MAX;
    m->mmask = ms - 1;
    m->unk_id = -1;
    for (int b = 0; b < 256; b++) m->byte_id[b] = -1;
}

int32_t tok_bpe_lookup(const tok_bpe *m, const char *s, size_t n) {
    uint32_t i = (uint32_t)tok_hash(s, n) & m->vmask;
    for (;;) {
        int32_t id = m->vslots[i];
        if (id < 0) return -1;
        if (m->tok_len[id] == n && memcmp(m->tok[id], s, n) == 0) return id;
        i = (i + 1) & m->vmask;
    }
}

int tok_bpe_add_token(tok_bpe *m, const char *s, size_t n, int32_t id, const char *where,
                      sl_err *err) {
    if (id < 0 || id >= m->n_ids)
        return sl_errf(err, "%s: id %d out of range", where, (int)id);
    if (m->tok[id])
        return sl_errf(err, "%s: id %d given to both \"%s\" and \"%.*s\"", where, (int)id,
                       m->tok[id], (int)n, s);
    m->tok[id] = sl_malloc(n + 1);
    memcpy(m->tok[id], s, n);
    m->tok[id][n] = 0;
    m->tok_len[id] = (uint32_t)n;
    uint32_t i = (uint32_t)tok_hash(s, n) & m->vmask;
    while (m->vslots[i] >= 0) i = (i + 1) & m->vmask;
    m->vslots[i] = id;
    return 0;
}

static inline uint32_t merge_slot0(const tok_bpe *m, uint64_t key) {
    return (uint32_t)(tok_mix(key) & m->mmask);
}

void tok_bpe_add_merge(tok_bpe *m, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t i = merge_slot0(m, key);
    while (m->mslots[i].key != UINT64_MAX && m->mslots[i].key != key) i = (i + 1) & m->mmask;
    if (m->mslots[i].key == UINT64_MAX) m->n_merges++;
    m->mslots[i] = (tok_merge_slot){key, rank, new_id};
}

static inline const tok_merge_slot *merge_get(const tok_bpe *m, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t i = merge_slot0(m, key);
    for (;;) {
        const tok_merge_slot *s = &m->mslots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mmask;
    }
}

void tok_bpe_free_fields(tok_bpe *m) {
    if (m->tok)
        for (int32_t i = 0; i < m->n_ids; i++) free(m->tok[i]);
    free(m->tok);
    free(m->tok_len);
    free(m->vslots);
    free(m->mslots);
}

// ----------------------------------------------------------------------------
// per-thread scratch and word cache

#define CACHE_SLOTS 8192 // per thread; direct mapped
#define CACHE_MAX_WORD 256

typedef struct {
    uint64_t h, uid;
    uint32_t wlen, nids;
    char *blob; // word bytes, then nids int32 ids (one allocation)
} cache_ent;

typedef struct {
    int32_t rank, pos, new_id;
} heap_ent;

struct tok_scratch {
    int32_t *sid, *prev, *next; // symbols: id, linked list (-1 ends)
    int cap;
    heap_ent *heap;
    int hcap;
    cache_ent *cache; // (CACHE_SLOTS)
};

static tss_t g_key;
static once_flag g_once = ONCE_FLAG_INIT;

static void scratch_destroy(void *p) {
    tok_scratch *s = p;
    if (!s) return;
    free(s->sid);
    free(s->prev);
    free(s->next);
    free(s->heap);
    if (s->cache)
        for (int i = 0; i < CACHE_SLOTS; i++) free(s->cache[i].blob);
    free(s->cache);
    free(s);
}

static void key_init(void) { tss_create(&g_key, scratch_destroy); }

static tok_scratch *scratch_get(void) {
    call_once(&g_once, key_init);
    tok_scratch *s = tss_get(g_key);
    if (!s) {
        s = sl_calloc(1, sizeof(*s));
        s->cache = sl_calloc(CACHE_SLOTS, sizeof(cache_ent));
        tss_set(g_key, s);
    }
    return s;
}

static void scratch_reserve(tok_scratch *s, int n) {
    if (n <= s->cap) return;
    s->cap = n * 2;
    s->sid = sl_realloc(s->sid, (size_t)s->cap * sizeof(int32_t));
    s->prev = sl_realloc(s->prev, (size_t)s->cap * sizeof(int32_t));
    s->next = sl_realloc(s->next, (size_t)s->cap * sizeof(int32_t));
}

// ----------------------------------------------------------------------------
// the merge loop

static inline int heap_less(heap_ent a, heap_ent b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(tok_scratch *s, int *hn, heap_ent e) {
    if (*hn == s->hcap) {
        s->hcap = s->hcap ? s->hcap * 2 : 256;
        s->heap = sl_realloc(s->heap, (size_t)s->hcap * sizeof(heap_ent));
    }
    int i = (*hn)++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!heap_less(e, s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static heap_ent heap_pop(tok_scratch *s, int *hn) {
    heap_ent top = s->heap[0], last = s->heap[--(*hn)];
    int i = 0, n = *hn;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(s->heap[c + 1], s->heap[c])) c++;
        if (!heap_less(s->heap[c], last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

static inline int utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

// Splits w into symbols (characters, byte-fallback bytes, unk) and merges them.
// Returns the number of symbols; the live ones are linked from index 0.
static int bpe_merge_word(const tok_bpe *m, tok_scratch *s, const char *w, size_t n) {
    scratch_reserve(s, (int)n + 1);
    int ns = 0;
    int have_unk = 0;
#define ADD_SYM(ID) (s->sid[ns] = (ID), ns++)
    for (size_t i = 0; i < n;) {
        int cl = utf8_len((unsigned char)w[i]);
        if (i + cl > n) cl = (int)(n - i);
        int32_t id = tok_bpe_lookup(m, w + i, cl);
        if (id >= 0) {
            if (have_unk) {
                ADD_SYM(m->unk_id);
                have_unk = 0;
            }
            ADD_SYM(id);
        } else {
            int fell_back = 0;
            if (m->byte_fallback) {
                fell_back = 1;
                for (int k = 0; k < cl; k++)
                    if (m->byte_id[(unsigned char)w[i + k]] < 0) fell_back = 0;
                if (fell_back) // HF leaves a pending unk pending here
                    for (int k = 0; k < cl; k++) ADD_SYM(m->byte_id[(unsigned char)w[i + k]]);
            }
            if (!fell_back && m->unk_id >= 0) {
                if (have_unk && !m->fuse_unk) ADD_SYM(m->unk_id);
                have_unk = 1;
            }
            // no unk token and no fallback: HF drops the character silently
        }
        i += cl;
    }
    if (have_unk) ADD_SYM(m->unk_id);
#undef ADD_SYM
    for (int i = 0; i < ns; i++) {
        s->prev[i] = i - 1;
        s->next[i] = i + 1 < ns ? i + 1 : -1;
    }
    int hn = 0;
    for (int i = 0; i + 1 < ns; i++) {
        const tok_merge_slot *ms = merge_get(m, s->sid[i], s->sid[i + 1]);
        if (ms) heap_push(s, &hn, (heap_ent){ms->rank, i, ms->new_id});
    }
    while (hn > 0) {
        heap_ent top = heap_pop(s, &hn);
        int p = top.pos;
        if (s->sid[p] < 0) continue; // removed
        int q = s->next[p];
        if (q < 0) continue;
        const tok_merge_slot *ms = merge_get(m, s->sid[p], s->sid[q]);
        if (!ms || ms->new_id != top.new_id) continue; // stale entry
        s->sid[p] = top.new_id;
        s->sid[q] = -1;
        s->next[p] = s->next[q];
        if (s->next[q] >= 0) s->prev[s->next[q]] = p;
        if (s->prev[p] >= 0) {
            const tok_merge_slot *l = merge_get(m, s->sid[s->prev[p]], s->sid[p]);
            if (l) heap_push(s, &hn, (heap_ent){l->rank, s->prev[p], l->new_id});
        }
        if (s->next[p] >= 0) {
            const tok_merge_slot *r = merge_get(m, s->sid[p], s->sid[s->next[p]]);
            if (r) heap_push(s, &hn, (heap_ent){r->rank, p, r->new_id});
        }
    }
    return ns;
}

void tok_bpe_word(const tok_bpe *m, const char *w, size_t n, tok_ids *out) {
    if (n == 0) return;
    if (m->ignore_merges) {
        int32_t id = tok_bpe_lookup(m, w, n);
        if (id >= 0) {
            tok_ids_push(out, id);
            return;
        }
    }
    tok_scratch *s = scratch_get();
    cache_ent *e = NULL;
    uint64_t h = 0;
    if (n < CACHE_MAX_WORD) {
        h = tok_hash(w, n);
        e = &s->cache[(h ^ tok_mix(m->uid)) & (CACHE_SLOTS - 1)];
        if (e->blob && e->h == h && e->uid == m->uid && e->wlen == n &&
            memcmp(e->blob, w, n) == 0) {
            const char *ids = e->blob + n;
            for (uint32_t i = 0; i < e->nids; i++) {
                int32_t id;
                memcpy(&id, ids + 4 * i, 4);
                tok_ids_push(out, id);
            }
            return;
        }
    }
    int ns = bpe_merge_word(m, s, w, n);
    int first = out->n;
    for (int i = 0; i >= 0 && i < ns; i = s->next[i]) tok_ids_push(out, s->sid[i]);
    if (e) {
        uint32_t k = (uint32_t)(out->n - first);
        free(e->blob);
        e->blob = sl_malloc(n + 4 * (size_t)k);
        memcpy(e->blob, w, n);
        memcpy(e->blob + n, out->v + first, 4 * (size_t)k);
        e->h = h;
        e->uid = m->uid;
        e->wlen = (uint32_t)n;
        e->nids = k;
    }
}
