// `kiln score` and `kiln generate`, on the CPU reference backend or the CUDA backend
// (`--device auto|cpu|cuda`, cli/backend_session.h), through the engine's backend contract.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "kiln/runtime/sampler.h"
#include "kiln/model/tensor_parallel.h"

namespace kiln::cli {

// "5,17,42" (commas and/or spaces) or the path of a .npy integer array.
std::vector<int32_t> parse_tokens(const std::string& spec);

struct ScoreOptions {
  std::filesystem::path model;
  std::string tokens;
  std::filesystem::path out;
  std::string mode = "full";  // full | incremental | chunked:N
  std::optional<std::filesystem::path> mtp_out;
  std::string device = "auto";
  std::string precision = "auto";  // --precision auto | exact | deepseek
  model::ParallelLayout parallel;  // --tensor-parallel N, --expert-parallel (CPU backend)
  int threads = 0;
  int64_t max_context = 0;  // 0: the model's max_position_embeddings
  double gpu_memory_fraction = 0.9;  // cuda: share of the device's memory kiln may allocate
};
int run_score(const ScoreOptions& o, std::ostream& out, std::ostream& err);

struct GenerateOptions {
  std::filesystem::path model;
  std::string tokens;
  int max_tokens = 32;
  runtime::SamplingParams sampling;
  bool json = false;
  bool ignore_eos = false;
  std::optional<int> mtp;      // speculative decoding with this many drafts per round (MTP 1..4, DSpark 1..block)
  std::string spec;            // "dspark" | "mtp" | "off"; "" = what the checkpoint has (with --mtp K)
  double dspark_min_survival = 0.0;  // DSpark: verify only drafts whose survival reaches this (0: all)
  std::string sampled_drafts = "auto";  // argmax | draw | auto (argmax on cuda, draw on cpu)
  bool compare_plain = false;  // with mtp: also time plain decoding and report both
  std::string device = "auto";
  std::string precision = "auto";  // --precision auto | exact | deepseek
  model::ParallelLayout parallel;  // --tensor-parallel N, --expert-parallel (CPU backend)
  int threads = 0;
  int64_t max_context = 0;  // 0: the model's max_position_embeddings
  double gpu_memory_fraction = 0.9;  // cuda: share of the device's memory kiln may allocate
};
int run_generate(const GenerateOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
