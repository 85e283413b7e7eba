// The int4_group linear kernels (one translation unit per scheme so they compile in parallel).
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda::detail {
LaunchFn launcher_int4_group(int mt, int rw) { return kernels::launcher_for<SchemeKind::Int4Group>(mt, rw); }
IndexedLaunchFn indexed_launcher_int4_group(int rw) { return kernels::indexed_launcher_for<SchemeKind::Int4Group>(rw); }
}  // namespace kiln::ops::cuda::detail
