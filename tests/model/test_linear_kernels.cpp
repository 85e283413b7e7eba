// The linear_tile kernels (ops/cpu/linear_kernels.h): the AVX-512 one, where the CPU has
// it, gives BITWISE the portable kernel's outputs over awkward sizes (T 1..17, odd and
// even row counts, `in` not a multiple of 16 or 4, padded row strides), and linear_tile
// runs the kernel chosen once for the process.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/linear_kernels.h"

namespace kiln::ops::cpu {
namespace {

void expect_same_bits(LinearTileFn k) {
  std::mt19937 g(7);
  std::normal_distribution<float> nd;
  int checked = 0;
  for (int64_t in : {1, 3, 4, 5, 12, 15, 16, 17, 20, 31, 33, 47, 64, 100, 255, 256, 1031}) {
    for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 13}) {
      for (int64_t T = 1; T <= 17; ++T) {
        const int64_t ldx = in + 3, ldy = rows + 2;
        std::vector<float> x(static_cast<size_t>(T * ldx)), w(static_cast<size_t>(rows * in));
        for (auto& v : x) v = nd(g);
        for (auto& v : w) v = nd(g) * 0.1f;
        std::vector<float> want(static_cast<size_t>(T * ldy), -7.0f), got(want);
        linear_tile_portable(x.data(), ldx, T, w.data(), rows, in, want.data(), ldy);
        k(x.data(), ldx, T, w.data(), rows, in, got.data(), ldy);
        ASSERT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
            << "in " << in << " rows " << rows << " T " << T;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 17 * 10 * 17);
}

TEST(LinearKernels, Avx512EqualsPortableBitwise) {
  const LinearTileFn k = linear_tile_avx512();
  if (k == nullptr) GTEST_SKIP() << "no AVX-512F on this CPU";
  expect_same_bits(k);
}

TEST(LinearKernels, ChosenKernelEqualsPortableBitwise) { expect_same_bits(linear_tile_kernel()); }

TEST(LinearKernels, ChosenOncePerProcess) {
  const LinearTileFn k = linear_tile_kernel();
  EXPECT_EQ(k, linear_tile_kernel());
  EXPECT_EQ(k, linear_tile_avx512() != nullptr ? linear_tile_avx512() : &linear_tile_portable);
}

}  // namespace
}  // namespace kiln::ops::cpu
