// CPU reference forward of DeepSeek-V4: the model definition (model/definition.h, written
// against transformers 5.17's modeling_deepseek_v4.py DeepseekV4ForCausalLM and, for the
// MTP block, DeepSeek's inference/model.py MTPBlock) run on the CPU ops (model/cpu_ops.h);
// here: the decode state, the weights' validation, the batching of sequences into rows
// and rollback. Everything is fp32; transformers does not simulate the
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
// on different states from several threads is safe (pool jobs are serialised; each pass
// owns its activation buffers).
#include "kiln/model/forward.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/model/cpu_ops.h"
#include "kiln/model/definition.h"
#include "kiln/ops/cpu/attention_state.h"
#include "kiln/ops/cpu/communicator.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cpu/thread_pool.h"

namespace kiln::model {

namespace cpu = kiln::ops::cpu;

// ---------------------------------------------------------------------------------------
// Decode state (its layout: model/decode_contract.h; per layer: ops/cpu/attention_state.h)
// ---------------------------------------------------------------------------------------

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

std::string DecodeState::difference(const DecodeState& o) const {
  if (length_ != o.length_) return fmt::format("main length {} vs {}", length_, o.length_);
  if (tokens_ != o.tokens_) return "main token lists differ";
  if (layers_.size() != o.layers_.size() || mtp_.size() != o.mtp_.size()) return "states of different models";
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (std::string d = cpu::attention_state_difference(*layers_[l], *o.layers_[l], length_, high_, o.high_); !d.empty())
      return fmt::format("layer {}: {}", l, d);
  }
  for (size_t m = 0; m < mtp_.size(); ++m) {
    if (mtp_length_[m] != o.mtp_length_[m])
      return fmt::format("MTP block {} length {} vs {}", m, mtp_length_[m], o.mtp_length_[m]);
    if (std::string d = cpu::attention_state_difference(*mtp_[m], *o.mtp_[m], mtp_length_[m], mtp_high_[m], o.mtp_high_[m]);
        !d.empty())
      return fmt::format("MTP block {}: {}", m, d);
  }
  return {};
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

namespace {

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

}  // namespace

struct Forward::Impl {
  const Weights& w;
  const ModelConfig& c;
  mutable cpu::ThreadPool pool;
  cpu::Rope rope_main, rope_compress;
  int64_t H, n, D, nh, r;
  bool fuse;
  // Tensor parallelism (world > 1): each rank's shard, pool and the ranks' communicator.
  int world;
  std::vector<Weights> shards;
  std::vector<std::unique_ptr<cpu::ThreadPool>> rank_pools;
  std::unique_ptr<cpu::InProcessComm> comm;
  mutable std::mutex rank_passes;  // one tensor-parallel pass at a time: the ranks share comm

  Impl(const Weights& weights, int threads, bool fuse_projections, const ParallelLayout& parallel)
      : w(weights), c(weights.config), pool(threads), H(c.hidden_size), n(c.hc_mult), D(c.head_dim), nh(c.num_heads),
        r(c.rope_head_dim), fuse(fuse_projections), world(parallel.world) {
    rope_main = cpu::Rope(rope_spec(c, c.rope_main));
    rope_compress = cpu::Rope(rope_spec(c, c.rope_compress));
    validate();
    check_parallel_layout(c, parallel);
    if (world > 1) {
      const int total = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      comm = std::make_unique<cpu::InProcessComm>(world);
      for (int k = 0; k < world; ++k) {
        shards.push_back(shard_weights(w, k, parallel));
        rank_pools.push_back(std::make_unique<cpu::ThreadPool>(std::max(1, total / world)));
      }
    }
  }

  CpuKernels kernels() const { return {&pool, &rope_main, &rope_compress, fuse}; }
  const Weights& weights_of(int rank) const { return world == 1 ? w : shards[static_cast<size_t>(rank)]; }
  CpuKernels kernels_of(int rank) const {
    if (world == 1) return kernels();
    return {rank_pools[static_cast<size_t>(rank)].get(), &rope_main, &rope_compress, fuse, comm.get()};
  }

  // f(rank) for every rank, each on its own thread (one rank: on this one). A rank that
  // throws stops the others at their next collective; the first error is rethrown.
  template <class F>
  void run_ranks(F&& f) const {
    if (world == 1) return f(0);
    std::lock_guard lock(rank_passes);
    comm->reset();
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
    std::atomic<int> first{-1};
    auto run = [&](int k) {
      try {
        f(k);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(k)] = std::current_exception();
        int none = -1;
        first.compare_exchange_strong(none, k);
        comm->abort(fmt::format("rank {}: {}", k, e.what()));
      }
    };
    std::vector<std::thread> threads;
    for (int k = 1; k < world; ++k) threads.emplace_back(run, k);
    run(0);
    for (auto& t : threads) t.join();
    if (first.load() >= 0) std::rethrow_exception(errors[static_cast<size_t>(first.load())]);
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

  // One layer's state of a new sequence, laid out as model/decode_contract.h says (the
  // CPU stores no row of a step before reading it: step_rows = 0).
  std::unique_ptr<LayerState> make_layer_state(const Attention& a) const {
    const LayerStateLayout l = layer_state_layout(c, a.kind, a.compressor ? a.compressor->ratio : 0, 0);
    auto s = std::make_unique<LayerState>();
    s->sliding_window = c.sliding_window;
    s->cap = l.window_cap;
    s->dim = l.dim;
    s->window.assign(static_cast<size_t>(s->cap * s->dim), 0.0f);
    if (l.comp) s->comp.emplace(l.comp->ratio, l.comp->dim, l.comp->overlap, l.comp->cap);
    if (l.icomp) s->icomp.emplace(l.icomp->ratio, l.icomp->dim, l.icomp->overlap, l.icomp->cap);
    return s;
  }

  void check_tokens(std::span<const int32_t> tokens) const {
    for (int32_t t : tokens) {
      if (t < 0 || t >= c.vocab_size) fail(ErrorKind::Usage, "forward: token id {} out of range [0, {})", t, c.vocab_size);
    }
  }
};

Forward::Forward(const Weights& w, int threads, bool fuse, ParallelLayout parallel)
    : w_(w), impl_(std::make_unique<Impl>(w, threads, fuse, parallel)) {}
Forward::~Forward() = default;

std::vector<uint64_t> Forward::rank_weight_bytes() const {
  std::vector<uint64_t> bytes;
  for (int k = 0; k < impl_->world; ++k) {
    const Weights& wk = impl_->weights_of(k);
    bytes.push_back(linear_weight_bytes(wk) + plain_weight_bytes(wk));
  }
  return bytes;
}

DecodeState Forward::new_state() const {
  DecodeState s;
  for (int k = 0; k < impl_->world; ++k) {
    for (const Block& b : w_.layers) s.layers_.push_back(impl_->make_layer_state(b.attn));
    for (const MtpBlock& m : w_.mtp) s.mtp_.push_back(impl_->make_layer_state(m.block.attn));
  }
  s.mtp_length_.assign(w_.mtp.size(), 0);
  s.mtp_high_.assign(w_.mtp.size(), 0);
  return s;
}

void Forward::step(DecodeState& state, std::span<const int32_t> tokens, float* logits, float* streams) const {
  const StepSeq seq{&state, tokens};
  step(std::span(&seq, 1), {}, logits, streams);
}

void Forward::step(std::span<const StepSeq> seqs, std::span<const int64_t> logit_rows, float* logits,
                   float* streams, float* features) const {
  const Impl& im = *impl_;
  CpuPassRows rows;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const DecodeState& st = *seqs[i].state;
    if (st.layers_.size() != static_cast<size_t>(im.world) * w_.layers.size()) fail(ErrorKind::Usage, "step: the state was made for another model");
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].state == seqs[i].state) fail(ErrorKind::Usage, "step: one state appears twice in a batched step");
    }
    im.check_tokens(seqs[i].tokens);
    rows.add(st.length_, seqs[i].tokens);
  }
  const int64_t T = rows.R;
  if (T == 0) return;
  for (int64_t r : logit_rows) {
    if (r < 0 || r >= T) fail(ErrorKind::Usage, "step: logits row {} outside the {} rows fed", r, T);
  }
  if (features && !w_.config.dspark) fail(ErrorKind::Usage, "step: features asked of a model without a DSpark drafter");
  const size_t L = w_.layers.size();
  im.run_ranks([&](int k) {
    const Weights& wk = im.weights_of(k);
    CpuOps ops(wk, im.kernels_of(k), rows,
               [&](size_t i, size_t l) { return seqs[i].state->layers_[static_cast<size_t>(k) * L + l].get(); }, {},
               logit_rows);
    if (features && k == 0) ops.set_features(features, w_.config.dspark->target_layer_ids);
    // Rank 0 writes the outputs; every rank takes part in the head (its gather lands on rank 0).
    def::main_pass(ops, wk, k == 0 ? streams : nullptr, logits);
  });
  for (const StepSeq& q : seqs) {
    DecodeState& st = *q.state;
    st.length_ += static_cast<int64_t>(q.tokens.size());
    st.high_ = std::max(st.high_, st.length_);
    st.tokens_.insert(st.tokens_.end(), q.tokens.begin(), q.tokens.end());
  }
}

void Forward::block_with(const Block& b, std::vector<float>& X, int64_t T, std::span<const int32_t> tokens,
                         const AttentionFn& attention) const {
  const Impl& im = *impl_;
  if (static_cast<int64_t>(X.size()) != T * im.n * im.H || static_cast<int64_t>(tokens.size()) != T) {
    fail(ErrorKind::Usage, "block_with: {} stream values and {} tokens for {} rows", X.size(), tokens.size(), T);
  }
  if (T == 0) return;
  im.check_tokens(tokens);
  CpuPassRows rows;
  rows.add(0, tokens);
  CpuOps ops(w_, im.kernels(), rows, [](size_t, size_t) { return nullptr; }, {}, {});
  std::vector<float> scratch(X.size());
  float* Xp = X.data();
  float* Xn = scratch.data();
  def::block_with(ops, b, Xp, Xn, [&](const float* u, float* y) { attention(u, T, y); });
  // Two swaps: the result is back in X.
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
  CpuPassRows rows;
  std::vector<std::span<const float>> in_streams;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const MtpSeq& q = seqs[i];
    if (q.state->mtp_.size() != static_cast<size_t>(im.world) * w_.mtp.size()) fail(ErrorKind::Usage, "mtp_step: the state was made for another model");
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].state == q.state) fail(ErrorKind::Usage, "mtp_step: one state appears twice in a batched step");
    }
    const int64_t Ti = static_cast<int64_t>(q.next_tokens.size());
    if (static_cast<int64_t>(q.streams.size()) != Ti * n * H) {
      fail(ErrorKind::Usage, "mtp_step: {} stream values for {} tokens; expected {}", q.streams.size(), Ti, Ti * n * H);
    }
    im.check_tokens(q.next_tokens);
    rows.add(q.state->mtp_length_[mi], q.next_tokens);
    in_streams.push_back(q.streams);
  }
  const int64_t T = rows.R;
  if (T == 0) return;
  for (int64_t r : logit_rows) {
    if (r < 0 || r >= T) fail(ErrorKind::Usage, "mtp_step: logits row {} outside the {} rows fed", r, T);
  }
  const size_t L = w_.layers.size(), M = w_.mtp.size();
  im.run_ranks([&](int k) {
    const Weights& wk = im.weights_of(k);
    CpuOps ops(wk, im.kernels_of(k), rows,
               [&](size_t i, size_t l) { return seqs[i].state->mtp_[static_cast<size_t>(k) * M + (l - L)].get(); },
               in_streams, logit_rows);
    def::mtp_pass(ops, wk, mi, k == 0 ? out_streams : nullptr, logits);  // as in step()
  });
  for (const MtpSeq& q : seqs) {
    q.state->mtp_length_[mi] += static_cast<int64_t>(q.next_tokens.size());
    q.state->mtp_high_[mi] = std::max(q.state->mtp_high_[mi], q.state->mtp_length_[mi]);
  }
}

void Forward::truncate(DecodeState& state, int64_t new_length) const {
  if (state.layers_.size() != static_cast<size_t>(impl_->world) * w_.layers.size())
    fail(ErrorKind::Usage, "truncate: the state was made for another model");
  check_rollback("truncate", new_length, state.length_, state.high_);
  for (auto& l : state.layers_) l->truncate(new_length);
  state.length_ = new_length;
  state.tokens_.resize(static_cast<size_t>(new_length));
}

void Forward::truncate_mtp(DecodeState& state, int m, int64_t new_length) const {
  if (m < 0 || static_cast<size_t>(m) >= w_.mtp.size()) {
    fail(ErrorKind::Usage, "truncate_mtp: MTP block {} out of range [0, {})", m, w_.mtp.size());
  }
  if (state.mtp_.size() != static_cast<size_t>(impl_->world) * w_.mtp.size())
    fail(ErrorKind::Usage, "truncate_mtp: the state was made for another model");
  const size_t mi = static_cast<size_t>(m);
  check_rollback("truncate_mtp", new_length, state.mtp_length_[mi], state.mtp_high_[mi]);
  for (int k = 0; k < impl_->world; ++k) state.mtp_[static_cast<size_t>(k) * w_.mtp.size() + mi]->truncate(new_length);
  state.mtp_length_[mi] = new_length;
}

}  // namespace kiln::model
