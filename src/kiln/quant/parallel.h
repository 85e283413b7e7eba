// Internal to quant/ and its callers: splitting independent row ranges over threads.
#pragma once

#include <cstdint>
#include <functional>

namespace kiln::quant {

// 0 -> the hardware's concurrency (at least 1).
int resolve_threads(int threads);

// Calls fn(begin, end) on contiguous sub-ranges of [0, count) covering it once, on up to
// `threads` threads (0 = all cores); ranges start at multiples of `align`. Runs inline
// when `work` (an estimate of elements touched) is small. The first exception thrown by
// any range is rethrown after all ranges finish.
void parallel_for(int64_t count, int threads, int64_t work, const std::function<void(int64_t, int64_t)>& fn,
                  int64_t align = 1);

}  // namespace kiln::quant
