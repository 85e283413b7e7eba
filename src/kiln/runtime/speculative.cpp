#include "kiln/runtime/speculative.h"

#include <algorithm>
#include <chrono>

#include "kiln/core/error.h"

namespace kiln::runtime {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::span<const float> row(std::span<const float> m, int64_t i, int64_t width) {
  return m.subspan(static_cast<size_t>(i * width), static_cast<size_t>(width));
}

}  // namespace

Verdict verify_greedy(std::span<const float> target_logits, int64_t vocab, std::span<const int32_t> drafts) {
  const int K = static_cast<int>(drafts.size());
  if (static_cast<int64_t>(target_logits.size()) != (K + 1) * vocab) {
    fail(ErrorKind::Usage, "verify_greedy: {} logits for {} drafts of vocabulary {}", target_logits.size(), K, vocab);
  }
  Verdict v;
  while (v.accepted < K && argmax(row(target_logits, v.accepted, vocab)) == drafts[static_cast<size_t>(v.accepted)]) {
    ++v.accepted;
  }
  v.next = argmax(row(target_logits, v.accepted, vocab));
  return v;
}

Verdict verify_sampled(std::span<const float> target_logits, int64_t vocab, const std::vector<std::vector<double>>& q,
                       std::span<const int32_t> drafts, const SamplingParams& params, std::mt19937_64& rng) {
  const int K = static_cast<int>(drafts.size());
  if (static_cast<int64_t>(target_logits.size()) != (K + 1) * vocab || static_cast<int>(q.size()) != K) {
    fail(ErrorKind::Usage, "verify_sampled: {} logits and {} draft distributions for {} drafts of vocabulary {}",
         target_logits.size(), q.size(), K, vocab);
  }
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Verdict v;
  for (int i = 0; i < K; ++i) {
    const std::vector<double> p = sampling_distribution(row(target_logits, i, vocab), params);
    const std::vector<double>& qi = q[static_cast<size_t>(i)];
    const size_t d = static_cast<size_t>(drafts[static_cast<size_t>(i)]);
    // Accept with probability min(1, p(d) / q(d)); q(d) > 0 since d was drawn from q.
    if (unit(rng) * qi[d] < p[d]) {
      ++v.accepted;
      continue;
    }
    // Rejected: draw from the residual max(0, p - q), normalised.
    std::vector<double> r(p.size());
    double sum = 0.0;
    for (size_t x = 0; x < p.size(); ++x) {
      r[x] = std::max(0.0, p[x] - qi[x]);
      sum += r[x];
    }
    // sum == 0 means p == q up to rounding, where a rejection has probability ~0; p
    // itself is then the residual's limit.
    v.next = sample_from(sum > 0.0 ? std::span<const double>(r) : std::span<const double>(p), rng);
    return v;
  }
  v.next = sample_from(sampling_distribution(row(target_logits, K, vocab), params), rng);
  return v;
}

SpeculativeDecoder::SpeculativeDecoder(const model::Forward& forward, int k, SamplingParams params)
    : f_(forward), k_(k), params_(params), rng_(params.seed), state_(forward.new_state()) {
  if (k < 1 || k > kMaxDrafts) fail(ErrorKind::Usage, "speculative decoding: {} drafts per round; expected 1..{}", k, kMaxDrafts);
  if (forward.weights().mtp.empty()) {
    fail_invalid("speculative decoding: the model {}", model::mtp_unavailable(forward.weights().config, 0));
  }
  static_assert(kMaxDrafts < model::DecodeState::kMaxRollback, "a round rolls back up to kMaxDrafts positions");
  stats_.k = k;
  stats_.proposed.assign(static_cast<size_t>(k), 0);
  stats_.accepted.assign(static_cast<size_t>(k), 0);
}

void SpeculativeDecoder::set_draft_hook(DraftHook hook) {
  if (hook && params_.temperature > 0.0f) {
    fail(ErrorKind::Usage, "speculative decoding: a draft hook needs temperature 0 (drafts must come from q)");
  }
  hook_ = std::move(hook);
}

int32_t SpeculativeDecoder::prefill(std::span<const int32_t> prompt) {
  if (prompt.empty()) fail(ErrorKind::Usage, "speculative decoding: empty prompt");
  if (state_.length() != 0) fail(ErrorKind::Usage, "speculative decoding: prefill called twice");
  prefill_some(prompt, static_cast<int64_t>(prompt.size()));
  return pending_;
}

int64_t SpeculativeDecoder::prefill_some(std::span<const int32_t> prompt, int64_t budget) {
  if (prompt.empty()) fail(ErrorKind::Usage, "speculative decoding: empty prompt");
  if (pending_ >= 0) fail(ErrorKind::Usage, "speculative decoding: the prompt is already fed");
  if (budget < 1) fail(ErrorKind::Usage, "speculative decoding: prefill budget {} (expected >= 1)", budget);
  const auto& c = f_.weights().config;
  const int64_t P = static_cast<int64_t>(prompt.size()), V = c.vocab_size, S = c.hc_mult * c.hidden_size;
  const int64_t b = state_.length(), e = std::min(P, b + budget), n = e - b;
  std::vector<float> streams(static_cast<size_t>(n * S));
  // Main model rows b..e-1; logits only for the last prompt token (results do not depend
  // on the chunking).
  if (e < P) {
    f_.step(state_, prompt.subspan(static_cast<size_t>(b), static_cast<size_t>(n)), nullptr, streams.data());
  } else {
    std::vector<float> logits(static_cast<size_t>(V));
    if (n > 1) f_.step(state_, prompt.subspan(static_cast<size_t>(b), static_cast<size_t>(n - 1)), nullptr, streams.data());
    f_.step(state_, prompt.last(1), logits.data(), streams.data() + (n - 1) * S);
    pending_ = params_.temperature <= 0.0f ? argmax(logits) : sample_from(sampling_distribution(logits, params_), rng_);
  }
  // MTP rows p = b..min(e, P-1)-1: main streams at p and prompt token p+1.
  const int64_t m = std::min(e, P - 1) - b;
  if (m > 0) {
    f_.mtp_step(state_, 0, std::span<const float>(streams).first(static_cast<size_t>(m * S)),
                prompt.subspan(static_cast<size_t>(b + 1), static_cast<size_t>(m)), nullptr, nullptr);
  }
  if (e == P) {
    // Row P-1 (main streams at P-1 and the first generated token) is the first draft step.
    draft_logits_.assign(static_cast<size_t>(V), 0.0f);
    draft_streams_.assign(static_cast<size_t>(S), 0.0f);
    const int32_t next[1] = {pending_};
    f_.mtp_step(state_, 0, std::span<const float>(streams).last(static_cast<size_t>(S)), next, draft_logits_.data(),
                draft_streams_.data());
  }
  return n;
}

void SpeculativeDecoder::round(std::vector<int32_t>& out, int max_drafts) {
  if (pending_ < 0) fail(ErrorKind::Usage, "speculative decoding: round before prefill");
  const auto& c = f_.weights().config;
  const int64_t V = c.vocab_size, S = c.hc_mult * c.hidden_size, N = state_.length();
  const int K = std::clamp(max_drafts, 0, k_);
  const bool greedy = params_.temperature <= 0.0f;

  // 1. Draft.
  std::vector<int32_t> drafts(static_cast<size_t>(K));
  std::vector<std::vector<double>> q;
  std::vector<float> logits = draft_logits_, streams = draft_streams_, out_streams(static_cast<size_t>(S));
  for (int i = 0; i < K; ++i) {
    if (i > 0) {
      // Step i+1 (temporary row at position N+i-1): own streams, own previous draft.
      f_.mtp_step(state_, 0, streams, std::span<const int32_t>(drafts).subspan(static_cast<size_t>(i - 1), 1),
                  logits.data(), out_streams.data());
      streams.swap(out_streams);
    }
    if (greedy) {
      drafts[static_cast<size_t>(i)] = argmax(logits);
    } else {
      q.push_back(sampling_distribution(logits, params_));
      drafts[static_cast<size_t>(i)] = sample_from(q.back(), rng_);
    }
  }
  if (K > 1) f_.truncate_mtp(state_, 0, N);
  if (hook_ && K > 0) hook_(N + 1, drafts);

  // 2. Verify the K+1 positions in one main-model step.
  std::vector<int32_t> input{pending_};
  input.insert(input.end(), drafts.begin(), drafts.end());
  std::vector<float> vlogits(static_cast<size_t>((K + 1) * V)), vstreams(static_cast<size_t>((K + 1) * S));
  f_.step(state_, input, vlogits.data(), vstreams.data());

  // 3. Accept.
  const Verdict v = greedy ? verify_greedy(vlogits, V, drafts) : verify_sampled(vlogits, V, q, drafts, params_, rng_);

  // 4. Roll back the rejected positions.
  f_.truncate(state_, N + v.accepted + 1);

  ++stats_.rounds;
  for (int i = 0; i < K; ++i) ++stats_.proposed[static_cast<size_t>(i)];
  for (int i = 0; i < v.accepted; ++i) ++stats_.accepted[static_cast<size_t>(i)];
  stats_.accepted_drafts += v.accepted;
  stats_.emitted += v.accepted + 1;
  out.insert(out.end(), drafts.begin(), drafts.begin() + v.accepted);
  out.push_back(v.next);

  // 5. MTP catch-up on the verified streams: rows N .. N+accepted.
  const std::span<const float> vs(vstreams);
  if (v.accepted > 0) {
    f_.mtp_step(state_, 0, vs.first(static_cast<size_t>(v.accepted * S)),
                std::span<const int32_t>(drafts).first(static_cast<size_t>(v.accepted)), nullptr, nullptr);
  }
  const int32_t next[1] = {v.next};
  f_.mtp_step(state_, 0, vs.subspan(static_cast<size_t>(v.accepted * S), static_cast<size_t>(S)), next,
              draft_logits_.data(), draft_streams_.data());
  pending_ = v.next;
}

GenerateResult generate_plain(const model::Forward& forward, std::span<const int32_t> prompt, int max_tokens,
                              const SamplingParams& params, int32_t eos) {
  if (prompt.empty()) fail(ErrorKind::Usage, "generate: empty prompt");
  const int64_t V = forward.weights().config.vocab_size;
  GenerateResult r;
  Sampler sampler(params);
  auto state = forward.new_state();
  std::vector<float> logits(static_cast<size_t>(V));
  auto t0 = std::chrono::steady_clock::now();
  if (prompt.size() > 1) forward.step(state, prompt.first(prompt.size() - 1), nullptr, nullptr);
  forward.step(state, prompt.last(1), logits.data(), nullptr);
  r.prefill_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t next = sampler.next(logits);
    r.tokens.push_back(next);
    if (eos >= 0 && next == eos) {
      r.stop = "eos";
      break;
    }
    if (i + 1 == max_tokens) break;
    const int32_t tok[1] = {next};
    forward.step(state, tok, logits.data(), nullptr);
  }
  r.decode_s = seconds_since(t0);
  return r;
}

GenerateResult generate_speculative(const model::Forward& forward, std::span<const int32_t> prompt, int max_tokens,
                                    const SamplingParams& params, int k, int32_t eos) {
  GenerateResult r;
  SpeculativeDecoder dec(forward, k, params);
  auto t0 = std::chrono::steady_clock::now();
  const int32_t first = dec.prefill(prompt);
  r.prefill_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> emitted{first};
  while (max_tokens > 0) {
    bool done = false;
    for (int32_t t : emitted) {
      r.tokens.push_back(t);
      if (eos >= 0 && t == eos) {
        r.stop = "eos";
        done = true;
        break;
      }
      if (static_cast<int>(r.tokens.size()) == max_tokens) {
        done = true;
        break;
      }
    }
    if (done) break;
    emitted.clear();
    // No more drafts than tokens still wanted after the main model's own one.
    dec.round(emitted, std::min(k, max_tokens - static_cast<int>(r.tokens.size()) - 1));
  }
  r.decode_s = seconds_since(t0);
  r.stats = dec.stats();
  return r;
}

}  // namespace kiln::runtime
