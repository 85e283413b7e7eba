// GpuOps: each op of the model definition as the launches of ops/cuda it stands for.
#include "kiln/model/cuda/gpu_ops.h"

#include <algorithm>

#include "kiln/ops/act_quant.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/copy_rows.h"
#include "kiln/ops/cuda/elementwise.h"
#include "kiln/ops/cuda/hyper_connection.h"
#include "kiln/ops/cuda/moe.h"
#include "kiln/ops/cuda/norm.h"

namespace kiln::model::cuda {

namespace oc = kiln::ops::cuda;

void OpTimer::mark(const char* label, cudaStream_t s) {
  if (used == marks.size()) {
    cudaEvent_t e = nullptr;
    KILN_CUDA_CHECK(cudaEventCreate(&e));
    marks.emplace_back(label, e);
  }
  marks[used].first = label;
  KILN_CUDA_CHECK(cudaEventRecord(marks[used].second, s));
  ++used;
}

OpTimer::~OpTimer() {
  for (auto& m : marks) cudaEventDestroy(m.second);
}

GpuOps::GpuOps(const ModelConfig& c, ops::Precision precision, const oc::StepRows& rows, cudaStream_t stream,
               oc::RopeView rope_main, oc::RopeView rope_compress, const Buffers& b, const GpuScratch& scratch,
               std::span<const std::unique_ptr<GpuLayerState>> layers, OpTimer* timer)
    : c_(c), precision_(precision), rows_(rows), s_(stream), rope_main_(rope_main), rope_compress_(rope_compress), b_(b), x_(scratch),
      layers_(layers), timer_(timer), eps_(static_cast<float>(c.rms_norm_eps)), hc_eps_(static_cast<float>(c.hc_eps)),
      H_(static_cast<int>(c.hidden_size)), n_(static_cast<int>(c.hc_mult)) {}

// ---- products and elementwise ops ------------------------------------------------------

void GpuOps::linear(const QuantLinear& l, const float* x, int64_t R, float* y) const {
  l.forward(x, l.k(), static_cast<int>(R), y, l.n(), s_);
}

// Two products in order; on one input, quantized once where both layers quantize it alike
// (QuantLinear::forward_pair).
void GpuOps::linear2(const QuantLinear& a, const float* xa, float* ya, const QuantLinear& b, const float* xb, float* yb,
                     int64_t R) const {
  if (xa == xb && a.k() == b.k()) {
    QuantLinear::forward_pair(a, ya, a.n(), b, yb, b.n(), xa, a.k(), static_cast<int>(R), s_);
    return;
  }
  linear(a, xa, R, ya);
  linear(b, xb, R, yb);
}

void GpuOps::linear_grouped(const QuantLinear& l, const float* x, int64_t ldx, int64_t in_per_group, int64_t R,
                            int64_t G, float* y, int64_t ldy) const {
  l.forward_grouped(x, ldx, in_per_group, static_cast<int>(R), static_cast<int>(G), y, ldy, s_);
}

bool GpuOps::bf16(ops::Store st) const { return st == ops::Store::Act && precision_ == ops::Precision::DeepSeek; }

void GpuOps::rmsnorm(const float* x, int64_t rows, int64_t n, const DeviceArray<float>& w, float* y, ops::Store st) const {
  oc::rmsnorm(x, n, static_cast<int>(rows), static_cast<int>(n), w.get(), eps_, y, n, s_, bf16(st));
}

void GpuOps::rmsnorm(const float* x, int64_t rows, int64_t n, float* y, ops::Store st) const {
  oc::rmsnorm(x, n, static_cast<int>(rows), static_cast<int>(n), nullptr, eps_, y, n, s_, bf16(st));
}

void GpuOps::rope(AttnKind kind, float* x, int64_t ld, int64_t heads, int64_t head_stride, int64_t n, bool inverse,
                  ops::Store st) const {
  oc::rope_rows(rows_, x, ld, static_cast<int>(heads), head_stride, static_cast<int>(n), rope_of(kind), inverse, s_,
                bf16(st));
}

void GpuOps::scale_rows(float* x, int64_t ld, int64_t R, int64_t n, float factor, ops::Store st) const {
  oc::scale_rows(x, ld, static_cast<int>(R), static_cast<int>(n), factor, s_, bf16(st));
}

void GpuOps::swiglu(const float* g, const float* u, int64_t R, int64_t I, const float* row_weight, float* out) const {
  oc::swiglu(g, u, I, static_cast<int>(R), static_cast<int>(I), static_cast<float>(c_.swiglu_limit), out, I, s_,
             row_weight, precision_ == ops::Precision::DeepSeek);
}

void GpuOps::act_bf16(float* x, int64_t ld, int64_t R, int64_t n) const {
  if (precision_ == ops::Precision::DeepSeek) ops::cuda::round_bf16(x, ld, R, n, x, ld, s_);
}

// ---- mHC ----------------------------------------------------------------------------------

void GpuOps::hc_pre(const GpuHyper& h, const float* X, int64_t R, float* collapsed, float* post, float* comb,
                    ops::Store st) const {
  oc::HcParams d;
  d.n = n_;
  d.hidden = H_;
  d.fn = h.fn.get();
  d.base = h.base.get();
  d.scale = h.scale.get();
  d.sinkhorn_iters = static_cast<int>(c_.hc_sinkhorn_iters);
  d.hc_eps = hc_eps_;
  d.norm_eps = eps_;
  d.workspace = x_.hc_work;
  oc::hc_pre(d, X, static_cast<int>(R), collapsed, post, comb, s_, bf16(st));
}

void GpuOps::hc_post(const float* X, int64_t R, const float* y, const float* post, const float* comb, float* out,
                     ops::Store st) const {
  oc::hc_post(n_, H_, X, static_cast<int>(R), y, post, comb, out, s_, bf16(st));
}

void GpuOps::hc_head(const GpuHead& hh, const float* X, int64_t R, float* h, ops::Store st) const {
  oc::hc_head(n_, H_, hh.fn.get(), hh.base.get(), hh.scale, hc_eps_, eps_, X, static_cast<int>(R), h, s_, bf16(st));
}

// ---- attention state ----------------------------------------------------------------------

void GpuOps::compressor_feed(const GpuLayerState& st, ops::CompressorRole role, const GpuCompressor& cp, AttnKind kind,
                             const float* a, const float* z) const {
  const oc::CompressorRing& ring = role == ops::CompressorRole::Attention ? st.comp : st.icomp;
  oc::compressor_feed(rows_, a, z, ring.width, cp.ape.get(), cp.norm.get(), eps_, rope_of(kind), ring, s_,
                      ops::attn_numerics(precision_));
}

void GpuOps::indexer_select(const GpuLayerState& st, const float* q, const float* w, int64_t heads, int64_t head_dim,
                            float softmax_scale, int64_t topk, const GpuSelection& sel) const {
  oc::indexer_select(rows_, q, heads * head_dim, w, heads, static_cast<int>(heads), static_cast<int>(head_dim),
                     softmax_scale, st.icomp, static_cast<int>(topk), sel.sel, sel.nsel, x_.iscratch, s_);
}

// The step's K=V rows go into the window ring first (it holds every row of the step), then
// the attention reads its keys from the ring and the compressed entries. A row's result is
// the same bits at any step size (ops/cuda/attention.h), split over blocks or not, so
// both precisions pass the workspace.
void GpuOps::attend(const GpuLayerState& st, AttnKind, const float* q, const float* kv, const DeviceArray<float>& sink,
                    float scale, ops::AttnKeys keys, const GpuSelection& sel, float* o) const {
  const int64_t D = c_.head_dim, nh = c_.num_heads;
  oc::window_write(rows_, kv, D, st.ring, s_);
  // A DSpark block: the keys end at the block's last position (set_block_attention).
  const oc::StepRows keyed = key_end_ ? oc::StepRows{rows_.tok, rows_.slot, key_end_, rows_.R} : rows_;
  const int window = key_end_ ? key_window_ : static_cast<int>(c_.sliding_window);
  oc::attention(keyed, q, nh * D, static_cast<int>(nh), scale, sink.get(), st.ring, window, keys,
                st.has_comp ? &st.comp : nullptr, sel.sel, sel.nsel, std::max(static_cast<int>(c_.index_topk), 1), o,
                nh * D, s_, x_.attn_work, ops::attn_numerics(precision_));
}

// ---- MoE ----------------------------------------------------------------------------------

void GpuOps::route(const GpuMoe& m, const float* logits, int32_t* idx, float* wt) const {
  const int E = static_cast<int>(c_.n_routed_experts), K = static_cast<int>(c_.num_experts_per_tok);
  oc::moe_route(rows_, c_.scoring_func, logits, E, E, K, m.hash ? nullptr : m.bias.get(),
                m.hash ? m.tid2eid.get() : nullptr, static_cast<float>(c_.routed_scaling_factor), idx, wt, s_);
}

// One indexed product per projection over the (row, expert) pairs; the expert is picked
// on the device.
// wt (not null): pair i's SwiGLU row times wt[i] before w2 (pairs are (row, k) in order).
void GpuOps::routed_experts(const GpuMoe& m, const float* x, const int32_t* idx, const float* wt, float* ye) const {
  const int R = rows_.R, K = static_cast<int>(c_.num_experts_per_tok);
  const int64_t I = m.inter;
  m.w1.forward_indexed(x, H_, K, idx, R * K, x_.g, I, s_);
  m.w3.forward_indexed(x, H_, K, idx, R * K, x_.up, I, s_);
  swiglu(x_.g, x_.up, R * K, I, wt, x_.g);
  m.w2.forward_indexed(x_.g, I, 1, idx, R * K, ye, H_, s_);
}

void GpuOps::moe_combine(const float* ye, const int32_t* idx, const float* wt, const float* shared, float* out,
                         ops::Store st) const {
  oc::moe_combine(ye, H_, idx, wt, rows_.R, static_cast<int>(c_.num_experts_per_tok), H_, shared, out, s_, bf16(st));
}

// ---- rows in and out ----------------------------------------------------------------------

void GpuOps::embed_streams(const DeviceArray<float>& embed, float* X) const {
  oc::embed_streams(rows_, embed.get(), H_, n_, X, s_);
}

void GpuOps::embed_rows(const DeviceArray<float>& embed, float* e) const { oc::embed_rows(rows_, embed.get(), H_, e, s_); }

void GpuOps::mtp_input(float* streams) const {
  const int64_t nH = static_cast<int64_t>(n_) * H_;
  oc::gather_rows(x_.mtp_source, nH, x_.src, rows_.R, n_ * H_, streams, nH, s_);
}

void GpuOps::add_broadcast_streams(const float* ep, const float* hp, float* X) const {
  oc::add_broadcast_streams(ep, hp, rows_.R, n_, H_, X, s_);
}

void GpuOps::layer_output(size_t l, const float* X) const {
  if (!features_) return;
  const int64_t F = static_cast<int64_t>(feature_layers_.size()) * H_;
  for (size_t i = 0; i < feature_layers_.size(); ++i) {
    if (feature_layers_[i] == static_cast<int64_t>(l)) {
      oc::hc_stream_mean(n_, H_, X, rows_.R, features_ + static_cast<int64_t>(i) * H_, F, s_);
    }
  }
}

void GpuOps::copy_streams(float* dst, const float* X) const {
  const size_t bytes = sizeof(float) * static_cast<size_t>(rows_.R) * static_cast<size_t>(n_ * H_);
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, X, bytes, cudaMemcpyDeviceToDevice, s_));
}

std::pair<const float*, int64_t> GpuOps::head_rows(const float* X) const {
  if (!head_idx_) return {X, rows_.R};
  const int w = n_ * H_;
  ops::cuda::gather_rows(X, w, head_idx_, head_count_, w, b_.Xn, w, s_);
  return {b_.Xn, head_count_};
}

}  // namespace kiln::model::cuda
