// The batch-invariant tensor-core linears of the `deepseek` precision
// (ops/cuda/quant_linear_mma.h) in every role DeepSeek's code gives a layer (the
// checkpoint's dtype, bf16, fp32: ops/linear_numerics.h) on bf16 and fp8_block weights:
//  - the plan says the tensor-core kernel was bound;
//  - against fp64 sums over the input the CPU would use (act_quant's values for an FP8
//    input, the fp32 input itself otherwise) and the dequantized weight: fp32 inputs are
//    carried exactly (three bf16 terms), and a bf16 layer's input rounded to bf16 (one
//    term), so without output rounding the error is fp32 summation only; with it, the
//    bf16 rounding of the output;
//  - every row of an M-row call (M up to 200: one to 25 token groups, up to four passes,
//    and from kMmaRowTileMinRows rows the row-tile kernel on FP8 weights) bitwise equal to
//    the row called alone;
//  - the grouped form (wo_a) per group against fp64, and batch-invariant.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kiln/ops/act_quant.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/quant_linear_mma.h"
#include "kiln/ops/linear_numerics.h"
#include "kiln/ops/quant_linear.h"
#include "linear_rows.h"
#include "quant_linear_cases.h"

namespace kiln {
namespace {

using namespace gpu_test;
using ops::test_linear::DevBuf;
using ops::test_linear::LoadedCase;
using ops::test_linear::one_of_each_scheme;

constexpr int kMaxM = 200;

struct Bound {
  double rel_out;  // times |ref| (output rounding)
  double rel_l1;   // times sum |x w| (summation)
};

// |got - ref| <= b.rel_out |ref| + b.rel_l1 sum|x w| for output o of row m, where row m of x
// (ldx apart, k inputs from x0) multiplies weight row o. Returns the worst error / sum|x w|.
double check_rows(const std::vector<float>& got, int64_t ldy, const std::vector<float>& x, int64_t ldx, int64_t x0,
                  int64_t x_group_stride, int64_t group_rows, const std::vector<float>& W, int64_t n, int64_t k, int M,
                  Bound b) {
  double worst = 0;
  for (int m = 0; m < M; ++m) {
    for (int64_t o = 0; o < n; ++o) {
      const float* xr = x.data() + m * ldx + x0 + (o / group_rows) * x_group_stride;
      double ref = 0, l1 = 0;
      for (int64_t i = 0; i < k; ++i) {
        const double p = static_cast<double>(xr[i]) * W[static_cast<size_t>(o * k + i)];
        ref += p;
        l1 += std::fabs(p);
      }
      const double g = got[static_cast<size_t>(m * ldy + o)];
      EXPECT_TRUE(std::isfinite(g)) << "row " << m << " col " << o;
      const double err = std::fabs(g - ref);
      worst = std::max(worst, err / (l1 + 1e-30));
      if (!(err <= b.rel_out * std::fabs(ref) + b.rel_l1 * l1 + 1e-30)) {
        ADD_FAILURE() << "row " << m << " col " << o << ": gpu " << g << " fp64 " << ref << " sum|xw| " << l1;
        return worst;
      }
    }
  }
  return worst;
}

// Every row of an M-row call (outputs poisoned first) bitwise equal to the row called alone
// (`alone`, n outputs a row), for each M of `Ms`.
void expect_rows_as_alone(ops::cuda::QuantLinear& q, const float* dx, int64_t k, int64_t n, float* dy,
                          const std::vector<float>& alone, std::initializer_list<int> Ms) {
  for (const int M : Ms) {
    poison(dy, static_cast<size_t>(M * n));
    q.forward(dx, k, M, dy, n, nullptr);
    const auto y = download(dy, static_cast<size_t>(M * n));
    EXPECT_EQ(std::memcmp(y.data(), alone.data(), static_cast<size_t>(M * n) * 4), 0)
        << "M = " << M << ": rows differ from each row alone";
  }
}

struct Role {
  const char* name;
  ops::LinearRole role;
};

TEST(MmaLinear, EveryRoleOnBf16AndFp8WeightsMatchesFp64AndIsBatchInvariant) {
  const Role roles[] = {{"quantized", ops::LinearRole::Quantized}, {"bf16", ops::LinearRole::Bf16},
                        {"fp32", ops::LinearRole::Fp32}};
  // 200 x 4096: a partial 16-row tile, many warps per tile; 1040 x 512: many tiles.
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{200, 4096}, {1040, 512}}) {
    for (const auto& c : one_of_each_scheme(n, k, 5)) {
      if (c.label != "bf16" && c.label != "fp8_block") continue;
      LoadedCase lc(c);
      for (const Role& r : roles) {
        SCOPED_TRACE(c.label + " " + r.name + " " + std::to_string(n) + "x" + std::to_string(k));
        const auto num = ops::linear_numerics(ops::Precision::DeepSeek, r.role, lc.plan.scheme.kind);
        auto q = ops::cuda::QuantLinear::prepare(lc.host, kMaxM, num);
        const std::string plan = q.describe(1);
        std::printf("[mma linear] %-9s %-9s %4lldx%-4lld %s\n", c.label.c_str(), r.name, static_cast<long long>(n),
                    static_cast<long long>(k), plan.c_str());
        ASSERT_NE(plan.find("mma.sync"), std::string::npos) << plan;
        ASSERT_EQ(plan, q.describe(kMaxM)) << "one kernel for every M";
        const auto x = random_rows(kMaxM, k, 17);
        std::vector<float> xin = x;
        if (num.input == ops::LinearInput::Fp8Block) ops::cpu::act_fake_quant(x.data(), k, kMaxM, k, xin.data(), k);
        // Bf16 input: the kernel rounds these fp32 values to bf16 as it loads them.
        if (num.input == ops::LinearInput::Bf16) ops::cpu::round_bf16(x.data(), k, kMaxM, k, xin.data(), k);
        DevBuf<float> dx(x.size()), dy(static_cast<size_t>(kMaxM * n));
        upload(dx.p, x);
        const auto alone =
            each_row_alone(kMaxM, n, dy.p, [&](int m, float* y) { q.forward(dx.p + m * k, k, 1, y, n, nullptr); });
        // FP8 x FP8: the tensor core's sums of e4m3 products (DeepSeek's 2^-6 budget for
        // its FP8 GEMM); bf16 output: its rounding; fp32 in and out: fp32 sums only.
        const Bound b = num.input == ops::LinearInput::Fp8Block ? Bound{0x1p-8, 0x1p-10}
                        : num.bf16_output                        ? Bound{0x1p-8, 0x1p-17}
                                                                 : Bound{0.0, 0x1p-17};
        const double worst = check_rows(alone, n, xin, k, 0, 0, n, lc.W, n, k, kMaxM, b);
        std::printf("[mma linear] %-9s %-9s worst |err| / sum|x w| = %.2e\n", c.label.c_str(), r.name, worst);
        static_assert(ops::cuda::detail::kMmaRowTileMinRows <= 130, "the M list reaches the row-tile kernel");
        expect_rows_as_alone(q, dx.p, k, n, dy.p, alone, {2, 7, 8, 9, 33, 64, 65, 80, 130, 200});
      }
    }
  }
}

// A weight whose 128-row tiles fill the GPU twice over (the LM head's shape) takes the
// row-tile kernel from kMmaWideRowTileMinRows rows: every row of 32..65-row calls is still
// the same bits as the row alone, in the head's role (fp32, three bf16 terms) and FP8's.
TEST(MmaLinear, WideWeightTakesRowTilesEarlierWithTheSameBits) {
  int dev = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int64_t n = int64_t{2} * sms * 128 + 48, k = 256;  // the last row tile partial
  constexpr int kRows = 72;
  const std::string wide = "row tiles from " + std::to_string(ops::cuda::detail::kMmaWideRowTileMinRows) + " rows";
  const Role roles[] = {{"quantized", ops::LinearRole::Quantized}, {"fp32", ops::LinearRole::Fp32}};
  for (const auto& c : one_of_each_scheme(n, k, 7)) {
    if (c.label != "bf16" && c.label != "fp8_block") continue;
    LoadedCase lc(c);
    for (const Role& r : roles) {
      SCOPED_TRACE(c.label + " " + r.name + " " + std::to_string(n) + "x" + std::to_string(k));
      const auto num = ops::linear_numerics(ops::Precision::DeepSeek, r.role, lc.plan.scheme.kind);
      auto q = ops::cuda::QuantLinear::prepare(lc.host, kRows, num);
      const std::string plan = q.describe(1);
      std::printf("[mma linear] wide %-9s %-9s %s\n", c.label.c_str(), r.name, plan.c_str());
      ASSERT_NE(plan.find(wide), std::string::npos) << plan;
      const auto x = random_rows(kRows, k, 29);
      DevBuf<float> dx(x.size()), dy(static_cast<size_t>(kRows * n));
      upload(dx.p, x);
      const auto alone = each_row_alone(kRows, n, dy.p, [&](int m, float* y) { q.forward(dx.p + m * k, k, 1, y, n, nullptr); });
      expect_rows_as_alone(q, dx.p, k, n, dy.p, alone, {32, 33, 40, 64, 65, kRows});
    }
  }
}

// Two layers on one input (wq_a and wkv, an expert's w1 and w3): forward_pair gives each the
// bits of its own forward, whether the input is quantized once for both (two FP8-input
// layers) or each takes its own path (an FP8 and a bf16 weight, or a layer in the fp32 role).
TEST(MmaLinear, PairOnOneInputGivesEachLayersOwnBits) {
  const int64_t k = 512, na = 272, nb = 144;
  const auto ca = one_of_each_scheme(na, k, 31), cb = one_of_each_scheme(nb, k, 37);
  auto find = [](const auto& cases, const std::string& label) {
    for (const auto& c : cases)
      if (c.label == label) return c;
    throw std::runtime_error("no case " + label);
  };
  struct Pair {
    const char *a, *b;
    ops::LinearRole rb;
  };
  for (const Pair& pr : {Pair{"fp8_block", "fp8_block", ops::LinearRole::Quantized},
                         Pair{"fp8_block", "bf16", ops::LinearRole::Quantized},
                         Pair{"fp8_block", "fp8_block", ops::LinearRole::Fp32}}) {
    SCOPED_TRACE(std::string(pr.a) + " + " + pr.b + (pr.rb == ops::LinearRole::Fp32 ? " (fp32 role)" : ""));
    LoadedCase la(find(ca, pr.a)), lb(find(cb, pr.b));
    auto qa = ops::cuda::QuantLinear::prepare(
        la.host, kMaxM, ops::linear_numerics(ops::Precision::DeepSeek, ops::LinearRole::Quantized, la.plan.scheme.kind));
    auto qb = ops::cuda::QuantLinear::prepare(lb.host, kMaxM,
                                              ops::linear_numerics(ops::Precision::DeepSeek, pr.rb, lb.plan.scheme.kind));
    const auto x = random_rows(kMaxM, k, 41);
    DevBuf<float> dx(x.size()), dya(static_cast<size_t>(kMaxM * na)), dyb(static_cast<size_t>(kMaxM * nb));
    upload(dx.p, x);
    for (const int M : {1, 9, 64, 65, 200}) {
      poison(dya.p, static_cast<size_t>(M * na));
      poison(dyb.p, static_cast<size_t>(M * nb));
      qa.forward(dx.p, k, M, dya.p, na, nullptr);
      qb.forward(dx.p, k, M, dyb.p, nb, nullptr);
      const auto ya = download(dya.p, static_cast<size_t>(M * na)), yb = download(dyb.p, static_cast<size_t>(M * nb));
      poison(dya.p, static_cast<size_t>(M * na));
      poison(dyb.p, static_cast<size_t>(M * nb));
      ops::cuda::QuantLinear::forward_pair(qa, dya.p, na, qb, dyb.p, nb, dx.p, k, M, nullptr);
      EXPECT_EQ(std::memcmp(download(dya.p, static_cast<size_t>(M * na)).data(), ya.data(), ya.size() * 4), 0)
          << "M = " << M << ": a";
      EXPECT_EQ(std::memcmp(download(dyb.p, static_cast<size_t>(M * nb)).data(), yb.data(), yb.size() * 4), 0)
          << "M = " << M << ": b";
    }
  }
}

// wo_a's form: groups of rows, each reading its own slice of x.
TEST(MmaLinear, GroupedProductMatchesFp64AndIsBatchInvariant) {
  const int64_t groups = 4, rows = 128, n = groups * rows, k = 512;
  for (const auto& c : one_of_each_scheme(n, k, 9)) {
    if (c.label != "bf16" && c.label != "fp8_block") continue;
    SCOPED_TRACE(c.label);
    LoadedCase lc(c);
    const auto num = ops::linear_numerics(ops::Precision::DeepSeek, ops::LinearRole::Bf16, lc.plan.scheme.kind);
    auto q = ops::cuda::QuantLinear::prepare(lc.host, kMaxM, num);
    ASSERT_NE(std::string(q.describe(1)).find("mma.sync"), std::string::npos) << q.describe(1);
    const int64_t ldx = groups * k + 4;  // padded rows
    const auto x = random_rows(kMaxM, ldx, 23);
    DevBuf<float> dx(x.size()), dy(static_cast<size_t>(kMaxM * n));
    upload(dx.p, x);
    const auto alone = each_row_alone(kMaxM, n, dy.p, [&](int m, float* y) {
      q.forward_grouped(dx.p + m * ldx, ldx, k, 1, static_cast<int>(groups), y, n, nullptr);
    });
    ASSERT_EQ(num.input, ops::LinearInput::Bf16);
    std::vector<float> xin(x.size());
    ops::cpu::round_bf16(x.data(), ldx, kMaxM, ldx, xin.data(), ldx);
    const double worst = check_rows(alone, n, xin, ldx, 0, k, rows, lc.W, n, k, kMaxM, {0x1p-8, 0x1p-17});
    std::printf("[mma linear] grouped %-9s worst |err| / sum|x w| = %.2e\n", c.label.c_str(), worst);
    for (int M : {3, 8, 17, 80, 200}) {
      poison(dy.p, static_cast<size_t>(M * n));
      q.forward_grouped(dx.p, ldx, k, M, static_cast<int>(groups), dy.p, n, nullptr);
      const auto y = download(dy.p, static_cast<size_t>(M * n));
      EXPECT_EQ(std::memcmp(y.data(), alone.data(), static_cast<size_t>(M * n) * 4), 0) << "M = " << M;
    }
  }
}

}  // namespace
}  // namespace kiln
