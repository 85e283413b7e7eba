// The DeepSeek-V4 weight tree, written once over a backend's types: the CPU's
// (model/weights.h: prepared linears, fp32 host vectors) and the GPU's
// (model/cuda/gpu_weights.h: device linears, device arrays, the routed experts of a layer
// as one indexed set per projection). The model definition (model/definition.h) reads
// either through these field names.
//
// A backend's types B provide:
//   B::Linear           one linear module, bound to its kernel
//   B::Matrix           a dense fp32 tensor (mHC fn, compressor ape, the embedding)
//   B::Vector           fp32 values (norm weights, biases, sinks, mHC base and scale)
//   B::Ints             int32 values (hash routing's tid2eid)
//   B::Routed<Expert>   a layer's routed experts (a base of MoeT: its fields are the Moe's)
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "kiln/io/config.h"
#include "kiln/ops/linear_numerics.h"

namespace kiln::model {

// Compressor of one attention layer (main: dim = head_dim; indexer: dim = index_head_dim).
// overlap (CSA, ratio 4): wkv/wgate/ape have 2*dim rows/cols, else dim.
template <class B>
struct CompressorT {
  int64_t ratio = 0;
  int64_t dim = 0;
  bool overlap = false;
  typename B::Linear wkv, wgate;  // [c*dim, hidden]
  typename B::Matrix ape;         // [ratio, c*dim]
  typename B::Vector norm;        // [dim]
};

template <class B>
struct IndexerT {
  typename B::Linear wq_b;          // [index_n_heads * index_head_dim, q_lora_rank]
  typename B::Linear weights_proj;  // [index_n_heads, hidden]
  CompressorT<B> compressor;        // dim = index_head_dim, overlap
};

template <class B>
struct AttentionT {
  AttnKind kind = AttnKind::SWA;
  int64_t ratio = 0;
  typename B::Linear wq_a;     // [q_lora_rank, hidden]
  typename B::Vector q_norm;   // [q_lora_rank]
  typename B::Linear wq_b;     // [num_heads * head_dim, q_lora_rank]
  typename B::Linear wkv;      // [head_dim, hidden]
  typename B::Vector kv_norm;  // [head_dim]
  typename B::Linear wo_a;     // [o_groups * o_lora_rank, num_heads * head_dim / o_groups]
  typename B::Linear wo_b;     // [hidden, o_groups * o_lora_rank]
  typename B::Vector sink;     // [num_heads]
  std::optional<CompressorT<B>> compressor;  // CSA and HCA
  std::optional<IndexerT<B>> indexer;        // CSA
};

template <class B>
struct ExpertT {
  typename B::Linear w1, w2, w3;  // gate [I, H], down [H, I], up [I, H]
};

// The routed experts are the backend's (B::Routed: the CPU's `experts` vector, the GPU's
// indexed sets w1 / w2 / w3); the rest is shared.
template <class B>
struct MoeT : B::template Routed<ExpertT<B>> {
  bool hash = false;
  typename B::Linear gate;  // [n_routed_experts, hidden]
  typename B::Vector bias;  // [n_routed_experts] (score routing)
  typename B::Ints tid2eid;  // [vocab, num_experts_per_tok] (hash routing)
  std::optional<ExpertT<B>> shared;  // n_shared_experts * moe_intermediate_size wide
};

// mHC parameters of one sub-block: fn [(2+n)*n, n*H], base [(2+n)*n], scale [3].
template <class B>
struct HyperConnectionT {
  typename B::Matrix fn;
  typename B::Vector base;
  typename B::Vector scale;
};

// Final stream collapse: fn [n, n*H], base [n], scale [1].
template <class B>
struct HyperHeadT {
  typename B::Matrix fn;
  typename B::Vector base;
  float scale = 1.0f;
};

template <class B>
struct BlockT {
  typename B::Vector attn_norm, ffn_norm;  // [hidden]
  HyperConnectionT<B> hc_attn, hc_ffn;
  AttentionT<B> attn;
  MoeT<B> ffn;
};

template <class B>
struct MtpBlockT {
  typename B::Linear e_proj, h_proj;              // [hidden, hidden]
  typename B::Vector enorm, hnorm, norm;          // [hidden]
  HyperHeadT<B> hc_head;
  BlockT<B> block;  // SWA attention (ratio from config), score-routed MoE
};

// Which part of the model a tensor-parallel rank holds (model/tensor_parallel.h); the
// defaults describe the whole model on one rank.
struct RankShard {
  int rank = 0, world = 1;
  int64_t vocab_begin = 0;                    // embed holds rows [vocab_begin, vocab_begin + embed rows)
  int64_t expert_begin = 0, expert_end = -1;  // routed experts held whole (-1: all; else [begin, end))
};

template <class B>
struct WeightsT {
  // For a rank's shard: num_attention_heads and o_groups are the rank's own.
  ModelConfig config;
  RankShard shard;
  // The precision the linears' numerics are set for (set_precision); the model's ops read
  // it for the activations (model/definition.h).
  ops::Precision precision = ops::Precision::Exact;
  typename B::Matrix embed;  // [vocab, hidden]
  typename B::Linear head;   // [vocab, hidden]
  typename B::Vector norm;   // [hidden]
  HyperHeadT<B> hc_head;
  std::vector<BlockT<B>> layers;
  std::vector<MtpBlockT<B>> mtp;  // empty when the checkpoint has no MTP block (a DSpark drafter is not loaded)
};

}  // namespace kiln::model
