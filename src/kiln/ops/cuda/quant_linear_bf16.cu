// The bf16 linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_bf16(int mt, int rw) { return kernels::launcher_for<SchemeKind::BF16>(mt, rw); }
IndexedLaunchFn indexed_launcher_bf16(int rw) { return kernels::indexed_launcher_for<SchemeKind::BF16>(rw); }
}  // namespace kiln::ops::cuda::detail
