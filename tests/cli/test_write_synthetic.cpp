// The synthetic checkpoint writer (kiln bench --write-synthetic): on a scaled-down config
// (test::tiny_config, the Flash layout at small widths) it writes what the loader plans
// as DeepSeek ships it: every tensor the inventory expects under its native name, FP8
// 128x128 E8M0 attention, MXFP4 (or NVFP4) routed experts, BF16 compressors / router /
// head / embedding, the MTP block in its own shard, an index naming every tensor; kiln
// inspect calls it loadable and the CPU backend decodes from it.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "cli/kiln_process.h"
#include "kiln/artifact/plan.h"
#include "kiln/cli/write_synthetic.h"
#include "kiln/io/checkpoint.h"
#include "kiln/quant/recipes.h"
#include "support/artifacts.h"

namespace kiln::cli {
namespace {

nlohmann::json read(const std::filesystem::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

void check_written(quant::RecipeId recipe) {
  test::TempDir d;
  SyntheticCheckpointOptions o;
  o.recipe = recipe;
  o.max_shard_bytes = 1'000'000;  // several main shards at this size
  const uint64_t bytes = write_synthetic_checkpoint(d.path(), test::tiny_config(), o);

  const Checkpoint ckpt = Checkpoint::open(d.path());
  const ModelConfig cfg = load_model_config(d.path());
  const Plan plan = build_plan(ckpt, cfg);
  ASSERT_TRUE(plan.loadable()) << (plan.errors.empty() ? "" : plan.errors[0]) << (plan.missing.empty() ? "" : plan.missing[0]);
  EXPECT_TRUE(plan.unused.empty());
  EXPECT_TRUE(plan.warnings.empty()) << plan.warnings[0];
  EXPECT_EQ(ckpt.total_tensor_bytes(), bytes);
  EXPECT_EQ(plan.mtp_found, std::vector<int>{0});

  // Each module in the form the recipe gives its role.
  for (const PlannedLinear& l : plan.linears) {
    const bool mtp = l.name.scope == Scope::Mtp;
    const quant::Target t = quant::target_for(recipe, quant::role_of(l.name.module), mtp);
    const Scheme& s = l.scheme;
    EXPECT_EQ(s.kind, t.kind) << l.path;  // one scheme enum: the recipe's target is the detected scheme
    switch (t.kind) {
      case SchemeKind::FP8Block:
        EXPECT_EQ(s.block_n, 128);
        EXPECT_EQ(s.block_k, 128);
        EXPECT_EQ(s.scale_field, "scale") << l.path;
        EXPECT_EQ(l.roles.scale->dtype(), DType::F8_E8M0) << l.path;
        break;
      case SchemeKind::MXFP4: EXPECT_EQ(l.roles.weight.dtype(), DType::I8) << l.path; break;
      case SchemeKind::Int4Group: ADD_FAILURE() << "no int4 in a native recipe"; break;
      default: break;
    }
  }
  std::map<std::string, DType> dtypes;
  for (const auto& [name, e] : ckpt.tensors()) dtypes[std::string(name)] = e.info->dtype;
  EXPECT_EQ(dtypes.at("embed.weight"), DType::BF16);
  EXPECT_EQ(dtypes.at("layers.0.attn_norm.weight"), DType::BF16);
  EXPECT_EQ(dtypes.at("layers.0.hc_attn_fn"), DType::F32);
  EXPECT_EQ(dtypes.at("layers.0.ffn.gate.tid2eid"), DType::I64);  // tiny_config: one hash layer
  EXPECT_EQ(dtypes.at("head.weight"), DType::BF16);
  EXPECT_EQ(dtypes.at("layers.1.attn.compressor.wkv.weight"), DType::BF16);
  EXPECT_EQ(dtypes.at("layers.1.attn.wq_b.weight"), DType::F8_E4M3);

  // config.json as DeepSeek's, with its quantization_config.
  const auto c = read(d.path() / "config.json");
  EXPECT_EQ(c.at("quantization_config").at("quant_method"), "fp8");
  EXPECT_EQ(c.at("quantization_config").at("scale_fmt"), "ue8m0");
  EXPECT_EQ(c.at("expert_dtype"), "fp4");

  // The index names every tensor; the MTP block has its own (last) shard.
  const auto idx = read(d.path() / "model.safetensors.index.json");
  EXPECT_EQ(idx.at("metadata").at("total_size").get<uint64_t>(), bytes);
  EXPECT_EQ(idx.at("weight_map").size(), ckpt.tensors().size());
  std::set<std::string> mtp_shards, main_shards;
  for (const auto& [name, file] : idx.at("weight_map").items())
    (name.rfind("mtp.", 0) == 0 ? mtp_shards : main_shards).insert(file.get<std::string>());
  EXPECT_EQ(mtp_shards.size(), 1u);
  EXPECT_GT(main_shards.size(), 1u);
  EXPECT_EQ(main_shards.count(*mtp_shards.begin()), 0u);
  EXPECT_GT(*mtp_shards.begin(), *main_shards.rbegin());  // model-0000N-of-0000M: the last one

  // kiln inspect reads it as loadable; the CPU backend decodes from it.
  const test::Out ins = test::kiln_run("inspect " + d.path().string());
  EXPECT_EQ(ins.code, 0) << ins.text;
  EXPECT_NE(ins.text.find("verdict: loadable"), std::string::npos) << ins.text;
  const test::Out gen =
      test::kiln_run("generate --device cpu --model " + d.path().string() + " --tokens 1,2,3 --max-tokens 3 --json");
  EXPECT_EQ(gen.code, 0) << gen.text;
  const auto j = nlohmann::json::parse(gen.text.substr(gen.text.find('{')));
  EXPECT_EQ(j.at("tokens").size(), 3u);
}

TEST(WriteSynthetic, NativeLayoutLoadsAsPlanned) { check_written(quant::RecipeId::Native); }
TEST(WriteSynthetic, NativeNvfp4LayoutLoadsAsPlanned) { check_written(quant::RecipeId::NativeNvfp4); }

TEST(WriteSynthetic, CommandLine) {
  test::TempDir d;
  const test::Out bad = test::kiln_run("bench --write-synthetic " + d.path().string() + " --experts int4_group");
  EXPECT_EQ(bad.code, 1) << bad.text;
  EXPECT_NE(bad.text.find("--experts mxfp4"), std::string::npos) << bad.text;
  const test::Out both = test::kiln_run("bench --write-synthetic " + d.path().string() + " --synthetic");
  EXPECT_NE(both.code, 0) << both.text;
}

}  // namespace
}  // namespace kiln::cli
