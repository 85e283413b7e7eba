// A small fixed thread pool for the CPU reference kernels: parallel_for splits an index
// range into one contiguous slice per thread (the caller runs the first slice). Kernels
// that use it compute every output element with the same instruction sequence whatever
// the split, so results do not depend on the number of threads.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::ops::cpu {

class ThreadPool {
 public:
  // threads: total threads including the caller (0 = hardware concurrency, at least 1).
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) over disjoint slices covering [0, n); returns when all are done.
  // Slices are at least `grain` long (fewer threads are used for small n). Calls from
  // several threads at once are serialised. fn must not throw.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker(int index);

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex m_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int active_ = 0;   // threads taking part in the current job (caller included)
  int pending_ = 0;  // workers still running the current job
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// Slice [begin, end) of [0, n) for part `i` of `parts` (balanced, contiguous).
inline void split_range(int64_t n, int parts, int i, int64_t& begin, int64_t& end) {
  const int64_t q = n / parts, r = n % parts;
  begin = i * q + (i < r ? i : r);
  end = begin + q + (i < r ? 1 : 0);
}

}  // namespace kiln::ops::cpu
