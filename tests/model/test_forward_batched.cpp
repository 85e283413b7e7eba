// A batched step (several sequences' rows through each weight at once) gives every row
// bitwise the results of feeding its sequence alone, whatever else shares the step:
// sequences at different lengths, a prefill chunk beside decode rows, rows crossing
// compressor block boundaries, only some rows' logits, and the MTP block likewise.
#include <gtest/gtest.h>

#include <random>

#include "kiln/core/error.h"
#include "kiln/model/forward.h"
#include "random_weights.h"

namespace kiln::model {
namespace {

class ForwardBatched : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = &test::every_kind_weights();
    config_ = &weights_->config;
  }
  const Weights* weights_ = nullptr;
  const ModelConfig* config_ = nullptr;
};

TEST_F(ForwardBatched, EveryRowEqualsItsSequenceFedAlone) {
  Forward f(*weights_, 2);
  const int64_t V = config_->vocab_size, S = config_->hc_mult * config_->hidden_size;
  constexpr int kSeqs = 4;
  // Each sequence gets its own prompt length (so the rows of one step sit at different
  // positions) and is then fed in chunks of differing sizes, batched with the others.
  const std::vector<int64_t> prompt_len = {1, 9, 31, 50};
  const std::vector<std::vector<int64_t>> chunks = {{3, 1, 1, 7, 1}, {1, 1, 1, 1, 1}, {16, 2, 1, 1, 9}, {1, 4, 1, 1, 2}};
  std::vector<std::vector<int32_t>> tok(kSeqs);
  std::vector<DecodeState> solo, batched;
  for (int i = 0; i < kSeqs; ++i) {
    int64_t total = prompt_len[static_cast<size_t>(i)];
    for (int64_t c : chunks[static_cast<size_t>(i)]) total += c;
    tok[static_cast<size_t>(i)] = test::random_tokens(total, V, 100 + static_cast<uint64_t>(i));
    solo.push_back(f.new_state());
    batched.push_back(f.new_state());
  }
  // Prompts: batched together, all logits.
  {
    std::vector<Forward::StepSeq> seqs;
    int64_t rows = 0;
    for (int i = 0; i < kSeqs; ++i) {
      seqs.push_back({&batched[static_cast<size_t>(i)], std::span(tok[static_cast<size_t>(i)]).first(static_cast<size_t>(prompt_len[static_cast<size_t>(i)]))});
      rows += prompt_len[static_cast<size_t>(i)];
    }
    std::vector<float> logits(static_cast<size_t>(rows * V)), streams(static_cast<size_t>(rows * S));
    f.step(seqs, {}, logits.data(), streams.data());
    int64_t r = 0;
    for (int i = 0; i < kSeqs; ++i) {
      const int64_t n = prompt_len[static_cast<size_t>(i)];
      std::vector<float> l(static_cast<size_t>(n * V)), s(static_cast<size_t>(n * S));
      f.step(solo[static_cast<size_t>(i)], seqs[static_cast<size_t>(i)].tokens, l.data(), s.data());
      EXPECT_TRUE(std::equal(l.begin(), l.end(), logits.begin() + r * V)) << "sequence " << i << " prompt logits";
      EXPECT_TRUE(std::equal(s.begin(), s.end(), streams.begin() + r * S)) << "sequence " << i << " prompt streams";
      r += n;
    }
  }
  // Chunks: batched, logits only for each sequence's last row (as an engine asks).
  std::vector<int64_t> fed(prompt_len);
  for (size_t c = 0; c < 5; ++c) {
    std::vector<Forward::StepSeq> seqs;
    std::vector<int64_t> last;
    int64_t rows = 0;
    for (int i = 0; i < kSeqs; ++i) {
      const int64_t n = chunks[static_cast<size_t>(i)][c];
      seqs.push_back({&batched[static_cast<size_t>(i)], std::span(tok[static_cast<size_t>(i)]).subspan(static_cast<size_t>(fed[static_cast<size_t>(i)]), static_cast<size_t>(n))});
      rows += n;
      last.push_back(rows - 1);
    }
    std::vector<float> logits(last.size() * static_cast<size_t>(V));
    f.step(seqs, last, logits.data(), nullptr);
    for (int i = 0; i < kSeqs; ++i) {
      const int64_t n = chunks[static_cast<size_t>(i)][c];
      std::vector<float> l(static_cast<size_t>(n * V));
      f.step(solo[static_cast<size_t>(i)], seqs[static_cast<size_t>(i)].tokens, l.data(), nullptr);
      EXPECT_TRUE(std::equal(l.end() - V, l.end(), logits.begin() + i * V)) << "sequence " << i << " chunk " << c;
      fed[static_cast<size_t>(i)] += n;
    }
  }
  for (int i = 0; i < kSeqs; ++i) {
    EXPECT_EQ(batched[static_cast<size_t>(i)].difference(solo[static_cast<size_t>(i)]), "") << "sequence " << i;
  }
}

TEST_F(ForwardBatched, MtpRowsEqualTheirSequenceAlone) {
  Forward f(*weights_, 2);
  const int64_t V = config_->vocab_size, S = config_->hc_mult * config_->hidden_size;
  const std::vector<int64_t> len = {5, 12, 2};
  std::vector<std::vector<int32_t>> tok;
  std::vector<std::vector<float>> streams;
  std::vector<DecodeState> solo, batched;
  for (size_t i = 0; i < len.size(); ++i) {
    tok.push_back(test::random_tokens(len[i] + 1, V, 7 + i));
    auto st = f.new_state();
    streams.emplace_back(static_cast<size_t>(len[i] * S));
    f.step(st, std::span(tok[i]).first(static_cast<size_t>(len[i])), nullptr, streams[i].data());
    solo.push_back(DecodeState(st));
    batched.push_back(std::move(st));
  }
  std::vector<Forward::MtpSeq> seqs;
  int64_t rows = 0;
  for (size_t i = 0; i < len.size(); ++i) {
    seqs.push_back({&batched[i], streams[i], std::span(tok[i]).subspan(1, static_cast<size_t>(len[i]))});
    rows += len[i];
  }
  std::vector<float> logits(static_cast<size_t>(rows * V)), out(static_cast<size_t>(rows * S));
  f.mtp_step(0, seqs, {}, logits.data(), out.data());
  int64_t r = 0;
  for (size_t i = 0; i < len.size(); ++i) {
    std::vector<float> l(static_cast<size_t>(len[i] * V)), o(static_cast<size_t>(len[i] * S));
    f.mtp_step(solo[i], 0, streams[i], seqs[i].next_tokens, l.data(), o.data());
    EXPECT_TRUE(std::equal(l.begin(), l.end(), logits.begin() + r * V)) << "sequence " << i;
    EXPECT_TRUE(std::equal(o.begin(), o.end(), out.begin() + r * S)) << "sequence " << i;
    EXPECT_EQ(batched[i].difference(solo[i]), "") << "sequence " << i;
    r += len[i];
  }
}

TEST_F(ForwardBatched, RejectsAStateTwiceAndBadRows) {
  Forward f(*weights_, 1);
  auto st = f.new_state();
  const int32_t a[2] = {1, 2};
  const Forward::StepSeq twice[2] = {{&st, std::span(a, 1)}, {&st, std::span(a + 1, 1)}};
  EXPECT_THROW(f.step(twice, {}, nullptr, nullptr), Error);
  EXPECT_EQ(st.length(), 0);
  const Forward::StepSeq one[1] = {{&st, std::span(a, 2)}};
  const int64_t bad_row[1] = {2};
  std::vector<float> logits(static_cast<size_t>(config_->vocab_size));
  EXPECT_THROW(f.step(one, bad_row, logits.data(), nullptr), Error);
  EXPECT_EQ(st.length(), 0);
}

}  // namespace
}  // namespace kiln::model
