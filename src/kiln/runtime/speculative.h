// Exact speculative decoding with the model's own MTP block as the drafter: the round the
// engine (engine.h) runs for every speculative sequence, and its acceptance rules.
//
// A round, with N = the main model's length and `pending`
// the newest token (sampled, not yet fed to the main model):
//  1. Draft K tokens with MTP block 0 used K times. Step 1 is the row at position N-1:
//     the main model's last-layer streams at N-1 and `pending`; it was computed at the
//     end of the previous round (or of the prefill) and its logits / output streams kept.
//     Step i > 1 runs at position N+i-2 on the block's own output streams of step i-1 and
//     its own previous draft token: the recursion of DeepSeek-V3's sequential MTP modules
//     and of vLLM's EagleProposer.propose (vllm/v1/spec_decode/eagle.py, method
//     "deepseek_mtp": later draft steps feed back the draft model's returned hidden
//     states with the previous draft token ids at positions + 1), which is what we follow.
//     Steps 2..K write temporary rows into the MTP state; the catch-up (5) feeds again
//     from position N over them (rollback, backend.h).
//  2. Verify: ONE main-model step over [pending, d_1 .. d_K] at positions N .. N+K.
//  3. Accept. Temperature 0: the longest prefix of drafts equal to the main model's
//     argmax, then the main model's own argmax after it (plain greedy, exactly).
//     Temperature > 0: speculative rejection sampling (Leviathan et al. 2023, "Fast
//     Inference from Transformers via Speculative Decoding"; Chen et al. 2023): draft d_i
//     drawn from q_i, accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first
//     rejection the token is drawn from normalise(max(0, p_i - q_i)); if all K are
//     accepted a bonus token is drawn from p_{K+1}. p and q are sampling_distribution()
//     of the target and draft logits with the same temperature / top-k / top-p, so every
//     emitted token is distributed exactly as Sampler would draw it from the main model.
//  4. Roll back: the next pass feeds the main model from N + accepted + 1 (pending and
//     the accepted drafts stay fed).
//  5. MTP catch-up. The MTP block's committed rows are only ever computed from the main
//     model's verified streams and accepted tokens: the rows at positions N .. N+accepted
//     (streams of verify rows 0..accepted, tokens d_1..d_accepted and the new pending
//     token) are fed; the last is the next round's draft step 1 (logits / streams kept).
// Invariant between rounds: main length == MTP length == (tokens so far) - 1, and the
// state equals plain sequential feeding of the same tokens to the main model and of
// rows (main streams at p, token p+1) to the MTP block (tests/runtime checks this).
// Rollback depth used: K for the main model, K-1 for the MTP block (K <= 4 <
// model::kMaxRollback).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kiln/runtime/sampler.h"

namespace kiln::runtime {

inline constexpr int kMaxDrafts = 4;

// Acceptance counters, per draft position i (0 = the first draft of a round).
struct DraftStats {
  int k = 0;
  std::vector<int64_t> proposed, accepted;  // rounds that drafted / accepted position i
  int64_t rounds = 0;                       // verification rounds
  int64_t accepted_drafts = 0;              // drafts accepted, all positions
  int64_t emitted = 0;                      // tokens emitted by rounds (accepted + 1 each)
  double acceptance_rate(size_t i) const {
    return proposed[i] ? static_cast<double>(accepted[i]) / static_cast<double>(proposed[i]) : 0.0;
  }
  // Tokens per verification round: accepted drafts + the main model's own token.
  double mean_accepted_length() const { return rounds ? static_cast<double>(emitted) / static_cast<double>(rounds) : 0.0; }
};

// How many drafts a round keeps, and the token the main model adds after them.
struct Verdict {
  int accepted = 0;
  int32_t next = 0;
};

// Temperature 0: target_logits [(K+1), vocab] from the verify step; drafts [K].
Verdict verify_greedy(std::span<const float> target_logits, int64_t vocab, std::span<const int32_t> drafts);
// The same from the argmax of each of the K+1 target rows.
Verdict verify_greedy(std::span<const int32_t> target_argmax, std::span<const int32_t> drafts);

// Temperature > 0: rejection sampling as above. target_logits [(K+1), vocab]; q[i] the
// draft distribution d_i was drawn from (sampling_distribution of the draft logits), or q
// empty: every draft is a point mass (drafts picked by argmax, not drawn), so d_i is
// accepted with probability p(d_i) and a rejection draws from p without d_i, renormalised.
// Either way the tokens follow the main model's distribution.
Verdict verify_sampled(std::span<const float> target_logits, int64_t vocab, const std::vector<std::vector<double>>& q,
                       std::span<const int32_t> drafts, const SamplingParams& params, std::mt19937_64& rng);

}  // namespace kiln::runtime
