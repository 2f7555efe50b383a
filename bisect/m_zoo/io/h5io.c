// h5io.c: sluice's HDF5 contract v1 (see h5io.h, and docs/HDF5.md for users).
//
// Three jobs:
// - read and check a prompts file written by anyone (h5py, C, `sluice prep`):
//   any integer type converts to ours with a range check, float32/float64 both
//   work, strings may be variable or fixed length;
// - write part files incrementally while the engine runs (rows are buffered and
//   written in batches so 100k tiny completions stay cheap);
// - merge the parts into one completions.h5 ordered by prompt index.
//
// Conventions used throughout:
// - every public entry point silences HDF5's automatic error printing for its
//   duration (quiet_begin / quiet_end) and turns each failure into an sl_err
//   naming the file and the dataset;
// - every hid_t is checked and closed in reverse order under one `fail:` label;
// - the per-dataset boilerplate lives in a few helpers: open_1d / load_1d for
//   reading, write_1d for fixed outputs, create_ext_1d / append_1d for outputs
//   that grow.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE // glob, strnlen
#endif
#include "h5io.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#define FORMAT_ATTR "sluice_format"
#define TOP_N_ATTR "top_logprobs_n" // alternatives per token in completion_top_*
#define FORMAT_COMPLETIONS "completions-v1"
#define FORMAT_PROMPTS "prompts-v1"

#define READ_BLOCK (1 << 20)   // integer values converted per H5Dread
#define BATCH_ROWS 256         // completions buffered before a write
#define BATCH_TOKENS (1 << 18) // ... or completion tokens buffered
#define CHUNK_ROWS 1024        // chunk of the per-completion datasets
#define CHUNK_TOKENS 16384     // chunk of completion_tokens / _logprobs

// ----------------------------------------------------------------------------
// HDF5 plumbing: quiet error stack, error details, file access, types

typedef struct {
    H5E_auto2_t fn;
    void *data;
} h5quiet;

// Turns HDF5's automatic error printing off; quiet_end puts back whatever the
// application had, so other modules keep their own setting.
static h5quiet quiet_begin(void) {
    h5quiet q = {NULL, NULL};
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}

static void quiet_end(h5quiet q) { H5Eset_auto2(H5E_DEFAULT, q.fn, q.data); }

static herr_t walk_first(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0 && e->desc) snprintf(data, 256, ": %s", e->desc);
    return 0;
}

// ": <most specific message on HDF5's error stack>", or "" when the stack is
// empty; appended to messages about failures that have no better explanation.
static const char *h5_why(void) {
    static char buf[256];
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_first, buf);
    return buf;
}

// File access properties: keep HDF5's file locking but do not fail on file
// systems that have none (Lustre/NFS mounts without flock).
static hid_t make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 12, 1) || (H5_VERS_MAJOR == 1 && H5_VERS_MINOR == 10 && H5_VERS_RELEASE >= 7)
    if (fapl >= 0) H5Pset_file_locking(fapl, 1, 1);
#endif
    return fapl;
}

// Opens path read-only, with a clear message for the usual mistakes (missing
// file, a directory, a file that is not HDF5).
static hid_t file_open_ro(const char *path, sl_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        sl_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return H5I_INVALID_HID;
    }
    if (S_ISDIR(st.st_mode)) {
        sl_errf(err, "%s: is a directory, expected an HDF5 file", path);
        return H5I_INVALID_HID;
    }
    if (access(path, R_OK) != 0) {
        sl_errf(err, "%s: cannot read: %s", path, strerror(errno));
        return H5I_INVALID_HID;
    }
    htri_t is = H5Fis_hdf5(path);
    if (is == 0) {
        sl_errf(err, "%s: not an HDF5 file", path);
        return H5I_INVALID_HID;
    }
    if (is < 0) {
        sl_errf(err, "%s: cannot check whether this is an HDF5 file%s", path, h5_why());
        return H5I_INVALID_HID;
    }
    hid_t fapl = make_fapl();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl < 0 ? H5P_DEFAULT : fapl);
    if (f < 0) sl_errf(err, "%s: cannot open as HDF5%s", path, h5_why());
    if (fapl >= 0) H5Pclose(fapl);
    return f;
}

// Creates (truncates) path; on failure err says why, naming `what` (the
// name the caller's user knows, when path is a temp name).
static hid_t file_create(const char *path, const char *what, sl_err *err) {
    hid_t fapl = make_fapl();
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl < 0 ? H5P_DEFAULT : fapl);
    if (f < 0) { // before H5Pclose, which clears HDF5's error stack
        if (strcmp(path, what) != 0)
            sl_errf(err, "%s: cannot create %s%s", what, path, h5_why());
        else
            sl_errf(err, "%s: cannot create%s", path, h5_why());
    }
    if (fapl >= 0) H5Pclose(fapl);
    return f;
}

// Variable-length UTF-8 string type (memory and file). Caller closes.
static hid_t utf8_vlen_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

// finish_reason's type: an enum over int8 with members stop=0, length=1,
// error=2 (memory and file). Caller closes.
static hid_t finish_type(void) {
    hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
    if (t < 0) return t;
    static const FinishReason vals[] = {FINISH_STOP, FINISH_LENGTH, FINISH_ERROR};
    for (int i = 0; i < 3; i++) {
        int8_t v = (int8_t)vals[i];
        if (H5Tenum_insert(t, finish_reason_name(vals[i]), &v) < 0) {
            H5Tclose(t);
            return H5I_INVALID_HID;
        }
    }
    return t;
}

static const char *class_name(H5T_class_t c) {
    switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "vlen sequence";
    case H5T_ARRAY: return "array";
    default: return "unknown type";
    }
}

static int has_dataset(hid_t f, const char *name) { return H5Lexists(f, name, H5P_DEFAULT) > 0; }

// Writes path's data to disk before a rename makes it visible, so a machine
// crash right after the rename cannot leave an empty file under the name.
static void fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

// ----------------------------------------------------------------------------
// UTF-8

// Byte offset of the first invalid UTF-8 sequence in s, or -1 if s is valid.
static long utf8_bad_at(const char *s) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(s), at = 0;
    while (at < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + at, n - at, &cp);
        if (k < 0) return (long)at;
        at += k;
    }
    return -1;
}

// A copy of s (NULL reads as "") with each invalid byte replaced by U+FFFD:
// decoded text cut at max_new_tokens may end inside a character, and readers
// such as h5py refuse invalid UTF-8. The copy is the caller's to free.
static char *utf8_sanitized(const char *s) {
    if (!s) return sl_strdup("");
    if (utf8_bad_at(s) < 0) return sl_strdup(s);
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(s), at = 0;
    char *out = sl_malloc((size_t)n * 3 + 1), *o = out;
    while (at < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + at, n - at, &cp);
        if (k < 0) {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            at += 1;
        } else {
            memcpy(o, s + at, (size_t)k);
            o += k;
            at += k;
        }
    }
    *o = 0;
    return out;
}

static void free_strs(char **s, int64_t n) {
    if (!s) return;
    for (int64_t i = 0; i < n; i++)
        free(s[i]);
    free(s);
}

// ----------------------------------------------------------------------------
// reading 1-D datasets

typedef enum {
    K_I32,    // any integer type -> int32_t, range checked
    K_I64,    // any integer type -> int64_t, range checked
    K_F32,    // float32 / float64 -> float
    K_STR,    // vlen or fixed-length strings -> char* (malloc'd, UTF-8 checked)
    K_FINISH, // our finish enum (or a plain integer) -> int8_t in [0, 2]
} ElemKind;

// Opens dataset `name` and checks that it is 1-D; *len gets its length.
// Returns the dataset (the caller closes it) or H5I_INVALID_HID with err set.
// A corrupt file can claim any length (found by tests/fuzz/fuzz_h5prompts:
// 2^61 elements made sl_calloc die of "out of host memory"), so the length is
// checked before anything is allocated for it. A dataset without filters
// stores every element it holds (storage >= n x element size; virtual and
// external datasets excepted); a compressed one has no such bound, and then
// the host's memory is the limit.
static int check_stored(hid_t ds, const char *path, const char *name, hsize_t n, sl_err *err) {
    hid_t ft = H5Dget_type(ds), dcpl = H5Dget_create_plist(ds);
    size_t size = ft >= 0 ? H5Tget_size(ft) : 0;
    if (size == 0) size = 1;
    int plain = dcpl >= 0 && H5Pget_nfilters(dcpl) == 0 && H5Pget_external_count(dcpl) == 0 &&
                H5Pget_layout(dcpl) != H5D_VIRTUAL;
    hsize_t stored = H5Dget_storage_size(ds);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (ft >= 0) H5Tclose(ft);
    uint64_t mem = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    if (plain && n > stored / size)
        return sl_errf(err,
                       "%s: '%s' claims %llu elements of %zu bytes but the file stores only %llu "
                       "bytes for it (truncated or corrupt file?)",
                       path, name, (unsigned long long)n, size, (unsigned long long)stored);
    if (n > mem / size)
        return sl_errf(err,
                       "%s: '%s' claims %llu elements of %zu bytes, more than this host's memory",
                       path, name, (unsigned long long)n, size);
    return 0;
}

static hid_t open_1d(hid_t f, const char *path, const char *name, int64_t *len, sl_err *err) {
    hid_t ds = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    if (!has_dataset(f, name)) {
        sl_errf(err, "%s: dataset '%s' missing", path, name);
        return H5I_INVALID_HID;
    }
    if ((ds = H5Dopen2(f, name, H5P_DEFAULT)) < 0) {
        sl_errf(err, "%s: '%s' is not a dataset", path, name);
        goto fail;
    }
    if ((sp = H5Dget_space(ds)) < 0) {
        sl_errf(err, "%s: cannot get the shape of '%s'%s", path, name, h5_why());
        goto fail;
    }
    hsize_t dims[H5S_MAX_RANK];
    int rank = H5Sget_simple_extent_dims(sp, dims, NULL);
    if (rank != 1) {
        char shape[128] = "scalar";
        for (int i = 0, k = 0; i < rank && k < (int)sizeof shape - 24; i++)
            k += snprintf(shape + k, sizeof shape - k, "%s%llu", i ? "x" : "",
                          (unsigned long long)dims[i]);
        sl_errf(err, "%s: '%s' must be 1-D, found rank %d (shape %s)", path, name,
                rank < 0 ? 0 : rank, shape);
        goto fail;
    }
    *len = (int64_t)dims[0];
    if (check_stored(ds, path, name, dims[0], err)) goto fail;
    H5Sclose(sp);
    return ds;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (ds >= 0) H5Dclose(ds);
    return H5I_INVALID_HID;
}

// Reads n integers of any HDF5 integer type into dst (int32_t when bits == 32,
// else int64_t). Values go through an int64 (or, for unsigned 64-bit files,
// uint64) buffer one block at a time so each can be checked against
// [lo, INT{bits}_MAX] before it is narrowed: HDF5's own conversion would clip.
static int read_ints(hid_t ds, const char *path, const char *name, int64_t n, int bits, int64_t lo,
                     void *dst, sl_err *err) {
    hid_t ft = H5I_INVALID_HID, fsp = H5I_INVALID_HID, msp = H5I_INVALID_HID;
    void *buf = NULL;
    int rc = -1;
    if ((ft = H5Dget_type(ds)) < 0 || (fsp = H5Dget_space(ds)) < 0) {
        sl_errf(err, "%s: cannot get the type of '%s'%s", path, name, h5_why());
        goto fail;
    }
    H5T_class_t cls = H5Tget_class(ft);
    if (cls != H5T_INTEGER) {
        sl_errf(err, "%s: '%s' must be an integer dataset, found %s", path, name, class_name(cls));
        goto fail;
    }
    int u64 = H5Tget_sign(ft) == H5T_SGN_NONE && H5Tget_size(ft) >= 8;
    int64_t hi = bits == 32 ? INT32_MAX : INT64_MAX;
    buf = sl_malloc(sizeof(int64_t) * (size_t)(n < READ_BLOCK ? n : READ_BLOCK));
    for (int64_t at = 0; at < n; at += READ_BLOCK) {
        hsize_t start = (hsize_t)at, count = (hsize_t)(n - at < READ_BLOCK ? n - at : READ_BLOCK);
        if (H5Sselect_hyperslab(fsp, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0 ||
            (msp = H5Screate_simple(1, &count, NULL)) < 0 ||
            H5Dread(ds, u64 ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64, msp, fsp, H5P_DEFAULT, buf) <
                0) {
            sl_errf(err, "%s: cannot read '%s'%s", path, name, h5_why());
            goto fail;
        }
        H5Sclose(msp);
        msp = H5I_INVALID_HID;
        for (int64_t k = 0; k < (int64_t)count; k++) {
            int64_t i = at + k, v;
            if (u64) {
                uint64_t u = ((uint64_t *)buf)[k];
                if (u > (uint64_t)hi) {
                    sl_errf(err, "%s: '%s'[%" PRId64 "]=%" PRIu64 " does not fit int%d", path, name,
                            i, u, bits);
                    goto fail;
                }
                v = (int64_t)u;
            } else {
                v = ((int64_t *)buf)[k];
            }
            if (v < lo && lo == 0) {
                sl_errf(err, "%s: '%s'[%" PRId64 "]=%" PRId64 " is negative", path, name, i, v);
                goto fail;
            }
            if (v < lo || v > hi) {
                sl_errf(err, "%s: '%s'[%" PRId64 "]=%" PRId64 " does not fit int%d", path, name, i,
                        v, bits);
                goto fail;
            }
            if (bits == 32)
                ((int32_t *)dst)[i] = (int32_t)v;
            else
                ((int64_t *)dst)[i] = v;
        }
    }
    rc = 0;
fail:
    free(buf);
    if (msp >= 0) H5Sclose(msp);
    if (fsp >= 0) H5Sclose(fsp);
    if (ft >= 0) H5Tclose(ft);
    return rc;
}

// Reads n floats (float32 or float64 in the file) into dst.
static int read_f32(hid_t ds, const char *path, const char *name, int64_t n, float *dst,
                    sl_err *err) {
    hid_t ft = H5Dget_type(ds);
    if (ft < 0) return sl_errf(err, "%s: cannot get the type of '%s'%s", path, name, h5_why());
    H5T_class_t cls = H5Tget_class(ft);
    H5Tclose(ft);
    if (cls != H5T_FLOAT)
        return sl_errf(err, "%s: '%s' must be a float dataset (float32 or float64), found %s", path,
                       name, class_name(cls));
    if (n > 0 && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
        return sl_errf(err, "%s: cannot read '%s'%s", path, name, h5_why());
    return 0;
}

// Reads finish_reason: our int8 enum (converted by member name, so a foreign
// enum with other names is an error) or a plain integer dataset; every value
// must be a FinishReason.
static int read_finish(hid_t ds, const char *path, const char *name, int64_t n, int8_t *dst,
                       sl_err *err) {
    hid_t ft = H5I_INVALID_HID, mt = H5I_INVALID_HID;
    int64_t *wide = NULL;
    int rc = -1;
    if ((ft = H5Dget_type(ds)) < 0) {
        sl_errf(err, "%s: cannot get the type of '%s'%s", path, name, h5_why());
        goto fail;
    }
    H5T_class_t cls = H5Tget_class(ft);
    if (cls == H5T_INTEGER) {
        wide = sl_malloc(sizeof(int64_t) * (size_t)n);
        if (read_ints(ds, path, name, n, 64, INT64_MIN, wide, err)) goto fail;
        for (int64_t i = 0; i < n; i++)
            dst[i] = (int8_t)(wide[i] >= 0 && wide[i] <= 2 ? wide[i] : -1);
    } else if (cls == H5T_ENUM) {
        if ((mt = finish_type()) < 0) {
            sl_errf(err, "%s: cannot build the finish_reason enum type%s", path, h5_why());
            goto fail;
        }
        if (n > 0 && H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0) {
            sl_errf(err, "%s: cannot read '%s' as the enum {stop, length, error}%s", path, name,
                    h5_why());
            goto fail;
        }
    } else {
        sl_errf(err, "%s: '%s' must be an enum dataset, found %s", path, name, class_name(cls));
        goto fail;
    }
    for (int64_t i = 0; i < n; i++) {
        if (dst[i] < FINISH_STOP || dst[i] > FINISH_ERROR) {
            sl_errf(err, "%s: '%s'[%" PRId64 "] is not one of stop/length/error", path, name, i);
            goto fail;
        }
    }
    rc = 0;
fail:
    free(wide);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    return rc;
}

// Reads n strings, variable or fixed length, ASCII or UTF-8, into dst[0..n)
// (each malloc'd, NUL-terminated, checked to be valid UTF-8). On failure the
// strings already copied stay in dst for the caller to free.
static int read_strs(hid_t ds, const char *path, const char *name, int64_t n, char **dst,
                     sl_err *err) {
    hid_t ft = H5I_INVALID_HID, mt = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    char **vl = NULL, *raw = NULL;
    int rc = -1;
    if ((ft = H5Dget_type(ds)) < 0) {
        sl_errf(err, "%s: cannot get the type of '%s'%s", path, name, h5_why());
        goto fail;
    }
    H5T_class_t cls = H5Tget_class(ft);
    if (cls != H5T_STRING) {
        sl_errf(err, "%s: '%s' must be a string dataset, found %s", path, name, class_name(cls));
        goto fail;
    }
    // Memory type: the file's character set (HDF5 does not convert between
    // ASCII and UTF-8), and variable length or the file's fixed size and padding.
    htri_t var = H5Tis_variable_str(ft);
    size_t size = H5Tget_size(ft);
    H5T_str_t pad = H5Tget_strpad(ft);
    if (var < 0 || (mt = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0 ||
        H5Tset_size(mt, var ? H5T_VARIABLE : size) < 0 || (!var && H5Tset_strpad(mt, pad) < 0) ||
        (sp = H5Dget_space(ds)) < 0) {
        sl_errf(err, "%s: cannot make a memory type for the strings of '%s'%s", path, name,
                h5_why());
        goto fail;
    }
    if (var)
        vl = sl_calloc((size_t)(n ? n : 1), sizeof *vl);
    else
        raw = sl_calloc((size_t)(n ? n : 1), size);
    if (n > 0 && H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, var ? (void *)vl : raw) < 0) {
        sl_errf(err, "%s: cannot read '%s'%s", path, name, h5_why());
        goto fail;
    }
    for (int64_t i = 0; i < n; i++) {
        if (var) {
            dst[i] = sl_strdup(vl[i] ? vl[i] : "");
        } else { // fixed length: NUL-terminated, NUL-padded or space-padded
            const char *s = raw + (size_t)i * size;
            size_t len = strnlen(s, size);
            while (pad == H5T_STR_SPACEPAD && len > 0 && s[len - 1] == ' ')
                len--;
            dst[i] = sl_malloc(len + 1);
            memcpy(dst[i], s, len);
            dst[i][len] = 0;
        }
        long bad = utf8_bad_at(dst[i]);
        if (bad >= 0) {
            sl_errf(err, "%s: '%s'[%" PRId64 "] is not valid UTF-8 (at byte %ld)", path, name, i,
                    bad);
            goto fail;
        }
    }
    rc = 0;
fail:
    if (vl) {
        if (n > 0) {
#if H5_VERSION_GE(1, 12, 0)
            H5Treclaim(mt, sp, H5P_DEFAULT, vl);
#else
            H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, vl);
#endif
        }
        free(vl);
    }
    free(raw);
    if (sp >= 0) H5Sclose(sp);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    return rc;
}

// Reads the whole 1-D dataset `name` into a fresh array (*out, the caller's
// to free; for K_STR an array of n malloc'd strings). When want >= 0 the
// dataset must have exactly that many rows ("... expected want (per)").
// *len (may be NULL) gets the number of rows. `lo` bounds K_I32/K_I64 values.
static int load_1d(hid_t f, const char *path, const char *name, ElemKind kind, int64_t lo,
                   int64_t want, const char *per, void **out, int64_t *len, sl_err *err) {
    static const size_t elem[] = {
        [K_I32] = 4, [K_I64] = 8, [K_F32] = 4, [K_STR] = sizeof(char *), [K_FINISH] = 1};
    int64_t n = 0;
    int rc = -1;
    *out = NULL;
    hid_t ds = open_1d(f, path, name, &n, err);
    if (ds < 0) return -1;
    if (want >= 0 && n != want) {
        sl_errf(err, "%s: '%s' has %" PRId64 " rows, expected %" PRId64 " (%s)", path, name, n,
                want, per);
        goto fail;
    }
    void *a = sl_calloc((size_t)(n ? n : 1), elem[kind]);
    switch (kind) {
    case K_I32: rc = read_ints(ds, path, name, n, 32, lo, a, err); break;
    case K_I64: rc = read_ints(ds, path, name, n, 64, lo, a, err); break;
    case K_F32: rc = read_f32(ds, path, name, n, a, err); break;
    case K_STR: rc = read_strs(ds, path, name, n, a, err); break;
    case K_FINISH: rc = read_finish(ds, path, name, n, a, err); break;
    }
    if (rc != 0) {
        if (kind == K_STR)
            free_strs(a, n);
        else
            free(a);
        goto fail;
    }
    *out = a;
    if (len) *len = n;
fail:
    H5Dclose(ds);
    return rc;
}

// load_1d for a dataset that may be absent (then *out stays NULL).
static int load_opt(hid_t f, const char *path, const char *name, ElemKind kind, int64_t want,
                    const char *per, void **out, sl_err *err) {
    *out = NULL;
    if (!has_dataset(f, name)) return 0;
    int64_t lo = kind == K_I32 ? INT32_MIN : INT64_MIN;
    return load_1d(f, path, name, kind, lo, want, per, out, NULL, err);
}

// Checks CSR-style offsets: off has n+1 entries, off[0] == 0, non-decreasing,
// and off[n] == n_items, the length of `items_name`.
static int check_offsets(const char *path, const char *name, const char *items_name,
                         const int64_t *off, int64_t n, int64_t n_items, sl_err *err) {
    if (off[0] != 0) return sl_errf(err, "%s: '%s'[0]=%" PRId64 ", expected 0", path, name, off[0]);
    for (int64_t i = 1; i <= n; i++) {
        if (off[i] < off[i - 1])
            return sl_errf(err,
                           "%s: '%s' is not monotonic at index %" PRId64 " (offset %" PRId64
                           " < %" PRId64 ")",
                           path, name, i, off[i], off[i - 1]);
        if (off[i] > n_items)
            return sl_errf(err,
                           "%s: '%s'[%" PRId64 "]=%" PRId64
                           " is past the end of '%s' (length %" PRId64 ")",
                           path, name, i, off[i], items_name, n_items);
    }
    if (off[n] != n_items)
        return sl_errf(err, "%s: '%s'[%" PRId64 "]=%" PRId64 " does not equal len(%s)=%" PRId64,
                       path, name, n, off[n], items_name, n_items);
    return 0;
}

// Reads string attribute `name` of the file (vlen or fixed) into buf.
static int read_attr_str(hid_t f, const char *path, const char *name, char *buf, size_t cap,
                         sl_err *err) {
    hid_t a = H5I_INVALID_HID, ft = H5I_INVALID_HID, mt = H5I_INVALID_HID;
    int rc = -1;
    htri_t ex = H5Aexists(f, name);
    if (ex <= 0) {
        sl_errf(err, "%s: attribute '%s' missing (not a sluice file?)", path, name);
        return -1;
    }
    if ((a = H5Aopen(f, name, H5P_DEFAULT)) < 0 || (ft = H5Aget_type(a)) < 0) goto hdf5_fail;
    if (H5Tget_class(ft) != H5T_STRING) {
        sl_errf(err, "%s: attribute '%s' must be a string", path, name);
        goto fail;
    }
    if ((mt = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0) goto hdf5_fail;
    if (H5Tis_variable_str(ft) > 0) {
        char *s = NULL;
        if (H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Aread(a, mt, &s) < 0) goto hdf5_fail;
        snprintf(buf, cap, "%s", s ? s : "");
        H5free_memory(s);
    } else {
        size_t size = H5Tget_size(ft);
        char *raw = sl_calloc(size + 1, 1);
        if (H5Tset_size(mt, size) < 0 || H5Aread(a, mt, raw) < 0) {
            free(raw);
            goto hdf5_fail;
        }
        snprintf(buf, cap, "%s", raw);
        free(raw);
    }
    rc = 0;
    goto fail;
hdf5_fail:
    sl_errf(err, "%s: cannot read attribute '%s'%s", path, name, h5_why());
fail:
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (a >= 0) H5Aclose(a);
    return rc;
}

// ----------------------------------------------------------------------------
// writing

// Writes a scalar vlen UTF-8 string attribute on the file.
static int write_attr_str(hid_t f, const char *path, const char *name, const char *value,
                          sl_err *err) {
    hid_t t = H5I_INVALID_HID, sp = H5I_INVALID_HID, a = H5I_INVALID_HID;
    int rc = -1;
    if ((t = utf8_vlen_type()) < 0 || (sp = H5Screate(H5S_SCALAR)) < 0 ||
        (a = H5Acreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT)) < 0 ||
        H5Awrite(a, t, &value) < 0) {
        sl_errf(err, "%s: cannot write attribute '%s'%s", path, name, h5_why());
        goto fail;
    }
    rc = 0;
fail:
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    return rc;
}

// Writes n elements of buf (memory type mtype) as a contiguous 1-D dataset of
// file type ftype; for datasets that never grow (the prompts file).
static int write_1d(hid_t f, const char *path, const char *name, hid_t ftype, hid_t mtype,
                    int64_t n, const void *buf, sl_err *err) {
    hid_t sp = H5I_INVALID_HID, ds = H5I_INVALID_HID;
    hsize_t dim = (hsize_t)n;
    int rc = -1;
    if ((sp = H5Screate_simple(1, &dim, NULL)) < 0 ||
        (ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)) < 0 ||
        (n > 0 && H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)) {
        sl_errf(err, "%s: cannot write dataset '%s'%s", path, name, h5_why());
        goto fail;
    }
    rc = 0;
fail:
    if (ds >= 0) H5Dclose(ds);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

// Writes n strings (NULL entries as "") as a vlen UTF-8 dataset; every string
// must be valid UTF-8.
static int write_strs(hid_t f, const char *path, const char *name, char *const *s, int64_t n,
                      sl_err *err) {
    const char **v = sl_calloc((size_t)(n ? n : 1), sizeof *v);
    hid_t t = H5I_INVALID_HID;
    int rc = -1;
    for (int64_t i = 0; i < n; i++) {
        v[i] = s[i] ? s[i] : "";
        long bad = utf8_bad_at(v[i]);
        if (bad >= 0) {
            sl_errf(err, "%s: '%s'[%" PRId64 "] is not valid UTF-8 (at byte %ld)", path, name, i,
                    bad);
            goto fail;
        }
    }
    if ((t = utf8_vlen_type()) < 0) {
        sl_errf(err, "%s: cannot make a UTF-8 string type%s", path, h5_why());
        goto fail;
    }
    rc = write_1d(f, path, name, t, t, n, v, err);
fail:
    if (t >= 0) H5Tclose(t);
    free(v);
    return rc;
}

// Creates an empty, chunked, extendable (H5S_UNLIMITED) 1-D dataset.
static hid_t create_ext_1d(hid_t f, const char *path, const char *name, hid_t ftype, hsize_t chunk,
                           sl_err *err) {
    hid_t sp = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, ds = H5I_INVALID_HID;
    hsize_t dim = 0, maxdim = H5S_UNLIMITED;
    if ((sp = H5Screate_simple(1, &dim, &maxdim)) < 0 ||
        (dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 || H5Pset_chunk(dcpl, 1, &chunk) < 0 ||
        (ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0)
        sl_errf(err, "%s: cannot create dataset '%s'%s", path, name, h5_why());
    if (dcpl >= 0) H5Pclose(dcpl);
    if (sp >= 0) H5Sclose(sp);
    return ds;
}

// Appends k elements of buf (memory type mtype) to an extendable dataset that
// currently holds `cur` elements.
static int append_1d(hid_t ds, const char *path, const char *name, hid_t mtype, int64_t cur,
                     int64_t k, const void *buf, sl_err *err) {
    hid_t fsp = H5I_INVALID_HID, msp = H5I_INVALID_HID;
    hsize_t size = (hsize_t)(cur + k), start = (hsize_t)cur, count = (hsize_t)k;
    int rc = -1;
    if (k == 0) return 0;
    if (H5Dset_extent(ds, &size) < 0 || (fsp = H5Dget_space(ds)) < 0 ||
        H5Sselect_hyperslab(fsp, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0 ||
        (msp = H5Screate_simple(1, &count, NULL)) < 0 ||
        H5Dwrite(ds, mtype, msp, fsp, H5P_DEFAULT, buf) < 0) {
        sl_errf(err, "%s: cannot append %" PRId64 " rows to '%s'%s", path, k, name, h5_why());
        goto fail;
    }
    rc = 0;
fail:
    if (msp >= 0) H5Sclose(msp);
    if (fsp >= 0) H5Sclose(fsp);
    return rc;
}

// ----------------------------------------------------------------------------
// prompts

// Frees what h5_prompts_read allocated and zeroes *ps; NULL is a no-op.
void h5_prompts_free(PromptSet *ps) {
    if (!ps) return;
    free(ps->tokens);
    free(ps->offsets);
    free(ps->max_new_tokens);
    free(ps->temperature);
    free(ps->top_p);
    free(ps->top_k);
    free(ps->seed);
    free(ps->min_p);
    free(ps->repetition_penalty);
    free(ps->presence_penalty);
    free(ps->frequency_penalty);
    free_strs(ps->request_id, ps->n);
    free_strs(ps->prompt_text, ps->n);
    memset(ps, 0, sizeof *ps);
}

// The structure first (tokens, offsets and their consistency), then each
// optional per-prompt dataset. ps is zeroed by the caller, who frees it on error.
static int prompts_read(PromptSet *ps, const char *path, sl_err *err) {
    const char *per = "one per prompt";
    int64_t n_off = 0;
    hid_t f = file_open_ro(path, err);
    if (f < 0) return -1;
    if (!has_dataset(f, "prompt_tokens") && !has_dataset(f, "prompt_offsets") &&
        has_dataset(f, "prompt_text")) {
        // A text-only file: N from prompt_text; tokens and offsets stay NULL
        // for the caller to fill with the model's tokenizer.
        if (load_1d(f, path, "prompt_text", K_STR, 0, -1, NULL, (void **)&ps->prompt_text, &ps->n,
                    err))
            goto fail;
    } else {
        // Token ids outside the vocabulary (negative ones too) are the engine's
        // per-request check: they become error rows, not a failed job.
        if (load_1d(f, path, "prompt_tokens", K_I32, INT32_MIN, -1, NULL, (void **)&ps->tokens,
                    &ps->n_tokens, err) ||
            load_1d(f, path, "prompt_offsets", K_I64, INT64_MIN, -1, NULL,
                    (void **)&ps->offsets, &n_off, err))
            goto fail;
        if (n_off == 0) {
            sl_errf(err,
                    "%s: 'prompt_offsets' is empty, expected N+1 >= 1 entries starting with 0",
                    path);
            goto fail;
        }
        ps->n = n_off - 1;
        if (check_offsets(path, "prompt_offsets", "prompt_tokens", ps->offsets, ps->n,
                          ps->n_tokens, err))
            goto fail;
        if (load_opt(f, path, "prompt_text", K_STR, ps->n, per, (void **)&ps->prompt_text, err))
            goto fail;
    }
    if (load_opt(f, path, "max_new_tokens", K_I32, ps->n, per, (void **)&ps->max_new_tokens, err) ||
        load_opt(f, path, "temperature", K_F32, ps->n, per, (void **)&ps->temperature, err) ||
        load_opt(f, path, "top_p", K_F32, ps->n, per, (void **)&ps->top_p, err) ||
        load_opt(f, path, "top_k", K_I32, ps->n, per, (void **)&ps->top_k, err) ||
        load_opt(f, path, "seed", K_I64, ps->n, per, (void **)&ps->seed, err) ||
        load_opt(f, path, "min_p", K_F32, ps->n, per, (void **)&ps->min_p, err) ||
        load_opt(f, path, "repetition_penalty", K_F32, ps->n, per,
                 (void **)&ps->repetition_penalty, err) ||
        load_opt(f, path, "presence_penalty", K_F32, ps->n, per, (void **)&ps->presence_penalty,
                 err) ||
        load_opt(f, path, "frequency_penalty", K_F32, ps->n, per,
                 (void **)&ps->frequency_penalty, err) ||
        load_opt(f, path, "request_id", K_STR, ps->n, per, (void **)&ps->request_id, err))
        goto fail;
    H5Fclose(f);
    return 0;
fail:
    H5Fclose(f);
    return -1;
}

// Public entry points: quiet HDF5, do the work, restore. On failure nothing
// is left allocated in *ps (or *cs).
int h5_prompts_read(PromptSet *ps, const char *path, sl_err *err) {
    memset(ps, 0, sizeof *ps);
    h5quiet q = quiet_begin();
    int rc = prompts_read(ps, path, err);
    quiet_end(q);
    if (rc) h5_prompts_free(ps);
    return rc;
}

// Checks the PromptSet as the reader would, writes everything to path.tmp,
// closes it, syncs it and renames it over path; any failure removes the tmp.
static int prompts_write(const char *path, const PromptSet *ps, sl_err *err) {
    if (ps->n < 0 || ps->n_tokens < 0 || !ps->offsets || (ps->n_tokens > 0 && !ps->tokens))
        return sl_errf(err,
                       "%s: PromptSet to write is incomplete (n=%" PRId64 ", n_tokens=%" PRId64
                       ", offsets %s, tokens %s)",
                       path, ps->n, ps->n_tokens, ps->offsets ? "set" : "NULL",
                       ps->tokens ? "set" : "NULL");
    if (check_offsets(path, "prompt_offsets", "prompt_tokens", ps->offsets, ps->n, ps->n_tokens,
                      err))
        return -1;
    size_t plen = strlen(path);
    char *tmp = sl_malloc(plen + 5);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    hid_t f = file_create(tmp, path, err);
    if (f < 0) {
        free(tmp);
        return -1;
    }
    int64_t n = ps->n;
    if (write_1d(f, path, "prompt_tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, ps->n_tokens,
                 ps->tokens, err) ||
        write_1d(f, path, "prompt_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, n + 1, ps->offsets,
                 err))
        goto fail;
    if ((ps->max_new_tokens && write_1d(f, path, "max_new_tokens", H5T_STD_I32LE, H5T_NATIVE_INT32,
                                        n, ps->max_new_tokens, err)) ||
        (ps->temperature && write_1d(f, path, "temperature", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n,
                                     ps->temperature, err)) ||
        (ps->top_p &&
         write_1d(f, path, "top_p", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n, ps->top_p, err)) ||
        (ps->top_k &&
         write_1d(f, path, "top_k", H5T_STD_I32LE, H5T_NATIVE_INT32, n, ps->top_k, err)) ||
        (ps->seed &&
         write_1d(f, path, "seed", H5T_STD_I64LE, H5T_NATIVE_INT64, n, ps->seed, err)) ||
        (ps->min_p &&
         write_1d(f, path, "min_p", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n, ps->min_p, err)) ||
        (ps->repetition_penalty &&
         write_1d(f, path, "repetition_penalty", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n,
                  ps->repetition_penalty, err)) ||
        (ps->presence_penalty &&
         write_1d(f, path, "presence_penalty", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n,
                  ps->presence_penalty, err)) ||
        (ps->frequency_penalty &&
         write_1d(f, path, "frequency_penalty", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n,
                  ps->frequency_penalty, err)) ||
        (ps->request_id && write_strs(f, path, "request_id", ps->request_id, n, err)) ||
        (ps->prompt_text && write_strs(f, path, "prompt_text", ps->prompt_text, n, err)) ||
        write_attr_str(f, path, FORMAT_ATTR, FORMAT_PROMPTS, err))
        goto fail;
    herr_t closed = H5Fclose(f);
    f = H5I_INVALID_HID;
    if (closed < 0) {
        sl_errf(err, "%s: cannot close %s%s", path, tmp, h5_why());
        goto fail;
    }
    fsync_path(tmp);
    if (rename(tmp, path) != 0) {
        sl_errf(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        goto fail;
    }
    free(tmp);
    return 0;
fail:
    if (f >= 0) H5Fclose(f);
    unlink(tmp);
    free(tmp);
    return -1;
}

int h5_prompts_write(const char *path, const PromptSet *ps, sl_err *err) {
    h5quiet q = quiet_begin();
    int rc = prompts_write(path, ps, err);
    quiet_end(q);
    return rc;
}

// ----------------------------------------------------------------------------
// completions: the part-file writer

const char *finish_reason_name(FinishReason r) {
    switch (r) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_ERROR: return "error";
    }
    return "unknown";
}

// The datasets of a completions file, in the order they are created.
enum {
    W_PROMPT_INDEX,
    W_PROMPT_LEN,
    W_TOKENS,
    W_OFFSETS,
    W_FINISH,
    W_ERROR,
    W_TTFT,
    W_LATENCY,
    W_QUEUE,
    W_TEXT,     // only with_text
    W_LOGPROBS, // only with_logprobs
    W_TOP_IDS,  // only with top_n > 0: (tokens x top_n) flattened
    W_TOP_LPS,
    W_NDS,
};

static const char *const w_names[W_NDS] = {
    "prompt_index",
    "prompt_len",
    "completion_tokens",
    "completion_offsets",
    "finish_reason",
    "error",
    "ttft_s",
    "latency_s",
    "queue_s",
    "completion_text",
    "completion_logprobs",
    "completion_top_ids",
    "completion_top_logprobs",
};

struct h5_writer {
    char *outdir;
    int part;
    int seg;            // number of the current (or next) segment
    int n_done;         // segments finished (closed and renamed into place)
    char *path;         // final name of the current segment, for messages
    char *tmp;          // the name it is written under until finished
    hid_t file;         // open segment, or H5I_INVALID_HID between segments
    hid_t ds[W_NDS];       // H5I_INVALID_HID where not written
    hid_t t_finish, t_str; // enum int8 and vlen UTF-8 (memory = file type)
    int with_text, with_logprobs;
    int top_n;          // alternatives stored per token (0: none)
    int broken;         // a batch write failed: the file is inconsistent
    int64_t rows, toks; // rows and completion tokens already in the file
    // rows appended but not yet written, one entry per row
    int64_t nb, cap;
    int64_t *b_index, *b_end; // b_end: the row's completion_offsets entry
    int32_t *b_plen;
    int8_t *b_finish;
    float *b_ttft, *b_latency, *b_queue;
    char **b_error, **b_text; // malloc'd, sanitized UTF-8
    // their tokens (and logprobs), concatenated
    int64_t nt, cap_t;
    int32_t *b_tok;
    float *b_lp;
    int32_t *b_top_ids; // (nt x top_n)
    float *b_top_lps;
};

static void writer_free(h5_writer *w) {
    if (!w) return;
    for (int i = W_NDS - 1; i >= 0; i--)
        if (w->ds[i] >= 0) H5Dclose(w->ds[i]);
    if (w->t_str >= 0) H5Tclose(w->t_str);
    if (w->t_finish >= 0) H5Tclose(w->t_finish);
    if (w->file >= 0) {
        H5Fclose(w->file);
        if (w->tmp) unlink(w->tmp); // an unfinished segment never becomes visible
    }
    for (int64_t i = 0; i < w->nb; i++) {
        free(w->b_error[i]);
        if (w->b_text) free(w->b_text[i]);
    }
    free(w->b_index), free(w->b_end), free(w->b_plen), free(w->b_finish);
    free(w->b_ttft), free(w->b_latency), free(w->b_queue);
    free(w->b_error), free(w->b_text), free(w->b_tok), free(w->b_lp);
    free(w->b_top_ids), free(w->b_top_lps);
    free(w->path);
    free(w->tmp);
    free(w->outdir);
    free(w);
}

// Starts the next segment: OUTDIR/part-PPPPP-SSSSSS.h5 written as ".tmp",
// all datasets empty but for completion_offsets = [0], and the format
// attribute. Segment numbers already taken (an earlier attempt's) are skipped.
static int seg_open_file(h5_writer *w, sl_err *err);

static int seg_create(h5_writer *w, sl_err *err) {
    struct stat st;
    char name[64];
    for (;;) {
        snprintf(name, sizeof name, "part-%05d-%06d.h5", w->part, w->seg);
        free(w->path);
        w->path = sl_path_join(w->outdir, name);
        if (stat(w->path, &st) != 0) break;
        w->seg++;
    }
    free(w->tmp);
    size_t n = strlen(w->path) + 5;
    w->tmp = sl_malloc(n);
    snprintf(w->tmp, n, "%s.tmp", w->path);
    return seg_open_file(w, err);
}

// Creates w->tmp with every dataset (completion_offsets = [0]) and the
// format attribute; messages name w->path.
static int seg_open_file(h5_writer *w, sl_err *err) {
    const char *path = w->path;
    w->rows = w->toks = 0;
    if ((w->file = file_create(w->tmp, path, err)) < 0) return -1;
    const hid_t ftype[W_NDS] = {H5T_STD_I64LE,  H5T_STD_I32LE,  H5T_STD_I32LE,  H5T_STD_I64LE,
                                w->t_finish,    w->t_str,       H5T_IEEE_F32LE, H5T_IEEE_F32LE,
                                H5T_IEEE_F32LE, w->t_str,       H5T_IEEE_F32LE, H5T_STD_I32LE,
                                H5T_IEEE_F32LE};
    for (int i = 0; i < W_NDS; i++) {
        if ((i == W_TEXT && !w->with_text) || (i == W_LOGPROBS && !w->with_logprobs) ||
            ((i == W_TOP_IDS || i == W_TOP_LPS) && w->top_n == 0))
            continue;
        hsize_t chunk = (i == W_TOKENS || i == W_LOGPROBS) ? CHUNK_TOKENS
                        : (i == W_TOP_IDS || i == W_TOP_LPS) ? (hsize_t)CHUNK_TOKENS * w->top_n
                                                             : CHUNK_ROWS;
        if ((w->ds[i] = create_ext_1d(w->file, path, w_names[i], ftype[i], chunk, err)) < 0)
            return -1;
    }
    const int64_t zero = 0;
    if (append_1d(w->ds[W_OFFSETS], path, w_names[W_OFFSETS], H5T_NATIVE_INT64, 0, 1, &zero, err) ||
        write_attr_str(w->file, path, FORMAT_ATTR, FORMAT_COMPLETIONS, err))
        return -1;
    if (w->top_n > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", w->top_n);
        if (write_attr_str(w->file, path, TOP_N_ATTR, v, err)) return -1;
    }
    return 0;
}

// Closes the current segment, syncs it and renames it into place: only
// finished segments ever carry the final name.
static int seg_finish(h5_writer *w, sl_err *err) {
    int rc = 0;
    for (int i = W_NDS - 1; i >= 0; i--) {
        if (w->ds[i] >= 0 && H5Dclose(w->ds[i]) < 0 && rc == 0)
            rc = sl_errf(err, "%s: cannot close '%s'%s", w->path, w_names[i], h5_why());
        w->ds[i] = H5I_INVALID_HID;
    }
    if (H5Fclose(w->file) < 0 && rc == 0) rc = sl_errf(err, "%s: cannot close%s", w->path, h5_why());
    w->file = H5I_INVALID_HID;
    if (rc == 0) {
        fsync_path(w->tmp);
        if (rename(w->tmp, w->path) != 0)
            rc = sl_errf(err, "%s: cannot rename %s into place: %s", w->path, w->tmp,
                         strerror(errno));
    }
    if (rc) {
        unlink(w->tmp);
        w->broken = 1;
        return -1;
    }
    w->seg++;
    w->n_done++;
    w->rows = w->toks = 0; // rows appended from now on belong to the next segment
    return 0;
}

// A segment writer for OUTDIR (final != NULL: one file written as `outdir`
// and renamed to `final` at close; the merge uses this).
static int writer_create(h5_writer **out, const char *outdir, int part, int with_text,
                         int with_logprobs, const char *final, sl_err *err) {
    h5_writer *w = sl_calloc(1, sizeof *w);
    w->outdir = sl_strdup(outdir);
    w->part = part;
    w->with_text = with_text != 0;
    w->with_logprobs = with_logprobs != 0;
    w->top_n = with_logprobs > 1 ? with_logprobs - 1 : 0;
    w->file = w->t_finish = w->t_str = H5I_INVALID_HID;
    for (int i = 0; i < W_NDS; i++)
        w->ds[i] = H5I_INVALID_HID;
    *out = NULL;
    if ((w->t_finish = finish_type()) < 0 || (w->t_str = utf8_vlen_type()) < 0) {
        sl_errf(err, "%s: cannot build HDF5 types%s", outdir, h5_why());
        goto fail;
    }
    if (final) {
        w->path = sl_strdup(final);
        w->tmp = sl_strdup(outdir);
        if (seg_open_file(w, err)) goto fail;
    } else if (seg_create(w, err)) { // also proves OUTDIR is writable
        goto fail;
    }
    *out = w;
    return 0;
fail:
    writer_free(w);
    return -1;
}

// Writes the buffered rows to the file. Tokens go first and the offsets
// last, so a reader never sees an offset pointing past the written tokens.
static int writer_write_batch(h5_writer *w, sl_err *err) {
    if (w->broken)
        return sl_errf(err, "%s: an earlier write failed; the file is incomplete", w->path);
    if (w->nb == 0 && w->nt == 0) return 0;
    if (w->file < 0 && seg_create(w, err)) {
        w->broken = 1;
        return -1;
    }
    const char *p = w->path;
    int64_t r = w->rows, nb = w->nb;
#define APPEND(i, mt, cur, k, buf) append_1d(w->ds[i], p, w_names[i], mt, cur, k, buf, err)
    if (APPEND(W_TOKENS, H5T_NATIVE_INT32, w->toks, w->nt, w->b_tok) ||
        (w->with_logprobs && APPEND(W_LOGPROBS, H5T_NATIVE_FLOAT, w->toks, w->nt, w->b_lp)) ||
        (w->top_n && APPEND(W_TOP_IDS, H5T_NATIVE_INT32, w->toks * w->top_n, w->nt * w->top_n,
                            w->b_top_ids)) ||
        (w->top_n && APPEND(W_TOP_LPS, H5T_NATIVE_FLOAT, w->toks * w->top_n, w->nt * w->top_n,
                            w->b_top_lps)) ||
        APPEND(W_PROMPT_INDEX, H5T_NATIVE_INT64, r, nb, w->b_index) ||
        APPEND(W_PROMPT_LEN, H5T_NATIVE_INT32, r, nb, w->b_plen) ||
        APPEND(W_FINISH, w->t_finish, r, nb, w->b_finish) ||
        APPEND(W_ERROR, w->t_str, r, nb, w->b_error) ||
        (w->with_text && APPEND(W_TEXT, w->t_str, r, nb, w->b_text)) ||
        APPEND(W_TTFT, H5T_NATIVE_FLOAT, r, nb, w->b_ttft) ||
        APPEND(W_LATENCY, H5T_NATIVE_FLOAT, r, nb, w->b_latency) ||
        APPEND(W_QUEUE, H5T_NATIVE_FLOAT, r, nb, w->b_queue) ||
        APPEND(W_OFFSETS, H5T_NATIVE_INT64, r + 1, nb, w->b_end)) {
        w->broken = 1;
        return -1;
    }
#undef APPEND
    for (int64_t i = 0; i < nb; i++) {
        free(w->b_error[i]);
        if (w->with_text) free(w->b_text[i]);
    }
    w->rows += nb;
    w->toks += w->nt;
    w->nb = w->nt = 0;
    return 0;
}

#define GROW(ptr, cap) ((ptr) = sl_realloc((ptr), sizeof *(ptr) * (size_t)(cap)))

// Copies one completion into the buffer (the caller keeps ownership of
// everything c points to) and writes the buffer out when a batch is full.
static int writer_append(h5_writer *w, const Completion *c, sl_err *err) {
    if (w->broken)
        return sl_errf(err, "%s: an earlier write failed; the file is incomplete", w->path);
    if (c->prompt_index < 0 || c->n_tokens < 0 || (c->n_tokens > 0 && !c->tokens) ||
        c->finish < FINISH_STOP || c->finish > FINISH_ERROR)
        return sl_errf(
            err, "%s: bad completion for prompt %" PRId64 " (n_tokens=%d, tokens %s, finish=%d)",
            w->path, c->prompt_index, c->n_tokens, c->tokens ? "set" : "NULL", (int)c->finish);
    if (w->top_n && c->n_tokens > 0 && (!c->top_ids || !c->top_logprobs))
        return sl_errf(err,
                       "%s: completion for prompt %" PRId64
                       " has no top logprobs but the file stores %d per token",
                       w->path, c->prompt_index, w->top_n);
    if (w->with_logprobs && c->n_tokens > 0 && !c->logprobs)
        return sl_errf(err,
                       "%s: completion for prompt %" PRId64
                       " has no logprobs but the file stores 'completion_logprobs'",
                       w->path, c->prompt_index);
    if (w->nb == w->cap) {
        w->cap = w->cap ? 2 * w->cap : BATCH_ROWS;
        GROW(w->b_index, w->cap), GROW(w->b_end, w->cap), GROW(w->b_plen, w->cap);
        GROW(w->b_finish, w->cap), GROW(w->b_ttft, w->cap), GROW(w->b_latency, w->cap);
        GROW(w->b_queue, w->cap), GROW(w->b_error, w->cap);
        if (w->with_text) GROW(w->b_text, w->cap);
    }
    if (w->nt + c->n_tokens > w->cap_t) {
        while (w->nt + c->n_tokens > w->cap_t)
            w->cap_t = w->cap_t ? 2 * w->cap_t : 4096;
        GROW(w->b_tok, w->cap_t);
        if (w->with_logprobs) GROW(w->b_lp, w->cap_t);
        if (w->top_n) {
            GROW(w->b_top_ids, w->cap_t * w->top_n);
            GROW(w->b_top_lps, w->cap_t * w->top_n);
        }
    }
    int64_t i = w->nb++;
    if (c->n_tokens > 0) {
        memcpy(w->b_tok + w->nt, c->tokens, sizeof(int32_t) * (size_t)c->n_tokens);
        if (w->with_logprobs)
            memcpy(w->b_lp + w->nt, c->logprobs, sizeof(float) * (size_t)c->n_tokens);
        if (w->top_n) {
            size_t k = (size_t)c->n_tokens * w->top_n, at = (size_t)w->nt * w->top_n;
            memcpy(w->b_top_ids + at, c->top_ids, sizeof(int32_t) * k);
            memcpy(w->b_top_lps + at, c->top_logprobs, sizeof(float) * k);
        }
    }
    w->nt += c->n_tokens;
    w->b_index[i] = c->prompt_index;
    w->b_end[i] = w->toks + w->nt;
    w->b_plen[i] = c->prompt_len;
    w->b_finish[i] = (int8_t)c->finish;
    w->b_ttft[i] = c->ttft_s;
    w->b_latency[i] = c->latency_s;
    w->b_queue[i] = c->queue_s;
    w->b_error[i] = utf8_sanitized(c->error);
    if (w->with_text) w->b_text[i] = utf8_sanitized(c->text);
    if (w->nb >= BATCH_ROWS || w->nt >= BATCH_TOKENS) return writer_write_batch(w, err);
    return 0;
}

// Writes the buffer into the last segment and finishes it; an untouched
// writer still leaves one (empty) segment. w is freed either way.
static int writer_close(h5_writer *w, sl_err *err) {
    int rc = writer_write_batch(w, err);
    if (rc == 0 && w->file < 0 && w->n_done == 0) rc = seg_create(w, err);
    if (rc == 0 && w->file >= 0) rc = seg_finish(w, err);
    writer_free(w);
    return rc;
}

// Segments OUTDIR/part-PPPPP-SSSSSS.h5 are written under a temporary name
// and renamed into place when finished (at each flush and at close), so a
// kill at any moment leaves only whole segments behind.
int h5_writer_open(h5_writer **out, const char *outdir, int part, int with_text, int with_logprobs,
                   sl_err *err) {
    *out = NULL;
    if (part < 0) return sl_errf(err, "%s: part number %d is negative", outdir, part);
    h5quiet q = quiet_begin();
    int rc = writer_create(out, outdir, part, with_text, with_logprobs, NULL, err);
    quiet_end(q);
    return rc;
}

int h5_writer_append(h5_writer *w, const Completion *c, sl_err *err) {
    h5quiet q = quiet_begin();
    int rc = writer_append(w, c, err);
    quiet_end(q);
    return rc;
}

// A checkpoint: writes the buffered rows and finishes the current segment
// (closed, synced, renamed into place). Nothing to write: nothing happens.
int h5_writer_flush(h5_writer *w, sl_err *err) {
    h5quiet q = quiet_begin();
    int rc = writer_write_batch(w, err);
    if (rc == 0 && w->file >= 0 && (w->rows > 0 || w->n_done == 0)) rc = seg_finish(w, err);
    quiet_end(q);
    return rc;
}

// Writes what is buffered and closes; w is freed even when that fails.
int h5_writer_close(h5_writer *w, sl_err *err) {
    if (!w) return 0;
    h5quiet q = quiet_begin();
    int rc = writer_close(w, err);
    quiet_end(q);
    return rc;
}

// ----------------------------------------------------------------------------
// completions: reading back

// Frees what h5_completions_read allocated and zeroes *cs; NULL is a no-op.
void h5_completions_free(CompletionSet *cs) {
    if (!cs) return;
    free(cs->prompt_index);
    free(cs->prompt_len);
    free(cs->tokens);
    free(cs->offsets);
    free(cs->finish);
    free_strs(cs->error, cs->n);
    free_strs(cs->text, cs->n);
    free(cs->logprobs);
    free(cs->top_ids);
    free(cs->top_logprobs);
    free(cs->ttft_s);
    free(cs->latency_s);
    free(cs->queue_s);
    memset(cs, 0, sizeof *cs);
}

// The format attribute first, then the per-row datasets (n from
// prompt_index), the offsets against the tokens, and the optional datasets.
static int completions_read(CompletionSet *cs, const char *path, sl_err *err) {
    const char *per = "one per completion";
    char format[64];
    int64_t n_off = 0, n_tok = 0;
    hid_t f = file_open_ro(path, err);
    if (f < 0) return -1;
    if (read_attr_str(f, path, FORMAT_ATTR, format, sizeof format, err)) goto fail;
    if (strcmp(format, FORMAT_COMPLETIONS) != 0) {
        sl_errf(err, "%s: attribute '" FORMAT_ATTR "' is '%s', expected '" FORMAT_COMPLETIONS "'",
                path, format);
        goto fail;
    }
    if (load_1d(f, path, "prompt_index", K_I64, 0, -1, NULL, (void **)&cs->prompt_index, &cs->n,
                err) ||
        load_1d(f, path, "prompt_len", K_I32, 0, cs->n, per, (void **)&cs->prompt_len, NULL, err) ||
        load_1d(f, path, "completion_offsets", K_I64, INT64_MIN, cs->n + 1,
                "one per completion, plus the leading 0", (void **)&cs->offsets, &n_off, err) ||
        load_1d(f, path, "completion_tokens", K_I32, 0, -1, NULL, (void **)&cs->tokens, &n_tok,
                err) ||
        check_offsets(path, "completion_offsets", "completion_tokens", cs->offsets, cs->n, n_tok,
                      err) ||
        load_1d(f, path, "finish_reason", K_FINISH, 0, cs->n, per, (void **)&cs->finish, NULL,
                err) ||
        load_1d(f, path, "error", K_STR, 0, cs->n, per, (void **)&cs->error, NULL, err) ||
        load_1d(f, path, "ttft_s", K_F32, 0, cs->n, per, (void **)&cs->ttft_s, NULL, err) ||
        load_1d(f, path, "latency_s", K_F32, 0, cs->n, per, (void **)&cs->latency_s, NULL, err) ||
        load_1d(f, path, "queue_s", K_F32, 0, cs->n, per, (void **)&cs->queue_s, NULL, err) ||
        load_opt(f, path, "completion_text", K_STR, cs->n, per, (void **)&cs->text, err) ||
        load_opt(f, path, "completion_logprobs", K_F32, n_tok, "one per completion token",
                 (void **)&cs->logprobs, err))
        goto fail;
    if (H5Aexists(f, TOP_N_ATTR) > 0) {
        char v[32];
        if (read_attr_str(f, path, TOP_N_ATTR, v, sizeof v, err)) goto fail;
        cs->top_n = atoi(v);
        if (cs->top_n < 1 || cs->top_n > 1024) {
            sl_errf(err, "%s: attribute '" TOP_N_ATTR "' is '%s', expected 1..1024", path, v);
            goto fail;
        }
        const char *per_top = "top_logprobs_n per completion token";
        if (load_opt(f, path, "completion_top_ids", K_I32, n_tok * cs->top_n, per_top,
                     (void **)&cs->top_ids, err) ||
            load_opt(f, path, "completion_top_logprobs", K_F32, n_tok * cs->top_n, per_top,
                     (void **)&cs->top_logprobs, err))
            goto fail;
        if (!cs->top_ids || !cs->top_logprobs) {
            sl_errf(err, "%s: has '" TOP_N_ATTR "' but lacks completion_top_ids/_logprobs", path);
            goto fail;
        }
    }
    H5Fclose(f);
    return 0;
fail:
    H5Fclose(f);
    return -1;
}

int h5_completions_read(CompletionSet *cs, const char *path, sl_err *err) {
    memset(cs, 0, sizeof *cs);
    h5quiet q = quiet_begin();
    int rc = completions_read(cs, path, err);
    quiet_end(q);
    if (rc) h5_completions_free(cs);
    return rc;
}

// ----------------------------------------------------------------------------
// completions: merging the parts

// Where each prompt's row lives: part file and row within it.
typedef struct {
    int32_t part; // -1: not seen yet
    int64_t row;
} RowRef;

// Finds every prompt index in [0, n_prompts) exactly once across the parts.
// Reports a duplicate before a gap (a duplicate is the likelier bug), each
// time the lowest such index.
static int merge_index(const CompletionSet *parts, char *const *names, int n_parts,
                       int64_t n_prompts, const char *outdir, RowRef *where, sl_err *err) {
    int64_t dup = -1, dup_row = 0;
    int dup_part = 0;
    for (int64_t i = 0; i < n_prompts; i++)
        where[i].part = -1;
    for (int p = 0; p < n_parts; p++) {
        for (int64_t r = 0; r < parts[p].n; r++) {
            int64_t idx = parts[p].prompt_index[r];
            if (idx >= n_prompts)
                return sl_errf(err,
                               "%s: prompt_index %" PRId64 " (row %" PRId64
                               ") is outside [0, %" PRId64 ")",
                               names[p], idx, r, n_prompts);
            if (where[idx].part >= 0) {
                if (dup < 0 || idx < dup) dup = idx, dup_part = p, dup_row = r;
                continue;
            }
            where[idx].part = p;
            where[idx].row = r;
        }
    }
    if (dup >= 0) {
        const RowRef *a = &where[dup];
        if (a->part == dup_part)
            return sl_errf(err,
                           "%s: prompt index %" PRId64 " appears twice in %s (rows %" PRId64
                           " and %" PRId64 ")",
                           outdir, dup, names[dup_part], a->row, dup_row);
        return sl_errf(err, "%s: prompt index %" PRId64 " appears twice: in %s and in %s", outdir,
                       dup, names[a->part], names[dup_part]);
    }
    int64_t missing = 0, first = -1;
    for (int64_t i = 0; i < n_prompts; i++) {
        if (where[i].part >= 0) continue;
        if (first < 0) first = i;
        missing++;
    }
    if (missing)
        return sl_errf(err,
                       "%s: prompt index %" PRId64 " is missing from all %d part files (%" PRId64
                       " of %" PRId64 " prompts missing)",
                       outdir, first, n_parts, missing, n_prompts);
    return 0;
}

// Reads every part (sorted by name), checks they agree on the optional
// datasets and cover [0, n_prompts) exactly once, then rewrites the rows in
// prompt order through the same writer into completions.h5.tmp and renames
// it. All parts are held in memory at once.
static int merge_parts(const char *outdir, int64_t n_prompts, sl_err *err) {
    glob_t g = {0};
    CompletionSet *parts = NULL;
    RowRef *where = NULL;
    h5_writer *w = NULL;
    char *pattern = sl_path_join(outdir, "part-*.h5");
    char *final = sl_path_join(outdir, "completions.h5");
    char *tmp = sl_path_join(outdir, "completions.h5.tmp");
    int n_parts = 0, rc = -1;
    if (n_prompts < 0) {
        sl_errf(err, "%s: n_prompts=%" PRId64 " is negative", outdir, n_prompts);
        goto fail;
    }
    int gr = glob(pattern, 0, NULL, &g); // sorted by name
    if (gr != 0 && gr != GLOB_NOMATCH) {
        sl_errf(err, "%s: cannot list part-*.h5 files", outdir);
        goto fail;
    }
    n_parts = gr == 0 ? (int)g.gl_pathc : 0;
    if (n_parts == 0 && n_prompts > 0) {
        sl_errf(err, "%s: no part-*.h5 files to merge (expected %" PRId64 " completions)", outdir,
                n_prompts);
        goto fail;
    }
    parts = sl_calloc((size_t)(n_parts ? n_parts : 1), sizeof *parts);
    for (int p = 0; p < n_parts; p++) {
        if (completions_read(&parts[p], g.gl_pathv[p], err)) goto fail;
        int text = parts[p].text != NULL, lp = parts[p].logprobs != NULL;
        int text0 = parts[0].text != NULL, lp0 = parts[0].logprobs != NULL;
        if (parts[p].top_n != parts[0].top_n) {
            sl_errf(err, "%s stores %d top logprobs per token but %s stores %d: all parts must agree",
                    g.gl_pathv[p], parts[p].top_n, g.gl_pathv[0], parts[0].top_n);
            goto fail;
        }
        if (text != text0 || lp != lp0) {
            const char *what = text != text0 ? "completion_text" : "completion_logprobs";
            int has_p = text != text0 ? text : lp;
            sl_errf(err, "%s has '%s' but %s does not: all parts must agree",
                    g.gl_pathv[has_p ? p : 0], what, g.gl_pathv[has_p ? 0 : p]);
            goto fail;
        }
    }
    where = sl_malloc(sizeof *where * (size_t)(n_prompts ? n_prompts : 1));
    if (merge_index(parts, g.gl_pathv, n_parts, n_prompts, outdir, where, err)) goto fail;

    int with_text = n_parts > 0 && parts[0].text != NULL;
    int with_lp = n_parts > 0 && parts[0].logprobs != NULL;
    int top_n = n_parts > 0 ? parts[0].top_n : 0;
    if (top_n) with_lp = 1 + top_n;
    if (writer_create(&w, tmp, 0, with_text, with_lp, final, err)) goto fail;
    for (int64_t i = 0; i < n_prompts; i++) {
        const CompletionSet *s = &parts[where[i].part];
        int64_t r = where[i].row, off = s->offsets[r];
        Completion c = {
            .prompt_index = i,
            .prompt_len = s->prompt_len[r],
            .tokens = s->tokens + off,
            .n_tokens = (int32_t)(s->offsets[r + 1] - off),
            .finish = (FinishReason)s->finish[r],
            .error = s->error[r],
            .text = s->text ? s->text[r] : NULL,
            .logprobs = s->logprobs ? s->logprobs + off : NULL,
            .top_ids = s->top_n ? s->top_ids + off * s->top_n : NULL,
            .top_logprobs = s->top_n ? s->top_logprobs + off * s->top_n : NULL,
            .ttft_s = s->ttft_s[r],
            .latency_s = s->latency_s[r],
            .queue_s = s->queue_s[r],
        };
        if (writer_append(w, &c, err)) goto fail;
    }
    h5_writer *closing = w;
    w = NULL;
    if (writer_close(closing, err)) goto fail; // renames tmp to final
    rc = 0;
fail:
    if (w) writer_free(w);
    if (rc) unlink(tmp);
    for (int p = 0; p < n_parts; p++)
        h5_completions_free(&parts[p]);
    free(parts);
    free(where);
    globfree(&g);
    free(tmp);
    free(final);
    free(pattern);
    return rc;
}

int h5_merge_parts(const char *outdir, int64_t n_prompts, sl_err *err) {
    h5quiet q = quiet_begin();
    int rc = merge_parts(outdir, n_prompts, err);
    quiet_end(q);
    return rc;
}
