// The DSpark drafter on the GPU (gpu_dspark.h): commit and draft passes over the target
// forward's ops, the stages run by the model definition's block.
#include "kiln/model/cuda/gpu_dspark.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/model/definition.h"
#include "kiln/model/gpu_memory.h"
#include "kiln/ops/cpu/vec.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/graph_capture.h"
#include "kiln/ops/cuda/copy_rows.h"
#include "kiln/ops/cuda/elementwise.h"

namespace kiln::model::cuda {

namespace oc = kiln::ops::cuda;

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

void usage_check(bool ok, const char* what, int64_t got, int64_t want) {
  if (!ok) fail(ErrorKind::Usage, "GPU DSpark drafter: {} is {}; expected {}", what, got, want);
}

}  // namespace

struct GpuDSpark::Buffers {
  DeviceArray<int32_t> tok, slot, pos, key_end, perm, src, prev;  // rows of a pass; prev: per round
  DeviceArray<float> feats, mx, kv;                              // commit
  DeviceArray<float> hpre, hk, hn, base;                         // draft block (hk, hn, base: k-major rows)
  DeviceArray<float> e, bias, adjusted;                          // Markov step, per round
  DeviceArray<int32_t> picks;                                    // device loop: [B, rounds] drafts, k-major
};

GpuDSpark::GpuDSpark(GpuForward& target, GpuDSparkWeights weights) : f_(target), w_(std::move(weights)) {
  const ModelConfig& c = f_.config();
  if (!c.dspark) fail(ErrorKind::Usage, "GPU DSpark drafter: the target's config declares no drafter");
  const int64_t H = c.hidden_size, V = c.vocab_size, r = w_.config.markov_rank, D = c.head_dim;
  B_ = static_cast<int>(w_.config.block_size);
  W_ = static_cast<int>(c.sliding_window);
  slots_ = f_.options().max_slots;
  max_rows_ = f_.options().max_rows;
  F_ = static_cast<int64_t>(w_.config.target_layer_ids.size()) * H;
  usage_check(B_ >= 1, "the block size (dspark_block_size)", B_, 1);
  if (max_rows_ < B_) {
    fail(ErrorKind::Usage, "GPU DSpark drafter: a pass takes {} rows (max_rows), fewer than one draft block of {}",
         max_rows_, B_);
  }
  usage_check(static_cast<int64_t>(w_.stages.size()) == w_.config.stages && !w_.stages.empty(), "the stage count",
              static_cast<int64_t>(w_.stages.size()), w_.config.stages);
  usage_check(w_.main_proj.n() == H && w_.main_proj.k() == F_, "main_proj's [out * in]", w_.main_proj.n() * w_.main_proj.k(),
              H * F_);
  usage_check(static_cast<int64_t>(w_.markov_w1.size()) == V * r, "markov_w1's size", static_cast<int64_t>(w_.markov_w1.size()),
              V * r);
  usage_check(w_.markov_w2.n() == V && w_.markov_w2.k() == r, "markov_w2's [out * in]", w_.markov_w2.n() * w_.markov_w2.k(),
              V * r);
  usage_check(w_.confidence.empty() || static_cast<int64_t>(w_.confidence.size()) == H + r, "confidence_head.proj's size",
              static_cast<int64_t>(w_.confidence.size()), H + r);
  for (const GpuBlock& s : w_.stages) {
    if (s.attn.kind != AttnKind::SWA || s.attn.compressor || s.attn.indexer) {
      fail(ErrorKind::Usage, "GPU DSpark drafter: a stage with compressed attention (the stages are sliding-window only)");
    }
  }
  f_.record_dspark_features(w_.config.target_layer_ids);
  rope_ = oc::RopeTable(ops::cpu::Rope(rope_spec(c, c.rope_main)), f_.options().max_context + B_);

  for (size_t s = 0; s < w_.stages.size(); ++s) {
    auto st = std::make_unique<GpuLayerState>();
    st->ring.cap = W_ + B_;
    st->ring.dim = static_cast<int>(D);
    st->ring.slot_stride = static_cast<int64_t>(st->ring.cap) * D;
    st->window = DeviceArray<float>(sz(slots_ * st->ring.slot_stride));
    st->ring.data = st->window.get();
    state_bytes_ += static_cast<int64_t>(st->window.size() * sizeof(float));
    rings_.push_back(std::move(st));
  }
  length_.assign(sz(slots_), 0);

  // Each round of a draft group has its own slot: a group holds at most min(rows / block,
  // slots) rounds (model/gpu_memory.h, which the memory plan counts).
  const GpuDSparkSizes sizes = gpu_dspark_sizes(c, max_rows_, slots_);
  rounds_ = sizes.rounds;
  const int64_t M = max_rows_, G = rounds_, T = G * B_;
  buf_ = std::make_unique<Buffers>();
  Buffers& b = *buf_;
  auto f = [&](int64_t n) {
    buffer_bytes_ += 4 * n;
    return DeviceArray<float>(sz(n));
  };
  auto i32 = [&](int64_t n) {
    buffer_bytes_ += 4 * n;
    return DeviceArray<int32_t>(sz(n));
  };
  b.tok = i32(M), b.slot = i32(M), b.pos = i32(M), b.key_end = i32(M), b.perm = i32(M), b.src = i32(M), b.prev = i32(G);
  b.picks = i32(T);
  b.feats = f(M * F_), b.mx = f(M * H), b.kv = f(M * D);
  b.hpre = f(T * H), b.hk = f(T * H), b.hn = f(T * H), b.base = f(T * V), b.e = f(T * r);
  b.bias = f(G * V), b.adjusted = f(G * V);
  host_rows_ = std::make_unique<PinnedInts>(sz(5 * T + G));
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&rows_copied_, cudaEventDisableTiming));
  if (buffer_bytes_ != sizes.buffer_bytes || state_bytes_ != slots_ * sizes.slot_bytes) {
    fail(ErrorKind::Usage, "internal: GPU DSpark drafter allocated {} B of buffers and {} B of rings; model/gpu_memory.cpp counts {} and {}",
         buffer_bytes_, state_bytes_, sizes.buffer_bytes, slots_ * sizes.slot_bytes);
  }
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
}

GpuDSpark::~GpuDSpark() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  if (rows_copied_) cudaEventDestroy(rows_copied_);
}

void GpuDSpark::launch(GraphKey key, const std::function<void()>& enqueue) {
  const cudaStream_t st = f_.stream();
  if (!f_.options().graphs) {
    enqueue();
    return;
  }
  auto it = graphs_.find(key);
  if (it == graphs_.end()) it = graphs_.emplace(key, ops::cuda::capture_graph(st, enqueue)).first;
  KILN_CUDA_CHECK(cudaGraphLaunch(it->second, st));
}

int64_t GpuDSpark::length(int slot) const {
  if (slot < 0 || slot >= slots_) fail(ErrorKind::Usage, "GPU DSpark drafter: slot {} of {}", slot, slots_);
  return length_[sz(slot)];
}

void GpuDSpark::reset(int slot) {
  (void)length(slot);
  length_[sz(slot)] = 0;
}

void GpuDSpark::copy_slot(int src, int dst) {
  (void)length(src);
  (void)length(dst);
  if (src == dst) fail(ErrorKind::Usage, "GPU DSpark drafter: copy of slot {} into itself", src);
  for (const auto& st : rings_) {
    const int64_t n = st->ring.slot_stride;
    KILN_CUDA_CHECK(cudaMemcpyAsync(st->ring.data + dst * n, st->ring.data + src * n, sz(n) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, f_.stream()));
  }
  length_[sz(dst)] = length_[sz(src)];
}

void GpuDSpark::commit(std::span<const int32_t> slot, std::span<const int32_t> pos, std::span<const int32_t> src) {
  const size_t R = slot.size();
  if (pos.size() != R || src.size() != R) {
    fail(ErrorKind::Usage, "GPU DSpark commit: {} slots, {} positions, {} source rows", R, pos.size(), src.size());
  }
  if (R == 0) return;
  // Every row is checked before anything is written.
  std::vector<int64_t> next = length_;
  for (size_t i = 0; i < R; ++i) {
    const int s = slot[i];
    (void)length(s);
    if (pos[i] != next[sz(s)]) {
      fail(ErrorKind::Usage, "GPU DSpark commit: position {} to slot {}, which has {} committed", pos[i], s, next[sz(s)]);
    }
    if (pos[i] >= f_.options().max_context) {
      fail(ErrorKind::Usage, "GPU DSpark commit: position {} beyond the context of {}", pos[i], f_.options().max_context);
    }
    if (src[i] < 0 || src[i] >= max_rows_) {
      fail(ErrorKind::Usage, "GPU DSpark commit: features of main row {} (a pass has at most {})", src[i], max_rows_);
    }
    ++next[sz(s)];
  }
  // Only the last `window` positions of each slot are ever read again (a draft at N >= the
  // new length reads N - window .. N - 1); the rows before are skipped, so the rows written
  // by one launch land in distinct ring slots (window < ring cap) in any order.
  std::vector<int32_t> kslot, kpos, ksrc;
  for (size_t i = 0; i < R; ++i) {
    if (pos[i] < next[sz(slot[i])] - W_) continue;
    kslot.push_back(slot[i]);
    kpos.push_back(pos[i]);
    ksrc.push_back(src[i]);
  }
  const ModelConfig& c = f_.config();
  const int64_t H = c.hidden_size, D = c.head_dim;
  const cudaStream_t st = f_.stream();
  Buffers& b = *buf_;
  const size_t K = kslot.size();
  for (size_t r0 = 0; r0 < K; r0 += sz(max_rows_)) {
    const int n = static_cast<int>(std::min(K - r0, sz(max_rows_)));
    const size_t bytes = sz(n) * sizeof(int32_t);
    KILN_CUDA_CHECK(cudaMemcpyAsync(b.slot.get(), kslot.data() + r0, bytes, cudaMemcpyHostToDevice, st));
    KILN_CUDA_CHECK(cudaMemcpyAsync(b.pos.get(), kpos.data() + r0, bytes, cudaMemcpyHostToDevice, st));
    KILN_CUDA_CHECK(cudaMemcpyAsync(b.src.get(), ksrc.data() + r0, bytes, cudaMemcpyHostToDevice, st));
    const oc::StepRows rows{b.src.get(), b.slot.get(), b.pos.get(), n};  // no tokens: src stands in, unread
    auto pass = [&] {
      oc::gather_rows(f_.dspark_features(), F_, b.src.get(), n, static_cast<int>(F_), b.feats.get(), F_, st);
      GpuOps ops = f_.pass_ops(rows, rings_, rope_.view());
      // main_x = main_norm(main_proj(F)); per stage rope(kv_norm(wkv(main_x))) into its ring.
      ops.linear(w_.main_proj, b.feats.get(), n, b.mx.get());
      ops.rmsnorm(b.mx.get(), n, H, w_.main_norm, b.mx.get(), ops::Store::Act);
      for (size_t s = 0; s < w_.stages.size(); ++s) {
        const GpuAttention& a = w_.stages[s].attn;
        ops.linear(a.wkv, b.mx.get(), n, b.kv.get());
        ops.rmsnorm(b.kv.get(), n, D, a.kv_norm, b.kv.get(), ops::Store::Act);
        ops.rope(AttnKind::SWA, b.kv.get(), D, 1, D, D, false, ops::Store::Act);
        oc::window_write(rows, b.kv.get(), D, rings_[s]->ring, st);
      }
    };
    // A decode step commits at most block + 1 rows per slot: those sizes replay graphs;
    // larger (prompt) commits run eagerly rather than capture a graph per prompt length.
    if (n <= slots_ * (B_ + 1))
      launch({Pass::Commit, n, 0}, pass);
    else
      pass();
  }
  length_ = std::move(next);
  // Pageable host-to-device copies are staged before cudaMemcpyAsync returns: the host
  // arrays may go as soon as this returns.
}

std::vector<GpuDSpark::Out> GpuDSpark::draft(std::span<const Round> rounds, const Choose& choose, bool keep_logits,
                                             bool with_confidence) {
  const ModelConfig& c = f_.config();
  std::vector<Out> outs(rounds.size());
  std::vector<bool> seen(sz(slots_), false);
  for (const Round& q : rounds) {
    (void)length(q.slot);
    // A block's rows go into its slot's rings: two blocks of one slot would overwrite each other.
    if (seen[sz(q.slot)]) fail(ErrorKind::Usage, "GPU DSpark draft: slot {} twice in one call (one block per slot)", q.slot);
    seen[sz(q.slot)] = true;
    if (q.drafts < 0 || q.drafts > B_) fail(ErrorKind::Usage, "GPU DSpark draft: {} drafts; the block holds {}", q.drafts, B_);
    if (q.anchor < 0 || q.anchor >= c.vocab_size) {
      fail(ErrorKind::Usage, "GPU DSpark draft: anchor token {} outside [0, {})", q.anchor, c.vocab_size);
    }
    if (length_[sz(q.slot)] > f_.options().max_context) {
      fail(ErrorKind::Usage, "GPU DSpark draft: slot {} is at position {}, beyond the context", q.slot, length_[sz(q.slot)]);
    }
  }
  const size_t G = sz(rounds_);
  for (size_t first = 0; first < rounds.size(); first += G)
    draft_group(rounds, first, choose, keep_logits, with_confidence, outs);
  return outs;
}

void GpuDSpark::draft_group(std::span<const Round> rounds, size_t first, const Choose& choose, bool keep_logits,
                            bool with_confidence, std::vector<Out>& outs) {
  const ModelConfig& c = f_.config();
  const int64_t H = c.hidden_size, V = c.vocab_size, r = w_.config.markov_rank;
  const int n = static_cast<int>(std::min(rounds.size() - first, sz(rounds_)));
  const int T = n * B_;
  const cudaStream_t st = f_.stream();
  Buffers& b = *buf_;
  // Row i*B + j: token j of round i's block at position N_i + j; its keys end at N_i + B - 1.
  // Staged in page-locked memory (five arrays of T, then prev), copied asynchronously; the
  // last round's copies were waited for by its synchronisation, the event covers the rest.
  KILN_CUDA_CHECK(cudaEventSynchronize(rows_copied_));
  int32_t* tok = host_rows_->data();
  int32_t *slot = tok + T, *pos = tok + 2 * T, *key_end = tok + 3 * T, *perm = tok + 4 * T, *prev = tok + 5 * T;
  int most = 0;
  for (int i = 0; i < n; ++i) {
    const Round& q = rounds[first + sz(i)];
    const int32_t N = static_cast<int32_t>(length_[sz(q.slot)]);
    for (int j = 0; j < B_; ++j) {
      const size_t t = sz(i * B_ + j);
      tok[t] = j == 0 ? q.anchor : static_cast<int32_t>(w_.config.noise_token_id);
      slot[t] = q.slot;
      pos[t] = N + j;
      key_end[t] = N + B_ - 1;
      perm[sz(j * n + i)] = static_cast<int32_t>(t);  // k-major: row (k, i) of the head input is block row i*B + k
    }
    prev[sz(i)] = q.anchor;
    most = std::max(most, q.drafts);
  }
  const size_t bytes = sz(T) * sizeof(int32_t);
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.tok.get(), tok, bytes, cudaMemcpyHostToDevice, st));
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.slot.get(), slot, bytes, cudaMemcpyHostToDevice, st));
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.pos.get(), pos, bytes, cudaMemcpyHostToDevice, st));
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.key_end.get(), key_end, bytes, cudaMemcpyHostToDevice, st));
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.perm.get(), perm, bytes, cudaMemcpyHostToDevice, st));
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.prev.get(), prev, sz(n) * sizeof(int32_t), cudaMemcpyHostToDevice, st));
  KILN_CUDA_CHECK(cudaEventRecord(rows_copied_, st));

  // The block through the stages (the window ring of each stage gets the block's rows).
  const oc::StepRows rows{b.tok.get(), b.slot.get(), b.pos.get(), T};
  auto block_pass = [&] {
    GpuOps ops = f_.pass_ops(rows, rings_, rope_.view());
    ops.set_block_attention(b.key_end.get(), W_ + B_);
    float* X = ops.buf().X;
    float* Xn = ops.buf().Xn;
    ops.embed_streams(f_.weights().embed, X);
    for (size_t s = 0; s < w_.stages.size(); ++s) def::block(ops, w_.stages[s], ops.layer(s), X, Xn);
    // hc_head (pre-norm h), rows reordered k-major, norm, the target's head: U_k of round
    // i is row k * n + i of base.
    ops.hc_head(w_.hc_head, X, T, b.hpre.get(), ops::Store::Act);
    oc::gather_rows(b.hpre.get(), H, b.perm.get(), T, static_cast<int>(H), b.hk.get(), H, st);
    ops.rmsnorm(b.hk.get(), T, H, w_.norm, b.hn.get(), ops::Store::Act);
    ops.linear(f_.weights().head, b.hn.get(), T, b.base.get());
  };
  // Markov step k for every round of the group: e_k = markov_w1[prev] (into b.e's step-k
  // rows), bias = markov_w2 . e_k, then adjusted_k = U_k + bias, or (pick) its argmax into
  // picks' step-k rows without writing adjusted_k (the same sums, one kernel fewer).
  auto markov_step = [&](int k, const int32_t* prev_dev, int32_t* pick) {
    GpuOps ops = f_.pass_ops(oc::StepRows{prev_dev, b.slot.get(), b.pos.get(), n}, rings_, rope_.view());
    float* ek = b.e.get() + sz(k) * sz(n) * sz(r);
    const float* base_k = b.base.get() + sz(k) * sz(n) * sz(V);
    oc::gather_rows(w_.markov_w1.get(), r, prev_dev, n, static_cast<int>(r), ek, r, st);
    ops.linear(w_.markov_w2, ek, n, b.bias.get());
    if (pick)
      oc::argmax_rows_of_sum(b.bias.get(), V, base_k, V, n, static_cast<int>(V), pick, st);
    else
      oc::add_broadcast_streams(b.bias.get(), base_k, n, 1, static_cast<int>(V), b.adjusted.get(), st);
  };
  std::vector<float> h;
  if (with_confidence && !w_.confidence.empty()) h = std::vector<float>(sz(T * H));
  // Confidence of draft k of round i, in the CPU drafter's arithmetic, from the pre-norm
  // hidden of block row k and e_k (e: the step-k rows of b.e on the host).
  auto confidence = [&](int k, int i, const float* e) {
    const float* hk = h.data() + (static_cast<int64_t>(k) * n + i) * H;
    const float logit = ops::cpu::dot(w_.confidence.data(), hk, H) +
                        ops::cpu::dot(w_.confidence.data() + H, e + static_cast<int64_t>(i) * r, r);
    return 1.0f / (1.0f + std::exp(-logit));
  };

  bool on_device = !keep_logits;
  for (int i = 0; i < n; ++i) on_device = on_device && rounds[first + sz(i)].by_argmax;
  if (on_device) {
    // Greedy drafts: the block pass and the whole Markov loop in one graph, each step's
    // argmax (ties to the lowest id, as the engine's) feeding the next step's gather on
    // the device; one copy of the drafts (and of e for the confidences) at the end.
    launch({Pass::ArgmaxDraft, n, most}, [&] {
      block_pass();
      for (int k = 0; k < most; ++k)
        markov_step(k, k == 0 ? b.prev.get() : b.picks.get() + sz(k - 1) * sz(n), b.picks.get() + sz(k) * sz(n));
    });
    std::vector<int32_t> picks(sz(most * n));
    std::vector<float> e;
    KILN_CUDA_CHECK(cudaMemcpyAsync(picks.data(), b.picks.get(), picks.size() * 4, cudaMemcpyDeviceToHost, st));
    if (!h.empty()) {
      e.resize(sz(most * n * r));
      KILN_CUDA_CHECK(cudaMemcpyAsync(h.data(), b.hk.get(), h.size() * 4, cudaMemcpyDeviceToHost, st));
      KILN_CUDA_CHECK(cudaMemcpyAsync(e.data(), b.e.get(), e.size() * 4, cudaMemcpyDeviceToHost, st));
    }
    KILN_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int i = 0; i < n; ++i) {
      Out& o = outs[first + sz(i)];
      for (int k = 0; k < rounds[first + sz(i)].drafts; ++k) {
        o.tokens.push_back(picks[sz(k * n + i)]);
        if (!h.empty()) o.confidence.push_back(confidence(k, i, e.data() + sz(k) * sz(n) * sz(r)));
      }
    }
    return;
  }

  launch({Pass::Block, n, 0}, block_pass);
  std::vector<float> base;
  if (keep_logits) base = std::vector<float>(sz(T * V));
  if (!h.empty()) KILN_CUDA_CHECK(cudaMemcpyAsync(h.data(), b.hk.get(), h.size() * 4, cudaMemcpyDeviceToHost, st));
  if (keep_logits) KILN_CUDA_CHECK(cudaMemcpyAsync(base.data(), b.base.get(), base.size() * 4, cudaMemcpyDeviceToHost, st));
  for (int i = 0; keep_logits && i < n; ++i) {
    Out& o = outs[first + sz(i)];
    o.base.resize(sz(B_ * V));
  }

  // The sequential Markov loop, all rounds of the group per step.
  std::vector<float> adjusted(sz(n * V)), e(sz(n * r));
  for (int k = 0; k < most; ++k) {
    if (k > 0) KILN_CUDA_CHECK(cudaMemcpyAsync(b.prev.get(), prev, sz(n) * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    launch({Pass::MarkovStep, n, k}, [&] { markov_step(k, b.prev.get(), nullptr); });
    KILN_CUDA_CHECK(cudaMemcpyAsync(adjusted.data(), b.adjusted.get(), adjusted.size() * 4, cudaMemcpyDeviceToHost, st));
    if (!h.empty())  // e_k only feeds the confidences
      KILN_CUDA_CHECK(cudaMemcpyAsync(e.data(), b.e.get() + sz(k) * sz(n) * sz(r), e.size() * 4, cudaMemcpyDeviceToHost, st));
    KILN_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int i = 0; i < n; ++i) {
      const size_t at = first + sz(i);
      if (k >= rounds[at].drafts) continue;
      Out& o = outs[at];
      const std::span<const float> row = std::span<const float>(adjusted).subspan(sz(i) * sz(V), sz(V));
      if (keep_logits) o.adjusted.insert(o.adjusted.end(), row.begin(), row.end());
      if (!h.empty()) o.confidence.push_back(confidence(k, i, e.data()));
      const int32_t d = choose(at, k, row);
      if (d < 0 || d >= V) fail(ErrorKind::Usage, "GPU DSpark draft: chose token {} outside [0, {})", d, V);
      o.tokens.push_back(d);
      prev[sz(i)] = d;
    }
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(st));
  for (int i = 0; keep_logits && i < n; ++i) {
    Out& o = outs[first + sz(i)];
    for (int k = 0; k < B_; ++k) {
      std::copy_n(base.data() + (static_cast<int64_t>(k) * n + i) * V, V, o.base.data() + static_cast<int64_t>(k) * V);
    }
  }
}

}  // namespace kiln::model::cuda
