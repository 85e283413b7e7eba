// RopeTable (host: the CPU's cos/sin for every position, uploaded once) and the
// standalone rotation launcher. The kernel uses rope_pair (rope.cuh), the same
// expressions as ops::cpu::Rope::apply_heads, so rotations match the CPU bit for bit.
#include <utility>
#include <vector>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/rope.cuh"

namespace kiln::ops::cuda {
namespace {

// grid (R, heads): one block rotates one head vector of one row; threads over pairs.
// bf16: the channels before the rotary ones are rounded too (rope_pair rounds its pair).
__global__ void rope_rows_kernel(const int32_t* __restrict__ pos, float* x, int64_t ld, int64_t head_stride, int n,
                                 RopeView rope, bool inverse, bool bf16) {
  await_previous_grid();
  const int64_t p = pos[blockIdx.x];
  float* v = x + static_cast<int64_t>(blockIdx.x) * ld + static_cast<int64_t>(blockIdx.y) * head_stride;
  if (bf16) {
    for (int i = threadIdx.x; i < n - rope.dim; i += blockDim.x) v[i] = bf16_round(v[i]);
  }
  // Positions are validated by the host before they are uploaded; an out-of-range one
  // here would read outside the table, so the row is left unrotated instead.
  if (p < 0 || p >= rope.max_pos) return;
  for (int i = threadIdx.x; i < rope.dim / 2; i += blockDim.x) rope_pair(v, n, i, rope, p, inverse, bf16);
}

}  // namespace

RopeTable::RopeTable(const cpu::Rope& rope, int64_t max_pos) {
  const int64_t dim = rope.dim();
  if (dim <= 0 || dim % 2 != 0) fail(ErrorKind::Usage, "RopeTable: rotary dim {} must be positive and even", dim);
  if (max_pos <= 0) fail(ErrorKind::Usage, "RopeTable: max_pos {} must be positive", max_pos);
  const int64_t half = dim / 2;
  const size_t count = static_cast<size_t>(max_pos * half);
  std::vector<float> host(2 * count);
  for (int64_t p = 0; p < max_pos; ++p) rope.cos_sin(p, host.data() + p * half, host.data() + count + p * half);
  KILN_CUDA_CHECK(cudaMalloc(&buf_, host.size() * sizeof(float)));
  // A failed copy must not leak the buffer: free it before rethrowing.
  const cudaError_t err = cudaMemcpy(buf_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  if (err != cudaSuccess) {
    cudaFree(buf_);
    buf_ = nullptr;
    KILN_CUDA_CHECK(err);
  }
  view_.cos = buf_;
  view_.sin = buf_ + count;
  view_.dim = static_cast<int>(dim);
  view_.max_pos = max_pos;
}

RopeTable::RopeTable(RopeTable&& o) noexcept : buf_(std::exchange(o.buf_, nullptr)), view_(std::exchange(o.view_, {})) {}

RopeTable& RopeTable::operator=(RopeTable&& o) noexcept {
  if (this != &o) {
    if (buf_ != nullptr) cudaFree(buf_);
    buf_ = std::exchange(o.buf_, nullptr);
    view_ = std::exchange(o.view_, {});
  }
  return *this;
}

// A destructor cannot throw; a failing cudaFree here means the context is already gone.
RopeTable::~RopeTable() {
  if (buf_ != nullptr) cudaFree(buf_);
}

void rope_rows(const StepRows& rows, float* x, int64_t ld, int heads, int64_t head_stride, int n, RopeView rope,
               bool inverse, cudaStream_t stream, bool bf16) {
  if (rows.R < 0 || heads < 0) fail(ErrorKind::Usage, "cuda::rope_rows: {} rows, {} heads; expected >= 0", rows.R, heads);
  if (rows.R == 0 || heads == 0) return;
  if (rope.cos == nullptr || rope.sin == nullptr || rope.dim <= 0 || rope.dim % 2 != 0) {
    fail(ErrorKind::Usage, "cuda::rope_rows: the rope table is empty or its dim {} is not positive and even", rope.dim);
  }
  if (n < rope.dim) fail(ErrorKind::Usage, "cuda::rope_rows: vectors of {} channels are shorter than the rotary dim {}", n, rope.dim);
  if (x == nullptr || rows.pos == nullptr) fail(ErrorKind::Usage, "cuda::rope_rows: null x or rows.pos");
  if (heads > 65535) fail(ErrorKind::Usage, "cuda::rope_rows: {} heads; at most 65535", heads);
  const int half = rope.dim / 2;
  const int threads = half >= 128 ? 128 : ((half + 31) / 32) * 32;
  const dim3 grid(static_cast<unsigned>(rows.R), static_cast<unsigned>(heads));
  launch_kernel(rope_rows_kernel, grid, threads, 0, stream, rows.pos, x, ld, head_stride, n, rope, inverse, bf16);
}

}  // namespace kiln::ops::cuda
