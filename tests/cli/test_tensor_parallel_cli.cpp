// `--tensor-parallel N` / `--expert-parallel` through the real binary on the CPU backend:
// score's logits within 1e-6 of one rank's, greedy and MTP generation identical, the ready
// line naming the ranks, and layouts that cannot be split refused with exit 2. (The bundled
// model's perplexity across ranks against PyTorch's logits: test_perplexity_cli.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "cli/kiln_process.h"
#include "kiln/io/npy.h"
#include "support/artifacts.h"

namespace {

using kiln::test::kiln_run;

const std::string kFx = std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_b";

nlohmann::json json_of(const kiln::test::Out& r) {
  const auto brace = r.text.find('{');
  return nlohmann::json::parse(r.text.substr(brace == std::string::npos ? 0 : brace));
}

TEST(TensorParallelCli, ScoreMatchesOneRankAndGenerateIsIdentical) {
  kiln::test::TempDir d;
  auto score = [&](const std::string& extra) {
    const auto out = d.path() / "l.npy";
    auto r = kiln_run("score --model " + kFx + "/native --tokens " + kFx + "/tokens.npy --out " + out.string() +
                      " --threads 4 " + extra);
    EXPECT_EQ(r.code, 0) << r.text;
    return kiln::read_npy(out).as_floats();
  };
  const auto one = score("");
  for (const char* tp : {"--tensor-parallel 2", "--tensor-parallel 4 --expert-parallel"}) {
    const auto many = score(tp);
    ASSERT_EQ(many.size(), one.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < one.size(); ++i) {
      num = std::max(num, std::fabs(static_cast<double>(many[i]) - one[i]));
      den = std::max(den, std::fabs(static_cast<double>(one[i])));
    }
    EXPECT_LE(num / den, 1e-6) << tp;
  }
  const std::string gen = "generate --model " + kFx + "/hf --tokens 5,17,42,9 --max-tokens 24 --ignore-eos --json";
  auto plain = kiln_run(gen);
  ASSERT_EQ(plain.code, 0) << plain.text;
  for (const char* tp : {" --tensor-parallel 2", " --tensor-parallel 4 --expert-parallel --mtp 2"}) {
    auto r = kiln_run(gen + tp);
    ASSERT_EQ(r.code, 0) << r.text;
    EXPECT_EQ(json_of(r)["tokens"], json_of(plain)["tokens"]) << tp;
  }
}

// The DSpark drafter (run whole beside the ranks) drafts for the split model, and the
// tokens are the plain ones.
TEST(TensorParallelCli, DSparkDraftingOverRanksGivesThePlainTokens) {
  const std::string dir = std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_dspark/native";
  for (const char* tp : {" --tensor-parallel 2", " --tensor-parallel 4 --expert-parallel"}) {
    auto r = kiln_run("generate --model " + dir + " --tokens 5,17,42 --max-tokens 24 --ignore-eos --temperature 0 "
                      "--spec dspark --compare-plain --json" + std::string(tp));
    ASSERT_EQ(r.code, 0) << r.text;
    const auto j = json_of(r);
    EXPECT_EQ(j["plain"]["tokens_identical"], true) << tp << r.text;
    EXPECT_EQ(j["mtp"]["drafter"], "dspark") << tp;
    EXPECT_GT(j["mtp"]["drafts_proposed"].get<int>(), 0) << tp;
  }
}

TEST(TensorParallelCli, ReadyLineNamesTheRanksAndBadLayoutsExitTwo) {
  auto r = kiln_run("generate --model " + kFx + "/native --tokens 5,17 --max-tokens 2 --tensor-parallel 2 --expert-parallel");
  ASSERT_EQ(r.code, 0) << r.text;
  EXPECT_NE(r.text.find("tensor parallel: 2 ranks in this process, routed experts sharded by id"), std::string::npos) << r.text;
  // tiny_b: 8 heads, vocab 384, o_groups 4.
  r = kiln_run("generate --model " + kFx + "/native --tokens 5,17 --max-tokens 2 --tensor-parallel 16");
  EXPECT_EQ(r.code, 2) << r.text;
  EXPECT_NE(r.text.find("tensor parallel 16: num_attention_heads 8 is not divisible by 16 ranks"), std::string::npos) << r.text;
  r = kiln_run("score --model " + kFx + "/native --tokens 5,17 --out /dev/null --tensor-parallel 5");
  EXPECT_EQ(r.code, 2) << r.text;
  EXPECT_NE(r.text.find("vocab_size 384 is not divisible by 5 ranks"), std::string::npos) << r.text;
  r = kiln_run("generate --model " + kFx + "/native --tokens 5,17 --max-tokens 2 --expert-parallel");
  EXPECT_EQ(r.code, 1) << r.text;
  EXPECT_NE(r.text.find("--expert-parallel: needs --tensor-parallel N with N > 1"), std::string::npos) << r.text;
}

}  // namespace
