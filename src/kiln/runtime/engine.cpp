#include "kiln/runtime/engine.h"

#include <algorithm>
#include <chrono>

#include "kiln/core/error.h"
#include "kiln/model/decode_contract.h"
#include "kiln/model/weights.h"
#include "kiln/runtime/engine_active.h"

namespace kiln::runtime {

using engine_detail::Clock;
using engine_detail::row_of;
using engine_detail::Wants;

Engine::Engine(Backend& backend, EngineOptions options) : b_(backend), opts_(std::move(options)) {
  if (opts_.max_batch < 1 || opts_.max_waiting < 0 || opts_.prefill_chunk < 1) {
    fail(ErrorKind::Usage, "engine: max_batch {} / max_waiting {} / prefill_chunk {} (expected >= 1 / >= 0 / >= 1)",
         opts_.max_batch, opts_.max_waiting, opts_.prefill_chunk);
  }
  if (opts_.max_batch > b_.max_slots()) {
    fail(ErrorKind::Usage, "engine: max_batch {} but the backend holds {} sequences", opts_.max_batch, b_.max_slots());
  }
  drafter_ = opts_.drafter != DrafterKind::None ? opts_.drafter : b_.dspark_block() > 0 ? DrafterKind::DSpark : DrafterKind::Mtp;
  if (drafter_ == DrafterKind::DSpark && b_.dspark_block() == 0 && opts_.mtp > 0) {
    fail(ErrorKind::Usage, "engine: DSpark drafts: the backend ({}) runs no DSpark drafter{}", b_.describe(),
         b_.config().dspark ? " (the checkpoint has one; it was not loaded)" : "");
  }
  if (b_.dspark_block() > kMaxDSparkDrafts) {
    fail(ErrorKind::Usage, "engine: a DSpark block of {} drafts (dspark_block_size); kiln drafts at most {} per round",
         b_.dspark_block(), kMaxDSparkDrafts);
  }
  if (opts_.mtp < 0 || opts_.mtp > max_drafts()) {
    fail(ErrorKind::Usage, "engine: {} drafts per round (expected 0..{}{})", opts_.mtp, max_drafts(),
         drafter_ == DrafterKind::DSpark ? ", the DSpark block size" : "");
  }
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
  static_assert(kMaxDraftPositions < model::kMaxRollback, "a round rolls back up to as many positions as it drafts");
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& a : waiting_) {
    a->handle->push(a->choice, {}, {}, FinishReason::Cancelled);
    for (auto& f : a->followers) f->handle->push(f->choice, {}, {}, FinishReason::Cancelled);
  }
}

int64_t Engine::vocab_size() const { return b_.config().vocab_size; }
bool Engine::has_mtp() const { return drafter_ == DrafterKind::DSpark ? b_.dspark_block() > 0 : b_.mtp_blocks() > 0; }
int Engine::max_drafts() const { return drafter_ == DrafterKind::DSpark && b_.dspark_block() > 0 ? b_.dspark_block() : kMaxDrafts; }

std::shared_ptr<RequestHandle> Engine::submit(GenerationRequest r) {
  const int64_t V = vocab_size();
  if (r.prompt.empty()) fail(ErrorKind::Usage, "empty prompt");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= V) {
      fail(ErrorKind::Usage, "prompt token {} is {}, outside the vocabulary [0, {})", i, r.prompt[i], V);
    }
  }
  if (r.max_tokens < (r.prompt_logprobs ? 0 : 1)) {
    fail(ErrorKind::Usage, "max_tokens {} (expected >= 1, or >= 0 with prompt logprobs)", r.max_tokens);
  }
  if (r.n < 1 || r.n > opts_.max_batch) {
    fail(ErrorKind::Usage, "n {}: expected 1..{} (the choices decode together, at most {} sequences)", r.n,
         opts_.max_batch, opts_.max_batch);
  }
  if (r.logprobs < -1 || r.logprobs > V) fail(ErrorKind::Usage, "logprobs {} (expected -1..{})", r.logprobs, V);
  const int64_t ctx = b_.max_context();
  if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > ctx) {
    fail(ErrorKind::Usage, "the prompt ({} tokens) + max_tokens ({}) exceeds the context of {} positions", r.prompt.size(),
         r.max_tokens, ctx);
  }
  if (r.mtp < 0) r.mtp = opts_.mtp;
  if (r.mtp > max_drafts()) fail(ErrorKind::Usage, "mtp {} (expected 0..{})", r.mtp, max_drafts());
  if (r.mtp > opts_.mtp && static_cast<int64_t>(opts_.max_batch) * (1 + r.mtp) >= b_.max_rows()) {
    fail(ErrorKind::Usage, "mtp {}: {} sequences with {} drafts each do not fit the backend's {} rows per pass", r.mtp,
         opts_.max_batch, r.mtp, b_.max_rows());
  }
  if (r.mtp > 0 && !has_mtp()) {
    fail(ErrorKind::Usage, "MTP speculative decoding: the model {}", model::mtp_unavailable(b_.config(), static_cast<size_t>(b_.mtp_blocks())));
  }

  auto handle = std::shared_ptr<RequestHandle>(new RequestHandle(r.prompt.size(), r.n, r.waker));
  handle->timing_.submitted = Clock::now();
  auto make = [&](int choice) {
    auto a = std::make_unique<Active>();
    a->handle = handle;
    a->choice = choice;
    a->k = r.mtp;
    a->point_drafts = opts_.sampled_drafts_by_argmax;
    SamplingParams sp = r.sampling;
    sp.seed += static_cast<uint64_t>(choice);
    if (a->k > 0) {
      a->rng.seed(sp.seed);
      a->stats.k = a->k;
      a->stats.proposed.assign(static_cast<size_t>(a->k), 0);
      a->stats.accepted.assign(static_cast<size_t>(a->k), 0);
    } else {
      a->sampler.emplace(sp);
    }
    if (r.constraint) a->matcher.emplace(*r.constraint->schema);
    return a;
  };
  auto lead = make(0);
  for (int i = 1; i < r.n; ++i) {
    lead->followers.push_back(make(i));
    lead->followers.back()->request = r;
    lead->followers.back()->request.sampling.seed += static_cast<uint64_t>(i);
  }
  lead->request = std::move(r);
  {
    std::lock_guard lk(mu_);
    if (static_cast<int>(waiting_.size()) >= opts_.max_waiting + std::max(0, opts_.max_batch - static_cast<int>(metrics_.running.load()))) {
      ++metrics_.requests_rejected;
      return nullptr;
    }
    waiting_.push_back(std::move(lead));
    ++metrics_.requests_total;
    metrics_.waiting = static_cast<int64_t>(waiting_.size());
  }
  cv_.notify_all();
  return handle;
}

// Waiting requests join while the batch has room for all their choices and the backend
// has a slot for each (oldest first: a request of many choices is not overtaken).
void Engine::admit(std::vector<std::unique_ptr<Active>>& running) {
  while (!waiting_.empty()) {
    Active& head = *waiting_.front();
    const int need = 1 + static_cast<int>(head.followers.size());
    if (static_cast<int>(running.size()) + need > opts_.max_batch) break;
    std::vector<int> slots;
    for (int i = 0; i < need; ++i) {
      const int s = b_.acquire();
      if (s < 0) break;
      slots.push_back(s);
    }
    if (static_cast<int>(slots.size()) < need) {
      for (int s : slots) b_.release(s);
      break;
    }
    auto lead = std::move(waiting_.front());
    waiting_.pop_front();
    lead->slot = slots[0];
    std::vector<std::unique_ptr<Active>> followers = std::move(lead->followers);
    for (size_t i = 0; i < followers.size(); ++i) {
      followers[i]->slot = slots[i + 1];
      followers[i]->awaiting_fork = true;
      lead->forks.push_back(followers[i].get());
    }
    running.push_back(std::move(lead));
    for (auto& f : followers) running.push_back(std::move(f));
  }
  metrics_.waiting = static_cast<int64_t>(waiting_.size());
}

void Engine::end(std::unique_ptr<Active>& a, FinishReason reason, const std::string& error) {
  if (a->handle->push(a->choice, {}, {}, reason, error)) {
    ++(reason == FinishReason::Error ? metrics_.requests_failed : metrics_.requests_cancelled);
  }
  b_.release(a->slot);
  a.reset();
}

void Engine::loop() {
  std::vector<std::unique_ptr<Active>> running;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !waiting_.empty() || !running.empty(); });
      if (stop_) break;
      admit(running);
    }
    try {
      step(running);
    } catch (const std::exception& e) {
      // A pass failed: every sequence of this step is in an unknown state.
      for (auto& a : running) {
        if (a) end(a, FinishReason::Error, e.what());
      }
    }
    std::erase(running, nullptr);
    metrics_.running = static_cast<int64_t>(running.size());
  }
  for (auto& a : running) end(a, FinishReason::Cancelled);
}

// Drafts of this round for every speculative sequence: the first from the MTP row kept
// from the last catch-up, the others from one MTP pass per draft position, each row on
// the block's own output streams of the previous draft (runtime/speculative.h).
void Engine::draft(std::vector<Active*>& spec) {
  if (drafter_ == DrafterKind::DSpark) return draft_dspark(spec);
  const int64_t V = vocab_size();
  int most = 0;
  for (Active* a : spec) {
    a->start_round();
    if (a->K == 0) continue;
    most = std::max(most, a->K);
    a->drafts[0] = a->pick_draft(0, a->draft_logits, a->draft_argmax);
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
      a->out0 = w.add(a->mtp_row, a->draft_by_argmax());
      rows.add(a->drafts[static_cast<size_t>(i - 1)], a->slot, a->length + i - 1);
      rows.src.push_back(src);
    }
    b_.mtp(0, rows, MtpInput::MtpStreams, w.outputs(logits_, argmax_, V));
    for (Active* a : spec) {
      if (a->K <= i) continue;
      const bool arg = a->draft_by_argmax();
      a->drafts[static_cast<size_t>(i)] =
          a->pick_draft(i, arg ? std::span<const float>() : row_of(logits_, a->out0, V), arg ? argmax_[static_cast<size_t>(a->out0)] : -1);
    }
  }
  if (opts_.draft_hook) {
    for (Active* a : spec) {
      if (a->K > 0 && a->draft_by_argmax()) opts_.draft_hook(a->length + 1, a->drafts);
    }
  }
}

namespace {

// Adds the wall time since the last lap (or construction) to one of the step phases.
class PhaseClock {
 public:
  explicit PhaseClock(EngineMetrics& m) : m_(m), last_(Clock::now()) {}
  void lap(EngineMetrics::Phase p) {
    const auto now = Clock::now();
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count();
    m_.step_ns[p] += static_cast<uint64_t>(ns);
    last_ = now;
  }
  ~PhaseClock() { lap(EngineMetrics::kOther); }

 private:
  using Clock = std::chrono::steady_clock;
  EngineMetrics& m_;
  Clock::time_point last_;
};

}  // namespace

void Engine::step(std::vector<std::unique_ptr<Active>>& running) {
  ++metrics_.steps;
  PhaseClock clock(metrics_);
  const int64_t V = vocab_size();
  for (auto& a : running) {
    if (a->handle->cancelled(a->choice)) end(a, FinishReason::Cancelled);
  }
  std::erase(running, nullptr);

  // Decode rows first (every decoding sequence, every step), then prompt chunks. Choices
  // waiting for their fork take no rows.
  std::vector<Active*> decoding, spec, prefill;
  int64_t rows_left = b_.max_rows();
  for (auto& a : running) {
    a->out.clear();
    a->out_lp.clear();
    a->chunk = 0;
    a->out0 = a->lp0 = -1;
    a->base = a->length;
    a->done = false;
    if (a->awaiting_fork) continue;
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
  if (!spec.empty()) {
    clock.lap(EngineMetrics::kOther);
    draft(spec);
    clock.lap(EngineMetrics::kDraft);
  }

  PassRows rows;
  Wants w;
  for (Active* a : decoding) {
    a->main_row0 = rows.size();
    rows.add(a->pending, a->slot, a->length);
    for (int i = 0; i < a->K; ++i) rows.add(a->drafts[static_cast<size_t>(i)], a->slot, a->length + 1 + i);
    for (int r = a->main_row0; r < rows.size(); ++r) {
      const int at = w.add(r, a->by_argmax());
      if (r == a->main_row0) a->out0 = at;
    }
  }
  int64_t budget = std::min(opts_.prefill_chunk, rows_left);
  for (Active* a : prefill) {
    if (budget <= 0) break;
    const int64_t P = a->prompt_length(), n = std::min(budget, P - a->fed);
    a->main_row0 = rows.size();
    for (int64_t i = 0; i < n; ++i) {
      rows.add(a->request.prompt[static_cast<size_t>(a->fed + i)], a->slot, a->fed + i);
      // Echo: every row's logits (the row before each prompt token scores it).
      if (a->request.prompt_logprobs) {
        const int at = w.add(rows.size() - 1, false);
        if (i == 0) a->lp0 = at;
      }
    }
    a->chunk = n;
    budget -= n;
    if (a->fed + n == P) a->out0 = a->request.prompt_logprobs ? a->lp0 + static_cast<int>(n) - 1 : w.add(rows.size() - 1, a->by_argmax());
  }
  if (rows.empty()) return;
  clock.lap(EngineMetrics::kOther);
  b_.main(rows, w.outputs(logits_, argmax_, V));
  clock.lap(EngineMetrics::kMain);

  take_main(decoding, prefill);
  clock.lap(EngineMetrics::kOther);
  const std::vector<Active*> drafting = catch_up(running);
  fork(prefill, drafting);
  clock.lap(EngineMetrics::kCatchUp);
  finish_step(running);
}

// MTP catch-up: the block's rows for the positions this step committed (main streams at
// p and the token at p + 1); the last row of a decoding sequence is its next round's
// first draft. Returns those sequences.
std::vector<Engine::Active*> Engine::catch_up(std::vector<std::unique_ptr<Active>>& running) {
  if (!has_mtp()) return {};
  if (drafter_ == DrafterKind::DSpark) {
    commit_dspark(running);
    return {};
  }
  const int64_t V = vocab_size();
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
      a->out0 = cw.add(a->mtp_row, a->draft_by_argmax());
      owners.push_back(a);
    }
  }
  if (cu.empty()) return owners;
  b_.mtp(0, cu, MtpInput::MainStreams, cw.outputs(logits_, argmax_, V));
  keep_first_drafts(owners);
  return owners;
}

// Each sequence's output out0 of the last MTP pass is its next round's first draft; its
// row there (mtp_row) gives the streams of draft 2.
void Engine::keep_first_drafts(const std::vector<Active*>& owners) {
  const int64_t V = vocab_size();
  for (Active* a : owners) {
    if (a->draft_by_argmax()) {
      a->draft_argmax = argmax_[static_cast<size_t>(a->out0)];
    } else {
      const auto l = row_of(logits_, a->out0, V);
      a->draft_logits.assign(l.begin(), l.end());
    }
  }
}

// The other choices of requests whose prompt was fed this step (their first tokens are
// already drawn, prompt_fed): each slot becomes a copy of choice 0's. A speculative
// choice then needs its own first draft: the MTP row at the prompt's last position with
// its own first token (choice 0's row there is rolled back over in the copy), on the
// main pass's streams of that position. Drafting takes draft 2's streams from the last
// MTP pass, so that pass also feeds every drafting sequence's last catch-up row again
// (the same row: rollback by one) and becomes the one they all draft from.
void Engine::fork(const std::vector<Active*>& prefill, const std::vector<Active*>& drafting) {
  const int64_t V = vocab_size();
  std::vector<Active*> forked;
  for (Active* a : prefill) {
    if (a->forks.empty() || !a->decoding()) continue;
    for (Active* f : a->forks) {
      b_.copy_slot(a->slot, f->slot);
      f->awaiting_fork = false;
      f->main_row0 = a->main_row0 + static_cast<int>(a->chunk) - 1;  // its first token's streams: the prompt's last row
      if (f->k > 0 && drafter_ == DrafterKind::Mtp) forked.push_back(f);  // DSpark: the copy holds its rings
    }
    a->forks.clear();
  }
  if (forked.empty()) return;
  PassRows rows;
  Wants w;
  std::vector<Active*> owners;
  auto add = [&](Active* a, int32_t src) {
    a->mtp_row = rows.size();
    a->out0 = w.add(a->mtp_row, a->draft_by_argmax());
    rows.add(a->pending, a->slot, a->length - 1);
    rows.src.push_back(src);
    owners.push_back(a);
  };
  for (Active* a : drafting) add(a, static_cast<int32_t>(a->main_row0 + (a->length - 1 - a->base)));
  for (Active* f : forked) add(f, f->main_row0);
  b_.mtp(0, rows, MtpInput::MainStreams, w.outputs(logits_, argmax_, V));
  keep_first_drafts(owners);
}

}  // namespace kiln::runtime
