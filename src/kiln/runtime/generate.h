// One request decoded to the end on the engine (engine.h): what `kiln generate` and the
// tests run. Plain decoding and MTP speculative decoding go through the same engine as
// `kiln serve`, on whichever backend.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kiln/model/forward.h"
#include "kiln/runtime/backend.h"
#include "kiln/runtime/sampler.h"
#include "kiln/runtime/speculative.h"

namespace kiln::runtime {

struct GenerateResult {
  std::vector<int32_t> tokens;
  std::string stop = "length";  // "length" | "eos"
  double prefill_s = 0.0, decode_s = 0.0;  // submit to first token; first token to the end
  DraftStats stats;                        // speculative only
  double decode_tokens_per_s() const {
    return tokens.size() > 1 && decode_s > 0 ? static_cast<double>(tokens.size() - 1) / decode_s : 0.0;
  }
};

// max_tokens tokens (0: none) after `prompt`, stopping after eos (eos < 0: never early).
// k = 0: plain decoding; 1..kMaxDrafts: k MTP drafts per round (the same tokens at
// temperature 0, the same distribution otherwise). Runs an engine of one sequence.
// dspark_min_survival, sampled_drafts_by_argmax: EngineOptions'.
GenerateResult generate(Backend& backend, std::span<const int32_t> prompt, int max_tokens, const SamplingParams& params,
                        int k, int32_t eos, double dspark_min_survival = 0.0, bool sampled_drafts_by_argmax = false);

// The same on the CPU reference forward (a one-slot CPU backend with the context the
// request needs, whatever the model's max_position_embeddings).
GenerateResult generate_plain(const model::Forward& forward, std::span<const int32_t> prompt, int max_tokens,
                              const SamplingParams& params, int32_t eos);
GenerateResult generate_speculative(const model::Forward& forward, std::span<const int32_t> prompt, int max_tokens,
                                    const SamplingParams& params, int k, int32_t eos);

}  // namespace kiln::runtime
