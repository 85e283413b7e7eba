// Prometheus text exposition (format 0.0.4) of the engine's and the HTTP layer's metrics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "kiln/runtime/engine_metrics.h"

namespace kiln::server {

// Responses by status class, counted by the HTTP layer.
struct HttpCounters {
  static constexpr std::array<int, 9> kStatuses{200, 400, 401, 404, 405, 413, 429, 500, 503};
  std::array<std::atomic<uint64_t>, kStatuses.size() + 1> by_status{};  // last: any other
  void count(int status);
};

std::string render_metrics(const runtime::EngineMetrics& m, const HttpCounters& http, int64_t open_requests);

}  // namespace kiln::server
