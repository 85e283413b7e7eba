#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kiln/ops/cuda/launch.cuh"

namespace kiln::ops::cuda {

namespace {
std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> on{[] {
    const char* v = std::getenv("KILN_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }()};
  return on;
}
}  // namespace

bool pdl_enabled() { return pdl_flag().load(std::memory_order_relaxed); }

void set_pdl_enabled(bool on) { pdl_flag().store(on, std::memory_order_relaxed); }

}  // namespace kiln::ops::cuda
