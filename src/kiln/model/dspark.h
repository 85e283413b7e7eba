// DeepSeek's DSpark drafter (V4-Flash-DSpark, V4-Flash-0731, V4-Pro-0813) on the CPU
// reference backend, in fp32 like model/forward.h (../shared/docs/dspark.md sections 1.3-1.7;
// oracle: tools/make_dspark_fixture.py, written from DeepSeek's and vLLM's code).
//
// The drafter is `stages` sliding-window V4 blocks (mHC, their own score-routed MoE) stored
// under mtp.0 .. mtp.{stages-1}. It reads the target's features: for every committed
// position p, F[p] = the mean over the hc streams of the outputs of the backbone layers
// dspark_target_layer_ids, concatenated (Forward::step's `features` output). Per sequence a
// DSparkState keeps, per stage, a ring of the main-stream KV rows of the last
// `sliding_window` committed positions: kv_norm_s(wkv_s(main_x[p])) rotated at p, with
// main_x = main_norm(main_proj(F[p])). Only committed positions are ever written (commit),
// so speculative decoding never rolls the drafter back.
//
// A draft round at anchor position N (positions 0..N-1 committed, `anchor` = the token at
// N, not yet fed to the target): the block [anchor, noise x (B-1)] at positions N..N+B-1
// runs through the stages; every block row attends to the ring rows of positions
// max(0, N-W)..N-1 and to all B block rows (bidirectional inside the block, DeepSeek's
// get_dspark_topk_idxs); hc_head gives the pre-norm hidden h; base logits
// U_k = head(norm(h_k)) with the target's head. Then the sequential Markov loop: prev_0 =
// anchor, adjusted_k = U_k + markov_w2 . markov_w1[prev_k], d_{k+1} chosen from adjusted_k
// (the caller's choice: argmax, or a draw), prev_{k+1} = d_{k+1}; confidence_k =
// sigmoid(proj([h_k ; markov_w1[prev_k]])). Draft d_{k+1} is the token at N+1+k.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/model/weights.h"

namespace kiln {
class Checkpoint;
struct Plan;
}  // namespace kiln

namespace kiln::model {

class Forward;

struct DSparkWeights {
  DSparkConfig config;
  Linear main_proj;               // [H, targets * H]
  std::vector<float> main_norm;   // [H]
  std::vector<Block> stages;      // SWA attention, score-routed MoE
  std::vector<float> norm;        // [H] (last stage)
  HyperHead hc_head;              // (last stage)
  Tensor markov_w1;               // [V, rank] (an embedding)
  Linear markov_w2;               // [V, rank]
  std::vector<float> confidence;  // [H + rank]; empty when the checkpoint has no confidence head
};

// f(linear, role) for every linear module of the drafter (D: DSparkWeights or const), with
// the role its numerics follow (ops/linear_numerics.h; the Markov head's product is fp32
// like the head it adds to).
template <class D, class F>
void for_each_dspark_linear(D& d, F&& f) {
  f(d.main_proj, ops::LinearRole::Quantized);
  for (auto& b : d.stages) for_each_block_linear(b, f);
  f(d.markov_w2, ops::LinearRole::Fp32);
}

// The drafter the plan found (stages, linears as `opt` says; with opt.skip_linears the
// linears hold no bytes, for a backend that uploads them from the mapped shards itself
// (the CUDA drafter); such weights cannot run the CPU drafter).
// Error(Invalid) naming the checkpoint and what is wrong when the config declares no
// drafter or the plan is not loadable (a drafter tensor missing or misshapen is a plan
// error naming the tensor).
DSparkWeights load_dspark_weights(const Checkpoint& ckpt, const Plan& plan, const LoadOptions& opt = {});

// One sequence's drafter state: per stage the ring of main-stream KV rows of the last
// `window` committed positions.
class DSparkState {
 public:
  int64_t length() const { return length_; }  // committed positions written
  // "" when both hold the same rings (the rows a later draft can read) and length, else
  // the first difference.
  std::string difference(const DSparkState& other) const;

 private:
  friend class DSparkDrafter;
  int64_t length_ = 0, window_ = 0, dim_ = 0;
  std::vector<std::vector<float>> rings_;  // [stage][window * dim], slot = position % window
};

class DSparkDrafter {
 public:
  // target: the backbone's forward (embedding, head, the MoE of the stages' blocks).
  DSparkDrafter(const Forward& target, const DSparkWeights& w, int threads = 0);
  ~DSparkDrafter();

  const DSparkWeights& weights() const { return w_; }
  int64_t block_size() const { return w_.config.block_size; }
  int64_t feature_width() const;  // targets * hidden: one row of Forward::step's features
  DSparkState new_state() const;

  // Writes the committed positions state.length() .. + rows - 1 of each sequence from
  // its target features [rows, feature_width()] (all sequences' rows in one pass).
  struct CommitSeq {
    DSparkState* state = nullptr;
    std::span<const float> features;
  };
  void commit(std::span<const CommitSeq> seqs) const;

  // One draft round per sequence at its anchor position state.length() (see above).
  struct DraftSeq {
    const DSparkState* state = nullptr;
    int32_t anchor = 0;
    int drafts = 0;  // Markov steps to run: 0 .. block_size
  };
  // choose(seq, k, adjusted_k) returns d_{k+1} (called in order k = 0, 1, .. per sequence).
  using Choose = std::function<int32_t(size_t seq, int k, std::span<const float> adjusted)>;
  struct DraftOut {
    std::vector<float> base;        // [B, V]: U_k of every block row
    std::vector<float> adjusted;    // [drafts, V]
    std::vector<int32_t> tokens;    // [drafts]
    std::vector<float> confidence;  // [drafts] (empty without a confidence head)
  };
  std::vector<DraftOut> draft(std::span<const DraftSeq> seqs, const Choose& choose) const;

 private:
  struct Impl;
  const Forward& f_;
  const DSparkWeights& w_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::model
