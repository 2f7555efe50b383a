// safetensors.c: read-only, zero-copy reader for Hugging Face safetensors
// checkpoints (see safetensors.h).
//
// A file is: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
//    ..., "__metadata__": {str: str}}
// then the data buffer, to which the offsets are relative. Each shard is
// mmap'd once (PROT_READ, MAP_PRIVATE) and every st_tensor points into its
// mapping, so opening a checkpoint costs one header parse per shard and
// touches no weight page until someone reads it.
//
// Because checkpoints come from outside, everything in a header is checked
// before any pointer into the mapping is handed out: the header length against
// the file size, every JSON type, the dtype name, each byte range against the
// data buffer and against shape x dtype size, and that no two ranges overlap.
// Errors name the file and the tensor.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// A header longer than this is not a checkpoint we want to parse (the Rust
// reference implementation uses the same 100 MB limit).
#define ST_MAX_HEADER (100ull * 1000 * 1000)

typedef struct {
    char *path;         // as opened (dir/shard name); st_tensor.file points here
    void *map;          // whole-file mapping (NULL for an empty data-less file)
    size_t map_len;
    const uint8_t *data; // start of the data buffer (map + 8 + N)
    uint64_t data_len;
} st_shard;

struct st_file {
    char *where;        // the directory or file given to st_open_*, for messages
    st_shard *shards;   // in index order (sorted shard names)
    int n_shards;
    st_tensor *tensors; // in header order, shard after shard
    int n, cap;
    const st_tensor **by_name; // into tensors, sorted by name (for st_find)
};

static const char *const st_names[ST_NDTYPES] = {
    [ST_F32] = "F32",   [ST_F16] = "F16",         [ST_BF16] = "BF16",
    [ST_F64] = "F64",   [ST_I64] = "I64",         [ST_I32] = "I32",
    [ST_I16] = "I16",   [ST_I8] = "I8",           [ST_U8] = "U8",
    [ST_BOOL] = "BOOL", [ST_F8_E4M3] = "F8_E4M3", [ST_F8_E5M2] = "F8_E5M2",
};
static const int st_sizes[ST_NDTYPES] = {
    [ST_F32] = 4, [ST_F16] = 2, [ST_BF16] = 2, [ST_F64] = 8,
    [ST_I64] = 8, [ST_I32] = 4, [ST_I16] = 2,  [ST_I8] = 1,
    [ST_U8] = 1,  [ST_BOOL] = 1, [ST_F8_E4M3] = 1, [ST_F8_E5M2] = 1,
};

const char *st_dtype_name(st_dtype t) {
    return (t >= 0 && t < ST_NDTYPES) ? st_names[t] : "?";
}

int st_dtype_size(st_dtype t) { return (t >= 0 && t < ST_NDTYPES) ? st_sizes[t] : 0; }

static int st_dtype_parse(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, st_names[i]) == 0) return i;
    return -1;
}

static int st_is_float(st_dtype t) { return t == ST_F32 || t == ST_F16 || t == ST_BF16; }

// "[8192, 384]" into buf.
static void st_fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

// ----------------------------------------------------------------------------
// one shard

static void st_shard_unmap(st_shard *s) {
    if (s->map) munmap(s->map, s->map_len);
    free(s->path);
    memset(s, 0, sizeof *s);
}

static int st_cmp_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    const uint8_t *p = x->data, *q = y->data;
    return p < q ? -1 : p > q;
}

// Checks one header entry and appends it to f->tensors. `path` names the
// shard in messages; the tensor's strings are owned by f / the shard.
static int st_add_entry(st_file *f, st_shard *sh, const char *name, json_t *v,
                        sl_err *err) {
    const char *path = sh->path;
    if (!json_is_object(v))
        return sl_errf(err, "%s: tensor '%s': header entry is not a JSON object", path, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return sl_errf(err, "%s: tensor '%s': header entry lacks '%s'", path, name,
                       !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (!json_is_string(jd))
        return sl_errf(err, "%s: tensor '%s': dtype is not a string", path, name);
    int dt = st_dtype_parse(json_string_value(jd));
    if (dt < 0)
        return sl_errf(err,
                       "%s: tensor '%s': unknown dtype '%s' (known: F32 F16 BF16 F64 I64 I32 "
                       "I16 I8 U8 BOOL F8_E4M3 F8_E5M2)",
                       path, name, json_string_value(jd));
    if (!json_is_array(js))
        return sl_errf(err, "%s: tensor '%s': shape is not an array", path, name);
    size_t ndim = json_array_size(js);
    if (ndim > ST_MAX_DIMS)
        return sl_errf(err, "%s: tensor '%s': %zu dims, at most %d supported", path, name,
                       ndim, ST_MAX_DIMS);

    st_tensor t = {0};
    t.dtype = (st_dtype)dt;
    t.ndim = (int)ndim;
    t.file = sh->path;
    // Element count with an overflow guard: a hostile shape must not wrap
    // around to a small byte count that then passes the range check.
    uint64_t count = 1;
    int overflow = 0;
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return sl_errf(err, "%s: tensor '%s': shape[%zu] is not an integer", path, name, i);
        json_int_t x = json_integer_value(d);
        if (x < 0)
            return sl_errf(err, "%s: tensor '%s': shape[%zu] = %lld is negative", path, name,
                           i, (long long)x);
        t.shape[i] = x;
        if (x && count > UINT64_MAX / (uint64_t)x) overflow = 1;
        count *= (uint64_t)x;
    }
    if (overflow || count > UINT64_MAX / 8)
        return sl_errf(err, "%s: tensor '%s': shape is absurdly large", path, name);
    t.nbytes = count * (uint64_t)st_sizes[dt];

    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return sl_errf(err, "%s: tensor '%s': data_offsets is not [begin, end] integers",
                       path, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < 0 || b > e)
        return sl_errf(err, "%s: tensor '%s': data_offsets [%lld, %lld] are not a valid range",
                       path, name, (long long)b, (long long)e);
    if ((uint64_t)e > sh->data_len)
        return sl_errf(err,
                       "%s: tensor '%s': header offsets outside the file: data_offsets [%lld, "
                       "%lld] but the data buffer holds only %llu bytes (file truncated?)",
                       path, name, (long long)b, (long long)e, (unsigned long long)sh->data_len);
    if ((uint64_t)(e - b) != t.nbytes) {
        char s[160];
        st_fmt_shape(s, sizeof s, t.ndim, t.shape);
        return sl_errf(err,
                       "%s: tensor '%s': shape %s %s needs %llu bytes but data_offsets [%lld, "
                       "%lld] span %llu",
                       path, name, s, st_names[dt], (unsigned long long)t.nbytes, (long long)b,
                       (long long)e, (unsigned long long)(e - b));
    }
    t.data = sh->data + b;
    t.name = sl_strdup(name);

    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 64;
        f->tensors = sl_realloc(f->tensors, (size_t)f->cap * sizeof *f->tensors);
    }
    f->tensors[f->n++] = t;
    return 0;
}

// Maps `path`, validates its header and appends its tensors to f. On error
// the shard is left in f->shards (already recorded) so st_close frees it.
static int st_load_shard(st_file *f, const char *path, sl_err *err) {
    f->shards = sl_realloc(f->shards, (size_t)(f->n_shards + 1) * sizeof *f->shards);
    st_shard *sh = &f->shards[f->n_shards++];
    memset(sh, 0, sizeof *sh);
    sh->path = sl_strdup(path);
    int first = f->n, rc = -1;
    json_t *root = NULL;
    const st_tensor **order = NULL;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sl_errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        sl_errf(err, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sl_errf(err, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        close(fd);
        return sl_errf(err,
                       "%s: file is %llu bytes, too small to be safetensors (needs an 8-byte "
                       "header length)",
                       path, (unsigned long long)size);
    }
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); // the mapping keeps the file alive
    if (m == MAP_FAILED) return sl_errf(err, "%s: mmap failed: %s", path, strerror(errno));
    sh->map = m;
    sh->map_len = size;

    const uint8_t *p = m;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i]; // little-endian on any host
    if (hlen > ST_MAX_HEADER) {
        sl_errf(err, "%s: header length %llu is absurd (> 100 MB): not a safetensors file?",
                path, (unsigned long long)hlen);
        goto fail;
    }
    if (hlen > size - 8) {
        sl_errf(err,
                "%s: header length %llu runs past the end of the file (%llu bytes): truncated "
                "or not safetensors",
                path, (unsigned long long)hlen, (unsigned long long)size);
        goto fail;
    }
    sh->data = p + 8 + hlen;
    sh->data_len = size - 8 - hlen;

    json_error_t je;
    root = json_loadb((const char *)p + 8, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        sl_errf(err, "%s: header is not valid JSON: %s (header line %d, column %d)", path,
                je.text, je.line, je.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        sl_errf(err, "%s: header is not a JSON object", path);
        goto fail;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            // Free-form {str: str}; nothing in it matters to us, but the
            // format says strings, so a different shape means a broken writer.
            const char *k2;
            json_t *v2;
            if (!json_is_object(v)) {
                sl_errf(err, "%s: __metadata__ is not a JSON object", path);
                goto fail;
            }
            json_object_foreach(v, k2, v2) {
                if (!json_is_string(v2)) {
                    sl_errf(err, "%s: __metadata__ value '%s' is not a string", path, k2);
                    goto fail;
                }
            }
            continue;
        }
        if (st_add_entry(f, sh, key, v, err)) goto fail;
    }

    // Overlap check: sort this shard's non-empty tensors by start address and
    // compare each with its predecessor. Gaps are tolerated.
    int cnt = f->n - first, ne = 0;
    order = sl_malloc((size_t)(cnt ? cnt : 1) * sizeof *order);
    for (int i = first; i < f->n; i++)
        if (f->tensors[i].nbytes) order[ne++] = &f->tensors[i];
    qsort(order, ne, sizeof *order, st_cmp_begin);
    for (int i = 1; i < ne; i++) {
        const st_tensor *a = order[i - 1], *b = order[i];
        const uint8_t *ae = (const uint8_t *)a->data + a->nbytes;
        if (ae > (const uint8_t *)b->data) {
            long long ab = (const uint8_t *)a->data - sh->data;
            long long bb = (const uint8_t *)b->data - sh->data;
            sl_errf(err, "%s: tensors '%s' [%lld, %lld) and '%s' [%lld, %lld) overlap", path,
                    a->name, ab, ab + (long long)a->nbytes, b->name, bb,
                    bb + (long long)b->nbytes);
            goto fail;
        }
    }
    rc = 0;
fail:
    free(order);
    json_decref(root);
    return rc;
}

// ----------------------------------------------------------------------------
// the whole checkpoint

static int st_cmp_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

// Builds the name index and rejects names that appear twice (which can only
// happen across shards: a duplicate key in one header is a JSON error).
static int st_build_index(st_file *f, sl_err *err) {
    // f->tensors no longer grows, so pointers into it are stable from here on.
    f->by_name = sl_malloc((size_t)(f->n ? f->n : 1) * sizeof *f->by_name);
    for (int i = 0; i < f->n; i++) f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, f->n, sizeof *f->by_name, st_cmp_name);
    for (int i = 1; i < f->n; i++) {
        const st_tensor *a = f->by_name[i - 1], *b = f->by_name[i];
        if (strcmp(a->name, b->name) == 0)
            return sl_errf(err, "%s: tensor '%s' appears in both %s and %s", f->where,
                           a->name, a->file, b->file);
    }
    return 0;
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    for (int i = 0; i < f->n_shards; i++) st_shard_unmap(&f->shards[i]);
    free(f->shards);
    free(f->tensors);
    free(f->by_name);
    free(f->where);
    free(f);
}

int st_open_file(st_file **out, const char *path, sl_err *err) {
    *out = NULL;
    st_file *f = sl_calloc(1, sizeof *f);
    f->where = sl_strdup(path);
    if (st_load_shard(f, path, err) || st_build_index(f, err)) {
        st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

static int st_cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// The sharded case: reads the index, opens each distinct shard once in
// sorted order, then checks that every weight_map entry is where it says.
static int st_open_index(st_file *f, const char *dir, const char *ipath, sl_err *err) {
    int rc = -1;
    char *text = NULL;
    const char **shards = NULL;
    json_t *root = NULL;
    size_t len;
    json_error_t je;

    if (!(text = sl_read_file(ipath, &len, err))) goto fail;
    root = json_loadb(text, len, 0, &je);
    if (!root) {
        sl_errf(err, "%s: not valid JSON: %s (line %d, column %d)", ipath, je.text, je.line,
                je.column);
        goto fail;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        sl_errf(err, "%s: no 'weight_map' object", ipath);
        goto fail;
    }
    size_t nw = json_object_size(wm), ns = 0;
    if (nw == 0) {
        sl_errf(err, "%s: 'weight_map' is empty", ipath);
        goto fail;
    }
    shards = sl_malloc(nw * sizeof *shards);
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        const char *s = json_string_value(v);
        if (!s || !*s) {
            sl_errf(err, "%s: weight_map['%s'] is not a shard file name", ipath, key);
            goto fail;
        }
        // Shards live beside the index; refuse names that escape the directory.
        if (s[0] == '/' || strstr(s, "..")) {
            sl_errf(err, "%s: weight_map['%s'] = '%s' points outside %s", ipath, key, s, dir);
            goto fail;
        }
        shards[ns++] = s;
    }
    qsort(shards, ns, sizeof *shards, st_cmp_str);
    for (size_t i = 0; i < ns; i++) {
        if (i && strcmp(shards[i], shards[i - 1]) == 0) continue;
        char *p = sl_path_join(dir, shards[i]);
        int r = st_load_shard(f, p, err);
        free(p);
        if (r) {
            sl_errctx(err, "shard listed in %s", ipath);
            goto fail;
        }
    }
    if (st_build_index(f, err)) goto fail;

    json_object_foreach(wm, key, v) {
        const char *s = json_string_value(v);
        const st_tensor *t = st_find(f, key);
        if (!t) {
            sl_errf(err, "%s: tensor '%s' is listed in weight_map but missing from shard %s",
                    ipath, key, s);
            goto fail;
        }
        const char *base = strrchr(t->file, '/');
        base = base ? base + 1 : t->file;
        const char *want = strrchr(s, '/');
        want = want ? want + 1 : s;
        if (strcmp(base, want) != 0) {
            sl_errf(err, "%s: tensor '%s' is mapped to %s but found in %s", ipath, key, s,
                    t->file);
            goto fail;
        }
    }
    // Tensors a shard holds beyond the map are harmless, but worth a note.
    if ((size_t)f->n > nw)
        LOGW("%s: %zu tensors in the shards are not listed in weight_map", ipath,
             (size_t)f->n - nw);
    rc = 0;
fail:
    free(shards);
    json_decref(root);
    free(text);
    return rc;
}

int st_open_dir(st_file **out, const char *dir, sl_err *err) {
    *out = NULL;
    struct stat st;
    if (stat(dir, &st) != 0) return sl_errf(err, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return sl_errf(err, "%s: not a directory", dir);

    st_file *f = sl_calloc(1, sizeof *f);
    f->where = sl_strdup(dir);
    char *ipath = sl_path_join(dir, "model.safetensors.index.json");
    char *spath = sl_path_join(dir, "model.safetensors");
    int rc;
    if (access(ipath, F_OK) == 0)
        rc = st_open_index(f, dir, ipath, err);
    else if (access(spath, F_OK) == 0)
        rc = (st_load_shard(f, spath, err) || st_build_index(f, err)) ? -1 : 0;
    else
        rc = sl_errf(err, "no model.safetensors or model.safetensors.index.json in %s", dir);
    free(ipath);
    free(spath);
    if (rc) {
        st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

// ----------------------------------------------------------------------------
// lookup

const st_tensor *st_find(const st_file *f, const char *name) {
    if (!f || !f->by_name) return NULL;
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor *t = f->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

int st_count(const st_file *f) { return f ? f->n : 0; }

const st_tensor *st_get(const st_file *f, int i) {
    return (f && i >= 0 && i < f->n) ? &f->tensors[i] : NULL;
}

int st_expect(const st_file *f, const char *name, int ndim, const int64_t *shape,
              const st_tensor **out, sl_err *err) {
    if (out) *out = NULL;
    const st_tensor *t = st_find(f, name);
    if (!t) return sl_errf(err, "%s: tensor '%s' missing", f ? f->where : "?", name);
    if (!st_is_float(t->dtype))
        return sl_errf(err, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", t->file,
                       name, st_names[t->dtype]);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[160], want[160];
        st_fmt_shape(got, sizeof got, t->ndim, t->shape);
        st_fmt_shape(want, sizeof want, ndim, shape);
        return sl_errf(err, "%s: tensor '%s' has shape %s, expected %s", t->file, name, got,
                       want);
    }
    if (out) *out = t;
    return 0;
}

void st_to_f32(const st_tensor *t, int64_t first, int64_t n, float *dst) {
    SL_CHECK(st_is_float(t->dtype));
    SL_CHECK(first >= 0 && n >= 0 &&
             (uint64_t)(first + n) * (uint64_t)st_sizes[t->dtype] <= t->nbytes);
    // The data buffer starts at 8 + N, which writers pad to a multiple of 8 but
    // nothing forces; memcpy keeps unaligned loads legal.
    const uint8_t *p = (const uint8_t *)t->data + (size_t)first * st_sizes[t->dtype];
    if (t->dtype == ST_F32) { // file is little-endian, as is every host we target
        memcpy(dst, p, (size_t)n * 4);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = t->dtype == ST_BF16 ? sl_bf16_to_f32(h) : sl_f16_to_f32(h);
    }
}
