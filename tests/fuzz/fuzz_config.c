// fuzz_config.c: libFuzzer target for the model config reader (src/config.c).
//
// The input is config.json text, optionally followed by a NUL byte and
// generation_config.json text: the bytes before the first NUL are the config,
// those after it (when there is a NUL) the generation config. Both go through
// config_parse, as config_load hands them over. On success the fields the
// header documents as checked must hold (shapes >= 1, heads divisible, at
// most CFG_MAX_EOS eos ids); on failure err must name something.
#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sl_log_set_level(-1);
    const uint8_t *nul = memchr(data, 0, size);
    size_t n_cfg = nul ? (size_t)(nul - data) : size;
    char *cfg = malloc(n_cfg + 1);
    memcpy(cfg, data, n_cfg);
    cfg[n_cfg] = 0;
    char *gen = NULL;
    if (nul) { // the rest, NUL-terminated (a later NUL just ends it early)
        size_t n_gen = size - n_cfg - 1;
        gen = malloc(n_gen + 1);
        memcpy(gen, nul + 1, n_gen);
        gen[n_gen] = 0;
    }
    ModelConfig c;
    sl_err err = {0};
    if (config_parse(&c, cfg, gen, "fuzz/config.json", &err) == 0) {
        if (c.vocab_size < 1 || c.dim < 1 || c.hidden_dim < 1 || c.n_layers < 1 ||
            c.n_heads < 1 || c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads || c.head_dim < 1 ||
            c.n_eos < 0 || c.n_eos > CFG_MAX_EOS || !(c.norm_eps > 0) || !(c.rope_theta > 0))
            abort();
        char buf[512];
        config_describe(&c, buf, sizeof buf);
    } else if (!err.msg[0]) {
        abort();
    }
    free(cfg);
    free(gen);
    return 0;
}
