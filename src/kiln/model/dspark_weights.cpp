// Binds a DSpark drafter's planned tensors (Plan::dspark, artifact/plan.h) to
// DSparkWeights (model/dspark.h): linears in their stored form (or fp32), everything else
// decoded to fp32. The plan has already matched every tensor and checked every shape.
#include <fmt/format.h>

#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/model/dspark.h"
#include "kiln/model/plan_binder.h"

namespace kiln::model {

namespace {

// A stage: a sliding-window V4 block with a score-routed MoE (dspark.md 1.3).
Block stage_block(const PlanBinder& b, const ModelConfig& cfg, const std::string& p) {
  Block bl = b.block_base(p, AttnKind::SWA, 0);
  Moe& f = bl.ffn;
  f.gate = b.linear(p + "ffn.gate");
  f.bias = b.floats(p + "ffn.gate.bias");
  for (int64_t e = 0; e < cfg.n_routed_experts; ++e) {
    const std::string q = fmt::format("{}ffn.experts.{}.", p, e);
    f.experts.push_back(b.expert(q));
  }
  if (b.has_linear(p + "ffn.shared_experts.w1")) {
    f.shared = b.expert(p + "ffn.shared_experts.");
  }
  return bl;
}

}  // namespace

DSparkWeights load_dspark_weights(const Checkpoint& ckpt, const Plan& plan, const LoadOptions& opt) {
  const ModelConfig& cfg = plan.config;
  const std::string dir = ckpt.dir().string();
  if (!cfg.dspark || !plan.dspark) fail_invalid("{}: config.json declares no DSpark drafter (no dspark_* keys)", dir);
  if (!plan.loadable()) {
    std::string why;
    for (size_t i = 0; i < plan.missing.size() && i < 3; ++i) why += "; missing " + plan.missing[i];
    for (size_t i = 0; i < plan.errors.size() && i < 3; ++i) why += "; " + plan.errors[i];
    fail_invalid("{}: the checkpoint is not loadable{}", dir, why);
  }
  const DSparkConfig& d = *cfg.dspark;
  if (static_cast<int64_t>(plan.dspark->stages_found.size()) != d.stages) {
    fail_invalid("{}: config.json declares a DSpark drafter of {} stages but the checkpoint holds {} (mtp.N tensors)", dir,
                 d.stages, plan.dspark->stages_found.size());
  }
  const PlanBinder b(ckpt, plan.dspark->linears, plan.dspark->tensors, opt, dir + ": the DSpark drafter");
  DSparkWeights w;
  w.config = d;
  w.main_proj = b.linear("mtp.0.main_proj");
  w.main_norm = b.floats("mtp.0.main_norm.weight");
  for (int64_t s = 0; s < d.stages; ++s) w.stages.push_back(stage_block(b, cfg, fmt::format("mtp.{}.", s)));
  const std::string last = fmt::format("mtp.{}.", d.stages - 1);
  w.norm = b.floats(last + "norm.weight");
  w.hc_head = b.hyper_head(last);
  w.markov_w1 = b.tensor(last + "markov_head.markov_w1.weight");
  w.markov_w2 = b.linear(last + "markov_head.markov_w2");
  if (plan.dspark->confidence_head) {
    // [1, H + rank]: one row, used as a vector.
    const Linear c = dequantize_linear(ckpt, [&]() -> const PlannedLinear& {
      for (const auto& l : plan.dspark->linears) {
        if (l.path == last + "confidence_head.proj") return l;
      }
      fail_invalid("{}: the DSpark drafter's confidence head {}confidence_head.proj is not planned", dir, last);
    }());
    w.confidence = c.w;
  }
  return w;
}

}  // namespace kiln::model
