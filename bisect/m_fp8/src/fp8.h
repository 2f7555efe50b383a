// fp8.h: the FP8 E4M3 format on the host, and the quantisation rules every
// backend shares.
//
// E4M3 ("e4m3fn", OCP FP8): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no
// infinities, 0x7f / 0xff are NaN; largest finite 448, smallest subnormal
// 2^-9. Encoding rounds to nearest, ties to even, and saturates to +-448
// (what __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) does on the GPU),
// NaN stays NaN.
//
// The quantisation rules (one definition for the CPU emulation, the GPU
// kernels and the checkpoint tools, so the CPU backend is an exact twin):
//   code  = e4m3(x * inv),  inv = 1.0f / scale        (fp32 multiply, then RNE)
//   value = decode(code) * scale
//   dynamic per-row scale: scale = absmax(row) / 448.0f, or 1.0f when the row
//   is all zeros (fp32 divisions, IEEE-rounded on both sides).
#ifndef SLUICE_FP8_H
#define SLUICE_FP8_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define SL_E4M3_MAX 448.0f

// e4m3 byte -> float (exact).
static inline float sl_e4m3_to_f32(uint8_t c) {
    uint32_t e = (c >> 3) & 15, m = c & 7, u;
    float v;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) {
        v = (float)m * (1.0f / 512.0f); // subnormal: m * 2^-9
    } else {
        u = ((e - 7 + 127) << 23) | (m << 20); // (1 + m/8) * 2^(e-7)
        memcpy(&v, &u, 4);
    }
    return (c & 0x80) ? -v : v;
}

// float -> e4m3 byte: round to nearest even, saturate to +-448, NaN -> 0x7f.
static inline uint8_t sl_f32_to_e4m3(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7f;          // NaN
    if (u >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and inf): saturate
    if (u < 0x3c800000u) {                     // below 2^-6: the subnormal quantum 2^-9
        float a;
        memcpy(&a, &u, 4);
        // exact scaling; nearbyintf rounds half to even; 8 lands on the
        // smallest normal (code 0x08), as it should
        return sign | (uint8_t)nearbyintf(a * 512.0f);
    }
    // normal: keep 3 mantissa bits, round to nearest even on the 20 dropped
    // bits (a carry moves into the exponent by itself)
    uint32_t r = (u + 0x7ffffu + ((u >> 20) & 1u)) >> 20;
    uint32_t code = r - ((127u - 7u) << 3);
    if (code > 0x7e) code = 0x7e;
    return sign | (uint8_t)code;
}

// The dynamic scale of a row with largest magnitude absmax.
static inline float sl_fp8_dyn_scale(float absmax) {
    return absmax > 0.0f && absmax == absmax ? absmax / SL_E4M3_MAX : 1.0f;
}

// value of x after the round trip through e4m3 with `scale`
static inline float sl_fp8_fake(float x, float scale) {
    return sl_e4m3_to_f32(sl_f32_to_e4m3(x * (1.0f / scale))) * scale;
}

#endif
