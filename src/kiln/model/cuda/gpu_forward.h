// The DeepSeek-V4 forward on the GPU: the model definition (model/definition.h) that the
// CPU reference (model/forward.h) also runs, on the GPU ops of gpu_ops.h (the kernels of
// ops/cuda), for several sequences at once.
//
// Static plan. Construction uploads the weights (every op bound to its prepared kernel),
// allocates the decode state of `max_slots` sequences and every activation buffer for
// `max_rows` rows, and builds the rotary tables. A pass then only launches: no
// allocation, no host synchronisation, no lookup by name or dtype. What a row may see
// is derived from its (slot, position) on the device, so a step is a fixed sequence of
// launches for a given row count, captured once as a CUDA graph per (pass, row count)
// and replayed with the new rows' metadata; replay equals eager bit for bit.
//
// State per slot and layer (model/decode_contract.h, step_rows = max_rows): a
// sliding-window ring of window + max_rows + kMaxRollback K=V rows, the compressors'
// raw-row rings, their emitted entries for max_context positions. Rolling a sequence
// back is free: the caller re-feeds positions from the new length and the rows written
// there overwrite the rolled-back ones (every entry and window row a row reads is at a
// position <= its own).
//
// Not thread-safe: one host thread drives a GpuForward.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <optional>
#include <vector>

#include <cuda_runtime.h>

#include "kiln/model/cuda/gpu_ops.h"
#include "kiln/model/cuda/gpu_weights.h"
#include "kiln/model/decode_contract.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/graph_capture.h"
#include "kiln/ops/cuda/rope.h"

namespace kiln::model::cuda {

// Page-locked host ints (cudaMallocHost), the target of asynchronous device-to-host copies.
class PinnedInts {
 public:
  explicit PinnedInts(size_t n);
  ~PinnedInts();
  size_t size() const { return n_; }
  PinnedInts(const PinnedInts&) = delete;
  PinnedInts& operator=(const PinnedInts&) = delete;
  int32_t* data() const { return p_; }
  int32_t operator[](size_t i) const { return p_[i]; }

 private:
  int32_t* p_ = nullptr;
  size_t n_ = 0;
};

struct GpuOptions {
  int max_slots = 8;            // sequences held at once
  int max_rows = 64;            // rows (tokens, all slots together) one pass feeds
  int64_t max_context = 4096;   // positions per sequence
  bool graphs = true;           // capture passes as CUDA graphs (false: always eager)
};

class GpuForward {
 public:
  GpuForward(GpuWeights weights, const GpuOptions& opt);
  ~GpuForward();
  GpuForward(const GpuForward&) = delete;
  GpuForward& operator=(const GpuForward&) = delete;

  const ModelConfig& config() const { return w_.config; }
  const GpuWeights& weights() const { return w_; }
  const GpuOptions& options() const { return opt_; }
  int mtp_blocks() const { return static_cast<int>(w_.mtp.size()); }

  // Main model over R rows (tok, slot, pos host arrays of R values; rows of one slot at
  // consecutive ascending positions). Afterwards (device) main_logits() [R, vocab],
  // main_argmax() [R] and main_streams() [R, hc_mult * hidden] (the last layer's
  // streams, the MTP block's input) hold this pass's rows. Asynchronous: read results
  // with the download functions, which wait.
  // head_rows (ascending row indices; nullopt: every row): only these rows go through the
  // head, so a prompt chunk pays for the logits of the one row it needs (none, an empty
  // list, when no prompt ends in it). main_logits() / main_argmax() then hold those rows, compacted
  // ([head_rows.size(), vocab]); logits_rows_to_host / argmax_rows_to_host still take row
  // indices of the pass and refuse a row the head did not run on. A pass that leaves rows
  // out runs eagerly (graphs are captured for full passes only).
  void main(std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
            std::optional<std::span<const int32_t>> head_rows = std::nullopt);

  // MTP block m over R rows: row r takes streams row src[r] of main_streams()
  // (from_mtp = false) or of mtp_streams() (true, multi-step drafting), the token tok[r]
  // (tok empty: the previous MTP pass's argmax of row r, without a round trip to the
  // host), and runs at slot[r], pos[r]. Results in mtp_logits() / mtp_argmax() /
  // mtp_streams().
  void mtp(int m, std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
           std::span<const int32_t> src, bool from_mtp);

  // Makes slot dst's state a copy of slot src's in every layer (main layers and MTP
  // blocks): the sliding-window ring and the compressors' raw-row rings whole, and the
  // compressed entries of the first `positions` positions (later entries are written
  // before any row reads them). Device-to-device copies enqueued on the forward's stream,
  // so ordered with the passes before and after. The engine's n > 1 choices: one prefill,
  // then copies.
  void copy_slot(int src, int dst, int64_t positions);

  // Benchmarks: uploads the rows once, runs the main pass `reps` times back to back
  // (feeding the same positions again leaves the state as it was) and returns the GPU
  // time per pass in milliseconds (CUDA events around the launches; graph or eager as
  // configured; a graph not yet captured is captured before timing).
  double time_main(std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos, int reps,
                   std::optional<std::span<const int32_t>> head_rows = std::nullopt);

  // Benchmarks: the main pass run eagerly with CUDA events between op groups; returns
  // (op group, GPU ms per pass) summed over layers, averaged over `reps` passes.
  std::vector<std::pair<std::string, double>> profile_main(std::span<const int32_t> tok, std::span<const int32_t> slot,
                                                           std::span<const int32_t> pos, int reps,
                                                           std::optional<std::span<const int32_t>> head_rows = std::nullopt);

  // Enqueues a copy of the last MTP pass's argmax (R rows) to pinned host memory `dst`
  // without waiting; valid once synchronize() (or a download) has returned.
  void mtp_argmax_to_host_async(int R, int32_t* dst) const;

  // Copies the logits of rows `rows` (any order) of the last main (mtp = false) or MTP
  // pass to dst [rows.size(), vocab], then waits for the stream.
  void logits_rows_to_host(bool mtp, std::span<const int32_t> rows, float* dst) const;
  // The same for the argmax of rows (ties to the lowest id), into dst [rows.size()].
  void argmax_rows_to_host(bool mtp, std::span<const int32_t> rows, int32_t* dst) const;

  // Waits for the stream and copies results of the last pass of that kind (R rows).
  std::vector<float> download_main_logits(int R) const;
  std::vector<int32_t> download_main_argmax(int R) const;
  std::vector<float> download_main_streams(int R) const;
  std::vector<float> download_mtp_logits(int R) const;
  std::vector<int32_t> download_mtp_argmax(int R) const;
  std::vector<float> download_mtp_streams(int R) const;
  void synchronize() const;

  // A DSpark drafter's target features (model/cuda/gpu_dspark.h): from now on every main
  // pass also writes, per row, the mean over the hc streams of the outputs of `layers`
  // (concatenated) into dspark_features() [max_rows, layers.size() * hidden]. Graphs
  // captured before are dropped (they would not record the features).
  void record_dspark_features(std::vector<int64_t> layers);
  const float* dspark_features() const { return features_.get(); }

  // The ops of another pass over this forward's activation buffers and stream (the DSpark
  // drafter's block and commit passes): rows on the device, `layers` the per-layer state
  // its attention reads and writes, `rope` its sliding-window rope (also taken for
  // compressed layers, which such a pass has none of).
  GpuOps pass_ops(const ops::cuda::StepRows& rows, std::span<const std::unique_ptr<GpuLayerState>> layers,
                  ops::cuda::RopeView rope);

  cudaStream_t stream() const { return stream_; }
  // Graphs captured so far, and whether the next pass may use one.
  size_t graphs_captured() const { return graphs_.size(); }
  // The node counts of the main pass's graph for R rows (zeros until it is captured).
  ops::cuda::GraphNodes main_graph_nodes(int R) const;
  void set_graphs(bool on) { opt_.graphs = on; }

  // Bytes of device memory held for the decode state of all slots (gpu_slot_bytes() x
  // max_slots), and for the activation buffers and rotary tables (gpu_activation_sizes()).
  int64_t state_bytes() const { return state_bytes_; }
  int64_t activation_bytes() const { return activation_bytes_; }

  struct Buffers;  // activation buffers (gpu_forward.cpp)

 private:
  enum class Pass : uint8_t { Main, MtpFromMain, MtpFromMtp };
  void upload_rows(std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
                   std::span<const int32_t> src, bool tok_from_argmax);
  void launch(Pass pass, int m, int R);
  // The next main pass's head rows (main(), time_main, profile_main): checked, staged and
  // uploaded after upload_rows; sets main_head_ and head_index_.
  void upload_head_rows(std::optional<std::span<const int32_t>> head_rows, int R);
  // Index of pass row r in main_logits() / main_argmax(); an error when the head skipped it.
  size_t head_index(int32_t r) const;
  void enqueue(Pass pass, int m, int R);
  // The activation buffers and scratch as the ops see them.
  void views(GpuOps::Buffers& v, GpuScratch& x) const;

  GpuWeights w_;
  GpuOptions opt_;
  cudaStream_t stream_ = nullptr;
  ops::cuda::RopeTable rope_main_, rope_compress_;
  std::unique_ptr<Buffers> buf_;
  std::vector<std::unique_ptr<GpuLayerState>> layer_state_;  // main layers, then MTP blocks
  int32_t* host_meta_ = nullptr;                          // pinned staging [5, max_rows]
  int main_head_ = 0;                                     // rows the last main pass's head ran on
  std::vector<int32_t> head_index_;                       // pass row -> its logits row, -1: none (empty: all)
  cudaEvent_t meta_copied_ = nullptr;
  std::map<std::tuple<int, int, int>, cudaGraphExec_t> graphs_;  // (pass, m, R)
  std::map<std::tuple<int, int, int>, ops::cuda::GraphNodes> graph_nodes_;
  int64_t state_bytes_ = 0;
  int64_t activation_bytes_ = 0;
  OpTimer* timer_ = nullptr;  // set only while profile_main enqueues
  DeviceArray<float> features_;          // DSpark target features [max_rows, F]
  std::vector<int64_t> feature_layers_;
  mutable std::unique_ptr<PinnedInts> argmax_host_;  // argmax_rows_to_host's staging
};

}  // namespace kiln::model::cuda
