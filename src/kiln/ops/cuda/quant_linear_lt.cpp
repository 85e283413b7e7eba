// The cuBLASLt path of BF16 linears for M >= kLtMinRows (prefill chunks, large decode
// batches), where the CUDA-core kernels of quant_linear_kernels.cuh are compute-bound.
//
// Exactness: the activations are fp32 and the tensor cores take bf16, so x is split into
// x_hi = bf16(x) and x_lo = bf16(x - x_hi), and y = W x_hi + W x_lo (two products, the
// second accumulating into the first, fp32 accumulation). Each bf16 x bf16 product is
// exact in fp32, and x_hi + x_lo equals x to about 2^-17 relative, so y is the fp32 product
// to within the same bound the CUDA-core kernels are tested against.
//
// Kernel choice happens here, at prepare: one matmul descriptor, the weight's layout, and
// for every M in [kLtMinRows, max_m] the activation / output layouts (output rows n apart)
// and the algorithm cuBLASLt's heuristic picks. A forward with another output stride falls
// back to the CUDA-core kernel. The split buffers and the cuBLASLt workspace are shared by
// every BF16 linear of the process (sized by the largest), so, like the x staging buffer,
// two streams must not run these products at once.
#include <cublasLt.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/cublas_check.h"
#include "kiln/ops/cuda/quant_linear_impl.h"

namespace kiln::ops::cuda::detail {

void launch_split_bf16(const float* x, int64_t ldx, int M, int64_t k, int64_t kp, uint16_t* hi, uint16_t* lo,
                       cudaStream_t stream);  // quant_linear_kernels.cu

namespace {

constexpr size_t kWorkspaceBytes = static_cast<size_t>(device::kLtWorkspaceBytes);

// Process-wide: the handle, the workspace and the split buffers (grown at prepare time only).
struct LtShared {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace;
  DeviceBuffer split;  // hi then lo, bf16
  size_t split_elems = 0;
  // Outgrown split buffers stay allocated: a CUDA graph captured earlier may still name them.
  std::vector<DeviceBuffer> retired;
};

LtShared& shared() {
  static LtShared* s = new LtShared();  // never destroyed: outlives every QuantLinear
  return *s;
}

}  // namespace

struct LtPath {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // W: bf16, column-major [kp, n] (row-major [n, kp])
  struct PerM {
    cublasLtMatrixLayout_t b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  std::vector<PerM> per_m;  // index M - kLtMinRows
  ~LtPath() {
    for (auto& p : per_m) {
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    }
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

void prepare_lt(QuantLinearImpl& d) {
  if (d.scheme != SchemeKind::BF16 || d.max_m < kLtMinRows) return;
  LtShared& sh = shared();
  std::lock_guard<std::mutex> lock(sh.mu);
  if (!sh.handle) {
    KILN_CUBLAS_CHECK(cublasLtCreate(&sh.handle));
    sh.workspace = DeviceBuffer(kWorkspaceBytes);
  }
  const size_t need = static_cast<size_t>(d.max_m) * static_cast<size_t>(d.kp);
  if (need > sh.split_elems) {
    sh.retired.push_back(std::move(sh.split));
    sh.split = DeviceBuffer(2 * need * sizeof(uint16_t));
    sh.split_elems = need;
  }
  auto lt = std::make_shared<LtPath>();
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&lt->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(lt->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(lt->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lt->a, CUDA_R_16BF, static_cast<uint64_t>(d.kp),
                                               static_cast<uint64_t>(d.n), d.kp));
  cublasLtMatmulPreference_t pref = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  bool any = false;
  for (int M = kLtMinRows; M <= d.max_m; ++M) {
    LtPath::PerM p;
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, static_cast<uint64_t>(d.kp),
                                                 static_cast<uint64_t>(M), d.kp));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, static_cast<uint64_t>(d.n),
                                                 static_cast<uint64_t>(M), d.n));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(sh.handle, lt->desc, lt->a, p.b, p.c, p.c, pref, 1, &res, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
      p.algo = res.algo;
      p.ok = true;
      any = true;
    }
    lt->per_m.push_back(p);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (!any) return;
  for (int M = kLtMinRows; M <= d.max_m; ++M) {
    if (lt->per_m[static_cast<size_t>(M - kLtMinRows)].ok) d.plans[static_cast<size_t>(M - 1)].text = "bf16 cublasLt (x split into bf16 hi + lo)";
  }
  d.lt = std::move(lt);
}

bool lt_forward(const QuantLinearImpl& d, const float* x, int64_t ldx, int M, float* y, int64_t ldy, cudaStream_t st) {
  if (!d.lt || M < kLtMinRows || M > d.max_m || ldy != d.n) return false;
  const LtPath::PerM& p = d.lt->per_m[static_cast<size_t>(M - kLtMinRows)];
  if (!p.ok) return false;
  LtShared& sh = shared();
  auto* hi = static_cast<uint16_t*>(sh.split.get());
  uint16_t* lo = hi + sh.split_elems;
  launch_split_bf16(x, ldx, M, d.k, d.kp, hi, lo, st);
  const float one = 1.0f, zero = 0.0f;
  KILN_CUBLAS_CHECK(cublasLtMatmul(sh.handle, d.lt->desc, &one, d.params.w, d.lt->a, hi, p.b, &zero, y, p.c, y, p.c,
                                   &p.algo, sh.workspace.get(), kWorkspaceBytes, st));
  KILN_CUBLAS_CHECK(cublasLtMatmul(sh.handle, d.lt->desc, &one, d.params.w, d.lt->a, lo, p.b, &one, y, p.c, y, p.c,
                                   &p.algo, sh.workspace.get(), kWorkspaceBytes, st));
  return true;
}

}  // namespace kiln::ops::cuda::detail

namespace kiln::ops::cuda {

int64_t lt_shared_device_bytes() {
  detail::LtShared& sh = detail::shared();
  std::lock_guard<std::mutex> lock(sh.mu);
  size_t b = sh.workspace.bytes() + sh.split.bytes();
  for (const auto& r : sh.retired) b += r.bytes();
  return static_cast<int64_t>(b);
}

}  // namespace kiln::ops::cuda
