// fuzz_jsonl.c: libFuzzer target for the text prompt readers
// (src/prompts_text.c).
//
// The input is a prompts file as a user writes it for `sluice prep`: it goes
// through prompts_read_jsonl (one JSON object per line) and, since the same
// bytes are a valid input for the plain-text reader too, through
// prompts_read_text. A successful read must give n prompt strings (and, for
// JSONL, request ids when the field was given); a failed one an error message.
#include "fuzz_util.h"
#include "prompts_text.h"

static void check(int rc, PromptSet *ps, const sl_err *err) {
    if (rc == 0) {
        if (ps->n < 0 || (ps->n > 0 && !ps->prompt_text)) abort();
        for (int64_t i = 0; i < ps->n; i++) {
            if (!ps->prompt_text[i]) abort();
            (void)strlen(ps->prompt_text[i]);
            if (ps->request_id && !ps->request_id[i]) abort();
        }
    } else if (!err->msg[0]) {
        abort();
    }
    h5_prompts_free(ps);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write(data, size, "prompts.jsonl");
    PromptSet ps;
    sl_err err = {0};
    check(prompts_read_jsonl(&ps, path, &err), &ps, &err);
    sl_err err2 = {0};
    check(prompts_read_text(&ps, path, &err2), &ps, &err2);
    return 0;
}
