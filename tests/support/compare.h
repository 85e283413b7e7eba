// The tests' distance between two float arrays: max |a - b| / max |b| (b the reference),
// over the whole array. Arrays of different sizes compare as infinitely far.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace kiln::test {

inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

}  // namespace kiln::test
