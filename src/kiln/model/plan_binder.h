// Binds planned tensors (artifact/plan.h) to the model's weight structures: linears in
// their stored form (or dequantized to fp32, or shapes only), everything else decoded to
// fp32. The backbone and MTP blocks (weights.cpp) and the DSpark drafter
// (dspark_weights.cpp) are bound through it.
#pragma once

#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/model/weights.h"

namespace kiln {
class Checkpoint;
struct PlannedLinear;
struct PlannedTensor;
}  // namespace kiln

namespace kiln::model {

class PlanBinder {
 public:
  // `what` starts the message for a path that is not planned ("internal: the plan",
  // "<dir>: the DSpark drafter"): "<what> has no linear module <path>".
  PlanBinder(const Checkpoint& ckpt, std::span<const PlannedLinear> linears, std::span<const PlannedTensor> tensors,
             const LoadOptions& opt, std::string what);

  Linear linear(const std::string& path) const;
  bool has_linear(const std::string& path) const { return linears_.count(path) != 0; }
  bool has_tensor(const std::string& path) const { return tensors_.count(path) != 0; }

  std::vector<float> floats(const std::string& path) const;
  Tensor tensor(const std::string& path) const;
  std::vector<int32_t> ints(const std::string& path) const;  // I32 or I64 stored

  // mHC of a block (hc_{attn,ffn}_{fn,base,scale}) and of the head (hc_head_*).
  HyperConnection hyper(const std::string& prefix, const char* sub) const;
  HyperHead hyper_head(const std::string& prefix) const;
  // What every block binds the same way: its norms, both mHC and the attention
  // projections, norms and sink (attn.wq_a ... attn.attn_sink), with the attention's kind
  // and ratio; the caller adds the compressor, indexer and MoE.
  Block block_base(const std::string& prefix, AttnKind kind, int64_t ratio) const;
  // An expert's w1, w2, w3 under `prefix` ("...experts.N." or "...shared_experts.").
  Expert expert(const std::string& prefix) const;

 private:
  const PlannedTensor& get(const std::string& path) const;

  const Checkpoint& ckpt_;
  LoadOptions opt_;
  std::string what_;
  std::unordered_map<std::string, const PlannedLinear*> linears_;
  std::unordered_map<std::string, const PlannedTensor*> tensors_;
};

}  // namespace kiln::model
