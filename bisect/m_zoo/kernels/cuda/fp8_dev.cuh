// fp8_dev.cuh: device helpers shared by the kernels that read or write FP8
// E4M3 or take the activation type as a template parameter (float or bf16).
//
// The rounding rules are those of src/fp8.h: code = e4m3(x * (1/scale)),
// round to nearest even with saturation to +-448 (cvt.rn.satfinite), and a
// dynamic row scale of absmax / 448 (1 for an all-zero row).
#ifndef SLUICE_FP8_DEV_CUH
#define SLUICE_FP8_DEV_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#define SL_E4M3_MAX_DEV 448.0f

static __device__ __forceinline__ uint8_t f32_to_e4m3(float x) {
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

static __device__ __forceinline__ float e4m3_to_f32(uint8_t c) {
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3);
    return __half2float(__half(h));
}

// Two e4m3 codes (low byte first) -> a bf16 pair in one word, low half =
// first code. Exact: every e4m3 value is a bf16 value.
static __device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint16_t two) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
    float2 f = __half22float2(__half2(h));
    __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
    return *reinterpret_cast<uint32_t *>(&b);
}

static __device__ __forceinline__ float fp8_dyn_scale(float absmax) {
    return absmax > 0.0f ? absmax / SL_E4M3_MAX_DEV : 1.0f;
}

// activation type <-> float
template <typename T> struct ActT;
template <> struct ActT<float> {
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};
template <> struct ActT<__nv_bfloat16> {
    static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 store(float v) {
        return __float2bfloat16_rn(v);
    }
};

// A KV cache element: the activation type, or an e4m3 code (inv = 1/scale).
template <typename TK> struct KvT {
    static __device__ __forceinline__ TK put(float v, float inv) { return ActT<TK>::store(v); }
    static __device__ __forceinline__ float get(TK v) { return ActT<TK>::load(v); }
};
template <> struct KvT<uint8_t> {
    static __device__ __forceinline__ uint8_t put(float v, float inv) {
        return f32_to_e4m3(v * inv);
    }
    static __device__ __forceinline__ float get(uint8_t v) { return e4m3_to_f32(v); }
};

// Largest value over the blockDim.x threads of this row (blockDim.x a
// multiple of 32; threadIdx.y = row in block). Every thread of the block must
// call it; all get the row's max. `red` has blockDim.x/32 * blockDim.y floats.
static __device__ __forceinline__ float block_row_max(float v, float *red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int warps = blockDim.x / 32;
    if (warps == 1) return v;
    int first = threadIdx.y * warps;
    __syncthreads(); // red may still be read by an earlier reduction
    if (threadIdx.x % 32 == 0) red[first + threadIdx.x / 32] = v;
    __syncthreads();
    float m = 0.0f;
    for (int k = 0; k < warps; k++) m = fmaxf(m, red[first + k]);
    return m;
}

#endif
