// A model ready to run on the CPU reference backend: config, checkpoint, plan,
// dequantized weights and the forward, loaded in that order with progress lines.
#pragma once

#include <filesystem>
#include <memory>
#include <ostream>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/model/forward.h"
#include "kiln/model/weights.h"

namespace kiln::runtime {

struct LoadedModel {
  ModelConfig config;
  Checkpoint checkpoint;
  Plan plan;
  model::Weights weights;
  std::unique_ptr<model::Forward> forward;
};

// Throws kiln::Error (Invalid with the plan's first errors when not loadable).
// progress: where to print load progress (nullptr = silent). opt: how linear weights are
// held (default: in their stored form, decoded inside the kernels); with opt.skip_linears
// or opt.skip_embed there is no CPU forward (`forward` stays null).
std::unique_ptr<LoadedModel> load_model(const std::filesystem::path& dir, int threads, std::ostream* progress,
                                        const model::LoadOptions& opt = {});

}  // namespace kiln::runtime
