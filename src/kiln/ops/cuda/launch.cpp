#include <cstdlib>
#include <cstring>

#include "kiln/ops/cuda/launch.cuh"

namespace kiln::ops::cuda {

bool pdl_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("KILN_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

}  // namespace kiln::ops::cuda
