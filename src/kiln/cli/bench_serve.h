// `kiln bench --serve`: a load generator for an OpenAI-compatible HTTP server (a benchmark,
// not a test). It drives `/v1/completions` with N concurrent streams of token-id prompts
// (random ids, "ignore_eos", so every stream generates exactly --output-tokens) and, per
// concurrency level, reports the aggregate output tokens/s, TTFT and TPOT percentiles
// measured at the client, and the server's engine steps when its /metrics has them.
// The server is either one already running (--url; kiln, vLLM, llama.cpp, ...) or
// `kiln serve` started in this process on a free loopback port (--model). Built with or
// without the CUDA backend (docs/performance.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include "kiln/model/tensor_parallel.h"

namespace kiln::cli {

struct BenchServeOptions {
  std::string url;                // a running server: http://host:port
  std::filesystem::path model;    // or: `kiln serve` on this checkpoint, in-process
  // In-process server (as `kiln serve`'s options of the same names).
  std::string device = "auto";
  std::string precision = "auto";  // --precision auto | exact | deepseek
  model::ParallelLayout parallel;  // --tensor-parallel N, --expert-parallel (CPU backend)
  int threads = 0;
  int max_batch = 64;
  int64_t prefill_chunk = 256;
  int mtp = 0;
  int64_t max_context = 0;
  // Load.
  std::string concurrency = "1,8,64";  // one measurement per value
  int prompt_tokens = 1024;
  int output_tokens = 256;
  int requests = 0;          // per level; 0 = 2 x the concurrency (never fewer than the concurrency)
  int64_t vocab = 0;         // prompt ids in [0, vocab); 0 = the vocab_size /v1/models reports
  uint64_t seed = 0;         // prompts
  int warmup = 1;            // requests sent (concurrently) before the first level, not measured
  std::string api_key;       // sent as "Authorization: Bearer KEY"
  std::string served_model;  // the requests' "model" (default: the first id /v1/models lists)
  int timeout_s = 600;       // longest silence on a stream
  bool json = false;
};

// Prints a markdown table row per concurrency level (and with --json one JSON object) on
// `out`, progress on `err`. Throws kiln::Error (exit 1) when the server cannot be reached
// or a request fails: connection error, HTTP status other than 200, an error event, no
// usage chunk, or a usage count other than --output-tokens.
int run_bench_serve(const BenchServeOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
