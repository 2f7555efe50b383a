// model.h: the Llama-family decoder, written once against backend.h.
//
//   Config -> Weights -> RunState, as in llama2.c: model_load reads the
//   checkpoint (this rank's slices of it) into backend memory and sizes every
//   activation buffer for the worst step (max_tokens rows, max_seqs logits);
//   model_forward runs one packed step (batch.h) and returns fp32 logits for the
//   rows that asked for them.
#ifndef SLUICE_MODEL_H
#define SLUICE_MODEL_H

#include "backend.h"
#include "config.h"
#include "safetensors.h"

typedef struct {
    void *attn_norm;    // (dim) fp32
    LinearWeight wqkv;  // ((n_heads + 2*n_kv_heads)*head_dim / tp, dim): q, k, v rows fused
    LinearWeight wo;    // (dim, n_heads*head_dim / tp)
    void *ffn_norm;     // (dim) fp32
    LinearWeight wgu;   // (2*hidden_dim / tp, dim): gate rows then up rows
    LinearWeight wdown; // (dim, hidden_dim / tp)
} LayerWeights;

typedef struct {
    int max_tokens;  // rows per step (--max-num-tokens)
    int max_seqs;    // sequences per step (--max-batch)
    int tp_rank, tp_size;
    // Sums a backend buffer of n activations across the tensor-parallel group,
    // in place. NULL when tp_size == 1.
    void (*allreduce)(void *ctx, void *buf, size_t n);
    void *allreduce_ctx;
} ModelOptions;

typedef struct {
    ModelConfig cfg;
    ModelOptions opt;
    Backend *be;
    AttnShape attn;     // this rank's heads
    int hidden_local;   // hidden_dim / tp_size

    // weights (backend memory)
    void *embed;        // (vocab, dim) activation dtype
    LayerWeights *layers; // (n_layers)
    void *final_norm;   // (dim) fp32
    LinearWeight lm_head; // (vocab, dim)
    void *inv_freq;     // (head_dim/2) fp32 rotary frequencies

    // KV pool (backend memory), attached by model_kv_alloc
    int kv_blocks;
    void *k_cache, *v_cache; // (n_layers, kv_blocks, n_kv_heads, block_size, head_dim)
    size_t kv_layer_elems;   // elements per layer in each of k_cache, v_cache

    // run state (backend memory), sized for opt.max_tokens / opt.max_seqs
    void *x;    // (max_tokens, dim) residual stream
    void *h;    // (max_tokens, dim) normed input of a sublayer
    void *qkv;  // (max_tokens, qkv_dim)
    void *att;  // (max_tokens, n_heads*head_dim)
    void *o;    // (max_tokens, dim) sublayer output
    void *gu;   // (max_tokens, 2*hidden_local)
    void *act;  // (max_tokens, hidden_local)
    void *xl;   // (max_seqs, dim) rows that want logits
    void *hl;   // (max_seqs, dim)
} Model;

// Loads the model in `dir` (config.json, safetensors) onto the backend.
// Checks every tensor's presence, dtype and shape before using it; errors name
// the file and tensor. On success *out is the caller's to model_free.
int model_load(Model **out, const char *dir, Backend *be, const ModelOptions *opt,
               sl_err *err);

// Same with an already parsed config and an opened checkpoint (tests, bench).
int model_load_from(Model **out, const ModelConfig *cfg, const st_file *st, Backend *be,
                    const ModelOptions *opt, sl_err *err);

// Bytes of one KV block (all layers, K and V) on this rank.
size_t model_kv_block_bytes(const Model *m, int block_size);

// Allocates the KV pool: n_blocks blocks of block_size tokens.
void model_kv_alloc(Model *m, int n_blocks, int block_size);

// Runs one step. b is the host batch; logits (b->n_logits, vocab) fp32 host.
void model_forward(Model *m, const Batch *b, float *logits);

void model_free(Model *m); // NULL is a no-op

#endif
