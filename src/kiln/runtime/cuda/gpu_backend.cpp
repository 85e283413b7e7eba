#include "kiln/runtime/cuda/gpu_backend.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"

namespace kiln::runtime::cuda {

GpuBackend::GpuBackend(std::unique_ptr<model::cuda::GpuForward> forward)
    : f_(std::move(forward)),
      book_(f_->options().max_slots, f_->mtp_blocks(), f_->options().max_context, f_->options().max_rows) {}

std::string GpuBackend::describe() const {
  int dev = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  size_t free_b = 0, total_b = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return fmt::format("cuda:{} {} ({:.1f} of {:.1f} GB free)", dev, p.name, static_cast<double>(free_b) / 1e9,
                     static_cast<double>(total_b) / 1e9);
}

int64_t GpuBackend::weight_bytes() const { return f_->weights().linear_bytes; }

void GpuBackend::main(const PassRows& rows, std::span<const int32_t> out_rows, float* logits) {
  if (rows.empty()) return;
  if (!out_rows.empty() && !logits) fail(ErrorKind::Usage, "gpu backend: logits rows asked for without a buffer");
  book_.feed(rows, -1);
  f_->main(rows.tok, rows.slot, rows.pos);
  last_main_rows_ = rows.size();
  if (!out_rows.empty()) f_->logits_rows_to_host(false, out_rows, logits);
}

void GpuBackend::mtp(int m, const PassRows& rows, MtpInput input, std::span<const int32_t> out_rows, float* logits) {
  if (rows.empty()) return;
  if (!out_rows.empty() && !logits) fail(ErrorKind::Usage, "gpu backend: logits rows asked for without a buffer");
  if (m < 0 || m >= mtp_blocks()) fail(ErrorKind::Usage, "gpu backend: MTP block {} of {}", m, mtp_blocks());
  if (static_cast<int>(rows.src.size()) != rows.size()) {
    fail(ErrorKind::Usage, "gpu backend: MTP pass of {} rows with {} source rows", rows.size(), rows.src.size());
  }
  const int have = input == MtpInput::MainStreams ? last_main_rows_ : last_mtp_rows_;
  for (int r = 0; r < rows.size(); ++r) {
    const int32_t src = rows.src[static_cast<size_t>(r)];
    if (src < 0 || src >= have) fail(ErrorKind::Usage, "gpu backend: MTP row {} takes streams row {} of {}", r, src, have);
  }
  book_.feed(rows, m);
  f_->mtp(m, rows.tok, rows.slot, rows.pos, rows.src, input == MtpInput::MtpStreams);
  last_mtp_rows_ = rows.size();
  if (!out_rows.empty()) f_->logits_rows_to_host(true, out_rows, logits);
}

}  // namespace kiln::runtime::cuda
