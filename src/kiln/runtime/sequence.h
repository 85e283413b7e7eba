// One sequence being generated, driven step by step by a scheduler: its prompt is fed in
// chunks (prefill), then each decode step adds one token (plain decoding) or one
// draft / verify round of MTP speculative decoding (1 .. k+1 tokens). The tokens equal
// those of generate_plain / generate_speculative for the same prompt and parameters,
// whatever the chunking and whatever other sequences run in between: each sequence owns
// its decode state, sampler and random generator.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "kiln/model/forward.h"
#include "kiln/runtime/sampler.h"
#include "kiln/runtime/speculative.h"

namespace kiln::runtime {

class SequenceDecoder {
 public:
  // mtp_k: 0 for plain decoding, else 1..kMaxDrafts drafts per round (the model needs an
  // MTP block). The prompt must be non-empty with ids inside the vocabulary.
  SequenceDecoder(const model::Forward& forward, std::vector<int32_t> prompt, SamplingParams params, int mtp_k);
  ~SequenceDecoder();
  SequenceDecoder(const SequenceDecoder&) = delete;
  SequenceDecoder& operator=(const SequenceDecoder&) = delete;

  int64_t prompt_length() const { return static_cast<int64_t>(prompt_.size()); }
  int64_t prompt_fed() const { return fed_; }
  bool prefilled() const { return fed_ == prompt_length(); }

  // Feeds the next min(budget, rest) prompt tokens (budget >= 1) and returns how many.
  // When the prompt is complete, the first generated token is appended to `out`.
  int64_t prefill(int64_t budget, std::vector<int32_t>& out);

  // After prefill: appends the next 1 .. min(max_new, k+1) tokens (max_new >= 1).
  void decode(std::vector<int32_t>& out, int max_new);

  // Speculative decoding's acceptance counters (nullptr for plain decoding).
  const DraftStats* draft_stats() const;

 private:
  const model::Forward& f_;
  std::vector<int32_t> prompt_;
  int64_t fed_ = 0;
  // Plain decoding.
  std::optional<Sampler> sampler_;
  std::optional<model::DecodeState> state_;
  std::vector<float> logits_;
  int32_t last_ = -1;  // newest token, not yet fed
  // Speculative decoding.
  std::unique_ptr<SpeculativeDecoder> spec_;
};

}  // namespace kiln::runtime
