// Rollback of the decode state (Forward::truncate / truncate_mtp): after feeding a chunk
// of K+1 tokens whose first j+1 are the real continuation and the rest are rejected
// garbage, truncating to the accepted length leaves a state equal, field by field and
// bitwise (DecodeState::difference), to feeding only the accepted tokens one at a time;
// the same for MTP blocks (one CSA, one HCA, so MTP compressors are rolled back too).
// Every offset modulo the compress ratios (4, 8, 16) and the window (8) is covered.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "kiln/core/error.h"
#include "kiln/model/forward.h"
#include "random_weights.h"

namespace kiln::model {
namespace {

constexpr int64_t kT = 72;

class Rollback : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Backbone SWA, CSA, HCA 16, CSA, HCA 8; two MTP blocks: CSA (ratio 4) and HCA (8).
    config_ = new ModelConfig(test::tiny_forward_config({0, 4, 16, 4, 8}, 1, 2));
    const size_t L = static_cast<size_t>(config_->num_layers);
    config_->compress_ratios[L] = 4;
    config_->attn_kinds[L] = AttnKind::CSA;
    config_->compress_ratios[L + 1] = 8;
    config_->attn_kinds[L + 1] = AttnKind::HCA;
    weights_ = new Weights(test::random_weights(*config_, 99));
    forward_ = new Forward(*weights_, 2);
    tokens_ = test::random_tokens(kT, config_->vocab_size, 5);
    // Plain references: the state after n tokens fed one at a time, and the streams.
    const int64_t S = config_->hc_mult * config_->hidden_size;
    streams_.assign(static_cast<size_t>(kT * S), 0.0f);
    ref_.push_back(forward_->new_state());
    for (int64_t p = 0; p < kT; ++p) {
      DecodeState s(ref_.back());
      forward_->step(s, std::span(tokens_).subspan(static_cast<size_t>(p), 1), nullptr, streams_.data() + p * S);
      ref_.push_back(std::move(s));
    }
    // MTP references: MTP block m fed n rows one at a time (row p: streams p, token p+1).
    for (int m = 0; m < 2; ++m) {
      mtp_ref_[m].push_back(forward_->new_state());
      for (int64_t p = 0; p + 1 < kT; ++p) {
        DecodeState s(mtp_ref_[m].back());
        forward_->mtp_step(s, m, row_streams(p, 1), std::span(tokens_).subspan(static_cast<size_t>(p + 1), 1), nullptr,
                           nullptr);
        mtp_ref_[m].push_back(std::move(s));
      }
    }
  }
  static void TearDownTestSuite() {
    ref_.clear();
    for (auto& r : mtp_ref_) r.clear();
    delete forward_;
    delete weights_;
    delete config_;
  }
  static std::span<const float> row_streams(int64_t p, int64_t n) {
    const int64_t S = config_->hc_mult * config_->hidden_size;
    return std::span<const float>(streams_).subspan(static_cast<size_t>(p * S), static_cast<size_t>(n * S));
  }

  static ModelConfig* config_;
  static Weights* weights_;
  static Forward* forward_;
  static std::vector<int32_t> tokens_;
  static std::vector<float> streams_;
  static std::vector<DecodeState> ref_;
  static std::vector<DecodeState> mtp_ref_[2];
};
ModelConfig* Rollback::config_ = nullptr;
Weights* Rollback::weights_ = nullptr;
Forward* Rollback::forward_ = nullptr;
std::vector<int32_t> Rollback::tokens_;
std::vector<float> Rollback::streams_;
std::vector<DecodeState> Rollback::ref_;
std::vector<DecodeState> Rollback::mtp_ref_[2];

TEST_F(Rollback, DifferenceSeesRealDifferences) {
  EXPECT_EQ(ref_[20].difference(ref_[20]), "");
  EXPECT_NE(ref_[20].difference(ref_[21]), "");
  // Same length, one token different at position 13: window rows / entries differ.
  auto other = tokens_;
  other[13] = (other[13] + 1) % static_cast<int32_t>(config_->vocab_size);
  auto s = forward_->new_state();
  forward_->step(s, std::span(other).subspan(0, 20), nullptr, nullptr);
  EXPECT_NE(ref_[20].difference(s), "");
  DecodeState copy(ref_[20]);
  EXPECT_EQ(copy.difference(ref_[20]), "");
  EXPECT_NE(mtp_ref_[0][30].difference(mtp_ref_[0][29]), "");
  EXPECT_NE(mtp_ref_[0][30].difference(mtp_ref_[1][30]), "");  // other block fed
}

// Verify K+1 tokens (j+1 real, K-j garbage) from every prefix, then keep j+1.
TEST_F(Rollback, MainAcceptJOfKEqualsPlainFeeding) {
  std::mt19937_64 g(3);
  const int64_t V = config_->vocab_size;
  for (int64_t K = 1; K <= 4; ++K) {
    for (int64_t P = 0; P + K + 1 <= kT; P += (K == 1 ? 1 : 3)) {
      for (int64_t j = 0; j <= K; ++j) {
        std::vector<int32_t> chunk(tokens_.begin() + P, tokens_.begin() + P + j + 1);
        while (static_cast<int64_t>(chunk.size()) < K + 1)
          chunk.push_back(static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, V - 1)(g)));
        DecodeState s(ref_[static_cast<size_t>(P)]);
        forward_->step(s, chunk, nullptr, nullptr);
        forward_->truncate(s, P + j + 1);
        const std::string d = s.difference(ref_[static_cast<size_t>(P + j + 1)]);
        ASSERT_EQ(d, "") << "K=" << K << " P=" << P << " j=" << j;
      }
    }
  }
}

// Speculative-style rounds: verify, truncate, verify again from the truncated state
// (the high-water mark stays ahead of the length); logits of accepted rows are the
// plain logits, bitwise, and the state equals the plain one after every round.
TEST_F(Rollback, ChainedRoundsMatchPlainFeeding) {
  const int64_t V = config_->vocab_size;
  std::vector<float> plain(static_cast<size_t>(kT * V));
  {
    auto s = forward_->new_state();
    for (int64_t p = 0; p < kT; ++p)
      forward_->step(s, std::span(tokens_).subspan(static_cast<size_t>(p), 1), plain.data() + p * V, nullptr);
  }
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    std::mt19937_64 g(seed);
    auto s = forward_->new_state();
    forward_->step(s, std::span(tokens_).subspan(0, 5), nullptr, nullptr);  // prompt
    int64_t N = 5;
    while (N + 5 <= kT) {
      const int64_t K = std::uniform_int_distribution<int64_t>(1, 4)(g);
      const int64_t j = std::uniform_int_distribution<int64_t>(0, K)(g);
      std::vector<int32_t> chunk(tokens_.begin() + N, tokens_.begin() + N + j + 1);
      while (static_cast<int64_t>(chunk.size()) < K + 1)
        chunk.push_back(static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, V - 1)(g)));
      std::vector<float> logits(static_cast<size_t>((K + 1) * V));
      forward_->step(s, chunk, logits.data(), nullptr);
      for (int64_t i = 0; i <= j; ++i) {
        ASSERT_TRUE(std::equal(logits.begin() + i * V, logits.begin() + (i + 1) * V, plain.begin() + (N + i) * V))
            << "round at " << N << " row " << i;
      }
      forward_->truncate(s, N + j + 1);
      N += j + 1;
      ASSERT_EQ(s.difference(ref_[static_cast<size_t>(N)]), "") << "seed " << seed << " at " << N;
    }
  }
}

// After a long prefill chunk, the full rollback depth is available.
TEST_F(Rollback, FullDepthAfterPrefillChunk) {
  constexpr int64_t R = kMaxRollback;
  for (int64_t P : {int64_t{40}, int64_t{47}, int64_t{63}}) {
    auto s = forward_->new_state();
    forward_->step(s, std::span(tokens_).subspan(0, static_cast<size_t>(P)), nullptr, nullptr);
    forward_->truncate(s, P - R);
    EXPECT_EQ(s.difference(ref_[static_cast<size_t>(P - R)]), "") << P;
    // and it continues exactly
    forward_->step(s, std::span(tokens_).subspan(static_cast<size_t>(P - R), static_cast<size_t>(R + 3)), nullptr, nullptr);
    EXPECT_EQ(s.difference(ref_[static_cast<size_t>(P + 3)]), "") << P;
  }
}

TEST_F(Rollback, LimitsAreClearErrors) {
  constexpr int64_t R = kMaxRollback;
  DecodeState s(ref_[30]);
  EXPECT_THROW(forward_->truncate(s, 31), Error);
  EXPECT_THROW(forward_->truncate(s, -1), Error);
  try {
    forward_->truncate(s, 30 - R - 1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kMaxRollback"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.difference(ref_[30]), "");  // unchanged by the failed calls
  // The limit is measured from the high-water mark, not the current length.
  forward_->truncate(s, 30 - 3);
  EXPECT_THROW(forward_->truncate(s, 30 - R - 1), Error);
  forward_->truncate(s, 30 - R);
  EXPECT_EQ(s.difference(ref_[30 - R]), "");
  EXPECT_EQ(s.high_water(), 30);
  EXPECT_THROW(forward_->truncate_mtp(s, 2, 0), Error);
  DecodeState m(mtp_ref_[0][20]);
  EXPECT_THROW(forward_->truncate_mtp(m, 0, 20 - R - 1), Error);
  EXPECT_THROW(forward_->truncate_mtp(m, 0, 21), Error);
  EXPECT_EQ(m.mtp_high_water(0), 20);
}

// MTP blocks: K draft rows (j real rows, then garbage streams and tokens, fed one at a
// time as drafting does, or as a chunk), truncate to P + j.
TEST_F(Rollback, MtpAcceptJOfKEqualsPlainFeeding) {
  const int64_t V = config_->vocab_size, S = config_->hc_mult * config_->hidden_size;
  std::mt19937_64 g(17);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int m = 0; m < 2; ++m) {
    for (int64_t K = 1; K <= 4; ++K) {
      for (int64_t P = 0; P + K + 1 < kT; P += (K == 2 ? 1 : 5)) {
        for (int64_t j = 0; j <= K; ++j) {
          DecodeState s(mtp_ref_[m][static_cast<size_t>(P)]);
          const bool one_by_one = (P + j) % 2 == 0;
          std::vector<float> st;
          std::vector<int32_t> tk;
          for (int64_t i = 0; i < K; ++i) {
            if (i < j) {
              auto r = row_streams(P + i, 1);
              st.insert(st.end(), r.begin(), r.end());
              tk.push_back(tokens_[static_cast<size_t>(P + i + 1)]);
            } else {
              for (int64_t x = 0; x < S; ++x) st.push_back(nd(g));
              tk.push_back(static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, V - 1)(g)));
            }
          }
          if (one_by_one) {
            for (int64_t i = 0; i < K; ++i)
              forward_->mtp_step(s, m, std::span(st).subspan(static_cast<size_t>(i * S), static_cast<size_t>(S)),
                                 std::span(tk).subspan(static_cast<size_t>(i), 1), nullptr, nullptr);
          } else {
            forward_->mtp_step(s, m, st, tk, nullptr, nullptr);
          }
          forward_->truncate_mtp(s, m, P + j);
          ASSERT_EQ(s.difference(mtp_ref_[m][static_cast<size_t>(P + j)]), "")
              << "block " << m << " K=" << K << " P=" << P << " j=" << j;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kiln::model
