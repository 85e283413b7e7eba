// `kiln perplexity`: held-out perplexity of a model on a text (or token ids).
#pragma once

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include "kiln/model/tensor_parallel.h"

namespace kiln::cli {

struct PerplexityOptions {
  std::filesystem::path model;  // empty = the bundled model (default_model.h)
  std::optional<std::filesystem::path> text;  // UTF-8 text, tokenized with the model's tokenizer.json
  std::optional<std::string> tokens;          // or token ids: 5,17,42 or a .npy integer array
  int64_t ctx = 512;                          // window length
  bool json = false;
  int threads = 0;
  std::string device = "auto";  // auto | cpu | cuda
  std::string precision = "auto";  // --precision auto | exact | deepseek
  model::ParallelLayout parallel;  // --tensor-parallel N, --expert-parallel (CPU backend)
  double gpu_memory_fraction = 0.9;  // cuda: share of the device's memory kiln may allocate
};

// The ids are cut into consecutive windows of `ctx` tokens; each window is run from a
// fresh state and every token but its first is scored (natural-log NLL of the token
// given the window's earlier tokens). perplexity = exp(sum NLL / scored tokens). No BOS
// is added. tools/train/train_dsv4.py computes PyTorch's number the same way.
int run_perplexity(const PerplexityOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
