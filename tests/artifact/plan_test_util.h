// What the plan tests share: a plan of a test artifact written to disk, and a list of
// report lines as one text (for matching in failure messages).
#pragma once

#include <string>
#include <vector>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "support/artifacts.h"

namespace kiln::test {

inline Plan plan_of(const ArtifactSpec& spec, const TempDir& dir) {
  write_spec(spec, dir.path());
  return build_plan(Checkpoint::open(dir.path()), load_model_config(dir.path()));
}

inline std::string all(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

}  // namespace kiln::test
