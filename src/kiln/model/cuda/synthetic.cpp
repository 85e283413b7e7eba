#include "kiln/model/cuda/synthetic.h"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <tuple>

#include "kiln/core/error.h"

namespace kiln::model::cuda {

using ops::HostBytes;
using ops::HostQuantLinear;
using ops::LinearScheme;

ModelConfig flash_shaped_config(int layers, bool mtp) {
  if (layers < 1) fail(ErrorKind::Usage, "synthetic model: {} layers (need >= 1)", layers);
  std::vector<int> ratios;
  for (int l = 0; l < layers; ++l) ratios.push_back(l < 2 ? 0 : (l % 2 == 0 ? 4 : 128));
  if (mtp) ratios.push_back(0);
  const nlohmann::json j = {
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
  return parse_model_config(j, "synthetic V4-Flash-shaped config");
}

namespace {

// splitmix64: fast, seeded, good enough for synthetic weights.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * 0x1p-24f; }  // [0, 1)
  float symmetric(float a) { return (2.0f * uniform() - 1.0f) * a; }
};

std::vector<float> random_floats(Rng& r, int64_t n, float a) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = r.symmetric(a);
  return v;
}

void fill_bytes(Rng& r, std::vector<std::byte>& b) {
  size_t i = 0;
  for (; i + 8 <= b.size(); i += 8) {
    const uint64_t v = r.next();
    std::memcpy(b.data() + i, &v, 8);
  }
  for (; i < b.size(); ++i) b[i] = static_cast<std::byte>(r.next() & 0xFF);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

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

  // Random codes with valid scales: every weight of magnitude ~1e-2 (no NaN codes).
  const Blob& blob(LinearScheme s, int64_t n, int64_t k) {
    auto key = std::make_tuple(static_cast<int>(s), n, k);
    auto it = blobs.find(key);
    if (it != blobs.end()) return *it->second;
    auto b = std::make_unique<Blob>();
    Rng r{spec.seed ^ static_cast<uint64_t>(n * 1000003 + k) ^ static_cast<uint64_t>(s)};
    HostQuantLinear& v = b->view;
    v.scheme = s;
    v.n = n;
    v.k = k;
    switch (s) {
      case LinearScheme::BF16: {
        b->weight.resize(static_cast<size_t>(n * k * 2));
        for (size_t i = 0; i < b->weight.size(); i += 2) {
          // sign, exponent 2^-9 .. 2^-6, random mantissa
          const uint64_t x = r.next();
          const uint16_t h = static_cast<uint16_t>(((x & 1) << 15) | ((118 + ((x >> 1) & 3)) << 7) | ((x >> 3) & 0x7F));
          std::memcpy(b->weight.data() + i, &h, 2);
        }
        v.weight_dtype = DType::BF16;
        break;
      }
      case LinearScheme::FP8Block: {
        b->weight.resize(static_cast<size_t>(n * k));
        fill_bytes(r, b->weight);
        for (auto& c : b->weight)
          if ((static_cast<uint8_t>(c) & 0x7F) == 0x7F) c = static_cast<std::byte>(static_cast<uint8_t>(c) ^ 1);
        v.weight_dtype = DType::F8_E4M3;
        v.block_n = 128, v.block_k = 128;
        v.scale_rows = ceil_div(n, 128), v.scale_cols = ceil_div(k, 128);
        b->scale.assign(static_cast<size_t>(v.scale_rows * v.scale_cols), static_cast<std::byte>(127 - 14));
        v.scale_dtype = DType::F8_E8M0;
        break;
      }
      case LinearScheme::Int4Group: {
        b->weight.resize(static_cast<size_t>(n * ceil_div(k, 8) * 4));
        fill_bytes(r, b->weight);
        v.weight_dtype = DType::I32;
        v.block_k = 128;
        v.scale_rows = n, v.scale_cols = ceil_div(k, 128);
        b->scale.resize(static_cast<size_t>(v.scale_rows * v.scale_cols * 2));
        const uint16_t s16 = 0x3C23;  // bf16 ~0.00995
        for (size_t i = 0; i < b->scale.size(); i += 2) std::memcpy(b->scale.data() + i, &s16, 2);
        v.scale_dtype = DType::BF16;
        break;
      }
      case LinearScheme::MXFP4:
      case LinearScheme::NVFP4: {
        b->weight.resize(static_cast<size_t>(n * k / 2));
        fill_bytes(r, b->weight);
        v.weight_dtype = DType::U8;
        const bool mx = s == LinearScheme::MXFP4;
        v.block_k = mx ? 32 : 16;
        v.scale_rows = n, v.scale_cols = k / v.block_k;
        b->scale.assign(static_cast<size_t>(v.scale_rows * v.scale_cols),
                        static_cast<std::byte>(mx ? 127 - 8 : 0x38));  // 2^-8, or e4m3 1.0 x global
        v.scale_dtype = mx ? DType::F8_E8M0 : DType::F8_E4M3;
        if (!mx) v.global = 1.0f / 256.0f;
        break;
      }
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
    const LinearScheme dense = spec.all_bf16 ? LinearScheme::BF16 : LinearScheme::FP8Block;
    const LinearScheme experts = spec.all_bf16 ? LinearScheme::BF16 : spec.experts;
    const bool mtp = path.rfind("mtp.", 0) == 0;
    int64_t layer = -1;
    if (path.rfind("layers.", 0) == 0) layer = std::stoll(path.substr(7));
    if (mtp) layer = c.num_layers + std::stoll(path.substr(4));
    auto ends = [&](const char* s) {
      const size_t n = std::strlen(s);
      return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
    };
    LinearScheme s = dense;
    int64_t n = 0, k = 0;
    if (path == "head") {
      s = LinearScheme::BF16, n = c.vocab_size, k = H;
    } else if (ends("e_proj") || ends("h_proj")) {
      s = LinearScheme::BF16, n = H, k = H;
    } else if (path.find("compressor.") != std::string::npos) {
      const bool indexer = path.find("indexer.") != std::string::npos;
      const bool overlap = indexer || c.compress_ratio(layer) == 4;
      s = LinearScheme::BF16, n = (overlap ? 2 : 1) * (indexer ? c.index_head_dim : D), k = H;
    } else if (ends("indexer.wq_b")) {
      n = c.index_n_heads * c.index_head_dim, k = qr;
    } else if (ends("weights_proj")) {
      s = LinearScheme::BF16, n = c.index_n_heads, k = H;
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
      s = LinearScheme::BF16, n = c.n_routed_experts, k = H;
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
  Rng r{spec.seed};
  const int64_t H = c.hidden_size, n = c.hc_mult, mix = (2 + n) * n;
  w.embed.shape = {c.vocab_size, H};
  w.embed.data = random_floats(r, c.vocab_size * H, 1.0f);
  w.norm.assign(static_cast<size_t>(H), 1.0f);
  auto hyper = [&] {
    HyperConnection h;
    h.fn.shape = {mix, n * H};
    h.fn.data = random_floats(r, mix * n * H, 1e-2f);
    h.base = random_floats(r, mix, 0.1f);
    h.scale = {1.0f, 1.0f, 1.0f};
    return h;
  };
  auto head = [&] {
    HyperHead h;
    h.fn.shape = {n, n * H};
    h.fn.data = random_floats(r, n * n * H, 1e-2f);
    h.base = random_floats(r, n, 0.1f);
    h.scale = 1.0f;
    return h;
  };
  auto compressor = [&](int64_t ratio, int64_t dim, bool overlap) {
    Compressor cp;
    cp.ratio = ratio, cp.dim = dim, cp.overlap = overlap;
    const int64_t width = (overlap ? 2 : 1) * dim;
    cp.ape.shape = {ratio, width};
    cp.ape.data = random_floats(r, ratio * width, 0.1f);
    cp.norm.assign(static_cast<size_t>(dim), 1.0f);
    return cp;
  };
  auto block = [&](int64_t layer, bool is_mtp) {
    Block b;
    b.attn_norm.assign(static_cast<size_t>(H), 1.0f);
    b.ffn_norm.assign(static_cast<size_t>(H), 1.0f);
    b.hc_attn = hyper();
    b.hc_ffn = hyper();
    Attention& a = b.attn;
    a.kind = c.attn_kind(layer);
    a.ratio = c.compress_ratio(layer);
    a.q_norm.assign(static_cast<size_t>(c.q_lora_rank), 1.0f);
    a.kv_norm.assign(static_cast<size_t>(c.head_dim), 1.0f);
    a.sink = random_floats(r, c.num_heads, 1.0f);
    if (a.kind != AttnKind::SWA) a.compressor = compressor(a.ratio, c.head_dim, a.kind == AttnKind::CSA);
    if (a.kind == AttnKind::CSA) {
      Indexer ix;
      ix.compressor = compressor(a.ratio, c.index_head_dim, true);
      a.indexer = std::move(ix);
    }
    Moe& m = b.ffn;
    m.hash = !is_mtp && c.is_hash_layer(layer);
    if (m.hash) {
      m.tid2eid.resize(static_cast<size_t>(c.vocab_size * c.num_experts_per_tok));
      for (size_t t = 0; t < m.tid2eid.size(); t += static_cast<size_t>(c.num_experts_per_tok)) {
        // distinct experts per token
        const int32_t e0 = static_cast<int32_t>(r.next() % static_cast<uint64_t>(c.n_routed_experts));
        for (int64_t k = 0; k < c.num_experts_per_tok; ++k)
          m.tid2eid[t + static_cast<size_t>(k)] = static_cast<int32_t>((e0 + k * 41) % c.n_routed_experts);
      }
    } else {
      m.bias = random_floats(r, c.n_routed_experts, 0.01f);
    }
    if (c.n_shared_experts > 0) m.shared = Expert{};
    return b;
  };
  for (int64_t l = 0; l < c.num_layers; ++l) w.layers.push_back(block(l, false));
  w.hc_head = head();
  if (spec.mtp) {
    MtpBlock mb;
    mb.enorm.assign(static_cast<size_t>(H), 1.0f);
    mb.hnorm.assign(static_cast<size_t>(H), 1.0f);
    mb.norm.assign(static_cast<size_t>(H), 1.0f);
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
                     ops::linear_scheme_name(spec_.all_bf16 ? LinearScheme::BF16 : spec_.experts),
                     spec_.all_bf16 ? "bf16" : "fp8_block");
}

}  // namespace kiln::model::cuda
