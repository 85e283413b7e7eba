// Config tests, transformers' form of the config (DeepseekV4Config as transformers 5.17
// saves it): defaults, layer types, compress rates, hash layers, rotary dims, rope tables.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config_test_support.h"
#include "kiln/core/error.h"
#include "kiln/io/config.h"

namespace kiln {
namespace {

using namespace config_test;

// ---------------------------------------------------------------------------
// transformers' form

TEST(ConfigTest, TransformersDefaultFile) {
  const ModelConfig c = parse_model_config(hf_json(), "config.json");
  EXPECT_EQ(c.form, ConfigForm::Transformers);
  EXPECT_EQ(c.num_layers, 43);
  EXPECT_EQ(c.num_mtp_layers, 1);
  EXPECT_EQ(c.rope_head_dim, 64);  // 512 * 0.125
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  for (int i = 0; i < 43; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(c.attn_kind(i), hf_default_kind(i));
    EXPECT_EQ(c.compress_ratio(i), ratio_of(hf_default_kind(i)));
  }
  // The MTP layer is not built by transformers; DeepSeek's is sliding-window only.
  EXPECT_EQ(c.attn_kind(43), AttnKind::SWA);
  EXPECT_EQ(c.compress_ratio(43), 0);
  // mlp_layer_types: 3x hash_moe then moe.
  EXPECT_EQ(c.num_hash_layers, 3);
  for (int i = 0; i < 43; ++i) EXPECT_EQ(c.is_hash_layer(i), i < 3) << i;
  // rope_parameters: both "default" (transformers' default config has no YaRN).
  EXPECT_DOUBLE_EQ(c.rope_main.theta, 10000.0);
  EXPECT_FALSE(c.rope_main.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 160000.0);
  EXPECT_FALSE(c.rope_compress.yarn);
  EXPECT_TRUE(c.torch_dtype.empty());
  EXPECT_FALSE(c.expert_dtype.has_value());
  EXPECT_FALSE(c.quantization_config.has_value());
}

// Everything but the attention schedule and the YaRN flag agrees between the official
// Flash config and transformers' default (which is modelled on Flash).
TEST(ConfigTest, BothFormsOfFlashAgree) {
  const ModelConfig a = parse_model_config(flash_json(), "config.json");
  const ModelConfig b = parse_model_config(hf_json(), "config.json");
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_mtp_layers, b.num_mtp_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rope_head_dim, b.rope_head_dim);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.o_lora_rank, b.o_lora_rank);
  EXPECT_EQ(a.o_groups, b.o_groups);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.index_n_heads, b.index_n_heads);
  EXPECT_EQ(a.index_head_dim, b.index_head_dim);
  EXPECT_EQ(a.index_topk, b.index_topk);
  EXPECT_EQ(a.n_routed_experts, b.n_routed_experts);
  EXPECT_EQ(a.n_shared_experts, b.n_shared_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.scoring_func, b.scoring_func);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_DOUBLE_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_DOUBLE_EQ(a.swiglu_limit, b.swiglu_limit);
  EXPECT_EQ(a.hc_mult, b.hc_mult);
  EXPECT_EQ(a.hc_sinkhorn_iters, b.hc_sinkhorn_iters);
  EXPECT_DOUBLE_EQ(a.hc_eps, b.hc_eps);
  EXPECT_DOUBLE_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.hash_layers, b.hash_layers);
  EXPECT_EQ(a.num_hash_layers, b.num_hash_layers);
  EXPECT_DOUBLE_EQ(a.rope_main.theta, b.rope_main.theta);
  EXPECT_EQ(a.rope_main.yarn, b.rope_main.yarn);
  EXPECT_DOUBLE_EQ(a.rope_compress.theta, b.rope_compress.theta);
  EXPECT_EQ(a.compress_ratios.size(), b.compress_ratios.size());
  // Per kind, both forms use the same compression ratio.
  for (size_t i = 0; i < a.compress_ratios.size(); ++i) {
    for (const ModelConfig* c : {&a, &b}) {
      EXPECT_EQ(c->compress_ratios[i], ratio_of(c->attn_kinds[i])) << i;
    }
  }
  // Where the schedules coincide (and they do on most layers) the ratios are equal.
  int same = 0;
  for (int i = 0; i < 44; ++i) {
    if (a.attn_kind(i) == b.attn_kind(i)) {
      EXPECT_EQ(a.compress_ratio(i), b.compress_ratio(i));
      ++same;
    }
  }
  EXPECT_EQ(same, 1);  // only the MTP layer: transformers' default is shifted by one layer
}

// transformers' form carrying Flash's real schedule and YaRN parses to the same
// architecture as the official file.
TEST(ConfigTest, TransformersFormWithFlashScheduleEqualsOfficial) {
  json j = hf_json();
  j["layer_types"] = flash_layer_types();
  j["rope_parameters"]["compress"] = {{"rope_type", "yarn"},
                                      {"rope_theta", 160000.0},
                                      {"factor", 16.0},
                                      {"original_max_position_embeddings", 65536},
                                      {"beta_fast", 32.0},
                                      {"beta_slow", 1.0},
                                      {"attention_factor", 1.0},
                                      {"partial_rotary_factor", 0.125}};
  const ModelConfig b = parse_model_config(j, "config.json");
  const ModelConfig a = parse_model_config(flash_json(), "config.json");
  EXPECT_EQ(a.compress_ratios, b.compress_ratios);
  EXPECT_EQ(a.attn_kinds, b.attn_kinds);
  EXPECT_EQ(a.hash_layers, b.hash_layers);
  EXPECT_EQ(a.rope_head_dim, b.rope_head_dim);
  for (const auto& [x, y] : {std::pair{&a.rope_main, &b.rope_main}, std::pair{&a.rope_compress, &b.rope_compress}}) {
    EXPECT_DOUBLE_EQ(x->theta, y->theta);
    EXPECT_EQ(x->yarn, y->yarn);
    EXPECT_DOUBLE_EQ(x->factor, y->factor);
    EXPECT_EQ(x->original_max_position, y->original_max_position);
    EXPECT_DOUBLE_EQ(x->beta_fast, y->beta_fast);
    EXPECT_DOUBLE_EQ(x->beta_slow, y->beta_slow);
  }
}

TEST(ConfigTest, TransformersCompressRates) {
  json j = hf_json();
  j["compress_rates"] = {{"compressed_sparse_attention", 8}, {"heavily_compressed_attention", 64}};
  ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.compress_ratio(0), 64);
  EXPECT_EQ(c.attn_kind(0), AttnKind::HCA);
  EXPECT_EQ(c.compress_ratio(3), 8);
  EXPECT_EQ(c.attn_kind(3), AttnKind::CSA);  // by type name, not by ratio value

  // Absent: defaults 4 / 128. Legacy scalars override the dict.
  j = hf_json();
  j.erase("compress_rates");
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.compress_ratio(0), 128);
  EXPECT_EQ(c.compress_ratio(3), 4);
  j["compress_rate_csa"] = 2;
  j["compress_rate_hca"] = 32;
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.compress_ratio(0), 32);
  EXPECT_EQ(c.compress_ratio(3), 2);

  // Only one key in the dict: the other keeps its default.
  j = hf_json();
  j["compress_rates"] = {{"heavily_compressed_attention", 256}};
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.compress_ratio(0), 256);
  EXPECT_EQ(c.compress_ratio(3), 4);

  // Legacy compress_ratios is ignored when layer_types is present.
  j = hf_json();
  j["compress_ratios"] = json::array({1, 2, 3});
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.compress_ratio(0), 128);
}

TEST(ConfigTest, TransformersHashLayers) {
  json j = hf_json();
  j["mlp_layer_types"][0] = "moe";
  j["mlp_layer_types"][10] = "hash_moe";
  ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.num_hash_layers, 3);
  EXPECT_FALSE(c.is_hash_layer(0));
  EXPECT_TRUE(c.is_hash_layer(1));
  EXPECT_TRUE(c.is_hash_layer(2));
  EXPECT_TRUE(c.is_hash_layer(10));
  EXPECT_FALSE(c.is_hash_layer(3));

  // Without mlp_layer_types: legacy num_hash_layers, else 3.
  j = hf_json();
  j.erase("mlp_layer_types");
  j["num_hash_layers"] = 1;
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.num_hash_layers, 1);
  EXPECT_TRUE(c.is_hash_layer(0));
  EXPECT_FALSE(c.is_hash_layer(1));
  j.erase("num_hash_layers");
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.num_hash_layers, 3);
  EXPECT_TRUE(c.is_hash_layer(2));
  EXPECT_FALSE(c.is_hash_layer(3));
}

// Whether some warning of `c` contains every needle.
bool has_warning(const ModelConfig& c, const std::vector<std::string>& needles) {
  for (const auto& w : c.warnings) {
    bool all = true;
    for (const auto& n : needles) all = all && w.find(n) != std::string::npos;
    if (all) return true;
  }
  return false;
}

TEST(ConfigTest, TransformersRotaryDim) {
  // transformers 5.17 sizes each rope table by its own rope_parameters.<table>.partial_rotary_factor
  // (default 1.0) when rope_parameters is nested; the top-level partial_rotary_factor and
  // qk_rope_head_dim are then written but never read.
  json j = hf_json();
  j.erase("qk_rope_head_dim");
  ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.rope_head_dim, 64);
  EXPECT_TRUE(c.warnings.empty());

  j = hf_json();
  j.erase("partial_rotary_factor");
  j["qk_rope_head_dim"] = 32;
  j["rope_parameters"]["main"]["partial_rotary_factor"] = 0.0625;
  j["rope_parameters"]["compress"]["partial_rotary_factor"] = 0.0625;
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.rope_head_dim, 32);
  EXPECT_TRUE(c.warnings.empty());

  // The case transformers itself writes: tables at 0.25, stale top-level defaults
  // (partial_rotary_factor 0.125 and qk_rope_head_dim = head_dim * 0.125).
  j = hf_json();
  j["partial_rotary_factor"] = 0.125;
  j["qk_rope_head_dim"] = 64;
  j["rope_parameters"]["main"]["partial_rotary_factor"] = 0.25;
  j["rope_parameters"]["compress"]["partial_rotary_factor"] = 0.25;
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.rope_head_dim, 128);
  ASSERT_EQ(c.warnings.size(), 2u);
  EXPECT_TRUE(has_warning(c, {"'partial_rotary_factor' (0.125, a rotary dim of 64) is stale", "(0.25)", "128"}));
  EXPECT_TRUE(has_warning(c, {"'qk_rope_head_dim' (64) is stale", "(0.25)", "128"}));

  // Without rope_parameters' tables the top-level factor rules, over a stale qk_rope_head_dim.
  j = hf_json();
  j.erase("rope_parameters");
  j["partial_rotary_factor"] = 0.25;
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.rope_head_dim, 128);
  EXPECT_TRUE(has_warning(c, {"'qk_rope_head_dim' (64) is stale", "partial_rotary_factor (0.25)"}));

  j = hf_json();
  j.erase("partial_rotary_factor");
  j.erase("qk_rope_head_dim");
  EXPECT_EQ(parse_model_config(j, "config.json").rope_head_dim, 64);  // the tables' 0.125

  j = hf_json();
  j.erase("rope_parameters");
  j.erase("partial_rotary_factor");
  j.erase("qk_rope_head_dim");
  EXPECT_EQ(parse_model_config(j, "config.json").rope_head_dim, 64);  // 64/512 of head_dim

  // A nested table without partial_rotary_factor rotates the full head (transformers'
  // default 1.0); tables of different widths cannot be one DeepSeek-V4 rotary dim.
  j = hf_json();
  j["rope_parameters"]["compress"].erase("partial_rotary_factor");
  expect_invalid(j, {"'rope_parameters.main.partial_rotary_factor' (0.125)",
                     "'rope_parameters.compress.partial_rotary_factor' (1)", "64 and 512"});
  j["rope_parameters"]["main"].erase("partial_rotary_factor");
  EXPECT_EQ(parse_model_config(j, "config.json").rope_head_dim, 512);

  j = hf_json();
  j["rope_parameters"]["main"]["partial_rotary_factor"] = 0.126;  // int(512 * 0.126) = 64
  EXPECT_EQ(parse_model_config(j, "config.json").rope_head_dim, 64);
  j["rope_parameters"]["main"]["partial_rotary_factor"] = 0.1;
  j["rope_parameters"]["compress"]["partial_rotary_factor"] = 0.1;  // 51: odd
  expect_invalid(j, {"'rope_parameters.{main,compress}.partial_rotary_factor' (0.1)", "51", "even"});

  j = hf_json();
  j["partial_rotary_factor"] = 1.5;
  expect_invalid(j, {"'partial_rotary_factor'", "(0, 1]"});
}

TEST(ConfigTest, TransformersRopeParameters) {
  // Flat rope_parameters: YaRN applies to the compress rope (base compress_rope_theta).
  json j = hf_json();
  j["rope_parameters"] = {{"rope_type", "yarn"},
                          {"rope_theta", 1234.0},
                          {"factor", 16},
                          {"original_max_position_embeddings", 65536},
                          {"beta_fast", 32},
                          {"beta_slow", 1}};
  ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_FALSE(c.rope_main.yarn);
  EXPECT_DOUBLE_EQ(c.rope_main.theta, 10000.0);
  EXPECT_TRUE(c.rope_compress.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 160000.0);
  EXPECT_DOUBLE_EQ(c.rope_compress.factor, 16.0);
  EXPECT_EQ(c.rope_compress.original_max_position, 65536);

  // Legacy rope_scaling in transformers' form behaves the same.
  j = hf_json();
  j.erase("rope_parameters");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 8}, {"original_max_position_embeddings", 4096}};
  c = parse_model_config(j, "config.json");
  EXPECT_TRUE(c.rope_compress.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.factor, 8.0);
  EXPECT_EQ(c.rope_compress.original_max_position, 4096);
  EXPECT_FALSE(c.rope_main.yarn);

  // Nested: each sub-dict's own rope_theta is used.
  j = hf_json();
  j["rope_parameters"]["main"]["rope_theta"] = 5000.0;
  j["rope_parameters"]["compress"]["rope_theta"] = 40000;
  c = parse_model_config(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope_main.theta, 5000.0);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 40000.0);

  // Neither: plain RoPE at rope_theta / compress_rope_theta.
  j = hf_json();
  j.erase("rope_parameters");
  c = parse_model_config(j, "config.json");
  EXPECT_FALSE(c.rope_compress.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 160000.0);

  // Unsupported types and YaRN without its fields.
  j = hf_json();
  j["rope_parameters"]["compress"]["rope_type"] = "llama3";
  expect_invalid(j, {"'rope_parameters.compress.rope_type'", "llama3"});
  j = hf_json();
  j["rope_parameters"]["compress"]["rope_type"] = "yarn";
  expect_invalid(j, {"'rope_parameters.compress.factor'"});
  j["rope_parameters"]["compress"]["factor"] = 16;
  expect_invalid(j, {"'rope_parameters.compress.original_max_position_embeddings'"});
  j["rope_parameters"]["compress"]["original_max_position_embeddings"] = 65536;
  EXPECT_TRUE(parse_model_config(j, "config.json").rope_compress.yarn);
  j["rope_parameters"]["compress"]["truncate"] = false;
  expect_invalid(j, {"'rope_parameters.compress.truncate'"});
  j = hf_json();
  j["rope_parameters"] = "yarn";
  expect_invalid(j, {"'rope_parameters'", "JSON object"});
}

TEST(ConfigTest, TransformersLayerTypeErrors) {
  json j = hf_json();
  j["layer_types"].erase(42);
  expect_invalid(j, {"'layer_types'", "42 entries", "43"});

  j = hf_json();
  j["layer_types"][5] = "full_attention";
  expect_invalid(j, {"'layer_types[5]'", "full_attention"});

  j = hf_json();
  j["layer_types"][5] = 4;
  expect_invalid(j, {"'layer_types[5]'"});

  j = hf_json();
  j["layer_types"] = "sliding_attention";
  expect_invalid(j, {"'layer_types'", "array"});

  j = hf_json();
  j["mlp_layer_types"].push_back("moe");
  expect_invalid(j, {"'mlp_layer_types'", "44 entries"});

  j = hf_json();
  j["mlp_layer_types"][7] = "dense";
  expect_invalid(j, {"'mlp_layer_types[7]'", "dense"});

  j = hf_json();
  j["compress_rates"]["compressed_sparse_attention"] = 0;
  expect_invalid(j, {"'compress_rates.compressed_sparse_attention'", "positive integer"});

  j = hf_json();
  j["compress_rates"] = json::array({4, 128});
  expect_invalid(j, {"'compress_rates'"});
}

}  // namespace
}  // namespace kiln
