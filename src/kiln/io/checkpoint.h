// A checkpoint directory: config.json (+ hf_quant_config.json when present) and its
// tensors, either sharded through model.safetensors.index.json or as every *.safetensors
// file in the directory. Opening reads headers only.
//
// Validation: an index that names a missing shard, a tensor listed in the index but
// absent from its shard, a tensor found in two shards, or a shard with tensors the
// index does not list (reported as a warning, the shard's header wins) — each names the
// index file, the shard and the tensor.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/io/safetensors.h"

namespace kiln {

struct CatalogEntry {
  const TensorInfo* info = nullptr;
  int shard = -1;  // index into Checkpoint::shards()
};

class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // Every tensor, sorted by name.
  const std::vector<std::pair<std::string_view, CatalogEntry>>& tensors() const { return sorted_; }
  const CatalogEntry* find(std::string_view name) const;
  bool has_index() const { return has_index_; }
  const std::vector<std::string>& warnings() const { return warnings_; }
  uint64_t total_tensor_bytes() const;

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> shards_;
  std::vector<std::pair<std::string_view, CatalogEntry>> sorted_;
  bool has_index_ = false;
  std::vector<std::string> warnings_;
};

// Reads and parses a JSON file; a malformed file throws Error(Invalid) naming it and
// the parser's position, an unreadable one Error(IO).
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace kiln
