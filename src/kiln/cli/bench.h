// `kiln bench`: decode speed of the CUDA backend (a benchmark, not a test). For each
// batch size: wall-clock decode tokens/s of greedy decoding with CUDA graphs (host round
// trip per step included), the GPU time of one decode pass as a graph and eager, the
// weight bytes one pass reads and their ratio to the device-memory read bandwidth
// measured in the same run; with --mtp K also MTP speculative decoding and its speedup.
#pragma once

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>

namespace kiln::cli {

struct BenchOptions {
  std::filesystem::path model;              // checkpoint directory (or --synthetic)
  bool synthetic = false;                   // the V4-Flash-shaped model with synthetic weights
  int layers = 4;                           // synthetic: backbone layers
  std::string experts = "mxfp4";            // synthetic: routed-expert scheme, or "bf16" (all BF16)
  std::string precision = "auto";           // auto (exact for now) | exact | deepseek (ops/linear_numerics.h)
  std::string batches = "1,2,4,8,16,32,64";
  int steps = 32;                           // decode steps timed per batch size
  int context = 64;                         // prompt tokens per sequence before decoding
  int mtp = 0;                              // > 0: also MTP speculative decoding with 1..mtp drafts
  double dspark_min_survival = 0.0;         // DSpark rounds verify only drafts this likely to survive (engine.h)
  // Prefill throughput: "SxT" entries (S sequences of T prompt tokens each, comma-separated,
  // e.g. "1x8192,16x1024"), fed in passes of prefill_chunk rows; empty: not measured.
  std::string prefill;
  int prefill_chunk = 2048;
  std::optional<std::filesystem::path> text;  // prompts from this text (model's tokenizer.json)
  bool json = false;
  // Instead of measuring: write the V4-Flash-shaped model (--layers, --experts) to this
  // directory as a real checkpoint (cli/write_synthetic.h); works without CUDA.
  std::filesystem::path write_synthetic;
};

int run_bench(const BenchOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
