// The mid-size synthetic DeepSeek-V4 of the CPU benchmarks (hidden 1024, 8 layers, 32
// experts top-4), written once to a temporary directory with the project's test-artifact
// writer in the native layout (FP8 attention, MXFP4 experts).
#pragma once

#include <filesystem>

#include "support/artifacts.h"

namespace kiln::bench {

inline nlohmann::json mid_config() {
  nlohmann::json c = kiln::test::tiny_config();
  c.update({{"vocab_size", 4096},        {"hidden_size", 1024},       {"num_hidden_layers", 8},
            {"num_attention_heads", 16}, {"head_dim", 128},           {"qk_rope_head_dim", 32},
            {"q_lora_rank", 256},        {"o_lora_rank", 256},        {"o_groups", 4},
            {"sliding_window", 64},      {"compress_ratios", {0, 4, 16, 4, 16, 4, 16, 4, 0}},
            {"index_n_heads", 16},       {"index_head_dim", 64},      {"index_topk", 32},
            {"n_routed_experts", 32},    {"num_experts_per_tok", 4},  {"moe_intermediate_size", 512},
            {"num_hash_layers", 1}});
  return c;
}

// The model's directory (written on first use).
inline std::filesystem::path mid_model_dir() {
  const auto dir = std::filesystem::temp_directory_path() / "kiln-bench-mid";
  if (!std::filesystem::exists(dir / "config.json")) {
    kiln::test::write_spec(kiln::test::make_spec(kiln::test::Layout::Native, mid_config(), 2), dir);
  }
  return dir;
}

}  // namespace kiln::bench
