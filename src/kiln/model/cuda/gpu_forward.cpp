// GPU forward: buffers, per-slot state, one pass (enqueue: the model definition,
// model/definition.h, run on the GPU ops of gpu_ops.h, then the argmax) and its CUDA graphs.
#include "kiln/model/cuda/gpu_forward.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/model/cuda/gpu_ops.h"
#include "kiln/model/definition.h"
#include "kiln/model/gpu_memory.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/elementwise.h"
#include "kiln/ops/cuda/graph_capture.h"
#include "kiln/ops/cuda/launch.cuh"

namespace kiln::model::cuda {

namespace oc = kiln::ops::cuda;

namespace {


size_t sz(int64_t v) { return static_cast<size_t>(v); }

}  // namespace

struct GpuForward::Buffers {
  DeviceArray<int32_t> tok, slot, pos, src, head_idx;
  DeviceArray<float> X, Xn, u, y, post, comb, hc_work;
  DeviceArray<float> qres, kv, q, o, mid;
  DeviceArray<float> ca, cz;                 // compressor projections [rows, widest]
  DeviceArray<float> iq, iw, iscratch;       // indexer
  DeviceArray<int32_t> sel, nsel;
  DeviceArray<float> attn_work;              // split-key attention partials
  DeviceArray<float> glog, wt, g, up, ye;    // routed experts ([rows * K, .])
  DeviceArray<int32_t> idx;
  DeviceArray<float> sg, su, sy;             // shared expert
  DeviceArray<float> h;                      // head input
  DeviceArray<float> main_logits, mtp_logits, main_streams, mtp_streams;
  DeviceArray<int32_t> main_argmax, mtp_argmax;
  DeviceArray<float> mtp_in, e, ep, hs;      // MTP input
};

namespace {

// Allocates one compressor's rings and entries for `slots` sequences, sized by
// model/gpu_memory.h (which the memory planner adds up).
oc::CompressorRing make_ring(int slots, const GpuCompressorState& st, DeviceArray<float>& kv, DeviceArray<float>& score,
                             DeviceArray<float>& entries, int64_t& bytes) {
  oc::CompressorRing c;
  c.ratio = st.ratio;
  c.dim = st.dim;
  c.overlap = st.overlap;
  c.width = st.width;
  c.cap = st.cap;
  c.ring_slot_stride = st.ring_stride;
  c.max_entries = st.max_entries;
  c.entry_slot_stride = st.entry_stride;
  kv = DeviceArray<float>(sz(slots * c.ring_slot_stride));
  score = DeviceArray<float>(sz(slots * c.ring_slot_stride));
  entries = DeviceArray<float>(sz(slots * c.entry_slot_stride));
  c.kv = kv.get();
  c.score = score.get();
  c.entries = entries.get();
  bytes += static_cast<int64_t>((kv.size() + score.size() + entries.size()) * sizeof(float));
  return c;
}

// The shape model/gpu_memory.h sizes the buffers from, read off the uploaded weights.
GpuModelShape shape_of(const GpuWeights& w) {
  GpuModelShape m;
  auto add = [&](const GpuBlock& b) {
    m.blocks.push_back({b.attn.kind, b.attn.compressor ? b.attn.compressor->ratio : 0});
    m.inter = std::max<int64_t>(m.inter, b.ffn.inter);
    if (b.ffn.shared) m.shared_inter = std::max<int64_t>(m.shared_inter, b.ffn.shared->w1.n());
  };
  for (const GpuBlock& b : w.layers) add(b);
  for (const GpuMtp& mb : w.mtp) add(mb.block);
  return m;
}

}  // namespace

GpuForward::GpuForward(GpuWeights weights, const GpuOptions& opt) : w_(std::move(weights)), opt_(opt) {
  const ModelConfig& c = w_.config;
  if (opt_.max_slots < 1 || opt_.max_rows < 1 || opt_.max_context < 1) {
    fail(ErrorKind::Usage, "GpuForward: max_slots {}, max_rows {}, max_context {} must all be >= 1", opt_.max_slots,
         opt_.max_rows, opt_.max_context);
  }
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&meta_copied_, cudaEventDisableTiming));
  KILN_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_meta_), sizeof(int32_t) * 5 * opt_.max_rows));
  rope_main_ = oc::RopeTable(ops::cpu::Rope(rope_spec(c, c.rope_main)), opt_.max_context);
  rope_compress_ = oc::RopeTable(ops::cpu::Rope(rope_spec(c, c.rope_compress)), opt_.max_context);

  int dev = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const GpuModelShape shape = shape_of(w_);
  const GpuActivationSizes a = gpu_activation_sizes(c, shape, opt_.max_rows, opt_.max_context, sms);
  activation_bytes_ = 4 * a.rope;
  auto f = [&](int64_t count) {
    activation_bytes_ += 4 * count;
    return DeviceArray<float>(sz(count));
  };
  auto i32 = [&](int64_t count) {
    activation_bytes_ += 4 * count;
    return DeviceArray<int32_t>(sz(count));
  };
  buf_ = std::make_unique<Buffers>();
  Buffers& b = *buf_;
  b.tok = i32(a.tok), b.slot = i32(a.slot), b.pos = i32(a.pos), b.src = i32(a.src), b.head_idx = i32(a.head_idx);
  b.X = f(a.X), b.Xn = f(a.Xn), b.u = f(a.u), b.y = f(a.y), b.post = f(a.post), b.comb = f(a.comb);
  b.hc_work = f(a.hc_work);
  b.qres = f(a.qres), b.kv = f(a.kv), b.q = f(a.q), b.o = f(a.o);
  b.mid = f(a.mid);
  b.ca = f(a.ca), b.cz = f(a.cz);
  b.iq = f(a.iq), b.iw = f(a.iw);
  b.iscratch = f(a.iscratch);
  b.sel = i32(a.sel), b.nsel = i32(a.nsel);
  b.attn_work = f(a.attn_work);
  b.glog = f(a.glog), b.wt = f(a.wt), b.idx = i32(a.idx);
  b.g = f(a.g), b.up = f(a.up), b.ye = f(a.ye);
  b.sg = f(a.sg), b.su = f(a.su), b.sy = f(a.sy);
  b.h = f(a.h);
  b.main_logits = f(a.main_logits), b.mtp_logits = f(a.mtp_logits);
  b.main_streams = f(a.main_streams), b.mtp_streams = f(a.mtp_streams);
  b.main_argmax = i32(a.main_argmax), b.mtp_argmax = i32(a.mtp_argmax);
  b.mtp_in = f(a.mtp_in), b.e = f(a.e), b.ep = f(a.ep), b.hs = f(a.hs);

  // Per-slot state of every layer (main layers, then MTP blocks).
  const int slots = opt_.max_slots;
  for (const GpuModelShape::Block& blk : shape.blocks) {
    const GpuBlockState st = gpu_block_state(c, blk, opt_.max_rows, opt_.max_context);
    auto s = std::make_unique<GpuLayerState>();
    s->ring.cap = st.window_cap;
    s->ring.dim = st.dim;
    s->ring.slot_stride = st.window_stride;
    s->window = DeviceArray<float>(sz(slots * s->ring.slot_stride));
    s->ring.data = s->window.get();
    state_bytes_ += static_cast<int64_t>(s->window.size() * sizeof(float));
    if (st.comp) {
      s->comp = make_ring(slots, *st.comp, s->ckv, s->cscore, s->centries, state_bytes_);
      s->has_comp = true;
    }
    if (st.icomp) {
      s->icomp = make_ring(slots, *st.icomp, s->ikv, s->iscore, s->ientries, state_bytes_);
      s->has_icomp = true;
    }
    layer_state_.push_back(std::move(s));
  }
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
}

GpuForward::~GpuForward() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  if (host_meta_) cudaFreeHost(host_meta_);
  if (meta_copied_) cudaEventDestroy(meta_copied_);
  if (stream_) cudaStreamDestroy(stream_);
}

void GpuForward::copy_slot(int src, int dst, int64_t positions) {
  if (src < 0 || dst < 0 || src >= opt_.max_slots || dst >= opt_.max_slots || src == dst) {
    fail(ErrorKind::Usage, "gpu forward: copy of slot {} into slot {} (slots are 0..{} and must differ)", src, dst,
         opt_.max_slots - 1);
  }
  auto copy = [&](float* base, int64_t slot_stride, int64_t count) {
    if (count <= 0) return;
    KILN_CUDA_CHECK(cudaMemcpyAsync(base + dst * slot_stride, base + src * slot_stride, sz(count) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, stream_));
  };
  auto compressor = [&](const oc::CompressorRing& c) {
    copy(c.kv, c.ring_slot_stride, c.ring_slot_stride);
    copy(c.score, c.ring_slot_stride, c.ring_slot_stride);
    // Entry j is emitted once position (j + 1) * ratio - 1 is fed.
    copy(c.entries, c.entry_slot_stride, std::min<int64_t>(c.max_entries, std::max<int64_t>(positions, 0) / c.ratio) * c.dim);
  };
  for (const auto& st : layer_state_) {
    copy(st->ring.data, st->ring.slot_stride, st->ring.slot_stride);
    if (st->has_comp) compressor(st->comp);
    if (st->has_icomp) compressor(st->icomp);
  }
}

void GpuForward::upload_rows(std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
                             std::span<const int32_t> src, bool tok_from_argmax) {
  const ModelConfig& c = w_.config;
  const size_t R = slot.size();
  if (R == 0 || R > static_cast<size_t>(opt_.max_rows)) {
    fail(ErrorKind::Usage, "gpu forward: {} rows in one pass; this GpuForward takes 1..{} (max_rows)", R, opt_.max_rows);
  }
  if (pos.size() != R || (!tok_from_argmax && tok.size() != R) || (!src.empty() && src.size() != R)) {
    fail(ErrorKind::Usage, "gpu forward: row arrays of different lengths ({} tokens, {} slots, {} positions)", tok.size(),
         R, pos.size());
  }
  for (size_t r = 0; r < R; ++r) {
    if (slot[r] < 0 || slot[r] >= opt_.max_slots) {
      fail(ErrorKind::Usage, "gpu forward: row {} names slot {}; slots are 0..{}", r, slot[r], opt_.max_slots - 1);
    }
    if (pos[r] < 0 || pos[r] >= opt_.max_context) {
      fail(ErrorKind::Usage, "gpu forward: row {} is at position {}; this GpuForward holds {} positions per sequence "
           "(max_context)", r, pos[r], opt_.max_context);
    }
    if (!tok_from_argmax && (tok[r] < 0 || tok[r] >= c.vocab_size)) {
      fail(ErrorKind::Usage, "gpu forward: token id {} out of range [0, {})", tok[r], c.vocab_size);
    }
    if (!src.empty() && (src[r] < 0 || src[r] >= opt_.max_rows)) {
      fail(ErrorKind::Usage, "gpu forward: row {} takes streams of row {} (of {})", r, src[r], opt_.max_rows);
    }
  }
  // The pinned staging area may still be read by the previous pass's copy.
  KILN_CUDA_CHECK(cudaEventSynchronize(meta_copied_));
  const size_t Rm = static_cast<size_t>(opt_.max_rows);
  int32_t* ht = host_meta_;
  int32_t* hs = host_meta_ + Rm;
  int32_t* hp = host_meta_ + 2 * Rm;
  int32_t* hr = host_meta_ + 3 * Rm;
  if (!tok_from_argmax) std::memcpy(ht, tok.data(), R * 4);
  std::memcpy(hs, slot.data(), R * 4);
  std::memcpy(hp, pos.data(), R * 4);
  if (!src.empty()) std::memcpy(hr, src.data(), R * 4);
  Buffers& b = *buf_;
  if (tok_from_argmax) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(b.tok.get(), b.mtp_argmax.get(), R * 4, cudaMemcpyDeviceToDevice, stream_));
  } else {
    KILN_CUDA_CHECK(cudaMemcpyAsync(b.tok.get(), ht, R * 4, cudaMemcpyHostToDevice, stream_));
  }
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.slot.get(), hs, R * 4, cudaMemcpyHostToDevice, stream_));
  KILN_CUDA_CHECK(cudaMemcpyAsync(b.pos.get(), hp, R * 4, cudaMemcpyHostToDevice, stream_));
  if (!src.empty()) KILN_CUDA_CHECK(cudaMemcpyAsync(b.src.get(), hr, R * 4, cudaMemcpyHostToDevice, stream_));
  KILN_CUDA_CHECK(cudaEventRecord(meta_copied_, stream_));
}

void GpuForward::main(std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
                      std::optional<std::span<const int32_t>> head_rows) {
  upload_rows(tok, slot, pos, {}, false);
  upload_head_rows(head_rows, static_cast<int>(slot.size()));
  launch(Pass::Main, 0, static_cast<int>(slot.size()));
}

void GpuForward::upload_head_rows(std::optional<std::span<const int32_t>> asked, int R) {
  head_index_.clear();
  main_head_ = R;
  if (!asked) return;
  const std::span<const int32_t> head_rows = *asked;
  if (static_cast<int>(head_rows.size()) == R) {
    for (size_t i = 0; i < head_rows.size(); ++i) {
      if (head_rows[i] != static_cast<int32_t>(i))
        fail(ErrorKind::Usage, "gpu forward: head rows must ascend within the pass's {} rows", R);
    }
    return;
  }
  head_index_.assign(static_cast<size_t>(R), -1);
  for (size_t i = 0; i < head_rows.size(); ++i) {
    const int32_t r = head_rows[i];
    if (r < 0 || r >= R || (i > 0 && r <= head_rows[i - 1]))
      fail(ErrorKind::Usage, "gpu forward: head row {} (head rows must ascend within the pass's {} rows)", r, R);
    head_index_[static_cast<size_t>(r)] = static_cast<int32_t>(i);
  }
  main_head_ = static_cast<int>(head_rows.size());
  if (head_rows.empty()) return;
  // The slot after upload_rows' four in the pinned staging area (its copy is ordered after
  // theirs on the stream, and meta_copied_ is recorded again after it).
  int32_t* hh = host_meta_ + 4 * static_cast<size_t>(opt_.max_rows);
  std::memcpy(hh, head_rows.data(), head_rows.size() * 4);
  KILN_CUDA_CHECK(cudaMemcpyAsync(buf_->head_idx.get(), hh, head_rows.size() * 4, cudaMemcpyHostToDevice, stream_));
  KILN_CUDA_CHECK(cudaEventRecord(meta_copied_, stream_));
}

size_t GpuForward::head_index(int32_t r) const {
  if (head_index_.empty()) return static_cast<size_t>(r);
  if (r >= static_cast<int32_t>(head_index_.size()) || head_index_[static_cast<size_t>(r)] < 0)
    fail(ErrorKind::Usage, "gpu forward: row {} of the last main pass got no logits (not among its head rows)", r);
  return static_cast<size_t>(head_index_[static_cast<size_t>(r)]);
}

void GpuForward::mtp(int m, std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
                     std::span<const int32_t> src, bool from_mtp) {
  if (m < 0 || m >= mtp_blocks()) fail(ErrorKind::Usage, "gpu forward: MTP block {} out of range [0, {})", m, mtp_blocks());
  if (src.size() != slot.size()) {
    fail(ErrorKind::Usage, "gpu forward: MTP pass with {} rows and {} stream sources", slot.size(), src.size());
  }
  upload_rows(tok, slot, pos, src, tok.empty());
  launch(from_mtp ? Pass::MtpFromMtp : Pass::MtpFromMain, m, static_cast<int>(slot.size()));
}

double GpuForward::time_main(std::span<const int32_t> tok, std::span<const int32_t> slot, std::span<const int32_t> pos,
                             int reps, std::optional<std::span<const int32_t>> head_rows) {
  if (reps < 1) fail(ErrorKind::Usage, "time_main: reps = {} (need >= 1)", reps);
  upload_rows(tok, slot, pos, {}, false);
  const int R = static_cast<int>(slot.size());
  upload_head_rows(head_rows, R);
  launch(Pass::Main, 0, R);  // warm-up (and capture)
  cudaEvent_t a = nullptr, b = nullptr;
  KILN_CUDA_CHECK(cudaEventCreate(&a));
  KILN_CUDA_CHECK(cudaEventCreate(&b));
  KILN_CUDA_CHECK(cudaEventRecord(a, stream_));
  for (int i = 0; i < reps; ++i) launch(Pass::Main, 0, R);
  KILN_CUDA_CHECK(cudaEventRecord(b, stream_));
  KILN_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return static_cast<double>(ms) / reps;
}

std::vector<std::pair<std::string, double>> GpuForward::profile_main(std::span<const int32_t> tok,
                                                                   std::span<const int32_t> slot,
                                                                   std::span<const int32_t> pos, int reps,
                                                                   std::optional<std::span<const int32_t>> head_rows) {
  if (reps < 1) fail(ErrorKind::Usage, "profile_main: reps = {} (need >= 1)", reps);
  upload_rows(tok, slot, pos, {}, false);
  const int R = static_cast<int>(slot.size());
  upload_head_rows(head_rows, R);
  OpTimer timer;
  std::vector<std::pair<std::string, double>> out;  // label -> ms, in first-seen order
  for (int i = 0; i <= reps; ++i) {  // the first pass warms up
    timer.used = 0;
    timer_ = &timer;
    try {
      enqueue(Pass::Main, 0, R);
    } catch (...) {
      timer_ = nullptr;
      throw;
    }
    timer_ = nullptr;
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (i == 0) continue;
    for (size_t k = 1; k < timer.used; ++k) {
      float ms = 0;
      KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, timer.marks[k - 1].second, timer.marks[k].second));
      const std::string label = timer.marks[k].first;
      auto it = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == label; });
      if (it == out.end()) out.emplace_back(label, 0.0), it = out.end() - 1;
      it->second += static_cast<double>(ms) / reps;
    }
  }
  return out;
}

void GpuForward::launch(Pass pass, int m, int R) {
  if (!opt_.graphs || (pass == Pass::Main && main_head_ < R)) {
    enqueue(pass, m, R);
    return;
  }
  const auto key = std::make_tuple(static_cast<int>(pass), m, R);
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    ops::cuda::GraphNodes nodes;
    it = graphs_.emplace(key, ops::cuda::capture_graph(stream_, [&] { enqueue(pass, m, R); }, &nodes)).first;
    graph_nodes_[key] = nodes;
  }
  KILN_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void GpuForward::record_dspark_features(std::vector<int64_t> layers) {
  const ModelConfig& c = w_.config;
  for (int64_t l : layers) {
    if (l < 0 || l >= c.num_layers) fail(ErrorKind::Usage, "gpu forward: DSpark target layer {} of {}", l, c.num_layers);
  }
  if (layers.empty()) fail(ErrorKind::Usage, "gpu forward: a DSpark drafter without target layers");
  const int64_t F = static_cast<int64_t>(layers.size()) * c.hidden_size;
  features_ = DeviceArray<float>(sz(opt_.max_rows * F));
  activation_bytes_ += opt_.max_rows * F * 4;
  feature_layers_ = std::move(layers);
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
  graph_nodes_.clear();
}

ops::cuda::GraphNodes GpuForward::main_graph_nodes(int R) const {
  const auto it = graph_nodes_.find(std::make_tuple(static_cast<int>(Pass::Main), 0, R));
  return it == graph_nodes_.end() ? ops::cuda::GraphNodes{} : it->second;
}

GpuOps GpuForward::pass_ops(const oc::StepRows& rows, std::span<const std::unique_ptr<GpuLayerState>> layers,
                            oc::RopeView rope) {
  if (rows.R < 1 || rows.R > opt_.max_rows) {
    fail(ErrorKind::Usage, "gpu forward: a pass of {} rows; this GpuForward takes 1..{} (max_rows)", rows.R, opt_.max_rows);
  }
  GpuOps::Buffers v;
  GpuScratch x;
  views(v, x);
  return GpuOps(w_.config, w_.precision, rows, stream_, rope, rope, v, x, layers, nullptr);
}

void GpuForward::views(GpuOps::Buffers& v, GpuScratch& x) const {
  const Buffers& b = *buf_;
  v.X = b.X.get(), v.Xn = b.Xn.get(), v.u = b.u.get(), v.y = b.y.get(), v.post = b.post.get(), v.comb = b.comb.get();
  v.qres = b.qres.get(), v.kv = b.kv.get(), v.q = b.q.get(), v.o = b.o.get(), v.mid = b.mid.get();
  v.ca = b.ca.get(), v.cz = b.cz.get(), v.iq = b.iq.get(), v.iw = b.iw.get(), v.sel = {b.sel.get(), b.nsel.get()};
  v.glog = b.glog.get(), v.wt = b.wt.get(), v.idx = b.idx.get(), v.ye = b.ye.get();
  v.sg = b.sg.get(), v.su = b.su.get(), v.sy = b.sy.get(), v.h = b.h.get();
  v.mtp_in = b.mtp_in.get(), v.e = b.e.get(), v.ep = b.ep.get(), v.hs = b.hs.get();
  x.g = b.g.get(), x.up = b.up.get(), x.hc_work = b.hc_work.get(), x.attn_work = b.attn_work.get();
  x.iscratch = b.iscratch.get(), x.src = b.src.get();
}

// Passes of up to this many rows launch their kernels with programmatic dependent launch
// (ops/cuda/launch.cuh): on an H100 it took a batch-1 decode step from 1.635 to 1.519 ms,
// while 2,048-row prompt passes ran 2% slower with it (docs/performance.md).
constexpr int kPdlMaxRows = 64;

void GpuForward::enqueue(Pass pass, int m, int R) {
  const ops::cuda::PdlScope pdl(R <= kPdlMaxRows);
  const ModelConfig& c = w_.config;
  Buffers& b = *buf_;
  GpuOps::Buffers v;
  GpuScratch x;
  views(v, x);
  x.mtp_source = pass == Pass::MtpFromMtp ? b.mtp_streams.get() : b.main_streams.get();
  GpuOps ops(c, w_.precision, oc::StepRows{b.tok.get(), b.slot.get(), b.pos.get(), R}, stream_, rope_main_.view(),
             rope_compress_.view(), v, x, layer_state_, timer_);
  const int V = static_cast<int>(c.vocab_size);
  ops.mark("start");
  if (pass == Pass::Main) {
    if (!feature_layers_.empty()) ops.set_features(features_.get(), feature_layers_);
    if (main_head_ < R) ops.set_head_rows(b.head_idx.get(), main_head_);
    def::main_pass(ops, w_, b.main_streams.get(), main_head_ > 0 ? b.main_logits.get() : nullptr);
    if (main_head_ > 0) oc::argmax_rows(b.main_logits.get(), V, main_head_, V, b.main_argmax.get(), stream_);
  } else {
    def::mtp_pass(ops, w_, static_cast<size_t>(m), b.mtp_streams.get(), b.mtp_logits.get());
    oc::argmax_rows(b.mtp_logits.get(), V, R, V, b.mtp_argmax.get(), stream_);
  }
  ops.mark("argmax");
}

namespace {

template <typename T>
std::vector<T> fetch(cudaStream_t s, const DeviceArray<T>& a, size_t count) {
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  return a.download(count);
}

}  // namespace

void GpuForward::synchronize() const { KILN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void GpuForward::mtp_argmax_to_host_async(int R, int32_t* dst) const {
  if (R < 1 || R > opt_.max_rows) fail(ErrorKind::Usage, "mtp_argmax_to_host_async: {} rows (1..{})", R, opt_.max_rows);
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, buf_->mtp_argmax.get(), sizeof(int32_t) * static_cast<size_t>(R),
                                  cudaMemcpyDeviceToHost, stream_));
}

PinnedInts::PinnedInts(size_t n) : n_(n) {
  KILN_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), sizeof(int32_t) * std::max<size_t>(n, 1)));
}

PinnedInts::~PinnedInts() {
  if (p_) cudaFreeHost(p_);
}

void GpuForward::logits_rows_to_host(bool mtp, std::span<const int32_t> rows, float* dst) const {
  const size_t V = sz(w_.config.vocab_size);
  const float* src = mtp ? buf_->mtp_logits.get() : buf_->main_logits.get();
  auto at = [&](int32_t r) { return mtp ? static_cast<size_t>(r) : head_index(r); };
  for (size_t i = 0; i < rows.size();) {
    const int32_t r = rows[i];
    if (r < 0 || r >= opt_.max_rows) fail(ErrorKind::Usage, "gpu forward: logits of row {} (1..{} rows)", r, opt_.max_rows);
    const size_t first = at(r);
    size_t n = 1;  // a run of rows consecutive in the logits buffer is one copy
    while (i + n < rows.size() && rows[i + n] >= 0 && rows[i + n] < opt_.max_rows && at(rows[i + n]) == first + n) ++n;
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst + i * V, src + first * V, n * V * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    i += n;
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void GpuForward::argmax_rows_to_host(bool mtp, std::span<const int32_t> rows, int32_t* dst) const {
  int32_t hi = 0;
  std::vector<size_t> at(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const int32_t r = rows[i];
    if (r < 0 || r >= opt_.max_rows) fail(ErrorKind::Usage, "gpu forward: argmax of row {} (1..{} rows)", r, opt_.max_rows);
    at[i] = mtp ? static_cast<size_t>(r) : head_index(r);
    hi = std::max(hi, static_cast<int32_t>(at[i]) + 1);
  }
  if (rows.empty()) return;
  // One copy of the leading rows' argmax into pinned memory, then the picks.
  if (!argmax_host_ || argmax_host_->size() < static_cast<size_t>(hi)) argmax_host_ = std::make_unique<PinnedInts>(opt_.max_rows);
  KILN_CUDA_CHECK(cudaMemcpyAsync(argmax_host_->data(), (mtp ? buf_->mtp_argmax : buf_->main_argmax).get(),
                                  sizeof(int32_t) * sz(hi), cudaMemcpyDeviceToHost, stream_));
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (size_t i = 0; i < rows.size(); ++i) dst[i] = (*argmax_host_)[at[i]];
}

std::vector<float> GpuForward::download_main_logits(int R) const {
  return fetch(stream_, buf_->main_logits, sz(R * w_.config.vocab_size));
}
std::vector<int32_t> GpuForward::download_main_argmax(int R) const { return fetch(stream_, buf_->main_argmax, sz(R)); }
std::vector<float> GpuForward::download_main_streams(int R) const {
  return fetch(stream_, buf_->main_streams, sz(R * w_.config.hc_mult * w_.config.hidden_size));
}
std::vector<float> GpuForward::download_mtp_logits(int R) const {
  return fetch(stream_, buf_->mtp_logits, sz(R * w_.config.vocab_size));
}
std::vector<int32_t> GpuForward::download_mtp_argmax(int R) const { return fetch(stream_, buf_->mtp_argmax, sz(R)); }
std::vector<float> GpuForward::download_mtp_streams(int R) const {
  return fetch(stream_, buf_->mtp_streams, sz(R * w_.config.hc_mult * w_.config.hidden_size));
}

}  // namespace kiln::model::cuda
