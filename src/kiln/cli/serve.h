// `kiln serve`: the OpenAI-compatible server on the CPU reference backend.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>

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
  int max_batch = 64;
  int max_waiting = 1024;
  int64_t prefill_chunk = 256;
  int mtp = 0;
  int64_t max_context = 0;  // 0 = the model's max_position_embeddings
  int http_threads = 512;
  size_t max_body_bytes = 4u << 20;
  int idle_timeout_s = 5;  // see server::ServerOptions::idle_timeout
};

// Loads the model (progress on `err`), prints the ready line with the URL on `out`, and
// serves until SIGINT / SIGTERM.
int run_serve(const ServeOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
