// test_safetensors.c: the safetensors reader (io/safetensors.c).
//
// Valid files are written byte by byte here (header JSON by hand, data from
// known bit patterns) and read back; the bundled 3-shard checkpoint
// tests/models/tiny-code-llama is checked against numbers computed independently in
// Python; and every malformed case the reader promises to catch is generated
// into tu_tmpdir() and must fail with -1 and a message naming the file and
// the tensor.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// helpers

// Writes a safetensors file: u64 LE `hlen_field`, the header bytes, the data.
// hlen_field is normally strlen(header); the malformed tests lie with it.
static void write_raw(const char *path, uint64_t hlen_field, const char *header,
                      const void *data, size_t n) {
    size_t hl = strlen(header);
    uint8_t *buf = malloc(8 + hl + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen_field >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (n) memcpy(buf + 8 + hl, data, n);
    CU_ASSERT_FATAL(tu_write_file(path, buf, 8 + hl + n) == 0);
    free(buf);
}

// A well-formed file; the header is padded with spaces to a multiple of 8
// bytes (as the reference writer does) unless `unaligned`.
static void write_st(const char *path, const char *header, const void *data, size_t n,
                     int unaligned) {
    char h[4096];
    snprintf(h, sizeof h, "%s", header);
    if (!unaligned)
        while ((8 + strlen(h)) % 8) strcat(h, " ");
    else if ((8 + strlen(h)) % 2 == 0)
        strcat(h, " "); // odd data start: 2-byte loads are misaligned
    write_raw(path, strlen(h), h, data, n);
}

static const char *tmp(const char *name) {
    static char slots[8][1024];
    static int k;
    char *p = slots[k++ & 7];
    snprintf(p, 1024, "%s/%s", tu_tmpdir(), name);
    return p;
}

static const char *mkdir_tmp(const char *name) {
    const char *p = tmp(name);
    mkdir(p, 0755);
    return p;
}

// rc must be -1 and err must contain every non-NULL needle.
static void check_err(int rc, const sl_err *e, const char *n1, const char *n2,
                      const char *n3) {
    CU_ASSERT_EQUAL(rc, -1);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++) {
        if (!needles[i]) continue;
        int ok = strstr(e->msg, needles[i]) != NULL;
        if (!ok) fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", e->msg, needles[i]);
        CU_ASSERT(ok);
    }
}

// Opening `path` as a single file must fail naming the file and the needles.
static void expect_bad_file(const char *path, const char *n1, const char *n2) {
    st_file *f = (st_file *)1;
    sl_err e = {{0}};
    int rc = st_open_file(&f, path, &e);
    check_err(rc, &e, path, n1, n2);
    CU_ASSERT_PTR_NULL(f);
}

// ----------------------------------------------------------------------------
// hand-written files

// Data layout (offsets into the data buffer):
//   [0, 24)   "w"   F32  [2, 3]
//   [24, 36)  "h"   F16  [6]
//   [36, 46)  "b"   BF16 [5]
//   [48, 60)  "i"   I32  [3]   (2 bytes of padding before it)
//   [60, 61)  "s"   U8   []    (a scalar)
//   [61, 61)  "e"   F32  [0, 4] (empty)
// The header lists them in a different order than the data so header order
// (what st_get follows) and data order are distinguishable.
static const char *k_header =
    "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"hand made\"},"
    " \"b\": {\"dtype\": \"BF16\", \"shape\": [5], \"data_offsets\": [36, 46]},"
    " \"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]},"
    " \"i\": {\"dtype\": \"I32\", \"shape\": [3], \"data_offsets\": [48, 60]},"
    " \"h\": {\"dtype\": \"F16\", \"shape\": [6], \"data_offsets\": [24, 36]},"
    " \"s\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [60, 61]},"
    " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 4], \"data_offsets\": [61, 61]}}";

static const float k_w[6] = {0.5f, -1.25f, 3.0e-3f, 1234.5f, -7.0f, 0.1f};
// f16 bit patterns (checked with numpy float16) and their exact values.
static const uint16_t k_h_bits[6] = {0x3E00, 0xC080, 0x0400, 0x7BFF, 0x0001, 0x8000};
static const float k_h[6] = {1.5f, -2.25f, 6.103515625e-05f, 65504.0f, 5.9604644775390625e-08f,
                             -0.0f};
// bf16 bit patterns: the top 16 bits of these f32 values.
static const uint16_t k_b_bits[5] = {0x3F80, 0xC060, 0x3E20, 0x7F7F, 0x0001};
static const float k_b[5] = {1.0f, -3.5f, 0.15625f, 3.3895313892515355e38f,
                             9.183549615799121e-41f};
static const int32_t k_i[3] = {-7, 123456789, 0x7fffffff};

static size_t make_data(uint8_t *d) {
    memset(d, 0xAB, 64);
    memcpy(d + 0, k_w, 24);
    for (int i = 0; i < 6; i++) memcpy(d + 24 + 2 * i, &k_h_bits[i], 2);
    for (int i = 0; i < 5; i++) memcpy(d + 36 + 2 * i, &k_b_bits[i], 2);
    memcpy(d + 48, k_i, 12);
    d[60] = 42;
    return 61;
}

static void check_hand_file(const st_file *f, const char *path) {
    CU_ASSERT_EQUAL_FATAL(st_count(f), 6);
    const char *order[6] = {"b", "w", "i", "h", "s", "e"};
    for (int i = 0; i < 6; i++) {
        const st_tensor *t = st_get(f, i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_STRING_EQUAL(t->name, order[i]);
        CU_ASSERT_STRING_EQUAL(t->file, path);
        CU_ASSERT_PTR_EQUAL(st_find(f, order[i]), t);
    }
    CU_ASSERT_PTR_NULL(st_get(f, 6));
    CU_ASSERT_PTR_NULL(st_get(f, -1));
    CU_ASSERT_PTR_NULL(st_find(f, "__metadata__"));
    CU_ASSERT_PTR_NULL(st_find(f, "x"));

    const st_tensor *w = st_find(f, "w");
    CU_ASSERT_EQUAL(w->dtype, ST_F32);
    CU_ASSERT_EQUAL(w->ndim, 2);
    CU_ASSERT_EQUAL(w->shape[0], 2);
    CU_ASSERT_EQUAL(w->shape[1], 3);
    CU_ASSERT_EQUAL(w->nbytes, 24);
    float got[6];
    st_to_f32(w, 0, 6, got);
    CU_ASSERT_EQUAL(memcmp(got, k_w, sizeof got), 0);
    st_to_f32(w, 4, 2, got);
    CU_ASSERT_EQUAL(got[0], k_w[4]);
    CU_ASSERT_EQUAL(got[1], k_w[5]);

    const st_tensor *h = st_find(f, "h");
    CU_ASSERT_EQUAL(h->dtype, ST_F16);
    CU_ASSERT_EQUAL(h->nbytes, 12);
    st_to_f32(h, 0, 6, got);
    for (int i = 0; i < 6; i++) CU_ASSERT_EQUAL(got[i], k_h[i]);
    CU_ASSERT(signbit(got[5])); // -0.0 keeps its sign
    st_to_f32(h, 3, 1, got);
    CU_ASSERT_EQUAL(got[0], 65504.0f);

    const st_tensor *b = st_find(f, "b");
    CU_ASSERT_EQUAL(b->dtype, ST_BF16);
    CU_ASSERT_EQUAL(b->ndim, 1);
    CU_ASSERT_EQUAL(b->shape[0], 5);
    st_to_f32(b, 0, 5, got);
    for (int i = 0; i < 5; i++) CU_ASSERT_EQUAL(got[i], k_b[i]);

    const st_tensor *it = st_find(f, "i");
    CU_ASSERT_EQUAL(it->dtype, ST_I32);
    CU_ASSERT_EQUAL(it->nbytes, 12);
    int32_t iv[3];
    memcpy(iv, it->data, 12);
    CU_ASSERT_EQUAL(iv[0], -7);
    CU_ASSERT_EQUAL(iv[1], 123456789);
    CU_ASSERT_EQUAL(iv[2], 0x7fffffff);

    const st_tensor *s = st_find(f, "s");
    CU_ASSERT_EQUAL(s->dtype, ST_U8);
    CU_ASSERT_EQUAL(s->ndim, 0);
    CU_ASSERT_EQUAL(s->nbytes, 1);
    CU_ASSERT_EQUAL(*(const uint8_t *)s->data, 42);

    const st_tensor *e = st_find(f, "e");
    CU_ASSERT_EQUAL(e->ndim, 2);
    CU_ASSERT_EQUAL(e->shape[0], 0);
    CU_ASSERT_EQUAL(e->nbytes, 0);

    // tensors are views into one mapping: addresses follow the offsets
    CU_ASSERT_EQUAL((const uint8_t *)h->data - (const uint8_t *)w->data, 24);
    CU_ASSERT_EQUAL((const uint8_t *)it->data - (const uint8_t *)w->data, 48);
}

static void test_hand_file(void) {
    uint8_t d[64];
    size_t n = make_data(d);
    const char *path = tmp("hand.safetensors");
    write_st(path, k_header, d, n, 0);
    st_file *f = NULL;
    sl_err e = {{0}};
    int rc = st_open_file(&f, path, &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_hand_file(f, path);
    st_close(f);
}

// Same data behind an odd-length header: the data buffer starts at an odd
// address, so F32/F16/BF16 loads are misaligned; st_to_f32 must not care.
static void test_unaligned_data(void) {
    uint8_t d[64];
    size_t n = make_data(d);
    const char *path = tmp("odd.safetensors");
    write_st(path, k_header, d, n, 1);
    st_file *f = NULL;
    sl_err e = {{0}};
    CU_ASSERT_EQUAL_FATAL(st_open_file(&f, path, &e), 0);
    CU_ASSERT((uintptr_t)st_find(f, "w")->data & 1);
    check_hand_file(f, path);
    st_close(f);
}

// A directory holding only model.safetensors.
static void test_single_file_dir(void) {
    uint8_t d[64];
    size_t n = make_data(d);
    const char *dir = mkdir_tmp("single");
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_st(path, k_header, d, n, 0);
    st_file *f = NULL;
    sl_err e = {{0}};
    int rc = st_open_dir(&f, dir, &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_hand_file(f, path);
    st_close(f);
    st_close(NULL); // no-op
}

static void test_dtype_table(void) {
    CU_ASSERT_STRING_EQUAL(st_dtype_name(ST_BF16), "BF16");
    CU_ASSERT_STRING_EQUAL(st_dtype_name(ST_F8_E4M3), "F8_E4M3");
    CU_ASSERT_STRING_EQUAL(st_dtype_name(ST_BOOL), "BOOL");
    CU_ASSERT_EQUAL(st_dtype_size(ST_F32), 4);
    CU_ASSERT_EQUAL(st_dtype_size(ST_BF16), 2);
    CU_ASSERT_EQUAL(st_dtype_size(ST_F64), 8);
    CU_ASSERT_EQUAL(st_dtype_size(ST_I64), 8);
    CU_ASSERT_EQUAL(st_dtype_size(ST_I8), 1);
    CU_ASSERT_EQUAL(st_dtype_size(ST_F8_E5M2), 1);
}

// Every dtype name the reader knows parses and gets the right size.
static void test_all_dtypes(void) {
    static const char *names[] = {"F32", "F16", "BF16", "F64", "I64", "I32",
                                  "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"};
    static const int sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1, 1, 1};
    char hdr[2048] = "{";
    uint64_t off = 0;
    for (int i = 0; i < 12; i++) {
        char ent[160];
        snprintf(ent, sizeof ent, "%s\"t%d\": {\"dtype\": \"%s\", \"shape\": [3], "
                 "\"data_offsets\": [%llu, %llu]}", i ? ", " : "", i, names[i],
                 (unsigned long long)off, (unsigned long long)(off + 3 * sizes[i]));
        strcat(hdr, ent);
        off += 3 * sizes[i];
    }
    strcat(hdr, "}");
    uint8_t d[256];
    for (int i = 0; i < 256; i++) d[i] = (uint8_t)i;
    const char *path = tmp("alldt.safetensors");
    write_st(path, hdr, d, off, 0);
    st_file *f = NULL;
    sl_err e = {{0}};
    int rc = st_open_file(&f, path, &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(st_count(f), 12);
    for (int i = 0; i < 12; i++) {
        const st_tensor *t = st_get(f, i);
        CU_ASSERT_STRING_EQUAL(st_dtype_name(t->dtype), names[i]);
        CU_ASSERT_EQUAL(st_dtype_size(t->dtype), sizes[i]);
        CU_ASSERT_EQUAL(t->nbytes, 3u * sizes[i]);
    }
    st_close(f);
}

// ----------------------------------------------------------------------------
// the bundled checkpoint: tests/models/tiny-code-llama (3 shards + index)
//
// Expected numbers were computed in Python (numpy 2.4) without this reader:
// the header parsed with json.loads, the BF16 bytes read with
// np.frombuffer(..., '<u2').astype(np.uint32) << 16 viewed as float32, sums
// in float64. 74 tensors: 16 + 35 + 23 in the three shards; all BF16.

#define CKPT "tests/models/tiny-code-llama"

static double sum_f32(const st_tensor *t) {
    int64_t n = (int64_t)(t->nbytes / st_dtype_size(t->dtype));
    float *buf = malloc(n * sizeof *buf);
    st_to_f32(t, 0, n, buf);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += buf[i];
    free(buf);
    return s;
}

static void test_real_checkpoint(void) {
    st_file *f = NULL;
    sl_err e = {{0}};
    int rc = st_open_dir(&f, tu_path(CKPT), &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(st_count(f), 74);
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        CU_ASSERT_PTR_EQUAL(st_find(f, t->name), t);
        CU_ASSERT_EQUAL(t->dtype, ST_BF16);
    }
    // header order, shards in sorted order
    CU_ASSERT_STRING_EQUAL(st_get(f, 0)->name, "model.embed_tokens.weight");
    CU_ASSERT_STRING_EQUAL(st_get(f, 16)->name, "model.layers.1.input_layernorm.weight");
    CU_ASSERT_STRING_EQUAL(st_get(f, 51)->name, "model.layers.5.input_layernorm.weight");
    CU_ASSERT_PTR_NULL(st_find(f, "lm_head.weight")); // tied embeddings

    const int64_t emb_shape[2] = {8192, 384};
    const st_tensor *t = NULL;
    rc = st_expect(f, "model.embed_tokens.weight", 2, emb_shape, &t, &e);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->dtype, ST_BF16);
    CU_ASSERT_EQUAL(t->nbytes, 8192ull * 384 * 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(t->file, "model-00001-of-00003.safetensors"));
    float v[4];
    st_to_f32(t, 0, 4, v);
    CU_ASSERT_EQUAL(v[0], -0.1806640625f);
    CU_ASSERT_EQUAL(v[1], 0.0517578125f);
    CU_ASSERT_EQUAL(v[2], 0.055908203125f);
    CU_ASSERT_EQUAL(v[3], 0.02978515625f);
    st_to_f32(t, 1 * 384 + 2, 1, v); // [1, 2]
    CU_ASSERT_EQUAL(v[0], -0.060302734375f);
    st_to_f32(t, 8192ll * 384 - 1, 1, v); // last element
    CU_ASSERT_EQUAL(v[0], 0.023193359375f);
    CU_ASSERT_DOUBLE_EQUAL(sum_f32(t), -757.9663165180827, 1e-6);

    const int64_t up_shape[2] = {1024, 384};
    CU_ASSERT_EQUAL_FATAL(st_expect(f, "model.layers.3.mlp.up_proj.weight", 2, up_shape, &t, &e), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(t->file, "model-00002-of-00003.safetensors"));
    st_to_f32(t, 0, 4, v);
    CU_ASSERT_EQUAL(v[0], -0.0810546875f);
    CU_ASSERT_EQUAL(v[3], -0.11474609375f);
    CU_ASSERT_DOUBLE_EQUAL(sum_f32(t), -83.2186283422634, 1e-6);

    const int64_t norm_shape[1] = {384};
    CU_ASSERT_EQUAL_FATAL(st_expect(f, "model.norm.weight", 1, norm_shape, &t, &e), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(t->file, "model-00003-of-00003.safetensors"));
    st_to_f32(t, 0, 2, v);
    CU_ASSERT_EQUAL(v[0], 2.921875f);
    CU_ASSERT_EQUAL(v[1], 2.765625f);
    CU_ASSERT_DOUBLE_EQUAL(sum_f32(t), 1086.4609375, 1e-9);

    t = st_find(f, "model.layers.7.self_attn.k_proj.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->shape[0], 128);
    CU_ASSERT_EQUAL(t->shape[1], 384);
    CU_ASSERT_DOUBLE_EQUAL(sum_f32(t), 11.096504122018814, 1e-6);

    // the index splits layer 1 across shards: gate_proj in 1, its norms in 2
    CU_ASSERT_PTR_NOT_NULL(strstr(st_find(f, "model.layers.1.mlp.gate_proj.weight")->file,
                                  "model-00001-of-00003"));
    CU_ASSERT_PTR_NOT_NULL(strstr(st_find(f, "model.layers.1.input_layernorm.weight")->file,
                                  "model-00002-of-00003"));
    st_close(f);
}

// One shard opened on its own.
static void test_real_shard(void) {
    st_file *f = NULL;
    sl_err e = {{0}};
    CU_ASSERT_EQUAL_FATAL(
        st_open_file(&f, tu_path(CKPT "/model-00002-of-00003.safetensors"), &e), 0);
    CU_ASSERT_EQUAL(st_count(f), 35);
    CU_ASSERT_PTR_NULL(st_find(f, "model.embed_tokens.weight"));
    CU_ASSERT_PTR_NOT_NULL(st_find(f, "model.layers.3.mlp.up_proj.weight"));
    st_close(f);
}

static void test_expect_errors(void) {
    st_file *f = NULL;
    sl_err e = {{0}};
    CU_ASSERT_EQUAL_FATAL(st_open_dir(&f, tu_path(CKPT), &e), 0);
    const st_tensor *t = (const st_tensor *)1;
    const int64_t bad[2] = {1024, 383};
    int rc = st_expect(f, "model.layers.3.mlp.up_proj.weight", 2, bad, &t, &e);
    check_err(rc, &e,
              "model-00002-of-00003.safetensors: tensor 'model.layers.3.mlp.up_proj.weight' "
              "has shape [1024, 384], expected [1024, 383]",
              NULL, NULL);
    CU_ASSERT_PTR_NULL(t);
    const int64_t flat[1] = {1024 * 384};
    rc = st_expect(f, "model.layers.3.mlp.up_proj.weight", 1, flat, NULL, &e);
    check_err(rc, &e, "has shape [1024, 384], expected [393216]", NULL, NULL);
    rc = st_expect(f, "lm_head.weight", 2, bad, NULL, &e);
    check_err(rc, &e, "tensor 'lm_head.weight' missing", CKPT, NULL);
    st_close(f);

    // a non-float tensor
    uint8_t d[64];
    size_t n = make_data(d);
    const char *path = tmp("expect.safetensors");
    write_st(path, k_header, d, n, 0);
    CU_ASSERT_EQUAL_FATAL(st_open_file(&f, path, &e), 0);
    const int64_t three[1] = {3};
    rc = st_expect(f, "i", 1, three, NULL, &e);
    check_err(rc, &e, path, "tensor 'i' has dtype I32", NULL);
    const int64_t w_shape[2] = {2, 3};
    CU_ASSERT_EQUAL(st_expect(f, "w", 2, w_shape, &t, &e), 0);
    CU_ASSERT_PTR_EQUAL(t, st_find(f, "w"));
    st_close(f);
}

// ----------------------------------------------------------------------------
// malformed single files

static void test_bad_sizes(void) {
    const char *p = tmp("missing.safetensors");
    expect_bad_file(p, "cannot open", NULL);

    p = tmp("empty.safetensors");
    CU_ASSERT_FATAL(tu_write_file(p, "", 0) == 0);
    expect_bad_file(p, "too small", NULL);

    p = tmp("five.safetensors");
    CU_ASSERT_FATAL(tu_write_file(p, "\x10\0\0\0\0", 5) == 0);
    expect_bad_file(p, "too small", NULL);

    // header length says 1000 but the file has 8 + 30 bytes
    p = tmp("hlen.safetensors");
    write_raw(p, 1000, "{\"x\": {\"dtype\": \"F32\"}}      ", NULL, 0);
    expect_bad_file(p, "header length 1000 runs past the end", NULL);

    // absurd length (what random bytes or a text file look like)
    p = tmp("absurd.safetensors");
    write_raw(p, 1ull << 40, "{}", NULL, 0);
    expect_bad_file(p, "absurd", NULL);
    p = tmp("text.safetensors");
    CU_ASSERT_FATAL(tu_write_file(p, "hello world, not a checkpoint", 29) == 0);
    expect_bad_file(p, "absurd", NULL);
}

static void test_bad_json(void) {
    const char *p = tmp("badjson.safetensors");
    write_st(p, "{\"x\": {\"dtype\": \"F32\",", NULL, 0, 0);
    expect_bad_file(p, "not valid JSON", NULL);

    p = tmp("array.safetensors");
    write_st(p, "[1, 2, 3]", NULL, 0, 0);
    expect_bad_file(p, "not a JSON object", NULL);

    // the same name twice in one header
    p = tmp("dupkey.safetensors");
    uint8_t d[16] = {0};
    write_st(p,
             "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
             d, 16, 0);
    expect_bad_file(p, "duplicate", NULL);

    p = tmp("meta.safetensors");
    write_st(p, "{\"__metadata__\": {\"format\": 3}}", NULL, 0, 0);
    expect_bad_file(p, "__metadata__", "format");
}

// One bad entry for tensor 'bad' next to a good one; the message must name
// the file, the tensor and what is wrong.
static void bad_entry(const char *fname, const char *entry, size_t data_len, const char *what) {
    char hdr[1024];
    snprintf(hdr, sizeof hdr,
             "{\"ok\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
             "\"bad\": %s}",
             entry);
    uint8_t d[256];
    for (int i = 0; i < 256; i++) d[i] = (uint8_t)(i * 7);
    const char *p = tmp(fname);
    write_st(p, hdr, d, data_len, 0);
    expect_bad_file(p, "'bad'", what);
}

static void test_bad_entries(void) {
    bad_entry("e1.safetensors", "{\"shape\": [2], \"data_offsets\": [8, 16]}", 16, "dtype");
    bad_entry("e2.safetensors", "{\"dtype\": \"F32\", \"data_offsets\": [8, 16]}", 16, "shape");
    bad_entry("e3.safetensors", "{\"dtype\": \"F32\", \"shape\": [2]}", 16, "data_offsets");
    bad_entry("e4.safetensors", "[1, 2]", 16, "not a JSON object");
    bad_entry("e5.safetensors", "{\"dtype\": 4, \"shape\": [2], \"data_offsets\": [8, 16]}", 16,
              "dtype is not a string");
    bad_entry("e6.safetensors", "{\"dtype\": \"F32\", \"shape\": 2, \"data_offsets\": [8, 16]}",
              16, "shape is not an array");
    bad_entry("e7.safetensors",
              "{\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [8, 16]}", 16,
              "shape[0] is not an integer");
    bad_entry("e8.safetensors",
              "{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, \"16\"]}", 16,
              "data_offsets");
    bad_entry("e9.safetensors", "{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8]}",
              16, "data_offsets");
    // unknown dtype
    bad_entry("dtype.safetensors",
              "{\"dtype\": \"U16\", \"shape\": [2], \"data_offsets\": [8, 12]}", 16,
              "unknown dtype 'U16'");
    // negative dim
    bad_entry("neg.safetensors",
              "{\"dtype\": \"F32\", \"shape\": [-2, -2], \"data_offsets\": [8, 24]}", 24,
              "negative");
    // begin > end
    bad_entry("rev.safetensors", "{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 8]}",
              16, "[16, 8]");
    // too many dims
    bad_entry("dims.safetensors",
              "{\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [8, 9]}", 16,
              "9 dims");
    // offsets outside the file (the data buffer is only 16 bytes)
    bad_entry("out.safetensors",
              "{\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}", 16,
              "header offsets outside the file");
    // shape x dtype disagrees with the byte range
    bad_entry("size.safetensors",
              "{\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [8, 24]}", 24,
              "needs 12 bytes but data_offsets [8, 24] span 16");
    // overlapping with 'ok' = [0, 8)
    bad_entry("overlap.safetensors",
              "{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}", 16, "overlap");
    // a shape whose byte count overflows 64 bits must not wrap to a small size
    bad_entry("huge.safetensors",
              "{\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
              "\"data_offsets\": [8, 8]}",
              16, "absurdly large");
}

// A valid file cut short: the last tensor runs past the end.
static void test_truncated(void) {
    uint8_t d[64];
    size_t n = make_data(d);
    const char *p = tmp("trunc.safetensors");
    write_st(p, k_header, d, 50, 0); // 61 bytes expected, 50 written
    expect_bad_file(p, "header offsets outside the file", "data buffer holds only 50 bytes");
    sl_err e = {{0}};
    st_file *f = NULL;
    st_open_file(&f, p, &e);
    // either 'i' [48,60) or 's' [60,61) is reported, whichever comes first in the header
    CU_ASSERT(strstr(e.msg, "'i'") != NULL);
    (void)n;
}

// Overlap found even when the overlapping pair is far apart in header order.
static void test_overlap_sorted(void) {
    uint8_t d[64] = {0};
    const char *p = tmp("overlap2.safetensors");
    write_st(p,
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [32, 48]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
             " \"c\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 24]},"
             " \"d\": {\"dtype\": \"F16\", \"shape\": [6], \"data_offsets\": [22, 34]}}",
             d, 48, 0);
    expect_bad_file(p, "'c' [16, 24) and 'd' [22, 34) overlap", NULL);
}

// ----------------------------------------------------------------------------
// malformed checkpoint directories

// Writes DIR/name as a small valid shard holding tensors names[0..n) of 4 F32 each.
static void write_shard(const char *dir, const char *name, const char **names, int n) {
    char hdr[2048] = "{";
    float d[64];
    for (int i = 0; i < n; i++) {
        char ent[200];
        snprintf(ent, sizeof ent,
                 "%s\"%s\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [%d, %d]}",
                 i ? ", " : "", names[i], 16 * i, 16 * i + 16);
        strcat(hdr, ent);
        for (int j = 0; j < 4; j++) d[4 * i + j] = (float)(10 * i + j) + 0.5f;
    }
    strcat(hdr, "}");
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_st(p, hdr, d, 16 * n, 0);
}

static void write_index(const char *dir, const char *weight_map_json) {
    char p[1024], text[4096];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": %s}\n",
             weight_map_json);
    CU_ASSERT_FATAL(tu_write_file(p, text, strlen(text)) == 0);
}

static void expect_bad_dir(const char *dir, const char *n1, const char *n2, const char *n3) {
    st_file *f = (st_file *)1;
    sl_err e = {{0}};
    int rc = st_open_dir(&f, dir, &e);
    check_err(rc, &e, n1, n2, n3);
    CU_ASSERT_PTR_NULL(f);
}

// A small valid sharded dir, as a baseline for the broken ones.
static void test_sharded_ok(void) {
    const char *dir = mkdir_tmp("sh_ok");
    const char *a[] = {"x", "y"}, *b[] = {"z"};
    write_shard(dir, "b.safetensors", b, 1);
    write_shard(dir, "a.safetensors", a, 2);
    write_index(dir, "{\"z\": \"b.safetensors\", \"x\": \"a.safetensors\", "
                     "\"y\": \"a.safetensors\"}");
    st_file *f = NULL;
    sl_err e = {{0}};
    int rc = st_open_dir(&f, dir, &e);
    if (rc) fprintf(stderr, "  %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(st_count(f), 3);
    // shards in sorted order regardless of index order
    CU_ASSERT_STRING_EQUAL(st_get(f, 0)->name, "x");
    CU_ASSERT_STRING_EQUAL(st_get(f, 2)->name, "z");
    float v[4];
    st_to_f32(st_find(f, "y"), 0, 4, v);
    CU_ASSERT_EQUAL(v[0], 10.5f);
    CU_ASSERT_EQUAL(v[3], 13.5f);
    st_to_f32(st_find(f, "z"), 1, 1, v);
    CU_ASSERT_EQUAL(v[0], 1.5f);
    CU_ASSERT_PTR_NOT_NULL(strstr(st_find(f, "z")->file, "b.safetensors"));
    st_close(f);
}

static void test_bad_dirs(void) {
    const char *nope = tmp("no_such_dir");
    expect_bad_dir(nope, nope, NULL, NULL);

    const char *empty = mkdir_tmp("emptydir");
    expect_bad_dir(empty, "no model.safetensors or model.safetensors.index.json in", empty,
                   NULL);

    // a file given as the directory
    const char *file = tmp("hand.safetensors");
    uint8_t d[64];
    write_st(file, k_header, d, make_data(d), 0);
    expect_bad_dir(file, file, "not a directory", NULL);

    // model.safetensors present but broken: the dir error names the file
    const char *bad1 = mkdir_tmp("bad_single");
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", bad1);
    CU_ASSERT_FATAL(tu_write_file(p, "", 0) == 0);
    expect_bad_dir(bad1, p, "too small", NULL);

    const char *a[] = {"x", "y"}, *b[] = {"z"}, *bx[] = {"z", "x"};

    // index names a shard that is not there
    const char *d1 = mkdir_tmp("sh_missing");
    write_shard(d1, "a.safetensors", a, 2);
    write_index(d1, "{\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
                    "\"z\": \"model-00002-of-00002.safetensors\"}");
    expect_bad_dir(d1, "model-00002-of-00002.safetensors", "cannot open", "index.json");

    // tensor listed in the index but absent from its shard
    const char *d2 = mkdir_tmp("sh_absent");
    write_shard(d2, "a.safetensors", a, 2);
    write_shard(d2, "b.safetensors", b, 1);
    write_index(d2, "{\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
                    "\"z\": \"b.safetensors\", \"w\": \"b.safetensors\"}");
    expect_bad_dir(d2, "'w'", "b.safetensors", "missing");

    // tensor listed under the wrong shard
    const char *d3 = mkdir_tmp("sh_wrong");
    write_shard(d3, "a.safetensors", a, 2);
    write_shard(d3, "b.safetensors", b, 1);
    write_index(d3, "{\"x\": \"a.safetensors\", \"y\": \"b.safetensors\", "
                    "\"z\": \"b.safetensors\"}");
    expect_bad_dir(d3, "'y'", "mapped to b.safetensors", "a.safetensors");

    // the same tensor in two shards
    const char *d4 = mkdir_tmp("sh_dup");
    write_shard(d4, "a.safetensors", a, 2);
    write_shard(d4, "b.safetensors", bx, 2);
    write_index(d4, "{\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
                    "\"z\": \"b.safetensors\"}");
    expect_bad_dir(d4, "'x' appears in both", "a.safetensors", "b.safetensors");

    // broken index files
    const char *d5 = mkdir_tmp("sh_badjson");
    write_shard(d5, "a.safetensors", a, 2);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d5);
    const char *txt = "{\"weight_map\": {\n\"x\": }";
    CU_ASSERT_FATAL(tu_write_file(p, txt, strlen(txt)) == 0);
    expect_bad_dir(d5, "model.safetensors.index.json", "not valid JSON", "line 2");

    const char *d6 = mkdir_tmp("sh_nomap");
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d6);
    txt = "{\"metadata\": {}}";
    CU_ASSERT_FATAL(tu_write_file(p, txt, strlen(txt)) == 0);
    expect_bad_dir(d6, "model.safetensors.index.json", "weight_map", NULL);

    const char *d7 = mkdir_tmp("sh_escape");
    write_index(d7, "{\"x\": \"../a.safetensors\"}");
    expect_bad_dir(d7, "'x'", "outside", NULL);

    const char *d8 = mkdir_tmp("sh_type");
    write_index(d8, "{\"x\": 3}");
    expect_bad_dir(d8, "weight_map['x']", NULL, NULL);

    // a shard with a broken tensor: message names shard and tensor
    const char *d9 = mkdir_tmp("sh_badshard");
    write_shard(d9, "a.safetensors", a, 2);
    snprintf(p, sizeof p, "%s/b.safetensors", d9);
    write_st(p, "{\"z\": {\"dtype\": \"Q4\", \"shape\": [4], \"data_offsets\": [0, 16]}}", d, 16,
             0);
    write_index(d9, "{\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
                    "\"z\": \"b.safetensors\"}");
    expect_bad_dir(d9, "b.safetensors", "'z'", "unknown dtype 'Q4'");
}

int main(void) {
    static const tu_test good[] = {
        {"hand-written F32/F16/BF16/I32/U8 file", test_hand_file},
        {"misaligned data buffer", test_unaligned_data},
        {"single-file directory", test_single_file_dir},
        {"dtype names and sizes", test_dtype_table},
        {"every dtype parses", test_all_dtypes},
        {"sharded dir (made here)", test_sharded_ok},
        {"tiny-code-llama: 3 shards + index", test_real_checkpoint},
        {"tiny-code-llama: one shard", test_real_shard},
        {"st_expect errors", test_expect_errors},
        {NULL, NULL},
    };
    static const tu_test bad[] = {
        {"missing/empty/short/absurd files", test_bad_sizes},
        {"header JSON", test_bad_json},
        {"bad tensor entries", test_bad_entries},
        {"truncated data", test_truncated},
        {"overlap after sorting", test_overlap_sorted},
        {"bad checkpoint directories", test_bad_dirs},
        {NULL, NULL},
    };
    tu_suite("safetensors", good);
    tu_suite("safetensors-malformed", bad);
    return tu_main();
}
