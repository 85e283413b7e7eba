// The CPU reference forward of DeepSeek-V4 (dsv4-model.md section 2), in fp32 from
// exactly dequantized weights, matching transformers' DeepseekV4ForCausalLM.
//
// A DecodeState holds everything one sequence needs to continue: per layer the
// sliding-window K=V rows, each compressor's unfinished window of (kv, gate) rows and
// the overlap rows, the compressed KV entries and the indexer keys emitted so far, and
// the token count; the same for each MTP block. step() feeds any number of tokens at
// the next positions, so a prompt can be fed at once, in chunks, or one token at a
// time, and the logits at position t do not depend on which.
//
// Rollback (speculative decoding): Forward::truncate / truncate_mtp drop the last tokens
// fed and leave exactly the state that feeding only the kept tokens would have left, at
// a bounded cost (no recompute): the state holds what model/decode_contract.h says (the
// CPU's rings keep kMaxRollback rows beyond the window and the unfinished compressor
// blocks), so a truncation only resets counters and pops the compressed entries and
// indexer keys emitted for removed positions. The limit: a state can go back to any
// length >= high_water - kMaxRollback, where high_water is the furthest length it ever
// reached (truncation does not lower it), so K <= kMaxRollback - 1 drafts per round
// verify-and-roll-back safely; going further fails with a kiln::Error.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/model/decode_contract.h"
#include "kiln/model/tensor_parallel.h"
#include "kiln/model/weights.h"

namespace kiln::ops::cpu {
struct AttentionState;  // ops/cpu/attention_state.h
}

namespace kiln::model {

// One layer's decode state of one sequence on the CPU.
using LayerState = ops::cpu::AttentionState;

class DecodeState {
 public:
  DecodeState();
  ~DecodeState();
  DecodeState(DecodeState&&) noexcept;
  DecodeState& operator=(DecodeState&&) noexcept;
  DecodeState(const DecodeState&);  // deep copy (used to compare feeding modes)

  int64_t length() const { return length_; }          // tokens fed to the main model
  int64_t mtp_length(int m) const;                    // positions fed to MTP block m
  int64_t high_water() const { return high_; }        // furthest length() reached
  int64_t mtp_high_water(int m) const;
  const std::vector<int32_t>& tokens() const { return tokens_; }

  // For tests: "" when this state and `other` hold the same content (bitwise), else a
  // description of the first difference. Compared field by field for the main model and
  // every MTP block: lengths, tokens, per layer the window rows a later step can still
  // read (positions both rings hold), per compressor the fed length, entry count, every
  // compressed entry / indexer key, the pending (kv, score) rows of the unfinished block,
  // the overlap rows of the last finished block, and the raw rows both rings hold.
  // High-water marks are not compared (they only bound a later rollback).
  std::string difference(const DecodeState& other) const;

 private:
  friend class Forward;
  int64_t length_ = 0, high_ = 0;
  std::vector<int32_t> tokens_;
  // Per tensor-parallel rank (one rank: the whole model), rank-major: rank r's layer l is
  // layers_[r * layers + l], its MTP block m mtp_[r * blocks + m].
  std::vector<std::unique_ptr<LayerState>> layers_;  // backbone layers
  std::vector<std::unique_ptr<LayerState>> mtp_;     // one per MTP block
  std::vector<int64_t> mtp_length_, mtp_high_;
};

class Forward {
 public:
  // threads: worker threads for matrix products (0 = hardware concurrency).
  // fuse: products of the same input run as one pass of the pool (an expert's w1 and w3,
  // attention wq_a and wkv, a compressor's wkv and wgate, the indexer's wq_b and
  // weights_proj), each weight in its own form and scales; the results are bitwise the
  // same either way (false exists to test exactly that).
  // parallel: with world > 1, every pass runs as that many tensor-parallel ranks
  // (model/tensor_parallel.h), one thread each with threads / world pool threads, over
  // shards made from `w` here and meeting in an in-process communicator; a state holds
  // every rank's copy of the decode state. The logits equal one rank's up to the order of
  // the sums over the ranks. (block_with runs the whole weights, on one rank.) Passes
  // from several threads run one at a time (the ranks share one communicator).
  explicit Forward(const Weights& w, int threads = 0, bool fuse = true, ParallelLayout parallel = {});
  ~Forward();

  const Weights& weights() const { return w_; }
  // Resident weight bytes (linear + plain) each rank holds (one rank: the whole model's).
  std::vector<uint64_t> rank_weight_bytes() const;
  DecodeState new_state() const;

  // Feeds tokens at positions state.length() .. state.length()+T-1.
  // logits: [T, vocab] or nullptr. streams: the last layer's residual streams before
  // hc_head, [T, hc_mult * hidden], or nullptr (the MTP block's input).
  void step(DecodeState& state, std::span<const int32_t> tokens, float* logits, float* streams) const;

  // One sequence's part of a batched step.
  struct StepSeq {
    DecodeState* state = nullptr;
    std::span<const int32_t> tokens;  // fed at state->length() ..
  };
  // Feeds several sequences in one pass: the rows are every sequence's tokens, in order,
  // and each weight is read once for all of them (the attention core reads each row's own
  // state). Every row's results are bitwise those of feeding its sequence alone. logits:
  // [R, vocab] for the rows listed in logit_rows (all rows when empty), or nullptr;
  // streams: [rows, hc_mult * hidden] or nullptr. A state may appear once.
  // features (a DSpark drafter's input, model/dspark.h): [rows, targets * hidden], per row
  // the mean over the hc streams of the output of each config.dspark->target_layer_ids
  // layer, concatenated in that order; or nullptr.
  void step(std::span<const StepSeq> seqs, std::span<const int64_t> logit_rows, float* logits, float* streams,
            float* features = nullptr) const;

  // A drafter's V4 block (model/dspark.h) on streams X [T, hc_mult * hidden], updated in
  // place: mHC, attn_norm, then `attention` (out [T, hidden] from its normed input
  // [T, hidden]) in place of the block's own, then the block's MoE as the backbone runs it.
  using AttentionFn = std::function<void(const float* x, int64_t T, float* out)>;
  void block_with(const Block& b, std::vector<float>& X, int64_t T, std::span<const int32_t> tokens,
                  const AttentionFn& attention) const;

  // MTP block m, fed in sequence like the main model: row i takes the main model's
  // streams at position p_i = state.mtp_length(m) + i (those returned by step() for that
  // position) and the token at p_i + 1, and runs at position p_i (DeepSeek's MTPBlock and
  // vLLM's proposer use the target hidden state's position). logits: [T, vocab];
  // out_streams: the block's own output streams [T, hc_mult * hidden] (fed back for
  // multi-step drafting), or nullptr.
  void mtp_step(DecodeState& state, int m, std::span<const float> streams, std::span<const int32_t> next_tokens,
                float* logits, float* out_streams) const;

  // One sequence's part of a batched MTP step: rows of streams and next tokens as above.
  struct MtpSeq {
    DecodeState* state = nullptr;
    std::span<const float> streams;
    std::span<const int32_t> next_tokens;
  };
  // MTP block m over several sequences in one pass (as the batched step above).
  void mtp_step(int m, std::span<const MtpSeq> seqs, std::span<const int64_t> logit_rows, float* logits,
                float* out_streams) const;

  // Rollback: drop the main model's tokens at positions >= new_length, leaving the
  // state bitwise equal (DecodeState::difference) to feeding only the first new_length
  // tokens. Needs high_water() - kMaxRollback <= new_length <= length(); otherwise
  // throws kiln::Error (Usage) and leaves the state unchanged. MTP states are untouched.
  void truncate(DecodeState& state, int64_t new_length) const;
  // The same for MTP block m's own state (window ring, compressors, mtp_length).
  void truncate_mtp(DecodeState& state, int m, int64_t new_length) const;

 private:
  struct Impl;
  const Weights& w_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::model
