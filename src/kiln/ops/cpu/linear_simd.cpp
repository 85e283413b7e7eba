// The AVX-512 linear_tile (linear_kernels.h), chosen once per process where the CPU has
// AVX-512F (the build itself targets baseline x86-64). It gives the portable kernel's
// bits: one zmm per output is exactly dot()'s 16 lanes (c0|c1|c2|c3 of vec.h) over the
// blocks of 16, each lane adding its products in the same order from zero, and the rest
// (blocks of 4, horizontal sum, scalar tail) is linear_finish, compiled for the baseline.
// Products and sums stay separate instructions: the _round_ intrinsics with the current
// rounding mode are plain vmulps/vaddps, which the compiler never contracts into FMA
// (AVX-512F has FMA, and GCC contracts _mm512_add_ps(a, _mm512_mul_ps(b, c))). What
// changes is the blocking: 4 tokens x 4 rows of accumulators stay in registers over the
// whole reduction, so each load of x or W serves 4 outputs, and a tile of W stays in L1
// while the tokens pass 4 at a time. An AVX2 version (two ymm per output, 2 x 2 blocks)
// gave the same bits but no speed over the portable SSE kernel on the build machine
// (Sapphire Rapids), so there is none.
#include "kiln/ops/cpu/linear_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>

namespace kiln::ops::cpu {
namespace {

#define KILN_AVX512 __attribute__((target("avx512f")))

// The _round_ forms with every lane selected (the plain ones take an undefined source
// register, which GCC 12 warns about).
KILN_AVX512 inline __m512 mul(__m512 a, __m512 b) {
  return _mm512_maskz_mul_round_ps(0xFFFF, a, b, _MM_FROUND_CUR_DIRECTION);
}
KILN_AVX512 inline __m512 add(__m512 a, __m512 b) {
  return _mm512_maskz_add_round_ps(0xFFFF, a, b, _MM_FROUND_CUR_DIRECTION);
}

// MT tokens x MR rows; acc[t][r] holds lanes 0..15 of output (t, r).
template <int MT, int MR>
KILN_AVX512 void micro512(const float* x, int64_t ldx, const float* w, int64_t in, int64_t n16, float* y,
                          int64_t ldy) {
  __m512 acc[MT][MR];
#pragma GCC unroll 8
  for (int t = 0; t < MT; ++t)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n16; i += 16) {
    __m512 wv[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) wv[r] = _mm512_loadu_ps(w + r * in + i);
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t) {
      const __m512 xv = _mm512_loadu_ps(x + t * ldx + i);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[t][r] = add(acc[t][r], mul(xv, wv[r]));
    }
  }
  alignas(64) float buf[MT * MR * 16];
#pragma GCC unroll 8
  for (int t = 0; t < MT; ++t)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) _mm512_store_ps(buf + (t * MR + r) * 16, acc[t][r]);
  linear_finish(buf, MT, MR, x, ldx, w, in, n16, y, ldy);
}

using Micro = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);

// The tile: rows in blocks of 4, for each the tokens in blocks of 4 (so a block of W stays
// in L1 while every token passes).
template <int MT, int MR>
inline void run_tile(const Micro (&k)[MT][MR], const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows,
                     int64_t in, float* y, int64_t ldy) {
  const int64_t n16 = in & ~int64_t{15};
  for (int64_t o = 0; o < rows; o += MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, rows - o));
    for (int64_t t = 0; t < T; t += MT) {
      const int mt = static_cast<int>(std::min<int64_t>(MT, T - t));
      k[mt - 1][mr - 1](x + t * ldx, ldx, w + o * in, in, n16, y + t * ldy + o, ldy);
    }
  }
}

const Micro k512[4][4] = {{micro512<1, 1>, micro512<1, 2>, micro512<1, 3>, micro512<1, 4>},
                          {micro512<2, 1>, micro512<2, 2>, micro512<2, 3>, micro512<2, 4>},
                          {micro512<3, 1>, micro512<3, 2>, micro512<3, 3>, micro512<3, 4>},
                          {micro512<4, 1>, micro512<4, 2>, micro512<4, 3>, micro512<4, 4>}};

void tile512(const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows, int64_t in, float* y, int64_t ldy) {
  run_tile(k512, x, ldx, T, w, rows, in, y, ldy);
}
}  // namespace

LinearTileFn linear_tile_avx512() {
  return __builtin_cpu_supports("avx512f") ? tile512 : nullptr;
}

}  // namespace kiln::ops::cpu

#else

namespace kiln::ops::cpu {
LinearTileFn linear_tile_avx512() { return nullptr; }
}  // namespace kiln::ops::cpu

#endif
