// DeepSeek's DSpark drafter on the GPU: the CPU drafter of model/dspark.h (read it for the
// maths) over the GPU forward's ops, buffers and stream.
//
// - Target features: the target GpuForward records them in every main pass
//   (GpuForward::record_dspark_features): per row the mean over the hc streams of the
//   outputs of dspark_target_layer_ids.
// - State per slot and stage: a ring of main-stream KV rows, rope(kv_norm(wkv(main_x))) at
//   position p, main_x = main_norm(main_proj(F[p])), for committed positions only (commit).
//   The ring holds window + block rows (an ops/cuda WindowRing): a draft writes its block's
//   own K=V rows at the block's positions N..N+B-1 (slots of positions before N - window,
//   which no later draft reads), so the block's attention is the existing attention
//   kernel over the window of W + B positions ending at N + B - 1: the ring rows of
//   max(0, N-W)..N-1, then all B block rows (GpuOps::set_block_attention). A commit
//   overwrites the block's rows with committed ones before any draft reads them.
// - A draft round: the stages are the model definition's blocks (def::block: mHC, the
//   attention above, the score-routed MoE) on the GPU ops; hc_head, norm, the target's head
//   give the base logits U_k. The sequential Markov loop runs on the device for all
//   sequences at once per step k (markov_w1 gather, markov_w2 product, U_k + bias). When
//   every round of a group drafts by argmax (Round::by_argmax, greedy decoding), each
//   step's argmax is taken on the device and feeds the next step's gather: the block pass
//   and all steps are one graph and the drafts come back in one copy. Otherwise the
//   adjusted row goes to the host because the caller's `choose` picks each draft from it
//   (a recorded draw, the engine's DraftChoice): one round trip per step.
//   Confidences are computed on the host from the pre-norm hidden and the markov_w1 row,
//   in the CPU drafter's arithmetic (ops/cpu/vec.h dot).
// With the target's graphs on (GpuOptions::graphs), the commit pass is captured as a CUDA
// graph per row count, the block pass per group size and each Markov step per (group
// size, step), or block pass and argmax loop as one graph per (group size, steps),
// replayed afterwards (their rows are read from device buffers); the uploads and any host
// choice sit between.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <tuple>
#include <vector>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/model/cuda/gpu_weights.h"
#include "kiln/ops/cuda/rope.h"

namespace kiln::model::cuda {

class GpuDSpark {
 public:
  // target: the main model (its embedding, head, activation buffers, stream and slots);
  // from now on its main passes record the features this drafter reads. It must outlive
  // the drafter. Error(Usage) naming the value when the weights do not fit the target.
  GpuDSpark(GpuForward& target, GpuDSparkWeights weights);
  ~GpuDSpark();
  GpuDSpark(const GpuDSpark&) = delete;
  GpuDSpark& operator=(const GpuDSpark&) = delete;

  const GpuDSparkWeights& weights() const { return w_; }
  int block_size() const { return B_; }
  int64_t feature_width() const { return F_; }
  int64_t state_bytes() const { return state_bytes_; }
  int64_t buffer_bytes() const { return buffer_bytes_; }

  // A slot's committed positions; reset empties it (a new sequence), copy_slot makes dst
  // a copy of src (rings and length), ordered with the passes on the target's stream.
  int64_t length(int slot) const;
  void reset(int slot);
  void copy_slot(int src, int dst);

  // Commits row r: position pos[r] of slot slot[r] from features row src[r] of the
  // target's last main pass. A slot's rows continue its committed length, in order.
  void commit(std::span<const int32_t> slot, std::span<const int32_t> pos, std::span<const int32_t> src);

  struct Round {
    int slot = 0;
    int32_t anchor = 0;
    int drafts = 0;  // Markov steps: 0 .. block_size
    // The drafts are the argmax of each adjusted row (ties to the lowest id): picked on the
    // device, choose is not called for this round.
    bool by_argmax = false;
  };
  // choose(i, k, adjusted_k) returns d_{k+1} of round i (k = 0, 1, .. in order per round).
  using Choose = std::function<int32_t(size_t round, int k, std::span<const float> adjusted)>;
  struct Out {
    std::vector<int32_t> tokens;    // [drafts]
    std::vector<float> confidence;  // [drafts] (empty without a confidence head)
    std::vector<float> base;        // keep_logits: [B, V], U_k of every block row
    std::vector<float> adjusted;    // keep_logits: [drafts, V]
  };
  // One draft round per element at its slot's committed length (each slot at most once).
  // with_confidence false: Out::confidence stays empty (nothing of the confidence head's
  // inputs is copied back).
  std::vector<Out> draft(std::span<const Round> rounds, const Choose& choose, bool keep_logits = false,
                         bool with_confidence = true);

 private:
  void draft_group(std::span<const Round> rounds, size_t first, const Choose& choose, bool keep_logits,
                   bool with_confidence, std::vector<Out>& outs);
  // The passes captured as graphs: per kind, rows (rounds of a draft group, or commit rows)
  // and steps (the Markov step k, or the argmax loop's step count).
  enum class Pass { Block, MarkovStep, ArgmaxDraft, Commit };
  using GraphKey = std::tuple<Pass, int, int>;
  // Runs enqueue on the target's stream: eagerly, or as the graph captured for `key`.
  void launch(GraphKey key, const std::function<void()>& enqueue);

  GpuForward& f_;
  GpuDSparkWeights w_;
  int B_ = 0, W_ = 0, slots_ = 0, max_rows_ = 0, rounds_ = 0;  // rounds_: most rounds of one draft group
  int64_t F_ = 0;
  ops::cuda::RopeTable rope_;
  std::vector<std::unique_ptr<GpuLayerState>> rings_;  // per stage (window rings only)
  std::vector<int64_t> length_;                        // per slot
  struct Buffers;
  std::unique_ptr<Buffers> buf_;
  int64_t state_bytes_ = 0, buffer_bytes_ = 0;
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  // A draft's rows (token, slot, position, key end, order, previous token) staged in
  // page-locked memory for asynchronous copies; rows_copied_ follows the last of them.
  std::unique_ptr<PinnedInts> host_rows_;
  cudaEvent_t rows_copied_ = nullptr;
};

}  // namespace kiln::model::cuda
