// Achievable device-memory read bandwidth: a streaming read kernel (16-byte loads that
// bypass L1, several in flight per thread) over a buffer far larger than L2.
#pragma once

#include <cstddef>

namespace kiln::ops::cuda {

struct ReadBandwidth {
  double bytes_per_s = 0;  // best configuration, median of its repetitions
  size_t bytes = 0;        // buffer size read per pass
  int blocks_per_sm = 0;   // the configuration that gave it
};

// Reads a `bytes` buffer (filled with a non-zero pattern) `reps` times per configuration.
ReadBandwidth measure_read_bandwidth(size_t bytes, int reps);

}  // namespace kiln::ops::cuda
