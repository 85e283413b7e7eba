// The CUDA implementation of the model definition's ops interface (model/definition.h) for
// one pass: the uploaded weights (gpu_weights.h) on the kernels of ops/cuda, over rows
// whose token, slot and position live on the device (ops/cuda/step_rows.h), so the pass
// is a fixed sequence of launches that a CUDA graph captures. Each op enqueues the same
// launches, in the same order, as the GPU forward did before the definition was shared,
// so the arithmetic is unchanged. Nothing here allocates or synchronises.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kiln/model/cuda/gpu_weights.h"
#include "kiln/model/definition.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/rope.h"
#include "kiln/ops/cuda/step_rows.h"

namespace kiln::model::cuda {

// The decode state of one layer for every slot (model/decode_contract.h's layout for
// max_slots sequences, sized by model/gpu_memory.h): the window ring and the compressors'.
struct GpuLayerState {
  DeviceArray<float> window;
  ops::cuda::WindowRing ring;
  DeviceArray<float> ckv, cscore, centries;
  ops::cuda::CompressorRing comp;
  bool has_comp = false;
  DeviceArray<float> ikv, iscore, ientries;
  ops::cuda::CompressorRing icomp;
  bool has_icomp = false;
};

// Optional per-op timing (eager passes only): events recorded after each op group; the
// time since the previous mark is charged to the label of the next.
struct OpTimer {
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  size_t used = 0;
  void mark(const char* label, cudaStream_t s);
  ~OpTimer();
};

// The indexer's picks on the device: per row up to topk entries and their count.
struct GpuSelection {
  int32_t* sel = nullptr;
  int32_t* nsel = nullptr;
};

// Device buffers only the GPU's ops use (the definition never names them).
struct GpuScratch {
  float* g = nullptr;          // routed experts' gate / SwiGLU [R * top-k, I]
  float* up = nullptr;         // routed experts' up [R * top-k, I]
  float* hc_work = nullptr;    // mHC split sums
  float* attn_work = nullptr;  // split-key attention partials
  float* iscratch = nullptr;   // indexer scores
  const int32_t* src = nullptr;       // MTP: the stream row each row takes
  const float* mtp_source = nullptr;  // MTP: the streams those rows index
};

class GpuOps {
 public:
  using Buffers = def::Activations<int32_t, GpuSelection>;

  GpuOps(const ModelConfig& c, ops::Precision precision, const ops::cuda::StepRows& rows, cudaStream_t stream,
         ops::cuda::RopeView rope_main,
         ops::cuda::RopeView rope_compress, const Buffers& b, const GpuScratch& scratch,
         std::span<const std::unique_ptr<GpuLayerState>> layers, OpTimer* timer);

  const ModelConfig& config() const { return c_; }
  int64_t rows() const { return rows_.R; }
  Buffers& buf() { return b_; }
  void mark(const char* label) const {
    if (timer_) timer_->mark(label, s_);
  }
  GpuLayerState& layer(size_t l) const { return *layers_[l]; }

  void linear(const QuantLinear& l, const float* x, int64_t R, float* y) const;
  void linear2(const QuantLinear& a, const float* xa, float* ya, const QuantLinear& b, const float* xb, float* yb,
               int64_t R) const;
  void linear_grouped(const QuantLinear& l, const float* x, int64_t ldx, int64_t in_per_group, int64_t R, int64_t G,
                      float* y, int64_t ldy) const;
  static int64_t out_features(const QuantLinear& l) { return l.n(); }

  // st = Store::Act (ops::Store): under deepseek the kernel rounds what it writes to bf16
  // (rope: every channel of the rotated vectors, before and after), no launch of its own.
  void rmsnorm(const float* x, int64_t rows, int64_t n, const DeviceArray<float>& w, float* y,
               ops::Store st = ops::Store::Plain) const;
  void rmsnorm(const float* x, int64_t rows, int64_t n, float* y, ops::Store st = ops::Store::Plain) const;
  void rope(AttnKind kind, float* x, int64_t ld, int64_t heads, int64_t head_stride, int64_t n, bool inverse,
            ops::Store st = ops::Store::Plain) const;
  void scale_rows(float* x, int64_t ld, int64_t R, int64_t n, float factor, ops::Store st = ops::Store::Plain) const;
  void swiglu(const float* g, const float* u, int64_t R, int64_t I, const float* row_weight, float* out) const;
  ops::Precision precision() const { return precision_; }
  void act_bf16(float* x, int64_t ld, int64_t R, int64_t n) const;

  // st applies to collapsed (hc_pre) and out (hc_post).
  void hc_pre(const GpuHyper& hc, const float* X, int64_t R, float* collapsed, float* post, float* comb,
              ops::Store st = ops::Store::Plain) const;
  void hc_post(const float* X, int64_t R, const float* y, const float* post, const float* comb, float* out,
               ops::Store st = ops::Store::Plain) const;
  void hc_head(const GpuHead& hh, const float* X, int64_t R, float* h, ops::Store st = ops::Store::Plain) const;

  void compressor_feed(const GpuLayerState& st, ops::CompressorRole role, const GpuCompressor& cp, AttnKind kind,
                       const float* a, const float* z) const;
  void indexer_select(const GpuLayerState& st, const float* q, const float* w, int64_t heads, int64_t head_dim,
                      float softmax_scale, int64_t topk, const GpuSelection& sel) const;
  void attend(const GpuLayerState& st, AttnKind kind, const float* q, const float* kv, const DeviceArray<float>& sink,
              float scale, ops::AttnKeys keys, const GpuSelection& sel, float* o) const;

  void route(const GpuMoe& m, const float* logits, int32_t* idx, float* wt) const;
  void routed_experts(const GpuMoe& m, const float* x, const int32_t* idx, const float* wt, float* ye) const;
  void moe_combine(const float* ye, const int32_t* idx, const float* wt, const float* shared, float* out,
                   ops::Store st = ops::Store::Plain) const;

  void embed_streams(const DeviceArray<float>& embed, float* X) const;
  void embed_rows(const DeviceArray<float>& embed, float* e) const;
  void mtp_input(float* streams) const;
  void add_broadcast_streams(const float* ep, const float* hp, float* X) const;
  void copy_streams(float* dst, const float* X) const;
  // The rows the head runs on: all of them, or (set_head_rows) the listed ones gathered
  // into Xn (free once the last layer has run).
  std::pair<const float*, int64_t> head_rows(const float* X) const;
  // Only rows idx[0 .. count) (device, ascending) get logits: a prompt chunk needs only
  // the last row of a prompt that ends in it.
  void set_head_rows(const int32_t* idx, int count) {
    head_idx_ = idx;
    head_count_ = count;
  }
  // Records a DSpark drafter's target features when set_features was called: for the
  // listed layers the mean over the streams of X (ops/cuda hc_stream_mean).
  void layer_output(size_t l, const float* X) const;

  // features [R, layers.size() * hidden]: per row the mean over the hc streams of each
  // listed backbone layer's output, concatenated in list order (CpuOps::set_features).
  void set_features(float* features, std::span<const int64_t> layers) {
    features_ = features;
    feature_layers_ = layers;
  }
  // A DSpark draft block (model/cuda/gpu_dspark.h): attend reads, for every row, the window
  // of `window` positions ending at key_end[r] (device, one per row) instead of at the
  // row's own position, so each row of a block sees the ring rows before the block and
  // every row of the block (bidirectional). The rows' own K=V rows still go into the ring
  // at their positions first.
  void set_block_attention(const int32_t* key_end, int window) {
    key_end_ = key_end;
    key_window_ = window;
  }

 private:
  bool bf16(ops::Store st) const;  // round what the kernel writes to bf16
  ops::cuda::RopeView rope_of(AttnKind kind) const { return kind == AttnKind::SWA ? rope_main_ : rope_compress_; }

  const ModelConfig& c_;
  ops::Precision precision_;
  ops::cuda::StepRows rows_;
  cudaStream_t s_;
  ops::cuda::RopeView rope_main_, rope_compress_;
  Buffers b_;
  GpuScratch x_;
  std::span<const std::unique_ptr<GpuLayerState>> layers_;
  OpTimer* timer_;
  float* features_ = nullptr;
  std::span<const int64_t> feature_layers_;
  const int32_t* key_end_ = nullptr;
  int key_window_ = 0;
  const int32_t* head_idx_ = nullptr;
  int head_count_ = 0;
  float eps_, hc_eps_;
  int H_, n_;
};

}  // namespace kiln::model::cuda
