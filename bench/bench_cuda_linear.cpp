// CUDA linear kernels at DeepSeek-V4-Flash decode shapes, every weight scheme, M = 1..64.
//   kiln_bench_cuda_linear [--quick | --variants]
// --quick: M = 1 only. --variants: also every rows-per-thread variant (1, 2, 4) for
// M <= 16, so the defaults (quant_linear_detail.h) can be chosen from data.
// First measures the device's achievable read bandwidth (a streaming read kernel over
// 2 GiB), then for each scheme x shape x M times one forward call: a CUDA graph of many
// calls that rotate over enough copies of the prepared weight that L2 (50 MB on H100/H200)
// cannot serve them, replayed 7 times; the median replay time over the calls in it.
// Prints time per call, prepared weight + scale bytes read per call, achieved GB/s and
// that over the measured read bandwidth.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kiln/ops/cuda/read_bandwidth.h"
#include "kiln/core/error.h"
#include "cuda_timing.h"
#include "flash_shapes.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/quant_linear.h"
#include "kiln/quant/quantize.h"

namespace {

using kiln::DType;
using kiln::SchemeKind;
using kiln::ops::HostBytes;
using kiln::ops::HostQuantLinear;
using kiln::ops::cuda::QuantLinear;
using kiln::quant::QTensor;

using kiln::bench::Shape;
constexpr const auto& kShapes = kiln::bench::kFlashShapes;
const int kMs[] = {1, 2, 4, 8, 16, 32, 64};

HostBytes view(const QTensor& t) { return {t.bytes.data(), t.bytes.size()}; }

// Quantized tensors of one scheme (kept alive while prepared copies are made).
struct Quantized {
  std::vector<QTensor> keep;
  HostQuantLinear host;
};

Quantized quantize(SchemeKind s, const std::vector<float>& w, int64_t n, int64_t k) {
  Quantized q;
  HostQuantLinear& h = q.host;
  h.scheme = s;
  h.n = n;
  h.k = k;
  h.name = kiln::scheme_kind_name(s);
  auto scale2d = [&](const QTensor& sc) {
    h.scale_dtype = sc.dtype;
    h.scale_rows = sc.shape.at(0);
    h.scale_cols = sc.shape.at(1);
  };
  switch (s) {
    case SchemeKind::BF16:
      q.keep.push_back(kiln::quant::encode_floats(w, {n, k}, DType::BF16));
      h.weight_dtype = DType::BF16;
      break;
    case SchemeKind::FP8Block: {
      auto r = kiln::quant::quantize_fp8_block(w, n, k);  // 128 x 128, E8M0 (DeepSeek-V4 native)
      q.keep = {r.weight, r.scale};
      h.weight_dtype = DType::F8_E4M3;
      scale2d(r.scale);
      h.block_n = h.block_k = 128;
      break;
    }
    case SchemeKind::Int4Group: {
      auto r = kiln::quant::quantize_int4_group(w, n, k);  // group 128, symmetric, BF16 scales
      q.keep = {r.packed, r.scale};
      h.weight_dtype = DType::I32;
      scale2d(r.scale);
      h.block_k = 128;
      break;
    }
    case SchemeKind::MXFP4: {
      auto r = kiln::quant::quantize_mxfp4(w, n, k);
      q.keep = {r.weight, r.scale};
      h.weight_dtype = r.weight.dtype;
      scale2d(r.scale);
      h.block_k = 32;
      break;
    }
    case SchemeKind::NVFP4: {
      auto r = kiln::quant::quantize_nvfp4(w, n, k, kiln::quant::nvfp4_global_for(kiln::quant::amax(w)));
      q.keep = {r.weight, r.scale};
      h.weight_dtype = DType::U8;
      scale2d(r.scale);
      h.block_k = 16;
      h.global = r.multiplier;
      break;
    }
  }
  h.weight = view(q.keep.at(0));
  if (q.keep.size() > 1) h.scale = view(q.keep.at(1));
  return q;
}

// Median seconds per call of `calls` forward calls over the copies, captured in a graph.
double time_calls(const std::vector<QuantLinear>& lins, const float* x, float* y, int M, int calls, cudaStream_t st) {
  const int64_t n = lins[0].n(), k = lins[0].k();
  return kiln::bench::time_graph_calls(
      [&](int i, cudaStream_t s) { lins[static_cast<size_t>(i) % lins.size()].forward(x, k, M, y, n, s); }, calls, st);
}

int run(bool quick, bool variants) {
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.0f MiB, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize / 1048576.0, prop.totalGlobalMem / 1073741824.0);
  const auto bw = kiln::ops::cuda::measure_read_bandwidth(size_t{2} << 30, 10);
  std::printf("measured read bandwidth: %.1f GB/s (streaming read of %.2f GiB, %d blocks/SM, median of 10)\n\n",
              bw.bytes_per_s / 1e9, bw.bytes / 1073741824.0, bw.blocks_per_sm);

  cudaStream_t st;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const int max_m = 64;
  const double rotate_bytes = 8.0 * prop.l2CacheSize;  // weights rotated per graph replay
  std::printf("| scheme | shape | N x K | M | us/call | weight+scale MB | GB/s | of measured | kernel |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  const SchemeKind schemes[] = {SchemeKind::BF16, SchemeKind::FP8Block, SchemeKind::Int4Group,
                                  SchemeKind::MXFP4, SchemeKind::NVFP4};
  for (const Shape& sh : kShapes) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<float> w(static_cast<size_t>(sh.n * sh.k));
    for (float& v : w) v = nd(rng);
    std::vector<float> xh(static_cast<size_t>(max_m * sh.k));
    for (float& v : xh) v = nd(rng) * 50.0f;
    float *x = nullptr, *y = nullptr;
    KILN_CUDA_CHECK(cudaMalloc(&x, xh.size() * sizeof(float)));
    KILN_CUDA_CHECK(cudaMalloc(&y, static_cast<size_t>(max_m * sh.n) * sizeof(float)));
    KILN_CUDA_CHECK(cudaMemcpy(x, xh.data(), xh.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (SchemeKind s : schemes) {
      const Quantized q = quantize(s, w, sh.n, sh.k);
      for (int rw : {0, 1, 2, 4}) {
      if (rw != 0 && !variants) continue;
      std::vector<QuantLinear> lins;
      lins.push_back(QuantLinear::prepare(q.host, max_m, rw));
      const double bytes = static_cast<double>(lins[0].weight_bytes());
      const int copies = std::clamp(static_cast<int>(rotate_bytes / bytes) + 1, 2, 256);
      for (int i = 1; i < copies; ++i) lins.push_back(QuantLinear::prepare(q.host, max_m, rw));
      for (int M : kMs) {
        if (quick && M != 1) continue;
        if (rw != 0 && M > 16) continue;
        const int calls = std::max(copies, 200) / copies * copies;
        const double t = time_calls(lins, x, y, M, calls, st);
        const double gbs = bytes / t / 1e9;
        std::printf("| %s | %s | %lld x %lld | %d | %.2f | %.2f | %.0f | %.2f | %s%s |\n", kiln::scheme_kind_name(s),
                    sh.name, static_cast<long long>(sh.n), static_cast<long long>(sh.k), M, t * 1e6, bytes / 1e6, gbs,
                    gbs * 1e9 / bw.bytes_per_s, lins[0].describe(M), rw ? " (forced)" : "");
        std::fflush(stdout);
      }
      }
    }
    KILN_CUDA_CHECK(cudaFree(x));
    KILN_CUDA_CHECK(cudaFree(y));
  }
  KILN_CUDA_CHECK(cudaStreamDestroy(st));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const bool variants = argc > 1 && std::strcmp(argv[1], "--variants") == 0;
    return run(quick, variants);
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
