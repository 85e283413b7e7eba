// The device a command runs on (`--device auto|cpu|cuda`) and the engine backend loaded
// for it: `generate`, `score`, `perplexity` and `serve` all open one of these.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "kiln/model/dspark.h"
#include "kiln/runtime/backend.h"
#include "kiln/runtime/loaded_model.h"

namespace kiln::cli {

// "cpu" or "cuda" for an asked device: auto = cuda when this kiln has the CUDA backend and
// a usable GPU (Hopper, sm_90) is present, else cpu. `--device cuda` without a usable GPU
// is an Error(Invalid) (exit 2) saying why.
std::string resolve_device(const std::string& asked);
// --sampled-drafts argmax | draw | auto (argmax on the GPU, where it keeps the draft chain
// on the device; draw on the CPU): EngineOptions::sampled_drafts_by_argmax.
bool sampled_drafts_by_argmax(const std::string& asked, bool gpu);
// The precision for `--precision asked` on `device` ("cpu" / "cuda"); anything but auto,
// exact or deepseek is an Error(Usage) naming the option.
ops::Precision resolve_precision(const std::string& asked, const std::string& device);

struct SessionOptions {
  std::filesystem::path model;
  std::string device = "auto";
  int threads = 0;           // CPU: worker threads (0 = all cores)
  int max_slots = 1;         // sequences held at once
  int max_rows = 64;         // rows per pass (the GPU sizes its buffers and graphs for it)
  int64_t max_context = 0;   // positions per sequence (0: the model's max_position_embeddings)
  std::ostream* progress = nullptr;
  // CUDA: the share of the device's total memory kiln may allocate (model/gpu_memory.h); a
  // model that does not fit is an Error(Invalid) naming the bytes, before the upload.
  double gpu_memory_fraction = 0.9;
  // CUDA: hold as many sequences as fit, up to max_slots (serve), instead of failing;
  // rows_per_slot > 0 shrinks max_rows by that many rows per sequence not held.
  bool fewer_slots_ok = false;
  int rows_per_slot = 0;
  // Also load and run the checkpoint's DSpark drafter (CPU: model/dspark.h; CUDA:
  // model/cuda/gpu_dspark.h); an error naming the checkpoint when it has none.
  bool dspark = false;
  // --precision auto|exact|deepseek (ops/linear_numerics.h): auto is exact for now (the GPU's
  // default becomes deepseek once its kernels are verified on a GPU).
  std::string precision = "auto";
  // CPU: the model split over this many tensor-parallel ranks in this process
  // (model/tensor_parallel.h); the CUDA backend runs on one GPU and refuses world > 1.
  model::ParallelLayout parallel{};
};

// What drafts, from `--spec dspark|mtp|off` and `--mtp K`, checked against the
// checkpoint's config.json before anything loads (errors name the option and value).
struct Drafting {
  bool dspark = false;   // the checkpoint's DSpark drafter (SessionOptions::dspark), else its MTP block
  std::optional<int> k;  // drafts per round; none: no drafting
  int most = 0;          // the most drafts a round may have: the DSpark block size, or runtime::kMaxDrafts
};
struct DraftingAsked {
  std::string spec;          // "" (what the checkpoint has) | "dspark" | "mtp" | "off"
  std::optional<int> mtp;    // --mtp K
  bool dspark_by_default;    // spec "": a DSpark checkpoint drafts with its drafter (then K defaults to its block)
  int least = 1;             // the smallest K accepted (serve: 0, the drafter loaded but no drafts by default)
};
Drafting resolve_drafting(const std::filesystem::path& model, const ModelConfig& pre, const DraftingAsked& a);

class BackendSession {
 public:
  explicit BackendSession(const SessionOptions& o);
  ~BackendSession();
  BackendSession(const BackendSession&) = delete;
  BackendSession& operator=(const BackendSession&) = delete;

  runtime::Backend& backend() { return *backend_; }
  const ModelConfig& config() const { return backend_->config(); }
  const std::string& device() const { return device_; }
  // The ready line's device part: the device, weight bytes, capacity ("N sequences x M
  // positions", and whether fewer sequences than asked for fit) and the load's cost.
  std::string describe() const;
  // Sequences held: max_slots, or fewer when the GPU holds fewer (fewer_slots_ok).
  int slots() const { return backend_->max_slots(); }
  bool slots_lowered() const { return asked_slots_ > slots(); }
  // "load 15.31 GB in 3.10 s (4.94 GB/s; ...); peak host memory RssAnon 1.21 GB, VmHWM 1.40 GB"
  const std::string& load_stats() const { return load_stats_; }

 private:
  std::string device_;
  int asked_slots_ = 0;
  std::string load_stats_;
  model::ParallelLayout parallel_;
  std::unique_ptr<runtime::LoadedModel> loaded_;
  std::unique_ptr<model::DSparkWeights> dspark_;  // before backend_: the backend reads it
  std::unique_ptr<runtime::Backend> backend_;
};

}  // namespace kiln::cli
