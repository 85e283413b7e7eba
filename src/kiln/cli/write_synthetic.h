// `kiln bench --write-synthetic DIR`: a DeepSeek-V4-Flash-shaped checkpoint with random
// weights, written to disk as DeepSeek ships V4-Flash (config.json with its
// quantization_config, sharded safetensors under native names with an index, the MTP block
// in its own shard): FP8 e4m3 with 128 x 128 E8M0 scales for attention, shared experts and
// the indexer's wq_b, MXFP4 (or NVFP4) routed experts, BF16 where DeepSeek keeps BF16
// (compressors, the indexer's weights_proj, the router, the head), BF16 embedding and
// norms, F32 mHC parameters. Which module is stored how comes from the recipe table of
// `kiln quantize` (quant/recipes.h), the tensor list from the loader's inventory
// (artifact/inventory.h), the values from model/synthetic.h's generators. Tensors are
// generated (by several threads) and written piece by piece: memory stays at one piece (32 MiB) whatever the
// model's size. Needs no GPU.
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/quant/recipes.h"

namespace kiln::cli {

struct SyntheticCheckpointOptions {
  quant::RecipeId recipe = quant::RecipeId::Native;  // a recipe with native names
  uint64_t seed = 20261204;
  uint64_t max_shard_bytes = 4'000'000'000;  // main-model shard size limit (MTP gets its own shard)
  std::ostream* progress = nullptr;          // a line per shard
};

// Writes the checkpoint of `config` (DeepSeek's config.json form) into `dir` (created; any
// checkpoint files already there are replaced). Returns the tensor bytes written.
uint64_t write_synthetic_checkpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                                    const SyntheticCheckpointOptions& o);

// The CLI: V4-Flash's config with `layers` layers (and one MTP block with `mtp`); experts
// "mxfp4" (recipe deepseek-native) or "nvfp4" (deepseek-native-nvfp4). The bundled model's
// tokenizer.json is copied beside it, so `kiln serve --model DIR` runs (token-id prompts).
int run_write_synthetic(const std::filesystem::path& dir, int layers, const std::string& experts, bool mtp,
                        std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
