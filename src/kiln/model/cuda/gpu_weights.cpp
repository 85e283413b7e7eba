#include "kiln/model/cuda/gpu_weights.h"

#include <fmt/format.h>

#include <string>
#include <unordered_map>

#include "kiln/core/error.h"
#include "kiln/model/gpu_memory.h"

namespace kiln::model::cuda {
namespace {

using ops::cuda::CancelUploadsOnThrow;
using ops::cuda::DeviceUploader;

// Walks the host Weights (the structure and the small fp32 tensors) and prepares every
// linear from its stored bytes. model/gpu_memory.cpp counts the same walk. Each building
// step declares its result first and a CancelUploadsOnThrow after it: an exception stops
// the copies into the result's buffers before they are freed.
class Uploader {
 public:
  // Every linear is prepared with the numerics of w.precision for its role (for_each_linear)
  // and its stored scheme (the source's view).
  Uploader(const Weights& w, const LinearSource& src, int max_rows, DeviceUploader* up)
      : src_(src), max_rows_(max_rows), up_(up), precision_(w.precision) {
    for_each_linear(w, [&](const Linear& l, ops::LinearRole r) { roles_[&l] = r; });
  }
  // A DSpark drafter's linears, in the target's precision.
  Uploader(const DSparkWeights& d, ops::Precision precision, const LinearSource& src, int max_rows, DeviceUploader* up)
      : src_(src), max_rows_(max_rows), up_(up), precision_(precision) {
    for_each_dspark_linear(d, [&](const Linear& l, ops::LinearRole r) { roles_[&l] = r; });
  }

  // host: the module's host Linear (its role).
  ops::LinearNumerics numerics(const Linear& host, SchemeKind stored) const {
    auto it = roles_.find(&host);
    if (it == roles_.end()) fail_invalid("internal: a linear module without a role in the model");
    return ops::linear_numerics(precision_, it->second, stored);
  }

  QuantLinear linear(const std::string& path, const Linear& host, int max_m = 0) {
    const int m = max_m > 0 ? max_m : gpu_linear_rows(max_rows_);
    const ops::HostQuantLinear view = src_(path);
    const ops::LinearNumerics num = numerics(host, view.scheme);
    QuantLinear q = up_ ? QuantLinear::prepare(view, m, *up_, num) : QuantLinear::prepare(view, m, num);
    bytes += q.weight_bytes();
    device_bytes += q.device_bytes();
    return q;
  }

  template <typename T>
  DeviceArray<T> array(const std::vector<T>& v) {
    DeviceArray<T> a(v);
    device_bytes += static_cast<int64_t>(a.size() * sizeof(T));
    return a;
  }

  GpuCompressor compressor(const Compressor& c, const std::string& p) {
    GpuCompressor g;
    CancelUploadsOnThrow guard(up_);
    g.ratio = static_cast<int>(c.ratio);
    g.dim = static_cast<int>(c.dim);
    g.overlap = c.overlap;
    g.wkv = linear(p + "wkv", c.wkv);
    g.wgate = linear(p + "wgate", c.wgate);
    g.ape = array(c.ape.data);
    g.norm = array(c.norm);
    return g;
  }

  GpuHyper hyper(const HyperConnection& h) {
    GpuHyper g;
    CancelUploadsOnThrow guard(up_);
    g.fn = array(h.fn.data);
    g.base = array(h.base);
    g.scale = array(h.scale);
    return g;
  }
  GpuHead head(const HyperHead& h) {
    GpuHead g;
    CancelUploadsOnThrow guard(up_);
    g.fn = array(h.fn.data);
    g.base = array(h.base);
    g.scale = h.scale;
    return g;
  }

  // The routed experts of one projection, by their stored views alone: the host tree need
  // not hold them (the synthetic model's does not); their role is for_each_linear's
  // routed-expert role.
  QuantLinearSet experts(const std::string& p, const char* proj, int64_t count, int pairs) {
    std::vector<ops::HostQuantLinear> views;
    views.reserve(static_cast<size_t>(count));
    ops::LinearNumerics num;
    for (int64_t e = 0; e < count; ++e) {
      views.push_back(src_(fmt::format("{}ffn.experts.{}.{}", p, e, proj)));
      const ops::LinearNumerics ne = ops::linear_numerics(precision_, kExpertRole, views.back().scheme);
      if (e == 0) num = ne;
      if (!(ne == num))
        fail_invalid("{}: in {} precision its input is treated unlike expert 0's ({} vs {}: mixed expert schemes); "
                     "the CUDA expert set takes one treatment per layer (--precision exact takes any mix)",
                     views.back().name, ops::precision_name(precision_), scheme_kind_name(views.back().scheme),
                     scheme_kind_name(views.front().scheme));
    }
    const int n = static_cast<int>(views.size());
    QuantLinearSet set = QuantLinearSet::prepare(views.data(), n, pairs, up_, num);
    bytes += set.expert_bytes() * set.count();
    device_bytes += set.device_bytes();
    return set;
  }

  GpuBlock block(const Block& b, const ModelConfig& cfg, const std::string& p) {
    GpuBlock g;
    CancelUploadsOnThrow guard(up_);
    g.attn_norm = array(b.attn_norm);
    g.ffn_norm = array(b.ffn_norm);
    g.hc_attn = hyper(b.hc_attn);
    g.hc_ffn = hyper(b.hc_ffn);
    const Attention& a = b.attn;
    GpuAttention& ga = g.attn;
    ga.kind = a.kind;
    ga.wq_a = linear(p + "attn.wq_a", a.wq_a);
    ga.wq_b = linear(p + "attn.wq_b", a.wq_b);
    ga.wkv = linear(p + "attn.wkv", a.wkv);
    ga.wo_a = linear(p + "attn.wo_a", a.wo_a);
    ga.wo_b = linear(p + "attn.wo_b", a.wo_b);
    ga.q_norm = array(a.q_norm);
    ga.kv_norm = array(a.kv_norm);
    ga.sink = array(a.sink);
    if (a.compressor) ga.compressor = compressor(*a.compressor, p + "attn.compressor.");
    if (a.indexer) {
      ga.indexer.emplace();
      GpuIndexer& ix = *ga.indexer;
      ix.wq_b = linear(p + "attn.indexer.wq_b", a.indexer->wq_b);
      ix.weights_proj = linear(p + "attn.indexer.weights_proj", a.indexer->weights_proj);
      ix.compressor = compressor(a.indexer->compressor, p + "attn.indexer.compressor.");
    }
    const Moe& m = b.ffn;
    GpuMoe& gm = g.ffn;
    gm.hash = m.hash;
    gm.gate = linear(p + "ffn.gate", m.gate);
    if (m.hash) {
      gm.tid2eid = array(m.tid2eid);
    } else {
      gm.bias = array(m.bias);
    }
    const int64_t E = cfg.n_routed_experts;
    const int pairs = gpu_expert_pairs(cfg, max_rows_);
    gm.w1 = experts(p, "w1", E, pairs);
    gm.w2 = experts(p, "w2", E, pairs);
    gm.w3 = experts(p, "w3", E, pairs);
    gm.inter = gm.w1.n();
    if (m.shared) {
      gm.shared.emplace();
      GpuExpert& s = *gm.shared;
      s.w1 = linear(p + "ffn.shared_experts.w1", m.shared->w1);
      s.w2 = linear(p + "ffn.shared_experts.w2", m.shared->w2);
      s.w3 = linear(p + "ffn.shared_experts.w3", m.shared->w3);
    }
    return g;
  }

  int64_t bytes = 0;         // prepared linear data
  int64_t device_bytes = 0;  // everything allocated

 private:
  const LinearSource& src_;
  int max_rows_;
  DeviceUploader* up_;
  ops::Precision precision_;
  std::unordered_map<const Linear*, ops::LinearRole> roles_;
};

// The embedding, converted to fp32 on the device piece by piece from its stored form.
DeviceArray<float> embed_from(const HostTensorView& v, int64_t count, DeviceUploader& up) {
  if (v.numel != count)
    fail_invalid("embed.weight holds {} values, expected {} (vocab x hidden)", v.numel, count);
  DeviceArray<float> a(static_cast<size_t>(count), false);
  const DType dt = v.dtype;
  const std::byte* src = v.bytes.data;
  const size_t es = dtype_size(dt);
  up.enqueue(
      a.get(), static_cast<uint64_t>(count) * 4,
      [dt, src, es](uint64_t off, uint64_t len, std::byte* dst) {
        // Whole elements: pieces are cut at multiples of the staging size (4-byte aligned).
        decode_floats(dt, src + off / 4 * es, static_cast<int64_t>(len / 4), reinterpret_cast<float*>(dst));
      },
      {src, v.bytes.size});
  return a;
}

}  // namespace

GpuWeights upload_weights(const Weights& w, const DeviceSources& sources, int max_rows, const UploadSettings& s) {
  if (max_rows < 1) fail(ErrorKind::Usage, "upload_weights: max_rows = {} (need >= 1)", max_rows);
  const ModelConfig& cfg = w.config;
  GpuWeights g;
  std::unique_ptr<DeviceUploader> up;
  if (!s.synchronous) up = std::make_unique<DeviceUploader>(s.upload);
  CancelUploadsOnThrow guard(up.get());
  Uploader u(w, sources.linears, max_rows, up.get());
  g.config = cfg;
  if (!w.embed.data.empty()) {
    g.embed = u.array(w.embed.data);
  } else {
    const int64_t count = cfg.vocab_size * cfg.hidden_size;
    if (!up || sources.embed.bytes.empty())
      fail(ErrorKind::Usage, "upload_weights: the Weights hold no embedding and no stored embedding was given");
    g.embed = embed_from(sources.embed, count, *up);
    u.device_bytes += count * 4;
  }
  g.precision = w.precision;
  g.head = u.linear("head", w.head);
  g.norm = u.array(w.norm);
  g.hc_head = u.head(w.hc_head);
  for (size_t l = 0; l < w.layers.size(); ++l) g.layers.push_back(u.block(w.layers[l], cfg, fmt::format("layers.{}.", l)));
  for (size_t m = 0; m < w.mtp.size(); ++m) {
    const std::string p = fmt::format("mtp.{}.", m);
    const MtpBlock& mb = w.mtp[m];
    GpuMtp& gm = g.mtp.emplace_back();
    gm.e_proj = u.linear(p + "e_proj", mb.e_proj);
    gm.h_proj = u.linear(p + "h_proj", mb.h_proj, gpu_hproj_rows(cfg, max_rows));
    gm.enorm = u.array(mb.enorm);
    gm.hnorm = u.array(mb.hnorm);
    gm.norm = u.array(mb.norm);
    gm.hc_head = u.head(mb.hc_head);
    gm.block = u.block(mb.block, cfg, p);
  }
  if (up) {
    up->finish();
    g.upload_bytes = static_cast<int64_t>(up->bytes_copied());
    g.upload_seconds = up->seconds();
    g.upload_threads = up->threads();
    g.upload_staging_bytes = static_cast<int64_t>(up->staging_bytes());
  }
  g.linear_bytes = u.bytes;
  g.device_bytes = u.device_bytes;
  return g;
}

GpuDSparkWeights upload_dspark_weights(const DSparkWeights& d, const ModelConfig& cfg, ops::Precision precision,
                                       const LinearSource& linears, int max_rows, const UploadSettings& s) {
  if (max_rows < 1) fail(ErrorKind::Usage, "upload_dspark_weights: max_rows = {} (need >= 1)", max_rows);
  if (d.stages.empty()) fail(ErrorKind::Usage, "upload_dspark_weights: the drafter has no stages");
  GpuDSparkWeights g;
  std::unique_ptr<DeviceUploader> up;
  if (!s.synchronous) up = std::make_unique<DeviceUploader>(s.upload);
  CancelUploadsOnThrow guard(up.get());
  Uploader u(d, precision, linears, max_rows, up.get());
  g.config = d.config;
  g.main_proj = u.linear("mtp.0.main_proj", d.main_proj);
  g.main_norm = u.array(d.main_norm);
  for (size_t i = 0; i < d.stages.size(); ++i) g.stages.push_back(u.block(d.stages[i], cfg, fmt::format("mtp.{}.", i)));
  const std::string last = fmt::format("mtp.{}.", d.stages.size() - 1);
  g.norm = u.array(d.norm);
  g.hc_head = u.head(d.hc_head);
  g.markov_w1 = u.array(d.markov_w1.data);
  g.markov_w2 = u.linear(last + "markov_head.markov_w2", d.markov_w2);
  g.confidence = d.confidence;
  if (up) up->finish();
  g.linear_bytes = u.bytes;
  g.device_bytes = u.device_bytes;
  return g;
}

GpuWeights upload_weights(const Weights& w, const LinearSource& linears, int max_rows, std::ostream* progress) {
  UploadSettings s;
  s.upload.progress = progress;
  return upload_weights(w, DeviceSources{linears, {}}, max_rows, s);
}

}  // namespace kiln::model::cuda
