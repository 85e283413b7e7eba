// Every rule of the name table, plus the spellings real producers write.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "kiln/artifact/names.h"

namespace kiln {
namespace {

std::string canon(std::string_view name, int64_t layers = 4) {
  auto c = canonicalize(name, NameContext{layers});
  if (!c) return "<none>";
  std::string s = c->path();
  if (c->linear) s += " [" + c->field + "]";
  if (c->stack == Stack::GateUp) s += " {gate_up}";
  if (c->stack == Stack::Down) s += " {down}";
  return s;
}

TEST(NamesTest, EveryRuleMapsToItsCanonicalForm) {
  for (const auto& r : name_rules()) {
    std::string alias(r.alias), want(r.canonical);
    auto e = alias.find("{E}");
    if (e != std::string::npos) alias.replace(e, 3, "17");
    e = want.find("{E}");
    if (e != std::string::npos) want.replace(e, 3, "17");
    const bool top = r.top;
    // Per-layer form, with and without the model. prefix.
    for (std::string prefix : {"layers.2.", "model.layers.2.", "mtp.0.", "model.mtp.0."}) {
      std::string name = prefix + alias + (r.linear ? ".weight" : "");
      auto c = canonicalize(name, NameContext{4});
      if (top && !c) continue;  // a top-level-only rule
      ASSERT_TRUE(c) << name;
      EXPECT_EQ(c->module, want) << name;
      EXPECT_EQ(c->linear, r.linear) << name;
      if (r.linear) {
        EXPECT_EQ(c->field, "weight") << name;
      }
    }
    if (top) {
      std::string name = alias + (r.linear ? ".weight" : "");
      auto c = canonicalize(name, NameContext{4});
      ASSERT_TRUE(c) << name;
      EXPECT_EQ(c->scope, Scope::Top) << name;
      EXPECT_EQ(c->module, want) << name;
    }
  }
}

// hf_name is generated from the table's hf aliases; canonicalize maps every result back,
// for every canonical name the table knows (all scopes, an expert index, MTP layers).
TEST(NamesTest, HfNamesRoundTrip) {
  std::map<std::string, bool> canonical;  // path -> linear (a linear's tensor adds ".weight")
  for (const auto& r : name_rules()) {
    std::string c(r.canonical);
    if (auto e = c.find("{E}"); e != std::string::npos) c.replace(e, 3, "17");
    if (r.top) {
      canonical[c] = r.linear;
    } else {
      canonical["layers.2." + c] = r.linear;
      canonical["mtp.0." + c] = r.linear;
    }
  }
  size_t renamed = 0;
  for (const auto& [c, linear] : canonical) {
    const std::string hf = hf_name(c, 4);
    auto back = canonicalize(hf + (linear ? ".weight" : ""), NameContext{4});
    ASSERT_TRUE(back) << c << " -> " << hf;
    EXPECT_EQ(back->path(), c) << c << " -> " << hf;
    if (hf.find(c.substr(c.rfind('.') + 1)) == std::string::npos) ++renamed;
  }
  // transformers' own spellings, not the native body under model.:
  EXPECT_EQ(hf_name("layers.3.attn.wq_a", 4), "model.layers.3.self_attn.q_a_proj");
  EXPECT_EQ(hf_name("mtp.0.ffn.experts.5.w3", 4), "model.layers.4.mlp.experts.5.up_proj");
  EXPECT_EQ(hf_name("layers.0.hc_attn_fn", 4), "model.layers.0.attn_hc.fn");
  EXPECT_EQ(hf_name("layers.1.ffn.gate.bias", 4), "model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_EQ(hf_name("embed.weight", 4), "model.embed_tokens.weight");
  EXPECT_EQ(hf_name("head", 4), "lm_head");
  EXPECT_EQ(hf_name("hc_head_fn", 4), "model.hc_head.hc_fn");
  EXPECT_EQ(hf_name("mtp.0.e_proj", 4), "model.layers.4.e_proj");  // MTP-only: native body
  EXPECT_GT(renamed, 20u);
}

TEST(NamesTest, NativeNames) {
  EXPECT_EQ(canon("layers.3.attn.wq_a.weight"), "layers.3.attn.wq_a [weight]");
  EXPECT_EQ(canon("layers.3.attn.wq_a.scale"), "layers.3.attn.wq_a [scale]");
  EXPECT_EQ(canon("layers.0.ffn.experts.255.w1.weight"), "layers.0.ffn.experts.255.w1 [weight]");
  EXPECT_EQ(canon("layers.0.ffn.experts.7.w2.scale"), "layers.0.ffn.experts.7.w2 [scale]");
  EXPECT_EQ(canon("layers.1.ffn.gate.bias"), "layers.1.ffn.gate.bias");
  EXPECT_EQ(canon("layers.1.ffn.gate.weight"), "layers.1.ffn.gate [weight]");
  EXPECT_EQ(canon("layers.0.ffn.gate.tid2eid"), "layers.0.ffn.gate.tid2eid");
  EXPECT_EQ(canon("layers.2.attn.indexer.compressor.ape"), "layers.2.attn.indexer.compressor.ape");
  EXPECT_EQ(canon("mtp.0.e_proj.scale"), "mtp.0.e_proj [scale]");
  EXPECT_EQ(canon("mtp.0.hc_head_fn"), "mtp.0.hc_head_fn");
  EXPECT_EQ(canon("embed.weight"), "embed.weight");
  EXPECT_EQ(canon("head.weight"), "head [weight]");
  EXPECT_EQ(canon("hc_head_scale"), "hc_head_scale");
  EXPECT_EQ(canon("norm.weight"), "norm.weight");
}

TEST(NamesTest, QuantFieldsOfEveryProducer) {
  for (const char* f : {"weight_scale_inv", "weight_scale", "weight_packed", "weight_scale_2", "weight_global_scale",
                        "input_scale", "input_global_scale", "weight_shape", "weight_zero_point", "weight_g_idx"}) {
    EXPECT_EQ(canon(std::string("model.layers.1.self_attn.q_b_proj.") + f),
              std::string("layers.1.attn.wq_b [") + f + "]");
  }
  EXPECT_EQ(canon("layers.1.attn.wq_b.bias"), "<none>");  // no linear in DeepSeek-V4 has a bias
}

TEST(NamesTest, TransformersModuleNames) {
  EXPECT_EQ(canon("model.layers.3.self_attn.q_a_proj.weight"), "layers.3.attn.wq_a [weight]");
  EXPECT_EQ(canon("model.layers.3.self_attn.compressor.indexer.scorer.weights_proj.weight"),
            "layers.3.attn.indexer.weights_proj [weight]");
  EXPECT_EQ(canon("model.layers.3.self_attn.compressor.indexer.kv_norm.weight"),
            "layers.3.attn.indexer.compressor.norm.weight");
  EXPECT_EQ(canon("model.layers.3.self_attn.compressor.kv_norm.weight"), "layers.3.attn.compressor.norm.weight");
  EXPECT_EQ(canon("model.layers.3.mlp.experts.gate_up_proj"), "layers.3.ffn.experts.w13 [weight] {gate_up}");
  EXPECT_EQ(canon("model.layers.3.mlp.experts.down_proj"), "layers.3.ffn.experts.w2 [weight] {down}");
  EXPECT_EQ(canon("model.layers.3.mlp.experts.gate_up_proj_scales_inv"),
            "layers.3.ffn.experts.w13 [weight_scale_inv] {gate_up}");
  EXPECT_EQ(canon("model.layers.3.mlp.experts.5.up_proj.weight"), "layers.3.ffn.experts.5.w3 [weight]");
  EXPECT_EQ(canon("model.layers.3.mlp.gate.e_score_correction_bias"), "layers.3.ffn.gate.bias");
  EXPECT_EQ(canon("model.layers.3.attn_hc.fn"), "layers.3.hc_attn_fn");
  EXPECT_EQ(canon("model.embed_tokens.weight"), "embed.weight");
  EXPECT_EQ(canon("lm_head.weight"), "head [weight]");
  EXPECT_EQ(canon("model.hc_head.hc_fn"), "hc_head_fn");
}

TEST(NamesTest, MtpAsTrailingLayers) {
  // vLLM / DeepSeek-V3 style: the MTP block numbered after the backbone.
  EXPECT_EQ(canon("model.layers.4.e_proj.weight", 4), "mtp.0.e_proj [weight]");
  EXPECT_EQ(canon("model.layers.5.self_attn.q_a_proj.weight", 4), "mtp.1.attn.wq_a [weight]");
  EXPECT_EQ(canon("model.layers.3.self_attn.q_a_proj.weight", 4), "layers.3.attn.wq_a [weight]");
}

TEST(NamesTest, RejectsMalformed) {
  for (const char* n : {"layers.x.attn.wq_a.weight", "layers.01.attn.wq_a.weight", "layers..attn.wq_a.weight",
                        "layers.3.attn.wq_a", "layers.3.attn.wq_a.weight.extra", "layers.3.ffn.experts.a.w1.weight",
                        "something.else", "", "layers.3.", "mtp.0"}) {
    EXPECT_EQ(canon(n), "<none>") << n;
  }
}

// transformers 5.17 wrote these names (tools/hf_reference_artifact.py): both what
// save_pretrained puts on disk and the in-memory module names.
TEST(NamesTest, EveryNameTransformersWritesIsMapped) {
  for (const char* file : {"hf_tiny_bf16/model.safetensors.names.json", "hf_tiny_bf16/module_names.json"}) {
    std::ifstream f(std::string(KILN_TEST_DATA_DIR) + "/" + file);
    ASSERT_TRUE(f) << file;
    auto j = nlohmann::json::parse(f);
    std::set<std::string> canon_names;
    for (const auto& [name, v] : j.items()) {
      auto c = canonicalize(name, NameContext{4});
      ASSERT_TRUE(c) << file << ": " << name;
      EXPECT_TRUE(canon_names.insert(c->path() + "/" + c->field).second) << "two names map to " << c->path();
    }
  }
}

}  // namespace
}  // namespace kiln
