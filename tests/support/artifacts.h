// Test artifacts written with kiln's own safetensors writer, one per real-world layout
// (artifact-formats.md): the official DeepSeek-V4 native layout, its NVFP4 conversion
// under native names (V4-Pro NVFP4, artifact-formats.md (d)), canada-quant's
// W4A16-FP8-MTP, NVFP4-FP8-MTP (ModelOpt experts), V3-style FP8 with F32
// weight_scale_inv, and BF16 with transformers' module names and fused experts.
//
// The tensor list is written out here independently of artifact/inventory.cpp (from
// dsv4-model.md section 3), so the two cross-check each other. A spec can be mutated by a
// test before it is written, to make every kind of bad artifact.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/core/dtype.h"

namespace kiln::test {

enum class Layout {
  Native,        // FP8 .scale E8M0 + MXFP4 experts + BF16 compressor/indexer/gate, MTP own shard
  NativeNvfp4,   // Native, with the main model's experts NVFP4 under native names (.scale E4M3 +
                 // weight_scale_2 [1], shared by w1/w3 + input_scale [1]); moe_quant_algo NVFP4
  W4A16Fp8Mtp,   // compressed-tensors int4 experts, FP8 attention w/ BF16 weight_scale, BF16 MTP
  Nvfp4Fp8Mtp,   // ModelOpt NVFP4 experts, FP8 attention, BF16 wo_a, BF16 MTP, hf_quant_config.json
  V3Fp8,         // FP8 everywhere incl. experts, F32 weight_scale_inv, transformers module names
  HfBf16,        // BF16, transformers module names, fused gate_up/down experts, transformers config
};
const char* layout_name(Layout l);

struct PendingTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;  // empty when sparse
  int shard = 0;
};

struct ArtifactSpec {
  nlohmann::json config;                       // written as config.json
  std::optional<nlohmann::json> hf_quant_config;
  std::vector<PendingTensor> tensors;
  int num_shards = 1;
  bool write_index = true;
  bool sparse = false;  // header-only replica: tensor bytes are holes

  PendingTensor* find(const std::string& name);
  void erase(const std::string& name);
};

// A small DeepSeek-V4 config in DeepSeek's official form: 4 layers [SWA, CSA, HCA, CSA]
// + 1 MTP, hidden 256, 8 experts top-2, 1 hash layer; dims chosen so 128x128 FP8 grids,
// int4 group 128, NVFP4 16 and MXFP4 32 all have more than one block.
nlohmann::json tiny_config();
// DeepSeek-V4-Flash's config.json (dsv4-model.md section 1), optionally with fewer layers.
nlohmann::json flash_config(int num_layers = 43);

// `cfg` (DeepSeek form) as DeepSeek writes a DSpark checkpoint's config (V4-Flash-0731,
// dspark.md 1.2): the dspark_* keys, compress_ratios = the backbone's + one 0 per stage,
// num_nextn_predict_layers left at 1. make_spec then writes the drafter's stages under
// mtp.N in place of the MTP block.
nlohmann::json dspark_config(nlohmann::json cfg, std::vector<int> target_layer_ids, int markov_rank,
                             int noise_token_id, int stages = 3, int block_size = 5);
// tiny_config() with a 3-stage DSpark drafter reading layers 1-3 (rank 32, noise token 255).
nlohmann::json tiny_dspark_config();
// DeepSeek-V4-Flash-0731's config.json (tests/data/configs/deepseek_v4_flash_0731.json).
nlohmann::json flash_0731_config();

// Every tensor of `layout` for `config` (DeepSeek form), spread over `num_shards`
// shards (MTP in the last one; DSpark stages in the last min(stages, num_shards - 1), as
// the 0731 release keeps them in shards 46-48); sparse = no bytes.
ArtifactSpec make_spec(Layout layout, const nlohmann::json& config, int num_shards = 2, bool sparse = false);
void write_spec(const ArtifactSpec& spec, const std::filesystem::path& dir);

// A directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "kiln");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace kiln::test
