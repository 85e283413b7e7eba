// `kiln generate --mtp K` through the real binary: greedy output unchanged, the JSON
// acceptance report, --compare-plain, and the usage / model errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "kiln/io/npy.h"
#include "cli/kiln_process.h"
#include "support/artifacts.h"

namespace {

using kiln::test::kiln_run;
using kiln::test::Out;

const std::string kFx = std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_a";

TEST(GenerateMtpCli, GreedyJsonMatchesTheFixtureAndReportsAcceptance) {
  const auto want = kiln::read_npy(kFx + "/greedy.npy").as_ints();
  for (int k : {1, 3}) {
    auto r = kiln_run("generate --model " + kFx + "/native --tokens " + kFx + "/tokens.npy --max-tokens 32 --ignore-eos " +
                      "--json --threads 1 --compare-plain --mtp " + std::to_string(k));
    ASSERT_EQ(r.code, 0) << r.text;
    auto j = nlohmann::json::parse(r.text);
    EXPECT_EQ(j["tokens"].get<std::vector<int64_t>>(), want) << k;
    const auto& m = j["mtp"];
    EXPECT_EQ(m["k"], k);
    ASSERT_EQ(m["proposed_per_position"].size(), static_cast<size_t>(k));
    ASSERT_EQ(m["accepted_per_position"].size(), static_cast<size_t>(k));
    ASSERT_EQ(m["acceptance_rate_per_position"].size(), static_cast<size_t>(k));
    int64_t accepted = 0;
    for (int i = 0; i < k; ++i) {
      const int64_t a = m["accepted_per_position"][i], p = m["proposed_per_position"][i];
      EXPECT_LE(a, p);
      EXPECT_GT(p, 0);
      accepted += a;
    }
    EXPECT_EQ(m["drafts_accepted"], accepted);
    const int64_t rounds = m["rounds"];
    // 31 tokens after the first come from the rounds: accepted drafts + one per round.
    EXPECT_EQ(accepted + rounds, 31);
    EXPECT_NEAR(m["mean_accepted_length"].get<double>(), 31.0 / static_cast<double>(rounds), 1e-9);
    EXPECT_TRUE(j["timing"]["decode_tokens_per_s"].is_number());
    EXPECT_EQ(j["plain"]["tokens_identical"], true);
    EXPECT_TRUE(j["plain"]["timing"]["decode_tokens_per_s"].is_number());
    EXPECT_TRUE(j["speedup_decode"].is_number());
  }
}

TEST(GenerateMtpCli, TextModePrintsTokensAndAcceptance) {
  auto r = kiln_run("generate --model " + kFx + "/hf --tokens 5,17,42 --max-tokens 12 --mtp 2 --threads 1");
  ASSERT_EQ(r.code, 0) << r.text;
  EXPECT_NE(r.text.find("MTP k=2:"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("accepted per draft position"), std::string::npos) << r.text;
  auto p = kiln_run("generate --model " + kFx + "/hf --tokens 5,17,42 --max-tokens 12 --threads 1");
  ASSERT_EQ(p.code, 0) << p.text;
  // The same token line (the one of digits and commas; progress goes to stderr).
  auto tokens_line = [](const std::string& text) {
    size_t b = 0;
    while (b < text.size()) {
      const size_t e = text.find('\n', b);
      const std::string line = text.substr(b, e == std::string::npos ? std::string::npos : e - b);
      if (!line.empty() && line.find_first_not_of("0123456789,") == std::string::npos) return line;
      if (e == std::string::npos) break;
      b = e + 1;
    }
    return std::string();
  };
  EXPECT_FALSE(tokens_line(p.text).empty()) << p.text;
  EXPECT_EQ(tokens_line(r.text), tokens_line(p.text));
}

TEST(GenerateMtpCli, SeededSamplingWithMtpIsReproducible) {
  const std::string args = "generate --model " + kFx + "/native --tokens 5,17,42 --max-tokens 12 --ignore-eos " +
                           "--temperature 0.9 --top-p 0.9 --top-k 50 --seed 11 --json --mtp 3";
  auto a = kiln_run(args), b = kiln_run(args);
  ASSERT_EQ(a.code, 0) << a.text;
  EXPECT_EQ(nlohmann::json::parse(a.text)["tokens"], nlohmann::json::parse(b.text)["tokens"]);
  EXPECT_EQ(nlohmann::json::parse(a.text)["tokens"].size(), 12u);
}

TEST(GenerateMtpCli, BadMtpUseIsAnError) {
  const std::string m = "generate --model " + kFx + "/native --tokens 5,7";
  for (const char* k : {"0", "5", "-1"}) {
    auto r = kiln_run(m + " --mtp " + k);
    EXPECT_EQ(r.code, 1) << r.text;
    EXPECT_NE(r.text.find("expected 1..4"), std::string::npos) << r.text;
  }
  auto r = kiln_run(m + " --compare-plain");
  EXPECT_EQ(r.code, 1) << r.text;
  EXPECT_NE(r.text.find("--compare-plain needs --mtp"), std::string::npos) << r.text;
  // A model without an MTP block (transformers' layout does not save it).
  kiln::test::TempDir d;
  kiln::test::write_spec(kiln::test::make_spec(kiln::test::Layout::HfBf16, kiln::test::tiny_config(), 1), d.path());
  auto n = kiln_run("generate --model " + d.path().string() + " --tokens 5,7 --mtp 2");
  EXPECT_EQ(n.code, 2) << n.text;
  EXPECT_NE(n.text.find("has no MTP block"), std::string::npos) << n.text;
}

}  // namespace
