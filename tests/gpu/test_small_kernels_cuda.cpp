// The small CUDA kernels of the GPU forward (rope, RMS norm, mHC, argmax) against the CPU
// reference on random inputs with fixed seeds, odd sizes and several rows, and the
// launchers' shape checks. Where the kernel repeats the CPU's exact sequence of roundings
// (rope, hc_post) the comparison is bitwise; where a long sum is reassociated (norms, mHC
// mixes) the tolerance is relative, ~1e-5. Argmax indices must be exact, including exact
// ties (to the lowest id) and NaNs (never chosen). Outputs are poisoned (NaN / -1) first so
// an unwritten element fails. The op harness (tests/ops_harness) runs every op, these
// included, against ops/cpu over more sizes and every weight scheme.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cpu/hyper_connection.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/elementwise.h"
#include "kiln/ops/cuda/hyper_connection.h"
#include "kiln/ops/cuda/moe.h"
#include "kiln/ops/cuda/norm.h"
#include "kiln/ops/cuda/rope.h"
#include "support/device_array.h"
#include "support/random.h"

namespace kiln::ops {
namespace {

using test::Dev;  // tests/support/device_array.h
using test::uniform;  // tests/support/random.h

bool same_bits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// |got - want| <= rtol * max(1, |want|) for every element (rtol 0: bitwise equality).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, float rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = rtol == 0.0f ? same_bits(got[i], want[i])
                                 : std::fabs(got[i] - want[i]) <= rtol * std::max(1.0f, std::fabs(want[i]));
    if (!ok && ++bad <= 5) ADD_FAILURE() << what << "[" << i << "]: cuda " << got[i] << " cpu " << want[i];
  }
  EXPECT_EQ(bad, 0u) << what;
}

// Device StepRows from host token / position lists (slot unused by these kernels: zeros).
struct DevRows {
  Dev<int32_t> tok, slot, pos;
  int R;
  DevRows(const std::vector<int32_t>& t, const std::vector<int32_t>& p)
      : tok(t), slot(std::vector<int32_t>(t.size(), 0)), pos(p), R(static_cast<int>(t.size())) {}
  cuda::StepRows rows() const { return {tok.get(), slot.get(), pos.get(), R}; }
};

// ---- rope -------------------------------------------------------------------------------

TEST(CudaSmallKernels, RopeRowsMatchesCpuBitwise) {
  cpu::RopeSpec spec;
  spec.dim = 64;
  spec.theta = 10000.0;
  spec.yarn = true;
  spec.factor = 16.0;
  spec.original_max_position = 1024;
  const cpu::Rope rope(spec);
  const int64_t max_pos = 4096;
  cuda::RopeTable table(rope, max_pos);
  cuda::RopeTable moved(std::move(table));  // the move keeps the upload, empties the source
  EXPECT_EQ(table.view().cos, nullptr);
  ASSERT_NE(moved.view().cos, nullptr);
  EXPECT_EQ(moved.view().max_pos, max_pos);

  const int heads = 3, n = 72;  // rotate the last 64 of 72 channels
  const int64_t head_stride = 80, ld = heads * head_stride + 5;
  const std::vector<int32_t> pos = {0, 7, 1000, 4095, 3};
  const int R = static_cast<int>(pos.size());
  for (bool inverse : {false, true}) {
    const std::vector<float> x = uniform(static_cast<size_t>(R * ld), -2.0f, 2.0f, 11);
    std::vector<float> want = x;
    for (int r = 0; r < R; ++r) rope.apply_heads(want.data() + r * ld, heads, n, head_stride, pos[static_cast<size_t>(r)], inverse);
    DevRows rows(std::vector<int32_t>(static_cast<size_t>(R), 0), pos);
    Dev<float> dx(x);
    cuda::rope_rows(rows.rows(), dx.get(), ld, heads, head_stride, n, moved.view(), inverse, nullptr);
    expect_close(dx.host(), want, 0.0f, inverse ? "rope inverse" : "rope");  // also: gaps untouched
  }
}

// ---- RMS norm ---------------------------------------------------------------------------

TEST(CudaSmallKernels, RmsNormMatchesCpu) {
  struct Case { int rows, n; int64_t ldx, ldy; bool weighted, in_place; };
  for (const Case c : {Case{1, 1, 1, 1, true, false}, Case{3, 7, 9, 8, true, false}, Case{5, 4099, 4100, 4099, false, false},
                       Case{2, 16384, 16384, 16384, true, true}, Case{33, 256, 260, 256, true, false}}) {
    const std::string what = "rmsnorm rows " + std::to_string(c.rows) + " n " + std::to_string(c.n);
    const std::vector<float> x = uniform(static_cast<size_t>(c.rows * c.ldx), -3.0f, 3.0f, 21 + c.n);
    const std::vector<float> w = uniform(static_cast<size_t>(c.n), 0.5f, 1.5f, 22);
    const float eps = 1e-6f;
    const int64_t ldy = c.in_place ? c.ldx : c.ldy;
    std::vector<float> want(static_cast<size_t>(c.rows * ldy), 0.0f);
    cpu::rmsnorm(x.data(), c.ldx, c.rows, c.n, c.weighted ? w.data() : nullptr, eps, want.data(), ldy);
    Dev<float> dx(x), dw(w), dy(static_cast<size_t>(c.rows * ldy));
    float* y = c.in_place ? dx.get() : dy.get();
    cuda::rmsnorm(dx.get(), c.ldx, c.rows, c.n, c.weighted ? dw.get() : nullptr, eps, y, ldy, nullptr);
    const std::vector<float> got = c.in_place ? dx.host() : dy.host();
    std::vector<float> g, wnt;  // only the row values; gaps are not the kernel's
    for (int r = 0; r < c.rows; ++r) {
      g.insert(g.end(), got.begin() + r * ldy, got.begin() + r * ldy + c.n);
      wnt.insert(wnt.end(), want.begin() + r * ldy, want.begin() + r * ldy + c.n);
    }
    expect_close(g, wnt, 1e-5f, what);
  }
}

// ---- mHC --------------------------------------------------------------------------------

struct HcCase {
  int n, H, R, iters;
};

// One hc_pre case's inputs (fn scaled by 1/sqrt(W) so the mixes are O(1) and the sigmoids /
// softmax are not saturated): on the host with the CPU's parameters, on the device with the
// GPU's (a workspace for c.R rows).
struct HcPreInputs {
  std::vector<float> X, fn, base, scale;
  cpu::HcParams host;
  Dev<float> dX, dfn, dbase, dscale, work;
  cuda::HcParams dev;

  static std::vector<float> make_fn(const HcCase& c) {
    const int W = c.n * c.H;
    std::vector<float> fn = uniform(static_cast<size_t>((2 + c.n) * c.n * W), -1.0f, 1.0f, 32);
    for (float& v : fn) v *= 1.7f / std::sqrt(static_cast<float>(W));
    return fn;
  }
  explicit HcPreInputs(const HcCase& c)
      : X(uniform(static_cast<size_t>(c.R * c.n * c.H), -2.0f, 2.0f, 31 + c.H)),
        fn(make_fn(c)),
        base(uniform(static_cast<size_t>((2 + c.n) * c.n), -0.5f, 0.5f, 33)),
        scale{0.8f, 1.1f, 1.6f},
        dX(X),
        dfn(fn),
        dbase(base),
        dscale(scale),
        work(static_cast<size_t>(cuda::hc_pre_workspace_floats(c.R, c.n, c.H))) {
    host.n = dev.n = c.n;
    host.hidden = dev.hidden = c.H;
    host.sinkhorn_iters = dev.sinkhorn_iters = c.iters;
    host.hc_eps = dev.hc_eps = 1e-6f;
    host.norm_eps = dev.norm_eps = 1e-6f;
    host.fn = fn.data(), host.base = base.data(), host.scale = scale.data();
    dev.fn = dfn.get(), dev.base = dbase.get(), dev.scale = dscale.get(), dev.workspace = work.get();
  }
};

TEST(CudaSmallKernels, HcPreMatchesCpu) {
  for (const HcCase c : {HcCase{4, 7168, 3, 20}, HcCase{4, 129, 5, 20}, HcCase{2, 33, 2, 3}, HcCase{4, 64, 1, 1}}) {
    const std::string what = "hc_pre n " + std::to_string(c.n) + " H " + std::to_string(c.H);
    const HcPreInputs in(c);
    std::vector<float> col(static_cast<size_t>(c.R * c.H)), post(static_cast<size_t>(c.R * c.n)),
        comb(static_cast<size_t>(c.R * c.n * c.n));
    cpu::hc_pre(in.host, in.X.data(), c.R, col.data(), post.data(), comb.data(), nullptr);
    Dev<float> dcol(col.size()), dpost(post.size()), dcomb(comb.size());
    cuda::hc_pre(in.dev, in.dX.get(), c.R, dcol.get(), dpost.get(), dcomb.get(), nullptr);
    // the mixes are sums of n*H products in another association; Sinkhorn divides a few times
    expect_close(dpost.host(), post, 2e-5f, what + " post");
    expect_close(dcomb.host(), comb, 3e-5f, what + " comb");
    expect_close(dcol.host(), col, 3e-5f, what + " collapsed");
  }
}

// A prompt-sized step: every row's collapsed input, post and comb must be the same bits as
// the row alone (the deepseek forward's batch invariance; any kernel chosen by the row
// count must keep it), at V4's width and at one whose last split is short.
TEST(CudaSmallKernels, HcPreRowsAreTheSameBitsInAnyStep) {
  for (const HcCase c : {HcCase{4, 4096, 300, 20}, HcCase{4, 129, 260, 20}}) {
    const std::string what = "hc_pre n " + std::to_string(c.n) + " H " + std::to_string(c.H);
    const int W = c.n * c.H;
    const HcPreInputs in(c);
    // Rows [r0, r0 + n) in one call: collapsed, post and comb.
    auto run = [&](int r0, int n) {
      Dev<float> col(static_cast<size_t>(n * c.H)), post(static_cast<size_t>(n * c.n)), comb(static_cast<size_t>(n * c.n * c.n));
      cuda::hc_pre(in.dev, in.dX.get() + static_cast<int64_t>(r0) * W, n, col.get(), post.get(), comb.get(), nullptr);
      return std::vector<std::vector<float>>{col.host(), post.host(), comb.host()};
    };
    const auto whole = run(0, c.R);
    for (const int r : {0, 15, 16, 255, c.R - 1}) {
      const auto alone = run(r, 1);
      const size_t per[3] = {static_cast<size_t>(c.H), static_cast<size_t>(c.n), static_cast<size_t>(c.n * c.n)};
      for (int o = 0; o < 3; ++o) {
        const std::vector<float> want(whole[static_cast<size_t>(o)].begin() + static_cast<ptrdiff_t>(r * per[o]),
                                      whole[static_cast<size_t>(o)].begin() + static_cast<ptrdiff_t>((r + 1) * per[o]));
        expect_close(alone[static_cast<size_t>(o)], want, 0.0f, what + " row " + std::to_string(r) + " output " + std::to_string(o));
      }
    }
  }
}

TEST(CudaSmallKernels, HcPostMatchesCpuBitwise) {
  for (const HcCase c : {HcCase{4, 7168, 2, 0}, HcCase{4, 131, 5, 0}, HcCase{3, 17, 3, 0}}) {
    const std::string what = "hc_post n " + std::to_string(c.n) + " H " + std::to_string(c.H);
    const std::vector<float> X = uniform(static_cast<size_t>(c.R * c.n * c.H), -2.0f, 2.0f, 41);
    const std::vector<float> y = uniform(static_cast<size_t>(c.R * c.H), -2.0f, 2.0f, 42);
    const std::vector<float> post = uniform(static_cast<size_t>(c.R * c.n), 0.0f, 2.0f, 43);
    const std::vector<float> comb = uniform(static_cast<size_t>(c.R * c.n * c.n), 0.0f, 1.0f, 44);
    std::vector<float> want(X.size());
    cpu::hc_post(c.n, c.H, X.data(), c.R, y.data(), post.data(), comb.data(), want.data());
    Dev<float> dX(X), dy(y), dpost(post), dcomb(comb), dout(X.size());
    cuda::hc_post(c.n, c.H, dX.get(), c.R, dy.get(), dpost.get(), dcomb.get(), dout.get(), nullptr);
    expect_close(dout.host(), want, 0.0f, what);
  }
}

// The DSpark target features: the mean over the streams into one H-wide column block of a
// wider row (the other columns stay as they were: poisoned on both sides).
TEST(CudaSmallKernels, HcStreamMeanMatchesCpuBitwise) {
  for (const HcCase c : {HcCase{4, 7168, 3, 0}, HcCase{4, 131, 5, 0}, HcCase{3, 17, 2, 0}}) {
    const std::string what = "hc_stream_mean n " + std::to_string(c.n) + " H " + std::to_string(c.H);
    const std::vector<float> X = uniform(static_cast<size_t>(c.R * c.n * c.H), -2.0f, 2.0f, 51);
    const int64_t ld = 3 * c.H;
    float poison;
    const uint32_t ones = 0xFFFFFFFFu;
    std::memcpy(&poison, &ones, 4);
    std::vector<float> want(static_cast<size_t>(c.R * ld), poison);
    cpu::hc_stream_mean(c.n, c.H, X.data(), c.R, want.data() + c.H, ld);
    Dev<float> dX(X), dout(want.size());  // poisoned with 0xFF bytes, as want
    cuda::hc_stream_mean(c.n, c.H, dX.get(), c.R, dout.get() + c.H, ld, nullptr);
    expect_close(dout.host(), want, 0.0f, what);
  }
}

TEST(CudaSmallKernels, HcHeadMatchesCpu) {
  for (const HcCase c : {HcCase{4, 7168, 3, 0}, HcCase{4, 129, 4, 0}, HcCase{1, 50, 2, 0}}) {
    const std::string what = "hc_head n " + std::to_string(c.n) + " H " + std::to_string(c.H);
    const int W = c.n * c.H;
    const std::vector<float> X = uniform(static_cast<size_t>(c.R * W), -2.0f, 2.0f, 51);
    std::vector<float> fn = uniform(static_cast<size_t>(c.n * W), -1.0f, 1.0f, 52);
    for (float& v : fn) v *= 1.7f / std::sqrt(static_cast<float>(W));
    const std::vector<float> base = uniform(static_cast<size_t>(c.n), -0.5f, 0.5f, 53);
    const float scale = 0.9f, hc_eps = 1e-6f, norm_eps = 1e-6f;
    std::vector<float> want(static_cast<size_t>(c.R * c.H));
    cpu::hc_head(c.n, c.H, fn.data(), base.data(), scale, hc_eps, norm_eps, X.data(), c.R, want.data(), nullptr);
    Dev<float> dX(X), dfn(fn), dbase(base), dh(want.size());
    cuda::hc_head(c.n, c.H, dfn.get(), dbase.get(), scale, hc_eps, norm_eps, dX.get(), c.R, dh.get(), nullptr);
    expect_close(dh.host(), want, 3e-5f, what);
  }
}

// ---- MoE --------------------------------------------------------------------------------

// Routing, SwiGLU and the combine, and the embedding gathers and the MTP broadcast add,
// are compared with their ops/cpu / model::CpuOps functions by the op harness
// (tests/ops_harness: moe_route, swiglu, moe_combine, embed, add_broadcast_streams).

// ---- argmax -----------------------------------------------------------------------------

TEST(CudaSmallKernels, ArgmaxRowsTiesToLowestAndSkipsNaN) {
  const int V = 160007, R = 7;
  const int64_t ld = 160016;
  std::vector<float> logits = uniform(static_cast<size_t>(R * ld), -10.0f, 10.0f, 111);
  auto at = [&](int r, int v) -> float& { return logits[static_cast<size_t>(r * ld + v)]; };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  at(1, 150000) = 50.0f;  // row 1: exact tie between 70000 and 150000
  at(1, 70000) = 50.0f;
  for (int v = 0; v < V; ++v) at(2, v) = 1.25f;  // row 2: all equal
  at(3, 0) = nan;  // row 3: NaN first, then a clear maximum
  at(3, 99) = nan;
  at(3, 4242) = 40.0f;
  at(4, V - 1) = 30.0f;  // row 4: the maximum is the last element; the gap after V is larger
  for (int64_t v = V; v < ld; ++v) at(4, static_cast<int>(v)) = 1000.0f;
  for (int v = 0; v < V; ++v) at(5, v) = -inf;  // row 5: all -inf
  for (int v = 0; v < V; ++v) at(6, v) = (v % 3 == 0) ? nan : -5.0f;  // row 6: NaNs among equal values
  std::vector<int32_t> want(static_cast<size_t>(R));
  for (int r = 0; r < R; ++r) {  // runtime::argmax's rule, with NaN never chosen over a number
    int32_t best = -1;
    for (int v = 0; v < V; ++v) {
      const float x = at(r, v);
      if (std::isnan(x)) continue;
      if (best < 0 || x > at(r, best)) best = v;
    }
    want[static_cast<size_t>(r)] = best < 0 ? 0 : best;
  }
  EXPECT_EQ(want[1], 70000);
  EXPECT_EQ(want[2], 0);
  EXPECT_EQ(want[3], 4242);
  EXPECT_EQ(want[4], V - 1);
  EXPECT_EQ(want[5], 0);
  EXPECT_EQ(want[6], 1);
  Dev<float> dl(logits);
  Dev<int32_t> dout(static_cast<size_t>(R));
  cuda::argmax_rows(dl.get(), ld, R, V, dout.get(), nullptr);
  EXPECT_EQ(dout.host(), want);
}

// The argmax of a + b without writing it (the DSpark Markov step) is the argmax of the sums
// add_broadcast_streams writes, ties included: b is a copy of a shifted so that several
// sums tie exactly, and rows of a single equal value.
TEST(CudaSmallKernels, ArgmaxOfSumEqualsArgmaxOfTheWrittenSum) {
  const int V = 4099, R = 5;
  const int64_t lda = 4104, ldb = 4099;
  std::vector<float> a = uniform(static_cast<size_t>(R * lda), -4.0f, 4.0f, 7);
  std::vector<float> b = uniform(static_cast<size_t>(R * ldb), -4.0f, 4.0f, 8);
  for (int v = 0; v < V; ++v) {
    b[static_cast<size_t>(ldb + v)] = -a[static_cast<size_t>(lda + v)];  // row 1: every sum is 0
    b[static_cast<size_t>(2 * ldb + v)] = 0.5f - a[static_cast<size_t>(2 * lda + v)];  // row 2: rounded ties
  }
  a[static_cast<size_t>(3 * lda + 17)] = 30.0f;  // row 3: tie of two sums at 31
  b[static_cast<size_t>(3 * ldb + 17)] = 1.0f;
  a[static_cast<size_t>(3 * lda + 4000)] = 1.0f;
  b[static_cast<size_t>(3 * ldb + 4000)] = 30.0f;
  std::vector<float> sum(static_cast<size_t>(R * V));
  Dev<float> da(a), db(b), dsum(sum);
  Dev<int32_t> got(static_cast<size_t>(R)), want(static_cast<size_t>(R));
  for (int r = 0; r < R; ++r)  // one row at a time: add_broadcast_streams' ep has one row per row
    cuda::add_broadcast_streams(da.get() + r * lda, db.get() + r * ldb, 1, 1, V, dsum.get() + r * V, nullptr);
  cuda::argmax_rows(dsum.get(), V, R, V, want.get(), nullptr);
  cuda::argmax_rows_of_sum(da.get(), lda, db.get(), ldb, R, V, got.get(), nullptr);
  EXPECT_EQ(got.host(), want.host());
  EXPECT_EQ(got.host()[1], 0) << "all sums equal: the lowest id";
  EXPECT_EQ(got.host()[3], 17) << "two equal maxima: the lower id";
  EXPECT_THROW(cuda::argmax_rows_of_sum(da.get(), 4, db.get(), ldb, R, V, got.get(), nullptr), Error);  // lda < V
}

// ---- usage errors (host checks in the launchers) ------------------------------------------

TEST(CudaSmallKernels, LaunchersRejectBadShapes) {
  Dev<float> buf(64);
  Dev<int32_t> ibuf(64);
  float* f = buf.get();
  const cuda::StepRows rows{ibuf.get(), ibuf.get(), ibuf.get(), 2};
  EXPECT_THROW(cuda::rmsnorm(f, 4, 2, 0, nullptr, 1e-6f, f, 4, nullptr), Error);
  EXPECT_THROW(cuda::rmsnorm(f, 3, 2, 4, nullptr, 1e-6f, f, 4, nullptr), Error);
  cuda::HcParams hc;
  hc.n = 5;
  hc.hidden = 4;
  EXPECT_THROW(cuda::hc_pre(hc, f, 1, f, f, f, nullptr), Error);
  EXPECT_THROW(cuda::hc_post(4, 4, f, 1, f, f, f, f, nullptr), Error);  // out aliases X
  EXPECT_THROW(cuda::moe_route(rows, ScoringFunc::SqrtSoftplus, f, 8, 8, 9, f, nullptr, 1.0f, ibuf.get(), f, nullptr),
               Error);  // K > 8
  EXPECT_THROW(cuda::moe_route(rows, ScoringFunc::SqrtSoftplus, f, 8, 8, 2, nullptr, nullptr, 1.0f, ibuf.get(), f, nullptr),
               Error);
  EXPECT_THROW(cuda::argmax_rows(f, 4, 2, 8, ibuf.get(), nullptr), Error);  // ld < V
  EXPECT_THROW(cuda::rope_rows(rows, f, 8, 1, 8, 8, cuda::RopeView{}, false, nullptr), Error);  // empty table
}

}  // namespace
}  // namespace kiln::ops
