// wgmma and mma.sync chained over the same k16 steps give the same bits (ops/cuda/wgmma.cuh):
// the premise that lets the grouped experts' row-tile kernel run a prompt on wgmma while a
// decode step's pairs run on mma.sync, batch-invariantly. Three kinds of f16 operands with
// fixed seeds: normal values, e4m3 values (what the FP8 and folded MXFP4 kernels multiply)
// and wide exponents with full mantissas; each result is also checked against fp64 sums.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_fp16.h>

#include "kiln/ops/cuda/wgmma_agreement.h"
#include "support/device_array.h"

namespace kiln::ops {
namespace {

using test::Dev;
constexpr int M = cuda::kWgmmaCheckM, N = cuda::kWgmmaCheckN, K = cuda::kWgmmaCheckK;

uint16_t f16_bits(float v) { return static_cast<__half_raw>(__float2half_rn(v)).x; }
float f16_value(uint16_t u) {
  __half_raw r;
  r.x = u;
  return __half2float(__half(r));
}

void check_kind(int kind, const std::string& name) {
  constexpr int kTrials = 1024;
  std::mt19937 rng(17 + kind);
  auto value = [&]() -> float {
    if (kind == 0) return std::normal_distribution<float>(0.0f, 1.0f)(rng);
    const bool e4m3 = kind == 1;
    const int e = e4m3 ? static_cast<int>(rng() % 15) - 6 : static_cast<int>(rng() % 21) - 10;
    const float m = e4m3 ? static_cast<float>(rng() % 8) / 8.0f : static_cast<float>(rng() % 1024) / 1024.0f;
    const float v = std::ldexp(1.0f + m, e);
    return (rng() & 1u) ? -v : v;
  };
  std::vector<uint16_t> a(static_cast<size_t>(kTrials) * M * K), b(static_cast<size_t>(kTrials) * N * K);
  for (auto& x : a) x = f16_bits(value());
  for (auto& x : b) x = f16_bits(value());
  const Dev<uint16_t> da(a), db(b);
  Dev<float> dm(static_cast<size_t>(kTrials) * M * N), dw(static_cast<size_t>(kTrials) * M * N);  // poisoned
  cuda::wgmma_agreement(da.get(), db.get(), kTrials, dm.get(), dw.get(), nullptr);
  const std::vector<float> hm = dm.host(), hw = dw.host();
  size_t differ = 0;
  double worst = 0.0;
  for (int tr = 0; tr < kTrials; ++tr)
    for (int r = 0; r < M; ++r)
      for (int c = 0; c < N; ++c) {
        double ref = 0.0, mag = 0.0;
        for (int k = 0; k < K; ++k) {
          const double p = static_cast<double>(f16_value(a[(static_cast<size_t>(tr) * M + r) * K + k])) *
                           f16_value(b[(static_cast<size_t>(tr) * N + c) * K + k]);
          ref += p, mag += std::fabs(p);
        }
        const size_t i = (static_cast<size_t>(tr) * M + r) * N + c;
        if (std::memcmp(&hm[i], &hw[i], 4) != 0 && ++differ <= 5)
          ADD_FAILURE() << name << " trial " << tr << " [" << r << "][" << c << "]: mma.sync " << hm[i] << ", wgmma " << hw[i];
        worst = std::max(worst, std::fabs(hm[i] - ref) / std::max(mag, 1e-30));
      }
  EXPECT_EQ(differ, 0u) << name;
  // fp32 accumulation of exact products: a few ulps of the sum of magnitudes.
  EXPECT_LT(worst, 4e-6) << name;
  std::printf("[wgmma] %s: %zu of %zu outputs differ from mma.sync; worst |err| / sum |p| %.3g\n", name.c_str(), differ,
              hm.size(), worst);
}

TEST(CudaWgmma, ChainsGiveMmaSyncBits) {
  check_kind(0, "normal f16");
  check_kind(1, "e4m3 values");
  check_kind(2, "wide f16");
}

}  // namespace
}  // namespace kiln::ops
