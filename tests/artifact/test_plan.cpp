// The plan over every real-world layout, written by kiln's writer; and every kind of
// bad artifact, each reported with the file, the tensor and what was expected.
#include <gtest/gtest.h>

#include <map>

#include "kiln/artifact/plan.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
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

// group label -> set of scheme descriptions
std::map<std::string, std::set<std::string>> schemes(const Plan& p) {
  std::map<std::string, std::set<std::string>> m;
  for (const auto& g : p.groups) {
    if (g.linear) m[g.label].insert(g.scheme);
  }
  return m;
}

std::set<std::string> S(std::initializer_list<const char*> l) { return {l.begin(), l.end()}; }

TEST(PlanTest, OfficialNativeLayout) {
  TempDir dir;
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 3);
  Plan p = plan_of(spec, dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_TRUE(p.warnings.empty()) << all(p.warnings);
  EXPECT_TRUE(p.unused.empty()) << all(p.unused);
  EXPECT_EQ(p.mtp_found, std::vector<int>{0});
  auto s = schemes(p);
  EXPECT_EQ(s["routed experts"], S({"mxfp4 g32 F8_E8M0 .scale"}));
  EXPECT_EQ(s["MTP routed experts"], S({"mxfp4 g32 F8_E8M0 .scale"}));
  for (const char* g : {"attention wq_a", "attention wq_b", "attention wkv", "attention wo_a", "attention wo_b",
                        "shared experts", "indexer wq_b", "MTP e_proj/h_proj", "MTP attention wq_a"}) {
    EXPECT_EQ(s[g], S({"fp8_block 128x128 F8_E8M0 .scale"})) << g;
  }
  for (const char* g : {"compressor wkv/wgate", "indexer compressor wkv/wgate", "indexer weights_proj", "router gate",
                        "head"}) {
    EXPECT_EQ(s[g], S({"bf16"})) << g;
  }
  // Layer schedule [SWA, CSA, HCA, CSA]: compressors on 1-3, indexer on 1 and 3.
  for (const auto& g : p.groups) {
    if (g.label == "compressor wkv/wgate") {
      EXPECT_EQ(format_ranges(g.layers), "1-3");
    }
    if (g.label == "indexer wq_b") {
      EXPECT_EQ(format_ranges(g.layers), "1, 3");
    }
    if (g.label == "hash routing tid2eid") {
      EXPECT_EQ(format_ranges(g.layers), "0");
    }
  }
}

TEST(PlanTest, CanadaQuantW4A16Fp8WithBf16Mtp) {
  TempDir dir;
  Plan p = plan_of(test::make_spec(Layout::W4A16Fp8Mtp, test::tiny_config(), 3), dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  auto s = schemes(p);
  EXPECT_EQ(s["routed experts"], S({"int4_group g128 sym BF16"}));
  EXPECT_EQ(s["attention wq_b"], S({"fp8_block 128x128 BF16 .weight_scale"}));
  // The MTP block is BF16 on disk although the ignore list does not cover its names.
  for (const auto& [g, sc] : s) {
    if (g.rfind("MTP ", 0) == 0) {
      EXPECT_EQ(sc, S({"bf16"})) << g;
    }
  }
  // ... and the disagreement with the declaration is reported, naming MTP modules.
  bool warned = false;
  for (const auto& w : p.warnings) {
    if (w.find("MTP routed experts: compressed-tensors group_0 declares int4_group, the tensors on disk are bf16") !=
            std::string::npos &&
        w.find("mtp.0.ffn.experts.0.w1") != std::string::npos)
      warned = true;
  }
  EXPECT_TRUE(warned) << all(p.warnings);
  for (const auto& w : p.warnings) EXPECT_NE(w.find("MTP"), std::string::npos) << "only MTP disagrees: " << w;
}

TEST(PlanTest, Nvfp4Fp8WithBf16WoAAndMtp) {
  TempDir dir;
  Plan p = plan_of(test::make_spec(Layout::Nvfp4Fp8Mtp, test::tiny_config(), 2), dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  auto s = schemes(p);
  EXPECT_EQ(s["routed experts"], S({"nvfp4 (modelopt weight_scale_2)"}));
  EXPECT_EQ(s["attention wq_a"], S({"fp8_block 128x128 F32 .weight_scale"}));
  EXPECT_EQ(s["attention wo_a"], S({"bf16"}));
  EXPECT_EQ(s["MTP routed experts"], S({"bf16"}));
  EXPECT_EQ(s["MTP attention wo_b"], S({"bf16"}));
}

// artifact-formats.md (d), third NVFP4 spelling: the official native layout with the main
// model's experts converted to NVFP4 under native names; the MTP block stays MXFP4.
TEST(PlanTest, NativeNamedNvfp4Experts) {
  TempDir dir;
  Plan p = plan_of(test::make_spec(Layout::NativeNvfp4, test::tiny_config(), 3), dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_TRUE(p.warnings.empty()) << all(p.warnings);
  auto s = schemes(p);
  EXPECT_EQ(s["routed experts"], S({"nvfp4 (modelopt weight_scale_2, native .scale)"}));
  EXPECT_EQ(s["MTP routed experts"], S({"mxfp4 g32 F8_E8M0 .scale"}));
  EXPECT_EQ(s["attention wq_a"], S({"fp8_block 128x128 F8_E8M0 .scale"}));
  for (const auto& l : p.linears) {
    if (l.group != "routed experts") continue;
    EXPECT_EQ(l.scheme.scale_field, "scale") << l.path;
    EXPECT_EQ(l.scheme.global, GlobalScaleConvention::Multiplier) << l.path;
    EXPECT_TRUE(l.fields.count("weight_scale_2")) << l.path;
  }
  bool declared = false;
  for (const auto& h : p.hint_summary) declared |= h.find("nvfp4 (moe_quant_algo)") != std::string::npos;
  EXPECT_TRUE(declared) << all(p.hint_summary);

  // The same tensors under a config that does not declare moe_quant_algo: loaded the same,
  // the disagreement with expert_dtype "fp4" reported.
  auto spec = test::make_spec(Layout::NativeNvfp4, test::tiny_config(), 3);
  spec.config["quantization_config"].erase("moe_quant_algo");
  TempDir dir2;
  Plan q = plan_of(spec, dir2);
  ASSERT_TRUE(q.loadable());
  ASSERT_FALSE(q.warnings.empty());
  EXPECT_NE(all(q.warnings).find("routed experts"), std::string::npos) << all(q.warnings);
}

TEST(PlanTest, V3StyleFp8WithTransformersNamesAndTrailingMtp) {
  TempDir dir;
  Plan p = plan_of(test::make_spec(Layout::V3Fp8, test::tiny_config(), 2), dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_TRUE(p.warnings.empty()) << all(p.warnings);
  EXPECT_TRUE(p.unused.empty()) << all(p.unused);
  auto s = schemes(p);
  EXPECT_EQ(s["routed experts"], S({"fp8_block 128x128 F32 .weight_scale_inv"}));
  EXPECT_EQ(s["MTP e_proj/h_proj"], S({"fp8_block 128x128 F32 .weight_scale_inv"}));
  EXPECT_EQ(p.mtp_found, std::vector<int>{0});  // model.layers.4.* is the MTP block
}

TEST(PlanTest, TransformersBf16WithFusedExperts) {
  TempDir dir;
  Plan p = plan_of(test::make_spec(Layout::HfBf16, test::tiny_config(), 1), dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  EXPECT_EQ(p.config.form, ConfigForm::Transformers);
  EXPECT_TRUE(p.unused.empty()) << all(p.unused);
  auto s = schemes(p);
  EXPECT_EQ(s["routed experts"], S({"bf16"}));
  // 4 layers x 8 experts x 3 projections, from 2 fused tensors per layer.
  for (const auto& g : p.groups) {
    if (g.label == "routed experts") {
      EXPECT_EQ(g.modules, 96u);
      EXPECT_EQ(g.tensors, 8u);
    }
  }
  // transformers does not save the MTP block: reported, still loadable.
  ASSERT_EQ(p.warnings.size(), 1u) << all(p.warnings);
  EXPECT_NE(p.warnings[0].find("no tensors for it"), std::string::npos);
}

TEST(PlanTest, MixedArtifactEachModuleDecidesAlone) {
  // Native main model, W4A16 experts in one layer, BF16 MTP: the union of two recipes.
  auto native = test::make_spec(Layout::Native, test::tiny_config(), 3);
  auto w4 = test::make_spec(Layout::W4A16Fp8Mtp, test::tiny_config(), 3);
  ArtifactSpec mixed = native;
  std::erase_if(mixed.tensors, [](const test::PendingTensor& t) {
    return t.name.rfind("mtp.", 0) == 0 || t.name.rfind("layers.2.ffn.experts.", 0) == 0;
  });
  for (const auto& t : w4.tensors) {
    if (t.name.rfind("mtp.", 0) == 0 || t.name.rfind("layers.2.ffn.experts.", 0) == 0) mixed.tensors.push_back(t);
  }
  TempDir dir;
  Plan p = plan_of(mixed, dir);
  ASSERT_TRUE(p.loadable()) << all(p.errors) << all(p.missing);
  for (const auto& g : p.groups) {
    if (g.label == "routed experts" && g.scheme.rfind("int4", 0) == 0) {
      EXPECT_EQ(format_ranges(g.layers), "2");
    }
    if (g.label == "routed experts" && g.scheme.rfind("mxfp4", 0) == 0) {
      EXPECT_EQ(format_ranges(g.layers), "0-1, 3");
    }
  }
  EXPECT_EQ(schemes(p)["MTP attention wq_a"], S({"bf16"}));
}

// ---- bad artifacts -------------------------------------------------------------

std::string first_error(const Plan& p) { return p.errors.empty() ? "" : p.errors.front(); }

TEST(PlanBadInput, MissingTensor) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  spec.erase("layers.1.attn.indexer.wq_b.weight");
  spec.erase("layers.1.attn.indexer.wq_b.scale");
  spec.erase("layers.0.attn_norm.weight");
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_EQ(p.missing, (std::vector<std::string>{"layers.0.attn_norm.weight", "layers.1.attn.indexer.wq_b.weight"}));
}

TEST(PlanBadInput, ScaleShapeDoesNotFitWeight) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  auto* s = spec.find("layers.2.attn.wq_b.scale");
  s->shape = {3, 1};  // wq_b is [512, 128]: a 128x128 grid is [4, 1]
  s->bytes.resize(3);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_NE(first_error(p).find("layers.2.attn.wq_b.scale has shape [3, 1], which fits no block size for a [512, 128]"),
            std::string::npos)
      << all(p.errors);
}

TEST(PlanBadInput, BlockSizeOtherThanDeclaredIsReported) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  auto* s = spec.find("layers.0.attn.wq_a.scale");  // [128, 256] weight: 128x128 grid is [1, 2]
  s->shape = {2, 1};                                 // fits 64x256 blocks
  s->bytes.resize(2);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_TRUE(p.loadable()) << all(p.errors);
  EXPECT_NE(all(p.warnings).find("attention wq_a: quantization_config declares 128x128 FP8 blocks, the scale grids on "
                                 "disk imply 64x256; using what is on disk (1 module: layers.0.attn.wq_a)"),
            std::string::npos)
      << all(p.warnings);
}

TEST(PlanBadInput, TwoScaleNames) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  auto copy = *spec.find("layers.0.attn.wkv.scale");
  copy.name = "layers.0.attn.wkv.weight_scale_inv";
  copy.dtype = DType::F32;
  copy.bytes.assign(copy.bytes.size() * 4, std::byte{0});
  spec.tensors.push_back(copy);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_NE(first_error(p).find("layers.0.attn.wkv: carries 2 different scale tensors (layers.0.attn.wkv.scale, "
                                "layers.0.attn.wkv.weight_scale_inv)"),
            std::string::npos)
      << all(p.errors);
}

TEST(PlanBadInput, E8M0BytesStoredAsF32AreRefused) {
  // vllm#43416: exponent bytes (~120) copied into an F32 scale tensor.
  auto spec = test::make_spec(Layout::V3Fp8, test::tiny_config(), 1);
  auto* s = spec.find("model.layers.1.self_attn.q_b_proj.weight_scale_inv");
  ASSERT_NE(s, nullptr);
  for (size_t i = 0; i < s->bytes.size() / 4; ++i) {
    float v = static_cast<float>(118 + i % 6);
    std::memcpy(s->bytes.data() + 4 * i, &v, 4);
  }
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_NE(first_error(p).find("model.layers.1.self_attn.q_b_proj.weight_scale_inv (F32 in model.safetensors) holds "
                                "E8M0 exponent bytes"),
            std::string::npos)
      << all(p.errors);
}

TEST(PlanBadInput, U8ScalesAreConvertedWithAWarning) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  spec.find("layers.0.attn.wkv.scale")->dtype = DType::U8;
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_TRUE(p.loadable()) << all(p.errors);
  ASSERT_FALSE(p.warnings.empty());
  EXPECT_NE(all(p.warnings).find("layers.0.attn.wkv: scale layers.0.attn.wkv.scale is U8; read as E8M0"),
            std::string::npos);
}

TEST(PlanBadInput, PlainTensorShapeAndDtype) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  auto* sink = spec.find("layers.3.attn.attn_sink");
  sink->shape = {5};
  sink->bytes.resize(20);
  auto* tid = spec.find("layers.0.ffn.gate.tid2eid");
  tid->dtype = DType::F32;
  tid->shape = {256, 4};
  tid->bytes.resize(256 * 4 * 4);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  auto e = all(p.errors);
  EXPECT_NE(e.find("layers.3.attn.attn_sink (layers.3.attn.attn_sink): shape [5] but the config implies [4]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("layers.0.ffn.gate.tid2eid (layers.0.ffn.gate.tid2eid): dtype F32 but I64 or I32 expected"),
            std::string::npos)
      << e;
}

TEST(PlanBadInput, DuplicateSpellingsOfOneWeight) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  auto copy = *spec.find("layers.0.attn_norm.weight");
  copy.name = "model.layers.0.input_layernorm.weight";
  spec.tensors.push_back(copy);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_NE(all(p.errors).find("layers.0.attn_norm.weight: tensors layers.0.attn_norm.weight and "
                               "model.layers.0.input_layernorm.weight both give it"),
            std::string::npos)
      << all(p.errors);
}

TEST(PlanBadInput, UnknownAndSurplusTensorsAreUnusedNotFatal) {
  auto spec = test::make_spec(Layout::Native, test::tiny_config(), 1);
  auto copy = *spec.find("layers.0.attn_norm.weight");
  copy.name = "layers.0.some_new_thing.weight";
  spec.tensors.push_back(copy);
  copy.name = "layers.0.attn.indexer.weights_proj.weight";  // layer 0 is SWA: no indexer
  spec.tensors.push_back(copy);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_TRUE(p.loadable()) << all(p.errors);
  EXPECT_EQ(p.unused, (std::vector<std::string>{"layers.0.attn.indexer.weights_proj.weight",
                                                "layers.0.some_new_thing.weight"}));
}

TEST(PlanBadInput, FusedGateUpWithOddRows) {
  auto spec = test::make_spec(Layout::HfBf16, test::tiny_config(), 1);
  auto* t = spec.find("model.layers.1.mlp.experts.gate_up_proj");
  t->shape = {8, 255, 256};
  t->bytes.resize(8 * 255 * 256 * 2);
  TempDir dir;
  Plan p = plan_of(spec, dir);
  EXPECT_FALSE(p.loadable());
  EXPECT_NE(first_error(p).find("model.layers.1.mlp.experts.gate_up_proj has shape [8, 255, 256]: a fused gate_up "
                                "tensor needs an even row count"),
            std::string::npos)
      << all(p.errors);
}

}  // namespace
}  // namespace kiln
