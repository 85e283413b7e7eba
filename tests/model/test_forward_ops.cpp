// CPU reference primitives: threaded linear, RMS norms, interleaved partial RoPE with
// transformers' YaRN frequencies, and mHC (Sinkhorn) against straightforward double
// precision re-computations of transformers' formulas.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "kiln/ops/cpu/hyper_connection.h"
#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, double std = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, std);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(g));
  return v;
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(3);
  EXPECT_EQ(pool.size(), 3);
  for (int64_t n : {1, 2, 3, 7, 100, 1001}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
  int calls = 0;
  pool.parallel_for(0, 1, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(Linear, MatchesDoubleAndIsIndependentOfThreadsAndBatch) {
  const int64_t T = 5, in = 37, out = 13, ldx = 40, ldy = 15;
  auto x = randn(static_cast<size_t>(T * ldx), 1);
  auto w = randn(static_cast<size_t>(out * in), 2);
  std::vector<float> y1(static_cast<size_t>(T * ldy), -1.0f), y3(y1), row(static_cast<size_t>(out));
  ThreadPool pool(3);
  linear(x.data(), ldx, T, w.data(), out, in, y1.data(), ldy, nullptr);
  linear(x.data(), ldx, T, w.data(), out, in, y3.data(), ldy, &pool);
  for (int64_t t = 0; t < T; ++t) {
    linear(x.data() + t * ldx, ldx, 1, w.data(), out, in, row.data(), out, &pool);
    for (int64_t o = 0; o < out; ++o) {
      double ref = 0.0;
      for (int64_t i = 0; i < in; ++i) ref += static_cast<double>(x[t * ldx + i]) * w[o * in + i];
      EXPECT_NEAR(y1[t * ldy + o], ref, 1e-5 * (1.0 + std::fabs(ref)));
      EXPECT_EQ(y1[t * ldy + o], y3[t * ldy + o]);
      EXPECT_EQ(y1[t * ldy + o], row[o]);  // batch of one gives the same bits
      EXPECT_EQ(y1[t * ldy + o], dot(x.data() + t * ldx, w.data() + o * in, in));
    }
    for (int64_t o = out; o < ldy; ++o) EXPECT_EQ(y1[t * ldy + o], -1.0f);  // padding untouched
  }
}

TEST(Norm, WeightedAndUnweighted) {
  const float x[4] = {1.0f, -2.0f, 3.0f, 0.5f};
  const float w[4] = {1.0f, 2.0f, 0.5f, -1.0f};
  float y[4], u[4];
  rmsnorm(x, 1, 4, w, 1e-6f, y);
  rmsnorm(x, 1, 4, nullptr, 1e-6f, u);
  const double ms = (1.0 + 4.0 + 9.0 + 0.25) / 4.0, s = 1.0 / std::sqrt(ms + 1e-6);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(u[i], x[i] * s, 1e-6);
    EXPECT_NEAR(y[i], w[i] * x[i] * s, 1e-6);
  }
}

TEST(Rope, DefaultFrequencies) {
  RopeSpec s;
  s.dim = 8;
  s.theta = 10000.0;
  auto f = rope_inv_freq(s);
  ASSERT_EQ(f.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], std::pow(10000.0, -2.0 * i / 8.0), 1e-7);
}

TEST(Rope, YarnMatchesTransformersForV4Flash) {
  // compress rope of V4-Flash: dim 64, base 160000, factor 16, original 65536, beta 32/1:
  // correction range [15, 25] (dsv4-model.md 2.0).
  RopeSpec s;
  s.dim = 64;
  s.theta = 160000.0;
  s.yarn = true;
  s.factor = 16.0;
  s.original_max_position = 65536;
  s.beta_fast = 32.0;
  s.beta_slow = 1.0;
  auto f = rope_inv_freq(s);
  ASSERT_EQ(f.size(), 32u);
  for (int i = 0; i < 32; ++i) {
    const double p = std::pow(160000.0, 2.0 * i / 64.0);
    const double ramp = std::clamp((i - 15.0) / 10.0, 0.0, 1.0);  // 0: keep 1/p, 1: 1/(16p)
    const double want = (1.0 / (16.0 * p)) * ramp + (1.0 / p) * (1.0 - ramp);
    EXPECT_NEAR(f[i], want, 2e-6 * want) << i;
  }
  EXPECT_EQ(f[0], 1.0f);
}

TEST(Rope, InterleavedPairsOnTheLastChannelsAndInverse) {
  RopeSpec s;
  s.dim = 4;
  s.theta = 100.0;
  Rope rope(s);
  std::vector<float> x = {5.0f, 6.0f, 1.0f, 2.0f, 3.0f, 4.0f};  // rope on the last 4
  auto y = x;
  rope.apply(y.data(), 6, 3);
  EXPECT_EQ(y[0], 5.0f);
  EXPECT_EQ(y[1], 6.0f);
  const double a0 = 3.0 * 1.0, a1 = 3.0 * 0.1;  // inv_freq = 1, 100^-0.5
  EXPECT_NEAR(y[2], 1.0 * std::cos(a0) - 2.0 * std::sin(a0), 1e-6);
  EXPECT_NEAR(y[3], 2.0 * std::cos(a0) + 1.0 * std::sin(a0), 1e-6);
  EXPECT_NEAR(y[4], 3.0 * std::cos(a1) - 4.0 * std::sin(a1), 1e-6);
  EXPECT_NEAR(y[5], 4.0 * std::cos(a1) + 3.0 * std::sin(a1), 1e-6);
  rope.apply(y.data(), 6, 3, /*inverse=*/true);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-6);
  // relative positions: <R(p)q, R(p')k> depends on p - p' only
  auto q = randn(4, 3), k = randn(4, 4);
  auto dotat = [&](int64_t pq, int64_t pk) {
    auto a = q, b = k;
    rope.apply(a.data(), 4, pq);
    rope.apply(b.data(), 4, pk);
    return dot(a.data(), b.data(), 4);
  };
  EXPECT_NEAR(dotat(10, 7), dotat(3, 0), 1e-5);
}

// Double-precision re-computation of DeepseekV4HyperConnection.forward for one token.
TEST(HyperConnection, MatchesTransformersFormula) {
  const int64_t n = 4, H = 8, mix = (2 + n) * n, iters = 20;
  const float hc_eps = 1e-6f, eps = 1e-6f;
  auto X = randn(static_cast<size_t>(2 * n * H), 5);
  auto fn = randn(static_cast<size_t>(mix * n * H), 6, 0.3);
  auto base = randn(static_cast<size_t>(mix), 7, 0.5);
  const float scale[3] = {0.7f, 1.2f, 0.9f};
  HcParams p{n, H, fn.data(), base.data(), scale, static_cast<int>(iters), hc_eps, eps};
  std::vector<float> col(static_cast<size_t>(2 * H)), post(static_cast<size_t>(2 * n)), comb(static_cast<size_t>(2 * n * n));
  ThreadPool pool(2);
  hc_pre(p, X.data(), 2, col.data(), post.data(), comb.data(), &pool);
  for (int64_t t = 0; t < 2; ++t) {
    const float* x = X.data() + t * n * H;
    double ms = 0;
    for (int64_t i = 0; i < n * H; ++i) ms += double(x[i]) * x[i];
    const double rs = 1.0 / std::sqrt(ms / (n * H) + eps);
    std::vector<double> m(static_cast<size_t>(mix));
    for (int64_t r = 0; r < mix; ++r) {
      double a = 0;
      for (int64_t i = 0; i < n * H; ++i) a += double(fn[r * n * H + i]) * x[i] * rs;
      m[r] = a;
    }
    auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
    std::vector<double> pre(n), c(n * n);
    for (int64_t i = 0; i < n; ++i) {
      pre[i] = sig(m[i] * scale[0] + base[i]) + hc_eps;
      EXPECT_NEAR(post[t * n + i], 2.0 * sig(m[n + i] * scale[1] + base[n + i]), 1e-5);
    }
    for (int64_t i = 0; i < n; ++i) {
      double mx = -1e300, s = 0;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, m[2 * n + i * n + j] * scale[2] + base[2 * n + i * n + j]);
      for (int64_t j = 0; j < n; ++j) s += std::exp(m[2 * n + i * n + j] * scale[2] + base[2 * n + i * n + j] - mx);
      for (int64_t j = 0; j < n; ++j)
        c[i * n + j] = std::exp(m[2 * n + i * n + j] * scale[2] + base[2 * n + i * n + j] - mx) / s + hc_eps;
    }
    auto cols = [&] {
      for (int64_t j = 0; j < n; ++j) {
        double s = hc_eps;
        for (int64_t i = 0; i < n; ++i) s += c[i * n + j];
        for (int64_t i = 0; i < n; ++i) c[i * n + j] /= s;
      }
    };
    auto rows = [&] {
      for (int64_t i = 0; i < n; ++i) {
        double s = hc_eps;
        for (int64_t j = 0; j < n; ++j) s += c[i * n + j];
        for (int64_t j = 0; j < n; ++j) c[i * n + j] /= s;
      }
    };
    cols();
    for (int64_t k = 1; k < iters; ++k) {
      rows();
      cols();
    }
    for (int64_t i = 0; i < n * n; ++i) EXPECT_NEAR(comb[t * n * n + i], c[i], 1e-5);
    for (int64_t d = 0; d < H; ++d) {
      double v = 0;
      for (int64_t i = 0; i < n; ++i) v += pre[i] * x[i * H + d];
      EXPECT_NEAR(col[t * H + d], v, 1e-5 * (1 + std::fabs(v)));
    }
    // doubly stochastic (to Sinkhorn's precision)
    for (int64_t i = 0; i < n; ++i) {
      double rsum = 0, csum = 0;
      for (int64_t j = 0; j < n; ++j) {
        rsum += comb[t * n * n + i * n + j];
        csum += comb[t * n * n + j * n + i];
      }
      EXPECT_NEAR(csum, 1.0, 1e-5);
      EXPECT_NEAR(rsum, 1.0, 1e-3);
    }
  }
  // hc_post: X'[j] = post_j y + sum_i comb[i][j] X[i]
  auto y = randn(static_cast<size_t>(2 * H), 9);
  std::vector<float> out(static_cast<size_t>(2 * n * H));
  hc_post(n, H, X.data(), 2, y.data(), post.data(), comb.data(), out.data());
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = 0; d < H; ++d) {
        double v = double(post[t * n + j]) * y[t * H + d];
        for (int64_t i = 0; i < n; ++i) v += double(comb[t * n * n + i * n + j]) * X[(t * n + i) * H + d];
        EXPECT_NEAR(out[(t * n + j) * H + d], v, 1e-5 * (1 + std::fabs(v)));
      }
}

}  // namespace
}  // namespace kiln::ops::cpu
