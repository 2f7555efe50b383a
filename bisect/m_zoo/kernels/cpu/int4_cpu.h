// int4_cpu.h: group-wise INT4 weights (W4A16) on the CPU: the reference that
// the GPU kernels (kernels/cuda/w4a16.cu) are tested against and what the CPU
// backend runs for WFMT_INT4 linear layers.
//
// sluice's INT4 layout (the same on every backend; AWQ checkpoints are
// repacked into it at load, src/quant_awq.c):
//   qweight uint32 (out, in/8): word j of row o holds q[o][8j+p] in bits
//                               [4p, 4p+4), p = 0..7 (plain order)
//   scales  fp16   (out, in/group) raw IEEE half bits
//   zeros   uint8  (out, in/group) zero points 0..15, or NULL: symmetric,
//                               every zero point is 8
//   w[o][k] = ((float)q[o][k] - (float)zero[o][k/group]) * (float)scale[o][k/group]
// computed in fp32 (exact: a small integer times an fp16 value fits fp32's
// mantissa), so the dequantised weights are defined bit for bit; the GPU's
// tensor-core path rounds them to bf16 on top.
//
// group must be a positive multiple of 32 dividing in; in a multiple of 32.
#ifndef SLUICE_INT4_CPU_H
#define SLUICE_INT4_CPU_H

#include <stddef.h>
#include <stdint.h>

#define INT4_SYM_ZERO 8 // the implied zero point of symmetric weights

// dst (in) fp32 = row o of the dequantised weight.
void cpu_int4_dequant_row(float *dst, const uint32_t *qweight, const uint16_t *scales,
                          const uint8_t *zeros, int o, int in_dim, int group);

// dst (out, in) fp32 = the whole dequantised weight.
void cpu_int4_dequant(float *dst, const uint32_t *qweight, const uint16_t *scales,
                      const uint8_t *zeros, int out_dim, int in_dim, int group);

// y (n, out) = x (n, in) @ dequant(W)^T (+ bias (out) fp32). Each weight row is
// dequantised once and dotted with every x row in cpu_linear's summation
// order: the result equals cpu_linear on cpu_int4_dequant's output bit for bit.
void cpu_w4a16_linear(float *y, const float *x, const uint32_t *qweight,
                      const uint16_t *scales, const uint8_t *zeros, const float *bias, int n,
                      int in_dim, int out_dim, int group);

// Quantises w (out, in) fp32 group-wise to 4 bits, round to nearest:
// asymmetric (zeros != NULL): per group s = (max - min) / 15, z = round(-min / s)
// clamped to [0, 15]; symmetric (zeros == NULL): s = max|w| / 8 (q in [0, 15]
// around 8, so -8s..7s). q = clamp(round(w / s) + z, 0, 15). Scales are rounded to
// fp16 before q is computed. clip (out, in/group) or NULL: per-group
// maximum magnitudes: the group's min/max are clamped to [-clip, clip] first
// (AWQ's clipping search). Writes qweight, scales, zeros in the layout above.
void cpu_int4_quantize(uint32_t *qweight, uint16_t *scales, uint8_t *zeros, const float *w,
                       const float *clip, int out_dim, int in_dim, int group);

// Random INT4 weights for benchmarks and tests: uniform nibbles, zero points
// uniform in 0..15 and scales uniform in [scale/2, 3*scale/2) (fp16), each a
// function of (seed, index) only (splitmix64), so cuda_int4_fill_random
// produces the same bits. zeros may be NULL.
void cpu_int4_fill_random(uint32_t *qweight, uint16_t *scales, uint8_t *zeros, int out_dim,
                          int in_dim, int group, uint64_t seed, float scale);

#endif
