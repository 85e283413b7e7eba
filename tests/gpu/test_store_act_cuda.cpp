// The deepseek precision's activation rounding done by the kernel that writes the values
// (ops::Store::Act; bf16_out / bf16 arguments of ops/cuda) against the same kernel without
// it followed by cuda::round_bf16, the separate launch it replaces: bitwise, on random
// inputs with fixed seeds. For rope, the reference rounds the vectors before the rotation
// too, and the inputs are not bf16 values, so a kernel that skipped either rounding fails.
// The whole forward with these stores is compared with the CPU reference's deepseek
// numerics by test_gpu_precision.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kiln/ops/act_quant.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cuda/copy_rows.h"
#include "kiln/ops/cuda/hyper_connection.h"
#include "kiln/ops/cuda/moe.h"
#include "kiln/ops/cuda/norm.h"
#include "kiln/ops/cuda/rope.h"
#include "support/device_array.h"
#include "support/random.h"

namespace kiln::ops {
namespace {

using test::Dev;
using test::uniform;  // tests/support/random.h

// Bitwise equality of every element, and at least one element changed by the rounding
// (so the comparison is not between two unrounded results).
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& unrounded,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(got.size(), unrounded.size()) << what;
  size_t bad = 0, rounded = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], 4) != 0 && ++bad <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: fused " << got[i] << ", kernel + round_bf16 " << want[i];
    }
    rounded += std::memcmp(&want[i], &unrounded[i], 4) != 0;
  }
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_GT(rounded, got.size() / 2) << what << ": the reference is hardly rounded";
}

// The reference: the kernel's plain output rounded by the separate launch.
std::vector<float> rounded(const Dev<float>& plain) {
  Dev<float> r(plain.host());
  cuda::round_bf16(r.get(), 1, 1, static_cast<int64_t>(r.size()), r.get(), 1, nullptr);
  return r.host();
}

TEST(CudaStoreAct, RmsNormRoundsWhatItWrites) {
  for (bool weighted : {true, false}) {
    const int rows = 7, n = 4099;
    const std::vector<float> x = uniform(static_cast<size_t>(rows * n), -3.0f, 3.0f, 1);
    const std::vector<float> w = uniform(static_cast<size_t>(n), 0.5f, 1.5f, 2);
    Dev<float> dx(x), dw(w), plain(x.size()), fused(x);  // fused: in place
    cuda::rmsnorm(dx.get(), n, rows, n, weighted ? dw.get() : nullptr, 1e-6f, plain.get(), n, nullptr);
    cuda::rmsnorm(fused.get(), n, rows, n, weighted ? dw.get() : nullptr, 1e-6f, fused.get(), n, nullptr, true);
    expect_same_bits(fused.host(), rounded(plain), plain.host(), weighted ? "rmsnorm" : "unweighted rmsnorm");
  }
}

TEST(CudaStoreAct, RopeRoundsTheVectorsBeforeAndAfter) {
  cpu::RopeSpec spec;
  spec.dim = 16;
  spec.theta = 10000.0;
  const cpu::Rope rope(spec);
  cuda::RopeTable table(rope, 512);
  const int heads = 4, n = 64;  // the last 16 of each head's 64 channels rotate
  const int64_t ld = heads * n;
  const std::vector<int32_t> pos = {0, 5, 300, 511, 77};
  const int R = static_cast<int>(pos.size());
  Dev<int32_t> tok(std::vector<int32_t>(pos.size(), 0)), slot(std::vector<int32_t>(pos.size(), 0)), dpos(pos);
  const cuda::StepRows rows{tok.get(), slot.get(), dpos.get(), R};
  for (bool inverse : {false, true}) {
    const std::vector<float> x = uniform(static_cast<size_t>(R * ld), -2.0f, 2.0f, 3);
    Dev<float> ref(x), fused(x);
    cuda::round_bf16(ref.get(), ld, R, ld, ref.get(), ld, nullptr);
    cuda::rope_rows(rows, ref.get(), ld, heads, n, n, table.view(), inverse, nullptr);
    Dev<float> unrounded(ref.host());
    cuda::round_bf16(ref.get(), ld, R, ld, ref.get(), ld, nullptr);
    cuda::rope_rows(rows, fused.get(), ld, heads, n, n, table.view(), inverse, nullptr, true);
    // every channel differs from x after rounding; the rotated ones also after the rotation
    expect_same_bits(fused.host(), ref.host(), x, inverse ? "inverse rope" : "rope");
  }
}

TEST(CudaStoreAct, ScaleRowsRoundsWhatItWrites) {
  const int R = 5, n = 16;
  const int64_t ld = 20;
  const std::vector<float> x = uniform(static_cast<size_t>(R * ld), -2.0f, 2.0f, 4);
  Dev<float> plain(x), fused(x);
  cuda::scale_rows(plain.get(), ld, R, n, 0.25f * 1.37f, nullptr);
  cuda::scale_rows(fused.get(), ld, R, n, 0.25f * 1.37f, nullptr, true);
  Dev<float> ref(plain.host());
  cuda::round_bf16(ref.get(), ld, R, n, ref.get(), ld, nullptr);  // the gaps stay as they are
  // Compare the rows' n values only (the gaps are x on both sides).
  std::vector<float> got, want, before;
  const std::vector<float> g = fused.host(), w = ref.host(), p = plain.host();
  for (int r = 0; r < R; ++r) {
    got.insert(got.end(), g.begin() + r * ld, g.begin() + r * ld + n);
    want.insert(want.end(), w.begin() + r * ld, w.begin() + r * ld + n);
    before.insert(before.end(), p.begin() + r * ld, p.begin() + r * ld + n);
    for (int64_t c = n; c < ld; ++c) EXPECT_EQ(std::memcmp(&g[r * ld + c], &x[r * ld + c], 4), 0) << "gap";
  }
  expect_same_bits(got, want, before, "scale_rows");
}

TEST(CudaStoreAct, MhcRoundsCollapsedStreamsAndHead) {
  const int n = 4, H = 129, R = 3, W = n * H, mix = (2 + n) * n;
  const std::vector<float> X = uniform(static_cast<size_t>(R * W), -2.0f, 2.0f, 5);
  std::vector<float> fn = uniform(static_cast<size_t>(mix * W), -1.0f, 1.0f, 6);
  for (float& v : fn) v *= 0.05f;
  const std::vector<float> base = uniform(static_cast<size_t>(mix), -0.5f, 0.5f, 7);
  const std::vector<float> scale = {0.8f, 1.1f, 1.6f};
  Dev<float> dX(X), dfn(fn), dbase(base), dscale(scale);
  Dev<float> work(static_cast<size_t>(cuda::hc_pre_workspace_floats(R, n, H)));
  cuda::HcParams p;
  p.n = n;
  p.hidden = H;
  p.fn = dfn.get();
  p.base = dbase.get();
  p.scale = dscale.get();
  p.sinkhorn_iters = 20;
  p.hc_eps = 1e-6f;
  p.norm_eps = 1e-6f;
  p.workspace = work.get();
  const size_t RH = static_cast<size_t>(R * H), Rn = static_cast<size_t>(R * n), Rnn = static_cast<size_t>(R * n * n);
  Dev<float> col(RH), post(Rn), comb(Rnn), fcol(RH), fpost(Rn), fcomb(Rnn);
  cuda::hc_pre(p, dX.get(), R, col.get(), post.get(), comb.get(), nullptr);
  cuda::hc_pre(p, dX.get(), R, fcol.get(), fpost.get(), fcomb.get(), nullptr, true);
  expect_same_bits(fcol.host(), rounded(col), col.host(), "hc_pre collapsed");
  EXPECT_EQ(fpost.host() == post.host(), true) << "hc_pre post is not an activation: fp32 either way";
  EXPECT_EQ(fcomb.host() == comb.host(), true) << "hc_pre comb is not an activation: fp32 either way";

  const std::vector<float> y = uniform(RH, -2.0f, 2.0f, 8);
  Dev<float> dy(y), out(static_cast<size_t>(R * W)), fout(static_cast<size_t>(R * W));
  cuda::hc_post(n, H, dX.get(), R, dy.get(), post.get(), comb.get(), out.get(), nullptr);
  cuda::hc_post(n, H, dX.get(), R, dy.get(), post.get(), comb.get(), fout.get(), nullptr, true);
  expect_same_bits(fout.host(), rounded(out), out.host(), "hc_post");

  Dev<float> h(RH), fh(RH);
  cuda::hc_head(n, H, dfn.get(), dbase.get(), 0.9f, 1e-6f, 1e-6f, dX.get(), R, h.get(), nullptr);
  cuda::hc_head(n, H, dfn.get(), dbase.get(), 0.9f, 1e-6f, 1e-6f, dX.get(), R, fh.get(), nullptr, true);
  expect_same_bits(fh.host(), rounded(h), h.host(), "hc_head");
}

TEST(CudaStoreAct, MoeCombineRoundsWhatItWrites) {
  const int R = 4, K = 3, H = 300;
  const std::vector<float> y = uniform(static_cast<size_t>(R * K * H), -2.0f, 2.0f, 9);
  const std::vector<float> wt = uniform(static_cast<size_t>(R * K), 0.1f, 1.0f, 10);
  const std::vector<float> shared = uniform(static_cast<size_t>(R * H), -1.0f, 1.0f, 11);
  const std::vector<int32_t> idx = {5, 1, 3, 0, 7, 2, 4, 4, 1, 6, 2, 3};
  Dev<float> dy(y), dwt(wt), dshared(shared), out(static_cast<size_t>(R * H)), fout(static_cast<size_t>(R * H));
  Dev<int32_t> didx(idx);
  for (bool weighted : {true, false}) {
    const float* w = weighted ? dwt.get() : nullptr;
    cuda::moe_combine(dy.get(), H, didx.get(), w, R, K, H, dshared.get(), out.get(), nullptr);
    cuda::moe_combine(dy.get(), H, didx.get(), w, R, K, H, dshared.get(), fout.get(), nullptr, true);
    expect_same_bits(fout.host(), rounded(out), out.host(), weighted ? "moe_combine" : "unweighted moe_combine");
  }
}

}  // namespace
}  // namespace kiln::ops
