// rope_partial.cu: rotary embedding of the first rotary_dim dims of each q and
// k head (partial rotary: GPT-NeoX, GPT-J, Phi-2 style), rotate_half pairing
// (j, j + rotary_dim/2) or GPT-J's interleaved pairing (2j, 2j + 1), fused
// with the write of k and v into the paged KV cache. The twin of
// cpu_rope_kv_write_ex; the common full-rotary rotate_half case keeps the
// tuned kernel of rope_kv.cu.
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
#include "ops_cuda.h"

#define ROPEP_BLOCK 128

typedef __nv_bfloat16 bf16;

static __global__ void rope_partial_kernel(bf16 *__restrict__ qkv, bf16 *__restrict__ k_cache,
                                           bf16 *__restrict__ v_cache,
                                           const int32_t *__restrict__ pos,
                                           const int32_t *__restrict__ slots,
                                           const float *__restrict__ inv_freq, int n_heads,
                                           int n_kv_heads, int head_dim, int block_size,
                                           int rotary_dim, int interleaved) {
    int i = blockIdx.x, half = rotary_dim / 2;
    int n_rot = n_heads + n_kv_heads;
    size_t stride = (size_t)(n_heads + 2 * n_kv_heads) * head_dim;
    bf16 *row = qkv + (size_t)i * stride;
    float p = (float)pos[i];
    // phase 1: rotate (head, pair) items in place
    for (int it = threadIdx.x; it < n_rot * half; it += blockDim.x) {
        int h = it / half, j = it % half;
        float s, c;
        sincosf(p * inv_freq[j], &s, &c);
        bf16 *hp = row + (size_t)h * head_dim;
        int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
        float x1 = __bfloat162float(hp[a]), x2 = __bfloat162float(hp[b]);
        hp[a] = __float2bfloat16_rn(x1 * c - x2 * s);
        hp[b] = __float2bfloat16_rn(x2 * c + x1 * s);
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
        bf16 *dst = (kv ? v_cache : k_cache) + cbase + (size_t)h * head_step + d;
        *dst = row[(size_t)(n_heads + kv * n_kv_heads + h) * head_dim + d];
    }
}

extern "C" void cuda_rope_kv_write_ex(sl_bf16 *qkv, sl_bf16 *k_cache, sl_bf16 *v_cache,
                                      const int32_t *pos, const int32_t *slots,
                                      const float *inv_freq, int n, int n_heads, int n_kv_heads,
                                      int head_dim, int block_size, int rotary_dim,
                                      int interleaved, cudaStream_t stream) {
    if (n <= 0) return;
    // rotary_dim 0: nothing rotates (learned positions), k and v are only cached
    SL_CHECK(rotary_dim >= 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim);
    rope_partial_kernel<<<(unsigned)n, ROPEP_BLOCK, 0, stream>>>(
        reinterpret_cast<bf16 *>(qkv), reinterpret_cast<bf16 *>(k_cache),
        reinterpret_cast<bf16 *>(v_cache), pos, slots, inv_freq, n_heads, n_kv_heads, head_dim,
        block_size, rotary_dim, interleaved);
    CUDA_CHECK_LAUNCH();
}
