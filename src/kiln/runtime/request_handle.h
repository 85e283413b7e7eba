// A request as seen from outside the engine (engine.h): its choices' generated ids in
// order (with their logprobs when asked), then each choice's finish reason; the prompt's
// logprobs (echo); cancel(). Every member is thread-safe: the engine's scheduler thread
// appends, any number of other threads read and wait.
//
// A request of n choices (GenerationRequest::n) has n independent token streams that
// share the prompt; it is finished when every choice is. A Waker may be shared by several
// handles, so one thread can wait for whichever of them moves first (the server's
// requests with several prompts).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kiln/runtime/logprobs.h"
#include "kiln/runtime/speculative.h"

namespace kiln::runtime {

enum class FinishReason { None, Length, Stop, Cancelled, Error };
const char* to_string(FinishReason r);

// A counter bumped by every change of the handles that share it.
class Waker {
 public:
  uint64_t count() const;
  // Blocks until the count differs from `seen` or the timeout passed.
  void wait(uint64_t seen, std::chrono::milliseconds timeout);
  void wake();

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t count_ = 0;
};

class RequestHandle {
 public:
  using Clock = std::chrono::steady_clock;

  int choices() const { return static_cast<int>(choices_.size()); }

  // Choice 0: blocks until it has tokens beyond the first `have`, the whole request
  // finished, or the timeout passed; returns the new tokens (possibly none).
  std::vector<int32_t> wait_tokens(size_t have, std::chrono::milliseconds timeout);
  // Every choice finished.
  bool finished() const;
  FinishReason finish_reason(int choice = 0) const;
  std::string error() const;
  // Ends every choice at the next step (no effect on finished ones).
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  // Ends one choice at the next step (its text matched a stop string).
  void cancel(int choice) { choice_cancelled_[static_cast<size_t>(choice)].store(true); }
  // The request or this choice was cancelled.
  bool cancelled(int choice) const { return cancelled_.load() || choice_cancelled_[static_cast<size_t>(choice)].load(); }
  size_t prompt_tokens() const { return prompt_tokens_; }
  // Every token choice `choice` generated so far.
  std::vector<int32_t> tokens(int choice = 0) const;

  // One choice from token `from` on, read at one instant: its tokens, their logprobs
  // (GenerationRequest::logprobs >= 0; else empty) and its finish reason (None while it runs).
  struct Update {
    std::vector<int32_t> tokens;
    std::vector<TokenLogprob> logprobs;
    FinishReason finish = FinishReason::None;
  };
  Update take(int choice, size_t from) const;

  // GenerationRequest::prompt_logprobs: true once the prompt is fed; then prompt_logprobs()
  // holds the entries of prompt tokens 1..P-1 (token 0 has none), each under the row of
  // the token before it. The prompt is done before any choice's first token arrives.
  bool prompt_done() const;
  std::vector<TokenLogprob> prompt_logprobs() const;

  // When the request was submitted, produced its first token (any choice) and finished
  // (the latter two only once they happened), and choice 0's speculative decoding counters.
  struct Timing {
    Clock::time_point submitted, first_token, finished;
  };
  Timing timing() const;
  DraftStats draft_stats(int choice = 0) const;

 private:
  friend class Engine;
  RequestHandle(size_t prompt_tokens, int n, std::shared_ptr<Waker> waker);
  // Appends to choice `choice` and sets its finish reason (None: still running). Returns
  // true when this push finished the request's last running choice.
  bool push(int choice, std::span<const int32_t> ids, std::span<const TokenLogprob> logprobs, FinishReason finish,
            std::string error = {}, const DraftStats* stats = nullptr);
  void set_prompt_logprobs(std::vector<TokenLogprob> lp);
  void notify();

  struct Choice {
    std::vector<int32_t> tokens;
    std::vector<TokenLogprob> logprobs;
    FinishReason finish = FinishReason::None;
    DraftStats stats;
  };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Choice> choices_;
  int open_ = 0;  // choices not finished
  bool prompt_done_ = false;
  std::vector<TokenLogprob> prompt_logprobs_;
  std::string error_;
  Timing timing_;
  std::atomic<bool> cancelled_{false};
  std::unique_ptr<std::atomic<bool>[]> choice_cancelled_;
  size_t prompt_tokens_;
  std::shared_ptr<Waker> waker_;
};

}  // namespace kiln::runtime
