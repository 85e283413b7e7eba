// The median device time of a call: CUDA events around each of `reps` calls on the default
// stream, after the caller's warm-up. For the hardware anchors kiln bench measures in the
// same run (read bandwidth, the FP8 GEMM).
#pragma once

#include <functional>

namespace kiln::ops::cuda {

float median_event_ms(int reps, const std::function<void()>& call);

}  // namespace kiln::ops::cuda
