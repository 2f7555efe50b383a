// cli_export.c: `sluice export`: OUTDIR (or a completions.h5) -> JSON lines,
// one per prompt, in prompt order.
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "h5io.h"

static void export_usage(FILE *f) {
    fprintf(f,
            "usage: sluice export OUTDIR|completions.h5 [--output FILE.jsonl] [--limit N]\n"
            "\n"
            "Writes one JSON object per completion, in prompt order:\n"
            "  {\"prompt_index\", \"prompt_len\", \"completion_ids\", \"finish_reason\",\n"
            "   \"error\" (only for rejected requests), \"ttft_s\", \"latency_s\", \"queue_s\"}\n"
            "to FILE (written under a temporary name, then renamed) or to stdout.\n");
}

int cli_export(int argc, char **argv, Comm *comm) {
    static const struct option longopts[] = {
        {"output", required_argument, 0, 'o'},
        {"limit", required_argument, 0, 'n'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *out = NULL;
    long limit = -1;
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", longopts, NULL);
        if (c == -1) break;
        switch (c) {
        case 'o': out = optarg; break;
        case 'n':
            if (cli_int("export", "--limit", optarg, 0, 1L << 62, &limit)) return EXIT_USAGE;
            break;
        case 'h': export_usage(stdout); return EXIT_OK;
        default:
            fprintf(stderr, "sluice export: option '%s' is unknown or lacks its value\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        export_usage(stderr);
        return EXIT_USAGE;
    }
    const char *src = argv[optind];
    struct stat stt;
    char *path = (stat(src, &stt) == 0 && S_ISDIR(stt.st_mode))
                     ? sl_path_join(src, "completions.h5")
                     : sl_strdup(src);
    sl_err err = {{0}};
    CompletionSet cs;
    memset(&cs, 0, sizeof cs);
    int rc = EXIT_FAIL;
    FILE *f = stdout;
    char *tmp = NULL;
    if (h5_completions_read(&cs, path, &err)) goto done;
    if (out) {
        size_t n = strlen(out) + 16;
        tmp = sl_malloc(n);
        snprintf(tmp, n, "%s.tmp", out);
        f = fopen(tmp, "w");
        if (!f) {
            sl_errf(&err, "%s: cannot create: %s", tmp, strerror(errno));
            goto done;
        }
    }
    int64_t n = limit >= 0 && limit < cs.n ? limit : cs.n;
    for (int64_t i = 0; i < n; i++) {
        json_t *ids = json_array();
        for (int64_t k = cs.offsets[i]; k < cs.offsets[i + 1]; k++)
            json_array_append_new(ids, json_integer(cs.tokens[k]));
        json_t *o = json_pack("{s:I,s:i,s:o,s:s,s:f,s:f,s:f}", "prompt_index",
                              (json_int_t)cs.prompt_index[i], "prompt_len", cs.prompt_len[i],
                              "completion_ids", ids, "finish_reason",
                              finish_reason_name((FinishReason)cs.finish[i]), "ttft_s",
                              (double)cs.ttft_s[i], "latency_s", (double)cs.latency_s[i],
                              "queue_s", (double)cs.queue_s[i]);
        if (cs.error && cs.error[i] && cs.error[i][0])
            json_object_set_new(o, "error", json_string(cs.error[i]));
        if (cs.text && cs.text[i]) json_object_set_new(o, "completion_text", json_string(cs.text[i]));
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fprintf(f, "%s\n", line);
        free(line);
        json_decref(o);
    }
    if (out) {
        int bad = ferror(f);
        bad |= fclose(f) != 0;
        f = NULL;
        if (bad || rename(tmp, out)) {
            sl_errf(&err, "%s: cannot write: %s", out, strerror(errno));
            unlink(tmp);
            goto done;
        }
    }
    rc = EXIT_OK;
done:
    if (rc != EXIT_OK) {
        fprintf(stderr, "sluice export: error: %s\n", err.msg);
        if (f && f != stdout) {
            fclose(f);
            unlink(tmp);
        }
    }
    free(tmp);
    free(path);
    h5_completions_free(&cs);
    return rc;
}
