// The CPU reference forward of DeepSeek-V4 (dsv4-model.md section 2), in fp32 from
// exactly dequantized weights, matching transformers' DeepseekV4ForCausalLM.
//
// A DecodeState holds everything one sequence needs to continue: per layer the
// sliding-window K=V rows, each compressor's unfinished window of (kv, gate) rows and
// the overlap rows, the compressed KV entries and the indexer keys emitted so far, and
// the token count; the same for each MTP block. step() feeds any number of tokens at
// the next positions, so a prompt can be fed at once, in chunks, or one token at a
// time, and the logits at position t do not depend on which.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kiln/model/weights.h"

namespace kiln::model {

struct LayerState;  // defined in forward.cpp

class DecodeState {
 public:
  DecodeState();
  ~DecodeState();
  DecodeState(DecodeState&&) noexcept;
  DecodeState& operator=(DecodeState&&) noexcept;
  DecodeState(const DecodeState&);  // deep copy (used to compare feeding modes, and by rollback later)

  int64_t length() const { return length_; }          // tokens fed to the main model
  int64_t mtp_length(int m) const;                    // positions fed to MTP block m

 private:
  friend class Forward;
  int64_t length_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<std::unique_ptr<LayerState>> layers_;  // backbone layers
  std::vector<std::unique_ptr<LayerState>> mtp_;     // one per MTP block
  std::vector<int64_t> mtp_length_;
};

class Forward {
 public:
  // threads: worker threads for matrix products (0 = hardware concurrency).
  explicit Forward(const Weights& w, int threads = 0);
  ~Forward();

  const Weights& weights() const { return w_; }
  DecodeState new_state() const;

  // Feeds tokens at positions state.length() .. state.length()+T-1.
  // logits: [T, vocab] or nullptr. streams: the last layer's residual streams before
  // hc_head, [T, hc_mult * hidden], or nullptr (the MTP block's input).
  void step(DecodeState& state, std::span<const int32_t> tokens, float* logits, float* streams) const;

  // MTP block m, fed in sequence like the main model: row i takes the main model's
  // streams at position p_i = state.mtp_length(m) + i (those returned by step() for that
  // position) and the token at p_i + 1, and runs at position p_i (DeepSeek's MTPBlock and
  // vLLM's proposer use the target hidden state's position). logits: [T, vocab];
  // out_streams: the block's own output streams [T, hc_mult * hidden] (fed back for
  // multi-step drafting), or nullptr.
  void mtp_step(DecodeState& state, int m, std::span<const float> streams, std::span<const int32_t> next_tokens,
                float* logits, float* out_streams) const;

 private:
  struct Impl;
  const Weights& w_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::model
