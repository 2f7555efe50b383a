// fuzz_util.h: what every libFuzzer target in tests/fuzz shares.
//
// sluice's readers take paths, not buffers (they mmap or stream real files),
// and the fuzz targets add nothing to the library API: each input is written
// to a per-process scratch file in /dev/shm (tmpfs, so no disk traffic; falls
// back to $TMPDIR or /tmp) and handed to the reader exactly as a user's file
// would be. Logging is silenced so warnings about odd inputs do not flood the
// fuzzer's output.
#ifndef SLUICE_FUZZ_UTIL_H
#define SLUICE_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

// Path of this process's scratch file, ending in `suffix` (some readers look
// at the name, e.g. "tokenizer.json"). Made once; removed at exit.
static char fuzz_path_buf[512];

// Reads through a volatile sink so the compiler keeps loads meant for ASan.
static volatile uint64_t fuzz_sink __attribute__((unused));

static inline void fuzz_cleanup(void) {
    if (fuzz_path_buf[0]) unlink(fuzz_path_buf);
}

static inline const char *fuzz_path(const char *suffix) {
    if (!fuzz_path_buf[0]) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        if (!dir || !*dir) dir = "/tmp";
        snprintf(fuzz_path_buf, sizeof fuzz_path_buf, "%s/sluice-fuzz-%d-%s", dir, (int)getpid(),
                 suffix);
        atexit(fuzz_cleanup);
        sl_log_set_level(-1); // below LOG_ERROR: nothing is printed
    }
    return fuzz_path_buf;
}

// Writes size bytes to the scratch file (truncating it) and returns its path;
// aborts when the file cannot be written, which is the harness's fault.
static inline const char *fuzz_write(const uint8_t *data, size_t size, const char *suffix) {
    const char *p = fuzz_path(suffix);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(p);
        abort();
    }
    return p;
}

#endif
