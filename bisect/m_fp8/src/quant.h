// quant.h: quantised checkpoints: how model.c reads the weights of an FP8
// checkpoint, and the `sluice quantize` writers.
//
// Formats read (detected from the tensors themselves, see quant_fp8_detect):
//   compressed-tensors (llm-compressor; config.json quantization_config
//     .quant_method = "compressed-tensors"): <proj>.weight F8_E4M3 (out, in),
//     <proj>.weight_scale fp32/bf16 of shape [], [1] (per tensor) or
//     [out, 1] (per channel), optional <proj>.input_scale (static activation
//     scale; absent: dynamic per token), optional self_attn.{k,v}_scale.
//   NVIDIA ModelOpt (quant_method = "modelopt", hf_quant_config.json):
//     <proj>.weight F8_E4M3, <proj>.weight_scale [] per tensor,
//     <proj>.input_scale [], and self_attn.k_proj.k_scale /
//     self_attn.v_proj.v_scale for an FP8 KV cache.
// Both store dequantised = code * weight_scale.
#ifndef SLUICE_QUANT_H
#define SLUICE_QUANT_H

#include <stdint.h>

#include "common.h"
#include "safetensors.h"

typedef enum {
    QCKPT_NONE = 0,   // plain float checkpoint
    QCKPT_FP8,        // F8_E4M3 weights with weight_scale (either format above)
} QuantCkpt;

// What the checkpoint holds: QCKPT_FP8 when layer 0's q_proj.weight is
// F8_E4M3 (then every linear of the decoder must be), else QCKPT_NONE.
QuantCkpt quant_detect(const st_file *st);

// Reads rows [r0, r0+nr) x cols [c0, c0+nc) of the FP8 weight `wname`
// (shape (R, C), F8_E4M3) dequantised to fp32 into dst (nr, nc), and the
// per-row scales of those rows into row_scale (nr) (a per-tensor scale is
// replicated). When the weight has an input_scale, *in_scale becomes the
// larger of itself and it; a weight without one sets *no_in_scale. Errors
// name the tensor and the file.
int quant_fp8_slice(const st_file *st, const char *wname, int64_t R, int64_t C, int64_t r0,
                    int64_t nr, int64_t c0, int64_t nc, float *dst, float *row_scale,
                    float *in_scale, int *no_in_scale, sl_err *err);

// A layer's KV cache scales, if the checkpoint has them (prefix
// "model.layers.<l>.self_attn."): *k, *v set and 1 returned; 0 when absent.
int quant_kv_scales(const st_file *st, int layer, float *k, float *v, sl_err *err);

// ----------------------------------------------------------------------------
// writers (`sluice quantize`, cli_quantize.c)

typedef enum {
    QUANT_NONE = 0,
    QUANT_FP8,      // --fp8
    // QUANT_INT4_AWQ: the INT4 AWQ writer's place
} QuantScheme;

typedef enum {
    QFMT_COMPRESSED_TENSORS = 0, // llm-compressor's layout
    QFMT_MODELOPT,               // NVIDIA ModelOpt's unified HF layout
} QuantFormat;

typedef struct {
    const char *model_dir, *out_dir;
    const char *calib;  // prompts file for calibration, or NULL
    int calib_max;      // prompts used at most
    int per_tensor;     // FP8: one weight scale per tensor
    QuantFormat format;
    int threads;
} QuantJob;

// Writes the FP8 checkpoint job describes (quant_fp8_write.c): OUTDIR/
// model.safetensors (linear weights F8_E4M3 with weight_scale, input_scale
// and KV scales when calibrated; everything else bf16), config.json with
// quantization_config (and hf_quant_config.json for modelopt), the
// tokenizer files copied. Errors name the file.
int quant_write_fp8(const QuantJob *job, sl_err *err);

#endif
