#include "support/artifacts.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "kiln/core/codecs.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/quant/recipes.h"

namespace kiln::test {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Native: return "native";
    case Layout::NativeNvfp4: return "native-nvfp4";
    case Layout::W4A16Fp8Mtp: return "w4a16-fp8-mtp";
    case Layout::Nvfp4Fp8Mtp: return "nvfp4-fp8-mtp";
    case Layout::V3Fp8: return "v3-fp8";
    case Layout::HfBf16: return "hf-bf16";
  }
  return "?";
}

PendingTensor* ArtifactSpec::find(const std::string& name) {
  for (auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void ArtifactSpec::erase(const std::string& name) {
  std::erase_if(tensors, [&](const PendingTensor& t) { return t.name == name; });
}

nlohmann::json tiny_config() {
  return {
      {"architectures", {"DeepseekV4ForCausalLM"}},
      {"model_type", "deepseek_v4"},
      {"vocab_size", 256},
      {"hidden_size", 256},
      {"num_hidden_layers", 4},
      {"num_nextn_predict_layers", 1},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 1},
      {"head_dim", 128},
      {"qk_rope_head_dim", 32},
      {"q_lora_rank", 128},
      {"o_lora_rank", 64},
      {"o_groups", 2},
      {"sliding_window", 16},
      {"compress_ratios", {0, 4, 16, 4, 0}},
      {"compress_rope_theta", 160000.0},
      {"rope_theta", 10000.0},
      {"rope_scaling",
       {{"type", "yarn"}, {"factor", 16}, {"original_max_position_embeddings", 65536}, {"beta_fast", 32},
        {"beta_slow", 1}}},
      {"max_position_embeddings", 1048576},
      {"index_n_heads", 16},
      {"index_head_dim", 32},
      {"index_topk", 8},
      {"n_routed_experts", 8},
      {"num_experts_per_tok", 2},
      {"n_shared_experts", 1},
      {"moe_intermediate_size", 128},
      {"scoring_func", "sqrtsoftplus"},
      {"topk_method", "noaux_tc"},
      {"norm_topk_prob", true},
      {"routed_scaling_factor", 1.5},
      {"num_hash_layers", 1},
      {"swiglu_limit", 10.0},
      {"hidden_act", "silu"},
      {"hc_mult", 4},
      {"hc_sinkhorn_iters", 20},
      {"hc_eps", 1e-6},
      {"rms_norm_eps", 1e-6},
      {"bos_token_id", 0},
      {"eos_token_id", 1},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
  };
}

nlohmann::json flash_config(int num_layers) {
  nlohmann::json c = tiny_config();
  std::vector<int> ratios{0, 0};
  for (int l = 2; l < num_layers; ++l) ratios.push_back(l % 2 == 0 ? 4 : 128);
  ratios.resize(static_cast<size_t>(num_layers));
  ratios.push_back(0);  // MTP
  c.update({{"vocab_size", 129280},   {"hidden_size", 4096},        {"num_hidden_layers", num_layers},
            {"num_attention_heads", 64}, {"head_dim", 512},         {"qk_rope_head_dim", 64},
            {"q_lora_rank", 1024},    {"o_lora_rank", 1024},        {"o_groups", 8},
            {"sliding_window", 128},  {"compress_ratios", ratios},  {"index_n_heads", 64},
            {"index_head_dim", 128},  {"index_topk", 512},          {"n_routed_experts", 256},
            {"num_experts_per_tok", 6}, {"n_shared_experts", 1},    {"moe_intermediate_size", 2048},
            {"num_hash_layers", 3},   {"expert_dtype", "fp4"}});
  return c;
}

nlohmann::json dspark_config(nlohmann::json cfg, std::vector<int> target_layer_ids, int markov_rank,
                             int noise_token_id, int stages, int block_size) {
  const int64_t L = cfg["num_hidden_layers"];
  std::vector<int64_t> ratios = cfg["compress_ratios"];
  ratios.resize(static_cast<size_t>(L));
  for (int s = 0; s < stages; ++s) ratios.push_back(0);
  cfg["compress_ratios"] = ratios;
  cfg["num_nextn_predict_layers"] = 1;
  cfg["dspark_block_size"] = block_size;
  cfg["dspark_noise_token_id"] = noise_token_id;
  cfg["dspark_target_layer_ids"] = target_layer_ids;
  cfg["dspark_markov_rank"] = markov_rank;
  return cfg;
}

nlohmann::json tiny_dspark_config() { return dspark_config(tiny_config(), {1, 2, 3}, 32, 255); }

nlohmann::json flash_0731_config() {
  std::ifstream f(std::string(KILN_TEST_DATA_DIR) + "/configs/deepseek_v4_flash_0731.json");
  return nlohmann::json::parse(f);
}

namespace {

using quant::Role;

// What a layout stores a linear module of `role` as: the recipe table of `kiln quantize`
// (quant/recipes.h) for the layouts it writes; every module BF16 for HfBf16.
quant::Target target_for(Layout layout, Role role, bool mtp) {
  switch (layout) {
    case Layout::Native: return quant::target_for(quant::RecipeId::Native, role, mtp);
    case Layout::NativeNvfp4: return quant::target_for(quant::RecipeId::NativeNvfp4, role, mtp);
    case Layout::W4A16Fp8Mtp: return quant::target_for(quant::RecipeId::W4A16, role, mtp);
    case Layout::Nvfp4Fp8Mtp: return quant::target_for(quant::RecipeId::Nvfp4, role, mtp);
    case Layout::V3Fp8: return quant::target_for(quant::RecipeId::V3, role, mtp);
    case Layout::HfBf16: break;
  }
  return {};
}

// Deterministic bytes per tensor name.
struct Rng {
  uint64_t s;
  explicit Rng(const std::string& name) : s(1469598103934665603ull) {
    for (char c : name) s = (s ^ static_cast<uint8_t>(c)) * 1099511628211ull;
    if (s == 0) s = 1;
  }
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uniform() { return static_cast<float>(next() >> 40) / static_cast<float>(1 << 24); }  // [0,1)
};

int64_t numel_of(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Fill kinds for generated tensor bytes.
enum class Fill { Bf16Weight, F32Small, F32One, Raw, E8M0Scale, E4M3Scale, F32Scale, Bf16Scale, Index };

class Emitter {
 public:
  Emitter(ArtifactSpec& spec, bool sparse) : spec_(spec), sparse_(sparse) {}

  void tensor(const std::string& name, DType dt, std::vector<int64_t> shape, Fill fill, int shard, int64_t modulo = 0) {
    PendingTensor t;
    t.name = name;
    t.dtype = dt;
    t.shape = std::move(shape);
    t.shard = shard;
    if (!sparse_) t.bytes = make_bytes(name, dt, numel_of(t.shape), fill, modulo);
    spec_.tensors.push_back(std::move(t));
  }

  // The tensors the recipe table stores the module as (quant::target_tensors), each filled
  // as its role needs: the weight first, then scales and companions.
  void linear(const std::string& module, int64_t n, int64_t k, const quant::Target& target, int shard) {
    bool weight = true;
    for (auto& t : quant::target_tensors(module, target, n, k)) {
      if (t.dtype == DType::I64) shape_values_[t.name] = {n, k};  // int4's weight_shape
      const Fill fill = fill_for(t.dtype, weight);
      tensor(t.name, t.dtype, std::move(t.shape), fill, shard);
      weight = false;
    }
  }

  void finish() {
    if (sparse_) return;
    for (auto& t : spec_.tensors) {
      auto it = shape_values_.find(t.name);
      if (it == shape_values_.end()) continue;
      int64_t v[2] = {it->second.first, it->second.second};
      std::memcpy(t.bytes.data(), v, sizeof v);
    }
  }

 private:
  static Fill fill_for(DType dt, bool weight) {
    if (weight) return dt == DType::BF16 ? Fill::Bf16Weight : Fill::Raw;
    switch (dt) {
      case DType::F8_E8M0: return Fill::E8M0Scale;
      case DType::F8_E4M3: return Fill::E4M3Scale;
      case DType::F32: return Fill::F32Scale;  // fp8 scales, nvfp4 global and input scales
      case DType::BF16: return Fill::Bf16Scale;
      default: return Fill::Raw;  // int4's weight_shape: its values are set by finish()
    }
  }

  static std::vector<std::byte> make_bytes(const std::string& name, DType dt, int64_t n, Fill fill, int64_t modulo) {
    std::vector<std::byte> b(static_cast<size_t>(n) * dtype_size(dt));
    Rng r(name);
    auto put16 = [&](int64_t i, uint16_t v) { std::memcpy(b.data() + 2 * i, &v, 2); };
    auto put32f = [&](int64_t i, float v) { std::memcpy(b.data() + 4 * i, &v, 4); };
    for (int64_t i = 0; i < n; ++i) {
      switch (fill) {
        case Fill::Bf16Weight:
          put16(i, f32_to_bf16((r.uniform() - 0.5f) * 0.1f));
          break;
        case Fill::F32Small:
          if (dt == DType::BF16) put16(i, f32_to_bf16((r.uniform() - 0.5f) * 0.2f));
          else put32f(i, (r.uniform() - 0.5f) * 0.2f);
          break;
        case Fill::F32One:
          if (dt == DType::BF16) put16(i, f32_to_bf16(1.0f + (r.uniform() - 0.5f) * 0.2f));
          else put32f(i, 1.0f + (r.uniform() - 0.5f) * 0.2f);
          break;
        case Fill::Raw: {
          // Uniform random codes, signs included (e2m1 and int4 nibbles alike), so the
          // weights have mean zero like real ones; e4m3's NaN codes (S.1111.111) become
          // S.1111.110, the largest finite magnitude.
          const size_t sz = dtype_size(dt), at = static_cast<size_t>(i) * sz;
          for (size_t k = 0; k < sz; ++k) b[at + k] = static_cast<std::byte>(r.next() & 0xFF);
          if (dt == DType::F8_E4M3 && (b[at] & std::byte{0x7F}) == std::byte{0x7F}) b[at] ^= std::byte{0x01};
          break;
        }
        case Fill::E8M0Scale:
          b[static_cast<size_t>(i)] = static_cast<std::byte>(115 + r.next() % 10);
          break;
        case Fill::E4M3Scale:
          b[static_cast<size_t>(i)] = static_cast<std::byte>(0x30 + r.next() % 0x18);  // 0.5 .. ~8
          break;
        case Fill::F32Scale:
          put32f(i, std::ldexp(1.0f + r.uniform(), -10));
          break;
        case Fill::Bf16Scale:
          put16(i, f32_to_bf16(std::ldexp(1.0f + r.uniform(), -10)));
          break;
        case Fill::Index: {
          int64_t v = static_cast<int64_t>(r.next() % static_cast<uint64_t>(modulo));
          if (dt == DType::I64) std::memcpy(b.data() + 8 * i, &v, 8);
          else {
            int32_t w = static_cast<int32_t>(v);
            std::memcpy(b.data() + 4 * i, &w, 4);
          }
          break;
        }
      }
    }
    return b;
  }

  ArtifactSpec& spec_;
  bool sparse_;
  std::map<std::string, std::pair<int64_t, int64_t>> shape_values_;
};

// transformers' module names for native bodies (written from transformers'
// DeepseekV4 modules and conversion mapping, independently of artifact/names.cpp).
std::string hf_body(const std::string& b) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"attn.indexer.compressor.wkv", "self_attn.compressor.indexer.kv_proj"},
      {"attn.indexer.compressor.wgate", "self_attn.compressor.indexer.gate_proj"},
      {"attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"},
      {"attn.indexer.compressor.norm", "self_attn.compressor.indexer.kv_norm"},
      {"attn.indexer.wq_b", "self_attn.compressor.indexer.q_b_proj"},
      {"attn.indexer.weights_proj", "self_attn.compressor.indexer.scorer.weights_proj"},
      {"attn.compressor.wkv", "self_attn.compressor.kv_proj"},
      {"attn.compressor.wgate", "self_attn.compressor.gate_proj"},
      {"attn.compressor.ape", "self_attn.compressor.position_bias"},
      {"attn.compressor.norm", "self_attn.compressor.kv_norm"},
      {"attn.wq_a", "self_attn.q_a_proj"},
      {"attn.wq_b", "self_attn.q_b_proj"},
      {"attn.wkv", "self_attn.kv_proj"},
      {"attn.wo_a", "self_attn.o_a_proj"},
      {"attn.wo_b", "self_attn.o_b_proj"},
      {"attn.q_norm", "self_attn.q_a_norm"},
      {"attn.kv_norm", "self_attn.kv_norm"},
      {"attn.attn_sink", "self_attn.sinks"},
      {"attn_norm", "input_layernorm"},
      {"ffn_norm", "post_attention_layernorm"},
      {"hc_attn_", "attn_hc."},
      {"hc_ffn_", "ffn_hc."},
      {"ffn.gate.bias", "mlp.gate.e_score_correction_bias"},
      {"ffn.gate", "mlp.gate"},
      {"ffn.shared_experts.w1", "mlp.shared_experts.gate_proj"},
      {"ffn.shared_experts.w2", "mlp.shared_experts.down_proj"},
      {"ffn.shared_experts.w3", "mlp.shared_experts.up_proj"},
  };
  for (const auto& [nat, hf] : kMap) {
    std::string_view n(nat);
    if (b.compare(0, n.size(), n) == 0) return hf + b.substr(n.size());
  }
  if (b.rfind("ffn.experts.", 0) == 0) {  // ffn.experts.E.wX...
    size_t dot = b.find('.', 12);
    std::string e = b.substr(12, dot - 12), w = b.substr(dot + 1, 2), rest = b.substr(dot + 3);
    const char* hf = w == "w1" ? "gate_proj" : w == "w2" ? "down_proj" : "up_proj";
    return fmt::format("mlp.experts.{}.{}{}", e, hf, rest);
  }
  return b;
}

nlohmann::json transformers_config(const nlohmann::json& ds) {
  nlohmann::json c = ds;
  int64_t n = ds["num_hidden_layers"];
  nlohmann::json types = nlohmann::json::array(), mlp = nlohmann::json::array();
  int64_t hca_rate = 128;
  for (int64_t l = 0; l < n; ++l) {
    int64_t r = ds["compress_ratios"][static_cast<size_t>(l)];
    types.push_back(r == 0 ? "sliding_attention" : r == 4 ? "compressed_sparse_attention" : "heavily_compressed_attention");
    if (r != 0 && r != 4) hca_rate = r;
    mlp.push_back(l < ds["num_hash_layers"].get<int64_t>() ? "hash_moe" : "moe");
  }
  for (const char* k : {"compress_ratios", "num_hash_layers", "qk_rope_head_dim", "rope_scaling", "topk_method"}) c.erase(k);
  c["layer_types"] = types;
  c["mlp_layer_types"] = mlp;
  c["compress_rates"] = {{"compressed_sparse_attention", 4}, {"heavily_compressed_attention", hca_rate}};
  c["partial_rotary_factor"] = ds["qk_rope_head_dim"].get<double>() / ds["head_dim"].get<double>();
  c["rope_parameters"] = {
      {"main", {{"rope_type", "default"}, {"rope_theta", ds["rope_theta"]}, {"partial_rotary_factor", c["partial_rotary_factor"]}}},
      {"compress",
       {{"rope_type", "yarn"}, {"rope_theta", ds["compress_rope_theta"]}, {"factor", 16},
        {"original_max_position_embeddings", 65536}, {"beta_fast", 32}, {"beta_slow", 1}, {"attention_factor", 1.0},
        {"partial_rotary_factor", c["partial_rotary_factor"]}}}};
  c["dtype"] = "bfloat16";
  c.erase("torch_dtype");
  return c;
}

}  // namespace

ArtifactSpec make_spec(Layout layout, const nlohmann::json& cfg, int num_shards, bool sparse) {
  ArtifactSpec spec;
  spec.sparse = sparse;
  spec.num_shards = num_shards;
  spec.config = cfg;
  Emitter em(spec, sparse);

  const int64_t V = cfg["vocab_size"], H = cfg["hidden_size"], L = cfg["num_hidden_layers"];
  const int64_t M = cfg["num_nextn_predict_layers"], nh = cfg["num_attention_heads"], hd = cfg["head_dim"];
  const int64_t ql = cfg["q_lora_rank"], G = cfg["o_groups"], R = cfg["o_lora_rank"], nhc = cfg["hc_mult"];
  const int64_t E = cfg["n_routed_experts"], I = cfg["moe_intermediate_size"], topk = cfg["num_experts_per_tok"];
  const int64_t Ish = I * cfg["n_shared_experts"].get<int64_t>(), ih = cfg["index_n_heads"], ihd = cfg["index_head_dim"];
  const int64_t nhash = cfg["num_hash_layers"];
  const bool hf = layout == Layout::V3Fp8 || layout == Layout::HfBf16;
  const bool fused_experts = layout == Layout::HfBf16;
  const bool with_mtp = layout != Layout::HfBf16;  // transformers does not save the MTP block
  const auto ratios = cfg["compress_ratios"];
  // A DSpark checkpoint: its stages take the MTP block's place under mtp.N.
  const bool dspark = cfg.contains("dspark_block_size");
  const int64_t S = dspark ? static_cast<int64_t>(ratios.size()) - L : 0;
  const int64_t drafts = with_mtp ? (dspark ? S : M) : 0;
  const int draft_shards = num_shards <= 1 ? 0 : dspark && drafts > 0 ? static_cast<int>(std::min<int64_t>(S, num_shards - 1)) : 1;
  const int main_shards = num_shards > 1 ? num_shards - draft_shards : 1;

  auto top = [&](const std::string& native) -> std::string {
    if (!hf) return native;
    if (native == "embed.weight") return "model.embed_tokens.weight";
    if (native == "head") return "lm_head";
    if (native.rfind("hc_head_", 0) == 0) return "model.hc_head.hc_" + native.substr(8);
    return "model." + native;
  };
  const DType f32 = DType::F32;

  em.tensor(top("embed.weight"), DType::BF16, {V, H}, Fill::Bf16Weight, 0);
  em.tensor(top("norm.weight"), DType::BF16, {H}, Fill::F32One, main_shards - 1);
  em.tensor(top("hc_head_fn"), f32, {nhc, nhc * H}, Fill::F32Small, main_shards - 1);
  em.tensor(top("hc_head_base"), f32, {nhc}, Fill::F32Small, main_shards - 1);
  em.tensor(top("hc_head_scale"), f32, {1}, Fill::F32One, main_shards - 1);
  em.linear(top("head"), V, H, target_for(layout, Role::Head, false), main_shards - 1);

  for (int64_t li = 0; li < L + drafts; ++li) {
    const bool mtp = li >= L;
    int shard = static_cast<int>(li * main_shards / L);
    if (mtp) shard = draft_shards == 0 ? 0 : main_shards + static_cast<int>((li - L) * draft_shards / drafts);
    std::string prefix;
    if (mtp) prefix = hf ? fmt::format("model.layers.{}.", li) : fmt::format("mtp.{}.", li - L);
    else prefix = hf ? fmt::format("model.layers.{}.", li) : fmt::format("layers.{}.", li);
    auto nm = [&](const std::string& body) { return prefix + (hf ? hf_body(body) : body); };
    auto lin = [&](const std::string& body, int64_t n, int64_t k, Role role) {
      em.linear(nm(body), n, k, target_for(layout, role, mtp), shard);
    };
    const int64_t ratio = static_cast<size_t>(li) < ratios.size() ? ratios[static_cast<size_t>(li)].get<int64_t>() : 0;

    em.tensor(nm("attn_norm.weight"), DType::BF16, {H}, Fill::F32One, shard);
    em.tensor(nm("ffn_norm.weight"), DType::BF16, {H}, Fill::F32One, shard);
    for (const char* sub : {"attn", "ffn"}) {
      em.tensor(nm(fmt::format("hc_{}_fn", sub)), f32, {(2 + nhc) * nhc, nhc * H}, Fill::F32Small, shard);
      em.tensor(nm(fmt::format("hc_{}_base", sub)), f32, {(2 + nhc) * nhc}, Fill::F32Small, shard);
      em.tensor(nm(fmt::format("hc_{}_scale", sub)), f32, {3}, Fill::F32Small, shard);
    }
    lin("attn.wq_a", ql, H, Role::Attn);
    em.tensor(nm("attn.q_norm.weight"), DType::BF16, {ql}, Fill::F32One, shard);
    lin("attn.wq_b", nh * hd, ql, Role::Attn);
    lin("attn.wkv", hd, H, Role::Attn);
    em.tensor(nm("attn.kv_norm.weight"), DType::BF16, {hd}, Fill::F32One, shard);
    lin("attn.wo_a", G * R, nh * hd / G, Role::WoA);
    lin("attn.wo_b", H, G * R, Role::Attn);
    em.tensor(nm("attn.attn_sink"), f32, {nh}, Fill::F32Small, shard);
    if (ratio != 0) {
      const int64_t c = ratio == 4 ? 2 : 1;
      lin("attn.compressor.wkv", c * hd, H, Role::Compressor);
      lin("attn.compressor.wgate", c * hd, H, Role::Compressor);
      em.tensor(nm("attn.compressor.ape"), f32, {ratio, c * hd}, Fill::F32Small, shard);
      em.tensor(nm("attn.compressor.norm.weight"), DType::BF16, {hd}, Fill::F32One, shard);
    }
    if (ratio == 4) {
      lin("attn.indexer.wq_b", ih * ihd, ql, Role::IndexerWqB);
      lin("attn.indexer.weights_proj", ih, H, Role::WeightsProj);
      lin("attn.indexer.compressor.wkv", 2 * ihd, H, Role::Compressor);
      lin("attn.indexer.compressor.wgate", 2 * ihd, H, Role::Compressor);
      em.tensor(nm("attn.indexer.compressor.ape"), f32, {4, 2 * ihd}, Fill::F32Small, shard);
      em.tensor(nm("attn.indexer.compressor.norm.weight"), DType::BF16, {ihd}, Fill::F32One, shard);
    }
    lin("ffn.gate", E, H, Role::Gate);
    if (!mtp && li < nhash) {
      em.tensor(nm("ffn.gate.tid2eid"), DType::I64, {V, topk}, Fill::Index, shard, E);
    } else {
      em.tensor(nm("ffn.gate.bias"), f32, {E}, Fill::F32Small, shard);
    }
    if (fused_experts) {
      em.tensor(prefix + "mlp.experts.gate_up_proj", DType::BF16, {E, 2 * I, H}, Fill::Bf16Weight, shard);
      em.tensor(prefix + "mlp.experts.down_proj", DType::BF16, {E, H, I}, Fill::Bf16Weight, shard);
    } else {
      for (int64_t e = 0; e < E; ++e) {
        lin(fmt::format("ffn.experts.{}.w1", e), I, H, Role::Expert);
        lin(fmt::format("ffn.experts.{}.w2", e), H, I, Role::Expert);
        lin(fmt::format("ffn.experts.{}.w3", e), I, H, Role::Expert);
      }
    }
    lin("ffn.shared_experts.w1", Ish, H, Role::Shared);
    lin("ffn.shared_experts.w2", H, Ish, Role::Shared);
    lin("ffn.shared_experts.w3", Ish, H, Role::Shared);
    if (mtp && dspark) {  // dspark.md 1.4: main_proj + main_norm on stage 0, the heads on the last
      const int64_t s = li - L, rank = cfg["dspark_markov_rank"];
      if (s == 0) {
        lin("main_proj", H, H * static_cast<int64_t>(cfg["dspark_target_layer_ids"].size()), Role::MtpProj);
        em.tensor(nm("main_norm.weight"), DType::BF16, {H}, Fill::F32One, shard);
      }
      if (s == S - 1) {
        em.tensor(nm("norm.weight"), DType::BF16, {H}, Fill::F32One, shard);
        em.tensor(nm("hc_head_fn"), f32, {nhc, nhc * H}, Fill::F32Small, shard);
        em.tensor(nm("hc_head_base"), f32, {nhc}, Fill::F32Small, shard);
        em.tensor(nm("hc_head_scale"), f32, {1}, Fill::F32One, shard);
        em.tensor(nm("markov_head.markov_w1.weight"), DType::BF16, {V, rank}, Fill::Bf16Weight, shard);
        lin("markov_head.markov_w2", V, rank, Role::Head);
        lin("confidence_head.proj", 1, H + rank, Role::Head);
      }
    } else if (mtp) {
      lin("e_proj", H, H, Role::MtpProj);
      lin("h_proj", H, H, Role::MtpProj);
      em.tensor(nm("enorm.weight"), DType::BF16, {H}, Fill::F32One, shard);
      em.tensor(nm("hnorm.weight"), DType::BF16, {H}, Fill::F32One, shard);
      em.tensor(nm("norm.weight"), DType::BF16, {H}, Fill::F32One, shard);
      em.tensor(nm("hc_head_fn"), f32, {nhc, nhc * H}, Fill::F32Small, shard);
      em.tensor(nm("hc_head_base"), f32, {nhc}, Fill::F32Small, shard);
      em.tensor(nm("hc_head_scale"), f32, {1}, Fill::F32One, shard);
    }
  }
  em.finish();
  if (layout == Layout::NativeNvfp4 && !sparse) {
    // As the conversions write them: w1 and w3 of an expert share one global scale, and
    // the static activation scale is 1.0.
    const float one = 1.0f;
    for (auto& t : spec.tensors) {
      const auto ends = [&](const std::string& suf) {
        return t.name.size() >= suf.size() && t.name.compare(t.name.size() - suf.size(), suf.size(), suf) == 0;
      };
      if (ends(".input_scale")) std::memcpy(t.bytes.data(), &one, 4);
      if (ends(".w3.weight_scale_2")) {
        const PendingTensor* w1 = spec.find(t.name.substr(0, t.name.size() - 17) + "w1.weight_scale_2");
        if (w1) t.bytes = w1->bytes;
      }
    }
  }
  // Spread the backbone evenly over the main shards in tensor order (as producers do:
  // every shard non-empty, layers contiguous); the MTP block keeps its own last shard.
  {
    std::vector<PendingTensor*> main;
    for (auto& t : spec.tensors) {
      if (!(with_mtp && num_shards > 1 && t.shard >= main_shards)) main.push_back(&t);
    }
    for (size_t i = 0; i < main.size(); ++i) {
      main[i]->shard = static_cast<int>(i * static_cast<size_t>(main_shards) / main.size());
    }
  }

  // Declarations as their producers write them.
  switch (layout) {
    case Layout::Native:
    case Layout::NativeNvfp4:
      spec.config["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                            {"quant_method", "fp8"},          {"scale_fmt", "ue8m0"},
                                            {"weight_block_size", {128, 128}}};
      if (layout == Layout::NativeNvfp4) spec.config["quantization_config"]["moe_quant_algo"] = "NVFP4";
      spec.config["expert_dtype"] = "fp4";
      break;
    case Layout::W4A16Fp8Mtp:
      spec.config["quantization_config"] = {
          {"quant_method", "compressed-tensors"},
          {"format", "mixed-precision"},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", {"re:.*ffn\\.experts\\.\\d+\\.w[123]$"}},
              {"format", "pack-quantized"},
              {"weights",
               {{"num_bits", 4}, {"type", "int"}, {"symmetric", true}, {"group_size", 128}, {"strategy", "group"},
                {"dynamic", false}}}}},
            {"group_1",
             {{"targets",
               {"re:.*attn\\.w(q_a|q_b|kv|o_a|o_b)$", "re:.*shared_experts\\.w[123]$", "re:.*indexer\\.wq_b$",
                "re:.*[eh]_proj$"}},
              {"format", "float-quantized"},
              {"weights",
               {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "block"},
                {"block_structure", {128, 128}}, {"dynamic", false}}},
              {"input_activations",
               {{"num_bits", 8}, {"type", "float"}, {"strategy", "group"}, {"group_size", 128}, {"dynamic", true}}}}}}},
          // Written for a module tree that has the MTP under model.mtp: it misses `mtp.0.*`.
          {"ignore", {"head", "re:.*compressor.*", "re:.*ffn\\.gate$", "re:.*weights_proj$", "re:model\\.mtp.*"}}};
      break;
    case Layout::Nvfp4Fp8Mtp:
      spec.config["quantization_config"] = {{"quant_method", "fp8"},
                                            {"activation_scheme", "dynamic"},
                                            {"weight_block_size", {128, 128}},
                                            {"moe_quant_algo", "NVFP4"},
                                            {"ignored_layers", {"attn.wo_a", "mtp."}}};
      spec.hf_quant_config = {
          {"producer", {{"name", "modelopt"}, {"version", "0.39.0"}}},
          {"quantization",
           {{"quant_algo", "NVFP4"},
            {"kv_cache_quant_algo", nullptr},
            {"group_size", 16},
            {"exclude_modules", {"head", "mtp*", "*attn*", "*shared_experts*", "*ffn.gate"}}}}};
      break;
    case Layout::V3Fp8:
      spec.config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                            {"fmt", "e4m3"},
                                            {"quant_method", "fp8"},
                                            {"weight_block_size", {128, 128}}};
      spec.config["expert_dtype"] = "fp8";
      break;
    case Layout::HfBf16:
      spec.config = transformers_config(cfg);
      break;
  }
  return spec;
}

void write_spec(const ArtifactSpec& spec, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir / "config.json");
    f << spec.config.dump(2) << "\n";
  }
  if (spec.hf_quant_config) {
    std::ofstream f(dir / "hf_quant_config.json");
    f << spec.hf_quant_config->dump(2) << "\n";
  }
  auto shard_name = [&](int s) {
    return spec.num_shards == 1 ? std::string("model.safetensors")
                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, spec.num_shards);
  };
  nlohmann::json weight_map = nlohmann::json::object();
  for (int s = 0; s < spec.num_shards; ++s) {
    SafetensorsWriter w(dir / shard_name(s));
    std::vector<const PendingTensor*> mine;
    for (const auto& t : spec.tensors) {
      if (t.shard != s) continue;
      mine.push_back(&t);
      w.declare(t.name, t.dtype, t.shape, spec.sparse || t.bytes.empty());
      weight_map[t.name] = shard_name(s);
    }
    w.begin();
    for (const auto* t : mine) {
      if (!(spec.sparse || t->bytes.empty())) w.write(t->name, t->bytes);
    }
    w.finish();
  }
  if (spec.write_index) {
    std::ofstream f(dir / "model.safetensors.index.json");
    f << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(1) << "\n";
  }
}

TempDir::TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::temp_directory_path() /
          fmt::format("{}-{}-{}", tag, static_cast<long>(::getpid()), counter.fetch_add(1));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace kiln::test
