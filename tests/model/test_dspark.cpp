// The DSpark drafter on the CPU against the oracle written from DeepSeek's code
// (tools/make_dspark_fixture.py, tests/data/fixtures/tiny_dspark; and the bundled model's
// trained drafter, tools/train/train_dspark.py, tests/data/trained/kiln-dsv4-mini-dspark):
// the target's features,
// base draft logits, Markov-adjusted logits (greedy and teacher-forced), drafts and
// confidences; the ring holds committed rows only and does not depend on how they came.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include <fmt/format.h>

#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/io/npy.h"
#include "kiln/model/dspark.h"
#include "kiln/model/forward.h"
#include "support/compare.h"

namespace kiln::model {
namespace {

const std::string kDir = std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_dspark";
const std::string kModelsDir = std::string(KILN_TEST_DATA_DIR) + "/../../models";

struct Loaded {
  Checkpoint ckpt;
  Plan plan;
  Weights w;
  DSparkWeights d;
};

// A checkpoint with a drafter, loaded once per directory.
const Loaded& loaded(const std::string& model_dir = kDir + "/native") {
  static std::map<std::string, std::unique_ptr<Loaded>> cache;
  auto& l = cache[model_dir];
  if (!l) {
    l.reset(new Loaded{Checkpoint::open(model_dir), {}, {}, {}});
    l->plan = build_plan(l->ckpt, load_model_config(model_dir));
    l->w = load_weights(l->ckpt, l->plan);
    l->d = load_dspark_weights(l->ckpt, l->plan);
  }
  return *l;
}

std::vector<float> floats(const char* f, const std::string& dir = kDir) { return read_npy(dir + "/" + f).as_floats(); }
std::vector<int64_t> ints(const char* f, const std::string& dir = kDir) { return read_npy(dir + "/" + f).as_ints(); }

using test::argmax_low;
using test::rel_err;  // tests/support/compare.h

TEST(DSpark, LoadsTheDrafterThePlanFound) {
  const auto& L = loaded();
  ASSERT_TRUE(L.plan.loadable());
  EXPECT_EQ(L.d.stages.size(), 3u);
  EXPECT_EQ(L.d.config.block_size, 5);
  EXPECT_EQ(L.d.config.target_layer_ids, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(L.d.confidence.size(), static_cast<size_t>(64 + 16));
  EXPECT_TRUE(L.w.mtp.empty());  // never taken for classic MTP blocks
}

TEST(DSpark, TargetFeaturesAreTheMeanOverStreamsOfTheTargetLayers) {
  const auto& L = loaded();
  Forward f(L.w, 2);
  const auto tok64 = ints("tokens.npy");
  std::vector<int32_t> tok(tok64.begin(), tok64.end());
  const int64_t T = static_cast<int64_t>(tok.size()), V = L.w.config.vocab_size;
  DSparkDrafter dr(f, L.d, 2);
  std::vector<float> feats(static_cast<size_t>(T * dr.feature_width())), logits(static_cast<size_t>(T * V));
  DecodeState st = f.new_state();
  const Forward::StepSeq seq{&st, tok};
  f.step(std::span(&seq, 1), {}, logits.data(), nullptr, feats.data());
  EXPECT_LT(rel_err(logits, floats("logits.npy")), 1e-5);
  EXPECT_LT(rel_err(feats, floats("target_hidden.npy")), 1e-5);
}

// Feeds the prompt to the target, commits positions 0..N-1 and drafts at each anchor N.
// Each case: the checkpoint and the directory of its reference drafts.
struct OracleCase {
  const char* name;
  std::string model_dir, data_dir;
};

class DraftAgainstOracle : public ::testing::TestWithParam<OracleCase> {
 protected:
  std::vector<float> floats(const char* f) const { return model::floats(f, GetParam().data_dir); }
  std::vector<int64_t> ints(const char* f) const { return model::ints(f, GetParam().data_dir); }

  void run(bool forced) {
    const auto& L = loaded(GetParam().model_dir);
    Forward f(L.w, 2);
    DSparkDrafter dr(f, L.d, 2);
    const auto tok64 = ints("tokens.npy");
    std::vector<int32_t> tok(tok64.begin(), tok64.end());
    const int64_t T = static_cast<int64_t>(tok.size()), V = L.w.config.vocab_size, B = dr.block_size();
    const int64_t F = dr.feature_width();
    std::vector<float> feats(static_cast<size_t>(T * F));
    DecodeState st = f.new_state();
    const Forward::StepSeq seq{&st, tok};
    f.step(std::span(&seq, 1), {}, nullptr, nullptr, feats.data());
    const auto anchors = ints("anchors.npy");
    const auto base = floats("draft_logits.npy");
    const auto adj = floats(forced ? "forced_logits.npy" : "markov_logits.npy");
    const auto drafts = ints("draft_tokens.npy");
    const auto conf = floats("confidence.npy");
    DSparkState ds = dr.new_state();
    double worst_base = 0, worst_adj = 0;
    for (size_t a = 0; a < anchors.size(); ++a) {
      const int64_t N = anchors[a];
      // Commit up to N in uneven pieces (the ring must not care).
      while (ds.length() < N) {
        const int64_t n = std::min<int64_t>(N - ds.length(), 1 + (ds.length() % 3));
        const DSparkDrafter::CommitSeq c{&ds, std::span<const float>(feats).subspan(static_cast<size_t>(ds.length() * F),
                                                                                    static_cast<size_t>(n * F))};
        dr.commit(std::span(&c, 1));
      }
      const DSparkDrafter::DraftSeq q{&ds, tok[static_cast<size_t>(N)], static_cast<int>(B)};
      auto out = dr.draft(std::span(&q, 1), [&](size_t, int k, std::span<const float> row) {
        return forced ? tok[static_cast<size_t>(N + 1 + k)] : argmax_low(row);
      });
      const size_t blk = static_cast<size_t>(B * V);
      SCOPED_TRACE(fmt::format("anchor {}", N));
      worst_base = std::max(worst_base, rel_err(out[0].base, std::span(base).subspan(a * blk, blk)));
      worst_adj = std::max(worst_adj, rel_err(out[0].adjusted, std::span(adj).subspan(a * blk, blk)));
      EXPECT_LT(worst_base, 1e-4);
      EXPECT_LT(worst_adj, 1e-4);
      if (!forced) {
        for (int64_t k = 0; k < B; ++k) {
          EXPECT_EQ(out[0].tokens[static_cast<size_t>(k)], drafts[a * static_cast<size_t>(B) + static_cast<size_t>(k)]);
          EXPECT_NEAR(out[0].confidence[static_cast<size_t>(k)], conf[a * static_cast<size_t>(B) + static_cast<size_t>(k)], 1e-5);
        }
      }
    }
    std::printf("max relative error over %zu anchors: base %.2e, Markov-adjusted %.2e\n", anchors.size(), worst_base, worst_adj);
  }
};

TEST_P(DraftAgainstOracle, GreedyMarkovLoop) { run(false); }
TEST_P(DraftAgainstOracle, TeacherForcedMarkovLoop) { run(true); }

INSTANTIATE_TEST_SUITE_P(
    Drafters, DraftAgainstOracle,
    ::testing::Values(OracleCase{"TinyRandom", kDir + "/native", kDir},
                      // The bundled model's trained drafter (tools/train/train_dspark.py).
                      OracleCase{"TrainedBundled", kModelsDir + "/kiln-dsv4-mini-dspark",
                                 std::string(KILN_TEST_DATA_DIR) + "/trained/kiln-dsv4-mini-dspark"}),
    [](const ::testing::TestParamInfo<OracleCase>& i) { return std::string(i.param.name); });

TEST(DSpark, DraftsOfSeveralSequencesEqualEachAlone) {
  const auto& L = loaded();
  Forward f(L.w, 2);
  DSparkDrafter dr(f, L.d, 2);
  const auto tok64 = ints("tokens.npy");
  std::vector<int32_t> tok(tok64.begin(), tok64.end());
  const int64_t F = dr.feature_width();
  std::vector<float> feats(static_cast<size_t>(static_cast<int64_t>(tok.size()) * F));
  DecodeState st = f.new_state();
  const Forward::StepSeq seq{&st, tok};
  f.step(std::span(&seq, 1), {}, nullptr, nullptr, feats.data());
  DSparkState a = dr.new_state(), b = dr.new_state();
  const DSparkDrafter::CommitSeq cs[2] = {{&a, std::span<const float>(feats).first(static_cast<size_t>(11 * F))},
                                          {&b, std::span<const float>(feats).first(static_cast<size_t>(30 * F))}};
  dr.commit(cs);
  auto pick = [](size_t, int, std::span<const float> row) { return argmax_low(row); };
  const DSparkDrafter::DraftSeq both[2] = {{&a, tok[11], 3}, {&b, tok[30], 5}};
  const auto together = dr.draft(both, pick);
  for (int i = 0; i < 2; ++i) {
    const auto alone = dr.draft(std::span(both + i, 1), pick);
    EXPECT_EQ(together[static_cast<size_t>(i)].base, alone[0].base);
    EXPECT_EQ(together[static_cast<size_t>(i)].adjusted, alone[0].adjusted);
    EXPECT_EQ(together[static_cast<size_t>(i)].tokens, alone[0].tokens);
  }
  // b's ring, written in one piece, equals one written row by row.
  DSparkState c = dr.new_state();
  for (int64_t p = 0; p < 30; ++p) {
    const DSparkDrafter::CommitSeq one{&c, std::span<const float>(feats).subspan(static_cast<size_t>(p * F), static_cast<size_t>(F))};
    dr.commit(std::span(&one, 1));
  }
  EXPECT_EQ(c.difference(b), "");
  EXPECT_NE(c.difference(a), "");
}

TEST(DSpark, BadDraftRequestsAreRefused) {
  const auto& L = loaded();
  Forward f(L.w, 1);
  DSparkDrafter dr(f, L.d, 1);
  DSparkState s = dr.new_state();
  auto pick = [](size_t, int, std::span<const float> row) { return argmax_low(row); };
  const DSparkDrafter::DraftSeq six{&s, 3, 6};
  EXPECT_THROW(dr.draft(std::span(&six, 1), pick), Error);
  const DSparkDrafter::DraftSeq bad_anchor{&s, 256, 1};
  EXPECT_THROW(dr.draft(std::span(&bad_anchor, 1), pick), Error);
}

}  // namespace
}  // namespace kiln::model
