// What a DeepSeek-V4 checkpoint must contain for a given config: every linear module
// with its logical [out, in] shape, and every plain tensor with its shape and the dtypes
// it may be stored in. The plan matches the checkpoint against this list. The model that
// runs (backbone + classic MTP) and a DSpark drafter are listed separately.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/artifact/names.h"
#include "kiln/core/dtype.h"
#include "kiln/io/config.h"

namespace kiln {

// Which part of a checkpoint a tensor belongs to.
enum class Part : uint8_t { Main, Mtp, DSpark };

struct ExpectedTensor {
  Scope scope = Scope::Top;
  int index = -1;
  std::string module;  // canonical module (linear) or tensor (plain) inside the scope
  bool linear = false;
  int64_t n = 0, k = 0;          // linear: logical [out, in]
  std::vector<int64_t> shape;    // plain: exact shape
  std::vector<DType> dtypes;     // plain: accepted dtypes
  bool optional = false;         // MTP copies of embed/head, DSpark confidence head: used when present
  Part part = Part::Main;
  std::string group;             // report group label, e.g. "attention wq_b"

  std::string path() const;
};

// The backbone, then the classic MTP blocks (num_mtp_layers): what the model runs on.
std::vector<ExpectedTensor> expected_inventory(const ModelConfig& cfg);

// A DSpark drafter's tensors (empty without cfg.dspark), under mtp.0 .. mtp.{stages-1}
// (dspark.md 1.3-1.4): per stage a sliding-window V4 block with its own score-routed MoE;
// on stage 0 main_proj [hidden, hidden * targets] and main_norm; on the last stage the
// final norm, hc_head, the Markov head (markov_w1 embedding and markov_w2 linear, both
// [vocab, rank]) and the confidence head proj [1, hidden + rank] (optional: engines run
// without it). The embedding and LM head are the target's.
std::vector<ExpectedTensor> expected_dspark_inventory(const ModelConfig& cfg);

// The report group of a canonical module or tensor ("routed experts", "indexer wq_b", ...),
// prefixed "MTP " / "DSpark " for those parts.
std::string group_of(Part part, const std::string& module, bool linear);

}  // namespace kiln
