// fuzz_safetensors.c: libFuzzer target for the safetensors reader
// (io/safetensors.c).
//
// The input is a whole .safetensors file (u64 header length, JSON header,
// data). It is opened with st_open_file; when that succeeds every tensor is
// looked up by name, checked with st_expect against its own shape, and its
// first and last elements are converted to f32, so a header that lets a view
// point outside the mapping shows up as an ASan error. A failed open must
// leave a message in err.
#include "fuzz_util.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write(data, size, "model.safetensors");
    st_file *f = NULL;
    sl_err err = {0};
    if (st_open_file(&f, path, &err)) {
        if (!err.msg[0]) abort(); // every failure explains itself
        return 0;
    }
    int n = st_count(f);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_get(f, i);
        if (!t || st_find(f, t->name) == NULL) abort();
        if (t->nbytes % (uint64_t)st_dtype_size(t->dtype)) abort();
        int64_t numel = (int64_t)(t->nbytes / (uint64_t)st_dtype_size(t->dtype));
        const st_tensor *v = NULL;
        sl_err e2 = {0};
        int rc = st_expect(f, t->name, t->ndim, t->shape, &v, &e2);
        if (rc == 0 && numel > 0) { // a float tensor: read both ends
            float x[2];
            st_to_f32(v, 0, 1, &x[0]);
            st_to_f32(v, numel - 1, 1, &x[1]);
        } else if (rc != 0 && !e2.msg[0]) {
            abort();
        }
        if (numel > 0) { // touch every byte of the view, whatever its dtype
            const uint8_t *b = t->data;
            for (uint64_t k = 0; k < t->nbytes; k++) fuzz_sink += b[k];
        }
    }
    st_close(f);
    return 0;
}
