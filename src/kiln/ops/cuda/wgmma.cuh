// Hopper warpgroup MMA (wgmma, sm_90a) for kernels that keep mma.sync's bits: f16 x f16 with
// fp32 accumulation, A from registers in mma.sync's m16n8k16 A fragment (warp i of the
// warpgroup holds rows 16 i .. 16 i + 15), B (K x N) from shared memory, D in registers as
// N / 8 of mma.sync's m16n8 accumulator fragments side by side.
//
// A chain of wgmma k16 steps into one accumulator gives the same bits as the same chain of
// mma.sync.m16n8k16 steps over the same k slots: 0 of 2,097,152 outputs differed on an
// NVIDIA H200 (driver 580.159.04) for normal, e4m3-valued and wide-exponent f16 operands, 8
// chained k16 steps each (tests/gpu/test_wgmma_cuda.cpp holds it). So a kernel may multiply
// a prompt's rows on wgmma and a decode step's on mma.sync and stay batch-invariant.
#pragma once

#include <cstdint>

namespace kiln::ops::cuda {

// B in shared memory without swizzle, K-major: 8 x 8 core matrices (8 N-rows of 8 k values,
// 16 bytes each, 128 contiguous bytes), `k_stride` bytes between core matrices adjacent in K
// (the leading byte offset), `n_stride` between those adjacent in N (the stride byte offset).
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem, uint32_t k_stride, uint32_t n_stride) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((a >> 4) & 0x3FFFu) | (static_cast<uint64_t>((k_stride >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((n_stride >> 4) & 0x3FFFu) << 32);
}

// Orders this thread's earlier register and shared-memory writes before the warpgroup's next
// wgmma reads them (before the first wgmma of a chain, after the accumulators were touched).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits for all of this warpgroup's committed wgmma; only then may d and a be read or written.
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Commits the warpgroup's chain and waits for it; every accumulator of d and every A
// register of a stays live up to here (wgmma reads and writes them asynchronously, so the
// compiler must neither read d early nor reuse one of those registers before the wait).
// Any chain: ND accumulators, the A registers of its NJ steps (NR each).
template <int ND, int NJ, int NR>
__device__ __forceinline__ void wgmma_commit_wait(float (&d)[ND], uint32_t (&a)[NJ][NR]) {
  wgmma_commit();
  wgmma_wait_all();
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int r = 0; r < NR; ++r) asm volatile("" : "+r"(a[j][r])::"memory");
#pragma unroll
  for (int i = 0; i < ND; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Generic-proxy shared-memory writes become visible to wgmma's (async proxy) reads after this
// and a barrier.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d += A . B, m64n64k16, f16 operands, fp32 accumulators (d[4 i .. 4 i + 3]: mma.sync's m16n8
// fragment of columns 8 i .. 8 i + 7).
__device__ __forceinline__ void wgmma_m64n64k16_f16(float (&d)[32], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                    uint64_t b) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(1));
}

}  // namespace kiln::ops::cuda
