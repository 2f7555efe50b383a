// bench_tok.c: single-threaded encode throughput of sluice's tokenizer.
//
// Encodes every line of tests/tokenizer/corpus.jsonl (one tok_encode call
// per line, as a prompt loader would) for a few rounds and prints the median
// MB/s and tokens/s. bench_hf.py does the same with HF tokenizers. Built by
// hand (not part of `make test`):
//
//   gcc -std=c11 -D_GNU_SOURCE -O3 -march=x86-64-v3 -Isrc src/common.c \
//       src/tokenizer.c src/tok_bpe.c tests/tokenizer/bench_tok.c \
//       -o /tmp/bench_tok -ljansson -lpcre2-8 -lutf8proc -lm
//   /tmp/bench_tok tests/tokenizer/llama3/tokenizer.json [rounds]
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s tokenizer.json [rounds] [corpus.jsonl]\n", argv[0]);
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    const char *cpath = argc > 3 ? argv[3] : "tests/tokenizer/corpus.jsonl";
    sl_err err;
    Tokenizer *t;
    if (tok_load(&t, argv[1], &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    size_t len;
    char *buf = sl_read_file(cpath, &len, &err);
    if (!buf) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int n = 0, cap = 4096;
    char **lines = malloc(cap * sizeof(char *));
    size_t *lens = malloc(cap * sizeof(size_t)), bytes = 0;
    for (char *p = buf; *p;) {
        char *e = strchr(p, '\n');
        if (!e) e = p + strlen(p);
        json_error_t je;
        json_t *s = json_loadb(p, (size_t)(e - p), JSON_DECODE_ANY, &je);
        if (n == cap) {
            lines = realloc(lines, (cap *= 2) * sizeof(char *));
            lens = realloc(lens, cap * sizeof(size_t));
        }
        lens[n] = json_string_length(s);
        lines[n] = malloc(lens[n] + 1);
        memcpy(lines[n], json_string_value(s), lens[n] + 1);
        bytes += lens[n++];
        json_decref(s);
        p = *e ? e + 1 : e;
    }
    double *sec = malloc(rounds * sizeof(double));
    long tokens = 0;
    for (int r = -1; r < rounds; r++) { // round -1 warms up (and fills the cache)
        double t0 = sl_now();
        tokens = 0;
        for (int i = 0; i < n; i++) {
            int32_t *ids;
            int k;
            if (tok_encode(t, lines[i], lens[i], 1, &ids, &k, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            tokens += k;
            free(ids);
        }
        if (r >= 0) sec[r] = sl_now() - t0;
    }
    qsort(sec, rounds, sizeof(double), cmp_d);
    double med = sec[rounds / 2];
    printf("sluice %s: %d lines, %.2f MB, %ld tokens; median of %d: %.4f s = %.2f MB/s, "
           "%.0f tokens/s\n", argv[1], n, bytes / 1e6, tokens, rounds, med, bytes / 1e6 / med,
           tokens / med);
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
    free(lens);
    free(sec);
    free(buf);
    tok_free(t);
    return 0;
}
