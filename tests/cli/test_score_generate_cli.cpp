// `kiln score` / `kiln generate` through the real binary: outputs, modes, exit codes.
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

TEST(ScoreCli, WritesLogitsAndMtpLogitsInEveryMode) {
  kiln::test::TempDir d;
  auto ref = kiln::read_npy(kFx + "/logits.npy");
  for (const char* mode : {"full", "incremental", "chunked:9"}) {
    auto out = d.path() / "l.npy", mtp = d.path() / "m.npy";
    auto r = kiln_run("score --model " + kFx + "/native --tokens " + kFx + "/tokens.npy --out " + out.string() +
                      " --mtp-out " + mtp.string() + " --mode " + mode);
    ASSERT_EQ(r.code, 0) << r.text;
    auto l = kiln::read_npy(out), m = kiln::read_npy(mtp);
    EXPECT_EQ(l.shape, ref.shape);
    EXPECT_EQ(m.shape, (std::vector<int64_t>{ref.shape[0] - 1, ref.shape[1]}));
    auto a = l.as_floats(), b = ref.as_floats();
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
      den = std::max(den, static_cast<double>(std::fabs(b[i])));
    }
    EXPECT_LE(num / den, 1e-4) << mode;
  }
}

TEST(GenerateCli, GreedyJsonMatchesTheFixture) {
  auto r = kiln_run("generate --model " + kFx + "/hf --tokens " + kFx + "/tokens.npy --max-tokens 32 --ignore-eos --json");
  ASSERT_EQ(r.code, 0) << r.text;
  auto j = nlohmann::json::parse(r.text);
  auto want = kiln::read_npy(kFx + "/greedy.npy").as_ints();
  EXPECT_EQ(j["tokens"].get<std::vector<int64_t>>(), want);
  EXPECT_EQ(j["prompt_tokens"], 110);
  EXPECT_TRUE(j["timing"]["decode_tokens_per_s"].is_number());
}

TEST(GenerateCli, SeededSamplingIsReproducible) {
  const std::string args = "generate --model " + kFx + "/native --tokens 5,17,42 --max-tokens 12 --ignore-eos " +
                           "--temperature 0.9 --top-p 0.9 --top-k 50 --seed 11 --json";
  auto a = kiln_run(args), b = kiln_run(args);
  ASSERT_EQ(a.code, 0) << a.text;
  EXPECT_EQ(nlohmann::json::parse(a.text)["tokens"], nlohmann::json::parse(b.text)["tokens"]);
  EXPECT_EQ(nlohmann::json::parse(a.text)["tokens"].size(), 12u);
}

TEST(RunCli, BadArgumentsAreUsageErrors) {
  const std::string m = " --model " + kFx + "/native";
  struct Case {
    std::string args, expect;
  } cases[] = {
      {"generate" + m + " --tokens 5,x,7", "not a list of token ids"},
      {"generate" + m + " --tokens 5,9999", "id 9999 at position 1 is outside the vocabulary [0, 256)"},
      {"score" + m + " --tokens 5,7 --out /tmp/x.npy --mode chunked:0", "--mode chunked:0"},
      {"score" + m + " --tokens 5,7 --out /tmp/x.npy --device gpu", "--device gpu: expected auto, cpu or cuda"},
      {"generate --model " + std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_b/native --tokens 5,7 --max-tokens 300",
       "need 302 positions, beyond the model's context of 256"},
      {"generate --model /nonexistent/model --tokens 5", "/nonexistent/model"},
  };
  for (const auto& c : cases) {
    auto r = kiln_run(c.args);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.text;
    EXPECT_NE(r.text.find(c.expect), std::string::npos) << c.args << "\n" << r.text;
  }
}

// --device cuda runs on a usable GPU, and without one (CI) exits 2 saying why.
TEST(RunCli, DeviceCudaRunsOrSaysWhyNot) {
  kiln::test::TempDir d;
  const auto out = d.path() / "l.npy";
  auto r = kiln_run("score --model " + kFx + "/native --tokens 5,7,9 --out " + out.string() + " --device cuda");
  if (r.code == 0) {
    EXPECT_TRUE(std::filesystem::exists(out)) << r.text;
    EXPECT_NE(r.text.find("cuda"), std::string::npos) << r.text;
  } else {
    EXPECT_EQ(r.code, 2) << r.text;
    EXPECT_NE(r.text.find("--device cuda: "), std::string::npos) << r.text;
  }
}

TEST(RunCli, UnloadableModelExitsTwoNamingTheProblem) {
  kiln::test::TempDir d;
  auto spec = kiln::test::make_spec(kiln::test::Layout::Native, kiln::test::tiny_config(), 2);
  spec.erase("layers.2.attn.wkv.weight");
  kiln::test::write_spec(spec, d.path());
  auto r = kiln_run("generate --model " + d.path().string() + " --tokens 5,7");
  EXPECT_EQ(r.code, 2) << r.text;
  EXPECT_NE(r.text.find("layers.2.attn.wkv: has no weight tensor (found only layers.2.attn.wkv.scale)"), std::string::npos)
      << r.text;
}

}  // namespace
