// This process's host memory as Linux reports it (/proc/self/status), and a sampler of
// its peak anonymous memory over an interval: the kernel keeps the peak of the whole
// resident set (VmHWM, file-backed pages of mapped checkpoints included) but not of
// RssAnon, the memory a load itself allocates.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

namespace kiln::runtime {

struct HostMemory {
  int64_t rss_anon = -1;  // bytes; -1 where /proc/self/status does not say
  int64_t vm_rss = -1;
  int64_t vm_hwm = -1;    // peak resident set of the process so far
};
HostMemory read_host_memory();
// Parses the text of a /proc/<pid>/status file (kB values).
HostMemory parse_host_memory(const std::string& status);

// Reads RssAnon every `period` from construction until stop() (or destruction) and keeps
// the largest value (and the value at construction and at the end).
class PeakAnonSampler {
 public:
  explicit PeakAnonSampler(std::chrono::milliseconds period = std::chrono::milliseconds(5));
  ~PeakAnonSampler();
  PeakAnonSampler(const PeakAnonSampler&) = delete;
  PeakAnonSampler& operator=(const PeakAnonSampler&) = delete;
  void stop();
  int64_t peak() const { return peak_.load(); }  // -1 when unavailable

 private:
  void sample();
  std::chrono::milliseconds period_;
  std::atomic<int64_t> peak_{-1};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace kiln::runtime
