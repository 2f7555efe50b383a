// common.h: the few things every module of sluice shares.
//
// - sl_err: how recoverable errors travel. Library code (readers of HDF5,
//   safetensors, JSON, the CLI) never exits: it fills an sl_err with a message
//   that names the file, dataset or tensor and returns -1. Only main() decides
//   to exit.
// - the log: every line is prefixed with [host rank gpu] so that the merged
//   stderr of a many-rank job stays readable.
// - SL_CHECK: the one family of "this cannot fail unless the machine is broken"
//   checks (CUDA, cuBLAS, NCCL, MPI, HDF5 are generated from it). On failure it
//   prints file:line and the failing statement and aborts the whole job (via
//   the abort hook, which is MPI_Abort once MPI is up) so no rank hangs.
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SL_ERR_MAX 1024

typedef struct {
    char msg[SL_ERR_MAX];
} sl_err;

// Sets e->msg from the format and returns -1, so callers can write
// `return sl_errf(err, "%s: ...", path);`. e may be NULL.
int sl_errf(sl_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Prepends "prefix: " to an existing message (for adding context on the way up).
int sl_errctx(sl_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// ----------------------------------------------------------------------------
// logging

enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

// Identity used in the log prefix; set once by whoever knows it (comm init,
// backend init). gpu < 0 prints "cpu".
void sl_log_set_identity(int rank, int gpu);
void sl_log_set_gpu(int gpu); // the GPU this rank uses (log prefix "[host rank gpuN]")
void sl_log_set_level(int level);
int sl_log_level(void);
void sl_log(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOGE(...) sl_log(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define LOGW(...) sl_log(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define LOGI(...) sl_log(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define LOGD(...) sl_log(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

// ----------------------------------------------------------------------------
// fatal checks

// Called by SL_FATAL after printing. Default: abort(). parallel/comm.c installs
// one that calls MPI_Abort so the other ranks do not hang in a collective.
typedef void (*sl_abort_fn)(int code);
void sl_set_abort_hook(sl_abort_fn fn);
void sl_fatal(const char *file, int line, const char *lib, const char *msg,
              const char *stmt) __attribute__((noreturn));

#define SL_FATAL(lib, msg, stmt) sl_fatal(__FILE__, __LINE__, lib, msg, stmt)

// Plain "this must hold" check that survives NDEBUG.
#define SL_CHECK(cond)                                                         \
    do {                                                                       \
        if (!(cond)) SL_FATAL("sluice", "check failed", #cond);                \
    } while (0)

// ----------------------------------------------------------------------------
// small helpers

// malloc/calloc that die cleanly (with the size) when memory runs out.
void *sl_malloc(size_t n);
void *sl_calloc(size_t n, size_t size);
void *sl_realloc(void *p, size_t n);
char *sl_strdup(const char *s);

// Wall clock in seconds (monotonic).
double sl_now(void);

// "dir/name" into a fresh buffer that the caller frees.
char *sl_path_join(const char *dir, const char *name);

// Reads a whole file into a NUL-terminated buffer that the caller frees.
// Returns NULL and fills err (naming the file) on failure.
char *sl_read_file(const char *path, size_t *len, sl_err *err);

// bf16/f16 <-> f32 conversions (round-to-nearest-even on the way down).
float sl_bf16_to_f32(uint16_t h);
uint16_t sl_f32_to_bf16(float f);
float sl_f16_to_f32(uint16_t h);
uint16_t sl_f32_to_f16(float f);

#ifdef __cplusplus
}
#endif

#endif
