// What the engine tests share: the tiny_b fixture (its own MTP block, vocabulary 384) and
// deterministic prompts for it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace kiln::test {

inline const std::filesystem::path kEngineModel = std::filesystem::path(KILN_TEST_DATA_DIR) / "fixtures" / "tiny_b" / "native";

// n token ids of tiny_b's vocabulary, different per salt.
inline std::vector<int32_t> engine_prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 37 + salt * 11 + 5) % 384);
  return p;
}

}  // namespace kiln::test
