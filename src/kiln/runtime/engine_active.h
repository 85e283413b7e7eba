// The engine's view of one running sequence (one choice of a request) and the outputs a
// pass is asked for: shared by engine.cpp (scheduling, passes) and engine_output.cpp
// (what the host does with a pass's results). Internal to the runtime.
#pragma once

#include <optional>

#include "kiln/runtime/json_schema.h"
#include <random>
#include <span>
#include <vector>

#include "kiln/runtime/engine.h"

namespace kiln::runtime {

namespace engine_detail {

using Clock = RequestHandle::Clock;

inline std::span<const float> row_of(const std::vector<float>& m, int64_t i, int64_t width) {
  return std::span<const float>(m).subspan(static_cast<size_t>(i * width), static_cast<size_t>(width));
}

// The outputs one pass is asked for: logits rows and argmax rows.
struct Wants {
  std::vector<int32_t> logits_rows, argmax_rows;
  void clear() {
    logits_rows.clear();
    argmax_rows.clear();
  }
  // Index of row r's result in the argmax output (by_argmax) or the logits output.
  int add(int32_t r, bool by_argmax) {
    auto& v = by_argmax ? argmax_rows : logits_rows;
    v.push_back(r);
    return static_cast<int>(v.size()) - 1;
  }
  Backend::Outputs outputs(std::vector<float>& logits, std::vector<int32_t>& argmax, int64_t vocab) const {
    logits.resize(logits_rows.size() * static_cast<size_t>(vocab));
    argmax.resize(argmax_rows.size());
    return {logits_rows, logits.data(), argmax_rows, argmax.data()};
  }
};

}  // namespace engine_detail

struct Engine::Active {
  std::shared_ptr<RequestHandle> handle;
  GenerationRequest request;  // sampling.seed is this choice's (the request's + choice)
  int choice = 0;             // index among the request's choices
  engine_detail::Clock::time_point last_token;
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
  // Choices of one request (n > 1): choice 0 feeds the prompt; the others wait, each in
  // its own slot, until the prompt is fed, then take a copy of choice 0's slot (fork).
  std::vector<std::unique_ptr<Active>> followers;  // queued: choices 1..n-1
  std::vector<Active*> forks;                      // running choice 0: those not forked yet
  bool awaiting_fork = false;                      // a choice > 0 before its fork
  std::vector<TokenLogprob> prompt_lp;             // prompt_logprobs, gathered chunk by chunk
  // This step.
  int K = 0;  // drafts this round
  std::vector<int32_t> drafts;
  std::vector<std::vector<double>> q;
  int mtp_row = -1;                  // its row in the last MTP pass
  int main_row0 = -1, out0 = -1;     // its first row in the main pass and in the pass's outputs
  int lp0 = -1;                      // prompt_logprobs: the chunk's first row in the logits output
  int64_t chunk = 0, base = 0;       // prompt tokens fed this step; length before the step
  std::vector<int32_t> out;          // tokens emitted this step
  std::vector<TokenLogprob> out_lp;  // and their logprobs (request.logprobs >= 0)
  bool done = false;                 // ends this step without a token (max_tokens 0)

  // A round's drafting starts: K draft slots, no draft distributions yet, the constraint
  // state before draft 1.
  void start_round() {
    drafts.assign(static_cast<size_t>(K), 0);
    q.clear();
    draft_states.clear();
    if (matcher) draft_states.push_back(*matcher);
  }
  // Only the first `keep` drafts of this round are verified (the others are dropped with
  // their distributions and constraint states).
  void truncate_round(int keep) {
    if (keep >= K) return;
    K = keep;
    drafts.resize(static_cast<size_t>(keep));
    if (q.size() > static_cast<size_t>(keep)) q.resize(static_cast<size_t>(keep));
    if (draft_states.size() > static_cast<size_t>(keep) + 1) draft_states.erase(draft_states.begin() + keep + 1, draft_states.end());
  }
  bool decoding() const { return pending >= 0; }
  int64_t prompt_length() const { return static_cast<int64_t>(request.prompt.size()); }
  bool greedy() const { return request.sampling.temperature <= 0.0f; }
  bool wants_logprobs() const { return request.logprobs >= 0; }
  // Whether its main-model rows are asked for the device's argmax rather than logits:
  // greedy with nothing else to compute from the row.
  bool by_argmax() const { return greedy() && !wants_logprobs() && !request.prompt_logprobs && !constrained(); }
  // Whether its MTP rows (drafts) are asked for the argmax rather than logits: greedy, or
  // sampled with point drafts (EngineOptions::sampled_drafts_by_argmax), unconstrained.
  bool draft_by_argmax() const { return (greedy() || point_drafts) && !constrained(); }
  bool point_drafts = false;
  bool constrained() const { return request.constraint != nullptr; }
  // Structured output: the matcher after the text so far (the pending token included), and
  // during a round the states after each draft (draft_states[i]: before draft i + 1).
  std::optional<JsonMatcher> matcher;
  std::vector<JsonMatcher> draft_states;
  std::vector<uint8_t> mask_buf;
  std::vector<float> masked_buf;
  // row under the constraint in state m (the row itself when unconstrained).
  std::span<const float> constrain(std::span<const float> row, const JsonMatcher* m);
  // Draft i of this round from the MTP block's row (its logits, or its argmax when drafts
  // go by argmax); records q and the draft's constraint state.
  int32_t pick_draft(int i, std::span<const float> row, int32_t row_argmax);
  // The next token from output `at` of a main pass (an argmax row when by_argmax, else a
  // logits row): argmax when greedy, else a draw (plain: the Sampler; speculative: the
  // round's rng). Records its logprob when asked.
  int32_t choose(const std::vector<float>& logits, const std::vector<int32_t>& argmax, int at, int64_t V);
  void record_logprob(std::span<const float> row, int32_t token);
};

}  // namespace kiln::runtime
