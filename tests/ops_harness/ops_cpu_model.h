// model::CpuOps over a minimal Weights (only the config fields the op reads), for the ops
// whose CPU form is a member of the ops interface's CPU implementation (embeddings,
// scale_rows, the MTP broadcast add, linear_grouped, routed_experts).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/model/cpu_ops.h"
#include "kiln/model/weights.h"

namespace kiln::ops_harness {

struct CpuModel {
  model::Weights w;
  model::Tensor embed;
  model::CpuPassRows rows;
  std::unique_ptr<model::CpuOps> cpu;

  explicit CpuModel(int64_t hidden = 1, int64_t hc_mult = 1) {
    w.config.hidden_size = hidden;
    w.config.hc_mult = hc_mult;
  }
  // The CPU ops of one pass over one sequence of `tokens` fed from position 0.
  model::CpuOps& ops(const std::vector<int32_t>& tokens) {
    rows = model::CpuPassRows{};
    rows.add(0, tokens);
    model::CpuKernels k;
    cpu = std::make_unique<model::CpuOps>(w, k, rows, nullptr, std::span<const std::span<const float>>{},
                                          std::span<const int64_t>{});
    return *cpu;
  }
};

}  // namespace kiln::ops_harness
