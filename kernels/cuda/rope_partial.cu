// rope_partial.cu: rotary embedding of the first rotary_dim dims of each q and
// k head (partial rotary: GPT-NeoX, GPT-J, Phi-2 style), rotate_half pairing
// (j, j + rotary_dim/2) or GPT-J's interleaved pairing (2j, 2j + 1), fused
// with the write of k and v into the paged KV cache. rotary_dim 0 rotates
// nothing (learned positions, ALiBi): k and v are only cached. The twin of
// cpu_rope_kv_write_ex (+ cpu_kv_round_fp8 for an FP8 cache); the common
// full-rotary rotate_half case keeps the tuned kernels of rope_kv.cu.
//
// Activations TA bf16 or fp32 (--dtype f32); the cache TK the activation type
// or FP8 E4M3 (--kv-dtype fp8: code = e4m3(k / k_scale), as rope_kv.cu). A k
// value goes to the cache as it stands in qkv after the rotation (rounded to
// TA), then encoded.
//
// One block per row, in two phases split by a barrier: rotate every pair of
// the row in place (the angle in fp32 as the CPU and HF form it, accurate
// sincosf), then copy the row's k and v heads to the cache slot (slot < 0:
// padding, not cached). Scalar items: any head_dim and alignment.
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "common.h" // C linkage for sl_fatal, which CUDA_CHECK calls
}
#include "fp8_dev.cuh" // ActT, KvT: activation and cache element types
#include "ops_cuda.h"

#define ROPEP_BLOCK 128

typedef __nv_bfloat16 bf16;

// qkv (n, (n_heads + 2*n_kv_heads)*head_dim) of TA; k_cache, v_cache
// (n_blocks, n_kv_heads, block_size, head_dim) of TK; k_inv, v_inv: 1/scale
// of an FP8 cache (unused otherwise).
template <typename TA, typename TK>
static __global__ void rope_partial_kernel(TA *__restrict__ qkv, TK *__restrict__ k_cache,
                                           TK *__restrict__ v_cache,
                                           const int32_t *__restrict__ pos,
                                           const int32_t *__restrict__ slots,
                                           const float *__restrict__ inv_freq, int n_heads,
                                           int n_kv_heads, int head_dim, int block_size,
                                           int rotary_dim, int interleaved, float k_inv,
                                           float v_inv) {
    int i = blockIdx.x, half = rotary_dim / 2;
    int n_rot = n_heads + n_kv_heads;
    size_t stride = (size_t)(n_heads + 2 * n_kv_heads) * head_dim;
    TA *row = qkv + (size_t)i * stride;
    float p = (float)pos[i];
    // phase 1: rotate (head, pair) items in place
    for (int it = threadIdx.x; it < n_rot * half; it += blockDim.x) {
        int h = it / half, j = it % half;
        float s, c;
        sincosf(p * inv_freq[j], &s, &c);
        TA *hp = row + (size_t)h * head_dim;
        int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
        float x1 = ActT<TA>::load(hp[a]), x2 = ActT<TA>::load(hp[b]);
        hp[a] = ActT<TA>::store(x1 * c - x2 * s);
        hp[b] = ActT<TA>::store(x2 * c + x1 * s);
    }
    int slot = slots[i];
    if (slot < 0) return; // the whole block returns together: no barrier left behind
    __syncthreads();
    // phase 2: k heads (rotated) and v heads to the cache
    size_t cbase = ((size_t)(slot / block_size) * n_kv_heads * block_size +
                    (size_t)(slot % block_size)) * head_dim;
    size_t head_step = (size_t)block_size * head_dim;
    for (int it = threadIdx.x; it < 2 * n_kv_heads * head_dim; it += blockDim.x) {
        int kv = it / (n_kv_heads * head_dim), rem = it % (n_kv_heads * head_dim);
        int h = rem / head_dim, d = rem % head_dim;
        TK *dst = (kv ? v_cache : k_cache) + cbase + (size_t)h * head_step + d;
        float v = ActT<TA>::load(row[(size_t)(n_heads + kv * n_kv_heads + h) * head_dim + d]);
        *dst = KvT<TK>::put(v, kv ? v_inv : k_inv);
    }
}

template <typename TA, typename TK>
static void rope_partial_launch(void *qkv, void *k_cache, void *v_cache, const int32_t *pos,
                                const int32_t *slots, const float *inv_freq, int n, int n_heads,
                                int n_kv_heads, int head_dim, int block_size, int rotary_dim,
                                int interleaved, float k_scale, float v_scale,
                                cudaStream_t stream) {
    if (n <= 0) return;
    SL_CHECK(rotary_dim >= 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim);
    rope_partial_kernel<TA, TK><<<(unsigned)n, ROPEP_BLOCK, 0, stream>>>(
        static_cast<TA *>(qkv), static_cast<TK *>(k_cache), static_cast<TK *>(v_cache), pos,
        slots, inv_freq, n_heads, n_kv_heads, head_dim, block_size, rotary_dim, interleaved,
        1.0f / k_scale, 1.0f / v_scale);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_rope_kv_write_partial(sl_bf16 *qkv, sl_bf16 *k_cache, sl_bf16 *v_cache,
                                           const int32_t *pos, const int32_t *slots,
                                           const float *inv_freq, int n, int n_heads,
                                           int n_kv_heads, int head_dim, int block_size,
                                           int rotary_dim, int interleaved, cudaStream_t stream) {
    rope_partial_launch<bf16, bf16>(qkv, k_cache, v_cache, pos, slots, inv_freq, n, n_heads,
                                    n_kv_heads, head_dim, block_size, rotary_dim, interleaved,
                                    1.0f, 1.0f, stream);
}

extern "C" void cuda_rope_kv_write_partial_ex(void *qkv, void *k_cache, void *v_cache,
                                              const int32_t *pos, const int32_t *slots,
                                              const float *inv_freq, int n, int n_heads,
                                              int n_kv_heads, int head_dim, int block_size,
                                              int rotary_dim, int interleaved, int act_f32,
                                              int kv_fp8, float k_scale, float v_scale,
                                              cudaStream_t stream) {
#define ROPEP(TA, TK)                                                                        \
    rope_partial_launch<TA, TK>(qkv, k_cache, v_cache, pos, slots, inv_freq, n, n_heads,     \
                                n_kv_heads, head_dim, block_size, rotary_dim, interleaved,   \
                                k_scale, v_scale, stream)
    if (act_f32) {
        if (kv_fp8) ROPEP(float, uint8_t); else ROPEP(float, float);
    } else {
        if (kv_fp8) ROPEP(bf16, uint8_t); else ROPEP(bf16, bf16);
    }
#undef ROPEP
}
