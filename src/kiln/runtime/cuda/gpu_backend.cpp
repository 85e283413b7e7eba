#include "kiln/runtime/cuda/gpu_backend.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"

namespace kiln::runtime::cuda {

GpuBackend::GpuBackend(std::unique_ptr<model::cuda::GpuForward> forward, std::optional<model::cuda::GpuDSparkWeights> dspark)
    : f_(std::move(forward)),
      book_(f_->options().max_slots, f_->mtp_blocks(), f_->options().max_context, f_->options().max_rows) {
  if (dspark) drafter_ = std::make_unique<model::cuda::GpuDSpark>(*f_, std::move(*dspark));
}

int GpuBackend::acquire() {
  const int s = book_.acquire();
  if (s >= 0 && drafter_) drafter_->reset(s);
  return s;
}

void GpuBackend::dspark_commit(const PassRows& rows) {
  if (!drafter_) Backend::dspark_commit(rows);
  check_dspark_commit(rows, book_, last_main_rows_);
  drafter_->commit(rows.slot, rows.pos, rows.src);
}

void GpuBackend::dspark_draft(std::span<const DSparkRound> rounds, const DraftChoice& choose,
                              std::vector<std::vector<int32_t>>& drafts, std::vector<std::vector<float>>* confidence) {
  if (!drafter_) Backend::dspark_draft(rounds, choose, drafts, confidence);
  check_dspark_rounds(rounds, book_);
  std::vector<model::cuda::GpuDSpark::Round> q;
  for (const DSparkRound& r : rounds) q.push_back({r.slot, r.anchor, r.drafts, r.by_argmax});
  auto outs = drafter_->draft(q, choose, /*keep_logits=*/false, /*with_confidence=*/confidence != nullptr);
  take_dspark_outs(outs, drafts, confidence);
}

std::string GpuBackend::describe() const {
  int dev = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  size_t free_b = 0, total_b = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return fmt::format("cuda:{} {} ({:.1f} of {:.1f} GB free), {} precision", dev, p.name,
                     static_cast<double>(free_b) / 1e9, static_cast<double>(total_b) / 1e9,
                     ops::precision_name(f_->weights().precision));
}

int64_t GpuBackend::weight_bytes() const { return f_->weights().linear_bytes; }

void GpuBackend::copy_slot(int src, int dst) {
  book_.copy(src, dst);
  // Positions fed so far, the furthest of the main model and the MTP blocks: nothing a
  // later row reads lies beyond (rolled-back rows are fed again before they are read).
  int64_t positions = 0;
  for (int block = -1; block < mtp_blocks(); ++block) positions = std::max(positions, book_.length(src, block));
  f_->copy_slot(src, dst, positions);
  if (drafter_) drafter_->copy_slot(src, dst);
}

// The device computed every row's logits and argmax; copy the ones asked for.
void GpuBackend::deliver(bool mtp, const Outputs& out) {
  if (!out.argmax_rows.empty()) f_->argmax_rows_to_host(mtp, out.argmax_rows, out.argmax);
  if (!out.logits_rows.empty()) f_->logits_rows_to_host(mtp, out.logits_rows, out.logits);
}

void GpuBackend::main(const PassRows& rows, const Outputs& out) {
  check_outputs(out, rows.size());
  if (rows.empty()) return;
  book_.feed(rows, -1);
  // The head runs only on the rows whose logits or argmax are asked for.
  std::vector<int32_t> head(out.argmax_rows.begin(), out.argmax_rows.end());
  head.insert(head.end(), out.logits_rows.begin(), out.logits_rows.end());
  std::sort(head.begin(), head.end());
  head.erase(std::unique(head.begin(), head.end()), head.end());
  f_->main(rows.tok, rows.slot, rows.pos, std::span<const int32_t>(head));
  last_main_rows_ = rows.size();
  deliver(false, out);
}

void GpuBackend::mtp(int m, const PassRows& rows, MtpInput input, const Outputs& out) {
  check_outputs(out, rows.size());
  if (rows.empty()) return;
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
  deliver(true, out);
}

}  // namespace kiln::runtime::cuda
