// The nvfp4 linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_nvfp4(int mt, int rw) { return kernels::launcher_for<SchemeKind::NVFP4>(mt, rw); }
IndexedLaunchFn indexed_launcher_nvfp4(int rw) { return kernels::indexed_launcher_for<SchemeKind::NVFP4>(rw); }
}  // namespace kiln::ops::cuda::detail
