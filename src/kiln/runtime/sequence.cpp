#include "kiln/runtime/sequence.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln::runtime {

SequenceDecoder::SequenceDecoder(const model::Forward& forward, std::vector<int32_t> prompt, SamplingParams params,
                                 int mtp_k)
    : f_(forward), prompt_(std::move(prompt)) {
  const int64_t V = forward.weights().config.vocab_size;
  if (prompt_.empty()) fail(ErrorKind::Usage, "empty prompt");
  for (size_t i = 0; i < prompt_.size(); ++i) {
    if (prompt_[i] < 0 || prompt_[i] >= V) {
      fail(ErrorKind::Usage, "prompt token {} is {}, outside the vocabulary [0, {})", i, prompt_[i], V);
    }
  }
  if (mtp_k > 0) {
    spec_ = std::make_unique<SpeculativeDecoder>(forward, mtp_k, params);
  } else {
    sampler_.emplace(params);
    state_.emplace(forward.new_state());
    logits_.resize(static_cast<size_t>(V));
  }
}

SequenceDecoder::~SequenceDecoder() = default;

int64_t SequenceDecoder::prefill(int64_t budget, std::vector<int32_t>& out) {
  if (prefilled()) fail(ErrorKind::Usage, "prefill: the prompt is already fed");
  if (budget < 1) fail(ErrorKind::Usage, "prefill budget {} (expected >= 1)", budget);
  const std::span<const int32_t> prompt(prompt_);
  int64_t n = 0;
  if (spec_) {
    n = spec_->prefill_some(prompt, budget);
    fed_ += n;
    if (prefilled()) out.push_back(spec_->pending());
    return n;
  }
  const int64_t P = prompt_length();
  n = std::min(budget, P - fed_);
  const int64_t end = fed_ + n;
  // Logits only for the last prompt token, as generate_plain.
  if (end < P) {
    f_.step(*state_, prompt.subspan(static_cast<size_t>(fed_), static_cast<size_t>(n)), nullptr, nullptr);
  } else {
    if (n > 1) f_.step(*state_, prompt.subspan(static_cast<size_t>(fed_), static_cast<size_t>(n - 1)), nullptr, nullptr);
    f_.step(*state_, prompt.last(1), logits_.data(), nullptr);
    last_ = sampler_->next(logits_);
    out.push_back(last_);
  }
  fed_ = end;
  return n;
}

void SequenceDecoder::decode(std::vector<int32_t>& out, int max_new) {
  if (!prefilled()) fail(ErrorKind::Usage, "decode before the prompt is fed");
  if (max_new < 1) fail(ErrorKind::Usage, "decode: max_new {} (expected >= 1)", max_new);
  if (spec_) {
    // No more drafts than tokens still wanted after the main model's own one.
    spec_->round(out, std::min(spec_->k(), max_new - 1));
    return;
  }
  const int32_t tok[1] = {last_};
  f_.step(*state_, tok, logits_.data(), nullptr);
  last_ = sampler_->next(logits_);
  out.push_back(last_);
}

const DraftStats* SequenceDecoder::draft_stats() const { return spec_ ? &spec_->stats() : nullptr; }

}  // namespace kiln::runtime
