#include "kiln/model/synthetic.h"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"

namespace kiln::model {

using ops::HostBytes;
using ops::HostQuantLinear;

nlohmann::json flash_shaped_config_json(int layers, bool mtp) {
  if (layers < 1) fail(ErrorKind::Usage, "synthetic model: {} layers (need >= 1)", layers);
  std::vector<int> ratios;
  for (int l = 0; l < layers; ++l) ratios.push_back(l < 2 ? 0 : (l % 2 == 0 ? 4 : 128));
  if (mtp) ratios.push_back(0);
  return {
      {"architectures", {"DeepseekV4ForCausalLM"}}, {"model_type", "deepseek_v4"}, {"vocab_size", 129280},
      {"hidden_size", 4096}, {"num_hidden_layers", layers}, {"num_nextn_predict_layers", mtp ? 1 : 0},
      {"num_attention_heads", 64}, {"num_key_value_heads", 1}, {"head_dim", 512}, {"qk_rope_head_dim", 64},
      {"q_lora_rank", 1024}, {"o_lora_rank", 1024}, {"o_groups", 8}, {"sliding_window", 128},
      {"compress_ratios", ratios}, {"compress_rope_theta", 160000.0}, {"rope_theta", 10000.0},
      {"rope_scaling", {{"type", "yarn"}, {"factor", 16}, {"original_max_position_embeddings", 65536},
                        {"beta_fast", 32}, {"beta_slow", 1}}},
      {"max_position_embeddings", 1048576}, {"index_n_heads", 64}, {"index_head_dim", 128}, {"index_topk", 512},
      {"n_routed_experts", 256}, {"num_experts_per_tok", 6}, {"n_shared_experts", 1},
      {"moe_intermediate_size", 2048}, {"scoring_func", "sqrtsoftplus"}, {"topk_method", "noaux_tc"},
      {"norm_topk_prob", true}, {"routed_scaling_factor", 1.5}, {"num_hash_layers", std::min(3, layers)},
      {"swiglu_limit", 10.0}, {"hidden_act", "silu"}, {"hc_mult", 4}, {"hc_sinkhorn_iters", 20}, {"hc_eps", 1e-6},
      {"rms_norm_eps", 1e-6}, {"bos_token_id", 0}, {"eos_token_id", 1}, {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"}};
}

ModelConfig flash_shaped_config(int layers, bool mtp) {
  return parse_model_config(flash_shaped_config_json(layers, mtp), "synthetic V4-Flash-shaped config");
}

namespace {

// splitmix64 made seekable: word i of a stream is mix(seed + (i + 1) * gamma), exactly the
// i-th output of splitmix64 started at `seed`.
uint64_t word(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
float uniform(uint64_t seed, uint64_t i) { return static_cast<float>(word(seed, i) >> 40) * 0x1p-24f; }  // [0, 1)
float symmetric(uint64_t seed, uint64_t i, float a) { return (2.0f * uniform(seed, i) - 1.0f) * a; }

uint64_t name_seed(uint64_t seed, std::string_view s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return seed ^ h;
}

bool ends_with(std::string_view s, std::string_view t) { return s.size() >= t.size() && s.substr(s.size() - t.size()) == t; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

HostQuantLinear synthetic_linear_form(SchemeKind s, int64_t n, int64_t k) {
  HostQuantLinear v;
  v.scheme = s;
  v.n = n;
  v.k = k;
  switch (s) {
    case SchemeKind::BF16: v.weight_dtype = DType::BF16; break;
    case SchemeKind::FP8Block:
      v.weight_dtype = DType::F8_E4M3;
      v.block_n = 128, v.block_k = 128;
      v.scale_rows = ceil_div(n, 128), v.scale_cols = ceil_div(k, 128);
      v.scale_dtype = DType::F8_E8M0;
      break;
    case SchemeKind::Int4Group:
      v.weight_dtype = DType::I32;
      v.block_k = 128;
      v.scale_rows = n, v.scale_cols = ceil_div(k, 128);
      v.scale_dtype = DType::BF16;
      break;
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: {
      const bool mx = s == SchemeKind::MXFP4;
      v.weight_dtype = DType::U8;
      v.block_k = mx ? 32 : 16;
      v.scale_rows = n, v.scale_cols = k / v.block_k;
      v.scale_dtype = mx ? DType::F8_E8M0 : DType::F8_E4M3;
      if (!mx) v.global = 1.0f / 256.0f;
      break;
    }
  }
  return v;
}

void synthetic_linear_bytes(SchemeKind s, int64_t n, int64_t k, bool scale, uint64_t seed, uint64_t offset,
                            std::span<std::byte> out) {
  if (scale) {
    // One value everywhere: fp8 2^-14, int4 bf16 ~0.00995, mxfp4 2^-8, nvfp4 e4m3 1.0 (x global).
    for (size_t i = 0; i < out.size(); ++i) {
      uint8_t b = 0;
      switch (s) {
        case SchemeKind::BF16: b = 0; break;
        case SchemeKind::FP8Block: b = 127 - 14; break;
        case SchemeKind::Int4Group: b = ((offset + i) % 2 == 0) ? 0x23 : 0x3C; break;  // 0x3C23 little-endian
        case SchemeKind::MXFP4: b = 127 - 8; break;
        case SchemeKind::NVFP4: b = 0x38; break;
      }
      out[i] = static_cast<std::byte>(b);
    }
    return;
  }
  const uint64_t sd = seed ^ static_cast<uint64_t>(n * 1000003 + k) ^ static_cast<uint64_t>(s);
  // Byte `at` is byte at % per of word at / per: bf16 takes one word per element (2 bytes),
  // the packed schemes one word per 8 bytes.
  const uint64_t per = s == SchemeKind::BF16 ? 2 : 8;
  for (size_t i = 0; i < out.size();) {
    const uint64_t at = offset + i, wi = at / per;
    uint64_t x = word(sd, wi);
    if (s == SchemeKind::BF16)  // sign, exponent 2^-9 .. 2^-6, random mantissa
      x = ((x & 1) << 15) | ((118 + ((x >> 1) & 3)) << 7) | ((x >> 3) & 0x7F);
    for (uint64_t b = at % per; b < per && i < out.size(); ++b, ++i) {
      uint8_t v = static_cast<uint8_t>(x >> (8 * b));
      if (s == SchemeKind::FP8Block && (v & 0x7F) == 0x7F) v ^= 1;  // never the e4m3 NaN code
      out[i] = static_cast<std::byte>(v);
    }
  }
}

float synthetic_plain_value(std::string_view m, uint64_t seed, uint64_t i) {
  const uint64_t sd = name_seed(seed, m);
  if (m == "embed.weight") return symmetric(sd, i, 1.0f);
  if (ends_with(m, "norm.weight") || ends_with(m, "_scale")) return 1.0f;
  if (ends_with(m, "_fn")) return symmetric(sd, i, 1e-2f);
  if (ends_with(m, "_base") || ends_with(m, ".ape")) return symmetric(sd, i, 0.1f);
  if (ends_with(m, "attn_sink")) return symmetric(sd, i, 1.0f);
  if (ends_with(m, "gate.bias")) return symmetric(sd, i, 0.01f);
  return 0.0f;
}

int32_t synthetic_tid2eid(const ModelConfig& c, uint64_t seed, uint64_t i) {
  const uint64_t K = static_cast<uint64_t>(c.num_experts_per_tok), E = static_cast<uint64_t>(c.n_routed_experts);
  const uint64_t e0 = word(name_seed(seed, "ffn.gate.tid2eid"), i / K) % E;
  return static_cast<int32_t>((e0 + (i % K) * 41) % E);
}

struct SyntheticModel::Store {
  struct Blob {
    std::vector<std::byte> weight, scale;
    HostQuantLinear view;
  };
  std::map<std::tuple<int, int64_t, int64_t>, std::unique_ptr<Blob>> blobs;
  std::vector<std::unique_ptr<std::string>> names;
  std::mutex mu;
  const ModelConfig* cfg = nullptr;
  SyntheticSpec spec;

  const Blob& blob(SchemeKind s, int64_t n, int64_t k) {
    auto key = std::make_tuple(static_cast<int>(s), n, k);
    auto it = blobs.find(key);
    if (it != blobs.end()) return *it->second;
    auto b = std::make_unique<Blob>();
    HostQuantLinear& v = b->view;
    v = synthetic_linear_form(s, n, k);
    const int64_t wbytes = s == SchemeKind::BF16       ? n * k * 2
                           : s == SchemeKind::FP8Block  ? n * k
                           : s == SchemeKind::Int4Group ? n * ceil_div(k, 8) * 4
                                                          : n * k / 2;
    b->weight.resize(static_cast<size_t>(wbytes));
    synthetic_linear_bytes(s, n, k, false, spec.seed, 0, b->weight);
    if (s != SchemeKind::BF16) {
      b->scale.resize(static_cast<size_t>(v.scale_rows * v.scale_cols) * dtype_size(v.scale_dtype));
      synthetic_linear_bytes(s, n, k, true, spec.seed, 0, b->scale);
    }
    v.weight = HostBytes{b->weight.data(), b->weight.size()};
    v.scale = HostBytes{b->scale.data(), b->scale.size()};
    return *blobs.emplace(key, std::move(b)).first->second;
  }

  // The shape and scheme of a canonical module path.
  HostQuantLinear view(const std::string& path) {
    const ModelConfig& c = *cfg;
    const int64_t H = c.hidden_size, D = c.head_dim, nh = c.num_heads, qr = c.q_lora_rank;
    const int64_t G = c.o_groups, Rl = c.o_lora_rank, I = c.moe_intermediate_size;
    const SchemeKind dense = spec.all_bf16 ? SchemeKind::BF16 : SchemeKind::FP8Block;
    const SchemeKind experts = spec.all_bf16 ? SchemeKind::BF16 : spec.experts;
    const bool mtp = path.rfind("mtp.", 0) == 0;
    int64_t layer = -1;
    if (path.rfind("layers.", 0) == 0) layer = std::stoll(path.substr(7));
    if (mtp) layer = c.num_layers + std::stoll(path.substr(4));
    auto ends = [&](const char* s) {
      const size_t n = std::strlen(s);
      return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
    };
    SchemeKind s = dense;
    int64_t n = 0, k = 0;
    if (path == "head") {
      s = SchemeKind::BF16, n = c.vocab_size, k = H;
    } else if (ends("e_proj") || ends("h_proj")) {
      s = SchemeKind::BF16, n = H, k = H;
    } else if (path.find("compressor.") != std::string::npos) {
      const bool indexer = path.find("indexer.") != std::string::npos;
      const bool overlap = indexer || c.compress_ratio(layer) == 4;
      s = SchemeKind::BF16, n = (overlap ? 2 : 1) * (indexer ? c.index_head_dim : D), k = H;
    } else if (ends("indexer.wq_b")) {
      n = c.index_n_heads * c.index_head_dim, k = qr;
    } else if (ends("weights_proj")) {
      s = SchemeKind::BF16, n = c.index_n_heads, k = H;
    } else if (ends("attn.wq_a")) {
      n = qr, k = H;
    } else if (ends("attn.wq_b")) {
      n = nh * D, k = qr;
    } else if (ends("attn.wkv")) {
      n = D, k = H;
    } else if (ends("attn.wo_a")) {
      n = G * Rl, k = nh * D / G;
    } else if (ends("attn.wo_b")) {
      n = H, k = G * Rl;
    } else if (ends("ffn.gate")) {
      s = SchemeKind::BF16, n = c.n_routed_experts, k = H;
    } else if (path.find("shared_experts.") != std::string::npos) {
      const int64_t Is = I * c.n_shared_experts;
      n = ends("w2") ? H : Is, k = ends("w2") ? Is : H;
    } else if (path.find("experts.") != std::string::npos) {
      s = experts, n = ends("w2") ? H : I, k = ends("w2") ? I : H;
    } else {
      fail(ErrorKind::Usage, "synthetic model: no module {}", path);
    }
    std::lock_guard<std::mutex> lock(mu);
    HostQuantLinear v = blob(s, n, k).view;
    names.push_back(std::make_unique<std::string>(path));
    v.name = names.back()->c_str();
    return v;
  }
};

SyntheticModel::SyntheticModel(const SyntheticSpec& spec) : spec_(spec), store_(std::make_shared<Store>()) {
  Weights& w = weights_;
  w.config = flash_shaped_config(spec.layers, spec.mtp);
  const ModelConfig& c = w.config;
  store_->cfg = &w.config;
  store_->spec = spec;
  const int64_t H = c.hidden_size, n = c.hc_mult, mix = (2 + n) * n;
  // A plain tensor of `count` values, named as in the checkpoint (inside its scope).
  auto plain = [&](std::string_view name, int64_t count) {
    std::vector<float> v(static_cast<size_t>(count));
    for (size_t i = 0; i < v.size(); ++i) v[i] = synthetic_plain_value(name, spec.seed, i);
    return v;
  };
  w.embed.shape = {c.vocab_size, H};
  w.embed.data = plain("embed.weight", c.vocab_size * H);
  w.norm = plain("norm.weight", H);
  auto hyper = [&](const char* sub) {
    HyperConnection h;
    h.fn.shape = {mix, n * H};
    h.fn.data = plain(fmt::format("hc_{}_fn", sub), mix * n * H);
    h.base = plain(fmt::format("hc_{}_base", sub), mix);
    h.scale = plain(fmt::format("hc_{}_scale", sub), 3);
    return h;
  };
  auto head = [&] {
    HyperHead h;
    h.fn.shape = {n, n * H};
    h.fn.data = plain("hc_head_fn", n * n * H);
    h.base = plain("hc_head_base", n);
    h.scale = 1.0f;
    return h;
  };
  auto compressor = [&](const std::string& p, int64_t ratio, int64_t dim, bool overlap) {
    Compressor cp;
    cp.ratio = ratio, cp.dim = dim, cp.overlap = overlap;
    const int64_t width = (overlap ? 2 : 1) * dim;
    cp.ape.shape = {ratio, width};
    cp.ape.data = plain(p + "ape", ratio * width);
    cp.norm = plain(p + "norm.weight", dim);
    return cp;
  };
  auto block = [&](int64_t layer, bool is_mtp) {
    Block b;
    b.attn_norm = plain("attn_norm.weight", H);
    b.ffn_norm = plain("ffn_norm.weight", H);
    b.hc_attn = hyper("attn");
    b.hc_ffn = hyper("ffn");
    Attention& a = b.attn;
    a.kind = c.attn_kind(layer);
    a.ratio = c.compress_ratio(layer);
    a.q_norm = plain("attn.q_norm.weight", c.q_lora_rank);
    a.kv_norm = plain("attn.kv_norm.weight", c.head_dim);
    a.sink = plain("attn.attn_sink", c.num_heads);
    if (a.kind != AttnKind::SWA) a.compressor = compressor("attn.compressor.", a.ratio, c.head_dim, a.kind == AttnKind::CSA);
    if (a.kind == AttnKind::CSA) {
      Indexer ix;
      ix.compressor = compressor("attn.indexer.compressor.", a.ratio, c.index_head_dim, true);
      a.indexer = std::move(ix);
    }
    Moe& m = b.ffn;
    m.hash = !is_mtp && c.is_hash_layer(layer);
    if (m.hash) {
      m.tid2eid.resize(static_cast<size_t>(c.vocab_size * c.num_experts_per_tok));
      for (size_t i = 0; i < m.tid2eid.size(); ++i) m.tid2eid[i] = synthetic_tid2eid(c, spec.seed, i);
    } else {
      m.bias = plain("ffn.gate.bias", c.n_routed_experts);
    }
    if (c.n_shared_experts > 0) m.shared = Expert{};
    return b;
  };
  for (int64_t l = 0; l < c.num_layers; ++l) w.layers.push_back(block(l, false));
  w.hc_head = head();
  if (spec.mtp) {
    MtpBlock mb;
    mb.enorm = plain("enorm.weight", H);
    mb.hnorm = plain("hnorm.weight", H);
    mb.norm = plain("norm.weight", H);
    mb.hc_head = head();
    mb.block = block(c.num_layers, true);
    w.mtp.push_back(std::move(mb));
  }
}

SyntheticModel::~SyntheticModel() = default;

LinearSource SyntheticModel::linears() const {
  std::shared_ptr<Store> s = store_;
  return [s](const std::string& path) { return s->view(path); };
}

std::string SyntheticModel::describe() const {
  return fmt::format("V4-Flash-shaped, {} layers{}, experts {}, dense {}", spec_.layers, spec_.mtp ? " + MTP" : "",
                     scheme_kind_name(spec_.all_bf16 ? SchemeKind::BF16 : spec_.experts),
                     spec_.all_bf16 ? "bf16" : "fp8_block");
}

}  // namespace kiln::model
