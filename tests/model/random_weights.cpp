#include "random_weights.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace kiln::test {

ModelConfig tiny_forward_config(const std::vector<int64_t>& ratios, int64_t num_hash_layers, int64_t mtp_layers) {
  ModelConfig c;
  c.model_type = "deepseek_v4";
  c.vocab_size = 97;
  c.hidden_size = 48;
  c.num_layers = static_cast<int64_t>(ratios.size());
  c.num_mtp_layers = mtp_layers;
  c.num_heads = 4;
  c.num_kv_heads = 1;
  c.head_dim = 32;
  c.rope_head_dim = 8;
  c.q_lora_rank = 24;
  c.o_lora_rank = 12;
  c.o_groups = 2;
  c.sliding_window = 8;
  for (int64_t r : ratios) {
    c.compress_ratios.push_back(r);
    c.attn_kinds.push_back(r == 0 ? AttnKind::SWA : r == 4 ? AttnKind::CSA : AttnKind::HCA);
  }
  for (int64_t i = 0; i < mtp_layers; ++i) {
    c.compress_ratios.push_back(0);
    c.attn_kinds.push_back(AttnKind::SWA);
  }
  c.num_hash_layers = num_hash_layers;
  c.hash_layers.assign(ratios.size(), false);
  for (int64_t i = 0; i < num_hash_layers && i < c.num_layers; ++i) c.hash_layers[static_cast<size_t>(i)] = true;
  c.index_n_heads = 8;
  c.index_head_dim = 16;
  c.index_topk = 3;
  c.n_routed_experts = 6;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 20;
  c.scoring_func = ScoringFunc::SqrtSoftplus;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 1.5;
  c.swiglu_limit = 1.0;  // small enough that the clamp is exercised
  c.hc_mult = 4;
  c.hc_sinkhorn_iters = 20;
  c.hc_eps = 1e-6;
  c.rms_norm_eps = 1e-6;
  c.rope_main.theta = 10000.0;
  c.rope_compress.theta = 160000.0;
  c.rope_compress.yarn = true;
  c.rope_compress.factor = 4.0;
  c.rope_compress.original_max_position = 4096;  // ramp bounds 1 and 3 of 4 pairs
  c.rope_compress.beta_fast = 32.0;
  c.rope_compress.beta_slow = 1.0;
  c.max_position_embeddings = 16384;
  return c;
}

namespace {

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  float normal(double std, double mean = 0.0) { return static_cast<float>(std::normal_distribution<double>(mean, std)(g)); }
  float uniform(double a, double b) { return static_cast<float>(std::uniform_real_distribution<double>(a, b)(g)); }
  std::vector<float> normals(int64_t n, double std, double mean = 0.0) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = normal(std, mean);
    return v;
  }
  model::Linear linear(int64_t out, int64_t in) {
    model::Linear l;
    l.out = out;
    l.in = in;
    l.w = normals(out * in, 1.0 / std::sqrt(static_cast<double>(in)));
    return l;
  }
  std::vector<float> norm(int64_t n) { return normals(n, 0.25, 1.0); }
  model::Tensor tensor(std::vector<int64_t> shape, double std) {
    model::Tensor t;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.shape = std::move(shape);
    t.data = normals(n, std);
    return t;
  }
};

model::Compressor compressor(Rng& r, const ModelConfig& c, int64_t ratio, int64_t dim, bool overlap) {
  model::Compressor cp;
  cp.ratio = ratio;
  cp.dim = dim;
  cp.overlap = overlap;
  const int64_t w = (overlap ? 2 : 1) * dim;
  cp.wkv = r.linear(w, c.hidden_size);
  cp.wgate = r.linear(w, c.hidden_size);
  cp.ape = r.tensor({ratio, w}, 0.5);
  cp.norm = r.norm(dim);
  return cp;
}

model::Expert expert(Rng& r, int64_t H, int64_t I) {
  model::Expert e;
  e.w1 = r.linear(I, H);
  e.w2 = r.linear(H, I);
  e.w3 = r.linear(I, H);
  return e;
}

model::Block block(Rng& r, const ModelConfig& c, int64_t layer) {
  const int64_t H = c.hidden_size, n = c.hc_mult, mix = (2 + n) * n;
  model::Block b;
  b.attn_norm = r.norm(H);
  b.ffn_norm = r.norm(H);
  for (model::HyperConnection* hc : {&b.hc_attn, &b.hc_ffn}) {
    hc->fn = r.tensor({mix, n * H}, 1.0 / std::sqrt(static_cast<double>(n * H)));
    hc->base = r.normals(mix, 0.5);
    hc->scale = {r.uniform(0.5, 1.5), r.uniform(0.5, 1.5), r.uniform(0.5, 1.5)};
  }
  model::Attention& a = b.attn;
  a.kind = c.attn_kind(layer);
  a.ratio = c.compress_ratio(layer);
  const int64_t D = c.head_dim, nh = c.num_heads, G = c.o_groups, R = c.o_lora_rank;
  a.wq_a = r.linear(c.q_lora_rank, H);
  a.q_norm = r.norm(c.q_lora_rank);
  a.wq_b = r.linear(nh * D, c.q_lora_rank);
  a.wkv = r.linear(D, H);
  a.kv_norm = r.norm(D);
  a.wo_a = r.linear(G * R, nh * D / G);
  a.wo_b = r.linear(H, G * R);
  a.sink = r.normals(nh, 1.0);
  if (a.kind != AttnKind::SWA) a.compressor = compressor(r, c, a.ratio, D, a.kind == AttnKind::CSA);
  if (a.kind == AttnKind::CSA) {
    model::Indexer ix;
    ix.wq_b = r.linear(c.index_n_heads * c.index_head_dim, c.q_lora_rank);
    ix.weights_proj = r.linear(c.index_n_heads, H);
    ix.compressor = compressor(r, c, a.ratio, c.index_head_dim, true);
    a.indexer = std::move(ix);
  }
  model::Moe& m = b.ffn;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  m.hash = c.is_hash_layer(layer);
  m.gate = r.linear(E, H);
  if (m.hash) {
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      std::vector<int32_t> ids(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) ids[static_cast<size_t>(e)] = static_cast<int32_t>(e);
      std::shuffle(ids.begin(), ids.end(), r.g);
      m.tid2eid.insert(m.tid2eid.end(), ids.begin(), ids.begin() + K);
    }
  } else {
    m.bias = r.normals(E, 0.1);
  }
  for (int64_t e = 0; e < E; ++e) m.experts.push_back(expert(r, H, c.moe_intermediate_size));
  m.shared = expert(r, H, c.n_shared_experts * c.moe_intermediate_size);
  return b;
}

}  // namespace

model::Weights random_weights(const ModelConfig& c, uint64_t seed) {
  Rng r(seed);
  const int64_t H = c.hidden_size, n = c.hc_mult;
  model::Weights w;
  w.config = c;
  w.embed = r.tensor({c.vocab_size, H}, 1.0);
  w.head = r.linear(c.vocab_size, H);
  w.norm = r.norm(H);
  w.hc_head.fn = r.tensor({n, n * H}, 1.0 / std::sqrt(static_cast<double>(n * H)));
  w.hc_head.base = r.normals(n, 0.5);
  w.hc_head.scale = r.uniform(0.5, 1.5);
  for (int64_t l = 0; l < c.num_layers; ++l) w.layers.push_back(block(r, c, l));
  for (int64_t m = 0; m < c.num_mtp_layers; ++m) {
    model::MtpBlock mb;
    mb.e_proj = r.linear(H, H);
    mb.h_proj = r.linear(H, H);
    mb.enorm = r.norm(H);
    mb.hnorm = r.norm(H);
    mb.norm = r.norm(H);
    mb.hc_head.fn = r.tensor({n, n * H}, 1.0 / std::sqrt(static_cast<double>(n * H)));
    mb.hc_head.base = r.normals(n, 0.5);
    mb.hc_head.scale = r.uniform(0.5, 1.5);
    mb.block = block(r, c, c.num_layers + m);
    w.mtp.push_back(std::move(mb));
  }
  return w;
}

std::vector<int32_t> random_tokens(int64_t T, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(T));
  for (auto& x : t) x = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, vocab - 1)(g));
  return t;
}

const model::Weights& every_kind_weights() {
  static const model::Weights w = random_weights(tiny_forward_config({0, 4, 16, 4, 8}, /*num_hash_layers=*/1, /*mtp=*/1), 7);
  return w;
}

}  // namespace kiln::test
