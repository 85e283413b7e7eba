// DeepSeek-V4 weights as the CPU reference uses them (the tree of model/weights_tree.h over
// the CPU's types): every tensor bound from the plan by canonical name. Linear modules stay in their on-disk quantized form (prepared for
// the kernels of ops/cpu/quant_linear.h) unless the caller asks for fp32; every other
// tensor is exactly dequantized to fp32, row-major. Nothing here knows a checkpoint name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/io/config.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/model/weights_tree.h"

namespace kiln {
class Checkpoint;
struct Plan;
struct PlannedLinear;
struct TensorSlice;
}  // namespace kiln

namespace kiln::model {

// y = x W^T with W [out, in] row-major: fp32 (`w`) or quantized with its kernel bound.
using Linear = ops::cpu::PreparedLinear;

// A dense fp32 tensor with its shape.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// The CPU's types for the weight tree (model/weights_tree.h).
struct CpuWeightTypes {
  using Linear = model::Linear;
  using Matrix = Tensor;
  using Vector = std::vector<float>;
  using Ints = std::vector<int32_t>;
  template <class Expert>
  struct Routed {
    std::vector<Expert> experts;  // by id (a rank's shard: empty where another rank holds it)
  };
};

using Compressor = CompressorT<CpuWeightTypes>;
using Indexer = IndexerT<CpuWeightTypes>;
using Attention = AttentionT<CpuWeightTypes>;
using Expert = ExpertT<CpuWeightTypes>;
using Moe = MoeT<CpuWeightTypes>;
using HyperConnection = HyperConnectionT<CpuWeightTypes>;
using HyperHead = HyperHeadT<CpuWeightTypes>;
using Block = BlockT<CpuWeightTypes>;
using MtpBlock = MtpBlockT<CpuWeightTypes>;
using Weights = WeightsT<CpuWeightTypes>;

struct LoadOptions {
  // true: every linear module is dequantized to fp32 at load (4 bytes per weight); false:
  // quantized and 16-bit modules keep their stored form and decode inside the kernel
  // (bitwise the same results, fewer resident bytes).
  bool dequantize = false;
  // true: linear modules are bound without their bytes (Linear::out / in set, nothing
  // resident). For a backend that reads them from the mapped shards itself (the CUDA
  // loader): no host copy of the model. Such Weights cannot run the CPU forward.
  bool skip_linears = false;
  // true: embed.weight is left empty (Weights::embed.shape set, no data), for the same reason.
  bool skip_embed = false;
};

// `count` stored values of float dtype `dt` (F32, BF16, F16, F8_E8M0 or U8 as E8M0,
// F8_E4M3) decoded to fp32 exactly, as load_weights decodes every plain tensor.
void decode_floats(DType dt, const std::byte* src, int64_t count, float* dst);

// The rotary embedding of one of the config's two ropes (SWA layers: rope_main; CSA/HCA:
// rope_compress) over the last rope_head_dim channels, as both backends build it.
ops::cpu::RopeSpec rope_spec(const ModelConfig& c, const RopeParams& p);

// f(linear, role) for every linear module of w (W: Weights or const Weights), with its role
// in DeepSeek's code (ops/linear_numerics.h).
// Every expert's projections (routed or shared) have this role.
inline constexpr ops::LinearRole kExpertRole = ops::LinearRole::Quantized;

// f(linear, role) for every linear module of one block (B: Block or const Block).
template <class B, class F>
void for_each_block_linear(B& b, F&& f) {
  using R = ops::LinearRole;
  auto expert = [&](auto& e) {
    f(e.w1, kExpertRole);
    f(e.w2, kExpertRole);
    f(e.w3, kExpertRole);
  };
  auto compressor = [&](auto& c) {
    f(c.wkv, R::Fp32);
    f(c.wgate, R::Fp32);
  };
  auto& a = b.attn;
  f(a.wq_a, R::Quantized);
  f(a.wq_b, R::Quantized);
  f(a.wkv, R::Quantized);
  f(a.wo_a, R::Bf16);
  f(a.wo_b, R::Quantized);
  if (a.compressor) compressor(*a.compressor);
  if (a.indexer) {
    f(a.indexer->wq_b, R::Quantized);
    f(a.indexer->weights_proj, R::Bf16);
    compressor(a.indexer->compressor);
  }
  f(b.ffn.gate, R::Fp32);
  for (auto& e : b.ffn.experts) expert(e);
  if (b.ffn.shared) expert(*b.ffn.shared);
}

template <class W, class F>
void for_each_linear(W& w, F&& f) {
  using R = ops::LinearRole;
  f(w.head, R::Fp32);
  for (auto& b : w.layers) for_each_block_linear(b, f);
  for (auto& m : w.mtp) {
    f(m.e_proj, R::Quantized);
    f(m.h_proj, R::Quantized);
    for_each_block_linear(m.block, f);
  }
}

// Sets every linear's numerics (ops/linear_numerics.h) from its role in DeepSeek's code and
// its stored scheme, and w.precision.
void set_precision(Weights& w, ops::Precision p);

// Resident bytes of all linear modules' weights (fp32 or prepared quantized form).
uint64_t linear_weight_bytes(const Weights& w);
// Resident bytes of everything else: the fp32 plain tensors (embedding, norms, mHC, sinks,
// compressor biases, router biases) and tid2eid.
uint64_t plain_weight_bytes(const Weights& w);

// Why a model with config `c` and `mtp_blocks` loaded MTP blocks cannot decode with MTP
// drafts, as the words after its name: "has no MTP block to draft with", or for a DSpark
// checkpoint (whose drafter is neither loaded nor run) that it has a DSpark drafter and
// kiln does not implement DSpark drafting yet. Empty when it can.
std::string mtp_unavailable(const ModelConfig& c, size_t mtp_blocks);

// Binds every planned tensor (the plan must be loadable); linears as `opt` says, the
// rest dequantized to fp32. Every scheme decodes exactly (quant/dequantize.h): bf16/f16/f32
// as stored; fp8_block as e4m3 x block scale (E8M0, F32, BF16, F16 or U8-as-E8M0); mxfp4 as
// e2m1 x 2^(s-127); nvfp4 as e2m1 x e4m3 group scale x global multiplier (either on-disk
// convention, normalised by artifact/linear_view.h); int4_group as (u - 8 or u - zero
// point) x group scale, honouring g_idx.
Weights load_weights(const Checkpoint& ckpt, const Plan& plan, const LoadOptions& opt = {});

// One planned linear module, dequantized to fp32 [n, k] (quant/dequantize.h: the scheme's
// formula above), read through the plan's roles (artifact/linear_view.h).
Linear dequantize_linear(const Checkpoint& ckpt, const PlannedLinear& module);

// One planned linear module in its stored form with its decoder bound (fp32 weights,
// which have nothing to save, come back as dequantize_linear gives them).
Linear prepare_linear(const Checkpoint& ckpt, const PlannedLinear& module);

}  // namespace kiln::model
