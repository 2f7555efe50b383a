// safetensors.h: read-only access to Hugging Face safetensors checkpoints.
//
// A checkpoint directory holds either `model.safetensors` or shards
// `model-XXXXX-of-YYYYY.safetensors` listed in `model.safetensors.index.json`.
// Every shard is mmap'd read-only; tensors are views into the mapping (no copy),
// so a rank that only needs a slice of a tensor touches only those pages.
//
// Every malformed case (missing file, truncated file, header not JSON, header
// offsets outside the file or overlapping, shape/dtype inconsistent with the
// byte range, tensor listed in the index but absent from its shard) returns -1
// with an sl_err that names the file and the tensor.
#ifndef SLUICE_SAFETENSORS_H
#define SLUICE_SAFETENSORS_H

#include <stdint.h>

#include "common.h"

typedef enum {
    ST_F32 = 0,
    ST_F16,
    ST_BF16,
    ST_F64,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_BOOL,
    ST_F8_E4M3, // "F8_E4M3"
    ST_F8_E5M2, // "F8_E5M2"
    ST_NDTYPES
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    const char *name;  // owned by the st_file
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;   // product(shape) * st_dtype_size(dtype)
    const void *data;  // points into the read-only mapping of `file`
    const char *file;  // path of the shard that holds it (owned by the st_file)
} st_tensor;

typedef struct st_file st_file; // one checkpoint: all its shards

// Opens a checkpoint directory (single file or sharded with index.json).
// On success *out is the caller's to st_close. Views returned by st_find stay
// valid until st_close.
int st_open_dir(st_file **out, const char *dir, sl_err *err);

// Opens one .safetensors file by path.
int st_open_file(st_file **out, const char *path, sl_err *err);

void st_close(st_file *f); // st_close(NULL) is a no-op

// NULL when absent.
const st_tensor *st_find(const st_file *f, const char *name);

// Number of tensors and the i-th one (in header order, shards in index order).
int st_count(const st_file *f);
const st_tensor *st_get(const st_file *f, int i);

// Fetches `name` and checks its dtype is one of the float types (F32, F16,
// BF16) and that its shape equals shape[0..ndim). Errors
// name the tensor, its file, the expected and the actual shape/dtype.
int st_expect(const st_file *f, const char *name, int ndim, const int64_t *shape,
              const st_tensor **out, sl_err *err);

const char *st_dtype_name(st_dtype t); // "BF16", ...
int st_dtype_size(st_dtype t);          // bytes per element

// Converts n elements starting at element offset `first` of a float tensor
// (F32/F16/BF16) to f32 in dst.
void st_to_f32(const st_tensor *t, int64_t first, int64_t n, float *dst);

#endif
