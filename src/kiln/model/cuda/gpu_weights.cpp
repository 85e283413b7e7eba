#include "kiln/model/cuda/gpu_weights.h"

#include <fmt/format.h>

#include <string>

#include "kiln/core/error.h"

namespace kiln::model::cuda {
namespace {

class Uploader {
 public:
  Uploader(const LinearSource& src, int max_rows) : src_(src), max_rows_(max_rows) {}

  QuantLinear linear(const std::string& path, int max_m = 0) {
    QuantLinear q = QuantLinear::prepare(src_(path), max_m > 0 ? max_m : max_rows_);
    bytes += q.weight_bytes();
    return q;
  }

  static DeviceArray<float> floats(const std::vector<float>& v) { return DeviceArray<float>(v); }

  GpuCompressor compressor(const Compressor& c, const std::string& p) {
    GpuCompressor g;
    g.ratio = static_cast<int>(c.ratio);
    g.dim = static_cast<int>(c.dim);
    g.overlap = c.overlap;
    g.wkv = linear(p + "wkv");
    g.wgate = linear(p + "wgate");
    g.ape = floats(c.ape.data);
    g.norm = floats(c.norm);
    return g;
  }

  GpuHyper hyper(const HyperConnection& h) { return GpuHyper{floats(h.fn.data), floats(h.base), floats(h.scale)}; }
  GpuHead head(const HyperHead& h) { return GpuHead{floats(h.fn.data), floats(h.base), h.scale}; }

  GpuBlock block(const Block& b, const ModelConfig& cfg, const std::string& p) {
    GpuBlock g;
    g.attn_norm = floats(b.attn_norm);
    g.ffn_norm = floats(b.ffn_norm);
    g.hc_attn = hyper(b.hc_attn);
    g.hc_ffn = hyper(b.hc_ffn);
    const Attention& a = b.attn;
    GpuAttention& ga = g.attn;
    ga.kind = a.kind;
    ga.wq_a = linear(p + "attn.wq_a");
    ga.wq_b = linear(p + "attn.wq_b");
    ga.wkv = linear(p + "attn.wkv");
    ga.wo_a = linear(p + "attn.wo_a");
    ga.wo_b = linear(p + "attn.wo_b");
    ga.q_norm = floats(a.q_norm);
    ga.kv_norm = floats(a.kv_norm);
    ga.sink = floats(a.sink);
    if (a.compressor) ga.compressor = compressor(*a.compressor, p + "attn.compressor.");
    if (a.indexer) {
      GpuIndexer ix;
      ix.wq_b = linear(p + "attn.indexer.wq_b");
      ix.weights_proj = linear(p + "attn.indexer.weights_proj");
      ix.compressor = compressor(a.indexer->compressor, p + "attn.indexer.compressor.");
      ga.indexer = std::move(ix);
    }
    const Moe& m = b.ffn;
    GpuMoe& gm = g.ffn;
    gm.hash = m.hash;
    gm.gate = linear(p + "ffn.gate");
    if (m.hash) {
      gm.tid2eid = DeviceArray<int32_t>(m.tid2eid);
    } else {
      gm.bias = floats(m.bias);
    }
    const int64_t E = cfg.n_routed_experts;
    const int pairs = max_rows_ * static_cast<int>(cfg.num_experts_per_tok);
    auto experts = [&](const char* proj) {  // one projection of every routed expert
      std::vector<ops::HostQuantLinear> views;
      views.reserve(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) views.push_back(src_(fmt::format("{}ffn.experts.{}.{}", p, e, proj)));
      QuantLinearSet set = QuantLinearSet::prepare(views.data(), static_cast<int>(views.size()), pairs);
      bytes += set.expert_bytes() * set.count();
      return set;
    };
    gm.w1 = experts("w1");
    gm.w2 = experts("w2");
    gm.w3 = experts("w3");
    gm.inter = gm.w1.n();
    if (m.shared) {
      GpuExpert s;
      s.w1 = linear(p + "ffn.shared_experts.w1");
      s.w2 = linear(p + "ffn.shared_experts.w2");
      s.w3 = linear(p + "ffn.shared_experts.w3");
      gm.shared = std::move(s);
    }
    return g;
  }

  int64_t bytes = 0;

 private:
  const LinearSource& src_;
  int max_rows_;
};

}  // namespace

GpuWeights upload_weights(const Weights& w, const LinearSource& linears, int max_rows, std::ostream* progress) {
  if (max_rows < 1) fail(ErrorKind::Usage, "upload_weights: max_rows = {} (need >= 1)", max_rows);
  const ModelConfig& cfg = w.config;
  Uploader up(linears, max_rows);
  GpuWeights g;
  g.config = cfg;
  g.embed = DeviceArray<float>(w.embed.data);
  g.head = up.linear("head");
  g.norm = Uploader::floats(w.norm);
  g.hc_head = up.head(w.hc_head);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    g.layers.push_back(up.block(w.layers[l], cfg, fmt::format("layers.{}.", l)));
    if (progress) *progress << fmt::format("  gpu: layer {}/{} uploaded ({:.1f} MB of linear data so far)\n", l + 1,
                                           w.layers.size(), static_cast<double>(up.bytes) / 1e6) << std::flush;
  }
  for (size_t m = 0; m < w.mtp.size(); ++m) {
    const std::string p = fmt::format("mtp.{}.", m);
    const MtpBlock& mb = w.mtp[m];
    GpuMtp gm;
    gm.e_proj = up.linear(p + "e_proj");
    gm.h_proj = up.linear(p + "h_proj", max_rows * static_cast<int>(cfg.hc_mult));
    gm.enorm = Uploader::floats(mb.enorm);
    gm.hnorm = Uploader::floats(mb.hnorm);
    gm.norm = Uploader::floats(mb.norm);
    gm.hc_head = up.head(mb.hc_head);
    gm.block = up.block(mb.block, cfg, p);
    g.mtp.push_back(std::move(gm));
  }
  g.linear_bytes = up.bytes;
  return g;
}

}  // namespace kiln::model::cuda
