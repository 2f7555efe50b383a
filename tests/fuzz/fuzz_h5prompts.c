// fuzz_h5prompts.c: libFuzzer target for the HDF5 prompts reader
// (io/h5io.c, h5_prompts_read), and the completions reader beside it.
//
// The input is the bytes of an HDF5 file. h5_prompts_read takes a path and
// does its own checks before HDF5 sees the file (stat, H5Fis_hdf5, open with
// file locking), so rather than an in-memory file image through the core
// driver, which would skip that code and need a new library entry point, the
// bytes are written to a tmpfs file (/dev/shm) and the real reader opens it,
// exactly as `sluice run` does. h5_completions_read (what `sluice export` and
// the merge use) reads the same file next.
//
// libhdf5 itself is not instrumented (it is the system library), so coverage
// guidance stops at sluice's own code; a crash inside libhdf5 on a corrupt
// file is reported by libFuzzer's SEGV handler like any other (see
// docs/FUZZING.md for what was found).
#include "fuzz_util.h"
#include "h5io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write(data, size, "prompts.h5");
    PromptSet ps;
    sl_err err = {0};
    if (h5_prompts_read(&ps, path, &err) == 0) {
        // the documented invariants of a file the reader accepted
        if (ps.n < 0) abort();
        if (ps.offsets) {
            if (ps.offsets[0] != 0 || ps.offsets[ps.n] != ps.n_tokens) abort();
            for (int64_t i = 0; i < ps.n; i++)
                if (ps.offsets[i] > ps.offsets[i + 1]) abort();
            for (int64_t i = 0; i < ps.n_tokens; i++) fuzz_sink += (uint64_t)ps.tokens[i];
        } else if (ps.n > 0 && !ps.prompt_text) {
            abort();
        }
        for (int64_t i = 0; ps.prompt_text && i < ps.n; i++) (void)strlen(ps.prompt_text[i]);
        for (int64_t i = 0; ps.request_id && i < ps.n; i++) (void)strlen(ps.request_id[i]);
        h5_prompts_free(&ps);
    } else if (!err.msg[0]) {
        abort();
    }
    CompletionSet cs;
    sl_err err2 = {0};
    if (h5_completions_read(&cs, path, &err2) == 0) {
        if (cs.n < 0 || cs.offsets[0] != 0) abort();
        for (int64_t i = 0; i < cs.n; i++) {
            if (cs.offsets[i] > cs.offsets[i + 1]) abort();
            (void)strlen(cs.error[i]);
            if (cs.text) (void)strlen(cs.text[i]);
        }
        h5_completions_free(&cs);
    } else if (!err2.msg[0]) {
        abort();
    }
    return 0;
}
