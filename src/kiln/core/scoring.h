// The MoE router's score function: config.json's scoring_func, DeepSeek's Gate.score_func
// (inference/model.py). One enum for the config, the model and both backends' routing.
#pragma once

#include <cstdint>
#include <string_view>

namespace kiln {

enum class ScoringFunc : uint8_t {
  SqrtSoftplus,  // sqrt(softplus(logit)) per expert (DeepSeek-V4)
  Softmax,       // softmax over all experts of the row
  Sigmoid,       // sigmoid(logit) per expert
};

// "sqrtsoftplus", "softmax", "sigmoid": the config.json spelling.
constexpr std::string_view scoring_func_name(ScoringFunc f) {
  switch (f) {
    case ScoringFunc::SqrtSoftplus: return "sqrtsoftplus";
    case ScoringFunc::Softmax: return "softmax";
    case ScoringFunc::Sigmoid: return "sigmoid";
  }
  return "?";
}

// DeepSeek's Gate renormalises the selected experts' weights to sum to one for every
// score function but softmax, whose probabilities over all experts are used as they are.
constexpr bool scoring_renormalises(ScoringFunc f) { return f != ScoringFunc::Softmax; }

}  // namespace kiln
