// config.json of DSpark checkpoints (V4-Flash-DSpark, V4-Flash-0731, V4-Pro-0813): the
// dspark_* keys declare a DSpark drafter, not classic MTP blocks; the stage count comes from
// compress_ratios, never num_nextn_predict_layers; every bad value names its key.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/io/config.h"

namespace kiln {
namespace {

using nlohmann::json;

json load(const std::string& name) {
  std::ifstream in(std::string(KILN_TEST_DATA_DIR) + "/configs/" + name);
  EXPECT_TRUE(in.good()) << name;
  return json::parse(in);
}

json flash_0731() { return load("deepseek_v4_flash_0731.json"); }

std::string invalid_message(const json& j) {
  try {
    parse_model_config(j, "config.json");
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(ErrorKind::Invalid)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error for " << j.dump().substr(0, 200);
  return {};
}

void expect_invalid(const json& j, const std::vector<std::string>& needles) {
  const std::string m = invalid_message(j);
  for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "no '" << n << "' in: " << m;
}

TEST(DSparkConfig, Flash0731DeclaresAThreeStageDrafterAndNoMtpBlock) {
  const ModelConfig c = parse_model_config(flash_0731(), "config.json");
  ASSERT_TRUE(c.dspark.has_value());
  EXPECT_EQ(c.drafter(), DrafterKind::DSpark);
  EXPECT_EQ(drafter_kind_name(c.drafter()), "dspark");
  const DSparkConfig& d = *c.dspark;
  EXPECT_EQ(d.stages, 3);  // 46 compress_ratios entries - 43 layers; num_nextn_predict_layers is 1
  EXPECT_EQ(d.block_size, 5);
  EXPECT_EQ(d.noise_token_id, 128799);
  EXPECT_EQ(d.target_layer_ids, (std::vector<int64_t>{40, 41, 42}));
  EXPECT_EQ(d.markov_rank, 256);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.num_mtp_layers, 0);
  EXPECT_EQ(c.num_draft_layers(), 3);
  ASSERT_EQ(c.compress_ratios.size(), 46u);
  ASSERT_EQ(c.attn_kinds.size(), 46u);
  for (int64_t s = 0; s < 3; ++s) {
    EXPECT_EQ(c.dspark_layer(s), 43 + s);
    EXPECT_EQ(c.compress_ratio(c.dspark_layer(s)), 0);
    EXPECT_EQ(c.attn_kind(c.dspark_layer(s)), AttnKind::SWA);
    EXPECT_FALSE(c.is_hash_layer(c.dspark_layer(s)));
  }
  // The backbone is V4-Flash's, unchanged.
  EXPECT_EQ(c.attn_kind(42), AttnKind::CSA);
  EXPECT_EQ(c.attn_kind(41), AttnKind::HCA);
  EXPECT_TRUE(c.is_hash_layer(2));
}

TEST(DSparkConfig, ClassicConfigsHaveNoDSpark) {
  const ModelConfig c = parse_model_config(load("deepseek_v4_flash.json"), "config.json");
  EXPECT_FALSE(c.dspark.has_value());
  EXPECT_EQ(c.drafter(), DrafterKind::Mtp);
  EXPECT_EQ(c.num_mtp_layers, 1);
  EXPECT_EQ(c.num_draft_layers(), 1);
  json j = load("deepseek_v4_flash.json");
  j["num_nextn_predict_layers"] = 0;
  EXPECT_EQ(parse_model_config(j, "config.json").drafter(), DrafterKind::None);
}

TEST(DSparkConfig, StageCountIsNotNumNextnPredictLayers) {
  json j = flash_0731();
  j["num_nextn_predict_layers"] = 7;
  EXPECT_EQ(parse_model_config(j, "config.json").dspark->stages, 3);
  j["num_nextn_predict_layers"] = 0;
  EXPECT_EQ(parse_model_config(j, "config.json").dspark->stages, 3);
  // Fewer entries past the backbone: fewer stages (the tensors then decide what is missing).
  j["compress_ratios"].erase(j["compress_ratios"].size() - 1);
  EXPECT_EQ(parse_model_config(j, "config.json").dspark->stages, 2);
}

TEST(DSparkConfig, StageCountWithoutTrailingRatios) {
  json j = flash_0731();
  std::vector<int64_t> r = j["compress_ratios"];
  r.resize(43);
  j["compress_ratios"] = r;
  // DeepSeek's n_mtp_layers when given, else one stage per target layer.
  j["n_mtp_layers"] = 2;
  EXPECT_EQ(parse_model_config(j, "config.json").dspark->stages, 2);
  j.erase("n_mtp_layers");
  const ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.dspark->stages, 3);
  ASSERT_EQ(c.compress_ratios.size(), 46u);
  EXPECT_EQ(c.attn_kind(45), AttnKind::SWA);
}

TEST(DSparkConfig, NMtpLayersMustAgreeWithCompressRatios) {
  json j = flash_0731();
  j["n_mtp_layers"] = 3;
  EXPECT_EQ(parse_model_config(j, "config.json").dspark->stages, 3);
  j["n_mtp_layers"] = 4;
  expect_invalid(j, {"'n_mtp_layers' (4)", "compress_ratios", "3 entries past num_hidden_layers (43)"});
}

TEST(DSparkConfig, TransformersFormWithDSparkKeys) {
  json j = load("transformers_default_v4_flash.json");
  const int64_t L = j["num_hidden_layers"];
  j["dspark_block_size"] = 5;
  j["dspark_noise_token_id"] = 7;
  j["dspark_target_layer_ids"] = {L - 3, L - 2, L - 1};
  j["dspark_markov_rank"] = 256;
  const ModelConfig c = parse_model_config(j, "config.json");
  ASSERT_TRUE(c.dspark);
  EXPECT_EQ(c.dspark->stages, 3);
  EXPECT_EQ(c.num_mtp_layers, 0);
  EXPECT_EQ(static_cast<int64_t>(c.attn_kinds.size()), L + 3);
  EXPECT_EQ(c.attn_kind(L + 2), AttnKind::SWA);
}

TEST(DSparkConfig, AllFourKeysOrNone) {
  for (const char* k : {"dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids", "dspark_markov_rank"}) {
    json j = flash_0731();
    j.erase(k);
    expect_invalid(j, {std::string("'") + k + "' is missing", "together"});
  }
}

TEST(DSparkConfig, BadValuesNameTheKey) {
  struct Case {
    const char* key;
    json value;
    std::vector<std::string> expect;
  } cases[] = {
      {"dspark_block_size", 0, {"'dspark_block_size'", "positive integer", "got 0"}},
      {"dspark_block_size", 5.0, {"'dspark_block_size'", "positive integer", "got 5.0"}},
      {"dspark_block_size", "5", {"'dspark_block_size'", "positive integer"}},
      {"dspark_markov_rank", -1, {"'dspark_markov_rank'", "positive integer", "got -1"}},
      {"dspark_noise_token_id", -3, {"'dspark_noise_token_id'", "non-negative integer"}},
      {"dspark_noise_token_id", 129280, {"'dspark_noise_token_id' (129280)", "below vocab_size (129280)"}},
      {"dspark_target_layer_ids", json::array(), {"'dspark_target_layer_ids'", "non-empty list"}},
      {"dspark_target_layer_ids", 40, {"'dspark_target_layer_ids'", "JSON array"}},
      {"dspark_target_layer_ids", {40, 41, 43}, {"'dspark_target_layer_ids[2]' is 43", "0..42", "num_hidden_layers 43"}},
      {"dspark_target_layer_ids", {40, -1}, {"'dspark_target_layer_ids[1]'", "got -1"}},
      {"dspark_target_layer_ids", {40, 40, 42}, {"'dspark_target_layer_ids[1]' is 40 after 40", "strictly increasing"}},
      {"dspark_target_layer_ids", {40, "41"}, {"'dspark_target_layer_ids[1]'", "backbone layer index"}},
  };
  for (const auto& c : cases) {
    json j = flash_0731();
    j[c.key] = c.value;
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    expect_invalid(j, c.expect);
  }
}

TEST(DSparkConfig, StagesAreSlidingWindowOnly) {
  json j = flash_0731();
  j["compress_ratios"][44] = 4;
  expect_invalid(j, {"'compress_ratios[44]' is 4", "DSpark drafter stage 1", "sliding-window only"});
  j["compress_ratios"][44] = -1;
  expect_invalid(j, {"'compress_ratios[44]'", "non-negative integer"});
}

}  // namespace
}  // namespace kiln
