// The kernels behind linear_tile (linear.h). linear_tile runs the one chosen once per
// process: AVX-512 where the CPU has AVX-512F, else the portable one (what the baseline
// x86-64 / any-target build compiles). Both give the same bits
// (tests/model/test_linear_kernels.cpp); the AVX-512 one (linear_simd.cpp) only blocks
// the work differently.
#pragma once

#include <cstdint>

namespace kiln::ops::cpu {

using LinearTileFn = void (*)(const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows, int64_t in,
                              float* y, int64_t ldy);

// Each output one dot() (vec.h), a token at a time, two rows sharing the loads of x.
void linear_tile_portable(const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows, int64_t in, float* y,
                          int64_t ldy);
LinearTileFn linear_tile_avx512();  // nullptr without AVX-512F on this CPU (or off x86-64)
LinearTileFn linear_tile_kernel();  // the one linear_tile runs

// For the SIMD kernels: completes outputs whose 16 lanes of dot() (c0|c1|c2|c3, vec.h)
// hold the products of the blocks of 16 below i0, with the blocks of 4, the horizontal
// sum and the scalar tail as dot() does them. acc is mt x mr outputs of 16 floats; output
// (t, r) is x[t, :] . w[r, :] (x rows ldx apart, w rows `in` apart), stored at
// y[t * ldy + r]. Compiled for the baseline target (never inlined into a SIMD one), so
// nothing in it is contracted into FMA.
void linear_finish(const float* acc, int mt, int mr, const float* x, int64_t ldx, const float* w, int64_t in,
                   int64_t i0, float* y, int64_t ldy);

}  // namespace kiln::ops::cpu
