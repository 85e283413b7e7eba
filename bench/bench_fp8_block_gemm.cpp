// The CUTLASS FP8 block-scaled GEMM (ops/cuda/fp8_block_gemm.h) at DeepSeek-V4-Flash
// shapes, M = 1 .. 4096, next to the CUDA-core fp8_block QuantLinear (fp32 activations,
// exact numerics) for M <= 64, and the activation quantizer that feeds it.
//   kiln_bench_fp8_block_gemm [--quick]        (--quick: M = 1, 64, 1024 only)
// Each time is the median over 7 replays of a CUDA graph of >= 200 calls rotating over
// enough prepared copies of the weight that L2 cannot hold them. Prints us per call, bytes
// per call (weight + scales + activations + output), GB/s and TFLOP/s (2 M N K per call).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/act_quant.h"
#include "cuda_timing.h"
#include "flash_shapes.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/fp8_block_gemm.h"
#include "kiln/ops/quant_linear.h"
#include "kiln/quant/quantize.h"

namespace {

using kiln::DType;
using kiln::SchemeKind;
using kiln::ops::ActScaleLayout;
using kiln::ops::HostQuantLinear;
using kiln::ops::cuda::Fp8BlockGemm;
using kiln::ops::cuda::QuantLinear;

using kiln::bench::Shape;
constexpr const auto& kShapes = kiln::bench::kFlashShapes;
const int kMs[] = {1, 16, 64, 256, 1024, 4096};

using kiln::bench::time_graph_calls;

template <typename T>
T* device_alloc(size_t n) {
  T* p = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

int run(bool quick) {
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.0f MiB\n\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0);
  cudaStream_t st;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const int max_m = 4096, ql_max_m = 64;
  const double rotate_bytes = 8.0 * prop.l2CacheSize;
  std::printf("| shape | N x K | M | act_quant us | GEMM us | MB/call | GB/s | TFLOP/s | QuantLinear fp8 us |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& sh : kShapes) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<float> w(static_cast<size_t>(sh.n * sh.k));
    for (float& v : w) v = nd(rng);
    const auto q = kiln::quant::quantize_fp8_block(w, sh.n, sh.k);  // 128 x 128, E8M0
    HostQuantLinear h;
    h.scheme = SchemeKind::FP8Block;
    h.n = sh.n;
    h.k = sh.k;
    h.weight_dtype = DType::F8_E4M3;
    h.weight = {q.weight.bytes.data(), q.weight.bytes.size()};
    h.scale_dtype = q.scale.dtype;
    h.scale = {q.scale.bytes.data(), q.scale.bytes.size()};
    h.scale_rows = q.scale.shape.at(0);
    h.scale_cols = q.scale.shape.at(1);
    h.block_n = h.block_k = 128;
    h.name = sh.name;

    std::vector<Fp8BlockGemm> gemms;
    gemms.push_back(Fp8BlockGemm::prepare(h, max_m));
    const int copies = std::clamp(static_cast<int>(rotate_bytes / static_cast<double>(gemms[0].weight_bytes())) + 1, 2, 64);
    for (int i = 1; i < copies; ++i) gemms.push_back(Fp8BlockGemm::prepare(h, max_m));
    std::vector<QuantLinear> lins;
    for (int i = 0; i < copies; ++i) lins.push_back(QuantLinear::prepare(h, ql_max_m));

    std::vector<float> xh(static_cast<size_t>(max_m * sh.k));
    for (float& v : xh) v = nd(rng) * 50.0f;
    const int64_t ld = Fp8BlockGemm::min_scale_ld(max_m);
    float* x = device_alloc<float>(xh.size());
    uint8_t* xq = device_alloc<uint8_t>(xh.size());
    float* xs = device_alloc<float>(static_cast<size_t>(sh.k / 128 * ld));
    float* y = device_alloc<float>(static_cast<size_t>(max_m * sh.n));
    KILN_CUDA_CHECK(cudaMemcpy(x, xh.data(), xh.size() * sizeof(float), cudaMemcpyHostToDevice));
    kiln::ops::cuda::act_quant(x, sh.k, max_m, sh.k, xq, sh.k, xs, ActScaleLayout{1, ld}, st);
    KILN_CUDA_CHECK(cudaStreamSynchronize(st));
    std::printf("<!-- %s: %s -->\n", sh.name, gemms[0].describe());
    for (int M : kMs) {
      if (quick && M != 1 && M != 64 && M != 1024) continue;
      const int calls = std::max(copies, 200) / copies * copies;
      const double tq = time_graph_calls(
          [&](int, cudaStream_t s) {
            kiln::ops::cuda::act_quant(x, sh.k, M, sh.k, xq, sh.k, xs, ActScaleLayout{1, ld}, s);
          },
          200, st);
      const double tg = time_graph_calls(
          [&](int i, cudaStream_t s) { gemms[static_cast<size_t>(i) % gemms.size()].run(s, xq, xs, ld, M, y, sh.n); },
          calls, st);
      double tl = 0;
      if (M <= ql_max_m)
        tl = time_graph_calls([&](int i, cudaStream_t s) { lins[static_cast<size_t>(i) % lins.size()].forward(x, sh.k, M, y, sh.n, s); },
                        calls, st);
      const double bytes = static_cast<double>(gemms[0].weight_bytes()) + static_cast<double>(M) * sh.k * (1.0 + 4.0 / 128) +
                           static_cast<double>(M) * sh.n * 4.0;
      const double flops = 2.0 * M * static_cast<double>(sh.n) * static_cast<double>(sh.k);
      char ql[32] = "-";
      if (tl > 0) std::snprintf(ql, sizeof ql, "%.2f", tl * 1e6);
      std::printf("| %s | %lld x %lld | %d | %.2f | %.2f | %.2f | %.0f | %.1f | %s |\n", sh.name,
                  static_cast<long long>(sh.n), static_cast<long long>(sh.k), M, tq * 1e6, tg * 1e6, bytes / 1e6,
                  bytes / tg / 1e9, flops / tg / 1e12, ql);
      std::fflush(stdout);
    }
    KILN_CUDA_CHECK(cudaFree(x));
    KILN_CUDA_CHECK(cudaFree(xq));
    KILN_CUDA_CHECK(cudaFree(xs));
    KILN_CUDA_CHECK(cudaFree(y));
  }
  KILN_CUDA_CHECK(cudaStreamDestroy(st));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc > 1 && std::strcmp(argv[1], "--quick") == 0);
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
