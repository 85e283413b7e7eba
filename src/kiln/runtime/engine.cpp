#include "kiln/runtime/engine.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/runtime/sequence.h"
#include "kiln/runtime/speculative.h"

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

// ---- RequestHandle

std::vector<int32_t> RequestHandle::wait_tokens(size_t have, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return tokens_.size() > have || finish_ != FinishReason::None; });
  if (tokens_.size() <= have) return {};
  return std::vector<int32_t>(tokens_.begin() + static_cast<std::ptrdiff_t>(have), tokens_.end());
}

bool RequestHandle::finished() const {
  std::lock_guard lk(mu_);
  return finish_ != FinishReason::None;
}

FinishReason RequestHandle::finish_reason() const {
  std::lock_guard lk(mu_);
  return finish_;
}

std::string RequestHandle::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

std::vector<int32_t> RequestHandle::tokens() const {
  std::lock_guard lk(mu_);
  return tokens_;
}

void RequestHandle::push(const std::vector<int32_t>& ids, FinishReason finish, std::string error) {
  {
    std::lock_guard lk(mu_);
    if (finish_ != FinishReason::None) return;
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    finish_ = finish;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

// ---- Engine

struct Engine::Active {
  std::shared_ptr<RequestHandle> handle;
  GenerationRequest request;
  std::unique_ptr<SequenceDecoder> decoder;  // created when the request joins the batch
  RequestHandle::Clock::time_point submitted, last_token;
  int produced = 0;
  DraftStats reported;  // MTP counters already added to the metrics
};

Engine::Engine(const model::Forward& forward, EngineOptions options) : f_(forward), opts_(options) {
  if (opts_.max_batch < 1 || opts_.max_waiting < 0 || opts_.prefill_chunk < 1) {
    fail(ErrorKind::Usage, "engine: max_batch {} / max_waiting {} / prefill_chunk {} (expected >= 1 / >= 0 / >= 1)",
         opts_.max_batch, opts_.max_waiting, opts_.prefill_chunk);
  }
  if (opts_.mtp < 0 || opts_.mtp > kMaxDrafts) fail(ErrorKind::Usage, "engine: mtp {} (expected 0..{})", opts_.mtp, kMaxDrafts);
  if (opts_.mtp > 0 && !has_mtp()) {
    fail(ErrorKind::Usage, "engine: --mtp {}: the model {}", opts_.mtp,
         model::mtp_unavailable(f_.weights().config, f_.weights().mtp.size()));
  }
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& a : waiting_) a->handle->push({}, FinishReason::Cancelled);
}

int64_t Engine::vocab_size() const { return f_.weights().config.vocab_size; }
bool Engine::has_mtp() const { return !f_.weights().mtp.empty(); }

std::shared_ptr<RequestHandle> Engine::submit(GenerationRequest r) {
  const int64_t V = vocab_size();
  if (r.prompt.empty()) fail(ErrorKind::Usage, "empty prompt");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= V) {
      fail(ErrorKind::Usage, "prompt token {} is {}, outside the vocabulary [0, {})", i, r.prompt[i], V);
    }
  }
  if (r.max_tokens < 1) fail(ErrorKind::Usage, "max_tokens {} (expected >= 1)", r.max_tokens);
  if (r.mtp < 0) r.mtp = opts_.mtp;
  if (r.mtp > kMaxDrafts) fail(ErrorKind::Usage, "mtp {} (expected 0..{})", r.mtp, kMaxDrafts);
  if (r.mtp > 0 && !has_mtp()) {
    fail(ErrorKind::Usage, "MTP speculative decoding: the model {}",
         model::mtp_unavailable(f_.weights().config, f_.weights().mtp.size()));
  }

  auto a = std::make_unique<Active>();
  a->handle = std::shared_ptr<RequestHandle>(new RequestHandle(r.prompt.size()));
  a->request = std::move(r);
  a->submitted = RequestHandle::Clock::now();
  auto handle = a->handle;
  {
    std::lock_guard lk(mu_);
    if (static_cast<int>(waiting_.size()) >= opts_.max_waiting + std::max(0, opts_.max_batch - static_cast<int>(metrics_.running.load()))) {
      ++metrics_.requests_rejected;
      return nullptr;
    }
    waiting_.push_back(std::move(a));
    ++metrics_.requests_total;
    metrics_.waiting = static_cast<int64_t>(waiting_.size());
  }
  cv_.notify_all();
  return handle;
}

void Engine::loop() {
  std::vector<std::unique_ptr<Active>> running;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !waiting_.empty() || !running.empty(); });
      if (stop_) break;
      while (!waiting_.empty() && static_cast<int>(running.size()) < opts_.max_batch) {
        running.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
      metrics_.waiting = static_cast<int64_t>(waiting_.size());
    }
    step(running);
    metrics_.running = static_cast<int64_t>(running.size());
  }
  for (auto& a : running) {
    a->handle->push({}, FinishReason::Cancelled);
    ++metrics_.requests_cancelled;
  }
}

void Engine::step(std::vector<std::unique_ptr<Active>>& running) {
  ++metrics_.steps;
  int64_t budget = opts_.prefill_chunk;
  std::vector<int32_t> out;
  for (auto& a : running) {
    if (a->handle->cancelled()) {
      a->handle->push({}, FinishReason::Cancelled);
      ++metrics_.requests_cancelled;
      a.reset();
      continue;
    }
    out.clear();
    try {
      if (!a->decoder) {
        a->decoder = std::make_unique<SequenceDecoder>(f_, a->request.prompt, a->request.sampling, a->request.mtp);
      }
      if (!a->decoder->prefilled()) {
        if (budget <= 0) continue;
        const int64_t n = a->decoder->prefill(budget, out);
        budget -= n;
        metrics_.prompt_tokens += static_cast<uint64_t>(n);
      } else {
        a->decoder->decode(out, a->request.max_tokens - a->produced);
      }
    } catch (const std::exception& e) {
      a->handle->push({}, FinishReason::Error, e.what());
      ++metrics_.requests_failed;
      a.reset();
      continue;
    }
    if (out.empty()) continue;

    // Cut at a stop token or the length limit.
    FinishReason finish = FinishReason::None;
    size_t keep = out.size();
    for (size_t i = 0; i < out.size(); ++i) {
      const auto& stops = a->request.stop_tokens;
      if (std::find(stops.begin(), stops.end(), out[i]) != stops.end()) {
        keep = i + 1;
        finish = FinishReason::Stop;
        break;
      }
    }
    keep = std::min(keep, static_cast<size_t>(a->request.max_tokens - a->produced));
    out.resize(keep);
    if (finish == FinishReason::None && a->produced + static_cast<int>(keep) >= a->request.max_tokens) {
      finish = FinishReason::Length;
    }

    const auto now = RequestHandle::Clock::now();
    if (a->produced == 0) {
      metrics_.ttft.observe(std::chrono::duration<double>(now - a->submitted).count());
      if (keep > 1) {
        for (size_t i = 1; i < keep; ++i) metrics_.tpot.observe(0.0);
      }
    } else {
      const double per = std::chrono::duration<double>(now - a->last_token).count() / static_cast<double>(keep);
      for (size_t i = 0; i < keep; ++i) metrics_.tpot.observe(per);
    }
    a->last_token = now;
    a->produced += static_cast<int>(keep);
    metrics_.generated_tokens += keep;
    if (const DraftStats* s = a->decoder->draft_stats()) {
      for (size_t i = 0; i < s->proposed.size() && i < metrics_.mtp_proposed.size(); ++i) {
        const int64_t dp = s->proposed[i] - (i < a->reported.proposed.size() ? a->reported.proposed[i] : 0);
        const int64_t da = s->accepted[i] - (i < a->reported.accepted.size() ? a->reported.accepted[i] : 0);
        metrics_.mtp_proposed[i] += static_cast<uint64_t>(dp);
        metrics_.mtp_accepted[i] += static_cast<uint64_t>(da);
      }
      a->reported = *s;
    }
    a->handle->push(out, finish);
    if (finish != FinishReason::None) {
      ++metrics_.requests_finished;
      a.reset();
    }
  }
  running.erase(std::remove(running.begin(), running.end(), nullptr), running.end());
}

}  // namespace kiln::runtime
