// Writing config.json: a parsed model config in DeepSeek's form (what `kiln quantize`
// writes beside its shards), and the check that a rewritten config still describes the
// same model.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "kiln/io/config.h"

namespace kiln {

// config.json in DeepSeek's form: `src` itself (less quantization_config and expert_dtype,
// which the writer declares anew) when it is in that form, else built from the parsed
// fields `c`. Error(Invalid) for what DeepSeek's form cannot express (hash routing on
// layers other than the first N, a compression ratio whose attention kind it reads
// otherwise, YaRN on the sliding-window RoPE).
nlohmann::json deepseek_config_json(const nlohmann::json& src, const ModelConfig& c);

// Error(Invalid) "internal: the rewritten config.json changes the model's <field>" when
// `a` and `b` describe different models.
void check_same_model(const ModelConfig& a, const ModelConfig& b);

// `j` pretty-printed (2 spaces) and a newline; Error(IO) when the write fails. An
// ordered_json keeps its keys in insertion order (a shard index's weight_map).
void write_json_file(const std::filesystem::path& path, const nlohmann::json& j);
void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& j);

}  // namespace kiln
