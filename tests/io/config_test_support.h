// Helpers shared by the config tests (test_config.cpp, test_config_transformers.cpp): the
// stored config fixtures, error expectations and the attention schedules of dsv4-model.md.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/io/config.h"

namespace kiln::config_test {

namespace fs = std::filesystem;
using nlohmann::json;

inline fs::path configs_dir() { return fs::path(KILN_TEST_DATA_DIR) / "configs"; }

inline json load_fixture(const std::string& name) {
  std::ifstream in(configs_dir() / name);
  EXPECT_TRUE(in.good()) << "missing fixture " << name;
  return json::parse(in);
}

inline json flash_json() {
  static const json j = load_fixture("deepseek_v4_flash.json");
  return j;
}
inline json pro_json() {
  static const json j = load_fixture("deepseek_v4_pro.json");
  return j;
}
inline json hf_json() {
  static const json j = load_fixture("transformers_default_v4_flash.json");
  return j;
}

// Runs `f`, expects kiln::Error of `kind` whose message contains every needle.
inline void expect_error(const std::function<void()>& f, ErrorKind kind, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << (needles.empty() ? "" : needles[0]);
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

inline void expect_invalid(const json& j, const std::vector<std::string>& needles) {
  std::vector<std::string> all = needles;
  all.insert(all.begin(), "config.json: ");
  expect_error([&] { parse_model_config(j, "config.json"); }, ErrorKind::Invalid, all);
}

inline std::string expect_invalid_message(const json& j) {
  try {
    parse_model_config(j, "config.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return {};
}

// The Flash schedule from dsv4-model.md §1: layers 0-1 SWA, even 2-42 CSA, odd 3-41 HCA.
inline AttnKind flash_kind(int layer) {
  if (layer < 2) return AttnKind::SWA;
  return layer % 2 == 0 ? AttnKind::CSA : AttnKind::HCA;
}
// Pro: layers 0-1 and odd 3-59 HCA, even 2-60 CSA.
inline AttnKind pro_kind(int layer) {
  if (layer < 2) return AttnKind::HCA;
  return layer % 2 == 0 ? AttnKind::CSA : AttnKind::HCA;
}
// transformers' default layer_types (what DeepseekV4Config() writes without arguments):
// 2x HCA, then for i = 0.. : CSA if i is odd else HCA -> layers 0-2 HCA, odd 3-41 CSA,
// even 4-42 HCA.
inline AttnKind hf_default_kind(int layer) {
  if (layer < 2) return AttnKind::HCA;
  return (layer - 2) % 2 == 1 ? AttnKind::CSA : AttnKind::HCA;
}
inline int64_t ratio_of(AttnKind k) { return k == AttnKind::SWA ? 0 : k == AttnKind::CSA ? 4 : 128; }

inline std::vector<std::string> flash_layer_types() {
  std::vector<std::string> v;
  for (int i = 0; i < 43; ++i) {
    AttnKind k = flash_kind(i);
    v.push_back(k == AttnKind::SWA   ? "sliding_attention"
                : k == AttnKind::CSA ? "compressed_sparse_attention"
                                     : "heavily_compressed_attention");
  }
  return v;
}

}  // namespace kiln::config_test
