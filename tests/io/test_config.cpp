// config.json parsing: the official DeepSeek form (V4-Flash, V4-Pro), transformers' form
// (a real file written by transformers 5.17's DeepseekV4Config), and every validation error.
#include "kiln/io/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "config_test_support.h"

namespace kiln {
namespace {

using namespace config_test;


// ---------------------------------------------------------------------------
// Official DeepSeek form

TEST(ConfigTest, FlashOfficialForm) {
  const ModelConfig c = parse_model_config(flash_json(), "config.json");
  EXPECT_EQ(c.form, ConfigForm::DeepSeek);
  EXPECT_EQ(c.model_type, "deepseek_v4");
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_layers, 43);
  EXPECT_EQ(c.num_mtp_layers, 1);
  EXPECT_EQ(c.num_heads, 64);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.rope_head_dim, 64);
  EXPECT_EQ(c.q_lora_rank, 1024);
  EXPECT_EQ(c.o_lora_rank, 1024);
  EXPECT_EQ(c.o_groups, 8);
  EXPECT_EQ(c.sliding_window, 128);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.index_topk, 512);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.scoring_func, ScoringFunc::SqrtSoftplus);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.5);
  EXPECT_DOUBLE_EQ(c.swiglu_limit, 10.0);
  EXPECT_EQ(c.hc_mult, 4);
  EXPECT_EQ(c.hc_sinkhorn_iters, 20);
  EXPECT_DOUBLE_EQ(c.hc_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 1048576);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  ASSERT_TRUE(c.expert_dtype.has_value());
  EXPECT_EQ(*c.expert_dtype, "fp4");
  ASSERT_TRUE(c.quantization_config.has_value());
  EXPECT_EQ(*c.quantization_config, flash_json()["quantization_config"]);
  EXPECT_EQ((*c.quantization_config)["scale_fmt"], "ue8m0");
  EXPECT_FALSE(c.hf_quant_config.has_value());

  // Attention schedule, layer by layer, plus the MTP layer (ratio 0).
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  ASSERT_EQ(c.attn_kinds.size(), 44u);
  int swa = 0, csa = 0, hca = 0;
  for (int i = 0; i < 43; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(c.attn_kind(i), flash_kind(i));
    EXPECT_EQ(c.compress_ratio(i), ratio_of(flash_kind(i)));
    swa += c.attn_kind(i) == AttnKind::SWA;
    csa += c.attn_kind(i) == AttnKind::CSA;
    hca += c.attn_kind(i) == AttnKind::HCA;
  }
  EXPECT_EQ(swa, 2);
  EXPECT_EQ(csa, 21);
  EXPECT_EQ(hca, 20);
  EXPECT_EQ(c.compress_ratio(43), 0);
  EXPECT_EQ(c.attn_kind(43), AttnKind::SWA);

  // Hash routing: the first num_hash_layers = 3 layers, never the MTP layer.
  EXPECT_EQ(c.num_hash_layers, 3);
  ASSERT_EQ(c.hash_layers.size(), 43u);
  for (int i = 0; i < 43; ++i) EXPECT_EQ(c.is_hash_layer(i), i < 3) << i;
  EXPECT_FALSE(c.is_hash_layer(43));

  // RoPE: plain 10000 for SWA layers; 160000 with YaRN for compressed layers.
  EXPECT_DOUBLE_EQ(c.rope_main.theta, 10000.0);
  EXPECT_FALSE(c.rope_main.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 160000.0);
  EXPECT_TRUE(c.rope_compress.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.factor, 16.0);
  EXPECT_EQ(c.rope_compress.original_max_position, 65536);
  EXPECT_DOUBLE_EQ(c.rope_compress.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_compress.beta_slow, 1.0);
}

TEST(ConfigTest, ProOfficialForm) {
  const ModelConfig c = parse_model_config(pro_json(), "config.json");
  EXPECT_EQ(c.form, ConfigForm::DeepSeek);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_layers, 61);
  EXPECT_EQ(c.num_heads, 128);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.o_groups, 16);
  EXPECT_EQ(c.index_topk, 1024);
  EXPECT_EQ(c.n_routed_experts, 384);
  EXPECT_EQ(c.moe_intermediate_size, 3072);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_FALSE(c.expert_dtype.has_value());
  ASSERT_EQ(c.compress_ratios.size(), 62u);
  int csa = 0, hca = 0;
  for (int i = 0; i < 61; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(c.attn_kind(i), pro_kind(i));
    EXPECT_EQ(c.compress_ratio(i), ratio_of(pro_kind(i)));
    csa += c.attn_kind(i) == AttnKind::CSA;
    hca += c.attn_kind(i) == AttnKind::HCA;
  }
  EXPECT_EQ(csa, 30);
  EXPECT_EQ(hca, 31);
  EXPECT_EQ(c.attn_kind(61), AttnKind::SWA);
  EXPECT_EQ(c.compress_ratio(61), 0);
  for (int i = 0; i < 61; ++i) EXPECT_EQ(c.is_hash_layer(i), i < 3) << i;
}

TEST(ConfigTest, CompressRatiosLongerOrShorterThanMtp) {
  // 0731-style: 46 entries (3 DSpark stages) -> only [0, n + n_mtp) are read.
  json j = flash_json();
  j["compress_ratios"].push_back(128);
  j["compress_ratios"].push_back(4);
  ModelConfig c = parse_model_config(j, "config.json");
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  EXPECT_EQ(c.compress_ratio(43), 0);

  // The MTP entry itself is honoured when given.
  j = flash_json();
  j["compress_ratios"][43] = 128;
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.compress_ratio(43), 128);
  EXPECT_EQ(c.attn_kind(43), AttnKind::HCA);

  // Exactly num_hidden_layers entries: MTP defaults to 0.
  j = flash_json();
  j["compress_ratios"].erase(43);
  c = parse_model_config(j, "config.json");
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  EXPECT_EQ(c.compress_ratio(43), 0);
  EXPECT_EQ(c.attn_kind(43), AttnKind::SWA);

  // Two MTP layers with one MTP entry: the second defaults to 0.
  j = flash_json();
  j["num_nextn_predict_layers"] = 2;
  j["compress_ratios"][43] = 4;
  c = parse_model_config(j, "config.json");
  ASSERT_EQ(c.compress_ratios.size(), 45u);
  EXPECT_EQ(c.attn_kind(43), AttnKind::CSA);
  EXPECT_EQ(c.attn_kind(44), AttnKind::SWA);
  EXPECT_FALSE(c.is_hash_layer(44));

  // No MTP layers.
  j = flash_json();
  j.erase("num_nextn_predict_layers");
  c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.num_mtp_layers, 0);
  EXPECT_EQ(c.compress_ratios.size(), 43u);
}

TEST(ConfigTest, DeepSeekRatioKinds) {
  // DeepSeek form: 4 is CSA, any other nonzero ratio is HCA.
  json j = flash_json();
  j["compress_ratios"][2] = 8;
  j["compress_ratios"][3] = 64;
  const ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.attn_kind(2), AttnKind::HCA);
  EXPECT_EQ(c.compress_ratio(2), 8);
  EXPECT_EQ(c.attn_kind(3), AttnKind::HCA);
  EXPECT_EQ(c.compress_ratio(3), 64);
}

TEST(ConfigTest, DeepSeekOptionalFields) {
  json j = flash_json();
  j["eos_token_id"] = json::array({7, 1});
  j.erase("torch_dtype");
  j["dtype"] = "bfloat16";
  j.erase("model_type");
  j.erase("rope_scaling");
  j.erase("num_hash_layers");
  j.erase("quantization_config");
  j.erase("expert_dtype");
  j["bos_token_id"] = nullptr;
  const ModelConfig c = parse_model_config(j, "config.json");
  EXPECT_EQ(c.eos_token_id, 7);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.model_type, "deepseek_v4");
  EXPECT_FALSE(c.rope_compress.yarn);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 160000.0);
  EXPECT_EQ(c.num_hash_layers, 0);
  for (int i = 0; i < 43; ++i) EXPECT_FALSE(c.is_hash_layer(i));
  EXPECT_FALSE(c.quantization_config.has_value());
  EXPECT_FALSE(c.expert_dtype.has_value());

  // rope_scaling spelled with rope_type and without betas: the YaRN defaults 32 / 1.
  j = flash_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 4096}};
  const ModelConfig d = parse_model_config(j, "config.json");
  EXPECT_TRUE(d.rope_compress.yarn);
  EXPECT_DOUBLE_EQ(d.rope_compress.factor, 4.0);
  EXPECT_EQ(d.rope_compress.original_max_position, 4096);
  EXPECT_DOUBLE_EQ(d.rope_compress.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(d.rope_compress.beta_slow, 1.0);
  EXPECT_FALSE(d.rope_main.yarn);
}

// ---------------------------------------------------------------------------
// Validation (both forms)

const char* const kRequiredBoth[] = {
    "vocab_size",      "hidden_size",      "num_hidden_layers", "num_attention_heads",   "head_dim",
    "q_lora_rank",     "o_lora_rank",      "o_groups",          "sliding_window",        "index_n_heads",
    "index_head_dim",  "index_topk",       "n_routed_experts",  "num_experts_per_tok",   "n_shared_experts",
    "moe_intermediate_size", "hc_mult",
};

TEST(ConfigTest, MissingRequiredFields) {
  for (const json& base : {flash_json(), hf_json()}) {
    for (const char* key : kRequiredBoth) {
      SCOPED_TRACE(key);
      json j = base;
      j.erase(key);
      expect_invalid(j, {"missing required field", std::string("'") + key + "'"});
    }
  }
  for (const char* key : {"qk_rope_head_dim", "compress_ratios"}) {
    SCOPED_TRACE(key);
    json j = flash_json();
    j.erase(key);
    expect_invalid(j, {"missing required field", std::string("'") + key + "'"});
  }
  // JSON null counts as missing.
  json j = flash_json();
  j["hidden_size"] = nullptr;
  expect_invalid(j, {"missing required field 'hidden_size'"});
}

TEST(ConfigTest, IntegerFieldsMustBeIntegers) {
  json j = flash_json();
  j["hidden_size"] = "abc";
  EXPECT_EQ(expect_invalid_message(j), "config.json: field 'hidden_size' must be a positive integer, got \"abc\"");
  for (const json& bad : {json(4096.0), json("4096"), json(true), json(-1), json(0), json::array({4096}),
                          json(json::object()), json(18446744073709551615ull)}) {
    SCOPED_TRACE(bad.dump());
    for (const char* key : kRequiredBoth) {
      if (std::string(key) == "n_shared_experts" && bad == json(0)) continue;  // 0 is allowed there
      json k = flash_json();
      k[key] = bad;
      expect_invalid(k, {std::string("field '") + key + "'", "integer", "got " + bad.dump()});
    }
  }
  j = flash_json();
  j["n_shared_experts"] = -1;
  expect_invalid(j, {"'n_shared_experts'", "non-negative integer"});
  j = flash_json();
  j["n_shared_experts"] = 0;
  EXPECT_EQ(parse_model_config(j, "config.json").n_shared_experts, 0);
  j = flash_json();
  j["num_nextn_predict_layers"] = 1.0;
  expect_invalid(j, {"'num_nextn_predict_layers'", "non-negative integer", "got 1.0"});
  j = flash_json();
  j["hc_sinkhorn_iters"] = 0;
  expect_invalid(j, {"'hc_sinkhorn_iters'", "positive integer"});
  j = flash_json();
  j["max_position_embeddings"] = "1M";
  expect_invalid(j, {"'max_position_embeddings'"});
}

TEST(ConfigTest, OtherFieldTypes) {
  struct Case {
    const char* key;
    json value;
    const char* expected;
  };
  const Case cases[] = {
      {"rope_theta", "10000", "positive number"},
      {"rope_theta", 0, "positive number"},
      {"compress_rope_theta", -1.0, "positive number"},
      {"hc_eps", 0.0, "positive number"},
      {"rms_norm_eps", true, "positive number"},
      {"routed_scaling_factor", "1.5", "positive number"},
      {"swiglu_limit", -10.0, "non-negative number"},
      {"norm_topk_prob", "true", "boolean"},
      {"norm_topk_prob", 1, "boolean"},
      {"tie_word_embeddings", 0, "boolean"},
      {"scoring_func", 3, "string"},
      {"torch_dtype", 16, "string"},
      {"expert_dtype", 4, "string"},
      {"model_type", json::array({"deepseek_v4"}), "string"},
      {"quantization_config", "fp8", "JSON object"},
      {"rope_scaling", json::array({16}), "JSON object"},
      {"compress_ratios", "0,0,4", "JSON array"},
      {"eos_token_id", "1", "integer"},
      {"eos_token_id", json::array(), "non-empty list"},
      {"eos_token_id", json::array({"1"}), "integer"},
      {"bos_token_id", -1, "integer"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    json j = flash_json();
    j[c.key] = c.value;
    expect_invalid(j, {std::string("field '") + c.key + "'", c.expected});
  }
}

TEST(ConfigTest, ConsistencyErrors) {
  json j = flash_json();
  j["o_groups"] = 7;
  expect_invalid(j, {"'o_groups'", "divide", "64"});

  j = flash_json();
  j["qk_rope_head_dim"] = 513;
  expect_invalid(j, {"'qk_rope_head_dim'", "at most head_dim"});
  j["qk_rope_head_dim"] = 63;
  expect_invalid(j, {"'qk_rope_head_dim'", "even"});
  j["qk_rope_head_dim"] = 512;
  EXPECT_EQ(parse_model_config(j, "config.json").rope_head_dim, 512);

  j = flash_json();
  j["num_experts_per_tok"] = 257;
  expect_invalid(j, {"'num_experts_per_tok'", "257", "256"});
  j["num_experts_per_tok"] = 256;
  EXPECT_EQ(parse_model_config(j, "config.json").num_experts_per_tok, 256);

  j = flash_json();
  j["num_key_value_heads"] = 2;
  expect_invalid(j, {"'num_key_value_heads'"});

  j = flash_json();
  j["scoring_func"] = "relu";
  expect_invalid(j, {"'scoring_func'", "relu"});
  for (ScoringFunc f : {ScoringFunc::SqrtSoftplus, ScoringFunc::Softmax, ScoringFunc::Sigmoid}) {
    j["scoring_func"] = std::string(scoring_func_name(f));
    EXPECT_EQ(parse_model_config(j, "config.json").scoring_func, f);
  }

  j = flash_json();
  j["model_type"] = "deepseek_v3";
  expect_invalid(j, {"'model_type'", "deepseek_v3"});
  j = hf_json();
  j["model_type"] = "deepseek_v41";
  expect_invalid(j, {"'model_type'", "deepseek_v41"});
}

TEST(ConfigTest, DeepSeekFormErrors) {
  json j = flash_json();
  j["compress_ratios"] = json::array({0, 0, 4});
  expect_invalid(j, {"'compress_ratios'", "3 entries", "43"});

  j = flash_json();
  j["compress_ratios"][5] = -4;
  expect_invalid(j, {"'compress_ratios[5]'", "non-negative integer"});
  j["compress_ratios"][5] = 4.0;
  expect_invalid(j, {"'compress_ratios[5]'", "got 4.0"});
  j["compress_ratios"][5] = "4";
  expect_invalid(j, {"'compress_ratios[5]'"});

  j = flash_json();
  j["num_hash_layers"] = 44;
  expect_invalid(j, {"'num_hash_layers'", "44", "43"});
  j["num_hash_layers"] = -1;
  expect_invalid(j, {"'num_hash_layers'"});

  j = flash_json();
  j["rope_scaling"]["type"] = "linear";
  expect_invalid(j, {"'rope_scaling.type'", "linear"});
  j = flash_json();
  j["rope_scaling"].erase("factor");
  expect_invalid(j, {"missing required field 'rope_scaling.factor'"});
  j = flash_json();
  j["rope_scaling"]["original_max_position_embeddings"] = 65536.0;
  expect_invalid(j, {"'rope_scaling.original_max_position_embeddings'", "positive integer"});
  j = flash_json();
  j["rope_scaling"]["factor"] = 0;
  expect_invalid(j, {"'rope_scaling.factor'", "positive number"});
  j = flash_json();
  j["rope_scaling"]["beta_fast"] = 1;
  j["rope_scaling"]["beta_slow"] = 32;
  expect_invalid(j, {"'rope_scaling.beta_fast'"});
}

TEST(ConfigTest, TopLevelMustBeObject) {
  expect_invalid(json::array({1, 2}), {"JSON object"});
  expect_invalid(json("config"), {"JSON object"});
  expect_invalid(json::object(), {"missing required field"});
}

TEST(ConfigTest, ErrorsNameTheLabel) {
  json j = flash_json();
  j["hidden_size"] = -5;
  expect_error([&] { parse_model_config(j, "/models/flash/config.json"); }, ErrorKind::Invalid,
               {"/models/flash/config.json: field 'hidden_size' must be a positive integer, got -5"});
}

TEST(ConfigTest, AccessorsAndNames) {
  EXPECT_EQ(attn_kind_name(AttnKind::SWA), "SWA");
  EXPECT_EQ(attn_kind_name(AttnKind::CSA), "CSA");
  EXPECT_EQ(attn_kind_name(AttnKind::HCA), "HCA");
  const ModelConfig c = parse_model_config(flash_json(), "config.json");
  EXPECT_THROW(c.attn_kind(44), Error);
  EXPECT_THROW(c.attn_kind(-1), Error);
  EXPECT_THROW(c.is_hash_layer(44), Error);
  EXPECT_THROW(c.compress_ratio(44), std::out_of_range);
}

// ---------------------------------------------------------------------------
// load_model_config

class ConfigLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("kiln_config_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) {
    std::ofstream out(dir_ / name, std::ios::binary);
    out << text;
  }
  fs::path dir_;
};

TEST_F(ConfigLoadTest, LoadsConfigAndHfQuantConfig) {
  write("config.json", flash_json().dump(2));
  ModelConfig c = load_model_config(dir_);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_FALSE(c.hf_quant_config.has_value());

  const json hq = {{"producer", {{"name", "modelopt"}}}, {"quantization", {{"quant_algo", "NVFP4"}}}};
  write("hf_quant_config.json", hq.dump());
  c = load_model_config(dir_);
  ASSERT_TRUE(c.hf_quant_config.has_value());
  EXPECT_EQ(*c.hf_quant_config, hq);
}

TEST_F(ConfigLoadTest, LoadsTransformersFixtureFromDisk) {
  fs::copy_file(configs_dir() / "transformers_default_v4_flash.json", dir_ / "config.json");
  const ModelConfig c = load_model_config(dir_);
  EXPECT_EQ(c.form, ConfigForm::Transformers);
  EXPECT_EQ(c.num_layers, 43);
}

TEST_F(ConfigLoadTest, MissingConfigIsInvalid) {
  expect_error([&] { load_model_config(dir_); }, ErrorKind::Invalid, {dir_.string(), "has no config.json"});
}

TEST_F(ConfigLoadTest, MissingDirectoryIsIO) {
  expect_error([&] { load_model_config(dir_ / "nope"); }, ErrorKind::IO, {"nope"});
  write("file", "x");
  expect_error([&] { load_model_config(dir_ / "file"); }, ErrorKind::IO, {"not a directory"});
}

TEST_F(ConfigLoadTest, NotJsonNamesFileAndPosition) {
  write("config.json", "{\"hidden_size\": 4096,\n  oops }");
  expect_error([&] { load_model_config(dir_); }, ErrorKind::Invalid,
               {(dir_ / "config.json").string(), "not valid JSON", "byte"});
  write("config.json", "");
  expect_error([&] { load_model_config(dir_); }, ErrorKind::Invalid, {"config.json", "not valid JSON"});
}

TEST_F(ConfigLoadTest, ErrorsCarryTheConfigPath) {
  json j = flash_json();
  j["hidden_size"] = "abc";
  write("config.json", j.dump());
  expect_error([&] { load_model_config(dir_); }, ErrorKind::Invalid,
               {(dir_ / "config.json").string() + ": field 'hidden_size' must be a positive integer, got \"abc\""});
}

TEST_F(ConfigLoadTest, BadHfQuantConfig) {
  write("config.json", flash_json().dump());
  write("hf_quant_config.json", "[1, 2]");
  expect_error([&] { load_model_config(dir_); }, ErrorKind::Invalid, {"hf_quant_config.json", "JSON object"});
  write("hf_quant_config.json", "{nope");
  expect_error([&] { load_model_config(dir_); }, ErrorKind::Invalid, {"hf_quant_config.json", "not valid JSON"});
}

TEST_F(ConfigLoadTest, ConfigJsonIsADirectory) {
  fs::create_directories(dir_ / "config.json");
  expect_error([&] { load_model_config(dir_); }, ErrorKind::IO, {"config.json"});
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(ConfigDefaultsTest, AbsentRoutingScaleAndClampFollowEachFormsDefaults) {
  nlohmann::json tf;
  {
    std::ifstream f(std::string(KILN_TEST_DATA_DIR) + "/configs/transformers_default_v4_flash.json");
    tf = nlohmann::json::parse(f);
  }
  tf.erase("routed_scaling_factor");
  tf.erase("swiglu_limit");
  auto c = parse_model_config(tf, "config.json");
  EXPECT_EQ(c.routed_scaling_factor, 1.5);  // transformers' DeepseekV4Config defaults
  EXPECT_EQ(c.swiglu_limit, 10.0);
  nlohmann::json ds;
  {
    std::ifstream f(std::string(KILN_TEST_DATA_DIR) + "/configs/deepseek_v4_flash.json");
    ds = nlohmann::json::parse(f);
  }
  ds.erase("routed_scaling_factor");
  ds.erase("swiglu_limit");
  c = parse_model_config(ds, "config.json");
  EXPECT_EQ(c.routed_scaling_factor, 1.0);  // DeepSeek's ModelArgs defaults
  EXPECT_EQ(c.swiglu_limit, 0.0);
}

}  // namespace
}  // namespace kiln
