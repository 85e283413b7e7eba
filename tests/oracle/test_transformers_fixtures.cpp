// kiln's CPU reference against transformers 5.17 (and, for the MTP block, a reference
// written from DeepSeek's MTPBlock): fixtures made by tools/make_fixtures.py on the GPU
// machine. Every fixture, both checkpoint layouts (transformers names, DeepSeek native
// names with the MTP block in its own shard), every feeding mode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "kiln/io/npy.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/sampler.h"
#include "support/compare.h"

namespace kiln {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(KILN_TEST_DATA_DIR) / "fixtures";

std::vector<std::string> fixture_cases() {
  std::vector<std::string> out;
  if (!std::filesystem::exists(kFixtures)) return out;
  for (const auto& e : std::filesystem::directory_iterator(kFixtures)) {
    if (!e.is_directory()) continue;
    for (const char* layout : {"hf", "native"}) {
      if (std::filesystem::exists(e.path() / layout / "config.json"))
        out.push_back(e.path().filename().string() + "/" + layout);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

using test::rel_err;

constexpr double kTol = 1e-4;

// The measured distance is printed so CI logs and notes can quote it.
double report(const std::string& what, double err) {
  std::printf("[ measured ] %s: max|kiln - ref| / max|ref| = %.2e\n", what.c_str(), err);
  return err;
}

class TransformersFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto dir = kFixtures / GetParam();
    fixture_ = dir.parent_path();
    model_ = runtime::load_model(dir, 0, nullptr);
    for (int64_t t : read_npy(fixture_ / "tokens.npy").as_ints()) tokens_.push_back(static_cast<int32_t>(t));
    ref_ = read_npy(fixture_ / "logits.npy").as_floats();
  }

  // Logits for all tokens fed in chunks of `chunk`; also the streams.
  std::vector<float> run(int64_t chunk, std::vector<float>* streams = nullptr) {
    const auto& c = model_->config;
    const int64_t T = static_cast<int64_t>(tokens_.size()), V = c.vocab_size, S = c.hc_mult * c.hidden_size;
    std::vector<float> logits(static_cast<size_t>(T * V));
    if (streams) streams->assign(static_cast<size_t>(T * S), 0.0f);
    auto st = model_->forward->new_state();
    for (int64_t p = 0; p < T; p += chunk) {
      const int64_t n = std::min(chunk, T - p);
      model_->forward->step(st, std::span(tokens_).subspan(static_cast<size_t>(p), static_cast<size_t>(n)),
                            logits.data() + p * V, streams ? streams->data() + p * S : nullptr);
    }
    return logits;
  }

  std::filesystem::path fixture_;
  std::unique_ptr<runtime::LoadedModel> model_;
  std::vector<int32_t> tokens_;
  std::vector<float> ref_;
};

TEST_P(TransformersFixture, FullSequenceLogits) {
  auto got = run(static_cast<int64_t>(tokens_.size()));
  ASSERT_EQ(got.size(), ref_.size());
  EXPECT_LE(report(GetParam() + " full", rel_err(got, ref_)), kTol);
}

TEST_P(TransformersFixture, IncrementalAndChunkedLogits) {
  for (int64_t chunk : {1, 3, 7, 16}) {
    auto got = run(chunk);
    EXPECT_LE(report(GetParam() + " chunk " + std::to_string(chunk), rel_err(got, ref_)), kTol);
  }
}

TEST_P(TransformersFixture, MtpDraftLogits) {
  // The DSpark fixture (tiny_dspark) has a DSpark drafter instead of a classic MTP block;
  // tests/model/test_dspark.cpp checks its drafts against its own reference.
  if (model_->config.dspark) GTEST_SKIP() << GetParam() << ": a DSpark drafter, no classic MTP block";
  ASSERT_FALSE(model_->weights.mtp.empty()) << "fixture has no MTP block";
  std::vector<float> streams;
  run(static_cast<int64_t>(tokens_.size()), &streams);
  const auto& c = model_->config;
  const int64_t T = static_cast<int64_t>(tokens_.size()), V = c.vocab_size;
  auto want = read_npy(fixture_ / "mtp_logits.npy").as_floats();
  ASSERT_EQ(want.size(), static_cast<size_t>((T - 1) * V));
  for (int64_t chunk : {T - 1, int64_t{1}, int64_t{5}}) {
    std::vector<float> got(static_cast<size_t>((T - 1) * V));
    auto st = model_->forward->new_state();
    const int64_t S = c.hc_mult * c.hidden_size;
    for (int64_t p = 0; p < T - 1; p += chunk) {
      const int64_t n = std::min(chunk, T - 1 - p);
      model_->forward->mtp_step(st, 0, std::span(streams).subspan(static_cast<size_t>(p * S), static_cast<size_t>(n * S)),
                                std::span(tokens_).subspan(static_cast<size_t>(p + 1), static_cast<size_t>(n)),
                                got.data() + p * V, nullptr);
    }
    EXPECT_LE(report(GetParam() + " mtp chunk " + std::to_string(chunk), rel_err(got, want)), kTol);
  }
}

TEST_P(TransformersFixture, GreedyContinuation) {
  // tools/make_dspark_fixture.py writes no greedy continuation (its greedy drafts are
  // checked in tests/model/test_dspark.cpp); the other fixtures all have one.
  if (model_->config.dspark) GTEST_SKIP() << GetParam() << ": the DSpark fixture has no greedy.npy";
  auto want = read_npy(fixture_ / "greedy.npy").as_ints();
  const int64_t V = model_->config.vocab_size;
  auto st = model_->forward->new_state();
  std::vector<float> logits(tokens_.size() * static_cast<size_t>(V));
  model_->forward->step(st, tokens_, logits.data(), nullptr);
  std::vector<float> last(logits.end() - V, logits.end());
  std::vector<int64_t> got;
  for (size_t i = 0; i < want.size(); ++i) {
    const int32_t next = runtime::argmax(last);
    got.push_back(next);
    const int32_t tok[1] = {next};
    model_->forward->step(st, tok, last.data(), nullptr);
  }
  EXPECT_EQ(got, want);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TransformersFixture, ::testing::ValuesIn(fixture_cases()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           std::replace(n.begin(), n.end(), '/', '_');
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TransformersFixture);

TEST(TransformersFixtures, ArePresent) {
  // Two configs x two layouts (tools/make_fixtures.py): the oracle tests above must run.
  EXPECT_GE(fixture_cases().size(), 4u) << "no fixtures under " << kFixtures;
}

}  // namespace
}  // namespace kiln
