// `kiln quantize --model SRC --recipe R --out DIR`: writes a quantized DeepSeek-V4 artifact
// in one of the layouts real producers publish (docs/quantization.md has the exact
// layouts). The source is read through the load plan (either naming, any scheme: every
// linear is dequantized exactly, then quantized), tensor by tensor: memory stays bounded
// by the largest tensor. Exit 0 = written, 1 = usage or I/O error (including an existing
// non-empty --out without --force), 2 = the source is not loadable or not representable.
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::cli {

struct QuantizeOptions {
  std::filesystem::path model;
  std::string recipe;
  std::filesystem::path out;
  bool force = false;
  // nvfp4-fp8-mtp, deepseek-native-nvfp4: w1 and w3 of an expert get their own global
  // scales (default: one shared global per expert from max(amax(w1), amax(w3)), as
  // ModelOpt writes them).
  bool nvfp4_split_global = false;
  // Main-model shard size limit ("5GB", "500MB", "1048576"); the MTP block always gets
  // its own shard(s).
  std::string max_shard_size = "5GB";
  int threads = 0;  // 0 = all cores
};

// The recipes, with one line each: {name, description}.
std::vector<std::pair<std::string_view, std::string_view>> quantize_recipes();

int run_quantize(const QuantizeOptions& opt, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
