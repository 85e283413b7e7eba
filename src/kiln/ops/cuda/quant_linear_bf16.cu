// The bf16 linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_bf16(int mt) { return kernels::launcher_for_tile<LinearScheme::BF16>(mt); }
}  // namespace kiln::ops::cuda::detail
