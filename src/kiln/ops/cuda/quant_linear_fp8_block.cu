// The fp8_block linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_fp8_block(int mt, int rw) { return kernels::launcher_for<SchemeKind::FP8Block>(mt, rw); }
IndexedLaunchFn indexed_launcher_fp8_block(int rw) { return kernels::indexed_launcher_for<SchemeKind::FP8Block>(rw); }
}  // namespace kiln::ops::cuda::detail
