#include "kiln/artifact/inventory.h"

#include <fmt/format.h>

namespace kiln {

std::string ExpectedTensor::path() const {
  CanonicalName c;
  c.scope = scope;
  c.index = index;
  c.module = module;
  return c.path();
}

std::string group_of(Part part, const std::string& m, bool linear) {
  auto starts = [&](std::string_view p) { return m.rfind(p, 0) == 0; };
  std::string g;
  if (linear) {
    if (starts("ffn.experts.")) g = "routed experts";
    else if (starts("ffn.shared_experts.")) g = "shared experts";
    else if (m == "ffn.gate") g = "router gate";
    else if (starts("attn.indexer.compressor.")) g = "indexer compressor wkv/wgate";
    else if (starts("attn.indexer.")) g = "indexer " + m.substr(std::string("attn.indexer.").size());
    else if (starts("attn.compressor.")) g = "compressor wkv/wgate";
    else if (starts("attn.")) g = "attention " + m.substr(5);
    else if (m == "e_proj" || m == "h_proj") g = "e_proj/h_proj";
    else if (m == "markov_head.markov_w2") g = "Markov head w2";
    else if (m == "confidence_head.proj") g = "confidence head";
    else g = m;  // head, main_proj
  } else {
    if (m == "embed.weight") g = "embedding";
    else if (m.find("norm") != std::string::npos) g = "norms";
    else if (starts("hc_")) g = "mHC";
    else if (m == "ffn.gate.tid2eid") g = "hash routing tid2eid";
    else if (m == "ffn.gate.bias") g = "router bias";
    else if (m.find("ape") != std::string::npos) g = "compressor ape";
    else if (m == "attn.attn_sink") g = "attention sink";
    else if (m == "markov_head.markov_w1.weight") g = "Markov head w1 (embedding)";
    else g = m;
  }
  switch (part) {
    case Part::Main: return g;
    case Part::Mtp: return "MTP " + g;
    case Part::DSpark: return "DSpark " + g;
  }
  return g;
}

namespace {

class Builder {
 public:
  Builder(const ModelConfig& c, bool dspark) : c_(c), dspark_(dspark) {}

  void linear(Scope s, int idx, std::string m, int64_t n, int64_t k, bool optional = false) {
    ExpectedTensor e;
    e.scope = s;
    e.index = idx;
    e.linear = true;
    e.n = n;
    e.k = k;
    e.optional = optional;
    e.part = part_of(s);
    e.group = group_of(e.part, m, true);
    e.module = std::move(m);
    out.push_back(std::move(e));
  }
  void plain(Scope s, int idx, std::string m, std::vector<int64_t> shape, std::vector<DType> dtypes,
             bool optional = false) {
    ExpectedTensor e;
    e.scope = s;
    e.index = idx;
    e.shape = std::move(shape);
    e.dtypes = std::move(dtypes);
    e.optional = optional;
    e.part = part_of(s);
    e.group = group_of(e.part, m, false);
    e.module = std::move(m);
    out.push_back(std::move(e));
  }

  void block(Scope s, int idx, int64_t layer) {
    const int64_t H = c_.hidden_size, nh = c_.num_heads, hd = c_.head_dim, ql = c_.q_lora_rank;
    const int64_t G = c_.o_groups, R = c_.o_lora_rank, n = c_.hc_mult, E = c_.n_routed_experts;
    const int64_t I = c_.moe_intermediate_size, Ish = I * c_.n_shared_experts;
    const std::vector<DType> norm_t{DType::BF16, DType::F32, DType::F16};
    const std::vector<DType> f32_t{DType::F32, DType::BF16};
    plain(s, idx, "attn_norm.weight", {H}, norm_t);
    plain(s, idx, "ffn_norm.weight", {H}, norm_t);
    for (const char* sub : {"attn", "ffn"}) {
      plain(s, idx, fmt::format("hc_{}_fn", sub), {(2 + n) * n, n * H}, f32_t);
      plain(s, idx, fmt::format("hc_{}_base", sub), {(2 + n) * n}, f32_t);
      plain(s, idx, fmt::format("hc_{}_scale", sub), {3}, f32_t);
    }
    linear(s, idx, "attn.wq_a", ql, H);
    plain(s, idx, "attn.q_norm.weight", {ql}, norm_t);
    linear(s, idx, "attn.wq_b", nh * hd, ql);
    linear(s, idx, "attn.wkv", hd, H);
    plain(s, idx, "attn.kv_norm.weight", {hd}, norm_t);
    linear(s, idx, "attn.wo_a", G * R, nh * hd / G);
    linear(s, idx, "attn.wo_b", H, G * R);
    plain(s, idx, "attn.attn_sink", {nh}, f32_t);

    const AttnKind kind = c_.attn_kind(layer);
    const int64_t m = c_.compress_ratio(layer);
    if (kind != AttnKind::SWA) {
      const int64_t cc = kind == AttnKind::CSA ? 2 : 1;  // overlapping windows on CSA
      linear(s, idx, "attn.compressor.wkv", cc * hd, H);
      linear(s, idx, "attn.compressor.wgate", cc * hd, H);
      plain(s, idx, "attn.compressor.ape", {m, cc * hd}, f32_t);
      plain(s, idx, "attn.compressor.norm.weight", {hd}, norm_t);
    }
    if (kind == AttnKind::CSA) {
      const int64_t ih = c_.index_n_heads, ihd = c_.index_head_dim;
      linear(s, idx, "attn.indexer.wq_b", ih * ihd, ql);
      linear(s, idx, "attn.indexer.weights_proj", ih, H);
      linear(s, idx, "attn.indexer.compressor.wkv", 2 * ihd, H);
      linear(s, idx, "attn.indexer.compressor.wgate", 2 * ihd, H);
      plain(s, idx, "attn.indexer.compressor.ape", {m, 2 * ihd}, f32_t);
      plain(s, idx, "attn.indexer.compressor.norm.weight", {ihd}, norm_t);
    }

    linear(s, idx, "ffn.gate", E, H);
    if (s == Scope::Layer && c_.is_hash_layer(layer)) {
      plain(s, idx, "ffn.gate.tid2eid", {c_.vocab_size, c_.num_experts_per_tok}, {DType::I64, DType::I32});
    } else {
      plain(s, idx, "ffn.gate.bias", {E}, f32_t);
    }
    for (int64_t e = 0; e < E; ++e) {
      linear(s, idx, fmt::format("ffn.experts.{}.w1", e), I, H);
      linear(s, idx, fmt::format("ffn.experts.{}.w2", e), H, I);
      linear(s, idx, fmt::format("ffn.experts.{}.w3", e), I, H);
    }
    if (Ish > 0) {
      linear(s, idx, "ffn.shared_experts.w1", Ish, H);
      linear(s, idx, "ffn.shared_experts.w2", H, Ish);
      linear(s, idx, "ffn.shared_experts.w3", Ish, H);
    }
  }

  void head(Scope s, int idx, bool optional_copies) {
    const int64_t H = c_.hidden_size, n = c_.hc_mult;
    const std::vector<DType> f32_t{DType::F32, DType::BF16};
    plain(s, idx, "norm.weight", {H}, {DType::BF16, DType::F32, DType::F16});
    plain(s, idx, "hc_head_fn", {n, n * H}, f32_t);
    plain(s, idx, "hc_head_base", {n}, f32_t);
    plain(s, idx, "hc_head_scale", {1}, f32_t);
    plain(s, idx, "embed.weight", {c_.vocab_size, H}, {DType::BF16, DType::F16, DType::F32}, optional_copies);
    linear(s, idx, "head", c_.vocab_size, H, optional_copies);
  }

  std::vector<ExpectedTensor> out;

 private:
  Part part_of(Scope s) const {
    if (s != Scope::Mtp) return Part::Main;
    return dspark_ ? Part::DSpark : Part::Mtp;
  }

  const ModelConfig& c_;
  bool dspark_;
};

}  // namespace

std::vector<ExpectedTensor> expected_inventory(const ModelConfig& cfg) {
  Builder b(cfg, false);
  b.head(Scope::Top, -1, false);
  for (int64_t l = 0; l < cfg.num_layers; ++l) b.block(Scope::Layer, static_cast<int>(l), l);
  for (int64_t m = 0; m < cfg.num_mtp_layers; ++m) {
    const int idx = static_cast<int>(m);
    b.block(Scope::Mtp, idx, cfg.num_layers + m);
    const int64_t H = cfg.hidden_size;
    b.linear(Scope::Mtp, idx, "e_proj", H, H);
    b.linear(Scope::Mtp, idx, "h_proj", H, H);
    b.plain(Scope::Mtp, idx, "enorm.weight", {H}, {DType::BF16, DType::F32, DType::F16});
    b.plain(Scope::Mtp, idx, "hnorm.weight", {H}, {DType::BF16, DType::F32, DType::F16});
    b.head(Scope::Mtp, idx, true);  // MTP shares embed/head; its own copies are optional
  }
  return std::move(b.out);
}

std::vector<ExpectedTensor> expected_dspark_inventory(const ModelConfig& cfg) {
  if (!cfg.dspark) return {};
  const DSparkConfig& d = *cfg.dspark;
  const int64_t H = cfg.hidden_size, n = cfg.hc_mult, V = cfg.vocab_size, rank = d.markov_rank;
  const std::vector<DType> norm_t{DType::BF16, DType::F32, DType::F16};
  const std::vector<DType> f32_t{DType::F32, DType::BF16};
  Builder b(cfg, true);
  for (int64_t s = 0; s < d.stages; ++s) {
    const int idx = static_cast<int>(s);
    b.block(Scope::Mtp, idx, cfg.dspark_layer(s));
    if (s == 0) {  // main_x = main_norm(main_proj(cat of the target layers' outputs))
      b.linear(Scope::Mtp, idx, "main_proj", H, H * static_cast<int64_t>(d.target_layer_ids.size()));
      b.plain(Scope::Mtp, idx, "main_norm.weight", {H}, norm_t);
    }
    if (s == d.stages - 1) {
      b.plain(Scope::Mtp, idx, "norm.weight", {H}, norm_t);
      b.plain(Scope::Mtp, idx, "hc_head_fn", {n, n * H}, f32_t);
      b.plain(Scope::Mtp, idx, "hc_head_base", {n}, f32_t);
      b.plain(Scope::Mtp, idx, "hc_head_scale", {1}, f32_t);
      b.plain(Scope::Mtp, idx, "markov_head.markov_w1.weight", {V, rank}, {DType::BF16, DType::F16, DType::F32});
      b.linear(Scope::Mtp, idx, "markov_head.markov_w2", V, rank);
      b.linear(Scope::Mtp, idx, "confidence_head.proj", 1, H + rank, /*optional=*/true);
    }
  }
  return std::move(b.out);
}

}  // namespace kiln
