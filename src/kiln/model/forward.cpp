// CPU reference forward of DeepSeek-V4, written against transformers 5.17's
// modeling_deepseek_v4.py (DeepseekV4ForCausalLM) and, for the MTP block, DeepSeek's
// inference/model.py MTPBlock. Everything is fp32; transformers does not simulate the
// FP8/FP4 activation or KV rounding of DeepSeek's kernels, and neither does this.
//
// Choices where the references leave freedom (see also the comments at each site):
//  * Indexer top-k and score routing top-k break exact score ties by the LOWEST index
//    (torch.topk's tie order is unspecified and differs between prefill and decode).
//  * Every reduction has a fixed association (ops/cpu/vec.h), and each token's
//    computation reads only that token's inputs and the state, so the logits at a position
//    are bitwise identical whether the prompt is fed at once, in chunks, or one by one.
//  * swiglu_limit <= 0 disables the clamp (DeepSeek's Expert; transformers always clamps
//    and its configs always carry a positive limit).
//  * Routing follows DeepSeek's Gate for every scoring_func (ops/cpu/moe_route.h);
//    norm_topk_prob is ignored, as by both references: sqrtsoftplus and sigmoid weights are
//    renormalised, w = s / (sum s + 1e-20) * routed_scaling_factor (transformers' 1e-20);
//    softmax weights are the probabilities themselves, times routed_scaling_factor.
// Conventions taken from transformers (not choices): the sliding window is the
// `sliding_window` positions p-W+1..p (mask kv_idx > q_idx - W); compressed entry j pools
// block [j*m, (j+1)*m) and is rotated at position j*m; query p sees entries j < (p+1) div m;
// the sink logit takes part in the softmax max and denominator; MTP row i runs at
// position mtp_length + i (forward.h).
// Threading: matrix products, attention and the indexer use the Forward's pool; step()
// on different states from several threads is safe (pool jobs are serialised).
#include "kiln/model/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>

#include "kiln/core/error.h"
#include "kiln/ops/cpu/hyper_connection.h"
#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/moe_route.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::model {

namespace cpu = kiln::ops::cpu;

// ---------------------------------------------------------------------------------------
// Decode state
// ---------------------------------------------------------------------------------------

// One compressor's running state (transformers' DeepseekV4HCACache / CSACache entries:
// buffer_kv/buffer_gate, overlap_kv/overlap_gate, compressed_kv, entry_count), arranged
// for rollback. Instead of copying the unfinished block's rows and the overlap rows
// aside, the raw rows of the last `cap` positions stay in a ring (slot = position % cap):
// the unfinished block is positions count*ratio .. length-1, the overlap ("Ca") rows are
// the first-half channels of the last finished block, positions (count-1)*ratio ..
// count*ratio-1. cap = (overlap ? 2 : 1) * ratio + kMaxRollback keeps both for every
// length down to high_water - kMaxRollback, so truncation only resets `length` and
// `count` and pops the entries emitted for removed positions (entries are append-only:
// entry j depends only on positions < (j+1)*ratio).
struct CompressorState {
  int64_t ratio = 0, dim = 0, width = 0;  // width = (overlap ? 2 : 1) * dim
  bool overlap = false;
  int64_t cap = 0;
  // Raw rows [cap, width]: kv = x Wkv^T and score = x Wgate^T + ape[pos % ratio].
  std::vector<float> kv, score;
  int64_t length = 0;  // positions fed
  // Emitted entries [count, dim]: RMS-normed and rotated at position j * ratio.
  std::vector<float> entries;
  int64_t count = 0;

  CompressorState(int64_t r, int64_t d, bool ov)
      : ratio(r), dim(d), width(ov ? 2 * d : d), overlap(ov), cap((ov ? 2 : 1) * r + DecodeState::kMaxRollback) {
    kv.resize(static_cast<size_t>(cap * width));
    score.resize(static_cast<size_t>(cap * width));
  }
  const float* entry(int64_t j) const { return entries.data() + j * dim; }
  float* kv_row(int64_t p) { return kv.data() + (p % cap) * width; }
  float* score_row(int64_t p) { return score.data() + (p % cap) * width; }
  const float* kv_row(int64_t p) const { return kv.data() + (p % cap) * width; }
  const float* score_row(int64_t p) const { return score.data() + (p % cap) * width; }
  void truncate(int64_t new_length) {
    length = new_length;
    count = new_length / ratio;
    entries.resize(static_cast<size_t>(count * dim));
  }
};

// Per layer: the sliding-window K=V ring (slot = position % cap) and the compressors.
// cap = sliding_window + kMaxRollback, so the rows a rollback re-exposes are still there.
struct LayerState {
  int64_t cap = 0, dim = 0, sliding_window = 0;
  std::vector<float> window;  // [cap, dim]
  std::optional<CompressorState> comp;   // CSA / HCA
  std::optional<CompressorState> icomp;  // CSA: the indexer's compressor
  void truncate(int64_t new_length) {
    if (comp) comp->truncate(new_length);
    if (icomp) icomp->truncate(new_length);
  }
};

DecodeState::DecodeState() = default;
DecodeState::~DecodeState() = default;
DecodeState::DecodeState(DecodeState&&) noexcept = default;
DecodeState& DecodeState::operator=(DecodeState&&) noexcept = default;

DecodeState::DecodeState(const DecodeState& o)
    : length_(o.length_), high_(o.high_), tokens_(o.tokens_), mtp_length_(o.mtp_length_), mtp_high_(o.mtp_high_) {
  layers_.reserve(o.layers_.size());
  for (const auto& l : o.layers_) layers_.push_back(std::make_unique<LayerState>(*l));
  mtp_.reserve(o.mtp_.size());
  for (const auto& l : o.mtp_) mtp_.push_back(std::make_unique<LayerState>(*l));
}

int64_t DecodeState::mtp_length(int m) const {
  if (m < 0 || static_cast<size_t>(m) >= mtp_length_.size()) {
    fail(ErrorKind::Usage, "mtp_length: MTP block {} out of range [0, {})", m, mtp_length_.size());
  }
  return mtp_length_[static_cast<size_t>(m)];
}

int64_t DecodeState::mtp_high_water(int m) const {
  static_cast<void>(mtp_length(m));  // range check
  return mtp_high_[static_cast<size_t>(m)];
}

namespace {

bool same_floats(const float* a, const float* b, int64_t n) {
  return std::memcmp(a, b, static_cast<size_t>(n) * sizeof(float)) == 0;
}

// First position both rings of `cap` rows still hold, for states of high-water marks ha, hb.
int64_t held_from(int64_t cap, int64_t ha, int64_t hb) { return std::max<int64_t>({0, ha - cap, hb - cap}); }

std::string compressor_difference(const CompressorState& a, const CompressorState& b, int64_t ha, int64_t hb) {
  if (a.ratio != b.ratio || a.dim != b.dim || a.overlap != b.overlap || a.cap != b.cap) return "compressor shapes differ";
  if (a.length != b.length) return fmt::format("compressor length {} vs {}", a.length, b.length);
  if (a.count != b.count) return fmt::format("compressor entry count {} vs {}", a.count, b.count);
  if (a.entries.size() != b.entries.size()) return "compressor entry storage sizes differ";
  for (int64_t j = 0; j < a.count; ++j) {
    if (!same_floats(a.entry(j), b.entry(j), a.dim)) return fmt::format("compressed entry {} differs", j);
  }
  const int64_t m = a.ratio, lo = held_from(a.cap, ha, hb);
  // Pending rows of the unfinished block (every channel).
  for (int64_t p = a.count * m; p < a.length; ++p) {
    if (p < lo) return fmt::format("pending row of position {} is no longer held", p);
    if (!same_floats(a.kv_row(p), b.kv_row(p), a.width)) return fmt::format("pending kv row of position {} differs", p);
    if (!same_floats(a.score_row(p), b.score_row(p), a.width))
      return fmt::format("pending score row of position {} differs", p);
  }
  // Overlap rows: first-half channels of the last finished block.
  if (a.overlap && a.count > 0) {
    for (int64_t p = (a.count - 1) * m; p < a.count * m; ++p) {
      if (p < lo) return fmt::format("overlap row of position {} is no longer held", p);
      if (!same_floats(a.kv_row(p), b.kv_row(p), a.dim)) return fmt::format("overlap kv row of position {} differs", p);
      if (!same_floats(a.score_row(p), b.score_row(p), a.dim))
        return fmt::format("overlap score row of position {} differs", p);
    }
  }
  // Every raw row both rings hold.
  for (int64_t p = lo; p < a.length; ++p) {
    if (!same_floats(a.kv_row(p), b.kv_row(p), a.width) || !same_floats(a.score_row(p), b.score_row(p), a.width))
      return fmt::format("held raw row of position {} differs", p);
  }
  return {};
}

std::string layer_difference(const LayerState& a, const LayerState& b, int64_t length, int64_t ha, int64_t hb) {
  if (a.cap != b.cap || a.dim != b.dim || a.sliding_window != b.sliding_window) return "window shapes differ";
  // The rows a later query reads (positions length - sliding_window ..) must be held.
  const int64_t lo = held_from(a.cap, ha, hb);
  if (lo > std::max<int64_t>(0, length - a.sliding_window))
    return fmt::format("window row of position {} is no longer held", lo - 1);
  for (int64_t p = lo; p < length; ++p) {
    if (!same_floats(a.window.data() + (p % a.cap) * a.dim, b.window.data() + (p % b.cap) * b.dim, a.dim))
      return fmt::format("window row of position {} differs", p);
  }
  if (a.comp.has_value() != b.comp.has_value() || a.icomp.has_value() != b.icomp.has_value())
    return "compressor presence differs";
  if (a.comp) {
    if (std::string d = compressor_difference(*a.comp, *b.comp, ha, hb); !d.empty()) return "attention " + d;
  }
  if (a.icomp) {
    if (std::string d = compressor_difference(*a.icomp, *b.icomp, ha, hb); !d.empty()) return "indexer " + d;
  }
  return {};
}

}  // namespace

std::string DecodeState::difference(const DecodeState& o) const {
  if (length_ != o.length_) return fmt::format("main length {} vs {}", length_, o.length_);
  if (tokens_ != o.tokens_) return "main token lists differ";
  if (layers_.size() != o.layers_.size() || mtp_.size() != o.mtp_.size()) return "states of different models";
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (std::string d = layer_difference(*layers_[l], *o.layers_[l], length_, high_, o.high_); !d.empty())
      return fmt::format("layer {}: {}", l, d);
  }
  for (size_t m = 0; m < mtp_.size(); ++m) {
    if (mtp_length_[m] != o.mtp_length_[m])
      return fmt::format("MTP block {} length {} vs {}", m, mtp_length_[m], o.mtp_length_[m]);
    if (std::string d = layer_difference(*mtp_[m], *o.mtp_[m], mtp_length_[m], mtp_high_[m], o.mtp_high_[m]); !d.empty())
      return fmt::format("MTP block {}: {}", m, d);
  }
  return {};
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

namespace {

using Vec = std::vector<float>;

Vec zeros(int64_t n) { return Vec(static_cast<size_t>(n), 0.0f); }

void check_linear(const Linear& l, int64_t out, int64_t in, const char* what, int64_t layer) {
  if (l.out != out || l.in != in || !l.complete()) {
    fail(ErrorKind::Usage, "forward: layer {} {} is [{}, {}] ({}); expected [{}, {}]", layer, what, l.out, l.in,
         l.quantized() ? "quantized" : fmt::format("{} fp32 values", l.w.size()), out, in);
  }
}

void check_vec(const std::vector<float>& v, int64_t n, const char* what, int64_t layer) {
  if (static_cast<int64_t>(v.size()) != n) {
    fail(ErrorKind::Usage, "forward: layer {} {} has {} values; expected {}", layer, what, v.size(), n);
  }
}

float fpow(double base, double e) { return static_cast<float>(std::pow(base, e)); }

// One sequence's rows in a batched pass: rows [row0, row0 + T) at positions P0 .. P0+T-1,
// with that sequence's state of the layer being run.
struct Seg {
  LayerState* st = nullptr;
  int64_t row0 = 0, T = 0, P0 = 0;
};

}  // namespace

struct Forward::Impl {
  const Weights& w;
  const ModelConfig& c;
  mutable cpu::ThreadPool pool;
  cpu::Rope rope_main, rope_compress;
  int64_t H, n, D, nh, r;
  float eps, hc_eps;
  bool fuse;

  Impl(const Weights& weights, int threads, bool fuse_projections)
      : w(weights), c(weights.config), pool(threads), H(c.hidden_size), n(c.hc_mult), D(c.head_dim), nh(c.num_heads),
        r(c.rope_head_dim), eps(static_cast<float>(c.rms_norm_eps)), hc_eps(static_cast<float>(c.hc_eps)), fuse(fuse_projections) {
    rope_main = cpu::Rope(spec(c.rope_main));
    rope_compress = cpu::Rope(spec(c.rope_compress));
    validate();
  }

  cpu::RopeSpec spec(const RopeParams& p) const { return rope_spec(c, p); }

  // Sliding-window layers use the main rope (rope_theta); CSA/HCA layers the compress
  // rope (compress_rope_theta, YaRN) for q, kv, compressed entries, indexer and output.
  const cpu::Rope& rope_for(const Attention& a) const { return a.kind == AttnKind::SWA ? rope_main : rope_compress; }

  // y [T, l.out] = x [T, l.in] W^T: the one entry point of every matrix product.
  void linear(const Linear& l, const float* x, int64_t T, float* y) const { cpu::linear(l, x, T, y, &pool); }
  // Two products (contiguous x and y rows) in one pass of the pool when fusing.
  void linear2(const Linear& a, const float* xa, float* ya, const Linear& b, const float* xb, float* yb,
               int64_t T) const {
    const cpu::LinearJob jobs[2] = {{&a, xa, a.in, ya, a.out, 0, a.out}, {&b, xb, b.in, yb, b.out, 0, b.out}};
    if (fuse) {
      cpu::linear(jobs, T, &pool);
    } else {
      cpu::linear(std::span(jobs, 1), T, &pool);
      cpu::linear(std::span(jobs + 1, 1), T, &pool);
    }
  }

  void validate_block(const Block& b, int64_t layer) const {
    const Attention& a = b.attn;
    check_vec(b.attn_norm, H, "attn_norm", layer);
    check_vec(b.ffn_norm, H, "ffn_norm", layer);
    const int64_t mix = (2 + n) * n;
    for (const HyperConnection* hc : {&b.hc_attn, &b.hc_ffn}) {
      if (static_cast<int64_t>(hc->fn.data.size()) != mix * n * H || static_cast<int64_t>(hc->base.size()) != mix ||
          hc->scale.size() != 3) {
        fail(ErrorKind::Usage, "forward: layer {} mHC parameters have the wrong size", layer);
      }
    }
    const int64_t qr = c.q_lora_rank;
    check_linear(a.wq_a, qr, H, "wq_a", layer);
    check_vec(a.q_norm, qr, "q_norm", layer);
    check_linear(a.wq_b, nh * D, qr, "wq_b", layer);
    check_linear(a.wkv, D, H, "wkv", layer);
    check_vec(a.kv_norm, D, "kv_norm", layer);
    const int64_t G = c.o_groups, R = c.o_lora_rank;
    if (G <= 0 || (nh * D) % G != 0) fail(ErrorKind::Usage, "forward: o_groups {} does not divide heads", G);
    check_linear(a.wo_a, G * R, nh * D / G, "wo_a", layer);
    check_linear(a.wo_b, H, G * R, "wo_b", layer);
    check_vec(a.sink, nh, "attn_sink", layer);
    if (a.kind != AttnKind::SWA) {
      if (!a.compressor) fail(ErrorKind::Usage, "forward: layer {} is {} but has no compressor", layer, attn_kind_name(a.kind));
      validate_compressor(*a.compressor, D, layer);
    }
    if (a.kind == AttnKind::CSA) {
      if (!a.indexer) fail(ErrorKind::Usage, "forward: layer {} is CSA but has no indexer", layer);
      check_linear(a.indexer->wq_b, c.index_n_heads * c.index_head_dim, qr, "indexer.wq_b", layer);
      check_linear(a.indexer->weights_proj, c.index_n_heads, H, "indexer.weights_proj", layer);
      validate_compressor(a.indexer->compressor, c.index_head_dim, layer);
    }
    const Moe& m = b.ffn;
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
    check_linear(m.gate, E, H, "ffn.gate", layer);
    if (static_cast<int64_t>(m.experts.size()) != E) fail(ErrorKind::Usage, "forward: layer {} has {} experts; expected {}", layer, m.experts.size(), E);
    if (m.hash) {
      if (static_cast<int64_t>(m.tid2eid.size()) != c.vocab_size * K) fail(ErrorKind::Usage, "forward: layer {} tid2eid has the wrong size", layer);
      for (int32_t e : m.tid2eid) {
        if (e < 0 || e >= E) fail(ErrorKind::Usage, "forward: layer {} tid2eid holds expert {} (of {})", layer, e, E);
      }
    } else {
      check_vec(m.bias, E, "ffn.gate.bias", layer);
    }
    for (const Expert& e : m.experts) validate_expert(e, layer);
    if (m.shared) validate_expert(*m.shared, layer);
  }

  void validate_expert(const Expert& e, int64_t layer) const {
    const int64_t I = e.w1.out;
    check_linear(e.w1, I, H, "expert w1", layer);
    check_linear(e.w3, I, H, "expert w3", layer);
    check_linear(e.w2, H, I, "expert w2", layer);
  }

  void validate_compressor(const Compressor& cp, int64_t dim, int64_t layer) const {
    const int64_t width = (cp.overlap ? 2 : 1) * dim;
    if (cp.dim != dim || cp.ratio <= 0) fail(ErrorKind::Usage, "forward: layer {} compressor dim/ratio invalid", layer);
    check_linear(cp.wkv, width, H, "compressor.wkv", layer);
    check_linear(cp.wgate, width, H, "compressor.wgate", layer);
    if (static_cast<int64_t>(cp.ape.data.size()) != cp.ratio * width) fail(ErrorKind::Usage, "forward: layer {} compressor ape has the wrong size", layer);
    check_vec(cp.norm, dim, "compressor.norm", layer);
  }

  void validate() const {
    if (H <= 0 || n <= 0 || D <= 0 || nh <= 0 || r <= 0 || r > D || c.sliding_window <= 0) {
      fail(ErrorKind::Usage, "forward: config dimensions are not set");
    }
    if (static_cast<int64_t>(w.embed.data.size()) != c.vocab_size * H) fail(ErrorKind::Usage, "forward: embed has the wrong size");
    check_linear(w.head, c.vocab_size, H, "head", -1);
    check_vec(w.norm, H, "norm", -1);
    if (static_cast<int64_t>(w.layers.size()) != c.num_layers) fail(ErrorKind::Usage, "forward: {} layers; config has {}", w.layers.size(), c.num_layers);
    for (size_t l = 0; l < w.layers.size(); ++l) validate_block(w.layers[l], static_cast<int64_t>(l));
    for (size_t m = 0; m < w.mtp.size(); ++m) {
      const int64_t layer = c.num_layers + static_cast<int64_t>(m);
      validate_block(w.mtp[m].block, layer);
      check_linear(w.mtp[m].e_proj, H, H, "mtp e_proj", layer);
      check_linear(w.mtp[m].h_proj, H, H, "mtp h_proj", layer);
    }
  }

  std::unique_ptr<LayerState> make_layer_state(const Attention& a) const {
    auto s = std::make_unique<LayerState>();
    s->sliding_window = c.sliding_window;
    s->cap = c.sliding_window + DecodeState::kMaxRollback;
    s->dim = D;
    s->window.assign(static_cast<size_t>(s->cap * D), 0.0f);
    if (a.compressor) s->comp.emplace(a.compressor->ratio, D, a.compressor->overlap);
    if (a.indexer) s->icomp.emplace(a.indexer->compressor.ratio, c.index_head_dim, a.indexer->compressor.overlap);
    return s;
  }

  // ---- compressor -----------------------------------------------------------------------

  // Feeds rows (a = x Wkv^T, z = x Wgate^T) of T tokens at positions P0.. and emits an
  // entry each time a block of `ratio` tokens completes (transformers'
  // DeepseekV4{HCA,CSA}Compressor / Indexer compressor with its cache).
  void compress(const Compressor& cp, CompressorState& s, const cpu::Rope& rope, const float* a, const float* z,
                int64_t T, int64_t P0) const {
    const int64_t m = s.ratio, W = s.width;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t p = P0 + t;  // == s.length
      const float* ape = cp.ape.data.data() + (p % m) * W;
      std::memcpy(s.kv_row(p), a + t * W, static_cast<size_t>(W) * sizeof(float));
      float* sc = s.score_row(p);
      for (int64_t i = 0; i < W; ++i) sc[i] = z[t * W + i] + ape[i];
      if (++s.length % m == 0) emit(cp, s, rope);
    }
  }

  // Emits entry j = count from block j's rows (positions j*ratio ..) and, for overlap,
  // block j-1's first-half rows, all read from the ring.
  void emit(const Compressor& cp, CompressorState& s, const cpu::Rope& rope) const {
    const int64_t m = s.ratio, d = s.dim, j = s.count;
    // Pool per channel with a softmax over the rows: for overlap, rows 0..m-1 are the
    // previous block's first-half channels (absent = weight 0 before the first entry),
    // rows m..2m-1 this block's second-half channels; otherwise the m rows of this block.
    const int64_t off = s.overlap ? d : 0;
    Vec out = zeros(d);
    const int64_t rows = s.overlap ? 2 * m : m;
    Vec sc(static_cast<size_t>(rows)), kv(static_cast<size_t>(rows));
    for (int64_t ch = 0; ch < d; ++ch) {
      int64_t k = 0;
      if (s.overlap && j > 0) {
        for (int64_t i = 0; i < m; ++i, ++k) {
          const int64_t p = (j - 1) * m + i;
          sc[static_cast<size_t>(k)] = s.score_row(p)[ch];
          kv[static_cast<size_t>(k)] = s.kv_row(p)[ch];
        }
      }
      for (int64_t i = 0; i < m; ++i, ++k) {
        const int64_t p = j * m + i;
        sc[static_cast<size_t>(k)] = s.score_row(p)[off + ch];
        kv[static_cast<size_t>(k)] = s.kv_row(p)[off + ch];
      }
      float mx = -INFINITY;
      for (int64_t i = 0; i < k; ++i) mx = std::max(mx, sc[static_cast<size_t>(i)]);
      float sum = 0.0f;
      for (int64_t i = 0; i < k; ++i) {
        sc[static_cast<size_t>(i)] = std::exp(sc[static_cast<size_t>(i)] - mx);
        sum += sc[static_cast<size_t>(i)];
      }
      float acc = 0.0f;
      for (int64_t i = 0; i < k; ++i) acc += kv[static_cast<size_t>(i)] * (sc[static_cast<size_t>(i)] / sum);
      out[static_cast<size_t>(ch)] = acc;
    }
    cpu::rmsnorm(out.data(), 1, d, cp.norm.data(), eps, out.data());
    // Rotated at the block's first position j * ratio (transformers: positions =
    // i * compress_rate + first_window_position).
    rope.apply(out.data(), d, j * m);
    s.entries.insert(s.entries.end(), out.begin(), out.end());
    ++s.count;
  }

  // Projects the rows of every sequence at once (one read of wkv and wgate) and feeds each
  // sequence's compressor (`which` picks it from the sequence's layer state).
  void run_compressor(const Compressor& cp, CompressorState& (*which)(LayerState&), const cpu::Rope& rope,
                      std::span<const Seg> segs, const float* x, int64_t T) const {
    const int64_t W = (cp.overlap ? 2 : 1) * cp.dim;
    Vec a(static_cast<size_t>(T * W)), z(static_cast<size_t>(T * W));
    linear2(cp.wkv, x, a.data(), cp.wgate, x, z.data(), T);
    for (const Seg& g : segs) compress(cp, which(*g.st), rope, a.data() + g.row0 * W, z.data() + g.row0 * W, g.T, g.P0);
  }
  static CompressorState& main_comp(LayerState& st) { return *st.comp; }
  static CompressorState& index_comp(LayerState& st) { return *st.icomp; }

  // ---- attention --------------------------------------------------------------------------

  // Lightning indexer (CSA): for each query, the compressed entries it attends to, sorted
  // ascending. score(t, j) = sum_h relu(q_h . k_j) * index_head_dim^-0.5 *
  // (x . weights_proj_h) * index_n_heads^-0.5 over visible j < (p+1) div ratio; keep the
  // min(index_topk, visible) highest, exact ties to the lowest j.
  // Rows of all sequences at once: pos[t] is row t's position, seg_of[t] its sequence.
  std::vector<std::vector<int64_t>> index_select(const Indexer& ix, const cpu::Rope& rope, std::span<const Seg> segs,
                                                 std::span<const int64_t> pos, std::span<const int32_t> seg_of,
                                                 const float* x, const float* qres, int64_t T) const {
    const int64_t ih = c.index_n_heads, id = c.index_head_dim;
    run_compressor(ix.compressor, index_comp, rope, segs, x, T);
    Vec q(static_cast<size_t>(T * ih * id)), wts(static_cast<size_t>(T * ih));
    linear2(ix.wq_b, qres, q.data(), ix.weights_proj, x, wts.data(), T);
    const float softmax_scale = fpow(static_cast<double>(id), -0.5);
    const float weights_scaling = fpow(static_cast<double>(ih), -0.5);
    for (int64_t t = 0; t < T; ++t) {
      rope.apply_heads(q.data() + t * ih * id, ih, id, id, pos[static_cast<size_t>(t)]);
      for (int64_t h = 0; h < ih; ++h) wts[static_cast<size_t>(t * ih + h)] *= weights_scaling;
    }
    std::vector<std::vector<int64_t>> sel(static_cast<size_t>(T));
    pool.parallel_for(T, 1, [&](int64_t b, int64_t e) {
      Vec score;
      std::vector<int64_t> idx;
      for (int64_t t = b; t < e; ++t) {
        const CompressorState& s = *segs[static_cast<size_t>(seg_of[static_cast<size_t>(t)])].st->icomp;
        const int64_t m = s.ratio;
        const int64_t vis = std::min((pos[static_cast<size_t>(t)] + 1) / m, s.count);
        const int64_t k = std::min(c.index_topk, vis);
        auto& out = sel[static_cast<size_t>(t)];
        out.clear();
        if (k <= 0) continue;
        score.assign(static_cast<size_t>(vis), 0.0f);
        const float* qt = q.data() + t * ih * id;
        const float* wt = wts.data() + t * ih;
        for (int64_t j = 0; j < vis; ++j) {
          const float* kj = s.entry(j);
          float acc = 0.0f;
          for (int64_t h = 0; h < ih; ++h) {
            const float dd = cpu::dot(qt + h * id, kj, id);
            acc += (std::max(dd, 0.0f) * softmax_scale) * wt[h];
          }
          score[static_cast<size_t>(j)] = acc;
        }
        idx.resize(static_cast<size_t>(vis));
        std::iota(idx.begin(), idx.end(), int64_t{0});
        auto better = [&](int64_t i, int64_t j) {
          const float a = score[static_cast<size_t>(i)], bb = score[static_cast<size_t>(j)];
          return a > bb || (a == bb && i < j);
        };
        if (k < vis) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
        out.assign(idx.begin(), idx.begin() + k);
        std::sort(out.begin(), out.end());
      }
    });
    return sel;
  }

  // DeepseekV4Attention.forward for the T rows of all sequences (segs; pos[t] and
  // seg_of[t] give row t's position and sequence); writes out [T, H]. The projections
  // read each weight once for all rows; the attention core reads each row's own state.
  void attention(const Attention& a, std::span<const Seg> segs, std::span<const int64_t> pos,
                 std::span<const int32_t> seg_of, const float* x, int64_t T, float* out) const {
    const cpu::Rope& rope = rope_for(a);
    const int64_t qr = c.q_lora_rank, Wn = c.sliding_window;
    // q path
    Vec qres(static_cast<size_t>(T * qr)), kv(static_cast<size_t>(T * D));
    linear2(a.wq_a, x, qres.data(), a.wkv, x, kv.data(), T);
    cpu::rmsnorm(qres.data(), T, qr, a.q_norm.data(), eps, qres.data());
    Vec q(static_cast<size_t>(T * nh * D));
    linear(a.wq_b, qres.data(), T, q.data());
    cpu::rmsnorm(q.data(), T * nh, D, nullptr, eps, q.data());  // per-head unweighted RMS norm
    for (int64_t t = 0; t < T; ++t) rope.apply_heads(q.data() + t * nh * D, nh, D, D, pos[static_cast<size_t>(t)]);
    // the single K=V head
    cpu::rmsnorm(kv.data(), T, D, a.kv_norm.data(), eps, kv.data());
    for (int64_t t = 0; t < T; ++t) rope.apply(kv.data() + t * D, D, pos[static_cast<size_t>(t)]);

    // compressed entries (all tokens of the chunk are fed first; visibility is per query)
    std::vector<std::vector<int64_t>> selected;
    if (a.compressor) run_compressor(*a.compressor, main_comp, rope, segs, x, T);
    if (a.kind == AttnKind::CSA) selected = index_select(*a.indexer, rope, segs, pos, seg_of, x, qres.data(), T);

    // Key lists per query: window positions max(0, p-W+1)..p (transformers' sliding mask
    // kv_idx > q_idx - sliding_window), then the compressed entries.
    std::vector<std::vector<const float*>> keys(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const Seg& g = segs[static_cast<size_t>(seg_of[static_cast<size_t>(t)])];
      const LayerState& st = *g.st;
      const int64_t p = pos[static_cast<size_t>(t)], P0 = g.P0;
      auto& ks = keys[static_cast<size_t>(t)];
      for (int64_t qp = std::max<int64_t>(0, p - Wn + 1); qp <= p; ++qp) {
        ks.push_back(qp >= P0 ? kv.data() + (g.row0 + qp - P0) * D : st.window.data() + (qp % st.cap) * D);
      }
      if (a.kind == AttnKind::CSA) {
        for (int64_t j : selected[static_cast<size_t>(t)]) ks.push_back(st.comp->entry(j));
      } else if (a.kind == AttnKind::HCA) {
        const int64_t vis = std::min((p + 1) / st.comp->ratio, st.comp->count);
        for (int64_t j = 0; j < vis; ++j) ks.push_back(st.comp->entry(j));
      }
    }

    // Softmax with a per-head sink logit in the denominator (eager_attention_forward:
    // softmax over [scores, sink] after subtracting the max of both, sink column dropped).
    Vec o = zeros(T * nh * D);
    const float scaling = fpow(static_cast<double>(D), -0.5);
    pool.parallel_for(T * nh, 1, [&](int64_t b, int64_t e) {
      Vec s;
      for (int64_t it = b; it < e; ++it) {
        const int64_t t = it / nh, h = it % nh;
        const auto& ks = keys[static_cast<size_t>(t)];
        const float* qh = q.data() + (t * nh + h) * D;
        s.resize(ks.size());
        const float sink = a.sink[static_cast<size_t>(h)];
        float mx = sink;
        for (size_t k = 0; k < ks.size(); ++k) {
          s[k] = cpu::dot(qh, ks[k], D) * scaling;
          mx = std::max(mx, s[k]);
        }
        float sum = 0.0f;
        for (size_t k = 0; k < ks.size(); ++k) {
          s[k] = std::exp(s[k] - mx);
          sum += s[k];
        }
        sum += std::exp(sink - mx);
        float* oh = o.data() + (t * nh + h) * D;
        for (size_t k = 0; k < ks.size(); ++k) cpu::axpy(s[k] / sum, ks[k], oh, D);
      }
    });

    // Each sequence's window ring keeps its last `cap` rows.
    for (const Seg& g : segs) {
      LayerState& st = *g.st;
      for (int64_t t = std::max<int64_t>(0, g.T - st.cap); t < g.T; ++t) {
        std::memcpy(st.window.data() + ((g.P0 + t) % st.cap) * D, kv.data() + (g.row0 + t) * D,
                    static_cast<size_t>(D) * sizeof(float));
      }
    }

    // K = V carried the rotation into the output: undo it at the query position.
    for (int64_t t = 0; t < T; ++t) {
      rope.apply_heads(o.data() + t * nh * D, nh, D, D, pos[static_cast<size_t>(t)], /*inverse=*/true);
    }

    // Grouped output projection: heads split in G contiguous groups, each projected by its
    // own [R, nh*D/G] block of wo_a, then wo_b over the concatenation.
    const int64_t G = c.o_groups, R = c.o_lora_rank, ig = nh * D / G;
    Vec mid(static_cast<size_t>(T * G * R));
    std::vector<cpu::LinearJob> groups(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) groups[static_cast<size_t>(g)] = {&a.wo_a, o.data() + g * ig, nh * D, mid.data() + g * R, G * R, g * R, R};
    cpu::linear(groups, T, &pool);
    linear(a.wo_b, mid.data(), T, out);
  }

  // ---- MoE --------------------------------------------------------------------------------

  // SwiGLU with transformers' clamp: gate <= limit, -limit <= up <= limit (routed and shared).
  void expert_ffn(const Expert& e, const float* x, int64_t T, float* y) const {
    const int64_t I = e.w1.out;
    Vec g(static_cast<size_t>(T * I)), u(static_cast<size_t>(T * I));
    linear2(e.w1, x, g.data(), e.w3, x, u.data(), T);
    const float lim = static_cast<float>(c.swiglu_limit);
    for (size_t i = 0; i < g.size(); ++i) {
      float gv = g[i], uv = u[i];
      if (lim > 0.0f) {
        gv = std::min(gv, lim);
        uv = std::clamp(uv, -lim, lim);
      }
      g[i] = cpu::silu(gv) * uv;
    }
    linear(e.w2, g.data(), T, y);
  }

  // DeepseekV4SparseMoeBlock: routed experts (sum in ascending expert order) + shared.
  void moe(const Moe& m, const float* x, int64_t T, std::span<const int32_t> tokens, float* out) const {
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
    Vec logits(static_cast<size_t>(T * E));
    linear(m.gate, x, T, logits.data());
    // DeepSeek's Gate for c.scoring_func: hash (tid2eid) or score (top-K of s + bias) routing.
    std::vector<int64_t> idx(static_cast<size_t>(T * K));
    Vec wt(static_cast<size_t>(T * K));
    cpu::moe_route(c.scoring_func, logits.data(), T, E, K, m.hash ? nullptr : m.bias.data(),
                   m.hash ? m.tid2eid.data() : nullptr, tokens.data(), static_cast<float>(c.routed_scaling_factor),
                   idx.data(), wt.data());
    std::fill(out, out + T * H, 0.0f);
    Vec xg, yg;
    std::vector<std::pair<int64_t, int64_t>> hits;  // (token, slot)
    for (int64_t e = 0; e < E; ++e) {
      hits.clear();
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t k = 0; k < K; ++k) {
          if (idx[static_cast<size_t>(t * K + k)] == e) hits.emplace_back(t, k);
        }
      }
      if (hits.empty()) continue;
      const int64_t nrow = static_cast<int64_t>(hits.size());
      xg.resize(static_cast<size_t>(nrow * H));
      yg.resize(static_cast<size_t>(nrow * H));
      for (int64_t i = 0; i < nrow; ++i) {
        std::memcpy(xg.data() + i * H, x + hits[static_cast<size_t>(i)].first * H, static_cast<size_t>(H) * sizeof(float));
      }
      expert_ffn(m.experts[static_cast<size_t>(e)], xg.data(), nrow, yg.data());
      for (int64_t i = 0; i < nrow; ++i) {
        const auto [t, k] = hits[static_cast<size_t>(i)];
        const float wv = wt[static_cast<size_t>(t * K + k)];
        float* o = out + t * H;
        const float* yr = yg.data() + i * H;
        for (int64_t d = 0; d < H; ++d) o[d] += yr[d] * wv;
      }
    }
    if (m.shared) {
      Vec sh(static_cast<size_t>(T * H));
      expert_ffn(*m.shared, x, T, sh.data());
      for (int64_t i = 0; i < T * H; ++i) out[i] += sh[static_cast<size_t>(i)];
    }
  }

  // ---- block ------------------------------------------------------------------------------

  cpu::HcParams hc_params(const HyperConnection& hc) const {
    cpu::HcParams p;
    p.n = n;
    p.hidden = H;
    p.fn = hc.fn.data.data();
    p.base = hc.base.data();
    p.scale = hc.scale.data();
    p.sinkhorn_iters = static_cast<int>(c.hc_sinkhorn_iters);
    p.hc_eps = hc_eps;
    p.norm_eps = eps;
    return p;
  }

  // DeepseekV4DecoderLayer.forward on streams X [T, n, H] (updated in place), the rows of
  // every sequence in segs (each with its state of this layer) at once.
  void block(const Block& b, std::span<const Seg> segs, std::span<const int64_t> pos, std::span<const int32_t> seg_of,
             Vec& X, int64_t T, std::span<const int32_t> tokens) const {
    Vec u(static_cast<size_t>(T * H)), y(static_cast<size_t>(T * H)), post(static_cast<size_t>(T * n)),
        comb(static_cast<size_t>(T * n * n)), Xn(X.size());
    cpu::hc_pre(hc_params(b.hc_attn), X.data(), T, u.data(), post.data(), comb.data(), &pool);
    cpu::rmsnorm(u.data(), T, H, b.attn_norm.data(), eps, u.data());
    attention(b.attn, segs, pos, seg_of, u.data(), T, y.data());
    cpu::hc_post(n, H, X.data(), T, y.data(), post.data(), comb.data(), Xn.data());
    X.swap(Xn);
    cpu::hc_pre(hc_params(b.hc_ffn), X.data(), T, u.data(), post.data(), comb.data(), &pool);
    cpu::rmsnorm(u.data(), T, H, b.ffn_norm.data(), eps, u.data());
    moe(b.ffn, u.data(), T, tokens, y.data());
    cpu::hc_post(n, H, X.data(), T, y.data(), post.data(), comb.data(), Xn.data());
    X.swap(Xn);
  }

  // hc_head, RMSNorm, head: logits [R, vocab] of the rows `rows` of X (all T rows when
  // empty), in that order.
  void head(const HyperHead& hh, const std::vector<float>& norm, const Vec& X, int64_t T, std::span<const int64_t> rows,
            float* logits) const {
    const float* src = X.data();
    Vec picked;
    if (!rows.empty()) {
      picked.resize(rows.size() * static_cast<size_t>(n * H));
      for (size_t i = 0; i < rows.size(); ++i) {
        std::memcpy(picked.data() + static_cast<int64_t>(i) * n * H, X.data() + rows[i] * n * H,
                    static_cast<size_t>(n * H) * sizeof(float));
      }
      src = picked.data();
      T = static_cast<int64_t>(rows.size());
    }
    Vec h(static_cast<size_t>(T * H));
    cpu::hc_head(n, H, hh.fn.data.data(), hh.base.data(), hh.scale, hc_eps, eps, src, T, h.data(), &pool);
    cpu::rmsnorm(h.data(), T, H, norm.data(), eps, h.data());
    linear(w.head, h.data(), T, logits);
  }

  // Rows of a batched pass: each sequence's rows follow the previous sequence's.
  struct Layout {
    std::vector<Seg> segs;           // per sequence; st is set per layer
    std::vector<int64_t> pos;        // per row
    std::vector<int32_t> seg_of;     // per row
    std::vector<int32_t> tokens;     // per row
    int64_t T = 0;
  };
  Layout layout(std::span<const int64_t> lengths, std::span<const std::span<const int32_t>> toks) const {
    Layout L;
    for (size_t i = 0; i < toks.size(); ++i) {
      const int64_t Ti = static_cast<int64_t>(toks[i].size());
      L.segs.push_back({nullptr, L.T, Ti, lengths[i]});
      for (int64_t t = 0; t < Ti; ++t) {
        L.pos.push_back(lengths[i] + t);
        L.seg_of.push_back(static_cast<int32_t>(i));
      }
      L.tokens.insert(L.tokens.end(), toks[i].begin(), toks[i].end());
      L.T += Ti;
    }
    return L;
  }

  void check_tokens(std::span<const int32_t> tokens) const {
    for (int32_t t : tokens) {
      if (t < 0 || t >= c.vocab_size) fail(ErrorKind::Usage, "forward: token id {} out of range [0, {})", t, c.vocab_size);
    }
  }
};

Forward::Forward(const Weights& w, int threads, bool fuse) : w_(w), impl_(std::make_unique<Impl>(w, threads, fuse)) {}
Forward::~Forward() = default;

DecodeState Forward::new_state() const {
  DecodeState s;
  for (const Block& b : w_.layers) s.layers_.push_back(impl_->make_layer_state(b.attn));
  for (const MtpBlock& m : w_.mtp) s.mtp_.push_back(impl_->make_layer_state(m.block.attn));
  s.mtp_length_.assign(w_.mtp.size(), 0);
  s.mtp_high_.assign(w_.mtp.size(), 0);
  return s;
}

void Forward::step(DecodeState& state, std::span<const int32_t> tokens, float* logits, float* streams) const {
  const StepSeq seq{&state, tokens};
  step(std::span(&seq, 1), {}, logits, streams);
}

void Forward::step(std::span<const StepSeq> seqs, std::span<const int64_t> logit_rows, float* logits,
                   float* streams) const {
  const Impl& im = *impl_;
  std::vector<int64_t> lengths;
  std::vector<std::span<const int32_t>> toks;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const DecodeState& st = *seqs[i].state;
    if (st.layers_.size() != w_.layers.size()) fail(ErrorKind::Usage, "step: the state was made for another model");
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].state == seqs[i].state) fail(ErrorKind::Usage, "step: one state appears twice in a batched step");
    }
    im.check_tokens(seqs[i].tokens);
    lengths.push_back(st.length_);
    toks.push_back(seqs[i].tokens);
  }
  Impl::Layout L = im.layout(lengths, toks);
  const int64_t T = L.T, H = im.H, n = im.n;
  if (T == 0) return;
  for (int64_t r : logit_rows) {
    if (r < 0 || r >= T) fail(ErrorKind::Usage, "step: logits row {} outside the {} rows fed", r, T);
  }
  // Embedding copied into every stream.
  Vec X(static_cast<size_t>(T * n * H));
  for (int64_t t = 0; t < T; ++t) {
    const float* e = w_.embed.data.data() + static_cast<int64_t>(L.tokens[static_cast<size_t>(t)]) * H;
    for (int64_t i = 0; i < n; ++i) std::memcpy(X.data() + (t * n + i) * H, e, static_cast<size_t>(H) * sizeof(float));
  }
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    for (size_t i = 0; i < seqs.size(); ++i) L.segs[i].st = seqs[i].state->layers_[l].get();
    im.block(w_.layers[l], L.segs, L.pos, L.seg_of, X, T, L.tokens);
  }
  if (streams) std::memcpy(streams, X.data(), X.size() * sizeof(float));
  if (logits) im.head(w_.hc_head, w_.norm, X, T, logit_rows, logits);
  for (const StepSeq& q : seqs) {
    DecodeState& st = *q.state;
    st.length_ += static_cast<int64_t>(q.tokens.size());
    st.high_ = std::max(st.high_, st.length_);
    st.tokens_.insert(st.tokens_.end(), q.tokens.begin(), q.tokens.end());
  }
}

void Forward::mtp_step(DecodeState& state, int m, std::span<const float> streams, std::span<const int32_t> next_tokens,
                       float* logits, float* out_streams) const {
  const MtpSeq seq{&state, streams, next_tokens};
  mtp_step(m, std::span(&seq, 1), {}, logits, out_streams);
}

void Forward::mtp_step(int m, std::span<const MtpSeq> seqs, std::span<const int64_t> logit_rows, float* logits,
                       float* out_streams) const {
  const Impl& im = *impl_;
  if (m < 0 || static_cast<size_t>(m) >= w_.mtp.size()) {
    fail(ErrorKind::Usage, "mtp_step: MTP block {} out of range [0, {})", m, w_.mtp.size());
  }
  const size_t mi = static_cast<size_t>(m);
  const int64_t H = im.H, n = im.n;
  std::vector<int64_t> lengths;
  std::vector<std::span<const int32_t>> toks;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const MtpSeq& q = seqs[i];
    if (q.state->mtp_.size() != w_.mtp.size()) fail(ErrorKind::Usage, "mtp_step: the state was made for another model");
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].state == q.state) fail(ErrorKind::Usage, "mtp_step: one state appears twice in a batched step");
    }
    const int64_t Ti = static_cast<int64_t>(q.next_tokens.size());
    if (static_cast<int64_t>(q.streams.size()) != Ti * n * H) {
      fail(ErrorKind::Usage, "mtp_step: {} stream values for {} tokens; expected {}", q.streams.size(), Ti, Ti * n * H);
    }
    im.check_tokens(q.next_tokens);
    lengths.push_back(q.state->mtp_length_[mi]);
    toks.push_back(q.next_tokens);
  }
  Impl::Layout L = im.layout(lengths, toks);
  const int64_t T = L.T;
  if (T == 0) return;
  for (int64_t r : logit_rows) {
    if (r < 0 || r >= T) fail(ErrorKind::Usage, "mtp_step: logits row {} outside the {} rows fed", r, T);
  }
  const MtpBlock& mb = w_.mtp[mi];
  // MTPBlock.forward: x = e_proj(enorm(embed(next))) broadcast over streams + h_proj(hnorm(x)),
  // hnorm applied to each stream's H values.
  Vec e(static_cast<size_t>(T * H)), ep(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(e.data() + t * H, w_.embed.data.data() + static_cast<int64_t>(L.tokens[static_cast<size_t>(t)]) * H,
                static_cast<size_t>(H) * sizeof(float));
  }
  cpu::rmsnorm(e.data(), T, H, mb.enorm.data(), im.eps, e.data());
  im.linear(mb.e_proj, e.data(), T, ep.data());
  Vec hs(static_cast<size_t>(T * n * H)), X(static_cast<size_t>(T * n * H));
  for (const Seg& g : L.segs) {
    const auto& src = seqs[static_cast<size_t>(&g - L.segs.data())].streams;
    std::memcpy(hs.data() + g.row0 * n * H, src.data(), src.size() * sizeof(float));
  }
  cpu::rmsnorm(hs.data(), T * n, H, mb.hnorm.data(), im.eps, hs.data());
  im.linear(mb.h_proj, hs.data(), T * n, X.data());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      float* xr = X.data() + (t * n + i) * H;
      const float* er = ep.data() + t * H;
      for (int64_t d = 0; d < H; ++d) xr[d] = er[d] + xr[d];
    }
  }
  for (size_t i = 0; i < seqs.size(); ++i) L.segs[i].st = seqs[i].state->mtp_[mi].get();
  im.block(mb.block, L.segs, L.pos, L.seg_of, X, T, L.tokens);
  if (out_streams) std::memcpy(out_streams, X.data(), X.size() * sizeof(float));
  if (logits) im.head(mb.hc_head, mb.norm, X, T, logit_rows, logits);
  for (const MtpSeq& q : seqs) {
    q.state->mtp_length_[mi] += static_cast<int64_t>(q.next_tokens.size());
    q.state->mtp_high_[mi] = std::max(q.state->mtp_high_[mi], q.state->mtp_length_[mi]);
  }
}

namespace {

void check_rollback(const char* what, int64_t new_length, int64_t length, int64_t high) {
  if (new_length < 0 || new_length > length) {
    fail(ErrorKind::Usage, "{}: new length {} is outside [0, {}] (the current length)", what, new_length, length);
  }
  if (new_length < high - DecodeState::kMaxRollback) {
    fail(ErrorKind::Usage,
         "{}: cannot roll back to length {}: the state has reached length {} and keeps only the rows of the last {} "
         "positions behind that for rollback (DecodeState::kMaxRollback)",
         what, new_length, high, DecodeState::kMaxRollback);
  }
}

}  // namespace

void Forward::truncate(DecodeState& state, int64_t new_length) const {
  if (state.layers_.size() != w_.layers.size()) fail(ErrorKind::Usage, "truncate: the state was made for another model");
  check_rollback("truncate", new_length, state.length_, state.high_);
  for (auto& l : state.layers_) l->truncate(new_length);
  state.length_ = new_length;
  state.tokens_.resize(static_cast<size_t>(new_length));
}

void Forward::truncate_mtp(DecodeState& state, int m, int64_t new_length) const {
  if (m < 0 || static_cast<size_t>(m) >= w_.mtp.size()) {
    fail(ErrorKind::Usage, "truncate_mtp: MTP block {} out of range [0, {})", m, w_.mtp.size());
  }
  if (state.mtp_.size() != w_.mtp.size()) fail(ErrorKind::Usage, "truncate_mtp: the state was made for another model");
  const size_t mi = static_cast<size_t>(m);
  check_rollback("truncate_mtp", new_length, state.mtp_length_[mi], state.mtp_high_[mi]);
  state.mtp_[mi]->truncate(new_length);
  state.mtp_length_[mi] = new_length;
}

}  // namespace kiln::model
