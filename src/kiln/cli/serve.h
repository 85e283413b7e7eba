// `kiln serve`: the OpenAI-compatible server on the CPU reference backend.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include "kiln/model/tensor_parallel.h"

namespace kiln::cli {

struct ServeOptions {
  std::filesystem::path model;
  std::optional<std::filesystem::path> tokenizer;  // default: <model>/tokenizer.json
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string served_model_name;  // default: the model directory's name
  int threads = 0;                // CPU threads for the forward (0 = all cores)
  std::string device = "auto";    // auto | cpu | cuda
  std::string precision = "auto";  // --precision auto | exact | deepseek
  model::ParallelLayout parallel;  // --tensor-parallel N, --expert-parallel (CPU backend)
  int max_batch = 64;
  int max_waiting = 1024;
  int64_t prefill_chunk = 256;
  // Drafting: --spec dspark | mtp | off ("": what the checkpoint has: a DSpark checkpoint
  // drafts with its drafter on the CPU backend); --mtp K: drafts per round by default
  // (requests may set 'mtp'; unset: a DSpark drafter's whole block, else 0).
  std::string spec;
  double dspark_min_survival = 0.0;  // DSpark: verify only drafts whose survival reaches this (0: all)
  std::string sampled_drafts = "auto";  // argmax | draw | auto (argmax on cuda, draw on cpu)
  std::optional<int> mtp;
  int64_t max_context = 0;  // 0 = the model's max_position_embeddings
  int http_threads = 512;
  size_t max_body_bytes = 4u << 20;
  int idle_timeout_s = 5;  // see server::ServerOptions::idle_timeout
  double gpu_memory_fraction = 0.9;  // cuda: share of the device's memory kiln may allocate
};

// What `kiln serve` runs, loaded and bound but not yet serving: the tokenizer, the backend
// on its device, the engine and the HTTP server on its port. `run_serve` serves one until
// a signal; `kiln bench --serve --model` runs one in-process and drives it over loopback.
class ServeInstance {
 public:
  // Loads the model named by `o.model` (the bundled model when empty; progress on `err`)
  // and binds the port (`o.port` 0: any free port).
  ServeInstance(const ServeOptions& o, std::ostream& err);
  ~ServeInstance();
  ServeInstance(const ServeInstance&) = delete;
  ServeInstance& operator=(const ServeInstance&) = delete;

  int port() const;
  std::string url() const;  // http://host:port
  // "kiln: serving '<model>' at <url> (...)": the ready line, without its newline.
  std::string ready_line() const;
  // Serves until stop() (from another thread).
  void run();
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Loads the model (progress on `err`), prints the ready line with the URL on `out`, and
// serves until SIGINT / SIGTERM.
int run_serve(const ServeOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
