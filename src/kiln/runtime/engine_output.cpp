// The host's side of a step (engine.h): tokens chosen or drafts accepted from the main
// pass's outputs, logprobs, the end of a prompt (its logprobs, every choice's first
// token), and the tokens handed to each request.
#include <algorithm>

#include "kiln/runtime/engine_active.h"

namespace kiln::runtime {

using engine_detail::Clock;
using engine_detail::row_of;

void Engine::Active::record_logprob(std::span<const float> row, int32_t token) {
  if (wants_logprobs()) out_lp.push_back(token_logprob(row, token, request.logprobs));
}

std::span<const float> Engine::Active::constrain(std::span<const float> row, const JsonMatcher* m) {
  if (!m) return row;
  request.constraint->apply(row, *m, mask_buf, masked_buf);
  return masked_buf;
}

int32_t Engine::Active::choose(const std::vector<float>& logits, const std::vector<int32_t>& argmax_out, int at, int64_t V) {
  if (by_argmax()) return argmax_out[static_cast<size_t>(at)];
  const auto raw = row_of(logits, at, V);
  const auto l = constrain(raw, matcher ? &*matcher : nullptr);
  const int32_t t = greedy() ? argmax(l) : sampler ? sampler->next(l) : sample_from(sampling_distribution(l, request.sampling), rng);
  record_logprob(raw, t);
  if (matcher) request.constraint->advance(*matcher, t);
  return t;
}

int32_t Engine::Active::pick_draft(int i, std::span<const float> row, int32_t row_argmax) {
  if (draft_by_argmax()) return row_argmax;
  const auto l = constrain(row, matcher ? &draft_states[static_cast<size_t>(i)] : nullptr);
  int32_t d;
  if (greedy()) {
    d = argmax(l);
  } else {
    q.push_back(sampling_distribution(l, request.sampling));
    d = sample_from(q.back(), rng);
  }
  if (matcher) {
    draft_states.push_back(draft_states[static_cast<size_t>(i)]);
    request.constraint->advance(draft_states.back(), d);
  }
  return d;
}

// Sample, or accept drafts; gather prompt logprobs; a prompt fed to its end gives every
// choice its first token.
void Engine::take_main(std::vector<Active*>& decoding, std::vector<Active*>& prefill) {
  const int64_t V = vocab_size();
  for (Active* a : decoding) {
    if (a->k == 0) {
      a->pending = a->choose(logits_, argmax_, a->out0, V);
      a->out.push_back(a->pending);
      a->length += 1;
      continue;
    }
    const size_t K1 = static_cast<size_t>(a->K + 1);
    std::vector<float> masked;  // structured output: each verify row under its draft state's mask
    if (a->matcher) {
      for (size_t i = 0; i < K1; ++i) {
        const auto m = a->constrain(row_of(logits_, a->out0 + static_cast<int64_t>(i), V), &a->draft_states[i]);
        masked.insert(masked.end(), m.begin(), m.end());
      }
    }
    const auto verify_rows = [&] {
      if (a->matcher) return std::span<const float>(masked);
      return std::span<const float>(logits_).subspan(static_cast<size_t>(a->out0) * static_cast<size_t>(V), K1 * static_cast<size_t>(V));
    };
    const Verdict v =
        a->by_argmax() ? verify_greedy(std::span<const int32_t>(argmax_).subspan(static_cast<size_t>(a->out0), K1), a->drafts)
        : a->greedy()  ? verify_greedy(verify_rows(), V, a->drafts)
                       : verify_sampled(verify_rows(), V, a->q, a->drafts, a->request.sampling, a->rng);
    ++a->stats.rounds;
    for (int i = 0; i < a->K; ++i) ++a->stats.proposed[static_cast<size_t>(i)];
    for (int i = 0; i < v.accepted; ++i) ++a->stats.accepted[static_cast<size_t>(i)];
    a->stats.accepted_drafts += v.accepted;
    a->stats.emitted += v.accepted + 1;
    a->out.assign(a->drafts.begin(), a->drafts.begin() + v.accepted);
    a->out.push_back(v.next);
    // Emitted token j was chosen at verify row j: the main model's own distribution.
    if (a->wants_logprobs()) {
      for (size_t j = 0; j < a->out.size(); ++j) a->record_logprob(row_of(logits_, a->out0 + static_cast<int64_t>(j), V), a->out[j]);
    }
    a->length += v.accepted + 1;
    a->pending = v.next;
    if (a->matcher) {
      *a->matcher = a->draft_states[static_cast<size_t>(v.accepted)];
      a->request.constraint->advance(*a->matcher, v.next);
    }
  }
  for (Active* a : prefill) {
    if (a->chunk == 0) continue;
    const int64_t P = a->prompt_length();
    if (a->request.prompt_logprobs) {
      const int top = std::max(a->request.logprobs, 0);
      for (int64_t i = 0; i < a->chunk && a->fed + i + 1 < P; ++i) {
        a->prompt_lp.push_back(
            token_logprob(row_of(logits_, a->lp0 + i, V), a->request.prompt[static_cast<size_t>(a->fed + i + 1)], top));
      }
    }
    a->fed += a->chunk;
    a->length = a->fed;
    metrics_.prompt_tokens += static_cast<uint64_t>(a->chunk);
    if (a->fed == P) prompt_fed(*a);
  }
}

void Engine::prompt_fed(Active& a) {
  const int64_t V = vocab_size();
  if (a.request.prompt_logprobs) a.handle->set_prompt_logprobs(std::move(a.prompt_lp));
  if (a.request.max_tokens == 0) {  // scored only
    a.done = true;
    for (Active* f : a.forks) f->done = true;
    a.forks.clear();
    return;
  }
  // Every choice draws its first token from the prompt's last row, with its own sampler.
  a.pending = a.choose(logits_, argmax_, a.out0, V);
  a.out.push_back(a.pending);
  for (Active* f : a.forks) {
    f->pending = f->choose(logits_, argmax_, a.out0, V);
    f->out.push_back(f->pending);
    f->fed = f->length = f->base = a.length;
  }
}

// Emits this step's tokens: cut at a stop token or the length limit; a finished choice
// leaves and its slot is released.
void Engine::finish_step(std::vector<std::unique_ptr<Active>>& running) {
  for (auto& a : running) {
    std::vector<int32_t>& out = a->out;
    if (out.empty() && !a->done) continue;
    FinishReason finish = a->done ? FinishReason::Length : FinishReason::None;
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
    if (a->out_lp.size() > keep) a->out_lp.resize(keep);
    if (finish == FinishReason::None && a->produced + static_cast<int>(keep) >= a->request.max_tokens) {
      finish = FinishReason::Length;
    }

    const auto now = Clock::now();
    if (keep > 0) {
      if (a->produced == 0) {
        if (a->choice == 0) metrics_.ttft.observe(std::chrono::duration<double>(now - a->handle->timing().submitted).count());
        for (size_t i = 1; i < keep; ++i) metrics_.tpot.observe(0.0);
      } else {
        const double per = std::chrono::duration<double>(now - a->last_token).count() / static_cast<double>(keep);
        for (size_t i = 0; i < keep; ++i) metrics_.tpot.observe(per);
      }
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
    const bool over = a->handle->push(a->choice, out, a->out_lp, finish, {}, a->k > 0 ? &a->stats : nullptr);
    if (finish != FinishReason::None) {
      if (over) ++metrics_.requests_finished;
      b_.release(a->slot);
      a.reset();
    }
  }
  std::erase(running, nullptr);
}

}  // namespace kiln::runtime
