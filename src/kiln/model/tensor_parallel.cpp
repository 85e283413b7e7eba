#include "kiln/model/tensor_parallel.h"

#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/ops/cpu/linear_slice.h"

namespace kiln::model {

namespace {

using ops::cpu::slice_linear;

void divisible(int64_t value, int N, const char* what) {
  if (value <= 0 || value % N != 0) {
    fail_invalid("tensor parallel {}: {} {} is not divisible by {} ranks", N, what, value, N);
  }
}

Linear rows_of(const Linear& l, int64_t r0, int64_t r1, const std::string& what) {
  return slice_linear(l, r0, r1, 0, l.in, what);
}
Linear cols_of(const Linear& l, int64_t c0, int64_t c1, const std::string& what) {
  return slice_linear(l, 0, l.out, c0, c1, what);
}

template <class T>
std::vector<T> part(const std::vector<T>& v, int64_t b, int64_t e) {
  return std::vector<T>(v.begin() + b, v.begin() + e);
}

// An expert's FFN split along its intermediate dimension: w1/w3 rows, w2 columns.
Expert split_expert(const Expert& e, int rank, int N, const std::string& what) {
  const int64_t I = e.w1.out, i0 = rank * I / N, i1 = (rank + 1) * I / N;
  Expert s;
  s.w1 = rows_of(e.w1, i0, i1, what + ".w1");
  s.w3 = rows_of(e.w3, i0, i1, what + ".w3");
  s.w2 = cols_of(e.w2, i0, i1, what + ".w2");
  return s;
}

struct Splitter {
  const ModelConfig& c;
  int rank, N;
  bool ep;

  Attention attention(const Attention& a, const std::string& where) const {
    const int64_t nh = c.num_heads, D = c.head_dim, G = c.o_groups, Rlo = c.o_lora_rank;
    const int64_t h0 = rank * nh / N, h1 = (rank + 1) * nh / N;
    Attention s = a;  // replicated parts as they are; the split ones replaced below
    s.wq_b = rows_of(a.wq_b, h0 * D, h1 * D, where + ".wq_b");
    s.sink = part(a.sink, h0, h1);
    if (G % N == 0) {  // whole groups
      const int64_t g0 = rank * G / N, g1 = (rank + 1) * G / N;
      s.wo_a = rows_of(a.wo_a, g0 * Rlo, g1 * Rlo, where + ".wo_a");
      s.wo_b = cols_of(a.wo_b, g0 * Rlo, g1 * Rlo, where + ".wo_b");
    } else {  // N / G ranks share a group, each with its heads' columns
      const int64_t per = N / G, g = rank / per, sub = rank % per, width = nh * D / N;
      s.wo_a = slice_linear(a.wo_a, g * Rlo, (g + 1) * Rlo, sub * width, (sub + 1) * width, where + ".wo_a");
      s.wo_b = cols_of(a.wo_b, g * Rlo, (g + 1) * Rlo, where + ".wo_b");
    }
    s.wo_b.rank_output = ops::cpu::RankOutput::Sum;
    return s;
  }

  Moe moe(const Moe& m, const std::string& where) const {
    Moe s{{}, m.hash, m.gate, m.bias, m.tid2eid, std::nullopt};
    const int64_t E = static_cast<int64_t>(m.experts.size());
    s.experts.resize(m.experts.size());
    for (int64_t e = 0; e < E; ++e) {
      const std::string what = fmt::format("{}.experts.{}", where, e);
      if (!ep) {
        s.experts[static_cast<size_t>(e)] = split_expert(m.experts[static_cast<size_t>(e)], rank, N, what);
      } else if (e >= rank * E / N && e < (rank + 1) * E / N) {
        s.experts[static_cast<size_t>(e)] = m.experts[static_cast<size_t>(e)];
      }
    }
    if (m.shared) s.shared = split_expert(*m.shared, rank, N, where + ".shared_experts");
    return s;
  }

  Block block(const Block& b, const std::string& where) const {
    Block s{b.attn_norm, b.ffn_norm, b.hc_attn, b.hc_ffn, attention(b.attn, where + ".attn"), moe(b.ffn, where + ".ffn")};
    return s;
  }
};

}  // namespace

void check_parallel_layout(const ModelConfig& c, const ParallelLayout& p) {
  const int N = p.world;
  if (N < 1) fail(ErrorKind::Usage, "tensor parallel: {} ranks; needs at least 1", N);
  if (N == 1) return;
  divisible(c.vocab_size, N, "vocab_size");
  divisible(c.num_heads, N, "num_attention_heads");
  if (c.o_groups <= 0 || (c.o_groups % N != 0 && N % c.o_groups != 0)) {
    fail_invalid("tensor parallel {}: o_groups {} is neither a multiple nor a divisor of {} ranks", N, c.o_groups, N);
  }
  if (p.expert_parallel) {
    divisible(c.n_routed_experts, N, "n_routed_experts (expert parallel)");
  } else {
    divisible(c.moe_intermediate_size, N, "moe_intermediate_size");
  }
  if (c.n_shared_experts > 0) divisible(c.n_shared_experts * c.moe_intermediate_size, N, "shared expert width");
}

Weights shard_weights(const Weights& w, int rank, const ParallelLayout& p) {
  const ModelConfig& c = w.config;
  check_parallel_layout(c, p);
  const int N = p.world;
  if (rank < 0 || rank >= N) fail(ErrorKind::Usage, "tensor parallel: rank {} outside [0, {})", rank, N);
  if (w.shard.world != 1) fail(ErrorKind::Usage, "tensor parallel: these weights are already a rank's shard");
  const Splitter sp{c, rank, N, p.expert_parallel};
  Weights s;
  s.config = c;
  s.config.num_heads = c.num_heads / N;
  s.config.o_groups = c.o_groups % N == 0 ? c.o_groups / N : 1;
  s.precision = w.precision;
  const int64_t V = c.vocab_size, H = c.hidden_size, v0 = rank * V / N, v1 = (rank + 1) * V / N;
  s.shard.rank = rank;
  s.shard.world = N;
  s.shard.vocab_begin = v0;
  if (p.expert_parallel) {
    s.shard.expert_begin = rank * c.n_routed_experts / N;
    s.shard.expert_end = (rank + 1) * c.n_routed_experts / N;
  }
  s.embed.shape = {v1 - v0, H};
  s.embed.data.assign(w.embed.data.begin() + v0 * H, w.embed.data.begin() + v1 * H);
  s.head = rows_of(w.head, v0, v1, "head");
  s.head.rank_output = ops::cpu::RankOutput::Gather;
  s.norm = w.norm;
  s.hc_head = w.hc_head;
  for (size_t l = 0; l < w.layers.size(); ++l) s.layers.push_back(sp.block(w.layers[l], fmt::format("layers.{}", l)));
  for (size_t m = 0; m < w.mtp.size(); ++m) {
    const MtpBlock& mb = w.mtp[m];
    MtpBlock sm{mb.e_proj, mb.h_proj, mb.enorm, mb.hnorm, mb.norm, mb.hc_head, sp.block(mb.block, fmt::format("mtp.{}", m))};
    s.mtp.push_back(std::move(sm));
  }
  return s;
}

}  // namespace kiln::model
