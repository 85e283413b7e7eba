#include "kiln/runtime/engine.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/model/decode_limits.h"
#include "kiln/model/weights.h"

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

RequestHandle::Timing RequestHandle::timing() const {
  std::lock_guard lk(mu_);
  return timing_;
}

DraftStats RequestHandle::draft_stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void RequestHandle::push(const std::vector<int32_t>& ids, FinishReason finish, std::string error, const DraftStats* stats) {
  {
    std::lock_guard lk(mu_);
    if (finish_ != FinishReason::None) return;
    const auto now = Clock::now();
    if (tokens_.empty() && !ids.empty()) timing_.first_token = now;
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    finish_ = finish;
    if (finish != FinishReason::None) timing_.finished = now;
    error_ = std::move(error);
    if (stats) stats_ = *stats;
  }
  cv_.notify_all();
}

// ---- Engine

namespace {

using Clock = RequestHandle::Clock;

std::span<const float> row_of(const std::vector<float>& m, int64_t i, int64_t width) {
  return std::span<const float>(m).subspan(static_cast<size_t>(i * width), static_cast<size_t>(width));
}

// The outputs one pass is asked for: greedy sequences take the device's argmax of their
// rows (no logits cross to the host), sampled ones the logits.
struct Wants {
  std::vector<int32_t> logits_rows, argmax_rows;
  void clear() {
    logits_rows.clear();
    argmax_rows.clear();
  }
  // Index of row r's result in the logits (greedy = false) or argmax output.
  int add(int32_t r, bool greedy) {
    auto& v = greedy ? argmax_rows : logits_rows;
    v.push_back(r);
    return static_cast<int>(v.size()) - 1;
  }
  Backend::Outputs outputs(std::vector<float>& logits, std::vector<int32_t>& argmax, int64_t vocab) const {
    logits.resize(logits_rows.size() * static_cast<size_t>(vocab));
    argmax.resize(argmax_rows.size());
    return {logits_rows, logits.data(), argmax_rows, argmax.data()};
  }
};

}  // namespace

struct Engine::Active {
  std::shared_ptr<RequestHandle> handle;
  GenerationRequest request;
  Clock::time_point last_token;
  int produced = 0;
  int slot = -1;
  int64_t fed = 0;       // prompt tokens fed to the main model
  int64_t length = 0;    // positions fed to the main model and kept
  int32_t pending = -1;  // the newest token, not yet fed; -1 while the prompt is being fed
  std::optional<Sampler> sampler;  // plain decoding
  std::mt19937_64 rng;             // speculative decoding: drafts and acceptance
  int k = 0;                       // drafts per round (0: plain)
  std::vector<float> draft_logits;  // speculative, sampled: the MTP block's row at length - 1
  int32_t draft_argmax = -1;        // speculative, greedy: its argmax
  DraftStats stats, reported;
  // This step.
  int K = 0;  // drafts this round
  std::vector<int32_t> drafts;
  std::vector<std::vector<double>> q;
  int mtp_row = -1;                  // its row in the last MTP pass
  int main_row0 = -1, out0 = -1;     // its first row in the main pass and in the pass's outputs
  int64_t chunk = 0, base = 0;       // prompt tokens fed this step; length before the step
  std::vector<int32_t> out;          // tokens emitted this step

  bool decoding() const { return pending >= 0; }
  int64_t prompt_length() const { return static_cast<int64_t>(request.prompt.size()); }
  bool greedy() const { return request.sampling.temperature <= 0.0f; }
  // The next token from this step's main pass output at out0: the device's argmax when
  // greedy, else a draw from the logits (plain: the Sampler; speculative: the round's rng).
  int32_t next_token(const std::vector<float>& logits, const std::vector<int32_t>& argmax, int64_t V) {
    if (greedy()) return argmax[static_cast<size_t>(out0)];
    const auto l = row_of(logits, out0, V);
    return sampler ? sampler->next(l) : sample_from(sampling_distribution(l, request.sampling), rng);
  }
};

Engine::Engine(Backend& backend, EngineOptions options) : b_(backend), opts_(std::move(options)) {
  if (opts_.max_batch < 1 || opts_.max_waiting < 0 || opts_.prefill_chunk < 1) {
    fail(ErrorKind::Usage, "engine: max_batch {} / max_waiting {} / prefill_chunk {} (expected >= 1 / >= 0 / >= 1)",
         opts_.max_batch, opts_.max_waiting, opts_.prefill_chunk);
  }
  if (opts_.max_batch > b_.max_slots()) {
    fail(ErrorKind::Usage, "engine: max_batch {} but the backend holds {} sequences", opts_.max_batch, b_.max_slots());
  }
  if (opts_.mtp < 0 || opts_.mtp > kMaxDrafts) fail(ErrorKind::Usage, "engine: mtp {} (expected 0..{})", opts_.mtp, kMaxDrafts);
  // Every running sequence's decode rows (with its drafts) fit one pass, and a prompt
  // chunk still gets a row.
  const int64_t decode_rows = static_cast<int64_t>(opts_.max_batch) * (1 + opts_.mtp);
  if (decode_rows >= b_.max_rows()) {
    fail(ErrorKind::Usage, "engine: {} sequences with {} drafts each need {} rows per pass; the backend takes {}",
         opts_.max_batch, opts_.mtp, decode_rows + 1, b_.max_rows());
  }
  if (opts_.mtp > 0 && !has_mtp()) {
    fail(ErrorKind::Usage, "engine: --mtp {}: the model {}", opts_.mtp, model::mtp_unavailable(b_.config(), static_cast<size_t>(b_.mtp_blocks())));
  }
  static_assert(kMaxDrafts < model::kMaxRollback, "a round rolls back up to kMaxDrafts positions");
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

int64_t Engine::vocab_size() const { return b_.config().vocab_size; }
bool Engine::has_mtp() const { return b_.mtp_blocks() > 0; }

std::shared_ptr<RequestHandle> Engine::submit(GenerationRequest r) {
  const int64_t V = vocab_size();
  if (r.prompt.empty()) fail(ErrorKind::Usage, "empty prompt");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= V) {
      fail(ErrorKind::Usage, "prompt token {} is {}, outside the vocabulary [0, {})", i, r.prompt[i], V);
    }
  }
  if (r.max_tokens < 1) fail(ErrorKind::Usage, "max_tokens {} (expected >= 1)", r.max_tokens);
  const int64_t ctx = b_.max_context();
  if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > ctx) {
    fail(ErrorKind::Usage, "the prompt ({} tokens) + max_tokens ({}) exceeds the context of {} positions", r.prompt.size(),
         r.max_tokens, ctx);
  }
  if (r.mtp < 0) r.mtp = opts_.mtp;
  if (r.mtp > kMaxDrafts) fail(ErrorKind::Usage, "mtp {} (expected 0..{})", r.mtp, kMaxDrafts);
  if (r.mtp > opts_.mtp && static_cast<int64_t>(opts_.max_batch) * (1 + r.mtp) >= b_.max_rows()) {
    fail(ErrorKind::Usage, "mtp {}: {} sequences with {} drafts each do not fit the backend's {} rows per pass", r.mtp,
         opts_.max_batch, r.mtp, b_.max_rows());
  }
  if (r.mtp > 0 && !has_mtp()) {
    fail(ErrorKind::Usage, "MTP speculative decoding: the model {}", model::mtp_unavailable(b_.config(), static_cast<size_t>(b_.mtp_blocks())));
  }

  auto a = std::make_unique<Active>();
  a->handle = std::shared_ptr<RequestHandle>(new RequestHandle(r.prompt.size()));
  a->handle->timing_.submitted = Clock::now();
  a->k = r.mtp;
  if (a->k > 0) {
    a->rng.seed(r.sampling.seed);
    a->stats.k = a->k;
    a->stats.proposed.assign(static_cast<size_t>(a->k), 0);
    a->stats.accepted.assign(static_cast<size_t>(a->k), 0);
  } else {
    a->sampler.emplace(r.sampling);
  }
  a->request = std::move(r);
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
        const int slot = b_.acquire();
        if (slot < 0) break;
        waiting_.front()->slot = slot;
        running.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
      metrics_.waiting = static_cast<int64_t>(waiting_.size());
    }
    try {
      step(running);
    } catch (const std::exception& e) {
      // A pass failed: every sequence of this step is in an unknown state.
      for (auto& a : running) {
        if (!a) continue;
        a->handle->push({}, FinishReason::Error, e.what());
        ++metrics_.requests_failed;
        b_.release(a->slot);
        a.reset();
      }
    }
    std::erase(running, nullptr);
    metrics_.running = static_cast<int64_t>(running.size());
  }
  for (auto& a : running) {
    a->handle->push({}, FinishReason::Cancelled);
    ++metrics_.requests_cancelled;
    b_.release(a->slot);
  }
}

// Drafts of this round for every speculative sequence: the first from the MTP row kept
// from the last catch-up, the others from one MTP pass per draft position, each row on
// the block's own output streams of the previous draft (runtime/speculative.h).
void Engine::draft(std::vector<Active*>& spec) {
  const int64_t V = vocab_size();
  int most = 0;
  for (Active* a : spec) {
    a->drafts.assign(static_cast<size_t>(a->K), 0);
    a->q.clear();
    if (a->K == 0) continue;
    most = std::max(most, a->K);
    if (a->greedy()) {
      a->drafts[0] = a->draft_argmax;
    } else {
      a->q.push_back(sampling_distribution(a->draft_logits, a->request.sampling));
      a->drafts[0] = sample_from(a->q.back(), a->rng);
    }
  }
  PassRows rows;
  Wants w;
  for (int i = 1; i < most; ++i) {
    rows.clear();
    w.clear();
    for (Active* a : spec) {
      if (a->K <= i) continue;
      const int32_t src = a->mtp_row;  // its row of the previous MTP pass
      a->mtp_row = rows.size();
      a->out0 = w.add(a->mtp_row, a->greedy());
      rows.add(a->drafts[static_cast<size_t>(i - 1)], a->slot, a->length + i - 1);
      rows.src.push_back(src);
    }
    b_.mtp(0, rows, MtpInput::MtpStreams, w.outputs(logits_, argmax_, V));
    for (Active* a : spec) {
      if (a->K <= i) continue;
      if (a->greedy()) {
        a->drafts[static_cast<size_t>(i)] = argmax_[static_cast<size_t>(a->out0)];
      } else {
        a->q.push_back(sampling_distribution(row_of(logits_, a->out0, V), a->request.sampling));
        a->drafts[static_cast<size_t>(i)] = sample_from(a->q.back(), a->rng);
      }
    }
  }
  if (opts_.draft_hook) {
    for (Active* a : spec) {
      if (a->K > 0 && a->greedy()) opts_.draft_hook(a->length + 1, a->drafts);
    }
  }
}

void Engine::step(std::vector<std::unique_ptr<Active>>& running) {
  ++metrics_.steps;
  const int64_t V = vocab_size();
  for (auto& a : running) {
    if (a->handle->cancelled()) {
      a->handle->push({}, FinishReason::Cancelled);
      ++metrics_.requests_cancelled;
      b_.release(a->slot);
      a.reset();
    }
  }
  std::erase(running, nullptr);

  // Decode rows first (every decoding sequence, every step), then prompt chunks.
  std::vector<Active*> decoding, spec, prefill;
  int64_t rows_left = b_.max_rows();
  for (auto& a : running) {
    a->out.clear();
    a->chunk = 0;
    a->out0 = -1;
    a->base = a->length;
    if (!a->decoding()) {
      prefill.push_back(a.get());
      continue;
    }
    decoding.push_back(a.get());
    // No more drafts than tokens still wanted after the main model's own one.
    a->K = a->k > 0 ? std::min(a->k, a->request.max_tokens - a->produced - 1) : 0;
    if (a->k > 0) spec.push_back(a.get());
    rows_left -= 1 + a->K;
  }
  if (opts_.round_hook) {
    for (Active* a : spec) opts_.round_hook(a->slot, a->length);
  }
  if (!spec.empty()) draft(spec);

  PassRows rows;
  Wants w;
  for (Active* a : decoding) {
    a->main_row0 = rows.size();
    rows.add(a->pending, a->slot, a->length);
    for (int i = 0; i < a->K; ++i) rows.add(a->drafts[static_cast<size_t>(i)], a->slot, a->length + 1 + i);
    for (int r = a->main_row0; r < rows.size(); ++r) {
      const int at = w.add(r, a->greedy());
      if (r == a->main_row0) a->out0 = at;
    }
  }
  int64_t budget = std::min(opts_.prefill_chunk, rows_left);
  for (Active* a : prefill) {
    if (budget <= 0) break;
    const int64_t P = a->prompt_length(), n = std::min(budget, P - a->fed);
    a->main_row0 = rows.size();
    for (int64_t i = 0; i < n; ++i) rows.add(a->request.prompt[static_cast<size_t>(a->fed + i)], a->slot, a->fed + i);
    a->chunk = n;
    budget -= n;
    if (a->fed + n == P) a->out0 = w.add(rows.size() - 1, a->greedy());
  }
  if (rows.empty()) return;
  b_.main(rows, w.outputs(logits_, argmax_, V));

  // Sample, or accept drafts.
  for (Active* a : decoding) {
    if (a->k == 0) {
      a->pending = a->next_token(logits_, argmax_, V);
      a->out.push_back(a->pending);
      a->length += 1;
      continue;
    }
    const Verdict v =
        a->greedy()
            ? verify_greedy(std::span<const int32_t>(argmax_).subspan(static_cast<size_t>(a->out0), static_cast<size_t>(a->K + 1)),
                            a->drafts)
            : verify_sampled(std::span<const float>(logits_).subspan(static_cast<size_t>(a->out0) * static_cast<size_t>(V),
                                                                     static_cast<size_t>((a->K + 1) * V)),
                             V, a->q, a->drafts, a->request.sampling, a->rng);
    ++a->stats.rounds;
    for (int i = 0; i < a->K; ++i) ++a->stats.proposed[static_cast<size_t>(i)];
    for (int i = 0; i < v.accepted; ++i) ++a->stats.accepted[static_cast<size_t>(i)];
    a->stats.accepted_drafts += v.accepted;
    a->stats.emitted += v.accepted + 1;
    a->out.assign(a->drafts.begin(), a->drafts.begin() + v.accepted);
    a->out.push_back(v.next);
    a->length += v.accepted + 1;
    a->pending = v.next;
  }
  for (Active* a : prefill) {
    if (a->chunk == 0) continue;
    a->fed += a->chunk;
    a->length = a->fed;
    metrics_.prompt_tokens += static_cast<uint64_t>(a->chunk);
    if (a->fed == a->prompt_length()) {
      a->pending = a->next_token(logits_, argmax_, V);
      a->out.push_back(a->pending);
    }
  }

  // MTP catch-up: the block's rows for the positions this step committed (main streams
  // at p and the token at p + 1); the last row of a decoding sequence is its next round's
  // first draft.
  if (has_mtp()) {
    PassRows cu;
    Wants cw;
    std::vector<Active*> owners;
    for (auto& ap : running) {
      Active* a = ap.get();
      if (a->k == 0 || a->length == a->base) continue;
      const auto token_after = [&](int64_t p) -> int32_t {
        if (p + 1 < a->prompt_length()) return a->request.prompt[static_cast<size_t>(p + 1)];
        if (p + 1 == a->length) return a->pending;
        return a->out[static_cast<size_t>(p - a->base)];  // a decoding row: the accepted draft after it
      };
      for (int64_t p = a->base; p < a->length; ++p) {
        cu.add(token_after(p), a->slot, p);
        cu.src.push_back(static_cast<int32_t>(a->main_row0 + (p - a->base)));
      }
      if (a->decoding()) {
        a->mtp_row = cu.size() - 1;
        a->out0 = cw.add(a->mtp_row, a->greedy());
        owners.push_back(a);
      }
    }
    if (!cu.empty()) {
      b_.mtp(0, cu, MtpInput::MainStreams, cw.outputs(logits_, argmax_, V));
      for (Active* a : owners) {
        if (a->greedy()) {
          a->draft_argmax = argmax_[static_cast<size_t>(a->out0)];
        } else {
          const auto l = row_of(logits_, a->out0, V);
          a->draft_logits.assign(l.begin(), l.end());
        }
      }
    }
  }
  finish_step(running);
}

// Emits this step's tokens: cut at a stop token or the length limit; a finished request
// leaves and its slot is released.
void Engine::finish_step(std::vector<std::unique_ptr<Active>>& running) {
  for (auto& a : running) {
    std::vector<int32_t>& out = a->out;
    if (out.empty()) continue;
    FinishReason finish = FinishReason::None;
    size_t keep = out.size();
    const auto& stops = a->request.stop_tokens;
    for (size_t i = 0; i < out.size(); ++i) {
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

    const auto now = Clock::now();
    if (a->produced == 0) {
      metrics_.ttft.observe(std::chrono::duration<double>(now - a->handle->timing().submitted).count());
      for (size_t i = 1; i < keep; ++i) metrics_.tpot.observe(0.0);
    } else {
      const double per = std::chrono::duration<double>(now - a->last_token).count() / static_cast<double>(keep);
      for (size_t i = 0; i < keep; ++i) metrics_.tpot.observe(per);
    }
    a->last_token = now;
    a->produced += static_cast<int>(keep);
    metrics_.generated_tokens += keep;
    if (a->k > 0) {
      const DraftStats& s = a->stats;
      for (size_t i = 0; i < s.proposed.size() && i < metrics_.mtp_proposed.size(); ++i) {
        const int64_t dp = s.proposed[i] - (i < a->reported.proposed.size() ? a->reported.proposed[i] : 0);
        const int64_t da = s.accepted[i] - (i < a->reported.accepted.size() ? a->reported.accepted[i] : 0);
        metrics_.mtp_proposed[i] += static_cast<uint64_t>(dp);
        metrics_.mtp_accepted[i] += static_cast<uint64_t>(da);
      }
      a->reported = s;
    }
    a->handle->push(out, finish, {}, a->k > 0 ? &a->stats : nullptr);
    if (finish != FinishReason::None) {
      ++metrics_.requests_finished;
      b_.release(a->slot);
      a.reset();
    }
  }
  std::erase(running, nullptr);
}

}  // namespace kiln::runtime
