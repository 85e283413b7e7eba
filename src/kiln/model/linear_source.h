// Where the GPU loader finds each linear module's stored bytes: a function from the
// canonical module path ("layers.3.attn.wq_a", "mtp.0.ffn.experts.5.w2", "head") to a
// view of its on-disk tensors (ops/quant_linear.h). The views must stay valid until the
// GPU model is built (they are uploaded, not kept). No CUDA here: the GPU memory planner
// sizes the prepared weights from the same views.
#pragma once

#include <functional>
#include <string>

#include "kiln/core/dtype.h"
#include "kiln/ops/quant_linear.h"

namespace kiln {
class Checkpoint;
struct Plan;
struct PlannedLinear;
}  // namespace kiln

namespace kiln::model {

using LinearSource = std::function<ops::HostQuantLinear(const std::string& path)>;

// The view of one planned module of a checkpoint (its shards are memory-mapped, so the
// bytes stay valid while the checkpoint lives). Throws kiln::Error for what the CUDA
// kernels do not take (fp32 / fp16 linear weights, int4 with an activation order).
ops::HostQuantLinear host_view(const Checkpoint& ckpt, const PlannedLinear& m);

// host_view for every linear of the plan, looked up by canonical path.
LinearSource checkpoint_linears(const Checkpoint& ckpt, const Plan& plan);

// The same for the linears of the plan's DSpark drafter (Plan::dspark; mtp.N paths);
// kiln::Error when the plan has none.
LinearSource checkpoint_dspark_linears(const Checkpoint& ckpt, const Plan& plan);

// A plain tensor's stored bytes (a view into the mapped shard).
struct HostTensorView {
  DType dtype = DType::F32;
  ops::HostBytes bytes;
  int64_t numel = 0;
};
// The embedding (embed.weight, [vocab, hidden], BF16 / F16 / F32 on disk) of a loadable plan.
HostTensorView checkpoint_embed(const Checkpoint& ckpt, const Plan& plan);

}  // namespace kiln::model
