#include "kiln/ops/cuda/read_bandwidth.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/event_timing.h"
#include "kiln/ops/cuda/quant_linear_kernels.cuh"

namespace kiln::ops::cuda {
namespace {

// The linear kernels' streaming load (ld.global.nc, no L1 allocation), so the floor is
// measured with the instruction the kernels use.
using detail::kernels::load_stream;

// Each thread XORs four 16-byte loads per step; the result is stored only if it equals
// a value it cannot equal, so the loads cannot be dropped and nothing is written.
__global__ void __launch_bounds__(512) read_kernel(const uint4* __restrict__ src, size_t n16, uint32_t never,
                                                   uint32_t* __restrict__ sink) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  uint32_t acc = 0;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const uint4 a = load_stream(src + i), b = load_stream(src + i + stride);
    const uint4 c = load_stream(src + i + 2 * stride), d = load_stream(src + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const uint4 a = load_stream(src + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == never) sink[0] = acc;
}

}  // namespace

ReadBandwidth measure_read_bandwidth(size_t bytes, int reps) {
  bytes = bytes / 16 * 16;
  void* buf = nullptr;
  uint32_t* sink = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&buf, bytes));
  KILN_CUDA_CHECK(cudaMalloc(&sink, sizeof(uint32_t)));
  KILN_CUDA_CHECK(cudaMemset(buf, 0x5A, bytes));
  int dev = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  ReadBandwidth best;
  best.bytes = bytes;
  for (int bps : {2, 4, 8}) {
    const unsigned grid = static_cast<unsigned>(sms * bps);
    read_kernel<<<grid, 512>>>(static_cast<const uint4*>(buf), bytes / 16, 1u, sink);  // warm-up
    KILN_CUDA_CHECK_LAUNCH();
    const float ms = median_event_ms(reps, [&] {
      read_kernel<<<grid, 512>>>(static_cast<const uint4*>(buf), bytes / 16, 1u, sink);
      KILN_CUDA_CHECK_LAUNCH();
    });
    const double bw = static_cast<double>(bytes) / (ms * 1e-3);
    if (bw > best.bytes_per_s) {
      best.bytes_per_s = bw;
      best.blocks_per_sm = bps;
    }
  }
  KILN_CUDA_CHECK(cudaFree(sink));
  KILN_CUDA_CHECK(cudaFree(buf));
  return best;
}

}  // namespace kiln::ops::cuda
