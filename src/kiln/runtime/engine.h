// Continuous batching over one backend (backend.h: the CPU reference or the GPU). A
// scheduler thread owns every running sequence and loops over steps. Between steps,
// waiting requests join (each takes a backend slot; up to max_batch) and finished or
// cancelled ones leave, their slot released at once. Each step is one batch:
//   1. MTP draft passes: for every sequence decoding speculatively, drafts 2..K of this
//      round (draft 1 came from the previous step's catch-up), one MTP pass per draft
//      position over all those sequences;
//   2. one main pass: every decoding sequence's row (plain: the newest token; MTP: the
//      newest token and its K drafts, the verify rows) plus prompt chunks of waiting
//      prefills, oldest first, within a per-step budget of prefill_chunk tokens;
//   3. on the host: sampling, or acceptance of drafts (runtime/speculative.h);
//   4. one MTP catch-up pass (speculative sequences): the block's rows for the positions
//      the main pass committed, on its verified streams; its last row per sequence is
//      the next round's first draft.
// Rollback is feeding again from an earlier position (backend.h). A row's result does
// not depend on what else shares its pass, so a request's tokens do not depend on what
// else runs (tests check this against the same request run alone): plain decoding draws
// with the request's Sampler, speculative decoding gives exactly the plain tokens at
// temperature 0 and the same distribution otherwise.
//
// A request is seen from outside through its RequestHandle (request_handle.h): the
// generated ids of each choice arrive in order (with their logprobs when asked), then the
// finish reason; cancel() (a client that went away, a stop string matched) ends it at the
// next step.
//
// What a sequence takes from its rows: greedy sequences that want no logprobs take the
// device's argmax (no logits cross to the host); the others take logits rows and choose
// on the host, where logprobs are computed too (engine_output.cpp). A per-request token
// mask (constrained decoding) belongs there: such a sequence takes logits rows, and
// Active::choose applies the mask before choosing (drafts would be checked against it
// in the same way).
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

#include <functional>
#include <span>

#include "kiln/runtime/backend.h"
#include "kiln/runtime/engine_metrics.h"
#include "kiln/runtime/logprobs.h"
#include "kiln/runtime/request_handle.h"
#include "kiln/runtime/sampler.h"
#include "kiln/runtime/speculative.h"
#include "kiln/runtime/token_mask.h"

namespace kiln::runtime {

struct EngineOptions {
  int max_batch = 64;           // sequences decoding at once (at most the backend's slots)
  int max_waiting = 1024;       // queued requests beyond the batch; more are refused
  int64_t prefill_chunk = 256;  // prompt tokens fed per step, across sequences
  int mtp = 0;                  // default drafts per round for requests (0 = off)
  // What drafts: DrafterKind::None = what the backend runs (its DSpark drafter when it has
  // one, else the MTP block); Mtp or DSpark to insist (an error when the backend has none).
  DrafterKind drafter = DrafterKind::None;
  // DSpark: a round verifies only its leading drafts whose survival, the product of the
  // confidence head's outputs up to the draft, is at least this (0: every draft; checkpoints
  // without a confidence head verify every draft). The choice is made from the drafter's
  // outputs alone, before the main model sees the drafts, so decoding stays exact.
  double dspark_min_survival = 0.0;
  // Sampled requests (temperature > 0, unconstrained): their drafts are the drafter's
  // argmax, verified as point masses (speculative.h, verify_sampled), instead of draws
  // from the drafter's sampling distribution. Still exact; the GPU then keeps the whole
  // draft chain on the device (no host round trip per draft), as for greedy requests.
  bool sampled_drafts_by_argmax = false;
  // Tests only: at temperature 0, rewrites a round's K drafts (drafting at positions
  // first_position ..) before verification, so every accept length can be reached with
  // random-weight models; the output stays exact whatever it writes.
  std::function<void(int64_t first_position, std::span<int32_t> drafts)> draft_hook;
  // Tests only: called with a speculative sequence's slot and committed length (positions
  // fed and kept) at the start of each of its rounds (before drafting), on the scheduler
  // thread.
  std::function<void(int slot, int64_t length)> round_hook;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 16;  // 0 only with prompt_logprobs (the prompt is scored, nothing generated)
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
  int mtp = -1;                      // drafts per round; -1 = the engine's default
  // Choices: n sequences share the prompt's prefill (fed once in one slot, then copied
  // into the others, Backend::copy_slot) and decode as separate rows. Choice i samples
  // with seed sampling.seed + i, so it draws what the one-choice request with that seed
  // draws.
  int n = 1;
  // -1: no logprobs. 0..kMaxLogprobs: every generated token's logprob and the top-N
  // alternatives of its row (runtime/logprobs.h: the distribution before temperature).
  int logprobs = -1;
  // Also the logprobs of the prompt's tokens 1..P-1 (echo), with max(logprobs, 0) alternatives.
  bool prompt_logprobs = false;
  // Wakes with every change of the handle (RequestHandle); may be shared. Optional.
  std::shared_ptr<Waker> waker;
  // Structured output: only tokens that keep the text a prefix of a document the schema
  // accepts are drawn (speculative drafts and their verification under the same masks).
  std::shared_ptr<const TokenConstraint> constraint;
};

class Engine {
 public:
  // The backend must outlive the engine, which drives it from its scheduler thread only.
  Engine(Backend& backend, EngineOptions options);
  ~Engine();  // stops the scheduler; unfinished requests end as Cancelled
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws kiln::Error (Usage) for a bad request (empty prompt, id
  // outside the vocabulary, max_tokens < 1 (< 0 with prompt logprobs), n outside
  // 1..max_batch, MTP without an MTP block, prompt + max_tokens beyond the backend's
  // context); returns nullptr when the queue is full (the caller answers 429). A request
  // of n choices joins the batch when there is room for all of them.
  std::shared_ptr<RequestHandle> submit(GenerationRequest request);

  const EngineMetrics& metrics() const { return metrics_; }
  const EngineOptions& options() const { return opts_; }
  int64_t vocab_size() const;
  bool has_mtp() const;
  DrafterKind drafter() const { return drafter_; }
  int max_drafts() const;  // drafts per round: the DSpark block size, or kMaxDrafts for MTP
  const Backend& backend() const { return b_; }

 private:
  struct Active;
  void loop();
  void admit(std::vector<std::unique_ptr<Active>>& running);
  // Ends a running choice without tokens (cancelled, failed), counting the request once.
  void end(std::unique_ptr<Active>& a, FinishReason reason, const std::string& error = {});
  void step(std::vector<std::unique_ptr<Active>>& running);
  void draft(std::vector<Active*>& spec);
  void draft_dspark(std::vector<Active*>& spec);  // engine_dspark.cpp
  void commit_dspark(std::vector<std::unique_ptr<Active>>& running);
  // engine_output.cpp: the main pass's results on the host.
  void take_main(std::vector<Active*>& decoding, std::vector<Active*>& prefill);
  void prompt_fed(Active& a);
  std::vector<Active*> catch_up(std::vector<std::unique_ptr<Active>>& running);
  void keep_first_drafts(const std::vector<Active*>& owners);
  void fork(const std::vector<Active*>& prefill, const std::vector<Active*>& drafting);
  void finish_step(std::vector<std::unique_ptr<Active>>& running);

  Backend& b_;
  DrafterKind drafter_ = DrafterKind::Mtp;
  std::vector<float> logits_;    // the current pass's logits rows (scheduler thread only)
  std::vector<int32_t> argmax_;  // and argmax rows
  EngineOptions opts_;
  EngineMetrics metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Active>> waiting_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kiln::runtime
