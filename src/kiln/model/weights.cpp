#include "kiln/model/weights.h"

#include <cstring>
#include <unordered_map>

#include <fmt/format.h>

#include "kiln/artifact/plan.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"

namespace kiln::model {
// The bytes a (possibly fused) slice covers: experts are the leading dim, gate/up
// halves are contiguous halves of an expert's rows.
std::span<const std::byte> slice_bytes(const Checkpoint& ckpt, const TensorSlice& s) {
  auto all = ckpt.shards().at(static_cast<size_t>(s.shard)).data(*s.info);
  uint64_t off = 0, len = all.size();
  if (s.expert >= 0) {
    len /= static_cast<uint64_t>(s.info->shape.at(0));
    off += static_cast<uint64_t>(s.expert) * len;
  }
  if (s.half >= 0) {
    len /= 2;
    off += static_cast<uint64_t>(s.half) * len;
  }
  return all.subspan(off, len);
}

namespace {

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float float_at(DType dt, const std::byte* base, int64_t i) {
  switch (dt) {
    case DType::F32: return load<float>(base + 4 * i);
    case DType::BF16: return bf16_to_f32(load<uint16_t>(base + 2 * i));
    case DType::F16: return f16_to_f32(load<uint16_t>(base + 2 * i));
    case DType::F8_E8M0:
    case DType::U8: return e8m0_to_f32(load<uint8_t>(base + i));
    case DType::F8_E4M3: return e4m3_to_f32(load<uint8_t>(base + i));
    default: fail_invalid("internal: {} is not a float dtype", dtype_name(dt));
  }
}

std::vector<float> to_floats(const Checkpoint& ckpt, const TensorSlice& s) {
  auto b = slice_bytes(ckpt, s);
  const int64_t n = static_cast<int64_t>(b.size() / dtype_size(s.dtype()));
  std::vector<float> out(static_cast<size_t>(n));
  decode_floats(s.dtype(), b.data(), n, out.data());
  return out;
}

}  // namespace

void decode_floats(DType dt, const std::byte* src, int64_t count, float* dst) {
  if (dt == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(count) * 4);
    return;
  }
  for (int64_t i = 0; i < count; ++i) dst[i] = float_at(dt, src, i);
}

Linear dequantize_linear(const Checkpoint& ckpt, const PlannedLinear& m) {
  Linear L;
  L.out = m.n;
  L.in = m.k;
  const int64_t n = m.n, k = m.k;
  L.w.resize(static_cast<size_t>(n * k));
  float* w = L.w.data();
  const Scheme& sc = m.scheme;
  auto field = [&](const char* f) -> const TensorSlice& { return m.fields.at(f); };
  switch (sc.kind) {
    case SchemeKind::BF16: {
      const TensorSlice& t = field("weight");
      auto b = slice_bytes(ckpt, t);
      for (int64_t i = 0; i < n * k; ++i) w[i] = float_at(t.dtype(), b.data(), i);
      break;
    }
    case SchemeKind::FP8Block: {
      auto q = slice_bytes(ckpt, field("weight"));
      const TensorSlice& st = field(sc.scale_field.c_str());
      auto s = slice_bytes(ckpt, st);
      const int64_t scols = (k + sc.block_k - 1) / sc.block_k;
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < k; ++c) {
          const float scale = float_at(st.dtype(), s.data(), (r / sc.block_n) * scols + c / sc.block_k);
          w[r * k + c] = e4m3_to_f32(load<uint8_t>(q.data() + r * k + c)) * scale;
        }
      }
      break;
    }
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: {
      const TensorSlice& wt = m.fields.count("weight") ? field("weight") : field("weight_packed");
      auto q = slice_bytes(ckpt, wt);
      const TensorSlice& st = field(sc.scale_field.c_str());
      auto s = slice_bytes(ckpt, st);
      const int64_t g = sc.block_k, scols = (k + g - 1) / g;
      float global = 1.0f;
      if (sc.global == GlobalScaleConvention::Multiplier) global = to_floats(ckpt, field("weight_scale_2")).at(0);
      if (sc.global == GlobalScaleConvention::Divisor) global = 1.0f / to_floats(ckpt, field("weight_global_scale")).at(0);
      const auto* qb = reinterpret_cast<const uint8_t*>(q.data());
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < k; ++c) {
          const float scale = float_at(st.dtype(), s.data(), r * scols + c / g);
          w[r * k + c] = e2m1_packed_at(qb + r * (k / 2), c) * scale * global;
        }
      }
      break;
    }
    case SchemeKind::Int4Group: {
      auto q = slice_bytes(ckpt, field("weight_packed"));
      const TensorSlice& st = field("weight_scale");
      auto s = slice_bytes(ckpt, st);
      const int64_t words = (k + 7) / 8, groups = st.shape().at(1), g = sc.block_k;
      std::span<const std::byte> zp, gidx;
      if (sc.zero_point) zp = slice_bytes(ckpt, field("weight_zero_point"));
      if (sc.g_idx) gidx = slice_bytes(ckpt, field("weight_g_idx"));
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < k; ++c) {
          const uint32_t word = load<uint32_t>(q.data() + 4 * (r * words + c / 8));
          const int u = static_cast<int>((word >> (4 * (c % 8))) & 0xF);
          const int64_t grp = sc.g_idx ? load<int32_t>(gidx.data() + 4 * c) : c / g;
          if (grp < 0 || grp >= groups)
            fail_invalid("{}: g_idx[{}] = {} is outside [0, {})", field("weight_g_idx").name, c, grp, groups);
          int z = 8;
          if (sc.zero_point) {
            const uint32_t zw = load<uint32_t>(zp.data() + 4 * ((r / 8) * groups + grp));
            z = static_cast<int>((zw >> (4 * (r % 8))) & 0xF);
          }
          w[r * k + c] = static_cast<float>(u - z) * float_at(st.dtype(), s.data(), r * groups + grp);
        }
      }
      break;
    }
  }
  return L;
}

namespace {

std::vector<uint8_t> raw_bytes(const Checkpoint& ckpt, const TensorSlice& s) {
  auto b = slice_bytes(ckpt, s);
  const auto* p = reinterpret_cast<const uint8_t*>(b.data());
  return std::vector<uint8_t>(p, p + b.size());
}

}  // namespace

Linear prepare_linear(const Checkpoint& ckpt, const PlannedLinear& m) {
  const Scheme& sc = m.scheme;
  auto field = [&](const char* f) -> const TensorSlice& { return m.fields.at(f); };
  const int64_t n = m.n, k = m.k;
  ops::cpu::QuantWeight q;
  std::string what;
  switch (sc.kind) {
    case SchemeKind::BF16: {
      const TensorSlice& t = field("weight");
      if (t.dtype() != DType::BF16 && t.dtype() != DType::F16) return dequantize_linear(ckpt, m);
      q.format = t.dtype() == DType::BF16 ? ops::cpu::WeightFormat::BF16 : ops::cpu::WeightFormat::F16;
      q.codes = raw_bytes(ckpt, t);
      what = t.name;
      break;
    }
    case SchemeKind::FP8Block: {
      const TensorSlice& t = field("weight");
      q.format = ops::cpu::WeightFormat::FP8Block;
      q.codes = raw_bytes(ckpt, t);
      q.block_n = sc.block_n;
      q.block_k = sc.block_k;
      q.scale_cols = sc.block_k > 0 ? (k + sc.block_k - 1) / sc.block_k : 0;
      q.scales = to_floats(ckpt, field(sc.scale_field.c_str()));
      // dequantize_linear reads the grid row-major with scale_cols columns.
      const size_t need = sc.block_n > 0 ? static_cast<size_t>((n + sc.block_n - 1) / sc.block_n * q.scale_cols) : 0;
      if (q.scales.size() > need) q.scales.resize(need);
      what = t.name;
      break;
    }
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: {
      const TensorSlice& t = m.fields.count("weight") ? field("weight") : field("weight_packed");
      const TensorSlice& st = field(sc.scale_field.c_str());
      if (dtype_size(st.dtype()) != 1) return dequantize_linear(ckpt, m);
      q.format = ops::cpu::WeightFormat::FP4;
      q.codes = raw_bytes(ckpt, t);
      q.block_k = sc.block_k;
      q.scale_cols = sc.block_k > 0 ? (k + sc.block_k - 1) / sc.block_k : 0;
      q.scale_codes = raw_bytes(ckpt, st);
      for (int i = 0; i < 256; ++i) {
        const auto b = static_cast<std::byte>(i);
        q.scale_lut[static_cast<size_t>(i)] = float_at(st.dtype(), &b, 0);
      }
      // Both NVFP4 conventions become a multiplier, as dequantize_linear computes it.
      if (sc.global == GlobalScaleConvention::Multiplier) q.global = to_floats(ckpt, field("weight_scale_2")).at(0);
      if (sc.global == GlobalScaleConvention::Divisor) q.global = 1.0f / to_floats(ckpt, field("weight_global_scale")).at(0);
      what = t.name;
      break;
    }
    case SchemeKind::Int4Group: {
      const TensorSlice& t = field("weight_packed");
      const TensorSlice& st = field("weight_scale");
      q.format = ops::cpu::WeightFormat::Int4Group;
      q.codes = raw_bytes(ckpt, t);
      q.block_k = sc.block_k;
      q.scale_cols = st.shape().at(1);
      q.scales = to_floats(ckpt, st);
      const int64_t groups = q.scale_cols;
      if (sc.zero_point) {
        auto zp = slice_bytes(ckpt, field("weight_zero_point"));
        const int64_t zrows = (n + 7) / 8;
        if (static_cast<int64_t>(zp.size()) < 4 * zrows * groups) {
          fail_invalid("{}: {} bytes; {} zero-point rows of {} groups need {}", field("weight_zero_point").name, zp.size(),
                       zrows, groups, 4 * zrows * groups);
        }
        q.zeros.resize(static_cast<size_t>(n * groups));
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            const uint32_t zw = load<uint32_t>(zp.data() + 4 * ((r / 8) * groups + g));
            q.zeros[static_cast<size_t>(r * groups + g)] = static_cast<uint8_t>((zw >> (4 * (r % 8))) & 0xF);
          }
        }
      }
      if (sc.g_idx) {
        const TensorSlice& gt = field("weight_g_idx");
        auto gb = slice_bytes(ckpt, gt);
        if (static_cast<int64_t>(gb.size()) < 4 * k) fail_invalid("{}: {} bytes; {} columns need {}", gt.name, gb.size(), k, 4 * k);
        q.g_idx.resize(static_cast<size_t>(k));
        for (int64_t c = 0; c < k; ++c) q.g_idx[static_cast<size_t>(c)] = load<int32_t>(gb.data() + 4 * c);
        what = gt.name;  // the range check below names g_idx
      } else {
        what = t.name;
      }
      break;
    }
  }
  Linear L;
  L.out = n;
  L.in = k;
  L.prepare(std::move(q), what);
  return L;
}

uint64_t linear_weight_bytes(const Weights& w) {
  uint64_t total = w.head.bytes();
  auto expert = [&](const Expert& e) { total += e.w1.bytes() + e.w2.bytes() + e.w3.bytes(); };
  auto compressor = [&](const Compressor& c) { total += c.wkv.bytes() + c.wgate.bytes(); };
  auto block = [&](const Block& b) {
    const Attention& a = b.attn;
    total += a.wq_a.bytes() + a.wq_b.bytes() + a.wkv.bytes() + a.wo_a.bytes() + a.wo_b.bytes();
    if (a.compressor) compressor(*a.compressor);
    if (a.indexer) {
      total += a.indexer->wq_b.bytes() + a.indexer->weights_proj.bytes();
      compressor(a.indexer->compressor);
    }
    total += b.ffn.gate.bytes();
    for (const Expert& e : b.ffn.experts) expert(e);
    if (b.ffn.shared) expert(*b.ffn.shared);
  };
  for (const Block& b : w.layers) block(b);
  for (const MtpBlock& m : w.mtp) {
    total += m.e_proj.bytes() + m.h_proj.bytes();
    block(m.block);
  }
  return total;
}

uint64_t plain_weight_bytes(const Weights& w) {
  uint64_t floats = w.embed.data.size() + w.norm.size() + w.hc_head.fn.data.size() + w.hc_head.base.size();
  auto hyper = [&](const HyperConnection& h) { floats += h.fn.data.size() + h.base.size() + h.scale.size(); };
  auto compressor = [&](const Compressor& c) { floats += c.ape.data.size() + c.norm.size(); };
  auto block = [&](const Block& b) {
    floats += b.attn_norm.size() + b.ffn_norm.size();
    hyper(b.hc_attn);
    hyper(b.hc_ffn);
    const Attention& a = b.attn;
    floats += a.q_norm.size() + a.kv_norm.size() + a.sink.size();
    if (a.compressor) compressor(*a.compressor);
    if (a.indexer) compressor(a.indexer->compressor);
    floats += b.ffn.bias.size() + b.ffn.tid2eid.size();  // int32: 4 bytes too
  };
  for (const Block& b : w.layers) block(b);
  for (const MtpBlock& m : w.mtp) {
    floats += m.enorm.size() + m.hnorm.size() + m.norm.size() + m.hc_head.fn.data.size() + m.hc_head.base.size();
    block(m.block);
  }
  return 4 * floats;
}

std::string mtp_unavailable(const ModelConfig& c, size_t mtp_blocks) {
  if (c.dspark) {
    return fmt::format("has a DSpark drafter ({} stages, block size {}), not a classic MTP block; kiln does not "
                       "implement DSpark drafting yet (issue 19: such checkpoints load for plain decoding only)",
                       c.dspark->stages, c.dspark->block_size);
  }
  return mtp_blocks > 0 ? std::string() : std::string("has no MTP block to draft with");
}

namespace {

class Binder {
 public:
  Binder(const Checkpoint& ckpt, const Plan& plan, const LoadOptions& opt) : ckpt_(ckpt), opt_(opt) {
    for (const auto& l : plan.linears) linears_[l.path] = &l;
    for (const auto& t : plan.tensors) tensors_[t.path] = &t;
  }

  Linear linear(const std::string& path) const {
    auto it = linears_.find(path);
    if (it == linears_.end()) fail_invalid("internal: the plan has no linear module {}", path);
    if (opt_.skip_linears) {
      Linear l;
      l.out = it->second->n;
      l.in = it->second->k;
      return l;
    }
    return opt_.dequantize ? dequantize_linear(ckpt_, *it->second) : prepare_linear(ckpt_, *it->second);
  }
  bool has_linear(const std::string& path) const { return linears_.count(path) != 0; }
  bool has_tensor(const std::string& path) const { return tensors_.count(path) != 0; }

  std::vector<float> floats(const std::string& path) const { return to_floats(ckpt_, get(path).tensor); }
  Tensor tensor(const std::string& path) const {
    const auto& t = get(path).tensor;
    return Tensor{t.shape(), to_floats(ckpt_, t)};
  }
  std::vector<int32_t> ints(const std::string& path) const {
    const auto& t = get(path).tensor;
    auto b = slice_bytes(ckpt_, t);
    const size_t n = b.size() / dtype_size(t.dtype());
    std::vector<int32_t> out(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t v = t.dtype() == DType::I64 ? load<int64_t>(b.data() + 8 * i) : load<int32_t>(b.data() + 4 * i);
      out[i] = static_cast<int32_t>(v);
    }
    return out;
  }

 private:
  const PlannedTensor& get(const std::string& path) const {
    auto it = tensors_.find(path);
    if (it == tensors_.end()) fail_invalid("internal: the plan has no tensor {}", path);
    return *it->second;
  }
  const Checkpoint& ckpt_;
  LoadOptions opt_;
  std::unordered_map<std::string, const PlannedLinear*> linears_;
  std::unordered_map<std::string, const PlannedTensor*> tensors_;
};

HyperConnection hyper(const Binder& b, const std::string& p, const char* sub) {
  return HyperConnection{b.tensor(fmt::format("{}hc_{}_fn", p, sub)), b.floats(fmt::format("{}hc_{}_base", p, sub)),
                         b.floats(fmt::format("{}hc_{}_scale", p, sub))};
}

HyperHead hyper_head(const Binder& b, const std::string& p) {
  HyperHead h;
  h.fn = b.tensor(p + "hc_head_fn");
  h.base = b.floats(p + "hc_head_base");
  h.scale = b.floats(p + "hc_head_scale").at(0);
  return h;
}

Compressor compressor(const Binder& b, const std::string& p, int64_t ratio, int64_t dim, bool overlap) {
  Compressor c;
  c.ratio = ratio;
  c.dim = dim;
  c.overlap = overlap;
  c.wkv = b.linear(p + "wkv");
  c.wgate = b.linear(p + "wgate");
  c.ape = b.tensor(p + "ape");
  c.norm = b.floats(p + "norm.weight");
  return c;
}

Expert expert(const Binder& b, const std::string& p) {
  return Expert{b.linear(p + "w1"), b.linear(p + "w2"), b.linear(p + "w3")};
}

// One block; `p` is "layers.N." or "mtp.M.", `layer` the config index (MTP: L + m).
Block block(const Binder& b, const ModelConfig& cfg, const std::string& p, int64_t layer, bool mtp) {
  Block bl;
  bl.attn_norm = b.floats(p + "attn_norm.weight");
  bl.ffn_norm = b.floats(p + "ffn_norm.weight");
  bl.hc_attn = hyper(b, p, "attn");
  bl.hc_ffn = hyper(b, p, "ffn");
  Attention& a = bl.attn;
  a.kind = cfg.attn_kind(layer);
  a.ratio = cfg.compress_ratio(layer);
  a.wq_a = b.linear(p + "attn.wq_a");
  a.q_norm = b.floats(p + "attn.q_norm.weight");
  a.wq_b = b.linear(p + "attn.wq_b");
  a.wkv = b.linear(p + "attn.wkv");
  a.kv_norm = b.floats(p + "attn.kv_norm.weight");
  a.wo_a = b.linear(p + "attn.wo_a");
  a.wo_b = b.linear(p + "attn.wo_b");
  a.sink = b.floats(p + "attn.attn_sink");
  if (a.kind != AttnKind::SWA) {
    a.compressor = compressor(b, p + "attn.compressor.", a.ratio, cfg.head_dim, a.kind == AttnKind::CSA);
  }
  if (a.kind == AttnKind::CSA) {
    Indexer ix;
    ix.wq_b = b.linear(p + "attn.indexer.wq_b");
    ix.weights_proj = b.linear(p + "attn.indexer.weights_proj");
    ix.compressor = compressor(b, p + "attn.indexer.compressor.", a.ratio, cfg.index_head_dim, true);
    a.indexer = std::move(ix);
  }
  Moe& f = bl.ffn;
  f.hash = !mtp && cfg.is_hash_layer(layer);
  f.gate = b.linear(p + "ffn.gate");
  if (f.hash) f.tid2eid = b.ints(p + "ffn.gate.tid2eid");
  else f.bias = b.floats(p + "ffn.gate.bias");
  for (int64_t e = 0; e < cfg.n_routed_experts; ++e) f.experts.push_back(expert(b, fmt::format("{}ffn.experts.{}.", p, e)));
  if (b.has_linear(p + "ffn.shared_experts.w1")) f.shared = expert(b, p + "ffn.shared_experts.");
  return bl;
}

}  // namespace

ops::cpu::RopeSpec rope_spec(const ModelConfig& c, const RopeParams& p) {
  ops::cpu::RopeSpec s;
  s.dim = c.rope_head_dim;
  s.theta = p.theta;
  s.yarn = p.yarn;
  s.factor = p.factor;
  s.original_max_position = p.original_max_position;
  s.beta_fast = p.beta_fast;
  s.beta_slow = p.beta_slow;
  return s;
}

Weights load_weights(const Checkpoint& ckpt, const Plan& plan, const LoadOptions& opt) {
  if (!plan.loadable()) {
    fail_invalid("{}: the checkpoint is not loadable ({} errors, {} missing tensors); run `kiln inspect` for the report",
                 ckpt.dir().string(), plan.errors.size(), plan.missing.size());
  }
  const ModelConfig& cfg = plan.config;
  Binder b(ckpt, plan, opt);
  Weights w;
  w.config = cfg;
  if (opt.skip_embed) {
    w.embed.shape = {cfg.vocab_size, cfg.hidden_size};
  } else {
    w.embed = b.tensor("embed.weight");
  }
  w.head = b.linear("head");
  w.norm = b.floats("norm.weight");
  w.hc_head = hyper_head(b, "");
  for (int64_t l = 0; l < cfg.num_layers; ++l) w.layers.push_back(block(b, cfg, fmt::format("layers.{}.", l), l, false));
  for (int m : plan.mtp_found) {
    if (m >= cfg.num_mtp_layers) continue;
    const std::string p = fmt::format("mtp.{}.", m);
    MtpBlock mb;
    mb.e_proj = b.linear(p + "e_proj");
    mb.h_proj = b.linear(p + "h_proj");
    mb.enorm = b.floats(p + "enorm.weight");
    mb.hnorm = b.floats(p + "hnorm.weight");
    mb.norm = b.floats(p + "norm.weight");
    mb.hc_head = hyper_head(b, p);
    mb.block = block(b, cfg, p, cfg.num_layers + m, true);
    w.mtp.push_back(std::move(mb));
  }
  return w;
}

}  // namespace kiln::model
