// Random test inputs with fixed seeds: n floats uniform in [lo, hi) from std::mt19937 (the
// GPU tests and the op harness; the same seed gives the same values on every machine).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace kiln::test {

inline std::vector<float> uniform(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

}  // namespace kiln::test
