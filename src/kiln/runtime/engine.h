// Continuous batching on one model: a scheduler thread owns every running sequence and
// loops over steps. Between steps, waiting requests join the running batch (up to
// max_batch) and finished or cancelled ones leave it, their decode state freed at once.
// In each step every running sequence that has its prompt fed gets one decode step (one
// token, or one MTP round), and prompts are fed in chunks from a per-step budget of
// prefill_chunk tokens (oldest first), so a long prompt never stalls running streams for
// more than one chunk. Sequences never share state, so a request's tokens do not depend
// on what else runs (tests/server checks this against the same request run alone).
//
// A request is seen from outside through its RequestHandle: the generated ids arrive in
// order, then the finish reason; cancel() (a client that went away, a stop string
// matched) ends it at the next step.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kiln/model/forward.h"
#include "kiln/runtime/engine_metrics.h"
#include "kiln/runtime/sampler.h"

namespace kiln::runtime {

struct EngineOptions {
  int max_batch = 64;           // sequences decoding at once
  int max_waiting = 1024;       // queued requests beyond the batch; more are refused
  int64_t prefill_chunk = 256;  // prompt tokens fed per step, across sequences
  int mtp = 0;                  // default MTP drafts per round for requests (0 = off)
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
  int mtp = -1;                      // drafts per round; -1 = the engine's default
};

enum class FinishReason { None, Length, Stop, Cancelled, Error };
const char* to_string(FinishReason r);

class RequestHandle {
 public:
  using Clock = std::chrono::steady_clock;

  // Blocks until there are tokens beyond the first `have`, the request finished, or the
  // timeout passed; returns the new tokens (possibly none).
  std::vector<int32_t> wait_tokens(size_t have, std::chrono::milliseconds timeout);
  bool finished() const;
  FinishReason finish_reason() const;
  std::string error() const;
  // Ends the request at the next step (no effect once finished).
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  size_t prompt_tokens() const { return prompt_tokens_; }
  // Every token generated so far.
  std::vector<int32_t> tokens() const;

 private:
  friend class Engine;
  explicit RequestHandle(size_t prompt_tokens) : prompt_tokens_(prompt_tokens) {}
  void push(const std::vector<int32_t>& ids, FinishReason finish, std::string error = {});

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  FinishReason finish_ = FinishReason::None;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  size_t prompt_tokens_;
};

class Engine {
 public:
  Engine(const model::Forward& forward, EngineOptions options);
  ~Engine();  // stops the scheduler; unfinished requests end as Cancelled
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws kiln::Error (Usage) for a bad request (empty prompt, id
  // outside the vocabulary, max_tokens < 1, MTP without an MTP block); returns nullptr
  // when the queue is full (the caller answers 429).
  std::shared_ptr<RequestHandle> submit(GenerationRequest request);

  const EngineMetrics& metrics() const { return metrics_; }
  const EngineOptions& options() const { return opts_; }
  int64_t vocab_size() const;
  bool has_mtp() const;

 private:
  struct Active;
  void loop();
  void step(std::vector<std::unique_ptr<Active>>& running);

  const model::Forward& f_;
  EngineOptions opts_;
  EngineMetrics metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Active>> waiting_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kiln::runtime
