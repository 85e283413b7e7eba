// The warp-level tensor-core steps the linear and attention kernels share
// (quant_linear_mma.cu, moe_grouped.cu, attention_mma.cu): mma.sync in place (d += a . b,
// fp32 accumulators) on bf16 or e4m3 operands, ldmatrix, and the exact split of fp32
// values into bf16 terms.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kiln::ops::cuda {

// m16n8k16, bf16 x bf16, fp32 accumulate: A rows g / g + 8 (a0 a1 a2 a3), B column g (b0 b1).
__device__ __forceinline__ void mma_bf16(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                                         float (&d)[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// m16n8k16, f16 x f16, fp32 accumulate (mma_bf16's fragments).
__device__ __forceinline__ void mma_f16(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                                        float (&d)[4]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Four e4m3 codes (bytes 0-3 of v) as two f16 pairs, exactly (every e4m3 value is an f16
// value): lo = bytes 0-1, hi = bytes 2-3.
__device__ __forceinline__ void e4m3x4_to_f16x4(uint32_t v, uint32_t& lo, uint32_t& hi) {
  asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(v));
}

// m16n8k32, e4m3 x e4m3, fp32 accumulate. On sm_90, which has no FP8 mma.sync, ptxas lowers
// each one to conversions of both operands to f16, two f16 mmas from zero and four adds;
// kernels that reuse an operand convert it once and call mma_f16 (moe_grouped.cu).
__device__ __forceinline__ void mma_e4m3(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                                         float (&d)[4]) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ldmatrix: four 8x8 bf16 matrices from shared memory, lanes 8i..8i+7 giving the row
// addresses of matrix i (16-byte aligned); r[i] is this lane's pair of matrix i (row
// lane / 4, columns 2 (lane % 4) and + 1). _trans gives the transposed matrices.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// Two floats as a bf16 pair (nearest even), the first in the low half.
__device__ __forceinline__ uint32_t bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// (v0, v1) as three bf16 pairs whose sums are v0 and v1 exactly: each term is the top 16 bits
// of what is left (hi = v truncated to bf16, then the remainders; each subtraction only
// clears leading bits, so it is exact), so the three hold all 24 bits of a normal fp32 value
// (one above 2^-102, whose last term is still a normal float) and every product with a bf16
// weight is exact in fp32. Logic, adds and byte permutes only: the rounding split it replaces
// took seven instructions a pair on sm_90's slow conversion pipe, which bound the fp32-input
// linears (the LM head took 1.5 ms of a batch-64 step, H100).
__device__ __forceinline__ uint32_t top16(float v) { return __float_as_uint(v) & 0xFFFF0000u; }
__device__ __forceinline__ void split3(float v0, float v1, uint32_t (&t)[3]) {
  const uint32_t h0 = top16(v0), h1 = top16(v1);
  const float r0 = __fsub_rn(v0, __uint_as_float(h0)), r1 = __fsub_rn(v1, __uint_as_float(h1));
  const uint32_t m0 = top16(r0), m1 = top16(r1);
  const float l0 = __fsub_rn(r0, __uint_as_float(m0)), l1 = __fsub_rn(r1, __uint_as_float(m1));
  t[0] = __byte_perm(h0, h1, 0x7632);  // the high halves: v0's term low, v1's high
  t[1] = __byte_perm(m0, m1, 0x7632);
  t[2] = __byte_perm(__float_as_uint(l0), __float_as_uint(l1), 0x7632);
}

// d += A . x for one m16n8k16 step whose B column holds the fp32 inputs (x0, x1) in b0 and
// (x2, x3) in b1, carried exactly by split3: three mmas, the high terms first.
__device__ __forceinline__ void mma_bf16_split3(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, float x0, float x1,
                                                float x2, float x3, float (&d)[4]) {
  uint32_t b0[3], b1[3];
  split3(x0, x1, b0);
  split3(x2, x3, b1);
#pragma unroll
  for (int s = 0; s < 3; ++s) mma_bf16(a0, a1, a2, a3, b0[s], b1[s], d);
}

}  // namespace kiln::ops::cuda
