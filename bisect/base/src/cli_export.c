// cli_export.c: `sluice export`: OUTDIR (or a completions.h5) -> JSON lines,
// one per prompt, in prompt order.
//
// With --prompts, each line also carries the prompt's text and request id
// from the prompts file the job ran on (its `prompt_text` / `request_id`), so
// the JSONL stands on its own. The output goes to a temporary name that is
// renamed into place, so a failed export leaves no partial file.
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
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
            "usage: sluice export OUTDIR|completions.h5 [--output FILE.jsonl]\n"
            "                     [--prompts PROMPTS.h5] [--limit N]\n"
            "\n"
            "Writes one JSON object per completion, in prompt order, to FILE (written under\n"
            "a temporary name, then renamed) or to stdout:\n"
            "  prompt_index      row of the prompts file\n"
            "  request_id        with --prompts, when the prompts file has request ids\n"
            "  prompt            with --prompts, when the prompts file has prompt_text\n"
            "  completion_text   when the job stored text (the model had a tokenizer.json)\n"
            "  completion_ids    generated token ids\n"
            "  finish_reason     stop | length | error\n"
            "  error             why a rejected request was rejected (only then)\n"
            "  prompt_len, n_tokens, ttft_s, latency_s, queue_s\n"
            "  completion_logprobs  when the job ran with --logprobs\n"
            "  top_logprobs      when it ran with --top-logprobs N: per token, N\n"
            "                    [id, logprob] pairs, most likely first\n");
}

// One JSON line for row i of cs (ps may be NULL).
static json_t *export_row(const CompletionSet *cs, const PromptSet *ps, int64_t i) {
    int64_t pi = cs->prompt_index[i], a = cs->offsets[i], b = cs->offsets[i + 1];
    json_t *o = json_object();
    json_object_set_new(o, "prompt_index", json_integer(pi));
    if (ps && ps->request_id) json_object_set_new(o, "request_id", json_string(ps->request_id[pi]));
    if (ps && ps->prompt_text) json_object_set_new(o, "prompt", json_string(ps->prompt_text[pi]));
    if (cs->text) json_object_set_new(o, "completion_text", json_string(cs->text[i] ? cs->text[i] : ""));
    json_t *ids = json_array();
    for (int64_t k = a; k < b; k++) json_array_append_new(ids, json_integer(cs->tokens[k]));
    json_object_set_new(o, "completion_ids", ids);
    json_object_set_new(o, "finish_reason",
                        json_string(finish_reason_name((FinishReason)cs->finish[i])));
    if (cs->error && cs->error[i] && cs->error[i][0])
        json_object_set_new(o, "error", json_string(cs->error[i]));
    json_object_set_new(o, "prompt_len", json_integer(cs->prompt_len[i]));
    json_object_set_new(o, "n_tokens", json_integer(b - a));
    json_object_set_new(o, "ttft_s", json_real(cs->ttft_s[i]));
    json_object_set_new(o, "latency_s", json_real(cs->latency_s[i]));
    json_object_set_new(o, "queue_s", json_real(cs->queue_s[i]));
    if (cs->logprobs) {
        json_t *lp = json_array();
        for (int64_t k = a; k < b; k++) json_array_append_new(lp, json_real(cs->logprobs[k]));
        json_object_set_new(o, "completion_logprobs", lp);
    }
    if (cs->top_n > 0) {
        json_t *top = json_array();
        for (int64_t k = a; k < b; k++) {
            json_t *alts = json_array();
            for (int t = 0; t < cs->top_n; t++) {
                size_t at = (size_t)k * cs->top_n + t;
                json_array_append_new(alts, json_pack("[i,f]", cs->top_ids[at],
                                                      (double)cs->top_logprobs[at]));
            }
            json_array_append_new(top, alts);
        }
        json_object_set_new(o, "top_logprobs", top);
    }
    return o;
}

int cli_export(int argc, char **argv, Comm *comm) {
    static const struct option longopts[] = {
        {"output", required_argument, 0, 'o'},
        {"prompts", required_argument, 0, 'p'},
        {"limit", required_argument, 0, 'n'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *out = NULL, *prompts = NULL;
    long limit = -1;
    optind = 1;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", longopts, NULL);
        if (c == -1) break;
        switch (c) {
        case 'o': out = optarg; break;
        case 'p': prompts = optarg; break;
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
    (void)comm;
    const char *src = argv[optind];
    struct stat stt;
    char *path = (stat(src, &stt) == 0 && S_ISDIR(stt.st_mode))
                     ? sl_path_join(src, "completions.h5")
                     : sl_strdup(src);
    sl_err err = {{0}};
    CompletionSet cs;
    memset(&cs, 0, sizeof cs);
    PromptSet ps;
    memset(&ps, 0, sizeof ps);
    int rc = EXIT_FAIL;
    FILE *f = stdout;
    char *tmp = NULL;
    if (h5_completions_read(&cs, path, &err)) goto done;
    if (prompts) {
        if (h5_prompts_read(&ps, prompts, &err)) goto done;
        if (!ps.prompt_text && !ps.request_id) {
            sl_errf(&err, "%s: --prompts: the file has neither 'prompt_text' nor 'request_id' "
                          "to add to the lines",
                    prompts);
            goto done;
        }
        for (int64_t i = 0; i < cs.n; i++)
            if (cs.prompt_index[i] < 0 || cs.prompt_index[i] >= ps.n) {
                sl_errf(&err, "%s answers prompt %" PRId64 " but %s holds %" PRId64
                              " prompts: is it the prompts file of this job?",
                        path, cs.prompt_index[i], prompts, ps.n);
                goto done;
            }
    }
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
        json_t *o = export_row(&cs, prompts ? &ps : NULL, i);
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!line) {
            sl_errf(&err, "row %" PRId64 ": cannot encode as JSON", i);
            goto done;
        }
        fputs(line, f);
        fputc('\n', f);
        free(line);
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
    } else if (fflush(stdout)) {
        sl_errf(&err, "stdout: cannot write: %s", strerror(errno));
        goto done;
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
    h5_prompts_free(&ps);
    return rc;
}
