// The plan of DSpark checkpoints (V4-Flash-0731 layout, written small by kiln's writer):
// the mtp.N blocks are a DSpark drafter, never a classic MTP block; its tensors are
// recognised and their schemes detected, but kept out of what the model loads; a missing
// or misshapen drafter tensor is an error naming it.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "kiln/artifact/plan.h"
#include "kiln/artifact/report.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "plan_test_util.h"
#include "support/artifacts.h"

namespace kiln {
namespace {

using test::ArtifactSpec;
using test::Layout;
using test::TempDir;

using test::all;
using test::plan_of;

bool is_drafter(const std::string& name) { return name.rfind("mtp.", 0) == 0; }

ArtifactSpec tiny_0731(int shards = 4) { return test::make_spec(Layout::Native, test::tiny_dspark_config(), shards); }

TEST(PlanDSpark, TinyFlash0731LayoutIsLoadableWithTheDrafterDescribed) {
  const ArtifactSpec spec = tiny_0731();
  TempDir dir;
  const Plan p = plan_of(spec, dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_TRUE(p.warnings.empty()) << all(p.warnings);
  EXPECT_TRUE(p.unused.empty()) << all(p.unused);
  EXPECT_TRUE(p.mtp_found.empty());
  EXPECT_EQ(p.config.num_mtp_layers, 0);
  ASSERT_TRUE(p.config.dspark && p.dspark);
  const PlannedDSpark& d = *p.dspark;
  EXPECT_EQ(d.stages_found, (std::vector<int>{0, 1, 2}));
  EXPECT_TRUE(d.confidence_head);

  // Every drafter tensor is the drafter's, counted once, with its bytes.
  size_t n = 0;
  uint64_t bytes = 0;
  for (const auto& t : spec.tensors) {
    if (!is_drafter(t.name)) continue;
    ++n;
    bytes += t.bytes.size();
  }
  EXPECT_EQ(d.num_tensors, n);
  EXPECT_EQ(d.bytes, bytes);
  // 3 stages x (5 attention + 24 experts x 3 + 3 shared + gate) + main_proj + Markov w2 + confidence.
  EXPECT_EQ(d.linears.size(), 3u * (5 + 24 + 3 + 1) + 3);

  // The model that runs has none of it.
  for (const auto& l : p.linears) EXPECT_NE(l.name.scope, Scope::Mtp) << l.path;
  for (const auto& t : p.tensors) EXPECT_FALSE(is_drafter(t.path)) << t.path;

  // Per-module schemes, as the release stores them (dspark.md 1.4).
  std::map<std::string, std::set<std::string>> schemes;
  for (const auto& g : p.groups) {
    if (g.part != Part::DSpark) continue;
    EXPECT_FALSE(g.mtp) << g.label;
    EXPECT_EQ(g.label.rfind("DSpark ", 0), 0u) << g.label;
    schemes[g.label].insert(g.scheme);
  }
  const std::set<std::string> fp8{"fp8_block 128x128 F8_E8M0 .scale"}, bf16{"bf16"};
  EXPECT_EQ(schemes["DSpark routed experts"], (std::set<std::string>{"mxfp4 g32 F8_E8M0 .scale"}));
  for (const char* g : {"DSpark attention wq_a", "DSpark attention wq_b", "DSpark attention wkv", "DSpark attention wo_a",
                        "DSpark attention wo_b", "DSpark shared experts", "DSpark main_proj"}) {
    EXPECT_EQ(schemes[g], fp8) << g;
  }
  for (const char* g : {"DSpark router gate", "DSpark Markov head w2", "DSpark confidence head"}) {
    EXPECT_EQ(schemes[g], bf16) << g;
  }
  EXPECT_EQ(schemes["DSpark Markov head w1 (embedding)"], (std::set<std::string>{"BF16"}));
  EXPECT_EQ(schemes["DSpark router bias"], (std::set<std::string>{"F32"}));
  EXPECT_TRUE(schemes.count("DSpark compressor wkv/wgate") == 0);  // stages are sliding-window only
  // Main rows first, the drafter's last.
  bool seen_drafter = false;
  for (const auto& g : p.groups) {
    if (g.part == Part::DSpark) {
      seen_drafter = true;
    } else {
      EXPECT_FALSE(seen_drafter) << g.label << " after a DSpark row";
    }
  }
  for (const auto& g : p.groups) {
    if (g.label == "DSpark main_proj" || g.label == "DSpark Markov head w2") {
      EXPECT_EQ(g.layers, (std::vector<int>{g.label == "DSpark main_proj" ? 0 : 2}));
    }
    if (g.label == "DSpark routed experts") {
      EXPECT_EQ(format_ranges(g.layers), "0-2");
    }
  }
}

TEST(PlanDSpark, ReportTextAndJsonDescribeTheDrafter) {
  TempDir dir;
  const Plan p = plan_of(tiny_0731(), dir);
  ASSERT_TRUE(p.loadable());
  const std::string text = render_text(p, dir.path());
  for (const char* want : {"4 layers + DSpark drafter (3 stages)", "MTP         none: num_nextn_predict_layers (1)",
                           "drafter     DSpark: 3 sliding-window stages (mtp.0-2), block 5, targets [1, 2, 3], "
                           "Markov rank 32, noise token 255",
                           "found mtp.0-2:", "confidence head yes; loaded: drafts with --spec dspark", "DSpark routed experts",
                           "verdict: loadable"}) {
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
  }
  const auto j = render_json(p, dir.path());
  const auto& d = j["drafter"];
  EXPECT_EQ(d["kind"], "dspark");
  EXPECT_EQ(d["stages"], 3);
  EXPECT_EQ(d["found"], nlohmann::json::array({0, 1, 2}));
  EXPECT_EQ(d["loaded"], true);
  EXPECT_EQ(d["block_size"], 5);
  EXPECT_EQ(d["noise_token_id"], 255);
  EXPECT_EQ(d["target_layer_ids"], nlohmann::json::array({1, 2, 3}));
  EXPECT_EQ(d["markov_rank"], 32);
  EXPECT_EQ(d["compress_ratios"], nlohmann::json::array({0, 0, 0}));
  EXPECT_EQ(d["confidence_head"], true);
  EXPECT_EQ(d["tensors"], p.dspark->num_tensors);
  EXPECT_EQ(d["bytes"], p.dspark->bytes);
  EXPECT_EQ(j["model"]["num_mtp_layers"], 0);
  EXPECT_EQ(j["model"]["num_nextn_predict_layers"], 1);
  EXPECT_EQ(j["layers"].size(), 4u);  // the backbone; stages are under drafter
  EXPECT_EQ(j["mtp"]["found"], nlohmann::json::array());
  size_t rows = 0;
  for (const auto& g : j["groups"]) {
    if (g["part"] == "dspark") ++rows;
    EXPECT_EQ(g["mtp"], false);
  }
  EXPECT_GT(rows, 10u);
}

TEST(PlanDSpark, ClassicMtpReportsMtpDrafter) {
  TempDir dir;
  const Plan p = plan_of(test::make_spec(Layout::Native, test::tiny_config(), 2), dir);
  const auto j = render_json(p, dir.path());
  EXPECT_EQ(j["drafter"]["kind"], "mtp");
  EXPECT_EQ(j["drafter"]["found"], nlohmann::json::array({0}));
  EXPECT_FALSE(p.dspark.has_value());
}

TEST(PlanDSpark, MissingDrafterTensorIsNamed) {
  for (std::string name : {"mtp.1.attn.wkv.weight", "mtp.2.markov_head.markov_w1.weight", "mtp.0.main_norm.weight",
                           "mtp.2.hc_head_fn", "mtp.0.ffn.experts.3.w2.weight", "mtp.2.markov_head.markov_w2.weight"}) {
    ArtifactSpec spec = tiny_0731();
    spec.erase(name);
    if (name.ends_with(".weight")) spec.erase(name.substr(0, name.size() - 7) + ".scale");  // a linear's scale too
    TempDir dir;
    const Plan p = plan_of(spec, dir);
    EXPECT_FALSE(p.loadable()) << name;
    EXPECT_EQ(all(p.missing), name + "\n") << all(p.errors);
  }
  // A linear module with only its scale left: an error naming it.
  ArtifactSpec spec = tiny_0731();
  spec.erase("mtp.0.main_proj.weight");
  TempDir dir;
  const Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_NE(all(p.errors).find("mtp.0.main_proj"), std::string::npos) << all(p.errors) << all(p.missing);
}

TEST(PlanDSpark, MisshapenDrafterTensorIsNamed) {
  struct Case {
    const char* tensor;
    std::vector<int64_t> shape;
    std::vector<std::string> expect;
  } cases[] = {
      {"mtp.2.markov_head.markov_w1.weight", {256, 16}, {"mtp.2.markov_head.markov_w1.weight", "[256, 16]", "[256, 32]"}},
      {"mtp.0.main_norm.weight", {255}, {"mtp.0.main_norm.weight", "[255]", "[256]"}},
      {"mtp.2.markov_head.markov_w2.weight", {256, 16}, {"mtp.2.markov_head.markov_w2"}},
      {"mtp.0.main_proj.weight", {256, 512}, {"mtp.0.main_proj"}},  // 2 target layers' worth, 3 declared
      {"mtp.2.confidence_head.proj.weight", {1, 256}, {"mtp.2.confidence_head.proj"}},
  };
  for (const auto& c : cases) {
    ArtifactSpec spec = tiny_0731();
    auto* t = spec.find(c.tensor);
    ASSERT_TRUE(t) << c.tensor;
    int64_t n = 1;
    for (auto d : c.shape) n *= d;
    t->bytes.resize(static_cast<size_t>(n) * dtype_size(t->dtype));
    t->shape = c.shape;
    TempDir dir;
    const Plan p = plan_of(spec, dir);
    EXPECT_FALSE(p.loadable()) << c.tensor;
    for (const auto& e : c.expect) EXPECT_NE(all(p.errors).find(e), std::string::npos) << e << "\n" << all(p.errors);
  }
}

TEST(PlanDSpark, ConfidenceHeadIsOptional) {
  ArtifactSpec spec = tiny_0731();
  spec.erase("mtp.2.confidence_head.proj.weight");
  TempDir dir;
  const Plan p = plan_of(spec, dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_FALSE(p.dspark->confidence_head);
}

TEST(PlanDSpark, DeclaredButAbsentIsAWarning) {
  ArtifactSpec spec = tiny_0731(1);
  std::erase_if(spec.tensors, [](const test::PendingTensor& t) { return is_drafter(t.name); });
  TempDir dir;
  const Plan p = plan_of(spec, dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  ASSERT_EQ(p.warnings.size(), 1u) << all(p.warnings);
  EXPECT_NE(p.warnings[0].find("declares a DSpark drafter (3 stage(s)"), std::string::npos) << p.warnings[0];
  EXPECT_TRUE(p.dspark->stages_found.empty());
  EXPECT_NE(render_text(p, dir.path()).find("found none; not loaded"), std::string::npos);
}

TEST(PlanDSpark, ClassicMtpTensorsUnderADSparkConfigAreNotTheDrafter) {
  // A V4-Flash checkpoint (classic MTP block) whose config claims DSpark.
  ArtifactSpec spec = test::make_spec(Layout::Native, test::tiny_config(), 2);
  spec.config = test::dspark_config(spec.config, {1, 2, 3}, 32, 255);
  TempDir dir;
  const Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  const std::string missing = all(p.missing);
  EXPECT_NE(missing.find("mtp.0.main_proj.weight"), std::string::npos) << missing;
  EXPECT_NE(missing.find("mtp.1.attn.wq_a.weight"), std::string::npos) << missing;
  EXPECT_NE(all(p.unused).find("mtp.0.e_proj.weight"), std::string::npos);
  EXPECT_TRUE(p.mtp_found.empty());
}

TEST(PlanDSpark, UndeclaredDrafterIsNeverTakenForAnMtpBlock) {
  // The 0731 tensors with the dspark_* keys stripped (num_nextn_predict_layers still 1).
  ArtifactSpec spec = tiny_0731();
  for (const char* k : {"dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids", "dspark_markov_rank"}) {
    spec.config.erase(k);
  }
  TempDir dir;
  const Plan p = plan_of(spec, dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_EQ(p.config.num_mtp_layers, 0);
  EXPECT_TRUE(p.mtp_found.empty());
  EXPECT_FALSE(p.dspark.has_value());
  const std::string w = all(p.warnings);
  EXPECT_NE(w.find("mtp.0-2 hold a DSpark drafter (mtp.0.main_norm.weight, mtp.0.main_proj.scale"), std::string::npos)
      << w;
  EXPECT_NE(w.find("no dspark_* keys"), std::string::npos) << w;
  size_t drafter = 0;
  for (const auto& t : spec.tensors) drafter += is_drafter(t.name) ? 1 : 0;
  EXPECT_EQ(p.unused.size(), drafter);
  for (const auto& l : p.linears) EXPECT_NE(l.name.scope, Scope::Mtp) << l.path;
}

}  // namespace
}  // namespace kiln
