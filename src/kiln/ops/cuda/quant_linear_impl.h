// Internal to the CUDA linear layers' host code (quant_linear.cpp, quant_linear_set.cpp;
// C++20, never included by a .cu): the prepared state of one QuantLinear, so that
// QuantLinearSet prepares its experts with exactly QuantLinear's validation, repacking
// and kernel choice (and hence sums exactly as each expert's QuantLinear::forward would).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/device_buffer.h"
#include "kiln/ops/cuda/device_upload.h"
#include "kiln/ops/cuda/quant_linear_detail.h"
#include "kiln/ops/cuda/quant_linear_mma.h"
#include "kiln/ops/device_sizes.h"
#include "kiln/ops/quant_linear.h"

namespace kiln::ops::cuda {

namespace detail {

// One cudaMalloc'd range, freed on destruction (move-only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes) KILN_CUDA_CHECK(cudaMalloc(&p_, bytes));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);  // nothing to report from a destructor
  }
  void upload(const void* src, size_t bytes) {
    if (bytes) {
      KILN_CUDA_CHECK(cudaMemcpy(p_, src, bytes, cudaMemcpyHostToDevice));
      settle_legacy_stream();
    }
  }
  void* get() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Row blocks of a launch covering `rows` rows with rw rows per thread and 1 << lk_log2
// lanes per row.
inline unsigned row_blocks(int64_t rows, int rw, int lk_log2) {
  const int64_t groups = (rows + rw - 1) / rw, per_block = kThreads >> lk_log2;
  return static_cast<unsigned>((groups + per_block - 1) / per_block);
}

}  // namespace detail

namespace detail {
struct LtPath;  // quant_linear_lt.cpp
}  // namespace detail

struct QuantLinearImpl {
  SchemeKind scheme{};
  int64_t n = 0, k = 0, kp = 0;  // kp: k padded to whole chunks (the staging row width)
  int max_m = 0;
  detail::DeviceBuffer w, scale, zp, xpad;
  detail::LinearParams params;
  struct Plan {
    detail::LaunchFn fn = nullptr;
    detail::LaunchShape shape;
    int rw = 1;  // rows per thread of fn
    std::string text;
  };
  std::vector<Plan> plans;  // [max_m]
  int64_t weight_bytes = 0;
  // BF16 weights at M >= kLtMinRows: cuBLASLt tensor-core products (quant_linear_lt.cpp),
  // null when the weight is not BF16, max_m is small, or no algorithm was found.
  std::shared_ptr<detail::LtPath> lt;
  // How x and y are treated (ops/linear_numerics.h); batch_invariant: invariant plans.
  LinearNumerics num;
  // Batch-invariant numerics on BF16 / FP8-block weights: the tensor-core kernels of
  // quant_linear_mma.h for every M. With FP8 input x is quantized into xpad first (codes
  // [max_m, k], then the scales [k / 128, act_scale_ld], MN-major).
  std::optional<detail::MmaPlan> mma;
  int64_t act_scale_ld = 0;
};

namespace detail {
// From this many rows on, a BF16 QuantLinear multiplies with cuBLASLt (the CUDA-core kernels
// become compute-bound there).
inline constexpr int kLtMinRows = device::kLtMinRows;
// Binds the cuBLASLt path of a prepared BF16 weight (an algorithm per M >= kLtMinRows,
// chosen now); leaves d.lt null where it does not apply.
void prepare_lt(QuantLinearImpl& d);
// y[M, n] (rows ldy apart) = x W^T on the cuBLASLt path; false (nothing launched) when
// this M / ldy has no bound algorithm.
bool lt_forward(const QuantLinearImpl& d, const float* x, int64_t ldx, int M, float* y, int64_t ldy, cudaStream_t st);

// One device range of a prepared weight and the fill that writes its content from the
// host view (the same bytes whether it runs in one piece or many, on any thread).
struct PendingUpload {
  void* dst = nullptr;
  uint64_t bytes = 0;
  DeviceUploader::Fill fill;
  DeviceUploader::Source src;
};

// QuantLinear::prepare's work up to the data: validates (errors name w.name), allocates the
// buffers sized by ops::device::linear_layout (and, with `staging`, the x staging buffer),
// chooses the kernel for every M, and appends the uploads that fill the buffers to
// `uploads` (nothing is copied yet).
// numerics: as QuantLinear::prepare's (batch_invariant: the tensor-core kernels of
// quant_linear_mma.h where they apply and `staging` is set, else every M gets M = 1's lanes
// per row).
std::unique_ptr<QuantLinearImpl> prepare_linear(const HostQuantLinear& w, int max_m, int rows_per_thread, bool staging,
                                                std::vector<PendingUpload>& uploads, LinearNumerics numerics = {});
// The byte offset of the activation scales inside xpad on the FP8 x FP8 tensor-core path.
inline int64_t act_scale_offset(int max_m, int64_t k) { return (static_cast<int64_t>(max_m) * k + 15) / 16 * 16; }
// Runs the uploads through `up`, or (null) synchronously: each range filled whole into host
// memory and copied before returning. Called last by a prepare step, after everything that
// can throw, so that no enqueued copy targets a buffer an exception frees.
void submit_uploads(std::vector<PendingUpload>& uploads, DeviceUploader* up);
// Fails (Invalid, naming the weight and element) when one of the n e4m3 codes at `in`, columns
// c.. of row r of weight `name`, is the NaN code ((b & 0x7F) == 0x7F).
void check_no_e4m3_nan(const std::byte* in, uint64_t n, const std::string& name, uint64_t r, uint64_t c);
// A fill writing fp32 scales from `src`, stored as scale dtype `dt` (codecs' scale_to_f32).
DeviceUploader::Fill scales_to_f32(const std::byte* src, DType dt);
// The prepared weight, scale and zero-point bytes of `d`, downloaded.
std::vector<std::byte> download_prepared(const QuantLinearImpl& d);
}  // namespace detail

}  // namespace kiln::ops::cuda
