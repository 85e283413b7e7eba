#include "kiln/quant/parallel.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::quant {

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(h);
}

void parallel_for(int64_t count, int threads, int64_t work, const std::function<void(int64_t, int64_t)>& fn,
                  int64_t align) {
  if (count <= 0) return;
  align = std::max<int64_t>(align, 1);
  const int64_t units = (count + align - 1) / align;
  int64_t t = std::min<int64_t>(resolve_threads(threads), units);
  if (work < (int64_t{1} << 18)) t = 1;
  if (t <= 1) {
    fn(0, count);
    return;
  }
  std::exception_ptr first;
  std::mutex mu;
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t - 1));
  auto run = [&](int64_t i) {
    const int64_t b = std::min(count, units * i / t * align), e = std::min(count, units * (i + 1) / t * align);
    if (b >= e) return;
    try {
      fn(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!first) first = std::current_exception();
    }
  };
  for (int64_t i = 1; i < t; ++i) pool.emplace_back(run, i);
  run(0);
  for (auto& th : pool) th.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace kiln::quant
