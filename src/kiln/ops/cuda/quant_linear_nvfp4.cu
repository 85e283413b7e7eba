// The nvfp4 linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_nvfp4(int mt) { return kernels::launcher_for_tile<LinearScheme::NVFP4>(mt); }
}  // namespace kiln::ops::cuda::detail
