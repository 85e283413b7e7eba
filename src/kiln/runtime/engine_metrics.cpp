#include "kiln/runtime/engine_metrics.h"

#include <algorithm>

namespace kiln::runtime {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard lk(mu_);
  ++counts_[i];
  sum_ += v;
}

Histogram::Snapshot Histogram::snapshot() const {
  std::lock_guard lk(mu_);
  Snapshot s;
  s.bounds = bounds_;
  uint64_t c = 0;
  for (uint64_t n : counts_) {
    c += n;
    s.cumulative.push_back(c);
  }
  s.sum = sum_;
  s.count = c;
  return s;
}

EngineMetrics::EngineMetrics()
    : ttft({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      tpot({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

}  // namespace kiln::runtime
