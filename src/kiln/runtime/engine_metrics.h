// Counters and latency histograms of the continuous-batching engine, updated by its
// scheduler thread and read at any time (the server renders them as Prometheus text).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "kiln/runtime/speculative.h"

namespace kiln::runtime {

// DSpark drafts per round: at most DeepSeek's largest block (gamma = 5, ../shared/docs/
// dspark.md); the engine refuses a drafter whose dspark_block_size is larger.
inline constexpr int kMaxDSparkDrafts = 5;
// Draft positions a round may have with either drafter (MTP: kMaxDrafts): what the
// per-position counters hold and what a request's `mtp` may ask for.
inline constexpr int kMaxDraftPositions = std::max(kMaxDrafts, kMaxDSparkDrafts);

// A cumulative histogram with fixed upper bounds (seconds), as Prometheus expects.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf last
    double sum = 0.0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // non-cumulative, bounds_.size() + 1
  double sum_ = 0.0;
};

struct EngineMetrics {
  EngineMetrics();
  std::atomic<uint64_t> requests_total{0}, requests_finished{0}, requests_cancelled{0}, requests_rejected{0},
      requests_failed{0};
  std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0};
  std::atomic<int64_t> waiting{0}, running{0};
  std::atomic<uint64_t> steps{0};
  // Host wall time of the scheduler's steps, by phase (nanoseconds, cumulative): drafting
  // (DSpark block pass and Markov loop, or MTP draft passes 2..K), the main pass (prompt
  // chunks, decode and verify rows), the drafter's catch-up (MTP block rows or DSpark ring
  // commits for the committed positions) and the rest (scheduling, acceptance, sampling,
  // streaming). A backend that queues work without waiting shows it in the phase that next
  // waits for the device.
  enum Phase : size_t { kDraft, kMain, kCatchUp, kOther, kPhases };
  static constexpr std::array<const char*, kPhases> kPhaseNames{"draft", "main", "catch_up", "other"};
  std::array<std::atomic<uint64_t>, kPhases> step_ns{};
  // Speculative decoding (MTP or DSpark), per draft position.
  std::array<std::atomic<uint64_t>, kMaxDraftPositions> mtp_proposed{}, mtp_accepted{};
  Histogram ttft;  // seconds from submit to the first token
  Histogram tpot;  // seconds between consecutive tokens of a request (per token)
};

}  // namespace kiln::runtime
