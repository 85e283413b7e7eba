// The DSpark drafter's forward on the CPU (model/dspark.h). Everything is fp32, every
// reduction in a fixed order, and each sequence's rows read only that sequence's state,
// so a draft does not depend on what else shares the pass.
#include "kiln/model/dspark.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/model/forward.h"
#include "kiln/ops/cpu/attention.h"
#include "kiln/ops/cpu/hyper_connection.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::model {

namespace cpu = kiln::ops::cpu;
using Vec = std::vector<float>;

std::string DSparkState::difference(const DSparkState& o) const {
  if (length_ != o.length_) return fmt::format("DSpark length {} vs {}", length_, o.length_);
  if (window_ != o.window_ || dim_ != o.dim_ || rings_.size() != o.rings_.size()) return "DSpark states of different drafters";
  // The rows a draft can read: positions max(0, length - window) .. length - 1.
  for (size_t s = 0; s < rings_.size(); ++s) {
    for (int64_t p = std::max<int64_t>(0, length_ - window_); p < length_; ++p) {
      const size_t at = static_cast<size_t>((p % window_) * dim_);
      if (std::memcmp(rings_[s].data() + at, o.rings_[s].data() + at, static_cast<size_t>(dim_) * sizeof(float)) != 0)
        return fmt::format("DSpark stage {}: ring row of position {} differs", s, p);
    }
  }
  return {};
}

struct DSparkDrafter::Impl {
  const ModelConfig& c;
  mutable cpu::ThreadPool pool;
  cpu::Rope rope;  // the stages are sliding-window layers: the main rope, no YaRN
  int64_t H, n, D, nh, W;
  float eps, hc_eps;

  Impl(const ModelConfig& cfg, int threads)
      : c(cfg), pool(threads), rope(rope_spec(cfg, cfg.rope_main)), H(cfg.hidden_size), n(cfg.hc_mult), D(cfg.head_dim),
        nh(cfg.num_heads), W(cfg.sliding_window), eps(static_cast<float>(cfg.rms_norm_eps)),
        hc_eps(static_cast<float>(cfg.hc_eps)) {}

  void linear(const Linear& l, const float* x, int64_t T, float* y) const { cpu::linear(l, x, T, y, &pool); }

  // kv_norm(wkv(x)) rotated at positions pos0.. (rows [T, D]).
  void stage_kv(const Attention& a, const float* x, int64_t T, int64_t pos0, float* kv) const {
    linear(a.wkv, x, T, kv);
    cpu::rmsnorm(kv, T, D, a.kv_norm.data(), eps, kv);
    for (int64_t t = 0; t < T; ++t) rope.apply(kv + t * D, D, pos0 + t);
  }

  // DSparkAttention over the block rows of every sequence (B rows each, sequence i's rows
  // at i*B .., positions N_i ..): keys = values = the ring rows of positions
  // max(0, N-W) .. N-1 of that stage, then the B block rows; a per-head sink.
  void attention(const Attention& a, size_t stage, std::span<const DraftSeq> seqs, int64_t B, const float* x,
                 float* out) const {
    const int64_t T = static_cast<int64_t>(seqs.size()) * B, qr = c.q_lora_rank;
    Vec qres(static_cast<size_t>(T * qr)), q(static_cast<size_t>(T * nh * D)), kv(static_cast<size_t>(T * D));
    linear(a.wq_a, x, T, qres.data());
    cpu::rmsnorm(qres.data(), T, qr, a.q_norm.data(), eps, qres.data());
    linear(a.wq_b, qres.data(), T, q.data());
    cpu::rmsnorm(q.data(), T * nh, D, nullptr, eps, q.data());  // per-head unweighted
    linear(a.wkv, x, T, kv.data());
    cpu::rmsnorm(kv.data(), T, D, a.kv_norm.data(), eps, kv.data());
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t N = seqs[i].state->length();
      for (int64_t r = 0; r < B; ++r) {
        const int64_t t = static_cast<int64_t>(i) * B + r;
        rope.apply_heads(q.data() + t * nh * D, nh, D, D, N + r);
        rope.apply(kv.data() + t * D, D, N + r);
      }
    }
    Vec o(static_cast<size_t>(T * nh * D), 0.0f);
    const float scaling = static_cast<float>(std::pow(static_cast<double>(D), -0.5));
    pool.parallel_for(T * nh, 1, [&](int64_t b, int64_t e) {
      std::vector<const float*> keys;
      Vec s;
      for (int64_t it = b; it < e; ++it) {
        const int64_t t = it / nh, h = it % nh;
        const size_t i = static_cast<size_t>(t / B);
        const DSparkState& st = *seqs[i].state;
        const int64_t N = st.length();
        keys.clear();
        for (int64_t p = std::max<int64_t>(0, N - W); p < N; ++p) keys.push_back(st.rings_[stage].data() + (p % W) * D);
        for (int64_t r = 0; r < B; ++r) keys.push_back(kv.data() + (static_cast<int64_t>(i) * B + r) * D);
        cpu::attend_head(q.data() + (t * nh + h) * D, keys, a.sink[static_cast<size_t>(h)], scaling, D, s,
                         o.data() + (t * nh + h) * D);
      }
    });
    // K = V carried the rotation into the output: undo it at the query position.
    for (size_t i = 0; i < seqs.size(); ++i) {
      for (int64_t r = 0; r < B; ++r) {
        const int64_t t = static_cast<int64_t>(i) * B + r;
        rope.apply_heads(o.data() + t * nh * D, nh, D, D, seqs[i].state->length() + r, /*inverse=*/true);
      }
    }
    const int64_t G = c.o_groups, R = c.o_lora_rank, ig = nh * D / G;
    Vec mid(static_cast<size_t>(T * G * R));
    std::vector<cpu::LinearJob> groups(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) groups[static_cast<size_t>(g)] = {&a.wo_a, o.data() + g * ig, nh * D, mid.data() + g * R, G * R, g * R, R};
    cpu::linear(groups, T, &pool);
    linear(a.wo_b, mid.data(), T, out);
  }
};

namespace {

void check(bool ok, const char* what, int64_t got, int64_t want) {
  if (!ok) fail(ErrorKind::Usage, "DSpark drafter: {} has {} values; expected {}", what, got, want);
}

}  // namespace

DSparkDrafter::DSparkDrafter(const Forward& target, const DSparkWeights& w, int threads)
    : f_(target), w_(w), impl_(std::make_unique<Impl>(target.weights().config, threads)) {
  const ModelConfig& c = target.weights().config;
  const int64_t H = c.hidden_size, V = c.vocab_size, r = w.config.markov_rank;
  const int64_t F = static_cast<int64_t>(w.config.target_layer_ids.size()) * H;
  if (!c.dspark) fail(ErrorKind::Usage, "DSpark drafter: the target's config declares no drafter");
  if (!w.main_proj.complete()) {
    fail(ErrorKind::Usage, "DSpark drafter: its weights were loaded without their linears (LoadOptions::skip_linears: "
                           "for the CUDA drafter only)");
  }
  check(w.main_proj.out == H && w.main_proj.in == F, "main_proj", w.main_proj.out * w.main_proj.in, H * F);
  check(static_cast<int64_t>(w.main_norm.size()) == H, "main_norm", static_cast<int64_t>(w.main_norm.size()), H);
  check(static_cast<int64_t>(w.stages.size()) == w.config.stages && !w.stages.empty(), "stages",
        static_cast<int64_t>(w.stages.size()), w.config.stages);
  check(static_cast<int64_t>(w.markov_w1.data.size()) == V * r, "markov_w1", static_cast<int64_t>(w.markov_w1.data.size()), V * r);
  check(w.markov_w2.out == V && w.markov_w2.in == r, "markov_w2", w.markov_w2.out * w.markov_w2.in, V * r);
  check(w.confidence.empty() || static_cast<int64_t>(w.confidence.size()) == H + r, "confidence_head.proj",
        static_cast<int64_t>(w.confidence.size()), H + r);
  if (w.config.block_size < 1) fail(ErrorKind::Usage, "DSpark drafter: block size {}", w.config.block_size);
  for (int64_t l : w.config.target_layer_ids) {
    if (l < 0 || l >= c.num_layers) fail(ErrorKind::Usage, "DSpark drafter: target layer {} of {}", l, c.num_layers);
  }
}

DSparkDrafter::~DSparkDrafter() = default;

int64_t DSparkDrafter::feature_width() const {
  return static_cast<int64_t>(w_.config.target_layer_ids.size()) * impl_->H;
}

DSparkState DSparkDrafter::new_state() const {
  DSparkState s;
  s.window_ = impl_->W;
  s.dim_ = impl_->D;
  s.rings_.assign(w_.stages.size(), Vec(static_cast<size_t>(s.window_ * s.dim_), 0.0f));
  return s;
}

void DSparkDrafter::commit(std::span<const CommitSeq> seqs) const {
  const Impl& im = *impl_;
  const int64_t F = feature_width(), H = im.H, D = im.D;
  int64_t T = 0;
  for (const CommitSeq& q : seqs) {
    if (q.features.size() % static_cast<size_t>(F) != 0) {
      fail(ErrorKind::Usage, "DSpark commit: {} feature values are not rows of {}", q.features.size(), F);
    }
    T += static_cast<int64_t>(q.features.size()) / F;
  }
  if (T == 0) return;
  Vec feats, mx(static_cast<size_t>(T * H)), kv(static_cast<size_t>(T * D));
  feats.reserve(static_cast<size_t>(T * F));
  for (const CommitSeq& q : seqs) feats.insert(feats.end(), q.features.begin(), q.features.end());
  im.linear(w_.main_proj, feats.data(), T, mx.data());
  cpu::rmsnorm(mx.data(), T, H, w_.main_norm.data(), im.eps, mx.data());
  for (size_t s = 0; s < w_.stages.size(); ++s) {
    im.linear(w_.stages[s].attn.wkv, mx.data(), T, kv.data());
    cpu::rmsnorm(kv.data(), T, D, w_.stages[s].attn.kv_norm.data(), im.eps, kv.data());
    int64_t row = 0;
    for (const CommitSeq& q : seqs) {
      DSparkState& st = *q.state;
      const int64_t Ti = static_cast<int64_t>(q.features.size()) / F;
      for (int64_t t = 0; t < Ti; ++t, ++row) {
        const int64_t p = st.length_ + t;
        float* dst = st.rings_[s].data() + (p % st.window_) * D;
        std::memcpy(dst, kv.data() + row * D, static_cast<size_t>(D) * sizeof(float));
        im.rope.apply(dst, D, p);
      }
    }
  }
  for (const CommitSeq& q : seqs) q.state->length_ += static_cast<int64_t>(q.features.size()) / F;
}

std::vector<DSparkDrafter::DraftOut> DSparkDrafter::draft(std::span<const DraftSeq> seqs, const Choose& choose) const {
  const Impl& im = *impl_;
  const ModelConfig& c = f_.weights().config;
  const int64_t B = block_size(), H = im.H, n = im.n, V = c.vocab_size, r = w_.config.markov_rank;
  const int64_t T = static_cast<int64_t>(seqs.size()) * B;
  std::vector<DraftOut> outs(seqs.size());
  if (seqs.empty()) return outs;
  std::vector<int32_t> ids(static_cast<size_t>(T), static_cast<int32_t>(w_.config.noise_token_id));
  for (size_t i = 0; i < seqs.size(); ++i) {
    const DraftSeq& q = seqs[i];
    if (q.state->rings_.size() != w_.stages.size()) fail(ErrorKind::Usage, "DSpark draft: the state was made for another drafter");
    if (q.drafts < 0 || q.drafts > B) fail(ErrorKind::Usage, "DSpark draft: {} drafts; the block holds {}", q.drafts, B);
    if (q.anchor < 0 || q.anchor >= V) fail(ErrorKind::Usage, "DSpark draft: anchor token {} outside [0, {})", q.anchor, V);
    ids[i * static_cast<size_t>(B)] = q.anchor;
  }
  // The block's embeddings copied into every stream.
  const auto& embed = f_.weights().embed.data;
  Vec X(static_cast<size_t>(T * n * H));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t s = 0; s < n; ++s) {
      std::memcpy(X.data() + (t * n + s) * H, embed.data() + static_cast<int64_t>(ids[static_cast<size_t>(t)]) * H,
                  static_cast<size_t>(H) * sizeof(float));
    }
  }
  for (size_t s = 0; s < w_.stages.size(); ++s) {
    const Block& b = w_.stages[s];
    f_.block_with(b, X, T, ids, [&](const float* x, int64_t, float* out) { im.attention(b.attn, s, seqs, B, x, out); });
  }
  // hc_head (pre-norm hidden h), then the target's head on norm(h).
  Vec h(static_cast<size_t>(T * H)), hn(static_cast<size_t>(T * H)), base(static_cast<size_t>(T * V));
  cpu::hc_head(n, H, w_.hc_head.fn.data.data(), w_.hc_head.base.data(), w_.hc_head.scale, im.hc_eps, im.eps, X.data(), T,
               h.data(), &im.pool);
  cpu::rmsnorm(h.data(), T, H, w_.norm.data(), im.eps, hn.data());
  im.linear(f_.weights().head, hn.data(), T, base.data());
  // The sequential Markov loop.
  Vec bias(static_cast<size_t>(V));
  for (size_t i = 0; i < seqs.size(); ++i) {
    DraftOut& d = outs[i];
    const int64_t row0 = static_cast<int64_t>(i) * B;
    d.base.assign(base.begin() + row0 * V, base.begin() + (row0 + B) * V);
    int32_t prev = seqs[i].anchor;
    for (int k = 0; k < seqs[i].drafts; ++k) {
      const float* e = w_.markov_w1.data.data() + static_cast<int64_t>(prev) * r;
      im.linear(w_.markov_w2, e, 1, bias.data());
      const float* u = base.data() + (row0 + k) * V;
      const size_t at = d.adjusted.size();
      d.adjusted.resize(at + static_cast<size_t>(V));
      for (int64_t v = 0; v < V; ++v) d.adjusted[at + static_cast<size_t>(v)] = u[v] + bias[static_cast<size_t>(v)];
      if (!w_.confidence.empty()) {
        const float logit = cpu::dot(w_.confidence.data(), h.data() + (row0 + k) * H, H) + cpu::dot(w_.confidence.data() + H, e, r);
        d.confidence.push_back(1.0f / (1.0f + std::exp(-logit)));
      }
      prev = choose(i, k, std::span<const float>(d.adjusted).subspan(at, static_cast<size_t>(V)));
      if (prev < 0 || prev >= V) fail(ErrorKind::Usage, "DSpark draft: chose token {} outside [0, {})", prev, V);
      d.tokens.push_back(prev);
    }
  }
  return outs;
}

}  // namespace kiln::model
