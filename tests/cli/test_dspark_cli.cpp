// DSpark checkpoints (V4-Flash-DSpark / -0731 / Pro-0813) through the real binary: inspect
// reports the drafter and the checkpoint as loadable; generate / score / perplexity run the
// main model, bitwise as the same checkpoint without the drafter; --mtp is a clear error;
// kiln quantize carries the drafter;
// a declared drafter with a tensor missing or misshapen is named. Last, a header-exact
// replica of the real 0731 inventory (72,317 tensors, sparse data) inspected whole.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/kiln_process.h"
#include "support/artifacts.h"

namespace {

using kiln::test::ArtifactSpec;
using kiln::test::kiln_run;
using kiln::test::Layout;
using kiln::test::Out;
using kiln::test::TempDir;

std::string q(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

bool is_drafter(const std::string& name) { return name.rfind("mtp.", 0) == 0; }

// Main model in 2 shards, the 3 stages in their own 3 (as the release keeps them).
ArtifactSpec tiny_0731() { return kiln::test::make_spec(Layout::Native, kiln::test::tiny_dspark_config(), 5); }

// The same checkpoint as a plain V4-Flash without a drafter: mtp.* removed, dspark_* keys
// dropped, compress_ratios back to the backbone, no MTP declared.
ArtifactSpec without_drafter(ArtifactSpec spec) {
  std::erase_if(spec.tensors, [](const kiln::test::PendingTensor& t) { return is_drafter(t.name); });
  for (const char* k : {"dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids", "dspark_markov_rank"}) {
    spec.config.erase(k);
  }
  std::vector<int64_t> r = spec.config["compress_ratios"];
  r.resize(static_cast<size_t>(spec.config["num_hidden_layers"].get<int64_t>()));
  spec.config["compress_ratios"] = r;
  spec.config["num_nextn_predict_layers"] = 0;
  spec.num_shards = 2;  // the drafter's shards are gone
  return spec;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return std::move(s).str();
}

nlohmann::json json_line(const Out& r) {
  const auto brace = r.text.find('{');
  return nlohmann::json::parse(r.text.substr(brace == std::string::npos ? 0 : brace));
}

class DSparkCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("kiln-dspark");
    kiln::test::write_spec(tiny_0731(), dir_->path() / "dspark");
    kiln::test::write_spec(without_drafter(tiny_0731()), dir_->path() / "plain");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::filesystem::path dspark() { return dir_->path() / "dspark"; }
  static std::filesystem::path plain() { return dir_->path() / "plain"; }
  static TempDir* dir_;
};
TempDir* DSparkCli::dir_ = nullptr;

TEST_F(DSparkCli, InspectReportsTheDrafterAndLoadable) {
  Out r = kiln_run("inspect " + q(dspark()));
  ASSERT_EQ(r.code, 0) << r.text;
  for (const char* want : {"4 layers + DSpark drafter (3 stages)", "drafter     DSpark: 3 sliding-window stages (mtp.0-2)",
                           "block 5", "confidence head yes; loaded: drafts with --spec dspark", "DSpark main_proj", "DSpark routed experts",
                           "unused tensors (0)", "missing tensors (0)", "verdict: loadable"}) {
    EXPECT_NE(r.text.find(want), std::string::npos) << want << "\n" << r.text;
  }
  Out j = kiln_run("inspect --json " + q(dspark()));
  ASSERT_EQ(j.code, 0) << j.text;
  auto js = nlohmann::json::parse(j.text);
  EXPECT_EQ(js["loadable"], true);
  EXPECT_EQ(js["drafter"]["kind"], "dspark");
  EXPECT_EQ(js["drafter"]["stages"], 3);
  EXPECT_EQ(js["drafter"]["loaded"], true);
  EXPECT_TRUE(js["unused"].empty());
  Out p = kiln_run("inspect --json " + q(plain()));
  ASSERT_EQ(p.code, 0) << p.text;
  EXPECT_EQ(nlohmann::json::parse(p.text)["drafter"]["kind"], "none");
}

TEST_F(DSparkCli, ScoreIsBitwiseTheModelWithoutTheDrafter) {
  const std::string tokens = "5,17,42,3,99,200,7,7,31,128,64,1,250,12,13";
  for (const char* mode : {"full", "chunked:4"}) {
    const auto a = dir_->path() / "a.npy", b = dir_->path() / "b.npy";
    Out ra = kiln_run("score --model " + q(dspark()) + " --tokens " + tokens + " --out " + q(a) + " --mode " + mode);
    ASSERT_EQ(ra.code, 0) << ra.text;
    EXPECT_NE(ra.text.find("DSpark drafter"), std::string::npos) << ra.text;  // the load says it is not loaded
    Out rb = kiln_run("score --model " + q(plain()) + " --tokens " + tokens + " --out " + q(b) + " --mode " + mode);
    ASSERT_EQ(rb.code, 0) << rb.text;
    const std::string la = read_file(a), lb = read_file(b);
    EXPECT_GT(la.size(), 15u * 256u * 4u);
    EXPECT_TRUE(la == lb) << mode << ": logits differ";
  }
}

TEST_F(DSparkCli, GenerateAndPerplexityMatchTheModelWithoutTheDrafter) {
  for (const std::string& extra : {std::string(""), std::string(" --temperature 0.8 --top-p 0.9 --seed 3")}) {
    const std::string args = " --tokens 5,17,42 --max-tokens 24 --ignore-eos --json --threads 1" + extra;
    Out a = kiln_run("generate --model " + q(dspark()) + args);
    Out b = kiln_run("generate --model " + q(plain()) + args);
    ASSERT_EQ(a.code, 0) << a.text;
    ASSERT_EQ(b.code, 0) << b.text;
    EXPECT_EQ(json_line(a)["tokens"].size(), 24u);
    EXPECT_EQ(json_line(a)["tokens"], json_line(b)["tokens"]) << extra;
  }
  const std::string pargs = " --tokens 5,17,42,3,99,200,7,7,31,128,64,1,250,12,13 --ctx 8 --json";
  Out a = kiln_run("perplexity --model " + q(dspark()) + pargs);
  Out b = kiln_run("perplexity --model " + q(plain()) + pargs);
  ASSERT_EQ(a.code, 0) << a.text;
  ASSERT_EQ(b.code, 0) << b.text;
  EXPECT_EQ(json_line(a)["nll_sum"], json_line(b)["nll_sum"]);
  EXPECT_EQ(json_line(a)["perplexity"], json_line(b)["perplexity"]);
}

TEST_F(DSparkCli, MtpDraftsWithTheDSparkDrafterAndSpecMtpIsAClearError) {
  // --mtp K on a DSpark checkpoint drafts with its drafter (--spec defaults to what the
  // checkpoint has) and gives the plain tokens.
  for (const char* k : {"1", "5"}) {
    Out r = kiln_run("generate --model " + q(dspark()) + " --tokens 5,17,42 --max-tokens 12 --ignore-eos --json "
                     "--compare-plain --device cpu --mtp " + k);
    ASSERT_EQ(r.code, 0) << r.text;
    const auto j = json_line(r);
    EXPECT_EQ(j["mtp"]["drafter"], "dspark");
    EXPECT_EQ(j["plain"]["tokens_identical"], true);
  }
  Out big = kiln_run("generate --model " + q(dspark()) + " --tokens 5,17,42 --max-tokens 4 --mtp 6");
  EXPECT_NE(big.code, 0) << big.text;
  EXPECT_NE(big.text.find("--mtp 6: expected 1..5 draft tokens per round (the DSpark block size)"), std::string::npos)
      << big.text;
  for (const char* k : {"1", "4"}) {
    Out r = kiln_run("generate --model " + q(dspark()) + " --tokens 5,17,42 --max-tokens 4 --spec mtp --mtp " + k);
    EXPECT_NE(r.code, 0) << r.text;
    for (const char* want : {"--mtp", "has a DSpark drafter (3 stages, block size 5), not a classic MTP block"}) {
      EXPECT_NE(r.text.find(want), std::string::npos) << want << "\n" << r.text;
    }
    EXPECT_EQ(r.text.find("ready:"), std::string::npos) << "failed before loading the weights\n" << r.text;
  }
  Out s = kiln_run("score --model " + q(dspark()) + " --tokens 5,17,42 --out " + q(dir_->path() / "x.npy") +
                   " --mtp-out " + q(dir_->path() / "m.npy"));
  EXPECT_NE(s.code, 0) << s.text;
  EXPECT_NE(s.text.find("--mtp-out"), std::string::npos) << s.text;
  EXPECT_NE(s.text.find("has a DSpark drafter"), std::string::npos) << s.text;
  EXPECT_NE(s.text.find("--mtp-out writes a classic MTP block's draft logits"), std::string::npos) << s.text;
  EXPECT_EQ(s.text.find("does not implement DSpark drafting"), std::string::npos) << s.text;
  // Plain decoding of the same checkpoint is fine (the other tests), and a model without
  // any drafter keeps its old message.
  Out n = kiln_run("generate --model " + q(plain()) + " --tokens 5,7 --mtp 2");
  EXPECT_EQ(n.code, 2) << n.text;
  EXPECT_NE(n.text.find("has no MTP block to draft with"), std::string::npos) << n.text;
}

// kiln quantize carries the drafter: its modules written by role like the rest (the stages
// as MTP blocks get the recipe's MTP treatment), the copy loadable with the drafter, its main
// model bitwise the quantized copy of the checkpoint without the drafter, and drafting with
// the quantized drafter giving plain decoding's tokens.
TEST_F(DSparkCli, QuantizeCarriesTheDrafter) {
  for (const std::string recipe : {"deepseek-native", "w4a16-fp8-mtp"}) {
    SCOPED_TRACE(recipe);
    const auto qd = dir_->path() / ("qd-" + recipe), qp = dir_->path() / ("qp-" + recipe);
    Out r = kiln_run("quantize --model " + q(dspark()) + " --recipe " + recipe + " --out " + q(qd));
    ASSERT_EQ(r.code, 0) << r.text;
    Out rp = kiln_run("quantize --model " + q(plain()) + " --recipe " + recipe + " --out " + q(qp));
    ASSERT_EQ(rp.code, 0) << rp.text;
    Out t = kiln_run("inspect " + q(qd));
    ASSERT_EQ(t.code, 0) << t.text;
    // deepseek-native keeps MTP experts MXFP4; w4a16-fp8-mtp keeps MTP blocks BF16.
    const std::string experts = recipe == "deepseek-native" ? "mxfp4" : "bf16";
    const auto row = t.text.find("DSpark routed experts");
    ASSERT_NE(row, std::string::npos) << t.text;
    EXPECT_NE(t.text.substr(row, t.text.find('\n', row) - row).find(experts), std::string::npos) << t.text;
    Out j = kiln_run("inspect --json " + q(qd));
    ASSERT_EQ(j.code, 0) << j.text;
    const auto js = nlohmann::json::parse(j.text);
    EXPECT_EQ(js["loadable"], true);
    EXPECT_EQ(js["drafter"]["kind"], "dspark");
    EXPECT_EQ(js["drafter"]["loaded"], true);
    EXPECT_TRUE(js["unused"].empty());
    const std::string tokens = " --tokens 5,17,42,3,99,200,7,7,31,128,64,1 --mode full --out ";
    Out sa = kiln_run("score --model " + q(qd) + tokens + q(dir_->path() / "sa.npy"));
    Out sb = kiln_run("score --model " + q(qp) + tokens + q(dir_->path() / "sb.npy"));
    ASSERT_EQ(sa.code, 0) << sa.text;
    ASSERT_EQ(sb.code, 0) << sb.text;
    EXPECT_TRUE(read_file(dir_->path() / "sa.npy") == read_file(dir_->path() / "sb.npy")) << "main model logits differ";
    Out g = kiln_run("generate --model " + q(qd) +
                     " --tokens 5,17,42 --max-tokens 24 --ignore-eos --temperature 0 --spec dspark --compare-plain --json");
    ASSERT_EQ(g.code, 0) << g.text;
    const auto gj = json_line(g);
    EXPECT_EQ(gj["plain"]["tokens_identical"], true) << g.text;
    EXPECT_EQ(gj["mtp"]["drafter"], "dspark");
    EXPECT_GT(gj["mtp"]["drafts_proposed"].get<int>(), 0);
  }
}

// A checkpoint made bad by `mutate`: every string of `expect` is in the error.
template <class Checkpoint>
struct BadCase {
  std::string name;
  std::function<void(Checkpoint&)> mutate;
  std::vector<std::string> expect;
};

// inspect says NOT LOADABLE, and generate (plain, and drafting with --spec dspark) exits 2
// before running; each names every string of `expect`.
void expect_refused_naming(const std::filesystem::path& dir, const std::vector<std::string>& expect) {
  Out r = kiln_run("inspect " + q(dir));
  EXPECT_EQ(r.code, 2) << r.text;
  EXPECT_NE(r.text.find("NOT LOADABLE"), std::string::npos) << r.text;
  for (const auto& e : expect) EXPECT_NE(r.text.find(e), std::string::npos) << e << "\n" << r.text;
  for (const char* spec : {"", " --spec dspark --mtp 3"}) {
    Out g = kiln_run("generate --device cpu --model " + q(dir) + " --tokens 5,7 --max-tokens 2" + spec);
    EXPECT_EQ(g.code, 2) << spec << "\n" << g.text;
    for (const auto& e : expect) EXPECT_NE(g.text.find(e), std::string::npos) << spec << " " << e << "\n" << g.text;
  }
}

TEST(DSparkCliBadInput, MissingOrMisshapenDrafterTensorIsNamed) {
  const BadCase<ArtifactSpec> cases[] = {
      {"missing",
       [](ArtifactSpec& s) {
         s.erase("mtp.1.attn.wq_b.weight");
         s.erase("mtp.1.attn.wq_b.scale");
       },
       {"mtp.1.attn.wq_b.weight"}},
      {"missing Markov head",
       [](ArtifactSpec& s) { s.erase("mtp.2.markov_head.markov_w1.weight"); },
       {"mtp.2.markov_head.markov_w1.weight"}},
      {"misshapen",
       [](ArtifactSpec& s) {
         auto* t = s.find("mtp.2.markov_head.markov_w1.weight");
         t->shape = {256, 16};
         t->bytes.resize(256 * 16 * 2);
       },
       {"mtp.2.markov_head.markov_w1.weight", "shape [256, 16] but the config implies [256, 32]"}},
      {"misshapen main_norm",
       [](ArtifactSpec& s) {
         auto* t = s.find("mtp.0.main_norm.weight");
         t->shape = {128};
         t->bytes.resize(128 * 2);
       },
       {"mtp.0.main_norm.weight", "shape [128]"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ArtifactSpec spec = tiny_0731();
    c.mutate(spec);
    TempDir d;
    kiln::test::write_spec(spec, d.path());
    expect_refused_naming(d.path(), c.expect);
  }
}

// Broken copies of the oracle fixture (tests/data/fixtures/tiny_dspark/native, written by
// tools/make_dspark_fixture.py): one shard's header edited in place (a tensor dropped, or
// given another shape of the same bytes), or config.json edited.
class BrokenOracleFixture {
 public:
  BrokenOracleFixture() : dir_("kiln-dspark-broken") {
    std::filesystem::copy(kOracle, dir_.path(), std::filesystem::copy_options::recursive);
  }
  const std::filesystem::path& path() const { return dir_.path(); }
  void erase(const std::string& name) {
    edit_header(name, [&](nlohmann::json& h) { h.erase(name); });
    const auto index = dir_.path() / "model.safetensors.index.json";
    auto j = nlohmann::json::parse(read_file(index));
    j["weight_map"].erase(name);
    std::ofstream(index) << j.dump();
  }
  void reshape(const std::string& name, const std::vector<int64_t>& shape) {
    edit_header(name, [&](nlohmann::json& h) { h[name]["shape"] = shape; });
  }
  void set_config(const std::string& key, const nlohmann::json& value) {
    const auto path = dir_.path() / "config.json";
    auto j = nlohmann::json::parse(read_file(path));
    j[key] = value;
    std::ofstream(path) << j.dump();
  }

 private:
  static inline const std::filesystem::path kOracle = std::filesystem::path(KILN_TEST_DATA_DIR) / "fixtures/tiny_dspark/native";
  // The safetensors layout: u64 header length (little-endian), the JSON header, the data.
  void edit_header(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    const auto index = nlohmann::json::parse(read_file(dir_.path() / "model.safetensors.index.json"));
    const auto shard = dir_.path() / index["weight_map"][name].get<std::string>();
    const std::string file = read_file(shard);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(file[static_cast<size_t>(i)]);
    auto header = nlohmann::json::parse(file.substr(8, n));
    ASSERT_TRUE(header.contains(name)) << name;
    edit(header);
    std::string text = header.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xFF);
    std::ofstream(shard, std::ios::binary) << out << text << file.substr(8 + n);
  }
  TempDir dir_;
};

TEST(DSparkCliBadInput, BrokenCopiesOfTheOracleFixtureNameTheTensor) {
  const BadCase<BrokenOracleFixture> cases[] = {
      {"missing Markov head", [](BrokenOracleFixture& f) { f.erase("mtp.2.markov_head.markov_w1.weight"); },
       {"mtp.2.markov_head.markov_w1.weight"}},
      {"missing stage attention", [](BrokenOracleFixture& f) { f.erase("mtp.1.attn.wq_b.weight"); },
       {"mtp.1.attn.wq_b.weight"}},
      {"missing hc_head", [](BrokenOracleFixture& f) { f.erase("mtp.2.hc_head_fn"); }, {"mtp.2.hc_head_fn"}},
      {"misshapen main_proj", [](BrokenOracleFixture& f) { f.reshape("mtp.0.main_proj.weight", {192, 64}); },
       {"mtp.0.main_proj.weight", "[192, 64]"}},
      {"misshapen confidence head", [](BrokenOracleFixture& f) { f.reshape("mtp.2.confidence_head.proj.weight", {2, 40}); },
       {"mtp.2.confidence_head.proj.weight", "[2, 40]"}},
      {"misshapen Markov w2", [](BrokenOracleFixture& f) { f.reshape("mtp.2.markov_head.markov_w2.weight", {16, 256}); },
       {"mtp.2.markov_head.markov_w2.weight", "[16, 256]"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    BrokenOracleFixture f;
    c.mutate(f);
    expect_refused_naming(f.path(), c.expect);
  }
}

TEST(DSparkCliBadInput, DraftCountsBeyondTheBlockAreNamed) {
  const std::string model = q(std::filesystem::path(KILN_TEST_DATA_DIR) / "fixtures/tiny_dspark/native");
  const std::string run = "generate --device cpu --model " + model + " --tokens 5,7 --max-tokens 2 ";
  struct Case {
    std::string args, want;
  } cases[] = {
      {"--spec dspark --mtp 6", "--mtp 6: expected 1..5 draft tokens per round (the DSpark block size)"},
      {"--mtp 0", "--mtp 0: expected 1..5 draft tokens per round (the DSpark block size)"},
      {"--spec off --mtp 2", "--mtp 2: --spec off drafts nothing"},
      {"--spec eagle --mtp 2", "--spec eagle: expected dspark, mtp or off"},
  };
  for (const auto& c : cases) {
    Out r = kiln_run(run + c.args);
    EXPECT_NE(r.code, 0) << c.args << "\n" << r.text;
    EXPECT_NE(r.text.find(c.want), std::string::npos) << c.args << "\n" << r.text;
  }
  // A block larger than kiln drafts: plain decoding runs, drafting is refused naming the key.
  BrokenOracleFixture f;
  f.set_config("dspark_block_size", 6);
  Out plain = kiln_run("generate --device cpu --model " + q(f.path()) + " --tokens 5,7 --max-tokens 2");
  EXPECT_EQ(plain.code, 0) << plain.text;
  Out r = kiln_run("generate --device cpu --model " + q(f.path()) + " --tokens 5,7 --max-tokens 2 --spec dspark");
  EXPECT_EQ(r.code, 2) << r.text;
  EXPECT_NE(r.text.find("dspark_block_size is 6; kiln's DSpark drafting takes blocks of up to 5"), std::string::npos) << r.text;
}

// A header-exact replica of DeepSeek-V4-Flash-0731 (dspark.md 1.4 and section 2): its
// config.json, 72,317 tensors with the release's names, dtypes and shapes over 48 shards,
// the drafter in the last three; data regions are holes, since inspect reads headers only.
TEST(DSparkCliReplica, Flash0731HeaderReplicaIsLoadableWithTheDrafterReported) {
  const ArtifactSpec spec = kiln::test::make_spec(Layout::Native, kiln::test::flash_0731_config(), 48, /*sparse=*/true);
  ASSERT_EQ(spec.tensors.size(), 72317u);
  std::map<std::string, size_t> dtypes;
  size_t drafter = 0;
  for (const auto& t : spec.tensors) {
    if (!is_drafter(t.name)) continue;
    ++drafter;
    dtypes[std::string(kiln::dtype_name(t.dtype))] += 1;
    EXPECT_GE(t.shard, 45) << t.name;  // shards 46-48
  }
  // The NANO receipt / header audit counts (dspark.md 1.4).
  EXPECT_EQ(drafter, 4705u);
  EXPECT_EQ(dtypes, (std::map<std::string, size_t>{
                        {"BF16", 20}, {"F32", 27}, {"F8_E4M3", 25}, {"F8_E8M0", 2329}, {"I8", 2304}}));

  TempDir d("kiln-0731");
  kiln::test::write_spec(spec, d.path());
  const auto t0 = std::chrono::steady_clock::now();
  Out r = kiln_run("inspect --json " + q(d.path()));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.code, 0) << r.text.substr(0, 4000);
  auto j = nlohmann::json::parse(r.text);
  EXPECT_EQ(j["loadable"], true);
  EXPECT_EQ(j["checkpoint"]["shards"], 48);
  EXPECT_EQ(j["checkpoint"]["tensors"], 72317);
  // 166.88 GB stored (NANO), 10.863 GB of it the drafter.
  EXPECT_NEAR(j["checkpoint"]["bytes"].get<double>() / 1e9, 166.88, 0.01);
  EXPECT_TRUE(j["unused"].empty()) << j["unused"].dump().substr(0, 400);
  EXPECT_TRUE(j["missing"].empty()) << j["missing"].dump().substr(0, 400);
  EXPECT_TRUE(j["errors"].empty()) << j["errors"].dump().substr(0, 400);
  EXPECT_TRUE(j["warnings"].empty()) << j["warnings"].dump().substr(0, 400);
  EXPECT_EQ(j["model"]["num_layers"], 43);
  EXPECT_EQ(j["model"]["num_mtp_layers"], 0);
  EXPECT_EQ(j["model"]["num_nextn_predict_layers"], 1);
  EXPECT_EQ(j["mtp"]["found"], nlohmann::json::array());
  const auto& dr = j["drafter"];
  EXPECT_EQ(dr["kind"], "dspark");
  EXPECT_EQ(dr["stages"], 3);
  EXPECT_EQ(dr["found"], nlohmann::json::array({0, 1, 2}));
  EXPECT_EQ(dr["block_size"], 5);
  EXPECT_EQ(dr["noise_token_id"], 128799);
  EXPECT_EQ(dr["target_layer_ids"], nlohmann::json::array({40, 41, 42}));
  EXPECT_EQ(dr["markov_rank"], 256);
  EXPECT_EQ(dr["confidence_head"], true);
  EXPECT_EQ(dr["tensors"], 4705);
  EXPECT_NEAR(dr["bytes"].get<double>() / 1e9, 10.863, 0.001);
  EXPECT_EQ(dr["loaded"], true);
  std::map<std::string, std::string> dspark_schemes;
  for (const auto& g : j["groups"]) {
    if (g["part"] == "dspark") dspark_schemes[g["label"]] = g["scheme"];
  }
  EXPECT_EQ(dspark_schemes["DSpark routed experts"], "mxfp4 g32 F8_E8M0 .scale");
  EXPECT_EQ(dspark_schemes["DSpark main_proj"], "fp8_block 128x128 F8_E8M0 .scale");
  EXPECT_EQ(dspark_schemes["DSpark attention wq_b"], "fp8_block 128x128 F8_E8M0 .scale");
  EXPECT_EQ(dspark_schemes["DSpark Markov head w2"], "bf16");
  EXPECT_EQ(dspark_schemes["DSpark confidence head"], "bf16");
  EXPECT_LT(secs, 30.0) << "inspect read 48 headers in " << secs << " s";
}

}  // namespace
