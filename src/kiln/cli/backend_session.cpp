#include "kiln/cli/backend_session.h"

#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/runtime/cpu_backend.h"

#ifdef KILN_HAVE_CUDA
#include <cuda_runtime.h>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/model/cuda/linear_source.h"
#include "kiln/runtime/cuda/gpu_backend.h"
#endif

namespace kiln::cli {

namespace {

// Why no GPU can run kiln's CUDA kernels here ("" when one can).
std::string gpu_unusable() {
#ifdef KILN_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fmt::format("no usable CUDA device ({})", cudaGetErrorString(e));
  }
  if (n == 0) return "no CUDA device is present";
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    return "the CUDA device cannot be queried";
  }
  if (p.major != 9) {
    return fmt::format("{} is compute capability {}.{}; kiln's kernels are built for sm_90a (H100 / H200)", p.name,
                       p.major, p.minor);
  }
  return "";
#else
  return "this kiln was built without the CUDA backend (configure with nvcc on the PATH)";
#endif
}

}  // namespace

std::string resolve_device(const std::string& asked) {
  if (asked == "cpu") return "cpu";
  if (asked == "cuda") {
    const std::string why = gpu_unusable();
    if (!why.empty()) fail_invalid("--device cuda: {}", why);
    return "cuda";
  }
  if (asked == "auto") return gpu_unusable().empty() ? "cuda" : "cpu";
  fail(ErrorKind::Usage, "--device {}: expected auto, cpu or cuda", asked);
}

BackendSession::BackendSession(const SessionOptions& o) : device_(resolve_device(o.device)) {
  loaded_ = runtime::load_model(o.model, o.threads, o.progress);
  const ModelConfig& c = loaded_->config;
  int64_t ctx = o.max_context > 0 ? o.max_context : c.max_position_embeddings;
  if (ctx <= 0) ctx = 4096;
  if (device_ == "cpu") {
    backend_ = std::make_unique<runtime::CpuBackend>(*loaded_->forward,
                                                     runtime::CpuBackendOptions{o.max_slots, std::max(o.max_rows, 1), ctx});
    return;
  }
#ifdef KILN_HAVE_CUDA
  model::cuda::GpuOptions go;
  go.max_slots = o.max_slots;
  go.max_rows = o.max_rows;
  go.max_context = ctx;
  auto w = model::cuda::upload_weights(loaded_->weights, model::cuda::checkpoint_linears(loaded_->checkpoint, loaded_->plan),
                                       go.max_rows, o.progress);
  // The host copy of the weights is not needed once they are on the device.
  loaded_->forward.reset();
  loaded_->weights = model::Weights{};
  backend_ = std::make_unique<runtime::cuda::GpuBackend>(std::make_unique<model::cuda::GpuForward>(std::move(w), go));
#endif
}

BackendSession::~BackendSession() = default;

std::string BackendSession::describe() const {
  const auto& b = *backend_;
  return fmt::format("{}; weights {:.2f} GB; {} sequences x {} positions, {} rows per pass", b.describe(),
                     static_cast<double>(b.weight_bytes()) / 1e9, b.max_slots(), b.max_context(), b.max_rows());
}

}  // namespace kiln::cli
