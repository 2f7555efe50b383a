// test_bad_input.c: the bad-input matrix of the `sluice` binary.
//
// One table row per bad input: a setup that breaks something in the row's own
// directory (a flag, a prompts file, a JSONL file, a checkpoint, config.json,
// tokenizer.json), the command line, the exit code it must give and the
// substrings its message must hold (the culprit: flag, file, dataset, tensor,
// field). Every row also asserts that the process did not crash and that a
// failed command left no output behind: no OUTDIR (so no completions.h5 or
// part-*.h5), no prep/export/bench output file and no .tmp beside it.
//
// A few rows hold inputs that docs/HDF5.md calls legal although they look
// odd (NaN and negative sentinels, a huge max_new_tokens, per-request values
// the engine rejects as error rows): those exit 0 and a verify function
// checks the completions.
//
// Fixtures are built here with the HDF5 C API and jansson from small
// descriptions in the table, and the models are copies of the small golden
// Llamas (tests/golden), so the whole matrix runs in seconds on two cores.
// The binary is $SLUICE_BIN (default build/sluice); SLUICE_TEST_VERBOSE=1
// prints every command and its output.
#include <glob.h>
#include <hdf5.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5io.h"
#include "testutil.h"

static char g_out[1 << 16];

static const char *bin(void) {
    const char *b = getenv("SLUICE_BIN");
    return b ? b : "build/sluice";
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// "dir/name" in one of 16 rotating static buffers.
static const char *join(const char *dir, const char *name) {
    static char slots[16][1024];
    static int k;
    char *p = slots[k++ & 15];
    snprintf(p, 1024, "%.800s/%.200s", dir, name); // test paths are far shorter
    return p;
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "  setup command failed (%d): %s\n", rc, cmd);
    CU_ASSERT_FATAL(rc == 0);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    CU_ASSERT_FATAL(f != NULL);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    CU_ASSERT_FATAL(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

// ----------------------------------------------------------------------------
// fixtures: HDF5 prompts files from a one-line description
//
// "name:type[@shape][:v1,v2,...];name:..." written to DIR/p.h5. Types: i8 i32
// i64 u64 f32 f64 (values parsed with strtoll/strtoull/strtod, so nan and inf
// work), str (fixed-length, 8 bytes), vstr (variable-length UTF-8, bytes as
// given: invalid UTF-8 stays invalid), group (an HDF5 group, not a dataset).
// Shape: 1-D of the value count unless @RxC (2-D) or @scalar.

static void h5_dataset(hid_t f, char *spec) {
    char *name = spec, *type = strchr(spec, ':');
    CU_ASSERT_FATAL(type != NULL);
    *type++ = 0;
    char *vals = strchr(type, ':');
    if (vals) *vals++ = 0;
    else vals = "";
    if (!strcmp(type, "group")) {
        hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        CU_ASSERT_FATAL(g >= 0);
        H5Gclose(g);
        return;
    }
    char *shape = strchr(type, '@');
    if (shape) *shape++ = 0;
    // split the values
    char *items[64];
    int n = 0;
    for (char *s = vals, *save = NULL, *t; *vals && (t = strtok_r(s, ",", &save)); s = NULL) {
        CU_ASSERT_FATAL(n < 64);
        items[n++] = t;
    }
    hid_t mt, ft_owned = -1;
    size_t esz;
    if (!strcmp(type, "i8")) mt = H5T_NATIVE_INT8, esz = 1;
    else if (!strcmp(type, "i32")) mt = H5T_NATIVE_INT32, esz = 4;
    else if (!strcmp(type, "i64")) mt = H5T_NATIVE_INT64, esz = 8;
    else if (!strcmp(type, "u64")) mt = H5T_NATIVE_UINT64, esz = 8;
    else if (!strcmp(type, "f32")) mt = H5T_NATIVE_FLOAT, esz = 4;
    else if (!strcmp(type, "f64")) mt = H5T_NATIVE_DOUBLE, esz = 8;
    else if (!strcmp(type, "str")) {
        ft_owned = mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, 8);
        H5Tset_strpad(mt, H5T_STR_NULLPAD);
        esz = 8;
    } else if (!strcmp(type, "vstr")) {
        ft_owned = mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5T_CSET_UTF8);
        esz = sizeof(char *);
    } else {
        fprintf(stderr, "bad fixture type '%s'\n", type);
        CU_FAIL_FATAL("fixture type");
        return;
    }
    unsigned char *buf = calloc((size_t)(n ? n : 1), esz);
    for (int i = 0; i < n; i++) {
        void *p = buf + (size_t)i * esz;
        if (!strcmp(type, "i8")) *(int8_t *)p = (int8_t)strtoll(items[i], NULL, 10);
        else if (!strcmp(type, "i32")) *(int32_t *)p = (int32_t)strtoll(items[i], NULL, 10);
        else if (!strcmp(type, "i64")) *(int64_t *)p = strtoll(items[i], NULL, 10);
        else if (!strcmp(type, "u64")) *(uint64_t *)p = strtoull(items[i], NULL, 10);
        else if (!strcmp(type, "f32")) *(float *)p = strtof(items[i], NULL);
        else if (!strcmp(type, "f64")) *(double *)p = strtod(items[i], NULL);
        else if (!strcmp(type, "str")) strncpy(p, items[i], 8);
        else *(char **)p = items[i];
    }
    hid_t sp;
    if (shape && !strcmp(shape, "scalar")) {
        sp = H5Screate(H5S_SCALAR);
    } else if (shape) {
        hsize_t dims[2];
        CU_ASSERT_FATAL(sscanf(shape, "%llux%llu", (unsigned long long *)&dims[0],
                               (unsigned long long *)&dims[1]) == 2);
        CU_ASSERT_FATAL(dims[0] * dims[1] == (hsize_t)n);
        sp = H5Screate_simple(2, dims, NULL);
    } else {
        hsize_t d = (hsize_t)n;
        sp = H5Screate_simple(1, &d, NULL);
    }
    hid_t ds = H5Dcreate2(f, name, mt, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(ds >= 0);
    if (n) CU_ASSERT_FATAL(H5Dwrite(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Dclose(ds);
    H5Sclose(sp);
    if (ft_owned >= 0) H5Tclose(ft_owned);
    free(buf);
}

static void mk_h5(const char *dir, const char *spec) {
    hid_t f = H5Fcreate(join(dir, "p.h5"), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    char *copy = strdup(spec), *save = NULL;
    for (char *s = copy, *t; (t = strtok_r(s, ";", &save)); s = NULL) h5_dataset(f, t);
    free(copy);
    H5Fclose(f);
}

// A prompts file with an optional dataset added: "tokens-only base;extra".
#define H5_OK "prompt_tokens:i32:5,6,7;prompt_offsets:i64:0,3"
#define H5_OK2 "prompt_tokens:i32:5,6,7,5,6,7;prompt_offsets:i64:0,3,6"

// ----------------------------------------------------------------------------
// fixtures: files and broken model directories

// "name|content": writes content to DIR/name.
static void mk_file(const char *dir, const char *arg) {
    const char *bar = strchr(arg, '|');
    CU_ASSERT_FATAL(bar != NULL);
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(bar - arg), arg);
    CU_ASSERT_FATAL(tu_write_file(join(dir, name), bar + 1, strlen(bar + 1)) == 0);
}

// A JSONL file whose second line holds a raw NUL byte.
static void mk_nul_jsonl(const char *dir, const char *arg) {
    static const char text[] = "{\"prompt\": \"ok\"}\n{\"prompt\": \"a\0b\"}\n";
    CU_ASSERT_FATAL(tu_write_file(join(dir, "in.jsonl"), text, sizeof text - 1) == 0);
}

static void mk_dir(const char *dir, const char *arg) { sh("mkdir -p '%s/%s'", dir, arg); }

// Sets (or, with value NULL, deletes) the member at a '/'-separated path;
// numeric segments index arrays.
static void json_set_path(json_t *root, const char *path, json_t *value) {
    char *copy = strdup(path), *save = NULL, *seg = strtok_r(copy, "/", &save);
    json_t *cur = root;
    for (char *next; seg; seg = next) {
        next = strtok_r(NULL, "/", &save);
        int is_idx = json_is_array(cur);
        size_t idx = is_idx ? strtoul(seg, NULL, 10) : 0;
        if (!next) {
            int rc;
            if (is_idx)
                rc = value ? json_array_set_new(cur, idx, value) : json_array_remove(cur, idx);
            else
                rc = value ? json_object_set_new(cur, seg, value) : json_object_del(cur, seg);
            if (rc) fprintf(stderr, "fixture path '%s': cannot set '%s'\n", path, seg);
            CU_ASSERT_FATAL(rc == 0);
            break;
        }
        cur = is_idx ? json_array_get(cur, idx) : json_object_get(cur, seg);
        if (!cur) fprintf(stderr, "fixture path '%s': no '%s'\n", path, seg);
        CU_ASSERT_FATAL(cur != NULL);
    }
    free(copy);
}

// Applies one "path=json" edit ("path=" deletes) to a JSON document.
static void json_edit(json_t *root, const char *edit) {
    const char *eq = strchr(edit, '=');
    CU_ASSERT_FATAL(eq != NULL);
    char path[512];
    snprintf(path, sizeof path, "%.*s", (int)(eq - edit), edit);
    json_t *v = NULL;
    if (eq[1]) {
        json_error_t je;
        v = json_loads(eq + 1, JSON_DECODE_ANY, &je);
        if (!v) fprintf(stderr, "fixture value '%s': %s\n", eq + 1, je.text);
        CU_ASSERT_FATAL(v != NULL);
    }
    json_set_path(root, path, v);
}

// Edits the JSON header of a safetensors file in place (the data is kept; its
// offsets are relative to the data, so the header may change length).
static void st_edit_header(const char *path, const char *edit) {
    size_t len;
    char *buf = slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)buf[i];
    json_error_t je;
    json_t *h = json_loadb(buf + 8, hlen, 0, &je);
    CU_ASSERT_FATAL(h != NULL);
    json_edit(h, edit);
    char *nh = json_dumps(h, JSON_COMPACT);
    uint64_t nl = strlen(nh);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(nl >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(nh, 1, nl, f);
    fwrite(buf + 8 + hlen, 1, len - 8 - hlen, f);
    CU_ASSERT_FATAL(fclose(f) == 0);
    free(nh);
    json_decref(h);
    free(buf);
}

// One edit of file `path`: "!truncate=N", "!write=TEXT", "!rm", "!hlen-past-end"
// (the 8-byte header length claims 100 bytes more than the file holds),
// "!garbage-header" (the header JSON's first byte becomes '#'), or a JSON
// "path=value" edit of a .json file or of a .safetensors header.
static void file_edit(const char *path, const char *edit) {
    if (!strncmp(edit, "!truncate=", 10)) {
        CU_ASSERT_FATAL(truncate(path, atol(edit + 10)) == 0);
    } else if (!strncmp(edit, "!write=", 7)) {
        CU_ASSERT_FATAL(tu_write_file(path, edit + 7, strlen(edit + 7)) == 0);
    } else if (!strcmp(edit, "!rm")) {
        CU_ASSERT_FATAL(unlink(path) == 0);
    } else if (!strcmp(edit, "!hlen-past-end") || !strcmp(edit, "!garbage-header")) {
        size_t len;
        char *buf = slurp(path, &len);
        if (edit[1] == 'h') {
            uint64_t v = len - 8 + 100;
            for (int i = 0; i < 8; i++) buf[i] = (char)(v >> (8 * i));
        } else {
            buf[8] = '#';
        }
        CU_ASSERT_FATAL(tu_write_file(path, buf, len) == 0);
        free(buf);
    } else if (strstr(path, ".safetensors") && !strstr(path, ".json")) {
        st_edit_header(path, edit);
    } else {
        json_error_t je;
        json_t *j = json_load_file(path, 0, &je);
        if (!j) fprintf(stderr, "fixture %s: %s\n", path, je.text);
        CU_ASSERT_FATAL(j != NULL);
        json_edit(j, edit);
        CU_ASSERT_FATAL(json_dump_file(j, path, JSON_INDENT(1)) == 0);
        json_decref(j);
    }
}

// "FIXTURE|FILE|EDIT\nEDIT...": copies a model fixture to DIR/m, then edits
// DIR/m/FILE. FIXTURE: gqa2, mha, mqa (tests/golden/llama-*; mqa is sharded)
// or tok (an empty directory). Editing a tokenizer.json that is not there
// first copies the demo model's.
static void mk_model(const char *dir, const char *arg) {
    char a[2048];
    snprintf(a, sizeof a, "%s", arg);
    char *file = strchr(a, '|'), *edits = NULL;
    if (file) {
        *file++ = 0;
        edits = strchr(file, '|');
        if (edits) *edits++ = 0;
    }
    const char *src = !strcmp(a, "gqa2") ? "tests/golden/llama-gqa2-bf16"
                      : !strcmp(a, "mha") ? "tests/golden/llama-mha-f32"
                      : !strcmp(a, "mqa") ? "tests/golden/llama-mqa-hd18-bf16"
                                          : NULL;
    const char *m = join(dir, "m");
    if (src) sh("cp -r '%s' '%s' && chmod -R u+w '%s'", tu_path(src), m, m);
    else sh("mkdir -p '%s'", m);
    if (!file) return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", m, file);
    if (!exists(path) && !strcmp(file, "tokenizer.json"))
        sh("cp '%s' '%s'", tu_path("tests/models/tiny-code-llama/tokenizer.json"), path);
    for (char *save = NULL, *e = strtok_r(edits, "\n", &save); e; e = strtok_r(NULL, "\n", &save))
        file_edit(path, e);
}

// mk_model, plus DIR/p.h5 holding text prompts only.
static void mk_model_text(const char *dir, const char *arg) {
    mk_model(dir, arg);
    mk_h5(dir, "prompt_text:vstr:hello,world");
}

// A finished job in DIR/job (the two prompts of good2.h5, the gqa2 model) and
// DIR/one.h5, a prompts file of one prompt with a request id: not that job's.
static void mk_job(const char *dir, const char *arg) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s run --backend cpu --progress 0 --quiet --max-new-tokens 2 --model %s "
             "--input %s --output %s/job",
             bin(), tu_path("tests/golden/llama-gqa2-bf16"), join(tu_tmpdir(), "good2.h5"), dir);
    int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
    if (rc) fprintf(stderr, "mk_job: %s\n", g_out);
    CU_ASSERT_FATAL(rc == 0);
    mk_h5(dir, H5_OK ";request_id:vstr:only");
    CU_ASSERT_FATAL(rename(join(dir, "p.h5"), join(dir, "one.h5")) == 0);
    (void)arg;
}

// ----------------------------------------------------------------------------
// checks of the exit-0 rows: the completions in DIR/out

static void read_out(const char *dir, CompletionSet *cs) {
    sl_err err = {{0}};
    int rc = h5_completions_read(cs, join(dir, "out/completions.h5"), &err);
    if (rc) fprintf(stderr, "  h5_completions_read: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
}

static int64_t row_len(const CompletionSet *cs, int64_t i) {
    return cs->offsets[i + 1] - cs->offsets[i];
}

// NaN temperature / top_p are "unset": row 0 (NaN) is greedy like row 1
// (explicit 0 and 1) on the same prompt.
static void v_nan_is_unset(const char *dir) {
    CompletionSet cs;
    read_out(dir, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 2);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_LENGTH);
    CU_ASSERT_EQUAL(cs.finish[1], FINISH_LENGTH);
    CU_ASSERT_EQUAL_FATAL(row_len(&cs, 0), 4);
    CU_ASSERT_EQUAL_FATAL(row_len(&cs, 1), 4);
    CU_ASSERT(memcmp(cs.tokens, cs.tokens + 4, 4 * sizeof(int32_t)) == 0);
    h5_completions_free(&cs);
}

// max_new_tokens -1 and -5 mean "the flag's default" (2); 3 is the row's own.
static void v_max_new_sentinels(const char *dir) {
    CompletionSet cs;
    read_out(dir, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 3);
    CU_ASSERT_EQUAL(row_len(&cs, 0), 2);
    CU_ASSERT_EQUAL(row_len(&cs, 1), 2);
    CU_ASSERT_EQUAL(row_len(&cs, 2), 3);
    for (int i = 0; i < 3; i++) CU_ASSERT_EQUAL(cs.finish[i], FINISH_LENGTH);
    h5_completions_free(&cs);
}

// 2^31-1 new tokens: capped by the context (--max-seq-len 8, 3-token prompt).
static void v_max_new_huge(const char *dir) {
    CompletionSet cs;
    read_out(dir, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 1);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_LENGTH);
    CU_ASSERT_EQUAL(row_len(&cs, 0), 8 - 3);
    h5_completions_free(&cs);
}

// Row 0 is an error row whose reason names the field; row 1 completes.
static void check_error_row(const char *dir, const char *field) {
    CompletionSet cs;
    read_out(dir, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 2);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_ERROR);
    CU_ASSERT_EQUAL(row_len(&cs, 0), 0);
    CU_ASSERT(cs.error[0] && strstr(cs.error[0], field) != NULL);
    if (!cs.error[0] || !strstr(cs.error[0], field))
        fprintf(stderr, "  error row: '%s' lacks '%s'\n", cs.error[0] ? cs.error[0] : "", field);
    CU_ASSERT_EQUAL(cs.finish[1], FINISH_LENGTH);
    CU_ASSERT_EQUAL(row_len(&cs, 1), 1);
    h5_completions_free(&cs);
}
static void v_err_top_p(const char *dir) { check_error_row(dir, "top_p must be in (0, 1]"); }
static void v_err_temp(const char *dir) { check_error_row(dir, "temperature must be >= 0"); }
static void v_err_max_new(const char *dir) { check_error_row(dir, "max_new_tokens must be >= 1"); }
static void v_err_vocab(const char *dir) { check_error_row(dir, "outside the vocabulary"); }

// One completion of the good prompt, and no completion_text.
static void v_no_text(const char *dir) {
    CompletionSet cs;
    read_out(dir, &cs);
    CU_ASSERT_EQUAL_FATAL(cs.n, 1);
    CU_ASSERT_EQUAL(cs.finish[0], FINISH_LENGTH);
    CU_ASSERT_EQUAL(row_len(&cs, 0), 1);
    CU_ASSERT_PTR_NULL(cs.text);
    h5_completions_free(&cs);
}

// ----------------------------------------------------------------------------
// the table

typedef struct {
    const char *name;
    void (*setup)(const char *dir, const char *arg); // makes the row's files (or NULL)
    const char *arg;                                  // the setup's argument
    // sluice's arguments; expanded: {D} the row's directory, {O} {D}/out,
    // {P} a good prompts file, {J} a good JSONL file, {G} the gqa2 golden
    // model, {M} the demo model, {T} the demo model's tokenizer.json
    const char *cmd;
    int rc;                 // the exit code it must give
    const char *want[3];    // substrings the output must hold
    void (*verify)(const char *dir); // exit-0 rows: checks DIR/out
} BadCase;

#define RUN "run --backend cpu --progress 0 --max-new-tokens 1 --output {O} "
#define RUN_G RUN "--model {G} "
#define RUN_GP RUN_G "--input {P} "
#define RUN_GH RUN_G "--input {D}/p.h5 "
#define RUN_MP RUN "--input {P} --model {D}/m "
#define PREP "prep --output {D}/out.h5 "
#define PREP_J PREP "--tokenizer {T} --input {D}/in.jsonl "
#define PREP_TOK PREP "--tokenizer {D}/m/tokenizer.json --input {J} "
#define JSONL_OK "in.jsonl|{\"prompt\": \"hello\"}\n"
#define BENCH_G "bench --backend cpu --requests 1 --isl 4 --osl 1 --model {G} "

// Rows leave out the trailing fields they do not use (verify, unused want slots).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const BadCase g_cases[] = {
    // --- sluice run: flags --------------------------------------------------
    {"run: no --model", NULL, NULL, "run --input {P} --output {O}", 2,
     {"--model, --input and --output are required"}},
    {"run: no --output", NULL, NULL, "run --model {G} --input {P}", 2,
     {"--model, --input and --output are required"}},
    {"run: unknown flag", NULL, NULL, RUN_GP "--frobnicate", 2, {"--frobnicate"}},
    {"run: flag without its value", NULL, NULL, RUN_GP "--max-batch", 2, {"--max-batch"}},
    {"run: stray argument", NULL, NULL, RUN_GP "extra.h5", 2, {"unexpected argument 'extra.h5'"}},
    {"run: --max-new-tokens 0", NULL, NULL, RUN_GP "--max-new-tokens 0", 2,
     {"--max-new-tokens", "outside"}},
    {"run: --max-new-tokens -5", NULL, NULL, RUN_GP "--max-new-tokens -5", 2,
     {"--max-new-tokens", "outside"}},
    {"run: --max-new-tokens 2^31-1", NULL, NULL, RUN_GP "--max-new-tokens 2147483647", 2,
     {"--max-new-tokens", "outside"}},
    {"run: --max-new-tokens ten", NULL, NULL, RUN_GP "--max-new-tokens ten", 2,
     {"--max-new-tokens", "'ten' is not an integer"}},
    {"run: --max-new-tokens 5x", NULL, NULL, RUN_GP "--max-new-tokens 5x", 2,
     {"--max-new-tokens", "not an integer"}},
    {"run: --max-batch ''", NULL, NULL, RUN_GP "--max-batch ''", 2,
     {"--max-batch", "not an integer"}},
    {"run: --temperature nan", NULL, NULL, RUN_GP "--temperature nan", 2,
     {"--temperature", "not a finite number"}},
    {"run: --temperature inf", NULL, NULL, RUN_GP "--temperature inf", 2,
     {"--temperature", "not a finite number"}},
    {"run: --temperature -0.5", NULL, NULL, RUN_GP "--temperature -0.5", 2,
     {"--temperature", "outside"}},
    {"run: --top-p 0", NULL, NULL, RUN_GP "--top-p 0", 2, {"--top-p", "outside"}},
    {"run: --top-p NaN", NULL, NULL, RUN_GP "--top-p NaN", 2, {"--top-p", "not a finite"}},
    {"run: --min-p -0.1", NULL, NULL, RUN_GP "--min-p -0.1", 2, {"--min-p", "outside"}},
    {"run: --top-k -1", NULL, NULL, RUN_GP "--top-k -1", 2, {"--top-k", "outside"}},
    {"run: --repetition-penalty 0", NULL, NULL, RUN_GP "--repetition-penalty 0", 2,
     {"--repetition-penalty", "outside"}},
    {"run: --seed -1", NULL, NULL, RUN_GP "--seed -1", 2, {"--seed", "outside"}},
    {"run: --seed 2^70", NULL, NULL, RUN_GP "--seed 1180591620717411303424", 2,
     {"--seed", "not an integer"}},
    {"run: --kv-block-size 48", NULL, NULL, RUN_GP "--kv-block-size 48", 2,
     {"--kv-block-size", "48 is not a power of two"}},
    {"run: --kv-block-size 0", NULL, NULL, RUN_GP "--kv-block-size 0", 2,
     {"--kv-block-size", "outside"}},
    {"run: --kv-blocks 0", NULL, NULL, RUN_GP "--kv-blocks 0", 2, {"--kv-blocks", "outside"}},
    {"run: --kv-fraction 1.5", NULL, NULL, RUN_GP "--kv-fraction 1.5", 2,
     {"--kv-fraction", "outside"}},
    {"run: --kv-mem-gb 0", NULL, NULL, RUN_GP "--kv-mem-gb 0", 2, {"--kv-mem-gb", "outside"}},
    {"run: --max-seq-len 1", NULL, NULL, RUN_GP "--max-seq-len 1", 2,
     {"--max-seq-len", "outside"}},
    {"run: --threads 0", NULL, NULL, RUN_GP "--threads 0", 2, {"--threads", "outside"}},
    {"run: --checkpoint -1", NULL, NULL, RUN_GP "--checkpoint -1", 2,
     {"--checkpoint", "outside"}},
    {"run: --sched fifo", NULL, NULL, RUN_GP "--sched fifo", 2, {"--sched", "'fifo'"}},
    {"run: --backend tpu", NULL, NULL, RUN_GP "--backend tpu", 2, {"--backend", "'tpu'"}},
    {"run: --tp 0", NULL, NULL, RUN_GP "--tp 0", 2, {"--tp", "outside"}},
    {"run: --tp 2 on one rank", NULL, NULL, RUN_GP "--tp 2", 2,
     {"--tp 2 does not divide the 1 ranks"}},
    {"run: --stop-token-ids 1,x", NULL, NULL, RUN_GP "--stop-token-ids 1,x", 2,
     {"--stop-token-ids", "'x' is not an integer"}},
    {"run: --stop-token-ids -3", NULL, NULL, RUN_GP "--stop-token-ids -3", 2,
     {"--stop-token-ids", "outside"}},
    {"run: --output is a file", NULL, NULL, RUN_G "--input {P} --output {P}", 1,
     {"good.h5", "not a directory"}},
    {"run: --output under a file", NULL, NULL, RUN_G "--input {P} --output {P}/sub", 1,
     {"good.h5", "exists and is not a directory"}},
    {"sluice: no command", NULL, NULL, "", 2, {"usage: sluice <command>"}},
    {"sluice: unknown command", NULL, NULL, "runn --model {G}", 2,
     {"unknown command 'runn'"}},

    // --- sluice prep / export / bench: flags -----------------------------------
    {"prep: no --output", mk_file, JSONL_OK, "prep --tokenizer {T} --input {D}/in.jsonl", 2,
     {"--input and --output are required"}},
    {"prep: no tokenizer", mk_file, JSONL_OK, PREP "--input {D}/in.jsonl", 2,
     {"--tokenizer PATH or --model DIR"}},
    {"prep: --tokenizer and --model", mk_file, JSONL_OK, PREP_J "--model {M}", 2,
     {"--tokenizer or --model, not both"}},
    {"prep: --format csv", mk_file, JSONL_OK, PREP_J "--format csv", 2,
     {"--format", "'csv'"}},
    {"prep: --add-bos --no-add-bos", mk_file, JSONL_OK, PREP_J "--add-bos --no-add-bos", 2,
     {"--add-bos and --no-add-bos"}},
    {"prep: --threads -2", mk_file, JSONL_OK, PREP_J "--threads -2", 2,
     {"--threads", "outside"}},
    {"prep: unknown flag", mk_file, JSONL_OK, PREP_J "--lowercase", 2, {"--lowercase"}},
    {"prep: stray argument", mk_file, JSONL_OK, PREP_J "more.jsonl", 2,
     {"unexpected argument 'more.jsonl'"}},
    {"prep: input missing", NULL, NULL, PREP "--tokenizer {T} --input {D}/nope.jsonl", 1,
     {"nope.jsonl", "cannot open"}},
    {"prep: tokenizer missing", mk_file, JSONL_OK,
     PREP "--tokenizer {D}/none.json --input {D}/in.jsonl", 1, {"none.json"}},
    {"prep: model dir without tokenizer.json", mk_file, JSONL_OK,
     PREP "--model {G} --input {D}/in.jsonl", 1, {"llama-gqa2-bf16/tokenizer.json"}},
    {"prep: output directory missing", mk_file, JSONL_OK,
     "prep --tokenizer {T} --input {D}/in.jsonl --output {D}/nodir/out.h5", 1,
     {"nodir/out.h5"}},
    {"export: no OUTDIR", NULL, NULL, "export", 2, {"usage: sluice export"}},
    {"export: two OUTDIRs", NULL, NULL, "export {D} {D}", 2, {"usage: sluice export"}},
    {"export: --limit -1", NULL, NULL, "export {D} --limit -1", 2, {"--limit", "outside"}},
    {"export: unknown flag", NULL, NULL, "export {D} --pretty", 2, {"--pretty"}},
    {"export: OUTDIR without completions", NULL, NULL, "export {D} --output {D}/out.jsonl", 1,
     {"completions.h5", "cannot open"}},
    {"export: completions.h5 not HDF5", mk_file, "completions.h5|{}",
     "export {D} --output {D}/out.jsonl", 1, {"completions.h5", "not an HDF5 file"}},
    {"export: a prompts file as completions", mk_h5, H5_OK,
     "export {D}/p.h5 --output {D}/out.jsonl", 1, {"p.h5", "sluice_format"}},
    {"export: --prompts without text or ids", mk_job, NULL,
     "export {D}/job --prompts {P} --output {D}/out.jsonl", 1,
     {"good.h5", "neither 'prompt_text' nor 'request_id'"}},
    {"export: --prompts of another job", mk_job, NULL,
     "export {D}/job --prompts {D}/one.h5 --output {D}/out.jsonl", 1,
     {"answers prompt 1 but", "one.h5 holds 1 prompts"}},
    {"export: --output directory missing", mk_job, NULL,
     "export {D}/job --output {D}/nodir/out.jsonl", 1, {"nodir/out.jsonl"}},
    {"bench: neither --arch nor --model", NULL, NULL, "bench --isl 4", 2,
     {"exactly one of --arch NAME or --model DIR"}},
    {"bench: --arch and --model", NULL, NULL, BENCH_G "--arch llama-3.1-8b", 2,
     {"exactly one of --arch NAME or --model DIR"}},
    {"bench: stray argument", NULL, NULL, BENCH_G "extra", 2, {"unexpected argument 'extra'"}},
    {"bench: --isl 0", NULL, NULL, BENCH_G "--isl 0", 2, {"--isl", "outside"}},
    {"bench: --requests many", NULL, NULL, BENCH_G "--requests many", 2,
     {"--requests", "'many' is not an integer"}},
    {"bench: --kv-block-size 24", NULL, NULL, BENCH_G "--kv-block-size 24", 2,
     {"--kv-block-size", "power of two"}},
    {"bench: --peak-tflops inf", NULL, NULL, BENCH_G "--peak-tflops inf", 2,
     {"--peak-tflops", "not a finite number"}},
    {"bench: --backend tpu", NULL, NULL, BENCH_G "--backend tpu", 2, {"--backend", "'tpu'"}},
    {"bench: unknown --arch", NULL, NULL, "bench --arch no-such-arch --output {D}/out.json", 1,
     {"no-such-arch"}},
    {"bench: --arch file not JSON", mk_file, "arch.json|{ not json",
     "bench --arch {D}/arch.json --output {D}/out.json", 1, {"arch.json", "invalid JSON"}},
    {"bench: --isl + --osl past the context", NULL, NULL,
     "bench --backend cpu --requests 1 --model {G} --isl 200 --osl 100 --output {D}/out.json", 1,
     {"--isl 200 + --osl 100", "256"}},
    {"bench: broken config.json", mk_model, "gqa2|config.json|!write=[",
     "bench --backend cpu --requests 1 --isl 4 --osl 1 --model {D}/m --output {D}/out.json", 1,
     {"m/config.json", "invalid JSON"}},

    // --- number formats, CUDA graphs, quantize ------------------------------------
    {"run: --dtype fp16", NULL, NULL, RUN_GP "--dtype fp16", 2, {"--dtype", "'fp16'"}},
    {"run: --kv-dtype int8", NULL, NULL, RUN_GP "--kv-dtype int8", 2, {"--kv-dtype", "'int8'"}},
    {"run: --cuda-graphs maybe", NULL, NULL, RUN_GP "--cuda-graphs maybe", 2,
     {"--cuda-graphs", "'maybe'"}},
    {"bench: --dtype int4 with --model", NULL, NULL, BENCH_G "--dtype int4", 2,
     {"--dtype int4", "--arch"}},
    {"bench: --int4-group 48", NULL, NULL, BENCH_G "--int4-group 48", 2,
     {"--int4-group", "48 is not a multiple of 32"}},
    {"bench: --dtype fp4", NULL, NULL, BENCH_G "--dtype fp4", 2, {"--dtype", "'fp4'"}},
    {"bench: --cuda-graphs x", NULL, NULL, BENCH_G "--cuda-graphs x", 2, {"--cuda-graphs", "'x'"}},
    {"bench: --tp 2 on one rank", NULL, NULL, BENCH_G "--tp 2", 2,
     {"--tp 2 needs exactly 2 ranks"}},
    {"quantize: no scheme", NULL, NULL, "quantize --model {G} --output {O}", 2,
     {"choose a scheme"}},
    {"quantize: --fp8 without --model", NULL, NULL, "quantize --fp8 --output {O}", 2,
     {"--model and --output are required"}},
    {"quantize: --format gguf", NULL, NULL, "quantize --fp8 --model {G} --output {O} --format gguf",
     2, {"--format", "'gguf'"}},
    {"quantize: --fp8 missing model dir", NULL, NULL,
     "quantize --fp8 --model {D}/nope --output {O}", 1, {"nope/config.json"}},
    {"quantize: --int4-awq without --calib", NULL, NULL,
     "quantize --int4-awq --model {G} --output {O}", 2, {"--int4-awq needs --calib"}},
    {"eval: --arch nosuch", NULL, NULL, "eval --arch nosuch", 1,
     {"--arch nosuch", "no configs/arch/nosuch.json"}},
    {"eval: --arch with --model", NULL, NULL, "eval --arch llama-3.1-8b --model {G}", 2,
     {"--arch makes its own random model"}},
    {"eval: --depths beyond the model", NULL, NULL,
     "eval --arch {G}/config.json --depths 1,99", 1, {"--depths '1,99'", "layer counts in 1.."}},
    {"eval: --depths not a number", NULL, NULL, "eval --arch {G}/config.json --depths 1,x", 1,
     {"--depths '1,x'"}},
    {"quantize: --int4-rtn --group 48", NULL, NULL,
     "quantize --int4-rtn --model {G} --output {O} --group 48", 1,
     {"--group 48", "multiple of 32"}},

    // --- prompts files ----------------------------------------------------------
    {"h5: float prompt_tokens", mk_h5, "prompt_tokens:f32:5,6,7;prompt_offsets:i64:0,3",
     RUN_GH, 1, {"p.h5", "'prompt_tokens' must be an integer dataset, found float"}},
    {"h5: string prompt_offsets", mk_h5, "prompt_tokens:i32:5,6,7;prompt_offsets:str:0,3",
     RUN_GH, 1, {"p.h5", "'prompt_offsets' must be an integer dataset, found string"}},
    {"h5: offsets going backwards", mk_h5, "prompt_tokens:i32:5,6,7,8;prompt_offsets:i64:0,3,1,4",
     RUN_GH, 1, {"p.h5", "'prompt_offsets' is not monotonic at index 2"}},
    {"h5: offsets not starting at 0", mk_h5, "prompt_tokens:i32:5,6,7;prompt_offsets:i64:1,3",
     RUN_GH, 1, {"p.h5", "'prompt_offsets'[0]=1, expected 0"}},
    {"h5: offsets past the end", mk_h5, "prompt_tokens:i32:5,6,7;prompt_offsets:i64:0,2,9",
     RUN_GH, 1, {"p.h5", "'prompt_offsets'[2]=9 is past the end of 'prompt_tokens'"}},
    {"h5: offsets short of the end", mk_h5, "prompt_tokens:i32:5,6,7;prompt_offsets:i64:0,2",
     RUN_GH, 1, {"p.h5", "'prompt_offsets'[1]=2 does not equal len(prompt_tokens)=3"}},
    {"h5: empty prompt_offsets", mk_h5, "prompt_tokens:i32:5,6,7;prompt_offsets:i64", RUN_GH, 1,
     {"p.h5", "'prompt_offsets' is empty"}},
    {"h5: 2-D prompt_tokens", mk_h5, "prompt_tokens:i32@1x3:5,6,7;prompt_offsets:i64:0,3",
     RUN_GH, 1, {"p.h5", "'prompt_tokens' must be 1-D, found rank 2 (shape 1x3)"}},
    {"h5: scalar prompt_offsets", mk_h5, "prompt_tokens:i32:;prompt_offsets:i64@scalar:0",
     RUN_GH, 1, {"p.h5", "'prompt_offsets' must be 1-D"}},
    {"h5: int64 token past int32", mk_h5, "prompt_tokens:i64:5,4294967296;prompt_offsets:i64:0,2",
     RUN_GH, 1, {"p.h5", "'prompt_tokens'[1]=4294967296 does not fit int32"}},
    {"h5: uint64 offset past int64", mk_h5,
     "prompt_tokens:i32:5;prompt_offsets:u64:0,18446744073709551615", RUN_GH, 1,
     {"p.h5", "'prompt_offsets'[1]=18446744073709551615 does not fit int64"}},
    {"h5: no prompt_offsets", mk_h5, "prompt_tokens:i32:5,6,7", RUN_GH, 1,
     {"p.h5", "dataset 'prompt_offsets' missing"}},
    {"h5: no prompt_tokens", mk_h5, "prompt_offsets:i64:0,3", RUN_GH, 1,
     {"p.h5", "dataset 'prompt_tokens' missing"}},
    {"h5: no datasets at all", mk_h5, "", RUN_GH, 1, {"p.h5", "dataset 'prompt_tokens' missing"}},
    {"h5: prompt_tokens is a group", mk_h5, "prompt_tokens:group;prompt_offsets:i64:0", RUN_GH, 1,
     {"p.h5", "'prompt_tokens' is not a dataset"}},
    {"h5: temperature of the wrong length", mk_h5, H5_OK ";temperature:f32:0.5,0.5", RUN_GH, 1,
     {"p.h5", "'temperature' has 2 rows, expected 1"}},
    {"h5: max_new_tokens of the wrong length", mk_h5, H5_OK2 ";max_new_tokens:i32:4", RUN_GH, 1,
     {"p.h5", "'max_new_tokens' has 1 rows, expected 2"}},
    {"h5: request_id of the wrong length", mk_h5, H5_OK ";request_id:vstr:a,b", RUN_GH, 1,
     {"p.h5", "'request_id' has 2 rows, expected 1"}},
    {"h5: 2-D temperature", mk_h5, H5_OK2 ";temperature:f32@2x1:0.5,0.5", RUN_GH, 1,
     {"p.h5", "'temperature' must be 1-D, found rank 2 (shape 2x1)"}},
    {"h5: integer top_p", mk_h5, H5_OK ";top_p:i32:1", RUN_GH, 1,
     {"p.h5", "'top_p' must be a float dataset"}},
    {"h5: float top_k", mk_h5, H5_OK ";top_k:f32:5", RUN_GH, 1,
     {"p.h5", "'top_k' must be an integer dataset"}},
    {"h5: numeric request_id", mk_h5, H5_OK ";request_id:i32:7", RUN_GH, 1,
     {"p.h5", "'request_id' must be a string dataset"}},
    {"h5: max_new_tokens past int32", mk_h5, H5_OK ";max_new_tokens:i64:2147483648", RUN_GH, 1,
     {"p.h5", "'max_new_tokens'[0]=2147483648 does not fit int32"}},
    {"h5: non-UTF-8 prompt_text beside tokens", mk_h5, H5_OK ";prompt_text:vstr:ab\xff", RUN_GH,
     1, {"p.h5", "'prompt_text'[0] is not valid UTF-8 (at byte 2)"}},
    {"h5: non-UTF-8 request_id", mk_h5, H5_OK ";request_id:str:\xc3(", RUN_GH, 1,
     {"p.h5", "'request_id'[0] is not valid UTF-8"}},
    {"h5: text only, model without tokenizer.json", mk_h5, "prompt_text:vstr:hello", RUN_GH, 1,
     {"p.h5", "no tokenizer.json"}},
    {"h5: text only, non-UTF-8", mk_h5, "prompt_text:vstr:ok,b\xe2\x82", RUN "--model {M} --input {D}/p.h5",
     1, {"p.h5", "'prompt_text'[1] is not valid UTF-8"}},
    {"h5: empty file", mk_file, "p.h5|", RUN_GH, 1, {"p.h5", "not an HDF5 file"}},
    {"h5: a directory", mk_dir, "p.h5", RUN_GH, 1, {"p.h5", "is a directory"}},
    {"h5: a text file named .h5", mk_file, "p.h5|prompt_tokens = [1, 2, 3]\n", RUN_GH, 1,
     {"p.h5", "not an HDF5 file"}},
    {"h5: missing file", NULL, NULL, RUN_GH, 1, {"p.h5", "cannot open"}},
    // legal by docs/HDF5.md: NaN and negative values are "unset"
    {"h5: NaN temperature and top_p are unset", mk_h5,
     H5_OK2 ";temperature:f32:nan,0;top_p:f64:nan,1",
     RUN_GH "--max-new-tokens 4 --ignore-eos", 0, {NULL}, v_nan_is_unset},
    {"h5: max_new_tokens -1 and -5 are unset", mk_h5,
     "prompt_tokens:i32:5,6,7,8,9;prompt_offsets:i64:0,2,4,5;max_new_tokens:i8:-1,-5,3",
     RUN_GH "--max-new-tokens 2 --ignore-eos", 0, {NULL}, v_max_new_sentinels},
    {"h5: max_new_tokens 2^31-1, capped by the context", mk_h5,
     H5_OK ";max_new_tokens:i32:2147483647", RUN_GH "--max-seq-len 8 --ignore-eos", 0, {NULL},
     v_max_new_huge},
    // per-request values the engine refuses: an error row, or a failed job with --strict
    {"h5: negative top_p -> error row", mk_h5, H5_OK2 ";top_p:f32:-0.5,1", RUN_GH, 0, {NULL},
     v_err_top_p},
    {"h5: negative top_p --strict", mk_h5, H5_OK2 ";top_p:f32:-0.5,1", RUN_GH "--strict", 1,
     {"p.h5: request 0", "top_p must be in (0, 1]", "--strict"}},
    {"h5: negative temperature -> error row", mk_h5, H5_OK2 ";temperature:f32:-1,0", RUN_GH, 0,
     {NULL}, v_err_temp},
    {"h5: max_new_tokens 0 -> error row", mk_h5, H5_OK2 ";max_new_tokens:i32:0,1", RUN_GH, 0,
     {NULL}, v_err_max_new},
    {"h5: max_new_tokens 0 --strict", mk_h5, H5_OK2 ";max_new_tokens:i32:0,1",
     RUN_GH "--strict", 1, {"p.h5: request 0", "max_new_tokens must be >= 1"}},
    {"h5: negative token id -> error row", mk_h5,
     "prompt_tokens:i32:5,-6,7,5,6,7;prompt_offsets:i64:0,3,6", RUN_GH, 0, {NULL}, v_err_vocab},

    // --- JSONL for sluice prep --------------------------------------------------
    {"jsonl: not JSON", mk_file, "in.jsonl|{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n", PREP_J, 1,
     {"in.jsonl:2", "expected a JSON object"}},
    {"jsonl: no prompt", mk_file, "in.jsonl|{\"text\": \"a\"}\n", PREP_J, 1,
     {"in.jsonl:1", "no \"prompt\" field"}},
    {"jsonl: prompt is a number", mk_file, "in.jsonl|{\"prompt\": 5}\n", PREP_J, 1,
     {"in.jsonl:1", "field \"prompt\" must be a string, found an integer"}},
    {"jsonl: line is an array", mk_file, "in.jsonl|[\"a\"]\n", PREP_J, 1,
     {"in.jsonl:1", "found an array"}},
    {"jsonl: max_new_tokens is a string", mk_file,
     "in.jsonl|{\"prompt\": \"a\", \"max_new_tokens\": \"5\"}\n", PREP_J, 1,
     {"in.jsonl:1", "\"max_new_tokens\" must be an integer, found a string"}},
    {"jsonl: max_new_tokens 0", mk_file, "in.jsonl|{\"prompt\": \"a\", \"max_new_tokens\": 0}\n",
     PREP_J, 1, {"in.jsonl:1", "\"max_new_tokens\" is 0"}},
    {"jsonl: temperature is true", mk_file, "in.jsonl|{\"prompt\": \"a\", \"temperature\": true}\n",
     PREP_J, 1, {"in.jsonl:1", "\"temperature\" must be a number, found a boolean"}},
    {"jsonl: top_p 1.5", mk_file, "in.jsonl|{\"prompt\": \"a\", \"top_p\": 1.5}\n", PREP_J, 1,
     {"in.jsonl:1", "\"top_p\" is 1.5"}},
    {"jsonl: negative seed", mk_file, "in.jsonl|{\"prompt\": \"a\", \"seed\": -1}\n", PREP_J, 1,
     {"in.jsonl:1", "\"seed\" is -1"}},
    {"jsonl: request_id is a list", mk_file, "in.jsonl|{\"prompt\": \"a\", \"request_id\": [1]}\n",
     PREP_J, 1, {"in.jsonl:1", "\"request_id\" must be a string or an integer"}},
    {"jsonl: duplicate key", mk_file, "in.jsonl|{\"prompt\": \"a\", \"prompt\": \"b\"}\n", PREP_J,
     1, {"in.jsonl:1", "duplicate"}},
    {"jsonl: invalid UTF-8", mk_file, "in.jsonl|{\"prompt\": \"a\"}\n{\"prompt\": \"\xc0\xaf\"}\n",
     PREP_J, 1, {"in.jsonl:2", "invalid UTF-8"}},
    {"jsonl: raw NUL byte", mk_nul_jsonl, NULL, PREP_J, 1, {"in.jsonl:2", "NUL byte"}},
    {"jsonl: escaped NUL", mk_file, "in.jsonl|{\"prompt\": \"a\\u0000b\"}\n", PREP_J, 1,
     {"in.jsonl:1", "\\u0000"}},
    {"jsonl: empty line in the middle", mk_file, "in.jsonl|{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\"}\n",
     PREP_J, 1, {"in.jsonl:2", "empty line"}},
    {"text: invalid UTF-8", mk_file, "in.txt|fine\nbad \xff byte\n",
     PREP "--tokenizer {T} --input {D}/in.txt", 1, {"in.txt:2", "invalid UTF-8"}},

    // --- checkpoints --------------------------------------------------------------
    {"st: truncated shard", mk_model, "gqa2|model.safetensors|!truncate=200000", RUN_MP, 1,
     {"m/model.safetensors", "header offsets outside the file", "truncated"}},
    {"st: 4-byte shard", mk_model, "gqa2|model.safetensors|!truncate=4", RUN_MP, 1,
     {"m/model.safetensors", "too small to be safetensors"}},
    {"st: header length past the end", mk_model, "gqa2|model.safetensors|!hlen-past-end", RUN_MP,
     1, {"m/model.safetensors", "runs past the end of the file"}},
    {"st: header not JSON", mk_model, "gqa2|model.safetensors|!garbage-header", RUN_MP, 1,
     {"m/model.safetensors", "header is not valid JSON"}},
    {"st: data offsets past the end", mk_model,
     "gqa2|model.safetensors|model.norm.weight/data_offsets=[441024,941216]", RUN_MP, 1,
     {"m/model.safetensors", "'model.norm.weight'", "outside the file"}},
    {"st: data offsets inverted", mk_model,
     "gqa2|model.safetensors|model.norm.weight/data_offsets=[441216,441024]", RUN_MP, 1,
     {"m/model.safetensors", "'model.norm.weight'", "not a valid range"}},
    {"st: overlapping tensors", mk_model,
     "gqa2|model.safetensors|model.layers.0.post_attention_layernorm.weight/data_offsets=[99264,99456]",
     RUN_MP, 1, {"m/model.safetensors", "overlap", "model.layers.0.input_layernorm.weight"}},
    {"st: dtype I32", mk_model, "mha|model.safetensors|model.norm.weight/dtype=\"I32\"", RUN_MP, 1,
     {"m/model.safetensors", "'model.norm.weight' has dtype I32"}},
    {"st: unknown dtype", mk_model, "gqa2|model.safetensors|model.norm.weight/dtype=\"F128\"",
     RUN_MP, 1, {"m/model.safetensors", "'model.norm.weight'", "unknown dtype 'F128'"}},
    {"st: shape disagrees with config", mk_model,
     "gqa2|model.safetensors|model.layers.0.mlp.gate_proj.weight/shape=[96,200]", RUN_MP, 1,
     {"model.layers.0.mlp.gate_proj.weight", "has shape [96, 200], expected [200, 96]"}},
    {"st: shape disagrees with bytes", mk_model,
     "gqa2|model.safetensors|model.norm.weight/shape=[97]", RUN_MP, 1,
     {"'model.norm.weight'", "needs 194 bytes"}},
    {"st: missing tensor", mk_model,
     "gqa2|model.safetensors|model.layers.1.self_attn.k_proj.weight=", RUN_MP, 1,
     {"/m: tensor 'model.layers.1.self_attn.k_proj.weight' missing"}},
    {"st: untied model without lm_head", mk_model, "mha|model.safetensors|lm_head.weight=", RUN_MP,
     1, {"/m: tensor 'lm_head.weight' missing"}},
    {"st: no weights", mk_model, "gqa2|model.safetensors|!rm", RUN_MP, 1,
     {"no model.safetensors or model.safetensors.index.json", "/m"}},
    {"st: --model is a file", NULL, NULL, RUN "--input {P} --model {P}", 1,
     {"good.h5/config.json", "Not a directory"}},
    {"index: names a missing shard", mk_model,
     "mqa|model.safetensors.index.json|weight_map/lm_head.weight=\"model-00003-of-00002.safetensors\"",
     RUN_MP, 1, {"model-00003-of-00002.safetensors", "cannot open", "model.safetensors.index.json"}},
    {"index: not JSON", mk_model, "mqa|model.safetensors.index.json|!write={\"weight_map\": {",
     RUN_MP, 1, {"m/model.safetensors.index.json", "not valid JSON"}},
    {"index: no weight_map", mk_model, "mqa|model.safetensors.index.json|weight_map=", RUN_MP, 1,
     {"m/model.safetensors.index.json", "no 'weight_map'"}},
    {"index: tensor in the other shard", mk_model,
     "mqa|model.safetensors.index.json|weight_map/model.norm.weight=\"model-00001-of-00002.safetensors\"",
     RUN_MP, 1, {"model.safetensors.index.json", "'model.norm.weight' is mapped to"}},
    {"index: shard outside the directory", mk_model,
     "mqa|model.safetensors.index.json|weight_map/lm_head.weight=\"../lm.safetensors\"", RUN_MP, 1,
     {"model.safetensors.index.json", "points outside"}},
    {"index: tensor in two shards", mk_model,
     "mqa|model-00002-of-00002.safetensors|model.layers.1.post_attention_layernorm.weight=\n"
     "model.layers.1.input_layernorm.weight={\"dtype\":\"BF16\",\"shape\":[84],"
     "\"data_offsets\":[151032,151200]}",
     RUN_MP, 1, {"'model.layers.1.input_layernorm.weight' appears in both", "model-00001-of-00002"}},

    // --- config.json / generation_config.json ---------------------------------------
    {"config: not JSON", mk_model, "gqa2|config.json|!write={\"vocab_size\": 517,", RUN_MP, 1,
     {"m/config.json", "invalid JSON"}},
    {"config: a list", mk_model, "gqa2|config.json|!write=[1, 2]", RUN_MP, 1,
     {"m/config.json", "not a JSON object"}},
    {"config: no hidden_size", mk_model, "gqa2|config.json|hidden_size=", RUN_MP, 1,
     {"m/config.json", "missing required field 'hidden_size'"}},
    {"config: layers as a string", mk_model, "gqa2|config.json|num_hidden_layers=\"2\"", RUN_MP, 1,
     {"m/config.json", "'num_hidden_layers' must be an integer, got a string"}},
    {"config: negative vocab_size", mk_model, "gqa2|config.json|vocab_size=-517", RUN_MP, 1,
     {"m/config.json", "'vocab_size' = -517 is out of range"}},
    {"config: eps as a string", mk_model, "gqa2|config.json|rms_norm_eps=\"1e-6\"", RUN_MP, 1,
     {"m/config.json", "'rms_norm_eps' must be a number"}},
    {"config: unsupported architecture", mk_model,
     "gqa2|config.json|architectures/0=\"MambaForCausalLM\"", RUN_MP, 1,
     {"m/config.json", "unsupported architecture 'MambaForCausalLM'"}},
    {"config: no architectures", mk_model, "gqa2|config.json|architectures=", RUN_MP, 1,
     {"m/config.json", "'architectures'"}},
    {"config: rope type yarn", mk_model, "gqa2|config.json|rope_parameters/rope_type=\"yarn\"",
     RUN_MP, 1, {"m/config.json", "rope_type 'yarn' is not supported"}},
    {"config: linear rope without factor", mk_model,
     "gqa2|config.json|rope_parameters/rope_type=\"linear\"", RUN_MP, 1,
     {"m/config.json", "missing required field 'rope_parameters.factor'"}},
    {"config: heads not divisible by kv heads", mk_model,
     "gqa2|config.json|num_key_value_heads=4", RUN_MP, 1,
     {"m/config.json", "num_attention_heads (6) is not a multiple of num_key_value_heads (4)"}},
    {"config: hidden_act gelu", mk_model, "gqa2|config.json|hidden_act=\"gelu\"", RUN_MP, 1,
     {"m/config.json", "hidden_act 'gelu' is not supported"}},
    {"config: tie_word_embeddings a string", mk_model,
     "gqa2|config.json|tie_word_embeddings=\"yes\"", RUN_MP, 1,
     {"m/config.json", "'tie_word_embeddings' must be true or false"}},
    {"config: odd head_dim", mk_model, "gqa2|config.json|head_dim=15", RUN_MP, 1,
     {"m/config.json", "head_dim 15 is odd"}},
    {"config: hidden_size disagrees with weights", mk_model, "gqa2|config.json|hidden_size=128",
     RUN_MP, 1, {"model.embed_tokens.weight", "has shape [517, 96], expected [517, 128]"}},
    {"generation_config: not JSON", mk_model, "gqa2|generation_config.json|!write=eos", RUN_MP, 1,
     {"m/generation_config.json", "invalid JSON"}},
    {"generation_config: eos outside the vocabulary", mk_model,
     "gqa2|generation_config.json|eos_token_id=[3, 9999]", RUN_MP, 1,
     {"m/generation_config.json", "eos_token_id 9999 is outside the vocabulary"}},

    // --- tokenizer.json -------------------------------------------------------------
    {"tokenizer: not JSON", mk_model, "tok|tokenizer.json|!write={\"model\":", PREP_TOK, 1,
     {"m/tokenizer.json", "cannot read tokenizer"}},
    {"tokenizer: WordPiece", mk_model, "tok|tokenizer.json|model/type=\"WordPiece\"", PREP_TOK, 1,
     {"m/tokenizer.json", "unsupported model type \"WordPiece\""}},
    {"tokenizer: no model", mk_model, "tok|tokenizer.json|model=", PREP_TOK, 1,
     {"m/tokenizer.json", "model: missing"}},
    {"tokenizer: merge of one token", mk_model, "tok|tokenizer.json|model/merges/0=[\"a\"]",
     PREP_TOK, 1, {"m/tokenizer.json", "model.merges[0]"}},
    {"tokenizer: merge 'a b c'", mk_model, "tok|tokenizer.json|model/merges/3=\"a b c\"", PREP_TOK,
     1, {"m/tokenizer.json", "model.merges[3]: \"a b c\" is not \"a b\""}},
    {"tokenizer: merge of unknown tokens", mk_model,
     "tok|tokenizer.json|model/merges/1=[\"zzq\", \"qqz\"]", PREP_TOK, 1,
     {"m/tokenizer.json", "model.merges[1]: token \"zzq\" is not in the vocab"}},
    {"tokenizer: negative vocab id", mk_model, "tok|tokenizer.json|model/vocab/a=-4", PREP_TOK, 1,
     {"m/tokenizer.json", "model.vocab[\"a\"]"}},
    {"tokenizer: BPE dropout", mk_model, "tok|tokenizer.json|model/dropout=0.1", PREP_TOK, 1,
     {"m/tokenizer.json", "dropout"}},
    {"tokenizer: unknown pre_tokenizer", mk_model,
     "tok|tokenizer.json|pre_tokenizer={\"type\": \"Whitespace2\"}", PREP_TOK, 1,
     {"m/tokenizer.json", "pre_tokenizer", "Whitespace2"}},
    {"tokenizer: regex that does not compile", mk_model,
     "tok|tokenizer.json|pre_tokenizer={\"type\": \"Split\", \"pattern\": {\"Regex\": \"(ab\"}, "
     "\"behavior\": \"Isolated\", \"invert\": false}",
     PREP_TOK, 1, {"m/tokenizer.json", "does not compile"}},
    {"tokenizer: added_tokens not a list", mk_model, "tok|tokenizer.json|added_tokens={}",
     PREP_TOK, 1, {"m/tokenizer.json", "added_tokens"}},
    // in a model directory a broken tokenizer.json fails only a job that needs
    // it (text prompts); token prompts still run, without completion_text
    {"tokenizer: broken one in a model dir, text prompts", mk_model_text,
     "gqa2|tokenizer.json|model/type=\"Unigram\"", RUN "--model {D}/m --input {D}/p.h5", 1,
     {"m/tokenizer.json", "\"Unigram\"", "p.h5"}},
    {"tokenizer: broken one in a model dir, token prompts", mk_model,
     "gqa2|tokenizer.json|model/type=\"Unigram\"", RUN_MP, 0,
     {"m/tokenizer.json", "\"Unigram\"", "no text"}, v_no_text},
};
#pragma GCC diagnostic pop

// ----------------------------------------------------------------------------
// the runner

// Replaces {D} {O} {P} {J} {G} {M} {T} in tmpl.
static void expand(char *out, size_t cap, const char *tmpl, const char *dir) {
    char o[1100];
    snprintf(o, sizeof o, "%s/out", dir);
    const char *vals[128] = {0};
    vals['D'] = dir;
    vals['O'] = o;
    vals['P'] = join(tu_tmpdir(), "good.h5");
    vals['J'] = join(tu_tmpdir(), "good.jsonl");
    vals['G'] = tu_path("tests/golden/llama-gqa2-bf16");
    vals['M'] = tu_path("tests/models/tiny-code-llama");
    vals['T'] = tu_path("tests/models/tiny-code-llama/tokenizer.json");
    size_t n = 0;
    for (const char *s = tmpl; *s && n + 1 < cap; s++) {
        if (s[0] == '{' && s[1] > 0 && (unsigned char)s[1] < 128 && vals[(int)s[1]] && s[2] == '}') {
            n += (size_t)snprintf(out + n, cap - n, "%s", vals[(int)s[1]]);
            s += 2;
        } else {
            out[n++] = *s;
        }
    }
    out[n < cap ? n : cap - 1] = 0;
}

static int glob_count(const char *pattern) {
    glob_t g;
    int n = glob(pattern, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    if (n) globfree(&g);
    return n;
}

// Output a failed command may not leave behind.
static int leftovers(const char *dir) {
    static const char *files[] = {"out", "out.h5", "out.h5.tmp", "out.jsonl", "out.jsonl.tmp",
                                  "out.json", "out.json.tmp", "nodir"};
    int bad = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (exists(join(dir, files[i]))) {
            fprintf(stderr, "    left behind: %s\n", join(dir, files[i]));
            bad++;
        }
    bad += glob_count(join(dir, "*.tmp")) + glob_count(join(dir, "job/*.tmp"));
    return bad;
}

static int g_failed_rows;

static void run_case(int idx, const BadCase *c) {
    char dir[1024], cmd[8192], args[4096];
    snprintf(dir, sizeof dir, "%s/case-%03d", tu_tmpdir(), idx);
    CU_ASSERT_FATAL(mkdir(dir, 0777) == 0);
    if (c->setup) c->setup(dir, c->arg);
    expand(args, sizeof args, c->cmd, dir);
    snprintf(cmd, sizeof cmd, "%s %s", bin(), args);
    int rc = tu_run_cmd(cmd, g_out, sizeof g_out);
    if (getenv("SLUICE_TEST_VERBOSE"))
        fprintf(stderr, "[%s] $ %s\n%s[exit %d]\n", c->name, cmd, g_out, rc);

    int ok = rc == c->rc;
    const char *missing = NULL;
    for (int k = 0; k < 3 && c->want[k]; k++)
        if (!strstr(g_out, c->want[k])) missing = c->want[k], ok = 0;
    static const char *crash[] = {"Segmentation", "Abort", "AddressSanitizer",
                                  "runtime error:", "core dumped", "LeakSanitizer"};
    const char *crashed = NULL;
    for (size_t k = 0; k < sizeof crash / sizeof crash[0]; k++)
        if (strstr(g_out, crash[k])) crashed = crash[k], ok = 0;
    if (rc >= 128) ok = 0;
    // a failed command leaves nothing; a finished one leaves no temporary file
    int left = c->rc != 0 ? leftovers(dir) : glob_count(join(dir, "out/*.tmp"));
    if (left) ok = 0;
    if (!ok) {
        g_failed_rows++;
        fprintf(stderr, "\n  FAILED row '%s': exit %d (want %d)%s%s%s%s\n  $ %s\n%s", c->name, rc,
                c->rc, missing ? ", output lacks '" : "", missing ? missing : "",
                missing ? "'" : "", crashed ? " CRASH" : "", cmd, g_out);
    }
    CU_ASSERT_EQUAL(rc, c->rc);
    CU_ASSERT(missing == NULL);
    CU_ASSERT(crashed == NULL);
    CU_ASSERT(left == 0);
    if (c->rc == 0 && rc == 0 && c->verify) c->verify(dir);
}

static const int g_ncases = (int)(sizeof g_cases / sizeof g_cases[0]);

// The shared good inputs: good.h5 (one prompt), good2.h5 (two), good.jsonl.
static void make_good_prompts(void) {
    mk_file(tu_tmpdir(), "good.jsonl|{\"prompt\": \"hello\"}\n");
    mk_h5(tu_tmpdir(), H5_OK);
    CU_ASSERT_FATAL(rename(join(tu_tmpdir(), "p.h5"), join(tu_tmpdir(), "good.h5")) == 0);
    mk_h5(tu_tmpdir(), H5_OK2);
    CU_ASSERT_FATAL(rename(join(tu_tmpdir(), "p.h5"), join(tu_tmpdir(), "good2.h5")) == 0);
}

// The rows of one group, picked by the prefix of their names.
static void run_group(const char *const *prefixes) {
    static int made;
    if (!made++) make_good_prompts();
    int n = 0;
    for (int i = 0; i < g_ncases; i++)
        for (int k = 0; prefixes[k]; k++)
            if (!strncmp(g_cases[i].name, prefixes[k], strlen(prefixes[k]))) {
                run_case(i, &g_cases[i]);
                n++;
                break;
            }
    CU_ASSERT(n > 0);
}

static void test_flags(void) {
    static const char *const p[] = {"run:",   "sluice:",   "prep:", "export:",
                                    "bench:", "quantize:", "eval:", NULL};
    run_group(p);
}
static void test_prompt_files(void) {
    static const char *const p[] = {"h5:", "jsonl:", "text:", NULL};
    run_group(p);
}
static void test_checkpoints(void) {
    static const char *const p[] = {"st:", "index:", NULL};
    run_group(p);
}
static void test_config_tokenizer(void) {
    static const char *const p[] = {"config:", "generation_config:", "tokenizer:", NULL};
    run_group(p);
}

// Every row belongs to exactly one group, and the matrix is as big as promised.
static void test_table_complete(void) {
    static const char *const all[] = {"run:", "sluice:", "prep:", "export:", "bench:", "quantize:", "eval:", "h5:",
                                      "jsonl:", "text:", "st:", "index:", "config:",
                                      "generation_config:", "tokenizer:", NULL};
    for (int i = 0; i < g_ncases; i++) {
        int hits = 0;
        for (int k = 0; all[k]; k++) hits += !strncmp(g_cases[i].name, all[k], strlen(all[k]));
        if (hits != 1) fprintf(stderr, "  row '%s' is in %d groups\n", g_cases[i].name, hits);
        CU_ASSERT_EQUAL(hits, 1);
        CU_ASSERT(g_cases[i].rc != 0 || g_cases[i].verify != NULL);
        CU_ASSERT(g_cases[i].rc == 0 || g_cases[i].want[0] != NULL);
    }
    CU_ASSERT(g_ncases >= 50);
    printf("\n  %d rows in the bad-input matrix\n", g_ncases);
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    static const tu_test tests[] = {{"table_complete", test_table_complete},
                                    {"cli_flags", test_flags},
                                    {"prompt_files", test_prompt_files},
                                    {"checkpoints", test_checkpoints},
                                    {"config_and_tokenizer", test_config_tokenizer},
                                    {NULL, NULL}};
    tu_suite("bad_input_matrix", tests);
    int rc = tu_main();
    if (g_failed_rows) fprintf(stderr, "%d rows of the bad-input matrix failed\n", g_failed_rows);
    return rc;
}
