// What a DeepSeek-V4 checkpoint must contain for a given config: every linear module
// with its logical [out, in] shape, and every plain tensor with its shape and the dtypes
// it may be stored in. The plan matches the checkpoint against this list.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/artifact/names.h"
#include "kiln/core/dtype.h"
#include "kiln/io/config.h"

namespace kiln {

struct ExpectedTensor {
  Scope scope = Scope::Top;
  int index = -1;
  std::string module;  // canonical module (linear) or tensor (plain) inside the scope
  bool linear = false;
  int64_t n = 0, k = 0;          // linear: logical [out, in]
  std::vector<int64_t> shape;    // plain: exact shape
  std::vector<DType> dtypes;     // plain: accepted dtypes
  bool optional = false;         // MTP copies of embed/head: used when present
  std::string group;             // report group label, e.g. "attention wq_b"

  std::string path() const;
};

std::vector<ExpectedTensor> expected_inventory(const ModelConfig& cfg);

// The report group of a canonical module or tensor ("routed experts", "indexer wq_b", ...).
std::string group_of(Scope scope, const std::string& module, bool linear);

}  // namespace kiln
