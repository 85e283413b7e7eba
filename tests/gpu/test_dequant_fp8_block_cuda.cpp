// The CUDA FP8 block dequantization equals the CPU reference bit for bit, for every
// e4m3 code and a spread of e8m0 scales, on shapes that are not multiples of the block.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/dequant_fp8_block.h"

namespace kiln::ops {
namespace {

TEST(CudaSmoke, DeviceIsVisible) {
  int n = 0;
  KILN_CUDA_CHECK(cudaGetDeviceCount(&n));
  ASSERT_GT(n, 0);
  cudaDeviceProp p{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  EXPECT_GE(p.major, 9) << p.name << " is not Hopper: the build targets sm_90a only";
}

TEST(CudaDequantFp8Block, MatchesCpuReferenceExactly) {
  for (Fp8BlockShape s : {Fp8BlockShape{300, 520, 128, 128}, Fp8BlockShape{256, 256, 64, 32}, Fp8BlockShape{1, 7, 1, 7}}) {
    std::vector<uint8_t> q(static_cast<size_t>(s.rows * s.cols));
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<uint8_t>(i * 37 + 11);  // every code appears
    const int64_t srows = (s.rows + s.block_n - 1) / s.block_n;
    std::vector<uint8_t> sc(static_cast<size_t>(srows * s.scale_cols()));
    for (size_t i = 0; i < sc.size(); ++i) sc[i] = static_cast<uint8_t>((i * 13) % 256);  // incl. 0 and 0xFF
    std::vector<float> want(q.size()), got(q.size());
    cpu::dequant_fp8_block_e8m0(q.data(), sc.data(), s, want.data());

    uint8_t *dq = nullptr, *ds = nullptr;
    float* dout = nullptr;
    KILN_CUDA_CHECK(cudaMalloc(&dq, q.size()));
    KILN_CUDA_CHECK(cudaMalloc(&ds, sc.size()));
    KILN_CUDA_CHECK(cudaMalloc(&dout, got.size() * sizeof(float)));
    KILN_CUDA_CHECK(cudaMemcpy(dq, q.data(), q.size(), cudaMemcpyHostToDevice));
    KILN_CUDA_CHECK(cudaMemcpy(ds, sc.data(), sc.size(), cudaMemcpyHostToDevice));
    cuda::dequant_fp8_block_e8m0(dq, ds, s, dout, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    KILN_CUDA_CHECK(cudaMemcpy(got.data(), dout, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
    KILN_CUDA_CHECK(cudaFree(dq));
    KILN_CUDA_CHECK(cudaFree(ds));
    KILN_CUDA_CHECK(cudaFree(dout));

    size_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      uint32_t a, b;
      std::memcpy(&a, &want[i], 4);
      std::memcpy(&b, &got[i], 4);
      const bool both_nan = want[i] != want[i] && got[i] != got[i];
      if (a != b && !both_nan && ++mismatches < 5) {
        ADD_FAILURE() << "element " << i << ": cpu " << want[i] << " cuda " << got[i] << " (q=" << int(q[i]) << ")";
      }
    }
    EXPECT_EQ(mismatches, 0u) << s.rows << "x" << s.cols;
  }
}

}  // namespace
}  // namespace kiln::ops
