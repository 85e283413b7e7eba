// The fp8_block linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_fp8_block(int mt) { return kernels::launcher_for_tile<LinearScheme::FP8Block>(mt); }
}  // namespace kiln::ops::cuda::detail
