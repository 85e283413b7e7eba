// Device-side rotation with a RopeView (rope.h): the same expressions as
// ops::cpu::Rope::apply_heads, so results match the CPU bit for bit given the same inputs.
#pragma once

#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/rope.h"

namespace kiln::ops::cuda {

// Rotates pair i (channels n - dim + 2i, n - dim + 2i + 1) of the n-float vector v at
// position pos. One thread per pair; the caller loops i over [0, dim / 2). bf16: the pair
// is rounded to bf16 before the rotation and the results after it (round_bf16, the rope,
// round_bf16 again, in one pass).
__device__ __forceinline__ void rope_pair(float* v, int n, int i, const RopeView& r, int64_t pos, bool inverse,
                                          bool bf16 = false) {
  const int half = r.dim / 2;
  const float c = r.cos[pos * half + i];
  const float s = inverse ? -r.sin[pos * half + i] : r.sin[pos * half + i];
  float* p = v + (n - r.dim) + 2 * i;
  const float a = bf16_round_if(p[0], bf16), b = bf16_round_if(p[1], bf16);
  p[0] = bf16_round_if(__fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s)), bf16);
  p[1] = bf16_round_if(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)), bf16);
}

}  // namespace kiln::ops::cuda
