#include "kiln/runtime/request_handle.h"

namespace kiln::runtime {

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Length: return "length";
    case FinishReason::Stop: return "stop";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

uint64_t Waker::count() const {
  std::lock_guard lk(mu_);
  return count_;
}

void Waker::wait(uint64_t seen, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return count_ != seen; });
}

void Waker::wake() {
  {
    std::lock_guard lk(mu_);
    ++count_;
  }
  cv_.notify_all();
}

RequestHandle::RequestHandle(size_t prompt_tokens, int n, std::shared_ptr<Waker> waker)
    : choices_(static_cast<size_t>(n)),
      open_(n),
      choice_cancelled_(std::make_unique<std::atomic<bool>[]>(static_cast<size_t>(n))),
      prompt_tokens_(prompt_tokens),
      waker_(std::move(waker)) {}

std::vector<int32_t> RequestHandle::wait_tokens(size_t have, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  const auto& t = choices_[0].tokens;
  cv_.wait_for(lk, timeout, [&] { return t.size() > have || open_ == 0; });
  if (t.size() <= have) return {};
  return std::vector<int32_t>(t.begin() + static_cast<std::ptrdiff_t>(have), t.end());
}

bool RequestHandle::finished() const {
  std::lock_guard lk(mu_);
  return open_ == 0;
}

FinishReason RequestHandle::finish_reason(int choice) const {
  std::lock_guard lk(mu_);
  return choices_.at(static_cast<size_t>(choice)).finish;
}

std::string RequestHandle::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

std::vector<int32_t> RequestHandle::tokens(int choice) const {
  std::lock_guard lk(mu_);
  return choices_.at(static_cast<size_t>(choice)).tokens;
}

RequestHandle::Update RequestHandle::take(int choice, size_t from) const {
  std::lock_guard lk(mu_);
  const Choice& c = choices_.at(static_cast<size_t>(choice));
  Update u;
  if (from < c.tokens.size()) u.tokens.assign(c.tokens.begin() + static_cast<std::ptrdiff_t>(from), c.tokens.end());
  if (from < c.logprobs.size()) u.logprobs.assign(c.logprobs.begin() + static_cast<std::ptrdiff_t>(from), c.logprobs.end());
  u.finish = c.finish;
  return u;
}

bool RequestHandle::prompt_done() const {
  std::lock_guard lk(mu_);
  return prompt_done_;
}

std::vector<TokenLogprob> RequestHandle::prompt_logprobs() const {
  std::lock_guard lk(mu_);
  return prompt_logprobs_;
}

RequestHandle::Timing RequestHandle::timing() const {
  std::lock_guard lk(mu_);
  return timing_;
}

DraftStats RequestHandle::draft_stats(int choice) const {
  std::lock_guard lk(mu_);
  return choices_.at(static_cast<size_t>(choice)).stats;
}

void RequestHandle::notify() {
  cv_.notify_all();
  if (waker_) waker_->wake();
}

bool RequestHandle::push(int choice, std::span<const int32_t> ids, std::span<const TokenLogprob> logprobs,
                         FinishReason finish, std::string error, const DraftStats* stats) {
  bool over = false;
  {
    std::lock_guard lk(mu_);
    Choice& c = choices_.at(static_cast<size_t>(choice));
    if (c.finish != FinishReason::None) return false;
    const auto now = Clock::now();
    if (!ids.empty() && timing_.first_token == Clock::time_point{}) timing_.first_token = now;
    c.tokens.insert(c.tokens.end(), ids.begin(), ids.end());
    c.logprobs.insert(c.logprobs.end(), logprobs.begin(), logprobs.end());
    c.finish = finish;
    if (!error.empty()) error_ = std::move(error);
    if (stats) c.stats = *stats;
    if (finish != FinishReason::None && --open_ == 0) {
      timing_.finished = now;
      over = true;
    }
  }
  notify();
  return over;
}

void RequestHandle::set_prompt_logprobs(std::vector<TokenLogprob> lp) {
  {
    std::lock_guard lk(mu_);
    prompt_logprobs_ = std::move(lp);
    prompt_done_ = true;
  }
  notify();
}

}  // namespace kiln::runtime
