// CpuOps: each op of the model definition on the kernels of ops/cpu. Every op keeps the
// arithmetic of the CPU reference (fixed-association reductions, one row's results
// independent of the others), so the logits are bitwise those of feeding each sequence
// alone, in any chunking.
#include "kiln/model/cpu_ops.h"

#include <algorithm>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/ops/act_quant.h"
#include "kiln/ops/cpu/communicator.h"
#include "kiln/ops/cpu/hyper_connection.h"
#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/moe.h"
#include "kiln/ops/cpu/moe_route.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cpu/thread_pool.h"

namespace kiln::model {

namespace cpu = kiln::ops::cpu;

void CpuPassRows::add(int64_t length, std::span<const int32_t> toks) {
  const int64_t T = static_cast<int64_t>(toks.size());
  const int32_t s = static_cast<int32_t>(seqs.size());
  seqs.push_back({nullptr, R, T, length});
  for (int64_t t = 0; t < T; ++t) {
    pos.push_back(length + t);
    seq_of.push_back(s);
  }
  tokens.insert(tokens.end(), toks.begin(), toks.end());
  R += T;
}

float* CpuOps::alloc(std::vector<float>& v, int64_t count) {
  v.assign(static_cast<size_t>(std::max<int64_t>(count, 1)), 0.0f);
  return v.data();
}

CpuOps::CpuOps(const Weights& w, const CpuKernels& k, const CpuPassRows& rows, StateOf state_of,
               std::span<const std::span<const float>> mtp_streams, std::span<const int64_t> logit_rows)
    : c_(w.config), shard_(w.shard), k_(k), rows_(rows), state_of_(std::move(state_of)), mtp_streams_(mtp_streams),
      logit_rows_(logit_rows), eps_(static_cast<float>(c_.rms_norm_eps)), hc_eps_(static_cast<float>(c_.hc_eps)),
      precision_(w.precision) {
  if (shard_.world > 1 && (k_.comm == nullptr || k_.comm->world() != shard_.world)) {
    fail(ErrorKind::Usage, "a pass of rank {} of {} needs the ranks' communicator", shard_.rank, shard_.world);
  }
  const int64_t R = rows_.R, H = c_.hidden_size, n = c_.hc_mult, D = c_.head_dim, nh = c_.num_heads;
  const int64_t K = c_.num_experts_per_tok;
  int64_t widest = 1, shared = 1;
  auto scan = [&](const Block& b) {
    if (b.attn.compressor) widest = std::max(widest, (b.attn.compressor->overlap ? 2 : 1) * b.attn.compressor->dim);
    if (b.attn.indexer) widest = std::max(widest, 2 * b.attn.indexer->compressor.dim);
    if (b.ffn.shared) shared = std::max(shared, b.ffn.shared->w1.out);
  };
  for (const Block& b : w.layers) scan(b);
  for (const MtpBlock& m : w.mtp) scan(m.block);
  storage_.resize(32);
  size_t next = 0;
  auto f = [&](int64_t count) { return alloc(storage_[next++], count); };
  b_.X = f(R * n * H), b_.Xn = f(R * n * H);
  b_.u = f(R * H), b_.y = f(R * H), b_.post = f(R * n), b_.comb = f(R * n * n);
  b_.qres = f(R * c_.q_lora_rank), b_.kv = f(R * D), b_.q = f(R * nh * D), b_.o = f(R * nh * D);
  b_.mid = f(R * c_.o_groups * c_.o_lora_rank);
  b_.ca = f(R * widest), b_.cz = f(R * widest);
  b_.iq = f(R * c_.index_n_heads * c_.index_head_dim), b_.iw = f(R * c_.index_n_heads);
  b_.glog = f(R * c_.n_routed_experts), b_.wt = f(R * K);
  idx_.assign(static_cast<size_t>(std::max<int64_t>(R * K, 1)), 0);
  b_.idx = idx_.data();
  b_.ye = f(R * K * H);
  b_.sg = f(R * shared), b_.su = f(R * shared), b_.sy = f(R * H);
  b_.h = f(R * H);
  if (!mtp_streams_.empty()) {
    b_.mtp_in = f(R * n * H), b_.hs = f(R * n * H), b_.e = f(R * H), b_.ep = f(R * H);
  }
}

CpuOps::Layer CpuOps::layer(size_t l) const {
  Layer L;
  L.seqs = rows_.seqs;
  for (size_t i = 0; i < L.seqs.size(); ++i) L.seqs[i].st = state_of_(i, l);
  L.pos = rows_.pos;
  L.seq_of = rows_.seq_of;
  return L;
}

// ---- products and elementwise ops ------------------------------------------------------

const float* CpuOps::linear_input(const Linear& l, const float* x, int64_t ldx, int64_t R,
                                  std::vector<float>& scratch) const {
  if (l.numerics.input == ops::LinearInput::Fp32) return x;
  scratch.resize(static_cast<size_t>(std::max<int64_t>(R * ldx, 1)));
  if (l.numerics.input == ops::LinearInput::Bf16)
    cpu::round_bf16(x, ldx, R, ldx, scratch.data(), ldx);
  else
    cpu::act_fake_quant(x, ldx, R, l.in, scratch.data(), ldx);
  return scratch.data();
}

void CpuOps::linear_output(const Linear& l, float* y, int64_t ldy, int64_t R, int64_t n) const {
  if (l.numerics.bf16_output) cpu::round_bf16(y, ldy, R, n, y, ldy);
}

void CpuOps::linear(const Linear& l, const float* x, int64_t R, float* y) const {
  std::vector<float> xq;
  x = linear_input(l, x, l.in, R, xq);
  if (l.rank_output == cpu::RankOutput::Gather) {  // assembled on rank 0 only: it writes the pass's outputs
    const int64_t all = l.out * shard_.world;
    std::vector<float> local(static_cast<size_t>(std::max<int64_t>(R * l.out, 1)));
    cpu::linear(l, x, R, local.data(), k_.pool);
    k_.comm->gather_columns(shard_.rank, local.data(), R, l.out, shard_.rank == 0 ? y : nullptr);
    if (shard_.rank == 0) linear_output(l, y, all, R, all);
    return;
  }
  cpu::linear(l, x, R, y, k_.pool);
  if (l.rank_output == cpu::RankOutput::Sum) k_.comm->all_reduce_sum(shard_.rank, y, R * l.out);
  linear_output(l, y, l.out, R, l.out);
}

void CpuOps::linear2(const Linear& a, const float* xa, float* ya, const Linear& b, const float* xb, float* yb,
                     int64_t R) const {
  if (a.rank_output != cpu::RankOutput::Local || b.rank_output != cpu::RankOutput::Local)
    fail(ErrorKind::Usage, "linear2: a layer whose output is summed or gathered over the ranks runs alone");
  std::vector<float> qa, qb;
  xa = linear_input(a, xa, a.in, R, qa);
  xb = linear_input(b, xb, b.in, R, qb);
  const cpu::LinearJob jobs[2] = {{&a, xa, a.in, ya, a.out, 0, a.out}, {&b, xb, b.in, yb, b.out, 0, b.out}};
  if (k_.fuse) {
    cpu::linear(jobs, R, k_.pool);
  } else {
    cpu::linear(std::span(jobs, 1), R, k_.pool);
    cpu::linear(std::span(jobs + 1, 1), R, k_.pool);
  }
  linear_output(a, ya, a.out, R, a.out);
  linear_output(b, yb, b.out, R, b.out);
}

void CpuOps::linear_grouped(const Linear& l, const float* x, int64_t ldx, int64_t in_per_group, int64_t R, int64_t G,
                            float* y, int64_t ldy) const {
  if (l.rank_output != cpu::RankOutput::Local)
    fail(ErrorKind::Usage, "grouped linear: a layer whose output is summed or gathered over the ranks runs alone");
  if (l.numerics.input == ops::LinearInput::Fp8Block)
    fail(ErrorKind::Usage, "grouped linear: a layer that quantizes its input (act_quant over the whole row) cannot be "
                           "run grouped");
  std::vector<float> xr;
  x = linear_input(l, x, ldx, R, xr);  // Bf16: rounded; the groups' slices lie inside the rows
  const int64_t rows = l.out / G;
  std::vector<cpu::LinearJob> groups(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) groups[static_cast<size_t>(g)] = {&l, x + g * in_per_group, ldx, y + g * rows, ldy, g * rows, rows};
  cpu::linear(groups, R, k_.pool);
  linear_output(l, y, ldy, R, l.out);
}

void CpuOps::act_bf16(float* x, int64_t ld, int64_t R, int64_t n) const {
  if (precision_ == ops::Precision::DeepSeek) cpu::round_bf16(x, ld, R, n, x, ld);
}

void CpuOps::store(float* x, int64_t ld, int64_t R, int64_t n, ops::Store st) const {
  if (st == ops::Store::Act) act_bf16(x, ld, R, n);
}

void CpuOps::rmsnorm(const float* x, int64_t rows, int64_t n, const std::vector<float>& w, float* y, ops::Store st) const {
  cpu::rmsnorm(x, rows, n, w.data(), eps_, y);
  store(y, n, rows, n, st);
}

void CpuOps::rmsnorm(const float* x, int64_t rows, int64_t n, float* y, ops::Store st) const {
  cpu::rmsnorm(x, rows, n, nullptr, eps_, y);
  store(y, n, rows, n, st);
}

// Sliding-window layers use the main rope (rope_theta); CSA/HCA layers the compress
// rope (compress_rope_theta, YaRN) for q, kv, compressed entries, indexer and output.
const cpu::Rope& CpuOps::rope_of(AttnKind kind) const {
  return kind == AttnKind::SWA ? *k_.rope_main : *k_.rope_compress;
}

void CpuOps::rope(AttnKind kind, float* x, int64_t ld, int64_t heads, int64_t head_stride, int64_t n, bool inverse,
                  ops::Store st) const {
  const cpu::Rope& r = rope_of(kind);
  for (int64_t h = 0; h < heads; ++h) store(x + h * head_stride, ld, rows_.R, n, st);
  for (int64_t t = 0; t < rows_.R; ++t) r.apply_heads(x + t * ld, heads, n, head_stride, rows_.pos[static_cast<size_t>(t)], inverse);
  for (int64_t h = 0; h < heads; ++h) store(x + h * head_stride, ld, rows_.R, n, st);
}

void CpuOps::scale_rows(float* x, int64_t ld, int64_t R, int64_t n, float factor, ops::Store st) const {
  for (int64_t t = 0; t < R; ++t) {
    for (int64_t i = 0; i < n; ++i) x[t * ld + i] *= factor;
  }
  store(x, ld, R, n, st);
}

void CpuOps::swiglu(const float* g, const float* u, int64_t R, int64_t I, const float* row_weight, float* out) const {
  cpu::swiglu(g, u, R * I, static_cast<float>(c_.swiglu_limit), out);
  if (row_weight) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t i = 0; i < I; ++i) out[r * I + i] *= row_weight[r];
    }
  }
  act_bf16(out, I, R, I);
}

// ---- mHC ----------------------------------------------------------------------------------

void CpuOps::hc_pre(const HyperConnection& hc, const float* X, int64_t R, float* collapsed, float* post, float* comb,
                    ops::Store st) const {
  cpu::HcParams p;
  p.n = c_.hc_mult;
  p.hidden = c_.hidden_size;
  p.fn = hc.fn.data.data();
  p.base = hc.base.data();
  p.scale = hc.scale.data();
  p.sinkhorn_iters = static_cast<int>(c_.hc_sinkhorn_iters);
  p.hc_eps = hc_eps_;
  p.norm_eps = eps_;
  cpu::hc_pre(p, X, R, collapsed, post, comb, k_.pool);
  store(collapsed, c_.hidden_size, R, c_.hidden_size, st);
}

void CpuOps::hc_post(const float* X, int64_t R, const float* y, const float* post, const float* comb, float* out,
                     ops::Store st) const {
  cpu::hc_post(c_.hc_mult, c_.hidden_size, X, R, y, post, comb, out);
  const int64_t nH = c_.hc_mult * c_.hidden_size;
  store(out, nH, R, nH, st);
}

void CpuOps::hc_head(const HyperHead& hh, const float* X, int64_t R, float* h, ops::Store st) const {
  cpu::hc_head(c_.hc_mult, c_.hidden_size, hh.fn.data.data(), hh.base.data(), hh.scale, hc_eps_, eps_, X, R, h, k_.pool);
  store(h, c_.hidden_size, R, c_.hidden_size, st);
}

// ---- attention state ----------------------------------------------------------------------

void CpuOps::compressor_feed(const Layer& st, ops::CompressorRole role, const Compressor& cp, AttnKind kind,
                             const float* a, const float* z) const {
  cpu::compressor_feed(st.rows(), role, a, z, cp.ape.data.data(), cp.norm.data(), eps_, rope_of(kind),
                       ops::attn_numerics(precision_));
}

void CpuOps::indexer_select(const Layer& st, const float* q, const float* w, int64_t heads, int64_t head_dim,
                            float softmax_scale, int64_t topk, cpu::Selection& sel) const {
  cpu::indexer_select(st.rows(), q, w, heads, head_dim, softmax_scale, topk, sel, k_.pool);
}

void CpuOps::attend(const Layer& st, AttnKind, const float* q, const float* kv, const std::vector<float>& sink,
                    float scale, ops::AttnKeys keys, const cpu::Selection& sel, float* o) const {
  cpu::attention(st.rows(), q, kv, c_.num_heads, c_.head_dim, scale, sink.data(), c_.sliding_window, keys, sel, o,
                 k_.pool, ops::attn_numerics(precision_));
}

// ---- MoE ----------------------------------------------------------------------------------

void CpuOps::route(const Moe& m, const float* logits, int64_t* idx, float* wt) const {
  cpu::moe_route(c_.scoring_func, logits, rows_.R, c_.n_routed_experts, c_.num_experts_per_tok,
                 m.hash ? nullptr : m.bias.data(), m.hash ? m.tid2eid.data() : nullptr, rows_.tokens.data(),
                 static_cast<float>(c_.routed_scaling_factor), idx, wt);
}

// The GPU runs the routed experts as one indexed product per projection; here each
// expert runs the definition's expert() on the rows routed to it.
void CpuOps::routed_experts(const Moe& m, const float* x, const int64_t* idx, const float* wt, float* ye) {
  std::vector<float> g, u, rw;
  cpu::moe_experts(x, rows_.R, c_.hidden_size, idx, c_.num_experts_per_tok, c_.n_routed_experts,
                   [&](int64_t e, const float* xe, int64_t rows, const int64_t* pair, float* y) {
                     if (shard_.expert_end >= 0 && (e < shard_.expert_begin || e >= shard_.expert_end)) {
                       std::fill(y, y + rows * c_.hidden_size, 0.0f);  // another rank's expert
                       return;
                     }
                     const Expert& ex = m.experts[static_cast<size_t>(e)];
                     g.resize(static_cast<size_t>(rows * ex.w1.out));
                     u.resize(g.size());
                     if (wt) {
                       rw.resize(static_cast<size_t>(rows));
                       for (int64_t i = 0; i < rows; ++i) rw[static_cast<size_t>(i)] = wt[pair[i]];
                     }
                     def::expert(*this, ex, xe, rows, g.data(), u.data(), y, wt ? rw.data() : nullptr);
                   },
                   ye);
}

void CpuOps::moe_combine(const float* ye, const int64_t* idx, const float* wt, const float* shared, float* out,
                         ops::Store st) const {
  cpu::moe_combine(ye, idx, wt, rows_.R, c_.num_experts_per_tok, c_.hidden_size, shared, out);
  if (shard_.world > 1) k_.comm->all_reduce_sum(shard_.rank, out, rows_.R * c_.hidden_size);
  store(out, c_.hidden_size, rows_.R, c_.hidden_size, st);
}

// ---- rows in and out ----------------------------------------------------------------------

void CpuOps::embed_into(const Tensor& embed, float* e) const {
  const int64_t H = c_.hidden_size, rows = static_cast<int64_t>(embed.data.size()) / H;
  for (int64_t t = 0; t < rows_.R; ++t) {
    const int64_t v = static_cast<int64_t>(rows_.tokens[static_cast<size_t>(t)]) - shard_.vocab_begin;
    if (v >= 0 && v < rows) {
      std::memcpy(e + t * H, embed.data.data() + v * H, static_cast<size_t>(H) * sizeof(float));
    } else {
      std::fill(e + t * H, e + (t + 1) * H, 0.0f);  // another rank's row
    }
  }
  if (shard_.world > 1) k_.comm->all_reduce_sum(shard_.rank, e, rows_.R * H);
}

void CpuOps::embed_streams(const Tensor& embed, float* X) const {
  const int64_t H = c_.hidden_size, n = c_.hc_mult;
  std::vector<float> e(static_cast<size_t>(std::max<int64_t>(rows_.R * H, 1)));
  embed_into(embed, e.data());
  for (int64_t t = 0; t < rows_.R; ++t) {
    for (int64_t i = 0; i < n; ++i) std::memcpy(X + (t * n + i) * H, e.data() + t * H, static_cast<size_t>(H) * sizeof(float));
  }
}

void CpuOps::embed_rows(const Tensor& embed, float* e) const { embed_into(embed, e); }

void CpuOps::mtp_input(float* streams) const {
  const int64_t nH = c_.hc_mult * c_.hidden_size;
  for (size_t i = 0; i < rows_.seqs.size(); ++i) {
    const auto& src = mtp_streams_[i];
    std::memcpy(streams + rows_.seqs[i].row0 * nH, src.data(), src.size() * sizeof(float));
  }
}

void CpuOps::add_broadcast_streams(const float* ep, const float* hp, float* X) const {
  const int64_t H = c_.hidden_size, n = c_.hc_mult;
  for (int64_t t = 0; t < rows_.R; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      float* xr = X + (t * n + i) * H;
      const float* hr = hp + (t * n + i) * H;
      const float* er = ep + t * H;
      for (int64_t d = 0; d < H; ++d) xr[d] = er[d] + hr[d];
    }
  }
}

void CpuOps::copy_streams(float* dst, const float* X) const {
  std::memcpy(dst, X, static_cast<size_t>(rows_.R * c_.hc_mult * c_.hidden_size) * sizeof(float));
}

std::pair<const float*, int64_t> CpuOps::head_rows(const float* X) {
  if (logit_rows_.empty()) return {X, rows_.R};
  const int64_t nH = c_.hc_mult * c_.hidden_size;
  picked_.resize(logit_rows_.size() * static_cast<size_t>(nH));
  for (size_t i = 0; i < logit_rows_.size(); ++i) {
    std::memcpy(picked_.data() + static_cast<int64_t>(i) * nH, X + logit_rows_[i] * nH,
                static_cast<size_t>(nH) * sizeof(float));
  }
  return {picked_.data(), static_cast<int64_t>(logit_rows_.size())};
}

void CpuOps::layer_output(size_t l, const float* X) const {
  if (!features_) return;
  const int64_t H = c_.hidden_size, n = c_.hc_mult, F = static_cast<int64_t>(feature_layers_.size()) * H;
  for (size_t i = 0; i < feature_layers_.size(); ++i) {
    if (feature_layers_[i] == static_cast<int64_t>(l)) {
      ops::cpu::hc_stream_mean(n, H, X, rows_.R, features_ + static_cast<int64_t>(i) * H, F);
    }
  }
}

}  // namespace kiln::model
