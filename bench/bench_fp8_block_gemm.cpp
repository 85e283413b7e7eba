// The CUTLASS FP8 block-scaled GEMM (ops/cuda/fp8_block_gemm.h) at DeepSeek-V4-Flash
// shapes, M = 1 .. 4096, next to the CUDA-core fp8_block QuantLinear (fp32 activations,
// exact numerics) for M <= 64, the activation quantizer that feeds it, and QuantLinear in
// `deepseek` numerics (act_quant + the batch-invariant mma.sync kernel + bf16 output,
// ops/cuda/quant_linear_mma.h). A second table times the LM head (BF16 129280 x 4096) and
// wo_a (FP8, 8 groups of 1024 x 4096, declared bf16) in both precisions.
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
#include "kiln/ops/linear_numerics.h"
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

// The view QuantLinear / Fp8BlockGemm prepare from: an [n, k] fp8_block weight quantized
// with 128 x 128 blocks (q must outlive it).
HostQuantLinear fp8_block_view(const kiln::quant::Fp8BlockQuant& q, int64_t n, int64_t k, const char* name) {
  HostQuantLinear h;
  h.scheme = SchemeKind::FP8Block;
  h.n = n;
  h.k = k;
  h.weight_dtype = DType::F8_E4M3;
  h.weight = {q.weight.bytes.data(), q.weight.bytes.size()};
  h.scale_dtype = q.scale.dtype;
  h.scale = {q.scale.bytes.data(), q.scale.bytes.size()};
  h.scale_rows = q.scale.shape.at(0);
  h.scale_cols = q.scale.shape.at(1);
  h.block_n = h.block_k = 128;
  h.name = name;
  return h;
}

// The LM head (BF16, computed in fp32 by DeepSeek's code) and wo_a (FP8 weight, declared
// bf16, grouped) in exact numerics (CUDA-core kernels; cuBLASLt for BF16 from 16 rows) and
// in deepseek numerics (the mma.sync kernels), one weight copy each (both exceed L2).
void head_and_wo_a(cudaStream_t st, bool quick) {
  struct Layer {
    const char* name;
    SchemeKind scheme;
    int64_t n, k;
    int groups;
    kiln::ops::LinearRole role;
  };
  const Layer layers[] = {{"head", SchemeKind::BF16, 129280, 4096, 1, kiln::ops::LinearRole::Fp32},
                          {"wo_a", SchemeKind::FP8Block, 8 * 1024, 4096, 8, kiln::ops::LinearRole::Bf16}};
  std::printf("\n| layer | scheme | N x K | M | exact us | exact GB/s | deepseek us | deepseek GB/s |\n|---|---|---|---|---|---|---|---|\n");
  for (const Layer& L : layers) {
    std::mt19937 rng(2);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<float> w(static_cast<size_t>(L.n * L.k));
    for (float& v : w) v = nd(rng);
    HostQuantLinear h;
    h.scheme = L.scheme;
    h.n = L.n;
    h.k = L.k;
    h.name = L.name;
    kiln::quant::QTensor wt;
    kiln::quant::Fp8BlockQuant q;
    if (L.scheme == SchemeKind::BF16) {
      wt = kiln::quant::encode_floats(w, {L.n, L.k}, DType::BF16);
      h.weight_dtype = DType::BF16;
      h.weight = {wt.bytes.data(), wt.bytes.size()};
    } else {
      q = kiln::quant::quantize_fp8_block(w, L.n, L.k);
      h = fp8_block_view(q, L.n, L.k, L.name);
    }
    std::vector<float>().swap(w);
    const int max_m = 256;
    const QuantLinear ex = QuantLinear::prepare(h, max_m);
    const QuantLinear ds = QuantLinear::prepare(
        h, max_m, kiln::ops::linear_numerics(kiln::ops::Precision::DeepSeek, L.role, L.scheme));
    std::printf("<!-- %s: exact M=1 %s, M=64 %s; deepseek %s -->\n", L.name, ex.describe(1), ex.describe(64), ds.describe(1));
    const int64_t kx = L.k * L.groups;
    std::vector<float> xh(static_cast<size_t>(max_m * kx));
    for (float& v : xh) v = nd(rng) * 50.0f;
    float* x = device_alloc<float>(xh.size());
    float* y = device_alloc<float>(static_cast<size_t>(max_m * L.n));
    KILN_CUDA_CHECK(cudaMemcpy(x, xh.data(), xh.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (int M : {1, 2, 4, 8, 16, 64, 256}) {
      if (quick && M != 1 && M != 64) continue;
      auto call = [&](const QuantLinear& q) {
        return time_graph_calls(
            [&](int, cudaStream_t s) {
              if (L.groups == 1) {
                q.forward(x, kx, M, y, L.n, s);
              } else {
                q.forward_grouped(x, kx, L.k, M, L.groups, y, L.n, s);
              }
            },
            20, st);
      };
      const double te = call(ex), td = call(ds);
      const double bytes = static_cast<double>(ex.weight_bytes()) + M * (kx + L.n) * 4.0;
      std::printf("| %s | %s | %lld x %lld | %d | %.2f | %.0f | %.2f | %.0f |\n", L.name,
                  L.scheme == SchemeKind::BF16 ? "bf16" : "fp8_block", static_cast<long long>(L.n),
                  static_cast<long long>(L.k), M, te * 1e6, bytes / te / 1e9, td * 1e6, bytes / td / 1e9);
      std::fflush(stdout);
    }
    KILN_CUDA_CHECK(cudaFree(x));
    KILN_CUDA_CHECK(cudaFree(y));
  }
}

int run(bool quick) {
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.0f MiB\n\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0);
  cudaStream_t st;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const int max_m = 4096, ql_max_m = 64;
  const double rotate_bytes = 8.0 * prop.l2CacheSize;
  std::printf("| shape | N x K | M | act_quant us | GEMM us | MB/call | GB/s | TFLOP/s | QuantLinear fp8 us | deepseek QuantLinear us |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& sh : kShapes) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<float> w(static_cast<size_t>(sh.n * sh.k));
    for (float& v : w) v = nd(rng);
    const auto q = kiln::quant::quantize_fp8_block(w, sh.n, sh.k);  // 128 x 128, E8M0
    const HostQuantLinear h = fp8_block_view(q, sh.n, sh.k, sh.name);

    std::vector<Fp8BlockGemm> gemms;
    gemms.push_back(Fp8BlockGemm::prepare(h, max_m));
    const int copies = std::clamp(static_cast<int>(rotate_bytes / static_cast<double>(gemms[0].weight_bytes())) + 1, 2, 64);
    for (int i = 1; i < copies; ++i) gemms.push_back(Fp8BlockGemm::prepare(h, max_m));
    std::vector<QuantLinear> lins;
    for (int i = 0; i < copies; ++i) lins.push_back(QuantLinear::prepare(h, ql_max_m));
    const kiln::ops::LinearNumerics ds = kiln::ops::linear_numerics(kiln::ops::Precision::DeepSeek,
                                                                    kiln::ops::LinearRole::Quantized, SchemeKind::FP8Block);
    std::vector<QuantLinear> dlins;
    for (int i = 0; i < copies; ++i) dlins.push_back(QuantLinear::prepare(h, max_m, ds));

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
    std::printf("<!-- %s: %s; deepseek: %s -->\n", sh.name, gemms[0].describe(), dlins[0].describe(1));
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
      const double td = time_graph_calls(
          [&](int i, cudaStream_t s) { dlins[static_cast<size_t>(i) % dlins.size()].forward(x, sh.k, M, y, sh.n, s); },
          calls, st);
      const double bytes = static_cast<double>(gemms[0].weight_bytes()) + static_cast<double>(M) * sh.k * (1.0 + 4.0 / 128) +
                           static_cast<double>(M) * sh.n * 4.0;
      const double flops = 2.0 * M * static_cast<double>(sh.n) * static_cast<double>(sh.k);
      char ql[32] = "-";
      if (tl > 0) std::snprintf(ql, sizeof ql, "%.2f", tl * 1e6);
      std::printf("| %s | %lld x %lld | %d | %.2f | %.2f | %.2f | %.0f | %.1f | %s | %.2f |\n", sh.name,
                  static_cast<long long>(sh.n), static_cast<long long>(sh.k), M, tq * 1e6, tg * 1e6, bytes / 1e6,
                  bytes / tg / 1e9, flops / tg / 1e12, ql, td * 1e6);
      std::fflush(stdout);
    }
    KILN_CUDA_CHECK(cudaFree(x));
    KILN_CUDA_CHECK(cudaFree(xq));
    KILN_CUDA_CHECK(cudaFree(xs));
    KILN_CUDA_CHECK(cudaFree(y));
  }
  head_and_wo_a(st, quick);
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
