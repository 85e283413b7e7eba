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

thread_local bool scope_on = true;

}  // namespace

bool pdl_enabled() { return scope_on && pdl_flag().load(std::memory_order_relaxed); }

void set_pdl_enabled(bool on) { pdl_flag().store(on, std::memory_order_relaxed); }

PdlScope::PdlScope(bool on) : prev_(scope_on) { scope_on = on; }

PdlScope::~PdlScope() { scope_on = prev_; }

}  // namespace kiln::ops::cuda
