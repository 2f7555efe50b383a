// common.c: errors, logging, fatal checks and small helpers (see common.h).
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int sl_errf(sl_err *e, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int sl_errctx(sl_err *e, const char *fmt, ...) {
    if (!e) return -1;
    char prefix[SL_ERR_MAX], old[SL_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%.400s: %.600s", prefix, old);
    return -1;
}

// ----------------------------------------------------------------------------
// logging

static int g_rank = 0, g_gpu = -1, g_level = LOG_INFO;
static char g_host[64];

void sl_log_set_identity(int rank, int gpu) {
    g_rank = rank;
    g_gpu = gpu;
}
void sl_log_set_gpu(int gpu) { g_gpu = gpu; }
void sl_log_set_level(int level) { g_level = level; }
int sl_log_level(void) { return g_level; }

static void log_prefix(char *buf, size_t n) {
    if (!g_host[0]) {
        if (gethostname(g_host, sizeof g_host - 1) != 0) strcpy(g_host, "?");
        char *dot = strchr(g_host, '.');
        if (dot) *dot = 0;
    }
    if (g_gpu >= 0)
        snprintf(buf, n, "[%s %d gpu%d]", g_host, g_rank, g_gpu);
    else
        snprintf(buf, n, "[%s %d cpu]", g_host, g_rank);
}

void sl_log(int level, const char *file, int line, const char *fmt, ...) {
    if (level > g_level) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    char prefix[128], body[4096];
    log_prefix(prefix, sizeof prefix);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    // One fprintf per line so lines of different ranks do not interleave mid-line.
    if (level <= LOG_WARN || g_level >= LOG_DEBUG)
        fprintf(stderr, "%s %s:%d %s: %s\n", prefix, base, line, names[level], body);
    else
        fprintf(stderr, "%s %s\n", prefix, body);
}

// ----------------------------------------------------------------------------
// fatal checks

static sl_abort_fn g_abort;

void sl_set_abort_hook(sl_abort_fn fn) { g_abort = fn; }

void sl_fatal(const char *file, int line, const char *lib, const char *msg,
              const char *stmt) {
    char prefix[128];
    log_prefix(prefix, sizeof prefix);
    fprintf(stderr, "%s %s:%d %s: %s (%s)\n", prefix, file, line, lib, msg, stmt);
    fflush(stderr);
    if (g_abort) g_abort(1);
    abort();
}

// ----------------------------------------------------------------------------
// helpers

void *sl_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        char m[64];
        snprintf(m, sizeof m, "out of host memory (%zu bytes)", n);
        SL_FATAL("sluice", m, "malloc");
    }
    return p;
}

void *sl_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        char m[64];
        snprintf(m, sizeof m, "out of host memory (%zu x %zu bytes)", n, size);
        SL_FATAL("sluice", m, "calloc");
    }
    return p;
}

void *sl_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        char m[64];
        snprintf(m, sizeof m, "out of host memory (%zu bytes)", n);
        SL_FATAL("sluice", m, "realloc");
    }
    return q;
}

char *sl_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sl_malloc(n);
    memcpy(d, s, n);
    return d;
}

double sl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

char *sl_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = sl_malloc(a + b + 2);
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

char *sl_read_file(const char *path, size_t *len, sl_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        sl_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = sl_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = sl_realloc(buf, cap *= 2);
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        sl_errf(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

// ----------------------------------------------------------------------------
// half-precision conversions

float sl_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sl_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float sl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { // subnormal: normalise
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sl_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((u >> 23) & 0xffu) - 127 + 15;
    uint32_t man = u & 0x7fffffu;
    if (((u >> 23) & 0xffu) == 0xffu) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)h;
}
