// wgmma_dev.cuh: Hopper warpgroup MMA (wgmma.mma_async) helpers, sm_90a.
//
// A warpgroup (4 warps, 128 threads) computes a 64 x N tile. The fp32
// accumulator layout is the mma.sync m16n8 one, repeated: warp w of the group
// holds rows 16w + lane/4 and 16w + lane/4 + 8, and for each n8 column block
// j the registers d[4j .. 4j+3] are (row, 8j + 2(lane%4) + {0, 1}) then
// (row + 8, the same columns). An A operand from registers uses the mma.sync
// m16n8k16 A-fragment layout of the warp's 16 rows, so two n8 blocks of an
// accumulator, rounded to bf16 pairs, are the A fragment of one k16 step.
//
// Shared-memory operands are described by a 64-bit descriptor (PTX ISA,
// "Matrix Descriptor Format" and "Canonical Layouts"). The layout used here
// is the 128-byte swizzle of bf16 tiles whose rows are 128 bytes (64
// elements): an atom of 8 rows x 128 bytes (1024 bytes, 1024-aligned), the
// 16-byte chunk j of row r stored at chunk j ^ (r % 8) of its row, atoms of
// consecutive 8-row groups 1024 bytes apart (the stride byte offset, SBO).
// - K-major operand (rows = M or N, the 64 elements of a row along K): a
//   k16 step at element k0 of the row starts 2 * k0 bytes into the atom (the
//   hardware applies the XOR to the final address); the leading byte offset
//   is unused.
// - MN-major operand (rows = K, the 64 elements along M or N; the transpose
//   bit set): a k16 step starts two atoms down; the next 64 columns of M/N
//   (another 64-element column block of the tile) are LBO bytes away.
// A tile of [R][128] bf16 is two such column blocks of R rows, R * 128 bytes
// apart (wg_sw128_off), so one tile serves as K-major (K, Q) and MN-major (V).
#ifndef SLUICE_WGMMA_DEV_CUH
#define SLUICE_WGMMA_DEV_CUH

#include <stdint.h>

// Byte offset of the 16-byte chunk c (0 .. 15) of row r in a 128-byte
// swizzled [R][128] bf16 tile (the tile 1024-byte aligned).
template <int R> static __device__ __forceinline__ int wg_sw128_off(int r, int c) {
    return (c >> 3) * (R * 128) + (r >> 3) * 1024 + (r & 7) * 128 + (((c & 7) ^ (r & 7)) << 4);
}

// A 128-byte-swizzle descriptor for the operand starting at smem.
static __device__ __forceinline__ uint64_t wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a >> 4) & 0x3fffu) | ((uint64_t)((lbo >> 4) & 0x3fffu) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3fffu) << 32) | (1ull << 62); // 62-63 = 1: 128B swizzle
}

// Orders register accesses before the next wgmma (and lets it read registers
// written by ordinary instructions).
static __device__ __forceinline__ void wg_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
static __device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> static __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes shared-memory writes of the generic proxy (st.shared, cp.async)
// visible to the async proxy that wgmma reads through.
// Named barriers between warpgroups: sync waits until n threads (its own
// included) have arrived at barrier id; arrive counts this thread and goes on.
static __device__ __forceinline__ void wg_bar_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
static __device__ __forceinline__ void wg_bar_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

static __device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// mbarriers in shared memory (the CTA's own): init with the arrivals a phase
// needs; arrive (release); wait until the phase of the given parity has
// completed (acquire). A waiter must be at most one phase behind.
static __device__ __forceinline__ void mbar_init(uint64_t *b, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(b)),
                 "r"(count)
                 : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint64_t *b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(b))
                 : "memory");
}
static __device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
    // the loop stays inside the asm: to the compiler, no divergent branch
    // (ptxas serialises wgmma chains in code it cannot prove warp-uniform)
    asm volatile("{\n.reg .pred p;\n"
                 "MBAR_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra MBAR_WAIT;\n}\n" ::"r"((uint32_t)__cvta_generic_to_shared(b)),
                 "r"(parity)
                 : "memory");
}
// Hands registers between the warpgroups of a warp-specialised kernel
// (every thread of the warpgroup executes it; N a multiple of 8, 24 .. 256).
template <int N> static __device__ __forceinline__ void wg_setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> static __device__ __forceinline__ void wg_setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
// Keeps the compiler from moving accesses of these registers across an
// in-flight wgmma (they are read or written asynchronously).
template <int N> static __device__ __forceinline__ void wg_reg_fence(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> static __device__ __forceinline__ void wg_reg_fence(uint32_t (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(d[i])::"memory");
}

// d (64 x 128 fp32) (+)= A (64 x 16, smem, K-major) . B (16 x 128, smem,
// K-major): the accumulator is read only when acc != 0.
static __device__ __forceinline__ void wg_mma_ss_128(float (&d)[64], uint64_t da, uint64_t db,
                                                     int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(acc));
}

// d (64 x 128 fp32) += A (64 x 16 bf16, registers) . B (16 x 128, smem,
// MN-major: the transpose bit set).
static __device__ __forceinline__ void wg_mma_rs_128_tb(float (&d)[64], const uint32_t (&a)[4],
                                                        uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// d (64 x 64 fp32) (+)= A (64 x 16, smem, K-major) . B (16 x 64, smem,
// K-major): the accumulator is read only when acc != 0.
static __device__ __forceinline__ void wg_mma_ss_64(float (&d)[32], uint64_t da, uint64_t db,
                                                    int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(acc));
}

#endif
