// quant_awq.h: INT4 weight-only checkpoints in AutoAWQ's format: loading them
// (a hook of model.c's loader) and writing them (`sluice quantize --int4-awq`,
// `--int4-rtn`).
//
// AutoAWQ "gemm" layout of a quantised nn.Linear `P` (in_features I,
// out_features O, group size g):
//   P.qweight int32 (I, O/8)   8 nibbles per word along the output dimension,
//                              word c holds columns 8c + AWQ_ORDER[i] in bits [4i, 4i+4)
//   P.qzeros  int32 (I/g, O/8) zero points, packed the same way
//   P.scales  fp16  (I/g, O)
//   W^T[k][o] = (q[k][o] - zero[k/g][o]) * scale[k/g][o]
// config.json: quantization_config {quant_method "awq", bits 4, group_size g,
// zero_point true, version "gemm", modules_to_not_convert [...]}.
// sluice repacks this at load into its own layout (kernels/cpu/int4_cpu.h),
// slicing for tensor parallelism on the way.
#ifndef SLUICE_QUANT_AWQ_H
#define SLUICE_QUANT_AWQ_H

#include <stdint.h>

#include "model.h"
#include "safetensors.h"

// Nibble i of an AWQ word holds column AWQ_ORDER[i] of its 8.
extern const int AWQ_ORDER[8];

// Loads layer l's linear layers (wqkv, wo, wgu, wdown) of m from an AWQ
// checkpoint, this rank's slices: q/k/v, gate/up split by output rows (which
// must fall on AWQ's 8-column packing), o/down by input rows (which must fall
// on group boundaries); a clear error names the tensor and --tp otherwise.
// Projections without .qweight (modules_to_not_convert) load as plain weights;
// a fused matrix mixing both is dequantised to the plain format.
// Returns 1 without touching m when layer l holds no .qweight at all (not an
// AWQ checkpoint: model.c loads it), 0 when loaded, -1 with err on error.
// tmp / tmp_bias: model.c's host scratch (the largest fused matrix / bias).
int awq_load_layer(Model *m, const st_file *st, int l, float *tmp, float *tmp_bias, sl_err *err);

// Checks DIR/config.json's quantization_config when it has one: AWQ with
// bits 4 and version gemm, or no quantization at all. Fills *group (0 when
// not AWQ). The message names config.json and the field.
int awq_check_config(const char *dir, int *group, sl_err *err);

#endif

// ----------------------------------------------------------------------------
// writing AWQ checkpoints (`sluice quantize --int4-awq / --int4-rtn`)

typedef enum {
    AWQ_QUANT_RTN = 0, // round to nearest, group-wise, zero points
    AWQ_QUANT_AWQ,     // activation-aware scales + clipping search, then RTN
} AwqQuantMethod;

typedef struct {
    const char *model_dir;  // plain (f32/f16/bf16) Llama checkpoint
    const char *out_dir;    // created; config.json, model.safetensors, tokenizer files
    const char *calib_path; // prompts.h5 (tokens, or text tokenized here); AWQ only
    AwqQuantMethod method;
    int group;              // group size (128)
    int max_calib_tokens;   // calibration tokens used (each prompt cut at 512)
    int search_rows;        // activation rows kept per linear for the scale search
    int clip_rows;          // rows of those used by the clipping search
    int n_grid;             // grid points of the scale exponent alpha in [0, 1)
    int verbose;
} AwqQuantOptions;

void awq_quant_options_defaults(AwqQuantOptions *o);

// Quantises every decoder linear layer of o->model_dir to group-wise INT4 and
// writes an AutoAWQ gemm checkpoint to o->out_dir (the embeddings and LM head
// stay in their dtype; with AWQ the scales are folded into the RMSNorm weights
// (q|k|v, gate|up inputs), the up_proj rows (down_proj input) and, when every
// query head has its own kv head, the v_proj rows (o_proj input); norms are
// written F32). AWQ runs the model on the CPU backend over the calibration
// prompts and records each linear layer's inputs through a hook on the
// backend's linear op.
int awq_quantize(const AwqQuantOptions *o, sl_err *err);
