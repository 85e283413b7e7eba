// The mxfp4 linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_mxfp4(int mt, int rw) { return kernels::launcher_for<SchemeKind::MXFP4>(mt, rw); }
IndexedLaunchFn indexed_launcher_mxfp4(int rw) { return kernels::indexed_launcher_for<SchemeKind::MXFP4>(rw); }
}  // namespace kiln::ops::cuda::detail
