#include "kiln/model/weights.h"

#include <cstring>
#include <unordered_map>

#include <fmt/format.h>

#include "kiln/artifact/linear_view.h"
#include "kiln/artifact/plan.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/model/plan_binder.h"
#include "kiln/quant/dequantize.h"
#include "kiln/quant/quantize.h"

namespace kiln::model {
namespace {

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float float_at(DType dt, const std::byte* base, int64_t i) {
  return quant::decode_scale(dt, base + static_cast<size_t>(i) * dtype_size(dt));
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
  L.w = quant::dequantize(linear_view(ckpt, m));
  return L;
}

namespace {

std::vector<uint8_t> raw_bytes(HostBytes b) {
  const auto* p = reinterpret_cast<const uint8_t*>(b.data);
  return std::vector<uint8_t>(p, p + b.size);
}

std::vector<float> floats_of(DType dt, HostBytes b) {
  std::vector<float> out(b.size / dtype_size(dt));
  decode_floats(dt, b.data, static_cast<int64_t>(out.size()), out.data());
  return out;
}

}  // namespace

Linear prepare_linear(const Checkpoint& ckpt, const PlannedLinear& m) {
  const HostQuantLinear v = linear_view(ckpt, m);
  const int64_t n = m.n, k = m.k;
  ops::cpu::QuantWeight q;
  q.scheme = v.scheme;
  q.weight_dtype = v.weight_dtype;
  std::string what = m.roles.weight.name;  // the tensor the prepared arrays are checked against
  switch (v.scheme) {
    case SchemeKind::BF16:
      if (v.weight_dtype != DType::BF16 && v.weight_dtype != DType::F16) return dequantize_linear(ckpt, m);
      q.codes = raw_bytes(v.weight);
      break;
    case SchemeKind::FP8Block: {
      q.codes = raw_bytes(v.weight);
      q.block_n = v.block_n;
      q.block_k = v.block_k;
      q.scale_cols = v.block_k > 0 ? (k + v.block_k - 1) / v.block_k : 0;
      q.scales = floats_of(v.scale_dtype, v.scale);
      // dequantize reads the grid row-major with scale_cols columns.
      const size_t need = v.block_n > 0 ? static_cast<size_t>((n + v.block_n - 1) / v.block_n * q.scale_cols) : 0;
      if (q.scales.size() > need) q.scales.resize(need);
      break;
    }
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4:
      if (dtype_size(v.scale_dtype) != 1) return dequantize_linear(ckpt, m);
      q.codes = raw_bytes(v.weight);
      q.block_k = v.block_k;
      q.scale_cols = v.block_k > 0 ? (k + v.block_k - 1) / v.block_k : 0;
      q.scale_codes = raw_bytes(v.scale);
      for (int i = 0; i < 256; ++i) {
        const auto b = static_cast<std::byte>(i);
        q.scale_lut[static_cast<size_t>(i)] = float_at(v.scale_dtype, &b, 0);
      }
      q.global = v.global;  // the multiplier, as dequantize applies it
      break;
    case SchemeKind::Int4Group: {
      q.codes = raw_bytes(v.weight);
      q.block_k = v.block_k;
      q.scale_cols = v.scale_cols;
      q.scales = floats_of(v.scale_dtype, v.scale);
      const int64_t groups = q.scale_cols;
      if (!v.zero_point.empty()) {
        const int64_t zrows = (n + 7) / 8;
        if (static_cast<int64_t>(v.zero_point.size) < 4 * zrows * groups) {
          fail_invalid("{}: {} bytes; {} zero-point rows of {} groups need {}", m.roles.zero_point->name,
                       v.zero_point.size, zrows, groups, 4 * zrows * groups);
        }
        q.zeros.resize(static_cast<size_t>(n * groups));
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            const uint32_t zw = load<uint32_t>(v.zero_point.data + 4 * ((r / 8) * groups + g));
            q.zeros[static_cast<size_t>(r * groups + g)] = static_cast<uint8_t>((zw >> (4 * (r % 8))) & 0xF);
          }
        }
      }
      if (!v.g_idx.empty()) {
        const std::string& gname = m.roles.g_idx->name;
        if (static_cast<int64_t>(v.g_idx.size) < 4 * k) fail_invalid("{}: {} bytes; {} columns need {}", gname, v.g_idx.size, k, 4 * k);
        q.g_idx.resize(static_cast<size_t>(k));
        for (int64_t c = 0; c < k; ++c) q.g_idx[static_cast<size_t>(c)] = load<int32_t>(v.g_idx.data + 4 * c);
        what = gname;  // the range check below names g_idx
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
  uint64_t total = 0;
  for_each_linear(w, [&](const Linear& l, ops::LinearRole) { total += l.bytes(); });
  return total;
}

void set_precision(Weights& w, ops::Precision p) {
  w.precision = p;
  for_each_linear(w, [&](Linear& l, ops::LinearRole role) { l.numerics = ops::linear_numerics(p, role, l.stored); });
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
    return fmt::format("has a DSpark drafter ({} stages, block size {}), not a classic MTP block; kiln drafts with "
                       "it under --spec dspark",
                       c.dspark->stages, c.dspark->block_size);
  }
  return mtp_blocks > 0 ? std::string() : std::string("has no MTP block to draft with");
}

namespace {


Compressor compressor(const PlanBinder& b, const std::string& p, int64_t ratio, int64_t dim, bool overlap) {
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

// One block; `p` is "layers.N." or "mtp.M.", `layer` the config index (MTP: L + m).
Block block(const PlanBinder& b, const ModelConfig& cfg, const std::string& p, int64_t layer, bool mtp) {
  Block bl = b.block_base(p, cfg.attn_kind(layer), cfg.compress_ratio(layer));
  Attention& a = bl.attn;
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
  for (int64_t e = 0; e < cfg.n_routed_experts; ++e)
    f.experts.push_back(b.expert(fmt::format("{}ffn.experts.{}.", p, e)));
  if (b.has_linear(p + "ffn.shared_experts.w1")) f.shared = b.expert(p + "ffn.shared_experts.");
  return bl;
}

}  // namespace

ops::cpu::RopeSpec rope_spec(const ModelConfig& c, const RopeParams& p) {
  ops::cpu::RopeSpec s;
  static_cast<RopeParams&>(s) = p;
  s.dim = c.rope_head_dim;
  return s;
}

Weights load_weights(const Checkpoint& ckpt, const Plan& plan, const LoadOptions& opt) {
  if (!plan.loadable()) {
    fail_invalid("{}: the checkpoint is not loadable ({} errors, {} missing tensors); run `kiln inspect` for the report",
                 ckpt.dir().string(), plan.errors.size(), plan.missing.size());
  }
  const ModelConfig& cfg = plan.config;
  const PlanBinder b(ckpt, plan.linears, plan.tensors, opt, "internal: the plan");
  Weights w;
  w.config = cfg;
  if (opt.skip_embed) {
    w.embed.shape = {cfg.vocab_size, cfg.hidden_size};
  } else {
    w.embed = b.tensor("embed.weight");
  }
  w.head = b.linear("head");
  w.norm = b.floats("norm.weight");
  w.hc_head = b.hyper_head("");
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
    mb.hc_head = b.hyper_head(p);
    mb.block = block(b, cfg, p, cfg.num_layers + m, true);
    w.mtp.push_back(std::move(mb));
  }
  return w;
}

}  // namespace kiln::model
