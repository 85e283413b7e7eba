#include "kiln/model/gpu_memory.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/model/decode_contract.h"
#include "kiln/ops/device_sizes.h"

namespace kiln::model {

int gpu_linear_rows(int max_rows) { return max_rows; }
int gpu_hproj_rows(const ModelConfig& c, int max_rows) { return max_rows * static_cast<int>(c.hc_mult); }
int gpu_expert_pairs(const ModelConfig& c, int max_rows) { return max_rows * static_cast<int>(c.num_experts_per_tok); }

GpuModelShape gpu_model_shape(const Weights& w) {
  GpuModelShape m;
  auto add = [&](const Block& b) {
    m.blocks.push_back({b.attn.kind, b.attn.compressor ? b.attn.compressor->ratio : 0});
    if (!b.ffn.experts.empty()) m.inter = std::max<int64_t>(m.inter, b.ffn.experts[0].w1.out);
    if (b.ffn.shared) m.shared_inter = std::max<int64_t>(m.shared_inter, b.ffn.shared->w1.out);
  };
  for (const Block& b : w.layers) add(b);
  for (const MtpBlock& mb : w.mtp) add(mb.block);
  return m;
}

int64_t GpuActivationSizes::elements() const {
  return tok + slot + pos + src + head_idx + X + Xn + u + y + post + comb + hc_work + qres + kv + q + o + mid + ca + cz + iq + iw +
         iscratch + sel + nsel + attn_work + glog + wt + g + up + ye + idx + sg + su + sy + h + main_logits + mtp_logits +
         main_streams + mtp_streams + main_argmax + mtp_argmax + mtp_in + e + ep + hs + rope;
}

GpuActivationSizes gpu_activation_sizes(const ModelConfig& c, const GpuModelShape& m, int max_rows,
                                        int64_t max_context, int sms) {
  const int64_t Rm = max_rows, H = c.hidden_size, n = c.hc_mult, D = c.head_dim, nh = c.num_heads;
  const int64_t K = c.num_experts_per_tok, E = c.n_routed_experts, V = c.vocab_size;
  int64_t widest = 1, index_entries = 1;
  for (const auto& b : m.blocks) {
    if (b.kind != AttnKind::SWA) widest = std::max<int64_t>(widest, (b.kind == AttnKind::CSA ? 2 : 1) * D);
    if (b.kind == AttnKind::CSA) {
      widest = std::max<int64_t>(widest, 2 * c.index_head_dim);
      index_entries = std::max<int64_t>(index_entries, max_context / b.ratio);
    }
  }
  GpuActivationSizes a;
  a.tok = a.slot = a.pos = a.src = a.head_idx = Rm;
  a.X = a.Xn = Rm * n * H;
  a.u = a.y = Rm * H;
  a.post = Rm * n;
  a.comb = Rm * n * n;
  a.hc_work = ops::device::hc_pre_workspace_floats(max_rows, static_cast<int>(n), static_cast<int>(H));
  a.qres = Rm * c.q_lora_rank;
  a.kv = Rm * D;
  a.q = a.o = Rm * nh * D;
  a.mid = Rm * c.o_groups * c.o_lora_rank;
  a.ca = a.cz = Rm * widest;
  a.iq = Rm * std::max<int64_t>(1, c.index_n_heads * c.index_head_dim);
  a.iw = Rm * std::max<int64_t>(1, c.index_n_heads);
  a.iscratch = Rm * index_entries;
  a.sel = Rm * std::max<int64_t>(1, c.index_topk);
  a.nsel = Rm;
  a.attn_work = std::max<int64_t>(
      1, ops::device::attention_workspace_floats(max_rows, static_cast<int>(nh), static_cast<int>(D), sms));
  a.glog = Rm * E;
  a.wt = a.idx = Rm * K;
  a.g = a.up = Rm * K * m.inter;
  a.ye = Rm * K * H;
  a.sg = a.su = Rm * m.shared_inter;
  a.sy = a.h = Rm * H;
  a.main_logits = a.mtp_logits = Rm * V;
  a.main_streams = a.mtp_streams = Rm * n * H;
  a.main_argmax = a.mtp_argmax = Rm;
  a.mtp_in = Rm * n * H;
  a.e = a.ep = Rm * H;
  a.hs = Rm * n * H;
  a.rope = 2 * ops::device::rope_table_floats(c.rope_head_dim, max_context);
  return a;
}

namespace {

// The contract's ring (model/decode_contract.h) and the entries of max_context positions.
GpuCompressorState compressor_state(const CompressorLayout& l, int64_t max_context) {
  GpuCompressorState s;
  s.ratio = static_cast<int>(l.ratio);
  s.dim = static_cast<int>(l.dim);
  s.overlap = l.overlap;
  s.width = static_cast<int>(l.width);
  s.cap = static_cast<int>(l.cap);
  s.ring_stride = static_cast<int64_t>(s.cap) * s.width;
  s.max_entries = static_cast<int>(max_context / l.ratio);
  s.entry_stride = static_cast<int64_t>(std::max(s.max_entries, 1)) * s.dim;
  return s;
}

}  // namespace

GpuDSparkSizes gpu_dspark_sizes(const ModelConfig& c, int max_rows, int slots) {
  GpuDSparkSizes z;
  if (!c.dspark || c.dspark->block_size < 1) return z;
  const DSparkConfig& d = *c.dspark;
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim, B = d.block_size, r = d.markov_rank;
  const int64_t F = static_cast<int64_t>(d.target_layer_ids.size()) * H, M = max_rows;
  z.rounds = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(M / B, slots)));
  const int64_t G = z.rounds, T = G * B;
  // int32: tok, slot, pos, key_end, perm, src [M]; prev [G]; picks [T].
  const int64_t ints = 6 * M + G + T;
  // fp32: feats, mx, kv [M rows] (commit); hpre, hk, hn, base, e [T rows]; bias, adjusted [G rows].
  const int64_t floats = M * (F + H + D) + T * (3 * H + V + r) + 2 * G * V;
  z.buffer_bytes = 4 * (ints + floats);
  z.slot_bytes = 4 * d.stages * (c.sliding_window + B) * D;
  return z;
}

int64_t GpuBlockState::floats() const {
  return window_stride + (comp ? comp->floats() : 0) + (icomp ? icomp->floats() : 0);
}

// The GPU stores every row of a step before reading: step_rows = max_rows.
GpuBlockState gpu_block_state(const ModelConfig& c, const GpuModelShape::Block& b, int max_rows, int64_t max_context) {
  const LayerStateLayout l = layer_state_layout(c, b.kind, b.ratio, max_rows);
  GpuBlockState s;
  s.window_cap = static_cast<int>(l.window_cap);
  s.dim = static_cast<int>(l.dim);
  s.window_stride = static_cast<int64_t>(s.window_cap) * s.dim;
  if (l.comp) s.comp = compressor_state(*l.comp, max_context);
  if (l.icomp) s.icomp = compressor_state(*l.icomp, max_context);
  return s;
}

int64_t gpu_slot_bytes(const ModelConfig& c, const GpuModelShape& m, int max_rows, int64_t max_context) {
  int64_t floats = 0;
  for (const auto& b : m.blocks) floats += gpu_block_state(c, b, max_rows, max_context).floats();
  return 4 * floats;
}

namespace {

// The walk of model/cuda/gpu_weights.cpp's upload, counting instead of allocating.
class Counter {
 public:
  Counter(const LinearSource& src, int max_rows, const ModelConfig& c) : src_(src), max_rows_(max_rows), c_(c) {}

  void linear(const std::string& path, int max_m = 0) {
    const ops::HostQuantLinear h = src_(path);
    const int m = max_m > 0 ? max_m : gpu_linear_rows(max_rows_);
    const ops::device::LinearLayout l = ops::device::linear_layout(h);
    b.linears += l.stored_bytes();
    b.staging += l.staging_bytes(m);
    // cuBLASLt's split buffer grows to the largest need so far; outgrown ones are kept.
    const int64_t need = ops::device::lt_split_elems(h, m);
    if (need > 0 && !lt_used_) {
      lt_used_ = true;
      b.lt += ops::device::kLtWorkspaceBytes;
    }
    if (need > lt_split_) {
      b.lt += 2 * need * 2;  // bf16 hi and lo halves
      lt_split_ = need;
    }
  }

  void experts(const std::string& p, const char* proj, int64_t count) {
    std::vector<ops::HostQuantLinear> views;
    for (int64_t e = 0; e < count; ++e) views.push_back(src_(fmt::format("{}ffn.experts.{}.{}", p, e, proj)));
    const int pairs = gpu_expert_pairs(c_, max_rows_);
    const int64_t all = ops::device::linear_set_device_bytes(views.data(), static_cast<int>(count), pairs);
    int64_t kp = 0;
    for (const auto& v : views) kp = std::max(kp, ops::device::linear_layout(v).kp);
    b.staging += int64_t{pairs} * kp * 4;
    b.linears += all - int64_t{pairs} * kp * 4;
  }

  void compressor(const std::string& p) {
    linear(p + "wkv");
    linear(p + "wgate");
  }

  void block(const Block& bl, const std::string& p) {
    const Attention& a = bl.attn;
    for (const char* m : {"attn.wq_a", "attn.wq_b", "attn.wkv", "attn.wo_a", "attn.wo_b"}) linear(p + m);
    if (a.compressor) compressor(p + "attn.compressor.");
    if (a.indexer) {
      linear(p + "attn.indexer.wq_b");
      linear(p + "attn.indexer.weights_proj");
      compressor(p + "attn.indexer.compressor.");
    }
    linear(p + "ffn.gate");
    const int64_t E = static_cast<int64_t>(bl.ffn.experts.size());
    if (E > 0)
      for (const char* proj : {"w1", "w2", "w3"}) experts(p, proj, E);
    if (bl.ffn.shared)
      for (const char* m : {"ffn.shared_experts.w1", "ffn.shared_experts.w2", "ffn.shared_experts.w3"}) linear(p + m);
  }

  GpuWeightBytes b;

 private:
  const LinearSource& src_;
  int max_rows_;
  const ModelConfig& c_;
  bool lt_used_ = false;
  int64_t lt_split_ = 0;
};

}  // namespace

GpuWeightBytes gpu_weight_bytes(const Weights& w, const LinearSource& linears, int max_rows) {
  const ModelConfig& c = w.config;
  Counter n(linears, max_rows, c);
  n.linear("head");
  for (size_t l = 0; l < w.layers.size(); ++l) n.block(w.layers[l], fmt::format("layers.{}.", l));
  for (size_t m = 0; m < w.mtp.size(); ++m) {
    const std::string p = fmt::format("mtp.{}.", m);
    n.linear(p + "e_proj");
    n.linear(p + "h_proj", gpu_hproj_rows(c, max_rows));
    n.block(w.mtp[m].block, p);
  }
  n.b.params = static_cast<int64_t>(plain_weight_bytes(w));
  if (w.embed.data.empty() && w.embed.shape.size() == 2) n.b.params += 4 * w.embed.shape[0] * w.embed.shape[1];
  return n.b;
}

int64_t GpuMemoryPlan::bytes(int s) const {
  return needs.weights + needs.activations + reserve + static_cast<int64_t>(s) * needs.per_slot;
}

namespace {
double gb(int64_t b) { return static_cast<double>(b) / 1e9; }
}  // namespace

std::string GpuMemoryPlan::summary() const {
  return fmt::format("weights {:.2f} GB + activations {:.2f} GB ({} rows) + {} x {:.3f} GB of decode state ({} positions) + "
                     "reserve {:.2f} GB = {:.2f} GB of {:.2f} GB ({} of {:.2f} GB, {:.2f} GB free)",
                     gb(needs.weights), gb(needs.activations), needs.max_rows, slots, gb(needs.per_slot),
                     needs.max_context, gb(reserve), gb(bytes(slots)), gb(budget), fraction, gb(total), gb(free));
}

GpuMemoryPlan plan_gpu_memory(const GpuMemoryNeeds& needs, int64_t total, int64_t free, const GpuMemoryOptions& o,
                              std::string_view device) {
  if (!(o.fraction > 0.0 && o.fraction <= 1.0))
    fail(ErrorKind::Usage, "--gpu-memory-fraction {}: expected a fraction in (0, 1]", o.fraction);
  if (o.max_slots < 1) fail(ErrorKind::Usage, "GPU memory plan: {} sequences asked for (need >= 1)", o.max_slots);
  GpuMemoryPlan p;
  p.needs = needs;
  p.total = total;
  p.free = free;
  p.fraction = o.fraction;
  p.reserve = o.reserve;
  p.budget = std::min(static_cast<int64_t>(std::floor(o.fraction * static_cast<double>(total))), free);
  const int64_t fixed = p.bytes(0);
  int64_t fit = needs.per_slot > 0 ? (p.budget - fixed) / needs.per_slot : o.max_slots;
  if (p.budget < fixed) fit = 0;
  const int want = o.fewer_slots_ok ? 1 : o.max_slots;
  if (fit < want) {
    fail_invalid("the model does not fit on {}: {} sequence{} of {} positions need {:.2f} GB (weights {:.2f} GB + "
                 "activations for {} rows {:.2f} GB + decode state {:.3f} GB per sequence + reserve {:.2f} GB), but "
                 "{:.2f} GB is available (--gpu-memory-fraction {} of {:.2f} GB total, {:.2f} GB free); lower "
                 "--max-context{} or raise --gpu-memory-fraction",
                 device, want, want == 1 ? "" : "s", needs.max_context, gb(p.bytes(want)), gb(needs.weights), needs.max_rows,
                 gb(needs.activations), gb(needs.per_slot), gb(p.reserve), gb(p.budget), o.fraction, gb(total), gb(free),
                 o.max_slots > 1 ? " or --max-batch" : "");
  }
  p.slots = static_cast<int>(std::min<int64_t>(fit, o.max_slots));
  p.lowered = p.slots < o.max_slots;
  return p;
}

}  // namespace kiln::model
