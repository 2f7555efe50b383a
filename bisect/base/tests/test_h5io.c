// test_h5io.c: the HDF5 contract v1 (io/h5io.c).
//
// Prompts: round trips (all fields, none, N=0, N=1, empty and multibyte UTF-8
// strings); files shaped the way h5py users write them (int64 tokens, int16
// offsets, float64 temperature, fixed-length strings), built here with the
// raw HDF5 API; and every malformed input, each asserting -1 and a message
// that names the file and the dataset.
// Completions: ~1000 random completions written across 3 part files in
// random prompt order, merged, read back and compared field by field with
// what was appended; merge errors; the tmp + rename behaviour.
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "h5io.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// helpers

// A path under the test's temp dir; 8 rotating slots.
static const char *tmp_path(const char *fmt, ...) {
    static char slots[8][512];
    static int k;
    char *p = slots[k++ & 7], name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

static const char *fresh_dir(const char *name) {
    const char *d = tmp_path("%s", name);
    mkdir(d, 0755);
    return d;
}

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

// Asserts that err names every needle (the file, the dataset, the problem).
#define ASSERT_MSG(err, ...)                                                                       \
    do {                                                                                           \
        const char *needles_[] = {__VA_ARGS__, NULL};                                              \
        if (getenv("SLUICE_TEST_VERBOSE")) fprintf(stderr, "  error: %s\n", (err).msg);            \
        for (int i_ = 0; needles_[i_]; i_++) {                                                     \
            if (!strstr((err).msg, needles_[i_]))                                                  \
                fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", (err).msg, needles_[i_]);       \
            CU_ASSERT_PTR_NOT_NULL(strstr((err).msg, needles_[i_]));                               \
        }                                                                                          \
    } while (0)

// Raw HDF5 writers, standing in for h5py: rank-1 (or any rank) datasets of
// whatever file type the case needs; data is in the matching memory layout.
static hid_t raw_create(const char *path) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    return f;
}

static void raw_ds(hid_t f, const char *name, hid_t ftype, hid_t mtype, int rank,
                   const hsize_t *dims, const void *data) {
    hid_t sp = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(ds >= 0);
    hsize_t total = 1;
    for (int i = 0; i < rank; i++)
        total *= dims[i];
    if (total > 0) CU_ASSERT_FATAL(H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    H5Dclose(ds);
    H5Sclose(sp);
}

static void raw_1d(hid_t f, const char *name, hid_t ftype, hid_t mtype, hsize_t n,
                   const void *data) {
    raw_ds(f, name, ftype, mtype, 1, &n, data);
}

// The 2-prompt file most malformed cases start from: tokens (5) and offsets.
static const int32_t k_tok[5] = {11, 12, 13, 14, 15};
static const int64_t k_off[3] = {0, 2, 5};

static void raw_tokens(hid_t f) {
    raw_1d(f, "prompt_tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 5, k_tok);
}
static void raw_offsets(hid_t f, int n, const int64_t *off) {
    raw_1d(f, "prompt_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, (hsize_t)n, off);
}

// Reads path, expecting failure with a message naming the path and needles.
#define EXPECT_READ_FAIL(path, ...)                                                                \
    do {                                                                                           \
        PromptSet ps_;                                                                             \
        sl_err e_ = {{0}};                                                                         \
        CU_ASSERT_EQUAL(h5_prompts_read(&ps_, path, &e_), -1);                                     \
        CU_ASSERT_PTR_NULL(ps_.tokens);                                                            \
        ASSERT_MSG(e_, path, __VA_ARGS__);                                                         \
    } while (0)

static char *rand_utf8(uint64_t *rng) {
    static const char *const pieces[] = {"a", "Z", " ", "é", "ß", "日本", "語", "🙂", "\n", "x9"};
    int n = (int)(tu_rand_u64(rng) % 6);
    char *s = sl_calloc(64, 1);
    for (int i = 0; i < n; i++)
        strcat(s, pieces[tu_rand_u64(rng) % 10]);
    return s;
}

// ----------------------------------------------------------------------------
// prompts: round trips

// A PromptSet with n prompts of random lengths (some empty) and, when full,
// every optional field filled with non-trivial values.
static void make_prompts(PromptSet *ps, int64_t n, int full, uint64_t seed) {
    uint64_t rng = seed;
    memset(ps, 0, sizeof *ps);
    ps->n = n;
    ps->offsets = sl_malloc(sizeof(int64_t) * (size_t)(n + 1));
    ps->offsets[0] = 0;
    for (int64_t i = 0; i < n; i++)
        ps->offsets[i + 1] =
            ps->offsets[i] + (int64_t)(tu_rand_u64(&rng) % 4 == 0 ? 0 : tu_rand_u64(&rng) % 50);
    ps->n_tokens = ps->offsets[n];
    ps->tokens = sl_malloc(sizeof(int32_t) * (size_t)(ps->n_tokens + 1));
    for (int64_t i = 0; i < ps->n_tokens; i++)
        ps->tokens[i] = (int32_t)(tu_rand_u64(&rng) % 2000000000u);
    if (!full) return;
    ps->max_new_tokens = sl_malloc(sizeof(int32_t) * (size_t)(n + 1));
    ps->temperature = sl_malloc(sizeof(float) * (size_t)(n + 1));
    ps->top_p = sl_malloc(sizeof(float) * (size_t)(n + 1));
    ps->top_k = sl_malloc(sizeof(int32_t) * (size_t)(n + 1));
    ps->seed = sl_malloc(sizeof(int64_t) * (size_t)(n + 1));
    ps->request_id = sl_calloc((size_t)(n + 1), sizeof(char *));
    ps->prompt_text = sl_calloc((size_t)(n + 1), sizeof(char *));
    for (int64_t i = 0; i < n; i++) {
        ps->max_new_tokens[i] = 1 + (int32_t)(tu_rand_u64(&rng) % 4096);
        ps->temperature[i] = i % 3 == 0 ? 0.0f : 2.0f * tu_rand_uniform(&rng);
        ps->top_p[i] = tu_rand_uniform(&rng);
        ps->top_k[i] = (int32_t)(tu_rand_u64(&rng) % 100) - 1;
        ps->seed[i] = (int64_t)(tu_rand_u64(&rng) >> 1) * (i % 2 ? -1 : 1);
        char id[32];
        snprintf(id, sizeof id, "req-%04lld-ü", (long long)i);
        ps->request_id[i] = sl_strdup(id);
        ps->prompt_text[i] = rand_utf8(&rng);
    }
}

static void assert_prompts_equal(const PromptSet *a, const PromptSet *b) {
    CU_ASSERT_EQUAL_FATAL(a->n, b->n);
    CU_ASSERT_EQUAL_FATAL(a->n_tokens, b->n_tokens);
    int64_t n = a->n;
    CU_ASSERT(memcmp(a->offsets, b->offsets, sizeof(int64_t) * (size_t)(n + 1)) == 0);
    CU_ASSERT(a->n_tokens == 0 || memcmp(a->tokens, b->tokens, 4 * (size_t)a->n_tokens) == 0);
#define SAME_ARRAY(f, sz)                                                                          \
    do {                                                                                           \
        CU_ASSERT_EQUAL(a->f == NULL, b->f == NULL);                                               \
        if (a->f && b->f && n > 0) CU_ASSERT(memcmp(a->f, b->f, (sz) * (size_t)n) == 0);           \
    } while (0)
    SAME_ARRAY(max_new_tokens, 4);
    SAME_ARRAY(temperature, 4);
    SAME_ARRAY(top_p, 4);
    SAME_ARRAY(top_k, 4);
    SAME_ARRAY(seed, 8);
#undef SAME_ARRAY
    CU_ASSERT_EQUAL(a->request_id == NULL, b->request_id == NULL);
    CU_ASSERT_EQUAL(a->prompt_text == NULL, b->prompt_text == NULL);
    for (int64_t i = 0; i < n; i++) {
        if (a->request_id && b->request_id)
            CU_ASSERT_STRING_EQUAL(a->request_id[i], b->request_id[i]);
        if (a->prompt_text && b->prompt_text)
            CU_ASSERT_STRING_EQUAL(a->prompt_text[i], b->prompt_text[i]);
    }
}

static void roundtrip(int64_t n, int full, uint64_t seed) {
    PromptSet in, out;
    sl_err err = {{0}};
    const char *path = tmp_path("rt-%lld-%d.h5", (long long)n, full);
    make_prompts(&in, n, full, seed);
    CU_ASSERT_EQUAL_FATAL(h5_prompts_write(path, &in, &err), 0);
    CU_ASSERT_FALSE(file_exists(tmp_path("rt-%lld-%d.h5.tmp", (long long)n, full)));
    int rc = h5_prompts_read(&out, path, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    assert_prompts_equal(&in, &out);
    h5_prompts_free(&in);
    h5_prompts_free(&out);
}

static void test_roundtrip_full(void) { roundtrip(57, 1, 1); }
static void test_roundtrip_minimal(void) {
    roundtrip(23, 0, 2);
    PromptSet out;
    sl_err err;
    CU_ASSERT_EQUAL_FATAL(h5_prompts_read(&out, tmp_path("rt-23-0.h5"), &err), 0);
    CU_ASSERT_PTR_NULL(out.temperature);
    CU_ASSERT_PTR_NULL(out.request_id);
    CU_ASSERT_PTR_NULL(out.seed);
    h5_prompts_free(&out);
}
static void test_roundtrip_n0(void) {
    roundtrip(0, 0, 3);
    roundtrip(0, 1, 3);
    PromptSet out;
    sl_err err;
    CU_ASSERT_EQUAL_FATAL(h5_prompts_read(&out, tmp_path("rt-0-1.h5"), &err), 0);
    CU_ASSERT_EQUAL(out.n, 0);
    CU_ASSERT_EQUAL(out.offsets[0], 0);
    CU_ASSERT_PTR_NOT_NULL(out.temperature); // present (empty) dataset, not absent
    h5_prompts_free(&out);
}
static void test_roundtrip_n1(void) {
    roundtrip(1, 1, 4);
    roundtrip(1, 0, 5);
}

// Empty strings, multibyte UTF-8 and an empty prompt, spelled out.
static void test_roundtrip_strings(void) {
    int32_t tok[3] = {7, 8, 9};
    int64_t off[4] = {0, 0, 3, 3};
    char *ids[3] = {"", "ид-1", "🙂🙂"};
    char *text[3] = {"", "naïve café — 日本語", NULL}; // NULL is written as ""
    PromptSet in = {.n = 3,
                    .n_tokens = 3,
                    .tokens = tok,
                    .offsets = off,
                    .request_id = ids,
                    .prompt_text = text};
    PromptSet out;
    sl_err err;
    const char *path = tmp_path("strings.h5");
    CU_ASSERT_EQUAL_FATAL(h5_prompts_write(path, &in, &err), 0);
    CU_ASSERT_EQUAL_FATAL(h5_prompts_read(&out, path, &err), 0);
    CU_ASSERT_STRING_EQUAL(out.request_id[0], "");
    CU_ASSERT_STRING_EQUAL(out.request_id[1], "ид-1");
    CU_ASSERT_STRING_EQUAL(out.request_id[2], "🙂🙂");
    CU_ASSERT_EQUAL(strlen(out.request_id[2]), 8);
    CU_ASSERT_STRING_EQUAL(out.prompt_text[1], "naïve café — 日本語");
    CU_ASSERT_STRING_EQUAL(out.prompt_text[2], "");
    CU_ASSERT_EQUAL(out.offsets[1], 0);
    CU_ASSERT_EQUAL(out.tokens[2], 9);
    h5_prompts_free(&out);
}

// What h5py users write: int64 tokens, int16 offsets, float64 temperature,
// fixed-length (NUL-padded) request_id, uint8 top_k, uint64 seed, int16
// max_new_tokens, ASCII vlen prompt_text.
static void test_h5py_variations(void) {
    const char *path = tmp_path("h5py-like.h5");
    hid_t f = raw_create(path);
    int64_t tok[6] = {1, 2147483647, 0, 5, 6, 100000};
    int16_t off[4] = {0, 2, 2, 6};
    double temp[3] = {0.0, 0.7, 1.25};
    float top_p[3] = {1.0f, 0.9f, 0.5f};
    uint8_t top_k[3] = {0, 40, 255};
    uint64_t seed[3] = {0, 42, 9223372036854775807ull};
    int16_t mnt[3] = {16, 32767, 1};
    char ids[3][8] = {"a", "bb-2", {'1', '2', '3', '4', '5', '6', '7', '8'}}; // last: no NUL
    const char *texts[3] = {"hello", "", "world x"};
    raw_1d(f, "prompt_tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, 6, tok);
    raw_1d(f, "prompt_offsets", H5T_STD_I16LE, H5T_NATIVE_INT16, 4, off);
    raw_1d(f, "temperature", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 3, temp);
    raw_1d(f, "top_p", H5T_IEEE_F32BE, H5T_NATIVE_FLOAT, 3, top_p); // big-endian, why not
    raw_1d(f, "top_k", H5T_STD_U8LE, H5T_NATIVE_UINT8, 3, top_k);
    raw_1d(f, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, 3, seed);
    raw_1d(f, "max_new_tokens", H5T_STD_I16LE, H5T_NATIVE_INT16, 3, mnt);
    hid_t fixed = H5Tcopy(H5T_C_S1);
    H5Tset_size(fixed, 8);
    H5Tset_strpad(fixed, H5T_STR_NULLPAD);
    raw_1d(f, "request_id", fixed, fixed, 3, ids);
    H5Tclose(fixed);
    hid_t vstr = H5Tcopy(H5T_C_S1); // ASCII character set
    H5Tset_size(vstr, H5T_VARIABLE);
    raw_1d(f, "prompt_text", vstr, vstr, 3, texts);
    H5Tclose(vstr);
    H5Fclose(f);

    PromptSet ps;
    sl_err err = {{0}};
    int rc = h5_prompts_read(&ps, path, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(ps.n, 3);
    CU_ASSERT_EQUAL(ps.n_tokens, 6);
    for (int i = 0; i < 6; i++)
        CU_ASSERT_EQUAL(ps.tokens[i], (int32_t)tok[i]);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(ps.offsets[i], off[i]);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(ps.temperature[i], (float)temp[i]);
        CU_ASSERT_EQUAL(ps.top_p[i], top_p[i]);
        CU_ASSERT_EQUAL(ps.top_k[i], top_k[i]);
        CU_ASSERT_EQUAL(ps.seed[i], (int64_t)seed[i]);
        CU_ASSERT_EQUAL(ps.max_new_tokens[i], mnt[i]);
        CU_ASSERT_STRING_EQUAL(ps.prompt_text[i], texts[i]);
    }
    CU_ASSERT_STRING_EQUAL(ps.request_id[0], "a");
    CU_ASSERT_STRING_EQUAL(ps.request_id[1], "bb-2");
    CU_ASSERT_STRING_EQUAL(ps.request_id[2], "12345678");
    h5_prompts_free(&ps);
}

// Space-padded fixed strings (Fortran style) lose their padding.
static void test_spacepad_strings(void) {
    const char *path = tmp_path("spacepad.h5");
    hid_t f = raw_create(path);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    char ids[2][6] = {{'a', 'b', ' ', ' ', ' ', ' '}, {'x', ' ', 'y', ' ', ' ', ' '}};
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 6);
    H5Tset_strpad(t, H5T_STR_SPACEPAD);
    raw_1d(f, "request_id", t, t, 2, ids);
    H5Tclose(t);
    H5Fclose(f);
    PromptSet ps;
    sl_err err;
    CU_ASSERT_EQUAL_FATAL(h5_prompts_read(&ps, path, &err), 0);
    CU_ASSERT_STRING_EQUAL(ps.request_id[0], "ab");
    CU_ASSERT_STRING_EQUAL(ps.request_id[1], "x y");
    h5_prompts_free(&ps);
}

// ----------------------------------------------------------------------------
// prompts: malformed inputs

static void test_missing_and_not_hdf5(void) {
    EXPECT_READ_FAIL(tmp_path("no-such-file.h5"), "No such file");
    const char *txt = tmp_path("prompts.txt");
    const char junk[] = "prompt_tokens,prompt_offsets\n1,2,3\n";
    CU_ASSERT_EQUAL_FATAL(tu_write_file(txt, junk, sizeof junk - 1), 0);
    EXPECT_READ_FAIL(txt, "not an HDF5 file");
    const char *empty = tmp_path("empty.h5");
    CU_ASSERT_EQUAL_FATAL(tu_write_file(empty, "", 0), 0);
    EXPECT_READ_FAIL(empty, "not an HDF5 file");
    EXPECT_READ_FAIL(tu_tmpdir(), "is a directory");
}

static void test_missing_datasets(void) {
    const char *p1 = tmp_path("no-tokens.h5");
    hid_t f = raw_create(p1);
    raw_offsets(f, 3, k_off);
    H5Fclose(f);
    EXPECT_READ_FAIL(p1, "dataset 'prompt_tokens' missing");

    const char *p2 = tmp_path("no-offsets.h5");
    f = raw_create(p2);
    raw_tokens(f);
    H5Fclose(f);
    EXPECT_READ_FAIL(p2, "dataset 'prompt_offsets' missing");

    const char *p3 = tmp_path("tokens-group.h5");
    f = raw_create(p3);
    H5Gclose(H5Gcreate2(f, "prompt_tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    raw_offsets(f, 3, k_off);
    H5Fclose(f);
    EXPECT_READ_FAIL(p3, "'prompt_tokens' is not a dataset");
}

// One file per broken offsets array, against the 5 tokens of k_tok.
static void offsets_case(const char *name, int n, const int64_t *off, const char *want) {
    const char *path = tmp_path("%s.h5", name);
    hid_t f = raw_create(path);
    raw_tokens(f);
    raw_offsets(f, n, off);
    H5Fclose(f);
    EXPECT_READ_FAIL(path, "'prompt_offsets'", want);
}

static void test_bad_offsets(void) {
    offsets_case("nonmono", 4, (int64_t[]){0, 3, 2, 5}, "not monotonic at index 2 (offset 2 < 3)");
    offsets_case("first", 3, (int64_t[]){1, 3, 5}, "'prompt_offsets'[0]=1, expected 0");
    offsets_case("last", 3, (int64_t[]){0, 2, 4},
                 "'prompt_offsets'[2]=4 does not equal len(prompt_tokens)=5");
    offsets_case("past", 3, (int64_t[]){0, 7, 5},
                 "'prompt_offsets'[1]=7 is past the end of 'prompt_tokens' (length 5)");
    offsets_case("empty", 0, k_off, "is empty");
}

static void test_bad_types_and_shapes(void) {
    // float prompt_tokens
    const char *p = tmp_path("float-tokens.h5");
    hid_t f = raw_create(p);
    float ftok[5] = {1, 2, 3, 4, 5};
    raw_1d(f, "prompt_tokens", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 5, ftok);
    raw_offsets(f, 3, k_off);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'prompt_tokens' must be an integer dataset, found float");

    // 2-D prompt_tokens
    p = tmp_path("2d-tokens.h5");
    f = raw_create(p);
    int32_t tok2[6] = {1, 2, 3, 4, 5, 6};
    raw_ds(f, "prompt_tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, (hsize_t[]){2, 3}, tok2);
    raw_offsets(f, 3, (int64_t[]){0, 3, 6});
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'prompt_tokens' must be 1-D, found rank 2 (shape 2x3)");

    // scalar prompt_offsets
    p = tmp_path("scalar-offsets.h5");
    f = raw_create(p);
    raw_tokens(f);
    int64_t zero = 0;
    raw_ds(f, "prompt_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &zero);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'prompt_offsets' must be 1-D, found rank 0");

    // temperature given as integers
    p = tmp_path("int-temperature.h5");
    f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    int32_t itemp[2] = {0, 1};
    raw_1d(f, "temperature", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, itemp);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'temperature' must be a float dataset", "found integer");

    // request_id given as integers
    p = tmp_path("int-request-id.h5");
    f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    raw_1d(f, "request_id", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, itemp);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'request_id' must be a string dataset, found integer");
}

static void test_bad_lengths_and_values(void) {
    // an optional dataset of the wrong length
    const char *p = tmp_path("short-temperature.h5");
    hid_t f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    float t3[3] = {0.5f, 0.5f, 0.5f};
    raw_1d(f, "temperature", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3, t3);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'temperature' has 3 rows, expected 2 (one per prompt)");

    p = tmp_path("short-top-k.h5");
    f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    int32_t k1 = 5;
    raw_1d(f, "top_k", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &k1);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'top_k' has 1 rows, expected 2 (one per prompt)");

    // an int64 token id that does not fit int32
    p = tmp_path("big-token.h5");
    f = raw_create(p);
    int64_t big[5] = {1, 2, 3, 4, 3000000000LL};
    raw_1d(f, "prompt_tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, 5, big);
    raw_offsets(f, 3, k_off);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'prompt_tokens'[4]=3000000000 does not fit int32");

    // a negative token id fits int32: it reaches the engine, which turns it
    // into a per-request error row
    p = tmp_path("neg-token.h5");
    f = raw_create(p);
    int16_t neg[5] = {1, -5, 3, 4, 5};
    raw_1d(f, "prompt_tokens", H5T_STD_I16LE, H5T_NATIVE_INT16, 5, neg);
    raw_offsets(f, 3, k_off);
    H5Fclose(f);
    PromptSet ps;
    sl_err err;
    CU_ASSERT_EQUAL_FATAL(h5_prompts_read(&ps, p, &err), 0);
    CU_ASSERT_EQUAL(ps.tokens[1], -5);
    h5_prompts_free(&ps);

    // an int64 token id below INT32_MIN
    p = tmp_path("small-token.h5");
    f = raw_create(p);
    int64_t small[5] = {1, 2, -3000000000LL, 4, 5};
    raw_1d(f, "prompt_tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, 5, small);
    raw_offsets(f, 3, k_off);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'prompt_tokens'[2]=-3000000000 does not fit int32");

    // a uint64 seed past INT64_MAX
    p = tmp_path("big-seed.h5");
    f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    uint64_t seeds[2] = {1, 18446744073709551615ull};
    raw_1d(f, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, 2, seeds);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'seed'[1]=18446744073709551615 does not fit int64");

    // a uint32 max_new_tokens past INT32_MAX
    p = tmp_path("big-mnt.h5");
    f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    uint32_t mnt[2] = {4000000000u, 1};
    raw_1d(f, "max_new_tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, 2, mnt);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'max_new_tokens'[0]=4000000000 does not fit int32");

    // request_id bytes that are not UTF-8
    p = tmp_path("bad-utf8.h5");
    f = raw_create(p);
    raw_tokens(f);
    raw_offsets(f, 3, k_off);
    const char *ids[2] = {"ok", "caf\xe9"}; // Latin-1 é
    hid_t vstr = H5Tcopy(H5T_C_S1);
    H5Tset_size(vstr, H5T_VARIABLE);
    H5Tset_cset(vstr, H5T_CSET_UTF8);
    raw_1d(f, "request_id", vstr, vstr, 2, ids);
    H5Tclose(vstr);
    H5Fclose(f);
    EXPECT_READ_FAIL(p, "'request_id'[1] is not valid UTF-8 (at byte 3)");
}

// HDF5's own error stack must not reach stderr on a bad input.
static void test_errors_are_silent(void) {
    const char *p = tmp_path("silent-2d.h5");
    hid_t f = raw_create(p);
    raw_ds(f, "prompt_tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, (hsize_t[]){1, 5}, k_tok);
    H5Fclose(f);
    const char *txt = tmp_path("silent.txt");
    CU_ASSERT_EQUAL_FATAL(tu_write_file(txt, "not hdf5", 8), 0);
    const char *log = tmp_path("stderr.log");
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CU_ASSERT_FATAL(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    PromptSet ps;
    sl_err e1, e2, e3, e4;
    int r1 = h5_prompts_read(&ps, p, &e1);
    int r2 = h5_prompts_read(&ps, txt, &e2);
    int r3 = h5_prompts_read(&ps, tmp_path("missing.h5"), &e3);
    CompletionSet cs;
    int r4 = h5_completions_read(&cs, p, &e4);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    CU_ASSERT(r1 == -1 && r2 == -1 && r3 == -1 && r4 == -1);
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(log, &st), 0);
    CU_ASSERT_EQUAL(st.st_size, 0);
}

// ----------------------------------------------------------------------------
// prompts: tmp + rename

static void test_write_failures(void) {
    PromptSet ps;
    sl_err err = {{0}};
    make_prompts(&ps, 4, 1, 9);

    // a directory that does not exist: nothing appears anywhere
    const char *bad = tmp_path("no-such-dir/prompts.h5");
    CU_ASSERT_EQUAL(h5_prompts_write(bad, &ps, &err), -1);
    ASSERT_MSG(err, bad, "cannot create");
    CU_ASSERT_FALSE(file_exists(bad));
    CU_ASSERT_FALSE(file_exists(tmp_path("no-such-dir/prompts.h5.tmp")));

    // a failure half way (invalid UTF-8 in the last dataset written) leaves
    // the previous file under the name untouched and no tmp file behind
    const char *path = tmp_path("keep.h5");
    CU_ASSERT_EQUAL_FATAL(h5_prompts_write(path, &ps, &err), 0);
    char *saved = ps.prompt_text[2];
    ps.prompt_text[2] = "bad \xff byte";
    CU_ASSERT_EQUAL(h5_prompts_write(path, &ps, &err), -1);
    ASSERT_MSG(err, path, "'prompt_text'[2] is not valid UTF-8");
    CU_ASSERT_FALSE(file_exists(tmp_path("keep.h5.tmp")));
    ps.prompt_text[2] = saved;
    PromptSet back;
    CU_ASSERT_EQUAL_FATAL(h5_prompts_read(&back, path, &err), 0);
    assert_prompts_equal(&ps, &back);
    h5_prompts_free(&back);

    // inconsistent offsets are refused before anything is created
    const char *p2 = tmp_path("bad-offsets-out.h5");
    int64_t keep = ps.offsets[2];
    ps.offsets[2] = ps.offsets[1] - 1;
    if (ps.offsets[2] < 0) ps.offsets[2] = 0, ps.offsets[1] = 1;
    CU_ASSERT_EQUAL(h5_prompts_write(p2, &ps, &err), -1);
    ASSERT_MSG(err, p2, "'prompt_offsets' is not monotonic at index");
    CU_ASSERT_FALSE(file_exists(p2));
    ps.offsets[2] = keep;
    h5_prompts_free(&ps);
}

// ----------------------------------------------------------------------------
// completions

// The reference for one completion; what the writer was given.
typedef struct {
    int32_t *tokens;
    float *logprobs;
    int32_t n_tokens, prompt_len;
    FinishReason finish;
    char *error, *text;
    float ttft, latency, queue;
    int part;
} RefRow;

static void make_ref(RefRow *ref, int64_t n, int n_parts, uint64_t seed) {
    uint64_t rng = seed;
    for (int64_t i = 0; i < n; i++) {
        RefRow *r = &ref[i];
        memset(r, 0, sizeof *r);
        r->part = (int)(tu_rand_u64(&rng) % (uint64_t)n_parts);
        r->prompt_len = 1 + (int32_t)(tu_rand_u64(&rng) % 3000);
        uint64_t kind = tu_rand_u64(&rng) % 10;
        if (kind == 0) { // rejected request: no tokens
            r->finish = FINISH_ERROR;
            char msg[96];
            snprintf(msg, sizeof msg, "prompt %lld too long: %d > 2048 tokens", (long long)i,
                     r->prompt_len);
            r->error = sl_strdup(msg);
        } else {
            r->finish = kind < 6 ? FINISH_STOP : FINISH_LENGTH;
            r->n_tokens = kind == 1 ? 0 : (int32_t)(tu_rand_u64(&rng) % 60); // some empty
        }
        r->tokens = sl_malloc(sizeof(int32_t) * (size_t)(r->n_tokens + 1));
        r->logprobs = sl_malloc(sizeof(float) * (size_t)(r->n_tokens + 1));
        for (int j = 0; j < r->n_tokens; j++) {
            r->tokens[j] = (int32_t)(tu_rand_u64(&rng) % 128256);
            r->logprobs[j] = -8.0f * tu_rand_uniform(&rng);
        }
        r->text = r->finish == FINISH_ERROR ? sl_strdup("") : rand_utf8(&rng);
        r->queue = 10.0f * tu_rand_uniform(&rng);
        r->ttft = 0.5f * tu_rand_uniform(&rng);
        r->latency = r->ttft + 3.0f * tu_rand_uniform(&rng);
    }
}

static void free_ref(RefRow *ref, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        free(ref[i].tokens);
        free(ref[i].logprobs);
        free(ref[i].error);
        free(ref[i].text);
    }
    free(ref);
}

static Completion ref_completion(const RefRow *r, int64_t idx) {
    return (Completion){.prompt_index = idx,
                        .prompt_len = r->prompt_len,
                        .tokens = r->tokens,
                        .n_tokens = r->n_tokens,
                        .finish = r->finish,
                        .error = r->error,
                        .text = r->text,
                        .logprobs = r->logprobs,
                        .ttft_s = r->ttft,
                        .latency_s = r->latency,
                        .queue_s = r->queue};
}

// Checks row `row` of cs against the reference of prompt idx.
static int row_matches(const CompletionSet *cs, int64_t row, int64_t idx, const RefRow *r, int text,
                       int lp) {
    int ok = cs->prompt_index[row] == idx && cs->prompt_len[row] == r->prompt_len &&
             cs->finish[row] == (int8_t)r->finish &&
             cs->offsets[row + 1] - cs->offsets[row] == r->n_tokens &&
             strcmp(cs->error[row], r->error ? r->error : "") == 0 && cs->ttft_s[row] == r->ttft &&
             cs->latency_s[row] == r->latency && cs->queue_s[row] == r->queue;
    if (!ok) return 0;
    const int32_t *t = cs->tokens + cs->offsets[row];
    if (r->n_tokens && memcmp(t, r->tokens, 4 * (size_t)r->n_tokens) != 0) return 0;
    if (text && (!cs->text || strcmp(cs->text[row], r->text) != 0)) return 0;
    if (!text && cs->text) return 0;
    if (lp && (!cs->logprobs || (r->n_tokens && memcmp(cs->logprobs + cs->offsets[row], r->logprobs,
                                                       4 * (size_t)r->n_tokens))))
        return 0;
    if (!lp && cs->logprobs) return 0;
    return 1;
}

// Appends the n reference rows, in a random prompt order, to n_parts writers
// in dir (row i to writer ref[i].part). Returns the append order.
static int64_t *write_parts(const char *dir, RefRow *ref, int64_t n, int n_parts, int text, int lp,
                            uint64_t seed) {
    uint64_t rng = seed;
    int64_t *order = sl_malloc(sizeof(int64_t) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { // Fisher-Yates
        int64_t j = (int64_t)(tu_rand_u64(&rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    h5_writer *w[8];
    sl_err err = {{0}};
    for (int p = 0; p < n_parts; p++)
        CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w[p], dir, p, text, lp, &err), 0);
    for (int64_t k = 0; k < n; k++) {
        int64_t i = order[k];
        Completion c = ref_completion(&ref[i], i);
        int rc = h5_writer_append(w[ref[i].part], &c, &err);
        if (rc) fprintf(stderr, "  %s\n", err.msg);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        if (k == n / 2) CU_ASSERT_EQUAL(h5_writer_flush(w[0], &err), 0); // a checkpoint
    }
    for (int p = 0; p < n_parts; p++)
        CU_ASSERT_EQUAL(h5_writer_close(w[p], &err), 0);
    return order;
}

static void writer_merge_roundtrip(const char *dirname, int text, int lp) {
    const int64_t n = 1000;
    const int n_parts = 3;
    const char *dir = fresh_dir(dirname);
    RefRow *ref = sl_malloc(sizeof *ref * n);
    make_ref(ref, n, n_parts, 77);
    int64_t *order = write_parts(dir, ref, n, n_parts, text, lp, 78);

    // each part holds its rows in append order, across its segments (part 0
    // was checkpointed half way: two segments)
    sl_err err = {{0}};
    int64_t total = 0;
    for (int p = 0; p < n_parts; p++) {
        int64_t row = 0, bad = 0, k = 0, seen = 0;
        int seg = 0;
        for (;; seg++) {
            CompletionSet cs;
            char name[600];
            snprintf(name, sizeof name, "%s/part-%05d-%06d.h5", dir, p, seg);
            if (access(name, F_OK) != 0) break;
            int rc = h5_completions_read(&cs, name, &err);
            if (rc) fprintf(stderr, "  %s\n", err.msg);
            CU_ASSERT_EQUAL_FATAL(rc, 0);
            for (row = 0; row < cs.n; k++) {
                CU_ASSERT_FATAL(k < n);
                int64_t i = order[k];
                if (ref[i].part != p) continue;
                if (!row_matches(&cs, row, i, &ref[i], text, lp)) bad++;
                row++;
            }
            seen += cs.n;
            h5_completions_free(&cs);
        }
        CU_ASSERT_EQUAL(seg, p == 0 ? 2 : 1);
        int64_t want = 0;
        for (int64_t i = 0; i < n; i++) want += ref[i].part == p;
        CU_ASSERT_EQUAL(seen, want);
        CU_ASSERT_EQUAL(bad, 0);
        total += seen;
    }
    CU_ASSERT_EQUAL(total, n);

    // merged: ordered by prompt index, everything preserved
    CU_ASSERT_EQUAL_FATAL(h5_merge_parts(dir, n, &err), 0);
    CompletionSet cs;
    char merged[512];
    snprintf(merged, sizeof merged, "%s/completions.h5", dir);
    CU_ASSERT_FALSE(file_exists(tmp_path("%s/completions.h5.tmp", dirname)));
    CU_ASSERT_EQUAL_FATAL(h5_completions_read(&cs, merged, &err), 0);
    CU_ASSERT_EQUAL_FATAL(cs.n, n);
    int64_t bad = 0, n_err = 0, n_empty = 0, n_tok = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!row_matches(&cs, i, i, &ref[i], text, lp)) {
            if (bad++ < 3) fprintf(stderr, "  merged row %lld differs\n", (long long)i);
        }
        n_err += ref[i].finish == FINISH_ERROR;
        n_empty += ref[i].n_tokens == 0;
        n_tok += ref[i].n_tokens;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(cs.offsets[n], n_tok);
    CU_ASSERT(n_err > 50 && n_empty > n_err); // the data exercised both cases
    h5_completions_free(&cs);
    free(order);
    free_ref(ref, n);
}

static void test_writer_merge_text_logprobs(void) { writer_merge_roundtrip("merge-full", 1, 1); }
static void test_writer_merge_plain(void) { writer_merge_roundtrip("merge-plain", 0, 0); }

static void test_finish_names(void) {
    CU_ASSERT_STRING_EQUAL(finish_reason_name(FINISH_STOP), "stop");
    CU_ASSERT_STRING_EQUAL(finish_reason_name(FINISH_LENGTH), "length");
    CU_ASSERT_STRING_EQUAL(finish_reason_name(FINISH_ERROR), "error");
}

// Rows buffered in memory reach the file on flush; an empty part reads as
// n = 0 with completion_offsets = [0].
static void test_writer_flush_and_empty(void) {
    const char *dir = fresh_dir("flush");
    sl_err err = {{0}};
    h5_writer *w;
    CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w, dir, 7, 0, 0, &err), 0);
    int32_t tok[3] = {5, 6, 7};
    for (int i = 0; i < 10; i++) {
        Completion c = {.prompt_index = i, .prompt_len = 4, .tokens = tok, .n_tokens = 3};
        CU_ASSERT_EQUAL_FATAL(h5_writer_append(w, &c, &err), 0);
    }
    CU_ASSERT_EQUAL(h5_writer_flush(w, &err), 0);
    CompletionSet cs;
    const char *part = tmp_path("flush/part-00007-000000.h5");
    CU_ASSERT_EQUAL_FATAL(h5_completions_read(&cs, part, &err), 0);
    CU_ASSERT_EQUAL(cs.n, 10);
    CU_ASSERT_EQUAL(cs.offsets[10], 30);
    CU_ASSERT_EQUAL(cs.tokens[29], 7);
    h5_completions_free(&cs);
    CU_ASSERT_EQUAL(h5_writer_close(w, &err), 0);
    CU_ASSERT_EQUAL(h5_writer_close(NULL, &err), 0);

    CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w, dir, 8, 1, 1, &err), 0);
    CU_ASSERT_EQUAL_FATAL(h5_writer_close(w, &err), 0);
    CU_ASSERT_EQUAL_FATAL(h5_completions_read(&cs, tmp_path("flush/part-00008-000000.h5"), &err), 0);
    CU_ASSERT_EQUAL(cs.n, 0);
    CU_ASSERT_EQUAL(cs.offsets[0], 0);
    CU_ASSERT_PTR_NOT_NULL(cs.text);
    CU_ASSERT_PTR_NOT_NULL(cs.logprobs);
    h5_completions_free(&cs);
}

// Text cut inside a multibyte character is stored with U+FFFD in its place.
static void test_writer_sanitizes_text(void) {
    const char *dir = fresh_dir("utf8");
    sl_err err;
    h5_writer *w;
    CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w, dir, 0, 1, 0, &err), 0);
    Completion c = {.prompt_index = 0, .text = "ok \xe6\x97", .finish = FINISH_LENGTH};
    CU_ASSERT_EQUAL_FATAL(h5_writer_append(w, &c, &err), 0);
    Completion d = {.prompt_index = 1, .text = "日本", .finish = FINISH_STOP};
    CU_ASSERT_EQUAL_FATAL(h5_writer_append(w, &d, &err), 0);
    CU_ASSERT_EQUAL_FATAL(h5_writer_close(w, &err), 0);
    CompletionSet cs;
    CU_ASSERT_EQUAL_FATAL(h5_completions_read(&cs, tmp_path("utf8/part-00000-000000.h5"), &err), 0);
    CU_ASSERT_STRING_EQUAL(cs.text[0], "ok \xEF\xBF\xBD\xEF\xBF\xBD");
    CU_ASSERT_STRING_EQUAL(cs.text[1], "日本");
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_LENGTH);
    h5_completions_free(&cs);
}

static void test_writer_bad_appends(void) {
    const char *dir = fresh_dir("bad-append");
    sl_err err = {{0}};
    h5_writer *w;
    CU_ASSERT_EQUAL(h5_writer_open(&w, tmp_path("no-such-outdir"), 0, 0, 0, &err), -1);
    ASSERT_MSG(err, "no-such-outdir/part-00000-000000.h5", "cannot create");
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w, dir, 3, 0, 1, &err), 0);
    int32_t tok[2] = {1, 2};
    Completion c = {.prompt_index = 5, .tokens = tok, .n_tokens = -1};
    CU_ASSERT_EQUAL(h5_writer_append(w, &c, &err), -1);
    ASSERT_MSG(err, "part-00003-000000.h5", "prompt 5");
    c.n_tokens = 2;
    c.finish = (FinishReason)7;
    CU_ASSERT_EQUAL(h5_writer_append(w, &c, &err), -1);
    ASSERT_MSG(err, "part-00003-000000.h5", "finish=7");
    c.finish = FINISH_STOP;
    CU_ASSERT_EQUAL(h5_writer_append(w, &c, &err), -1); // no logprobs
    ASSERT_MSG(err, "part-00003-000000.h5", "'completion_logprobs'");
    CU_ASSERT_EQUAL(h5_writer_close(w, &err), 0);
}

// Writes one part file holding completions for the given prompt indices.
static void write_part(const char *dir, int part, const int64_t *idx, int n, int text) {
    h5_writer *w;
    sl_err err;
    CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w, dir, part, text, 0, &err), 0);
    for (int i = 0; i < n; i++) {
        int32_t tok[2] = {(int32_t)idx[i], 1};
        Completion c = {.prompt_index = idx[i], .tokens = tok, .n_tokens = 2, .text = "t"};
        CU_ASSERT_EQUAL_FATAL(h5_writer_append(w, &c, &err), 0);
    }
    CU_ASSERT_EQUAL_FATAL(h5_writer_close(w, &err), 0);
}

static void expect_merge_fail(const char *dir, int64_t n, const char *a, const char *b,
                              const char *c) {
    sl_err err = {{0}};
    CU_ASSERT_EQUAL(h5_merge_parts(dir, n, &err), -1);
    ASSERT_MSG(err, a, b, c);
    char path[600];
    snprintf(path, sizeof path, "%s/completions.h5", dir);
    CU_ASSERT_FALSE(file_exists(path));
    snprintf(path, sizeof path, "%s/completions.h5.tmp", dir);
    CU_ASSERT_FALSE(file_exists(path));
}

static void test_merge_errors(void) {
    // index 4 never written
    const char *d = fresh_dir("m-missing");
    write_part(d, 0, (int64_t[]){0, 2, 6}, 3, 0);
    write_part(d, 1, (int64_t[]){1, 3, 5, 7}, 4, 0);
    expect_merge_fail(d, 8, d, "prompt index 4 is missing", "(1 of 8 prompts missing)");

    // index 3 in parts 0 and 2 (and 5 too: the lowest is named)
    d = fresh_dir("m-dup");
    write_part(d, 0, (int64_t[]){0, 5, 3}, 3, 0);
    write_part(d, 1, (int64_t[]){1, 2}, 2, 0);
    write_part(d, 2, (int64_t[]){4, 5, 3}, 3, 0);
    expect_merge_fail(d, 6, "prompt index 3 appears twice", "part-00000-000000.h5", "part-00002-000000.h5");

    // twice in one part
    d = fresh_dir("m-dup1");
    write_part(d, 0, (int64_t[]){0, 1, 1}, 3, 0);
    expect_merge_fail(d, 2, "prompt index 1 appears twice in", "part-00000-000000.h5", "rows 1 and 2");

    // index outside [0, N)
    d = fresh_dir("m-range");
    write_part(d, 0, (int64_t[]){0, 1, 2}, 3, 0);
    expect_merge_fail(d, 2, "part-00000-000000.h5", "prompt_index 2 (row 2)", "outside [0, 2)");

    // text in one part only
    d = fresh_dir("m-text");
    write_part(d, 0, (int64_t[]){0}, 1, 1);
    write_part(d, 1, (int64_t[]){1}, 1, 0);
    expect_merge_fail(d, 2, "part-00000-000000.h5 has 'completion_text'", "but", "part-00001-000000.h5 does not");

    // nothing to merge
    d = fresh_dir("m-none");
    expect_merge_fail(d, 3, d, "no part-*.h5 files", "3");

    // a part that is not a completions file
    d = fresh_dir("m-foreign");
    write_part(d, 0, (int64_t[]){0}, 1, 0);
    PromptSet ps;
    make_prompts(&ps, 2, 0, 5);
    sl_err err;
    CU_ASSERT_EQUAL_FATAL(h5_prompts_write(tmp_path("m-foreign/part-00001.h5"), &ps, &err), 0);
    h5_prompts_free(&ps);
    expect_merge_fail(d, 2, "part-00001.h5", "'sluice_format'", "expected 'completions-v1'");
}

// N = 0: no parts needed, an empty completions.h5 results.
static void test_merge_empty(void) {
    const char *d = fresh_dir("m-empty");
    sl_err err = {{0}};
    CU_ASSERT_EQUAL_FATAL(h5_merge_parts(d, 0, &err), 0);
    CompletionSet cs;
    CU_ASSERT_EQUAL_FATAL(h5_completions_read(&cs, tmp_path("m-empty/completions.h5"), &err), 0);
    CU_ASSERT_EQUAL(cs.n, 0);
    CU_ASSERT_EQUAL(cs.offsets[0], 0);
    CU_ASSERT_PTR_NULL(cs.text);
    h5_completions_free(&cs);
}

// A prompts file is not a completions file; a file without the attribute
// neither; a damaged completions file is caught.
static void test_completions_read_errors(void) {
    CompletionSet cs;
    sl_err err = {{0}};
    const char *p = tmp_path("no-attr.h5");
    hid_t f = raw_create(p);
    raw_tokens(f);
    H5Fclose(f);
    CU_ASSERT_EQUAL(h5_completions_read(&cs, p, &err), -1);
    ASSERT_MSG(err, p, "attribute 'sluice_format' missing");

    const char *d = fresh_dir("damaged");
    write_part(d, 0, (int64_t[]){0, 1}, 2, 0);
    const char *part = tmp_path("damaged/part-00000-000000.h5");
    f = H5Fopen(part, H5F_ACC_RDWR, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    H5Ldelete(f, "latency_s", H5P_DEFAULT);
    H5Fclose(f);
    CU_ASSERT_EQUAL(h5_completions_read(&cs, part, &err), -1);
    ASSERT_MSG(err, part, "dataset 'latency_s' missing");

    // a negative prompt index and offsets that run backwards
    d = fresh_dir("damaged2");
    write_part(d, 0, (int64_t[]){0, 1, 2}, 3, 0);
    part = tmp_path("damaged2/part-00000-000000.h5");
    f = H5Fopen(part, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "prompt_index", H5P_DEFAULT);
    int64_t idx[3] = {0, -1, 2};
    CU_ASSERT_FATAL(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, idx) >= 0);
    H5Dclose(ds);
    H5Fclose(f);
    CU_ASSERT_EQUAL(h5_completions_read(&cs, part, &err), -1);
    ASSERT_MSG(err, part, "'prompt_index'[1]=-1 is negative");

    d = fresh_dir("damaged3");
    write_part(d, 0, (int64_t[]){0, 1, 2}, 3, 0);
    part = tmp_path("damaged3/part-00000-000000.h5");
    f = H5Fopen(part, H5F_ACC_RDWR, H5P_DEFAULT);
    ds = H5Dopen2(f, "completion_offsets", H5P_DEFAULT);
    int64_t off[4] = {0, 2, 1, 6}; // written: 0 2 4 6
    CU_ASSERT_FATAL(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off) >= 0);
    H5Dclose(ds);
    H5Fclose(f);
    CU_ASSERT_EQUAL(h5_completions_read(&cs, part, &err), -1);
    ASSERT_MSG(err, part, "'completion_offsets' is not monotonic at index 2 (offset 1 < 2)");
}

// 100k one-token completions: buffering keeps this well under a second
// (about 0.2 s here; writing each row on its own takes about 30 s). The
// bound leaves room for valgrind and sanitizers.
static void test_writer_many_small(void) {
    const char *dir = fresh_dir("many");
    sl_err err;
    h5_writer *w;
    const int64_t n = 100000;
    double t0 = sl_now();
    CU_ASSERT_EQUAL_FATAL(h5_writer_open(&w, dir, 0, 0, 0, &err), 0);
    for (int64_t i = 0; i < n; i++) {
        int32_t tok = (int32_t)(i * 7 % 1000);
        Completion c = {.prompt_index = n - 1 - i,
                        .tokens = &tok,
                        .n_tokens = 1,
                        .finish = FINISH_LENGTH,
                        .ttft_s = (float)i};
        CU_ASSERT_EQUAL_FATAL(h5_writer_append(w, &c, &err), 0);
    }
    CU_ASSERT_EQUAL_FATAL(h5_writer_close(w, &err), 0);
    double t1 = sl_now();
    CU_ASSERT_EQUAL_FATAL(h5_merge_parts(dir, n, &err), 0);
    double t2 = sl_now();
    fprintf(stderr, "  100k completions: write %.3f s, merge %.3f s\n", t1 - t0, t2 - t1);
    CU_ASSERT(t1 - t0 < 15.0);
    CompletionSet cs;
    CU_ASSERT_EQUAL_FATAL(h5_completions_read(&cs, tmp_path("many/completions.h5"), &err), 0);
    CU_ASSERT_EQUAL_FATAL(cs.n, n);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) { // prompt i was appended at position n-1-i
        int64_t k = n - 1 - i;
        bad += cs.prompt_index[i] != i || cs.tokens[i] != (int32_t)(k * 7 % 1000) ||
               cs.ttft_s[i] != (float)k || cs.offsets[i + 1] != i + 1;
    }
    CU_ASSERT_EQUAL(bad, 0);
    h5_completions_free(&cs);
}

// Every file, dataset, group and attribute the module opened was closed
// (HDF5 1.10 cannot count open dataspaces or transient types from outside).
static void test_no_open_objects(void) {
    ssize_t n = H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n != 0) fprintf(stderr, "  %zd HDF5 objects still open\n", n);
    CU_ASSERT_EQUAL(n, 0);
}

int main(void) {
    static const tu_test prompts[] = {
        {"roundtrip_full", test_roundtrip_full},
        {"roundtrip_minimal", test_roundtrip_minimal},
        {"roundtrip_n0", test_roundtrip_n0},
        {"roundtrip_n1", test_roundtrip_n1},
        {"roundtrip_strings", test_roundtrip_strings},
        {"h5py_variations", test_h5py_variations},
        {"spacepad_strings", test_spacepad_strings},
        {"missing_and_not_hdf5", test_missing_and_not_hdf5},
        {"missing_datasets", test_missing_datasets},
        {"bad_offsets", test_bad_offsets},
        {"bad_types_and_shapes", test_bad_types_and_shapes},
        {"bad_lengths_and_values", test_bad_lengths_and_values},
        {"errors_are_silent", test_errors_are_silent},
        {"write_failures", test_write_failures},
        {NULL, NULL},
    };
    static const tu_test completions[] = {
        {"finish_names", test_finish_names},
        {"writer_merge_text_logprobs", test_writer_merge_text_logprobs},
        {"writer_merge_plain", test_writer_merge_plain},
        {"writer_flush_and_empty", test_writer_flush_and_empty},
        {"writer_sanitizes_text", test_writer_sanitizes_text},
        {"writer_bad_appends", test_writer_bad_appends},
        {"merge_errors", test_merge_errors},
        {"merge_empty", test_merge_empty},
        {"completions_read_errors", test_completions_read_errors},
        {"writer_many_small", test_writer_many_small},
        {"no_open_objects", test_no_open_objects}, // last
        {NULL, NULL},
    };
    tu_suite("h5io_prompts", prompts);
    tu_suite("h5io_completions", completions);
    return tu_main();
}
