// The device a command runs on (`--device auto|cpu|cuda`) and the engine backend loaded
// for it: `generate`, `score`, `perplexity` and `serve` all open one of these.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>

#include "kiln/runtime/backend.h"
#include "kiln/runtime/loaded_model.h"

namespace kiln::cli {

// "cpu" or "cuda" for an asked device: auto = cuda when this kiln has the CUDA backend and
// a usable GPU (Hopper, sm_90) is present, else cpu. `--device cuda` without a usable GPU
// is an Error(Invalid) (exit 2) saying why.
std::string resolve_device(const std::string& asked);

struct SessionOptions {
  std::filesystem::path model;
  std::string device = "auto";
  int threads = 0;           // CPU: worker threads (0 = all cores)
  int max_slots = 1;         // sequences held at once
  int max_rows = 64;         // rows per pass (the GPU sizes its buffers and graphs for it)
  int64_t max_context = 0;   // positions per sequence (0: the model's max_position_embeddings)
  std::ostream* progress = nullptr;
};

class BackendSession {
 public:
  explicit BackendSession(const SessionOptions& o);
  ~BackendSession();
  BackendSession(const BackendSession&) = delete;
  BackendSession& operator=(const BackendSession&) = delete;

  runtime::Backend& backend() { return *backend_; }
  const ModelConfig& config() const { return backend_->config(); }
  const std::string& device() const { return device_; }
  // The ready line's device part: the device, weight bytes and capacity.
  std::string describe() const;

 private:
  std::string device_;
  std::unique_ptr<runtime::LoadedModel> loaded_;
  std::unique_ptr<runtime::Backend> backend_;
};

}  // namespace kiln::cli
