// The CPU reference forward is independent of how tokens are fed: whole prompt, one
// token at a time, or chunks of any size give the same logits and streams; a copied
// DecodeState continues exactly like the original; the MTP block agrees in sequence and
// row by row. Random tiny model with every layer kind (SWA, CSA with an indexer whose
// top-k is smaller than the visible entries, HCA at two rates), a hash layer and MTP.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kiln/core/error.h"
#include "kiln/model/forward.h"
#include "random_weights.h"
#include "support/compare.h"

namespace kiln::model {
namespace {

constexpr double kTol = 1e-5;

using test::rel_err;

struct Fed {
  std::vector<float> logits, streams;
};

// Feeds `tokens` in chunks given by `sizes` (cycled) into `st`.
Fed feed(const Forward& f, DecodeState& st, const std::vector<int32_t>& tokens, std::vector<int64_t> sizes) {
  const auto& c = f.weights().config;
  const int64_t T = static_cast<int64_t>(tokens.size()), V = c.vocab_size, S = c.hc_mult * c.hidden_size;
  Fed r;
  r.logits.assign(static_cast<size_t>(T * V), 0.0f);
  r.streams.assign(static_cast<size_t>(T * S), 0.0f);
  size_t k = 0;
  for (int64_t p = 0; p < T;) {
    const int64_t n = std::min(sizes[k++ % sizes.size()], T - p);
    f.step(st, std::span(tokens).subspan(static_cast<size_t>(p), static_cast<size_t>(n)), r.logits.data() + p * V,
           r.streams.data() + p * S);
    p += n;
  }
  return r;
}

class ForwardModes : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = &test::every_kind_weights();
    config_ = &weights_->config;
  }
  const Weights* weights_ = nullptr;
  const ModelConfig* config_ = nullptr;
  static constexpr int64_t kT = 100;
};

TEST_F(ForwardModes, WholeOneByOneAndChunksAgree) {
  Forward f(*weights_, 2);
  const auto tokens = test::random_tokens(kT, config_->vocab_size, 11);
  auto s0 = f.new_state();
  const Fed whole = feed(f, s0, tokens, {kT});
  EXPECT_EQ(s0.length(), kT);
  for (const auto& sizes : std::vector<std::vector<int64_t>>{{1}, {3}, {5}, {7}, {2, 9, 1, 16}}) {
    auto st = f.new_state();
    const Fed r = feed(f, st, tokens, sizes);
    EXPECT_LE(rel_err(r.logits, whole.logits), kTol) << "chunk " << sizes[0];
    EXPECT_LE(rel_err(r.streams, whole.streams), kTol) << "chunk " << sizes[0];
  }
  // The logits are finite and not degenerate.
  for (float v : whole.logits) ASSERT_TRUE(std::isfinite(v));
  EXPECT_GT(rel_err(std::vector<float>(whole.logits.begin(), whole.logits.begin() + config_->vocab_size),
                    std::vector<float>(whole.logits.end() - config_->vocab_size, whole.logits.end())),
            1e-2);
}

TEST_F(ForwardModes, ThreadCountDoesNotChangeResults) {
  const auto tokens = test::random_tokens(40, config_->vocab_size, 5);
  Forward f1(*weights_, 1), f3(*weights_, 3);
  auto a = f1.new_state(), b = f3.new_state();
  const Fed r1 = feed(f1, a, tokens, {40});
  const Fed r3 = feed(f3, b, tokens, {40});
  EXPECT_EQ(r1.logits, r3.logits);
}

TEST_F(ForwardModes, IndexerTopkMatters) {
  // With index_topk covering every visible entry the CSA layers attend to all of them:
  // the logits must move, or the indexer's selection would be untested.
  const auto tokens = test::random_tokens(kT, config_->vocab_size, 11);
  Weights all = *weights_;
  all.config.index_topk = 1000;
  Forward fa(all, 2), fk(*weights_, 2);
  auto sa = fa.new_state(), sk = fk.new_state();
  const Fed ra = feed(fa, sa, tokens, {kT});
  const Fed rk = feed(fk, sk, tokens, {kT});
  const int64_t V = config_->vocab_size;
  // Identical while no query sees more than index_topk entries: (p+1)/4 <= 3 for p < 15.
  const std::vector<float> early_a(ra.logits.begin(), ra.logits.begin() + 15 * V);
  const std::vector<float> early_k(rk.logits.begin(), rk.logits.begin() + 15 * V);
  EXPECT_LE(rel_err(early_a, early_k), kTol);
  EXPECT_GT(rel_err(ra.logits, rk.logits), 1e-3);
}

TEST_F(ForwardModes, CopiedStateContinuesIdentically) {
  Forward f(*weights_, 2);
  const auto tokens = test::random_tokens(kT, config_->vocab_size, 23);
  const std::vector<int32_t> head(tokens.begin(), tokens.begin() + 53), tail(tokens.begin() + 53, tokens.end());
  auto st = f.new_state();
  feed(f, st, head, {53});
  DecodeState copy(st);
  EXPECT_EQ(copy.length(), 53);
  const Fed a = feed(f, st, tail, {4});
  const Fed b = feed(f, copy, tail, {1});
  EXPECT_LE(rel_err(a.logits, b.logits), kTol);
  // A moved state continues too.
  DecodeState moved(std::move(copy));
  EXPECT_EQ(moved.length(), kT);
  // And the copy was deep: the original's continuation equals a fresh run of the whole.
  auto fresh = f.new_state();
  const Fed whole = feed(f, fresh, tokens, {kT});
  const int64_t V = config_->vocab_size;
  const std::vector<float> whole_tail(whole.logits.begin() + 53 * V, whole.logits.end());
  EXPECT_LE(rel_err(a.logits, whole_tail), kTol);
}

TEST_F(ForwardModes, MtpInSequenceAndRowByRowAgree) {
  Forward f(*weights_, 2);
  const auto tokens = test::random_tokens(kT, config_->vocab_size, 31);
  auto st = f.new_state();
  const Fed main = feed(f, st, tokens, {kT});
  const int64_t V = config_->vocab_size, S = config_->hc_mult * config_->hidden_size, R = kT - 1;
  auto run_mtp = [&](int64_t chunk, std::vector<float>* out_streams) {
    std::vector<float> logits(static_cast<size_t>(R * V));
    if (out_streams) out_streams->assign(static_cast<size_t>(R * S), 0.0f);
    auto ms = f.new_state();
    for (int64_t p = 0; p < R; p += chunk) {
      const int64_t n = std::min(chunk, R - p);
      EXPECT_EQ(ms.mtp_length(0), p);
      f.mtp_step(ms, 0, std::span(main.streams).subspan(static_cast<size_t>(p * S), static_cast<size_t>(n * S)),
                 std::span(tokens).subspan(static_cast<size_t>(p + 1), static_cast<size_t>(n)), logits.data() + p * V,
                 out_streams ? out_streams->data() + p * S : nullptr);
    }
    EXPECT_EQ(ms.mtp_length(0), R);
    EXPECT_EQ(ms.length(), 0);
    return logits;
  };
  std::vector<float> s_all, s_one, s_five;
  const auto all = run_mtp(R, &s_all);
  const auto one = run_mtp(1, &s_one);
  const auto five = run_mtp(5, &s_five);
  EXPECT_LE(rel_err(one, all), kTol);
  EXPECT_LE(rel_err(five, all), kTol);
  EXPECT_LE(rel_err(s_one, s_all), kTol);
  EXPECT_LE(rel_err(s_five, s_all), kTol);
  for (float v : all) ASSERT_TRUE(std::isfinite(v));
  // The draft differs from the main model's own next-token logits.
  const std::vector<float> main_logits(main.logits.begin(), main.logits.begin() + R * V);
  EXPECT_GT(rel_err(all, main_logits), 1e-2);
}

TEST_F(ForwardModes, RejectsBadInput) {
  Forward f(*weights_, 1);
  auto st = f.new_state();
  const int32_t bad[1] = {static_cast<int32_t>(config_->vocab_size)};
  EXPECT_THROW(f.step(st, bad, nullptr, nullptr), Error);
  EXPECT_EQ(st.length(), 0);
  const int32_t ok[1] = {3};
  std::vector<float> streams(3);
  EXPECT_THROW(f.mtp_step(st, 0, streams, ok, nullptr, nullptr), Error);
  EXPECT_THROW(f.mtp_step(st, 1, streams, ok, nullptr, nullptr), Error);
  EXPECT_THROW(static_cast<void>(st.mtp_length(1)), Error);
  Weights broken = *weights_;
  broken.layers[1].attn.indexer.reset();
  EXPECT_THROW(Forward(broken, 1), Error);
}

}  // namespace
}  // namespace kiln::model
