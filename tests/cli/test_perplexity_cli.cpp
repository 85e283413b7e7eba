// `kiln perplexity` and the bundled-model lookup (`generate` without --model) through the
// real binary, on the bundled trained model (models/kiln-dsv4-mini). The oracle for the
// perplexity is PyTorch's logits of held-out tokens (tests/data/trained/kiln-dsv4-mini).
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/kiln_process.h"
#include "kiln/io/npy.h"
#include "kiln/tokenizer/tokenizer.h"
#include "support/artifacts.h"

namespace {

using kiln::test::kiln_run;

const std::string kData = std::string(KILN_TEST_DATA_DIR) + "/trained/kiln-dsv4-mini";
const std::string kModel = std::string(KILN_TEST_DATA_DIR) + "/../../models/kiln-dsv4-mini";

nlohmann::json json_of(const kiln::test::Out& r) {
  const auto brace = r.text.find('{');
  return nlohmann::json::parse(r.text.substr(brace == std::string::npos ? 0 : brace));
}

std::string read_text(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::move(ss).str();
}

// Sets an environment variable for the binaries this test starts; restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { old_ ? (void)setenv(name_, old_->c_str(), 1) : (void)unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(PerplexityCli, MatchesPyTorchLogitsOnHeldOutTokens) {
  // PyTorch's NLL of tokens[1..T-1] from its fp32 logits of the same window.
  const auto ids = kiln::read_npy(kData + "/tokens.npy").as_ints();
  const auto logits = kiln::read_npy(kData + "/logits.npy").as_floats();
  const size_t T = ids.size(), V = logits.size() / T;
  double want = 0.0;
  for (size_t t = 0; t + 1 < T; ++t) {
    const float* row = logits.data() + t * V;
    double mx = row[0], s = 0.0;
    for (size_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
    for (size_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
    want += mx + std::log(s) - row[ids[t + 1]];
  }
  // One rank, and the model split over tensor-parallel ranks (docs/tensor-parallel.md).
  for (const char* ranks : {"", " --tensor-parallel 2", " --tensor-parallel 4 --expert-parallel"}) {
    SCOPED_TRACE(ranks);
    auto r = kiln_run("perplexity --model " + kModel + " --tokens " + kData + "/tokens.npy --ctx " + std::to_string(T) +
                      " --json" + ranks);
    ASSERT_EQ(r.code, 0) << r.text;
    const auto j = json_of(r);
    EXPECT_EQ(j["tokens"], T);
    EXPECT_EQ(j["scored_tokens"], T - 1);
    EXPECT_EQ(j["windows"], 1);
    std::printf("[ measured ]%s NLL sum kiln %.9g, torch %.9g\n", ranks, j["nll_sum"].get<double>(), want);
    EXPECT_NEAR(j["nll_sum"].get<double>(), want, 1e-5 * want);
    EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(want / static_cast<double>(T - 1)), 1e-4);
  }
}

TEST(PerplexityCli, WindowsAreCountedAndAOneTokenTailIsSkipped) {
  // 64 tokens in windows of 21: 21 + 21 + 21 + 1; the last window predicts nothing.
  auto r = kiln_run("perplexity --model " + kModel + " --tokens " + kData + "/tokens.npy --ctx 21 --json");
  ASSERT_EQ(r.code, 0) << r.text;
  const auto j = json_of(r);
  EXPECT_EQ(j["windows"], 3);
  EXPECT_EQ(j["scored_tokens"], 60);
  EXPECT_TRUE(std::isfinite(j["perplexity"].get<double>()));
}

TEST(PerplexityCli, TextIsTokenizedWithTheModelsTokenizerLikeHF) {
  // A prefix of the held-out text whose HF ids are a prefix of heldout_ids.npy: --text must
  // give the same tokens and the same NLL as --tokens with HF's ids.
  const std::string text = read_text(kData + "/heldout.txt");
  const auto hf = kiln::read_npy(kData + "/heldout_ids.npy").as_ints();
  // cut after a newline between two non-space characters: no pre-tokenizer piece spans it
  size_t cut = text.find('\n', 400);
  while (cut != std::string::npos && cut + 1 < text.size() &&
         (std::isspace(static_cast<unsigned char>(text[cut + 1])) || std::isspace(static_cast<unsigned char>(text[cut - 1]))))
    cut = text.find('\n', cut + 1);
  ASSERT_NE(cut, std::string::npos);
  const std::string prefix = text.substr(0, cut + 1);
  const auto tok = kiln::tokenizer::Tokenizer::from_file(kModel + "/tokenizer.json");
  const auto ids = tok.encode(prefix);
  ASSERT_LT(ids.size(), hf.size());
  ASSERT_TRUE(std::equal(ids.begin(), ids.end(), hf.begin())) << "prefix is not a clean token boundary";
  kiln::test::TempDir d;
  const auto txt = d.path() / "prefix.txt", npy = d.path() / "prefix_ids.npy";
  std::ofstream(txt, std::ios::binary) << prefix;
  const std::vector<int64_t> want(hf.begin(), hf.begin() + static_cast<std::ptrdiff_t>(ids.size()));
  kiln::write_npy_i64(npy, want, {static_cast<int64_t>(want.size())});
  auto a = kiln_run("perplexity --model " + kModel + " --text " + txt.string() + " --ctx 64 --json");
  auto b = kiln_run("perplexity --model " + kModel + " --tokens " + npy.string() + " --ctx 64 --json");
  ASSERT_EQ(a.code, 0) << a.text;
  ASSERT_EQ(b.code, 0) << b.text;
  EXPECT_EQ(json_of(a)["tokens"], want.size());
  EXPECT_EQ(json_of(a)["nll_sum"], json_of(b)["nll_sum"]);
}

TEST(PerplexityCli, PlainOutputNamesTokensAndPerplexity) {
  auto p = kiln_run("perplexity --model " + kModel + " --tokens " + kData + "/tokens.npy --ctx 40");
  ASSERT_EQ(p.code, 0) << p.text;
  EXPECT_NE(p.text.find("tokens 64 (scored 62 in 2 window(s) of up to 40)"), std::string::npos) << p.text;
  EXPECT_NE(p.text.find("perplexity "), std::string::npos) << p.text;
}

TEST(PerplexityCli, BadInputIsRefusedWithAClearMessage) {
  auto r = kiln_run("perplexity --model " + kModel);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("exactly one of --text FILE and --tokens IDS"), std::string::npos) << r.text;
  r = kiln_run("perplexity --model " + kModel + " --tokens 5,6 --ctx 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("--ctx 1"), std::string::npos) << r.text;
  r = kiln_run("perplexity --model " + kModel + " --text /nonexistent/heldout.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("/nonexistent/heldout.txt: cannot open"), std::string::npos) << r.text;
  r = kiln_run("perplexity --model " + kModel + " --tokens 5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("at least 2"), std::string::npos) << r.text;
  r = kiln_run("perplexity --model " + kModel + " --tokens 5,4096");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("token id 4096 at position 1"), std::string::npos) << r.text;
  // a checkpoint without tokenizer.json cannot read text
  const std::string fx = std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_a/native";
  r = kiln_run("perplexity --model " + fx + " --text " + kData + "/heldout.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("tokenizer.json does not exist"), std::string::npos) << r.text;
  kiln::test::TempDir d;
  const auto bad = d.path() / "bad.txt";
  std::ofstream(bad, std::ios::binary) << "ok \xff\xfe not utf-8";
  r = kiln_run("perplexity --model " + kModel + " --text " + bad.string());
  EXPECT_EQ(r.code, 1) << r.text;
}

TEST(DefaultModel, GenerateWithoutModelUsesTheBundledOne) {
  // build/kiln finds ../models/kiln-dsv4-mini (the source tree's models/) next to itself.
  auto with = kiln_run("generate --model " + kModel + " --tokens 5,6,7 --max-tokens 6 --ignore-eos --json");
  auto without = kiln_run("generate --tokens 5,6,7 --max-tokens 6 --ignore-eos --json");
  ASSERT_EQ(with.code, 0) << with.text;
  ASSERT_EQ(without.code, 0) << without.text;
  EXPECT_EQ(json_of(without)["tokens"].size(), 6u);
  EXPECT_EQ(json_of(with)["tokens"], json_of(without)["tokens"]);
}

TEST(DefaultModel, EnvironmentVariableWinsAndABadOneIsAClearError) {
  {
    ScopedEnv env("KILN_DEFAULT_MODEL", std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_a/native");
    auto r = kiln_run("generate --tokens 5,6,7 --max-tokens 3 --ignore-eos --json");
    ASSERT_EQ(r.code, 0) << r.text;
    EXPECT_EQ(json_of(r)["tokens"].size(), 3u);  // tiny_a's vocabulary is 256: the model that ran
    auto p = kiln_run("perplexity --tokens 300,1");
    EXPECT_EQ(p.code, 1);
    EXPECT_NE(p.text.find("[0, 256)"), std::string::npos) << p.text;
  }
  {
    ScopedEnv env("KILN_DEFAULT_MODEL", "/nonexistent/model-dir");
    auto r = kiln_run("generate --tokens 5,6,7 --max-tokens 3");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.text.find("/nonexistent/model-dir ($KILN_DEFAULT_MODEL): no config.json"), std::string::npos) << r.text;
    EXPECT_NE(r.text.find("pass --model DIR"), std::string::npos) << r.text;
  }
}

}  // namespace
