// Tests that write one linear module "m" (tensors "m.weight", "m.scale", ...) into a
// checkpoint: its PlannedLinear [n, k] with every tensor bound as a field (scheme not set;
// each test detects it with its own hints and assertions). Header-only: the test
// binaries that use it already link kiln_artifact.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"

namespace kiln::test {

inline PlannedLinear plan_module_m(const Checkpoint& ckpt, int64_t n, int64_t k) {
  PlannedLinear pl;
  pl.path = "m";
  pl.n = n;
  pl.k = k;
  for (const auto& [name, e] : ckpt.tensors()) {
    TensorSlice s;
    s.name = std::string(name);
    s.info = e.info;
    s.shard = e.shard;
    pl.fields[std::string(name.substr(2))] = s;  // "m.<field>"
  }
  return pl;
}

}  // namespace kiln::test
