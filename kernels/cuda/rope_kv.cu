// rope_kv.cu: rotary position embedding of q and k, fused with the write of
// k and v into the paged KV cache.
//
// qkv row i holds n_heads q heads, then n_kv_heads k heads, then n_kv_heads v
// heads, head_dim each. Each q and k head is rotated in place by position
// pos[i] with the HF rotate_half pairing (element j with j + head_dim/2):
//   a = (float)pos * inv_freq[j]
//   x[j]        = x[j] * cos(a) - x[j + half] * sin(a)
//   x[j + half] = x[j + half] * cos(a) + x[j] * sin(a)
// then the rotated k heads and the v heads go to the cache slot slots[i]:
//   block = slot / block_size, off = slot % block_size,
//   k_cache[((block * n_kv_heads + h) * block_size + off) * head_dim + d]
// Rows with slot < 0 are padding: they are rotated, but nothing is written to
// the cache for them.
//
// Memory-bound, one block per row. The row's cos/sin table (head_dim/2
// values) is computed once into shared memory and reused by all its heads.
// The angle is formed in fp32 exactly as the CPU twin (and HF) do, and
// sincosf is the accurate one: positions reach 128k and beyond, where the
// fast __sinf/__cosf lose all precision. When head_dim % 16 == 0 (so each half
// is whole 16-byte vectors) and the bases are 16-byte aligned, each work item
// is 8 pairs moved as two 16-byte loads and stores; other head dims (18, 72)
// take a scalar item per pair. The k cache write reuses the rotated values in
// registers, so k is never read back.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh"
#include "ops_cuda.h"

#define ROPE_BLOCK 128

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// helpers

static __device__ __forceinline__ void bf16x8_to_f32(uint4 v, float f[8]) {
    const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(p[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}

static __device__ __forceinline__ uint4 f32_to_bf16x8(const float f[8]) {
    uint4 v;
    __nv_bfloat162 *p = reinterpret_cast<__nv_bfloat162 *>(&v);
#pragma unroll
    for (int k = 0; k < 4; k++) p[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    return v;
}

// Fills cs[0, half) with cos and cs[half, 2*half) with sin of the row's
// angles; ends with a barrier.
static __device__ __forceinline__ void rope_table(float *cs, int p, const float *inv_freq,
                                                  int half) {
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float s, c;
        sincosf((float)p * inv_freq[j], &s, &c);
        cs[j] = c;
        cs[half + j] = s;
    }
    __syncthreads();
}

// ----------------------------------------------------------------------------
// kernels

// Eight k or v values (bf16, as rounded in qkv) into the cache: as they
// are, or as e4m3 codes of value * inv (8 bytes; the generic kernel's
// rounding, two codes per cvt).
template <typename TK> struct KvPut8;
template <> struct KvPut8<bf16> {
    static __device__ __forceinline__ void put(bf16 *dst, uint4 v, float) {
        *reinterpret_cast<uint4 *>(dst) = v;
    }
};
template <> struct KvPut8<uint8_t> {
    static __device__ __forceinline__ void put(uint8_t *dst, uint4 v, float inv) {
        float f[8];
        bf16x8_to_f32(v, f);
        uint32_t w[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(f[4 * k] * inv, f[4 * k + 1] * inv),
                                                         __NV_SATFINITE, __NV_E4M3);
            const uint32_t hi = __nv_cvt_float2_to_fp8x2(
                make_float2(f[4 * k + 2] * inv, f[4 * k + 3] * inv), __NV_SATFINITE, __NV_E4M3);
            w[k] = (lo & 0xffffu) | (hi << 16);
        }
        *reinterpret_cast<uint2 *>(dst) = make_uint2(w[0], w[1]);
    }
};

// Vector path: head_dim % 16 == 0, bf16 activations, a bf16 or FP8 cache
// (TK uint8_t: k_inv, v_inv = 1 / scale). Work items of one row, in order:
//   [0, n_rot * hv)            rotate 8 pairs of q/k head it / hv (k: and cache)
//   [n_rot * hv, + n_kv * vv)  copy 8 elements of a v head to the cache
// with hv = half / 8 and vv = head_dim / 8. Dynamic shared memory: head_dim floats.
template <typename TK>
static __global__ void rope_kv_vec_kernel(bf16 *__restrict__ qkv, TK *__restrict__ k_cache,
                                          TK *__restrict__ v_cache,
                                          const int32_t *__restrict__ pos,
                                          const int32_t *__restrict__ slots,
                                          const float *__restrict__ inv_freq, int n_heads,
                                          int n_kv_heads, int head_dim, int block_size,
                                          float k_inv, float v_inv) {
    extern __shared__ float cs[];
    int i = blockIdx.x, half = head_dim / 2;
    rope_table(cs, pos[i], inv_freq, half);

    int n_rot = n_heads + n_kv_heads;
    size_t stride = (size_t)(n_heads + 2 * n_kv_heads) * head_dim;
    bf16 *row = qkv + (size_t)i * stride;
    int slot = slots[i];
    // Offset of this slot's head-0 entry; kv head h adds h * block_size * head_dim.
    size_t cbase = slot >= 0 ? ((size_t)(slot / block_size) * n_kv_heads * block_size +
                                (size_t)(slot % block_size)) * head_dim
                             : 0;
    size_t head_step = (size_t)block_size * head_dim;
    int hv = half / 8, vv = head_dim / 8;
    int n_rot_items = n_rot * hv;
    int n_items = n_rot_items + (slot >= 0 ? n_kv_heads * vv : 0);

    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        if (it < n_rot_items) {
            int h = it / hv, j0 = (it % hv) * 8;
            uint4 *a = reinterpret_cast<uint4 *>(row + (size_t)h * head_dim + j0);
            uint4 *b = reinterpret_cast<uint4 *>(row + (size_t)h * head_dim + half + j0);
            uint4 av = *a, bv = *b;
            float x1[8], x2[8], o1[8], o2[8];
            bf16x8_to_f32(av, x1);
            bf16x8_to_f32(bv, x2);
            const float4 *c4 = reinterpret_cast<const float4 *>(cs + j0);
            const float4 *s4 = reinterpret_cast<const float4 *>(cs + half + j0);
            float4 ca = c4[0], cb = c4[1], sa = s4[0], sb = s4[1];
            const float c[8] = {ca.x, ca.y, ca.z, ca.w, cb.x, cb.y, cb.z, cb.w};
            const float s[8] = {sa.x, sa.y, sa.z, sa.w, sb.x, sb.y, sb.z, sb.w};
#pragma unroll
            for (int e = 0; e < 8; e++) {
                o1[e] = x1[e] * c[e] - x2[e] * s[e];
                o2[e] = x2[e] * c[e] + x1[e] * s[e];
            }
            uint4 ov1 = f32_to_bf16x8(o1), ov2 = f32_to_bf16x8(o2);
            *a = ov1;
            *b = ov2;
            if (h >= n_heads && slot >= 0) { // a k head: also to the cache
                TK *dst = k_cache + cbase + (size_t)(h - n_heads) * head_step;
                KvPut8<TK>::put(dst + j0, ov1, k_inv);
                KvPut8<TK>::put(dst + half + j0, ov2, k_inv);
            }
        } else {
            int v_it = it - n_rot_items;
            int h = v_it / vv, d0 = (v_it % vv) * 8;
            const uint4 *src =
                reinterpret_cast<const uint4 *>(row + (size_t)(n_rot + h) * head_dim + d0);
            KvPut8<TK>::put(v_cache + cbase + (size_t)h * head_step + d0, *src, v_inv);
        }
    }
}

// Scalar path, any head_dim: items are single pairs (n_rot * half of them),
// then single v elements (n_kv * head_dim). With an odd head_dim the last
// element of a head is in no pair: it is left as is (as the CPU twin does)
// and the pair-0 item of each k head copies it to the cache.
static __global__ void rope_kv_scalar_kernel(bf16 *__restrict__ qkv,
                                             bf16 *__restrict__ k_cache,
                                             bf16 *__restrict__ v_cache,
                                             const int32_t *__restrict__ pos,
                                             const int32_t *__restrict__ slots,
                                             const float *__restrict__ inv_freq, int n_heads,
                                             int n_kv_heads, int head_dim, int block_size) {
    extern __shared__ float cs[];
    int i = blockIdx.x, half = head_dim / 2;
    rope_table(cs, pos[i], inv_freq, half);

    int n_rot = n_heads + n_kv_heads;
    size_t stride = (size_t)(n_heads + 2 * n_kv_heads) * head_dim;
    bf16 *row = qkv + (size_t)i * stride;
    int slot = slots[i];
    size_t cbase = slot >= 0 ? ((size_t)(slot / block_size) * n_kv_heads * block_size +
                                (size_t)(slot % block_size)) * head_dim
                             : 0;
    size_t head_step = (size_t)block_size * head_dim;
    int n_rot_items = n_rot * half;
    int n_items = n_rot_items + (slot >= 0 ? n_kv_heads * head_dim : 0);

    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        if (it < n_rot_items) {
            int h = it / half, j = it % half;
            bf16 *hp = row + (size_t)h * head_dim;
            float x1 = __bfloat162float(hp[j]), x2 = __bfloat162float(hp[j + half]);
            float c = cs[j], s = cs[half + j];
            bf16 o1 = __float2bfloat16_rn(x1 * c - x2 * s);
            bf16 o2 = __float2bfloat16_rn(x2 * c + x1 * s);
            hp[j] = o1;
            hp[j + half] = o2;
            if (h >= n_heads && slot >= 0) {
                bf16 *dst = k_cache + cbase + (size_t)(h - n_heads) * head_step;
                dst[j] = o1;
                dst[j + half] = o2;
                if ((head_dim & 1) && j == 0) dst[head_dim - 1] = hp[head_dim - 1];
            }
        } else {
            int v_it = it - n_rot_items;
            int h = v_it / head_dim, d = v_it % head_dim;
            v_cache[cbase + (size_t)h * head_step + d] = row[(size_t)(n_rot + h) * head_dim + d];
        }
    }
}

// ----------------------------------------------------------------------------
// launcher + entry point

// qkv (n, (n_heads + 2*n_kv_heads) * head_dim) bf16, rotated in place;
// k_cache, v_cache (n_blocks, n_kv_heads, block_size, head_dim) bf16;
// pos, slots (n); inv_freq (head_dim / 2) fp32. Rows with slots[i] < 0 are
// rotated but not written to the cache. Slots of one call must be distinct.
extern "C" void cuda_rope_kv_write(sl_bf16 *qkv, sl_bf16 *k_cache, sl_bf16 *v_cache,
                                   const int32_t *pos, const int32_t *slots,
                                   const float *inv_freq, int n, int n_heads, int n_kv_heads,
                                   int head_dim, int block_size, cudaStream_t stream) {
    if (n <= 0 || head_dim <= 0) return;
    uintptr_t addr = (uintptr_t)qkv | (uintptr_t)k_cache | (uintptr_t)v_cache;
    size_t smem = sizeof(float) * (size_t)(head_dim / 2) * 2;
    bf16 *q = reinterpret_cast<bf16 *>(qkv);
    bf16 *kc = reinterpret_cast<bf16 *>(k_cache);
    bf16 *vc = reinterpret_cast<bf16 *>(v_cache);
    if (head_dim % 16 == 0 && addr % 16 == 0)
        rope_kv_vec_kernel<bf16><<<n, ROPE_BLOCK, smem, stream>>>(q, kc, vc, pos, slots, inv_freq,
                                                                  n_heads, n_kv_heads, head_dim,
                                                                  block_size, 1.0f, 1.0f);
    else
        rope_kv_scalar_kernel<<<n, ROPE_BLOCK, smem, stream>>>(q, kc, vc, pos, slots, inv_freq,
                                                               n_heads, n_kv_heads, head_dim,
                                                               block_size);
    CUDA_CHECK_LAUNCH();
}

// ----------------------------------------------------------------------------
// generic: activation type TA (float or bf16) and cache type TK (TA, or
// uint8_t for e4m3 codes of value / scale). The scalar kernel's work items;
// a k value goes to the cache as rounded to TA (what stays in qkv), then
// encoded.

template <typename TA, typename TK>
static __global__ void rope_kv_gen_kernel(TA *__restrict__ qkv, TK *__restrict__ k_cache,
                                          TK *__restrict__ v_cache,
                                          const int32_t *__restrict__ pos,
                                          const int32_t *__restrict__ slots,
                                          const float *__restrict__ inv_freq, int n_heads,
                                          int n_kv_heads, int head_dim, int block_size,
                                          float k_inv, float v_inv) {
    extern __shared__ float cs[];
    int i = blockIdx.x, half = head_dim / 2;
    rope_table(cs, pos[i], inv_freq, half);

    int n_rot = n_heads + n_kv_heads;
    size_t stride = (size_t)(n_heads + 2 * n_kv_heads) * head_dim;
    TA *row = qkv + (size_t)i * stride;
    int slot = slots[i];
    size_t cbase = slot >= 0 ? ((size_t)(slot / block_size) * n_kv_heads * block_size +
                                (size_t)(slot % block_size)) * head_dim
                             : 0;
    size_t head_step = (size_t)block_size * head_dim;
    int n_rot_items = n_rot * half;
    int n_items = n_rot_items + (slot >= 0 ? n_kv_heads * head_dim : 0);

    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        if (it < n_rot_items) {
            int h = it / half, j = it % half;
            TA *hp = row + (size_t)h * head_dim;
            float x1 = ActT<TA>::load(hp[j]), x2 = ActT<TA>::load(hp[j + half]);
            float c = cs[j], sn = cs[half + j];
            TA o1 = ActT<TA>::store(x1 * c - x2 * sn);
            TA o2 = ActT<TA>::store(x2 * c + x1 * sn);
            hp[j] = o1;
            hp[j + half] = o2;
            if (h >= n_heads && slot >= 0) {
                TK *dst = k_cache + cbase + (size_t)(h - n_heads) * head_step;
                dst[j] = KvT<TK>::put(ActT<TA>::load(o1), k_inv);
                dst[j + half] = KvT<TK>::put(ActT<TA>::load(o2), k_inv);
                if ((head_dim & 1) && j == 0)
                    dst[head_dim - 1] = KvT<TK>::put(ActT<TA>::load(hp[head_dim - 1]), k_inv);
            }
        } else {
            int v_it = it - n_rot_items;
            int h = v_it / head_dim, d = v_it % head_dim;
            v_cache[cbase + (size_t)h * head_step + d] =
                KvT<TK>::put(ActT<TA>::load(row[(size_t)(n_rot + h) * head_dim + d]), v_inv);
        }
    }
}

extern "C" void cuda_rope_kv_write_ex(void *qkv, void *k_cache, void *v_cache,
                                      const int32_t *pos, const int32_t *slots,
                                      const float *inv_freq, int n, int n_heads, int n_kv_heads,
                                      int head_dim, int block_size, int act_f32, int kv_fp8,
                                      float k_scale, float v_scale, cudaStream_t stream) {
    if (n <= 0 || head_dim <= 0) return;
    if (!act_f32 && !kv_fp8) {
        cuda_rope_kv_write((sl_bf16 *)qkv, (sl_bf16 *)k_cache, (sl_bf16 *)v_cache, pos, slots,
                           inv_freq, n, n_heads, n_kv_heads, head_dim, block_size, stream);
        return;
    }
    size_t smem = sizeof(float) * (size_t)(head_dim / 2) * 2;
    float k_inv = 1.0f / k_scale, v_inv = 1.0f / v_scale;
    // bf16 activations into an FP8 cache: 16-byte items where the head
    // dimension and the bases allow (8-byte cache stores)
    if (!act_f32 && head_dim % 16 == 0 && (uintptr_t)qkv % 16 == 0 &&
        ((uintptr_t)k_cache | (uintptr_t)v_cache) % 8 == 0) {
        rope_kv_vec_kernel<uint8_t><<<n, ROPE_BLOCK, smem, stream>>>(
            static_cast<bf16 *>(qkv), static_cast<uint8_t *>(k_cache),
            static_cast<uint8_t *>(v_cache), pos, slots, inv_freq, n_heads, n_kv_heads, head_dim,
            block_size, k_inv, v_inv);
        CUDA_CHECK_LAUNCH();
        return;
    }
#define ROPE_GEN(TA, TK)                                                                   \
    rope_kv_gen_kernel<TA, TK><<<n, ROPE_BLOCK, smem, stream>>>(                           \
        static_cast<TA *>(qkv), static_cast<TK *>(k_cache), static_cast<TK *>(v_cache), pos, \
        slots, inv_freq, n_heads, n_kv_heads, head_dim, block_size, k_inv, v_inv)
    if (act_f32) {
        if (kv_fp8) ROPE_GEN(float, uint8_t); else ROPE_GEN(float, float);
    } else {
        ROPE_GEN(bf16, uint8_t);
    }
#undef ROPE_GEN
    CUDA_CHECK_LAUNCH();
}
