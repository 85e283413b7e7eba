// The CPU implementation of the model definition's ops interface (model/definition.h) for
// one pass: the model's weights (model/weights.h) on the kernels of ops/cpu, in fp32, over
// the rows of several sequences, each with its own decode state (ops/cpu/attention_state.h).
// A CpuOps lives for one Forward::step / mtp_step call and owns that pass's activation
// buffers, so passes on different states may run from several threads at once.
// On a tensor-parallel rank's shard (model/tensor_parallel.h) the same ops run the rank's
// part: the embedding rows it holds are summed over the ranks, a linear's output is kept,
// summed or gathered (into rank 0's output) as its rank_output says, the routed experts it
// does not hold add nothing, and the MoE's combined output is summed over the ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "kiln/model/definition.h"
#include "kiln/model/weights.h"
#include "kiln/ops/cpu/attention.h"

namespace kiln::ops::cpu {
class ThreadPool;
class InProcessComm;
}

namespace kiln::model {

// What a CPU pass shares across calls: the pool, the two ropes, whether to fuse products,
// and for a tensor-parallel rank (Weights::shard.world > 1) the ranks' communicator.
struct CpuKernels {
  ops::cpu::ThreadPool* pool = nullptr;
  const ops::cpu::Rope* rope_main = nullptr;      // SWA layers
  const ops::cpu::Rope* rope_compress = nullptr;  // CSA and HCA layers
  bool fuse = true;
  ops::cpu::InProcessComm* comm = nullptr;
};

// The rows of one pass: each sequence's rows follow the previous sequence's.
struct CpuPassRows {
  std::vector<ops::cpu::SeqRows> seqs;  // per sequence (st set per layer by CpuOps::layer)
  std::vector<int64_t> pos;             // per row
  std::vector<int32_t> seq_of;          // per row
  std::vector<int32_t> tokens;          // per row
  int64_t R = 0;
  // Appends a sequence of `tokens` fed from position `length`.
  void add(int64_t length, std::span<const int32_t> tokens);
};

class CpuOps {
 public:
  using Buffers = def::Activations<int64_t, ops::cpu::Selection>;
  // The state of layer l (backbone layers, then MTP blocks) of sequence i.
  using StateOf = std::function<ops::cpu::AttentionState*(size_t seq, size_t layer)>;
  // The rows of one layer: every sequence with its state of that layer.
  struct Layer {
    std::vector<ops::cpu::SeqRows> seqs;
    std::span<const int64_t> pos;
    std::span<const int32_t> seq_of;
    ops::cpu::StepRows rows() const { return {seqs, pos, seq_of}; }
  };

  // mtp_streams: for an MTP pass, each sequence's input streams (else empty).
  // logit_rows: the rows whose logits are asked for (empty: all).
  CpuOps(const Weights& w, const CpuKernels& k, const CpuPassRows& rows, StateOf state_of,
         std::span<const std::span<const float>> mtp_streams, std::span<const int64_t> logit_rows);

  const ModelConfig& config() const { return c_; }
  int64_t rows() const { return rows_.R; }
  Buffers& buf() { return b_; }
  void mark(const char*) const {}
  Layer layer(size_t l) const;

  void linear(const Linear& l, const float* x, int64_t R, float* y) const;
  void linear2(const Linear& a, const float* xa, float* ya, const Linear& b, const float* xb, float* yb,
               int64_t R) const;
  void linear_grouped(const Linear& l, const float* x, int64_t ldx, int64_t in_per_group, int64_t R, int64_t G,
                      float* y, int64_t ldy) const;
  static int64_t out_features(const Linear& l) { return l.out; }

  // st = Store::Act: the output is an activation (ops::Store); for rope, every channel of
  // the rotated vectors is rounded before and after the rotation.
  void rmsnorm(const float* x, int64_t rows, int64_t n, const std::vector<float>& w, float* y,
               ops::Store st = ops::Store::Plain) const;
  void rmsnorm(const float* x, int64_t rows, int64_t n, float* y, ops::Store st = ops::Store::Plain) const;
  void rope(AttnKind kind, float* x, int64_t ld, int64_t heads, int64_t head_stride, int64_t n, bool inverse,
            ops::Store st = ops::Store::Plain) const;
  void scale_rows(float* x, int64_t ld, int64_t R, int64_t n, float factor, ops::Store st = ops::Store::Plain) const;
  void swiglu(const float* g, const float* u, int64_t R, int64_t I, const float* row_weight, float* out) const;
  ops::Precision precision() const { return precision_; }
  void act_bf16(float* x, int64_t ld, int64_t R, int64_t n) const;

  // st applies to collapsed (hc_pre) and out (hc_post).
  void hc_pre(const HyperConnection& hc, const float* X, int64_t R, float* collapsed, float* post, float* comb,
              ops::Store st = ops::Store::Plain) const;
  void hc_post(const float* X, int64_t R, const float* y, const float* post, const float* comb, float* out,
               ops::Store st = ops::Store::Plain) const;
  void hc_head(const HyperHead& hh, const float* X, int64_t R, float* h, ops::Store st = ops::Store::Plain) const;

  void compressor_feed(const Layer& st, ops::CompressorRole role, const Compressor& cp, AttnKind kind, const float* a,
                       const float* z) const;
  void indexer_select(const Layer& st, const float* q, const float* w, int64_t heads, int64_t head_dim,
                      float softmax_scale, int64_t topk, ops::cpu::Selection& sel) const;
  void attend(const Layer& st, AttnKind kind, const float* q, const float* kv, const std::vector<float>& sink,
              float scale, ops::AttnKeys keys, const ops::cpu::Selection& sel, float* o) const;

  void route(const Moe& m, const float* logits, int64_t* idx, float* wt) const;
  void routed_experts(const Moe& m, const float* x, const int64_t* idx, const float* wt, float* ye);
  void moe_combine(const float* ye, const int64_t* idx, const float* wt, const float* shared, float* out,
                   ops::Store st = ops::Store::Plain) const;

  void embed_streams(const Tensor& embed, float* X) const;
  void embed_rows(const Tensor& embed, float* e) const;
  void mtp_input(float* streams) const;
  void add_broadcast_streams(const float* ep, const float* hp, float* X) const;
  void copy_streams(float* dst, const float* X) const;
  std::pair<const float*, int64_t> head_rows(const float* X);
  // Records the features (model/dspark.h) of the layers listed, when set_features was called.
  void layer_output(size_t l, const float* X) const;
  // features [R, layers.size() * hidden]: per row the mean over the hc streams of each
  // listed backbone layer's output, concatenated in list order.
  void set_features(float* features, std::span<const int64_t> layers) {
    features_ = features;
    feature_layers_ = layers;
  }

 private:
  const ops::cpu::Rope& rope_of(AttnKind kind) const;
  // act_bf16 of [R, n] at x (rows ld apart) when st is Store::Act.
  void store(float* x, int64_t ld, int64_t R, int64_t n, ops::Store st) const;
  // x as linear l reads it: x itself, or act_quant-ed into `scratch` (rows ldx apart).
  const float* linear_input(const Linear& l, const float* x, int64_t ldx, int64_t R, std::vector<float>& scratch) const;
  void linear_output(const Linear& l, float* y, int64_t ldy, int64_t R, int64_t n) const;
  float* alloc(std::vector<float>& v, int64_t count);

  // The embedding rows of the tokens into e [R, H] (summed over the ranks on a shard).
  void embed_into(const Tensor& embed, float* e) const;

  const ModelConfig& c_;
  const RankShard& shard_;
  CpuKernels k_;
  const CpuPassRows& rows_;
  StateOf state_of_;
  std::span<const std::span<const float>> mtp_streams_;
  std::span<const int64_t> logit_rows_;
  float eps_, hc_eps_;
  ops::Precision precision_;
  Buffers b_;
  std::vector<std::vector<float>> storage_;
  std::vector<int64_t> idx_;
  std::vector<float> picked_;  // head_rows' gathered rows
  float* features_ = nullptr;
  std::span<const int64_t> feature_layers_;
};

}  // namespace kiln::model
