// The forward on weights kept quantized (decoded inside the kernels, ops/cpu/quant_linear.h)
// against the same artifact dequantized to fp32 at load: every quantize recipe, logits and
// MTP logits bitwise equal; resident linear bytes smaller. And products fused into one
// pass (an expert's w1 and w3 among them) against separate passes, on an NVFP4 artifact
// whose w1 and w3 carry different global scales: bitwise equal.
#include <gtest/gtest.h>

#include <cstring>
#include <sstream>

#include "kiln/artifact/plan.h"
#include "kiln/cli/quantize.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/model/forward.h"
#include "kiln/model/weights.h"
#include "support/artifacts.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(KILN_TEST_DATA_DIR) + "/fixtures";

void quantize(const fs::path& src, const std::string& recipe, const fs::path& out, bool split = false) {
  cli::QuantizeOptions o;
  o.model = src;
  o.recipe = recipe;
  o.out = out;
  o.nvfp4_split_global = split;
  std::ostringstream so, se;
  ASSERT_EQ(cli::run_quantize(o, so, se), 0) << se.str();
}

struct Logits {
  std::vector<float> main, mtp;
};

// Prefill of a fixed prompt, then the MTP block over the returned streams.
Logits run(const model::Weights& w, bool fuse) {
  model::Forward f(w, 2, fuse);
  const auto& c = w.config;
  std::vector<int32_t> tok(20);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<int32_t>((i * 37 + 5) % static_cast<size_t>(c.vocab_size));
  const int64_t T = static_cast<int64_t>(tok.size()) - 1;
  Logits r;
  r.main.resize(static_cast<size_t>(T * c.vocab_size));
  std::vector<float> streams(static_cast<size_t>(T * c.hc_mult * c.hidden_size));
  auto st = f.new_state();
  f.step(st, std::span(tok.data(), static_cast<size_t>(T)), r.main.data(), streams.data());
  if (!w.mtp.empty()) {
    r.mtp.resize(r.main.size());
    f.mtp_step(st, 0, streams, std::span(tok.data() + 1, static_cast<size_t>(T)), r.mtp.data(), nullptr);
  }
  return r;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
}

TEST(QuantizedForward, EveryRecipeEqualsItsDequantizedLoadBitwise) {
  for (const char* recipe : {"deepseek-native", "deepseek-native-nvfp4", "w4a16-fp8-mtp", "nvfp4-fp8-mtp", "fp8-v3-style"}) {
    SCOPED_TRACE(recipe);
    test::TempDir d;
    quantize(kFixtures + "/tiny_a/native", recipe, d.path() / "q");
    auto ckpt = Checkpoint::open(d.path() / "q");
    auto plan = build_plan(ckpt, load_model_config(d.path() / "q"));
    ASSERT_TRUE(plan.loadable());
    const model::Weights q = model::load_weights(ckpt, plan);
    const model::Weights f = model::load_weights(ckpt, plan, {.dequantize = true});
    EXPECT_TRUE(q.layers[1].ffn.experts[0].w1.quantized());
    EXPECT_FALSE(f.layers[1].ffn.experts[0].w1.quantized());
    EXPECT_LT(model::linear_weight_bytes(q) * 2, model::linear_weight_bytes(f));
    const Logits a = run(q, true), b = run(f, true);
    expect_same_bits(a.main, b.main, "logits");
    expect_same_bits(a.mtp, b.mtp, "mtp logits");
    EXPECT_FALSE(a.mtp.empty());
  }
}

TEST(QuantizedForward, SplitGlobalNvfp4FusedEqualsUnfusedBitwise) {
  test::TempDir d;
  quantize(kFixtures + "/tiny_b/native", "nvfp4-fp8-mtp", d.path() / "q", /*split=*/true);
  auto ckpt = Checkpoint::open(d.path() / "q");
  auto plan = build_plan(ckpt, load_model_config(d.path() / "q"));
  ASSERT_TRUE(plan.loadable());
  const model::Weights q = model::load_weights(ckpt, plan);
  // The artifact does exercise separate scales: some expert's w1 and w3 globals differ.
  int differ = 0;
  for (const auto& l : q.layers) {
    for (const auto& e : l.ffn.experts) {
      ASSERT_EQ(e.w1.q.scheme, SchemeKind::NVFP4);
      differ += e.w1.q.global != e.w3.q.global;
    }
  }
  EXPECT_GT(differ, 0);
  const Logits fused = run(q, true), unfused = run(q, false);
  expect_same_bits(fused.main, unfused.main, "logits");
  expect_same_bits(fused.mtp, unfused.mtp, "mtp logits");
  // And both equal the fp32 forward on the dequantized weights.
  const model::Weights f = model::load_weights(ckpt, plan, {.dequantize = true});
  const Logits ref = run(f, false);
  expect_same_bits(fused.main, ref.main, "logits vs fp32");
  expect_same_bits(fused.mtp, ref.mtp, "mtp logits vs fp32");
}

}  // namespace
}  // namespace kiln
