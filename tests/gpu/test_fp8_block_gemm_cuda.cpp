// DeepSeek's FP8 numerics on the GPU against the CPU:
//  - the CUDA activation quantizer (ops/act_quant.h) bitwise equal to the CPU one, for
//    fp32 and bf16 rows and both scale layouts;
//  - the CUTLASS FP8 block-scaled GEMM (ops/cuda/fp8_block_gemm.h; only with
//    KILN_HAVE_CUTLASS) against kiln's CPU fp8_block linear: activations quantized by the
//    CPU quantizer and dequantized exactly to fp32, the weight prepared from its on-disk
//    bytes (model::prepare_linear) and multiplied in fp32 by ops::cpu::linear. Scales are
//    non-uniform along both N and K (weights) and along rows and K (activations), in each
//    on-disk scale dtype, so a scale read from the wrong block, or in the wrong (MN- vs
//    K-major) order, moves y far beyond the tolerance; a second test on integer-valued data
//    (where every sum is exact on both sides) demands bitwise equality. Also: M not a
//    multiple of the 128-row tile, batch invariance (a row's output does not depend on M),
//    a CUDA graph replay equal to direct launches, clear errors for unsupported shapes.
//
// Tolerance of the random cases, per output element:
//   |y - ref| <= 2^-6 T,  T = sum over K-blocks b of max_{k in b} |a_k| * max_{k in b} |w_nk|
// (128 "units" of 2^-13 T). Products of two e4m3 values are exact. The Hopper FP8 tensor
// core adds the 32 products of each k = 32 instruction to its accumulator aligned to the
// largest exponent among them and keeps only ~13 bits below it, truncating (DeepSeek-V3
// report, sec. 3.3.2: "around 14 bits"); CUTLASS's blockwise mainloop promotes every
// 128-long K-block's partial sum to fp32 registers (acc = fma(partial, sa * sw, acc)), so
// the error does not compound past a block: each truncation loses less than 2^-13 of the
// largest addend it aligns to, typically a product bounded by max|a| max|w| of the block.
// A CPU emulation of this accumulator (products of each 32-chunk aligned to the chunk's
// largest, truncated 13 bits below it) on data like this test's ([256, 1024], M <= 64)
// gave at most 15 units (1.6e-3 of sum_k |a_k w_nk| with the 448x outliers of
// activations(), 1.5e-4 without); 128 units leave room for hardware that keeps fewer bits.
// The same emulation reading one K-block's scale from the next block, the next row, or a
// transposed weight-scale grid gave >= 4000 units, and the integer test below is exact.
// The fp32 sums on both sides add ~1e-7 of sum |a w|.
// Printed per case ([gpu-vs-cpu]): the largest |y - ref| / sum_k |a_k w_nk| (the relative
// error) and the largest |y - ref| in units of 2^-13 T, so the bound can follow the data.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/act_quant.h"
#include "kiln/ops/cuda/check.h"
#include "quant_linear_cases.h"

#ifdef KILN_HAVE_CUTLASS
#include "kiln/model/weights.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cuda/fp8_block_gemm.h"
#endif

namespace kiln::ops {
namespace {

using test_linear::DevBuf;
constexpr int64_t B = kActQuantBlock;

// Synchronous in full (cudaMemcpy from pageable memory may return before the device copy
// lands, and a non-blocking stream would not wait for it).
template <typename T>
void upload(DevBuf<T>& d, const std::vector<T>& h) {
  KILN_CUDA_CHECK(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
}
template <typename T>
std::vector<T> download(const DevBuf<T>& d, size_t n) {
  std::vector<T> h(n);
  KILN_CUDA_CHECK(cudaMemcpy(h.data(), d.p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// [M, K] activations whose 128-column blocks have magnitudes 2^-8 .. 2^8 (non-uniform
// scales along rows and K), with an all-zero block, -0, e4m3 ties and tiny values mixed in.
std::vector<float> activations(int64_t M, int64_t K, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-8, 8);
  std::vector<float> x(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < K / B; ++b) {
      float* xb = x.data() + m * K + b * B;
      const float mag = std::ldexp(1.0f, ex(g));
      for (int64_t i = 0; i < B; ++i) xb[i] = nd(g) * mag;
      if ((m + b) % 11 == 3) std::fill(xb, xb + B, 0.0f);
      if ((m + b) % 7 == 1) {  // s = mag / 2^... : values on e4m3 ties and below the subnormals
        xb[0] = 448.0f * mag;
        xb[1] = 17.0f * mag;
        xb[2] = 0x3p-10f * mag;
        xb[3] = -0.0f;
        xb[4] = 0x1p-12f * mag;
      }
    }
  }
  return x;
}

// ---- the quantizer: GPU bitwise equal to CPU ----

void check_quantizer(int64_t M, int64_t K, bool bf16, ActScaleLayout sl, int64_t s_size, uint32_t seed) {
  SCOPED_TRACE("M=" + std::to_string(M) + " K=" + std::to_string(K) + (bf16 ? " bf16" : " fp32") + " layout {" +
               std::to_string(sl.row_stride) + ", " + std::to_string(sl.block_stride) + "}");
  const int64_t ldx = K + 4, ldq = K + 32;  // padded rows: gaps must stay untouched
  std::vector<float> xf = activations(M, ldx, seed);
  std::vector<uint16_t> xb(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) {
    xb[i] = f32_to_bf16(xf[i]);
    if (bf16) xf[i] = bf16_to_f32(xb[i]);
  }
  std::vector<uint8_t> q(static_cast<size_t>(M * ldq), 0xAA);
  std::vector<float> s(static_cast<size_t>(s_size), -1.0f);
  if (bf16)
    cpu::act_quant_bf16(xb.data(), ldx, M, K, q.data(), ldq, s.data(), sl);
  else
    cpu::act_quant(xf.data(), ldx, M, K, q.data(), ldq, s.data(), sl);

  DevBuf<float> dxf(xf.size());
  DevBuf<uint16_t> dxb(xb.size());
  DevBuf<uint8_t> dq(q.size());
  DevBuf<float> ds(s.size());
  upload(dxf, xf);
  upload(dxb, xb);
  upload(dq, std::vector<uint8_t>(q.size(), 0xAA));
  upload(ds, std::vector<float>(s.size(), -1.0f));
  if (bf16)
    cuda::act_quant_bf16(dxb.p, ldx, M, K, dq.p, ldq, ds.p, sl, nullptr);
  else
    cuda::act_quant(dxf.p, ldx, M, K, dq.p, ldq, ds.p, sl, nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const auto gq = download(dq, q.size());
  const auto gs = download(ds, s.size());
  int bad = 0;
  for (size_t i = 0; i < q.size(); ++i)
    if (gq[i] != q[i] && ++bad <= 5)
      ADD_FAILURE() << "code [" << i / ldq << ", " << i % ldq << "]: gpu 0x" << std::hex << int(gq[i]) << ", cpu 0x"
                    << int(q[i]) << std::dec << " (x = " << xf[(i / ldq) * ldx + i % ldq] << ")";
  for (size_t i = 0; i < s.size(); ++i)
    if (std::bit_cast<uint32_t>(gs[i]) != std::bit_cast<uint32_t>(s[i]) && ++bad <= 10)
      ADD_FAILURE() << "scale " << i << ": gpu " << gs[i] << ", cpu " << s[i];
  EXPECT_EQ(bad, 0);
}

TEST(CudaFp8BlockGemmActQuant, BitwiseEqualToCpu) {
  uint32_t seed = 1;
  for (int64_t M : {1, 7, 64, 300}) {
    for (int64_t K : {int64_t{128}, int64_t{7168}}) {
      const int64_t kb = K / B, ld = (M + 3) / 4 * 4 + 4;
      for (bool bf16 : {false, true}) {
        check_quantizer(M, K, bf16, ActScaleLayout{kb, 1}, M * kb, seed++);  // DeepSeek's [M, K/128]
        check_quantizer(M, K, bf16, ActScaleLayout{1, ld}, kb * ld, seed++);  // the GEMM's MN-major
      }
    }
  }
}

TEST(CudaFp8BlockGemmActQuant, KMustBeWholeBlocks) {
  EXPECT_THROW(cuda::act_quant(nullptr, 200, 1, 200, nullptr, 200, nullptr, ActScaleLayout{}, nullptr), Error);
  EXPECT_NO_THROW(cuda::act_quant(nullptr, 128, 0, 128, nullptr, 128, nullptr, ActScaleLayout{}, nullptr));
}

#ifdef KILN_HAVE_CUTLASS

using test_linear::Case;
using test_linear::LoadedCase;

// W [n, k] with each 128 x 128 block at its own magnitude 2^(r + c), r, c in [-4, 4]:
// the quantized scales vary along both N and K.
std::vector<float> block_varied_weight(int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-4, 4);
  std::vector<int> re(static_cast<size_t>(n / B)), ce(static_cast<size_t>(k / B));
  for (auto& e : re) e = ex(g);
  for (auto& e : ce) e = ex(g);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c)
      w[static_cast<size_t>(r * k + c)] = nd(g) * std::ldexp(1.0f, re[static_cast<size_t>(r / B)] + ce[static_cast<size_t>(c / B)]);
  return w;
}

// Activations quantized by the CPU quantizer (MN-major scales, stride ld; the padding rows
// hold NaN, which no valid row may read), and their exact fp32 dequantization.
struct Acts {
  int64_t M = 0, K = 0, ld = 0;
  std::vector<uint8_t> q;
  std::vector<float> s, xd;
};

Acts quantize_acts(const std::vector<float>& x, int64_t M, int64_t K, int64_t ld) {
  Acts a{M, K, ld, std::vector<uint8_t>(static_cast<size_t>(M * K)), std::vector<float>(static_cast<size_t>(K / B * ld), NAN),
         std::vector<float>(static_cast<size_t>(M * K))};
  cpu::act_quant(x.data(), K, M, K, a.q.data(), K, a.s.data(), ActScaleLayout{1, ld});
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; ++c)
      a.xd[static_cast<size_t>(m * K + c)] =
          e4m3_to_f32(a.q[static_cast<size_t>(m * K + c)]) * a.s[static_cast<size_t>((c / B) * ld + m)];
  return a;
}

// y [M, ldy] from the GPU (columns n..ldy poisoned with NaN beforehand and checked).
std::vector<float> run_gpu(const cuda::Fp8BlockGemm& gemm, const Acts& a, int64_t ldy, cudaStream_t st = nullptr) {
  DevBuf<uint8_t> dq(a.q.size());
  DevBuf<float> ds(a.s.size()), dy(static_cast<size_t>(a.M * ldy));
  upload(dq, a.q);
  upload(ds, a.s);
  upload(dy, std::vector<float>(static_cast<size_t>(a.M * ldy), NAN));
  gemm.run(st, dq.p, ds.p, a.ld, static_cast<int>(a.M), dy.p, ldy);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  return download(dy, static_cast<size_t>(a.M * ldy));
}

cpu::ThreadPool& pool() {
  static cpu::ThreadPool p(0);
  return p;
}

// One weight case: GPU against the CPU fp8_block linear for each M.
void check_gemm(const Case& c, std::initializer_list<int> ms, uint32_t seed) {
  SCOPED_TRACE(c.label);
  const LoadedCase lc(c);
  const int64_t N = c.n, K = c.k;
  const model::Linear ref_w = model::prepare_linear(lc.ckpt, lc.plan);  // stored form, exact decode
  ASSERT_TRUE(ref_w.quantized());
  cpu::PreparedLinear abs_w, max_w;  // |W|, and max |W| over each row's K-blocks [N, K/128]
  abs_w.out = max_w.out = N;
  abs_w.in = K;
  max_w.in = K / B;
  abs_w.w = lc.W;
  max_w.w.assign(static_cast<size_t>(N * (K / B)), 0.0f);
  for (size_t i = 0; i < abs_w.w.size(); ++i) {
    float& v = abs_w.w[i];
    v = std::fabs(v);
    float& mx = max_w.w[i / K * (K / B) + i % K / B];
    mx = std::max(mx, v);
  }
  const int max_m = 300;
  auto gemm = cuda::Fp8BlockGemm::prepare(lc.host, max_m);
  EXPECT_EQ(gemm.n(), N);
  EXPECT_EQ(gemm.k(), K);
  EXPECT_EQ(gemm.weight_bytes(), N * K + N / B * (K / B) * 4);
  static bool described = false;
  if (!std::exchange(described, true)) std::printf("[gpu-vs-cpu] fp8_block_gemm kernel: %s\n", gemm.describe());
  for (int M : ms) {
    SCOPED_TRACE("M=" + std::to_string(M));
    // scale_ld: the smallest allowed, or the one for max_m (a buffer sized at load)
    const int64_t ld = (M % 2) ? cuda::Fp8BlockGemm::min_scale_ld(M) : cuda::Fp8BlockGemm::min_scale_ld(max_m);
    const Acts a = quantize_acts(activations(M, K, seed + static_cast<uint32_t>(M)), M, K, ld);
    std::vector<float> ref(static_cast<size_t>(M * N)), mag(ref.size()), bound(ref.size()), xa(a.xd);
    std::vector<float> max_a(static_cast<size_t>(M * (K / B)), 0.0f);
    cpu::linear(ref_w, a.xd.data(), M, ref.data(), &pool());
    for (size_t i = 0; i < xa.size(); ++i) {
      xa[i] = std::fabs(xa[i]);
      float& mx = max_a[i / K * (K / B) + i % K / B];
      mx = std::max(mx, xa[i]);
    }
    cpu::linear(abs_w, xa.data(), M, mag.data(), &pool());        // sum_k |a_k w_nk|
    cpu::linear(max_w, max_a.data(), M, bound.data(), &pool());  // T
    const int64_t ldy = N + 4;
    const std::vector<float> y = run_gpu(gemm, a, ldy);
    double worst = 0, worst_units = 0;
    int bad = 0;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t o = 0; o < ldy; ++o) {
        const float got = y[static_cast<size_t>(m * ldy + o)];
        if (o >= N) {
          if (!std::isnan(got) && ++bad <= 3) ADD_FAILURE() << "wrote past n: y[" << m << ", " << o << "]";
          continue;
        }
        const size_t i = static_cast<size_t>(m * N + o);
        const double r = ref[i], t = bound[i], err = std::fabs(static_cast<double>(got) - r);
        if (mag[i] > 0) worst = std::max(worst, err / mag[i]);
        if (t > 0) worst_units = std::max(worst_units, err / (0x1p-13 * t));
        if (!(err <= 0x1p-6 * t) && ++bad <= 3)
          ADD_FAILURE() << "y[" << m << ", " << o << "] = " << got << ", reference " << r << " (sum|a w| " << mag[i]
                        << ", T " << t << ")";
      }
    }
    std::printf("[gpu-vs-cpu] fp8_block_gemm %-14s [%4lld x %4lld] M=%3d  max |y-ref|/sum|aw| %.2e  %6.2f units (bound 128)\n",
                c.label.c_str(), static_cast<long long>(N), static_cast<long long>(K), M, worst, worst_units);
    EXPECT_EQ(bad, 0) << "worst |y - ref| / sum|a w| = " << worst << ", " << worst_units << " units of 2^-13 T";
  }
}

Case fp8_case(int64_t n, int64_t k, DType sd, uint32_t seed) {
  quant::Fp8BlockOptions o;
  o.scale_dtype = sd;
  auto q = quant::quantize_fp8_block(block_varied_weight(n, k, seed), n, k, o);
  const char* field = sd == DType::F8_E8M0 ? "scale" : sd == DType::F32 ? "weight_scale_inv" : "weight_scale";
  return {std::string("scale ") + std::string(dtype_name(sd)), {{"weight", q.weight}, {field, q.scale}}, n, k};
}

TEST(CudaFp8BlockGemm, MatchesCpuLinearEveryScaleDtype) {
  for (DType sd : {DType::F8_E8M0, DType::F32, DType::BF16}) {
    check_gemm(fp8_case(256, 512, sd, 2), {1, 7, 64, 129, 300}, 20);
    check_gemm(fp8_case(1536, 4096, sd, 3), {1, 7, 64, 300}, 30);  // V4-Flash-like shapes
    check_gemm(fp8_case(4096, 7168, sd, 4), {1, 7, 64, 300}, 40);
  }
}

// Integer-valued data, where both sides are exact: weight codes in {-2..2} with E8M0 block
// scales 2^-2..2^2; activations int * 2^e (ints in -4..4, a 4 in every block, e in -2..2 per
// block), which the quantizer maps to codes int * 64 with s = 2^(e-6). A block's products
// are multiples of 64 below 2^16 in total (exact in the tensor core's ~14 bits), the fp32
// sums multiples of 2^-4 below 2^20 (exact): y must equal the double-precision sum bitwise.
TEST(CudaFp8BlockGemm, IntegerDataIsExact) {
  const int64_t N = 384, K = 1024, nb = N / B, kb = K / B;
  std::mt19937 g(5);
  std::uniform_int_distribution<int> wi(-2, 2), xi(-4, 4), se(-2, 2);
  quant::QTensor w{DType::F8_E4M3, {N, K}, std::vector<std::byte>(static_cast<size_t>(N * K))};
  quant::QTensor sc{DType::F8_E8M0, {nb, kb}, std::vector<std::byte>(static_cast<size_t>(nb * kb))};
  for (auto& b : w.bytes) b = static_cast<std::byte>(f32_to_e4m3(static_cast<float>(wi(g))));
  for (auto& b : sc.bytes) b = static_cast<std::byte>(127 + se(g));
  const LoadedCase lc(Case{"integer", {{"weight", w}, {"scale", sc}}, N, K});
  auto gemm = cuda::Fp8BlockGemm::prepare(lc.host, 300);
  for (int M : {1, 7, 64, 300}) {
    SCOPED_TRACE("M=" + std::to_string(M));
    std::vector<float> x(static_cast<size_t>(M * K));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t b = 0; b < kb; ++b) {
        const int e = se(g);
        float* xb = x.data() + m * K + b * B;
        for (int64_t i = 0; i < B; ++i) xb[i] = std::ldexp(static_cast<float>(xi(g)), e);
        xb[g() % B] = std::ldexp(4.0f, e);
      }
    }
    const Acts a = quantize_acts(x, M, K, cuda::Fp8BlockGemm::min_scale_ld(M));
    ASSERT_EQ(a.xd, x);  // the quantizer is exact on this data
    const std::vector<float> y = run_gpu(gemm, a, N);
    int bad = 0;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t o = 0; o < N; ++o) {
        double r = 0;
        for (int64_t c = 0; c < K; ++c) r += static_cast<double>(x[static_cast<size_t>(m * K + c)]) * lc.W[static_cast<size_t>(o * K + c)];
        const float got = y[static_cast<size_t>(m * N + o)];
        if (got != static_cast<float>(r) && ++bad <= 5)
          ADD_FAILURE() << "y[" << m << ", " << o << "] = " << got << ", exact " << r;
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

// A row's output does not depend on how many rows share the call (no split-K): rows of an
// M = 300 call equal the same rows computed alone (M = 1) or in a call of 7, bit for bit.
TEST(CudaFp8BlockGemm, RowsDoNotDependOnM) {
  const Case c = fp8_case(1536, 4096, DType::F8_E8M0, 6);
  const LoadedCase lc(c);
  auto gemm = cuda::Fp8BlockGemm::prepare(lc.host, 300);
  const int64_t K = c.k, N = c.n;
  const std::vector<float> x = activations(300, K, 60);
  const std::vector<float> y300 = run_gpu(gemm, quantize_acts(x, 300, K, 300), N);
  for (int64_t r0 : {0, 1, 127, 128, 255, 299}) {
    const int64_t M = r0 + 7 <= 300 ? 7 : 1;
    std::vector<float> xs(x.begin() + r0 * K, x.begin() + (r0 + M) * K);
    const std::vector<float> y = run_gpu(gemm, quantize_acts(xs, M, K, cuda::Fp8BlockGemm::min_scale_ld(static_cast<int>(M))), N);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t o = 0; o < N; ++o)
        ASSERT_EQ(std::bit_cast<uint32_t>(y[static_cast<size_t>(m * N + o)]),
                  std::bit_cast<uint32_t>(y300[static_cast<size_t>((r0 + m) * N + o)]))
            << "row " << r0 + m << " col " << o << " (M = " << M << " vs 300)";
  }
}

// Quantizer + GEMM captured in a CUDA graph replay exactly what direct launches compute,
// also after the input buffer is rewritten between replays.
TEST(CudaFp8BlockGemm, GraphReplayEqualsDirectLaunch) {
  const Case c = fp8_case(1536, 4096, DType::BF16, 7);
  const LoadedCase lc(c);
  const int M = 64;
  const int64_t K = c.k, N = c.n, ld = cuda::Fp8BlockGemm::min_scale_ld(M);
  auto gemm = cuda::Fp8BlockGemm::prepare(lc.host, M);
  DevBuf<float> dx(static_cast<size_t>(M * K)), ds(static_cast<size_t>(K / B * ld)), dy(static_cast<size_t>(M * N));
  DevBuf<uint8_t> dq(static_cast<size_t>(M * K));
  cudaStream_t s;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto pass = [&] {
    cuda::act_quant(dx.p, K, M, K, dq.p, K, ds.p, ActScaleLayout{1, ld}, s);
    gemm.run(s, dq.p, ds.p, ld, M, dy.p, N);
  };
  auto direct = [&](const std::vector<float>& x) {
    upload(dx, x);
    pass();
    KILN_CUDA_CHECK(cudaStreamSynchronize(s));
    return download(dy, static_cast<size_t>(M * N));
  };
  const std::vector<float> x1 = activations(M, K, 70), x2 = activations(M, K, 71);
  const std::vector<float> y1 = direct(x1), y2 = direct(x2);
  ASSERT_NE(y1, y2);

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  KILN_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  pass();
  KILN_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  KILN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (const auto* xy : {&x1, &x2, &x1}) {
    upload(dx, *xy);
    upload(dy, std::vector<float>(static_cast<size_t>(M * N), NAN));
    KILN_CUDA_CHECK(cudaGraphLaunch(exec, s));
    KILN_CUDA_CHECK(cudaStreamSynchronize(s));
    const std::vector<float> y = download(dy, static_cast<size_t>(M * N));
    const std::vector<float>& want = xy == &x2 ? y2 : y1;
    EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * 4), 0) << "graph replay differs from direct launch";
  }
  KILN_CUDA_CHECK(cudaGraphExecDestroy(exec));
  KILN_CUDA_CHECK(cudaGraphDestroy(graph));
  KILN_CUDA_CHECK(cudaStreamDestroy(s));
}

TEST(CudaFp8BlockGemm, UnsupportedShapesAndArgumentsAreClearErrors) {
  auto expect_error = [](auto&& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // n or k not a multiple of 128, blocks other than 128 x 128, another scheme.
  for (auto [n, k] : {std::pair<int64_t, int64_t>{200, 256}, {256, 200}}) {
    quant::Fp8BlockOptions o;
    auto q = quant::quantize_fp8_block(test_linear::random_matrix(n, k, 1), n, k, o);
    const LoadedCase lc(Case{"odd", {{"weight", q.weight}, {"scale", q.scale}}, n, k});
    expect_error([&] { cuda::Fp8BlockGemm::prepare(lc.host, 4); }, "multiples of 128");
  }
  const LoadedCase lc(fp8_case(256, 256, DType::F8_E8M0, 8));
  HostQuantLinear h = lc.host;
  h.block_n = h.block_k = 64;
  h.scale_rows = h.scale_cols = 4;
  expect_error([&] { cuda::Fp8BlockGemm::prepare(h, 4); }, "needs 128x128 blocks");
  h = lc.host;
  h.scheme = SchemeKind::BF16;
  expect_error([&] { cuda::Fp8BlockGemm::prepare(h, 4); }, "takes fp8_block weights");
  h = lc.host;
  h.scale_cols = 1;
  expect_error([&] { cuda::Fp8BlockGemm::prepare(h, 4); }, "scale is [2, 1], expected [2, 2]");

  auto gemm = cuda::Fp8BlockGemm::prepare(lc.host, 8);
  DevBuf<uint8_t> a(8 * 256 + 16);
  DevBuf<float> s(2 * 8 + 4), y(8 * 260 + 4);
  expect_error([&] { gemm.run(nullptr, a.p, s.p, 8, 9, y.p, 256); }, "M = 9 is outside [1, 8]");
  expect_error([&] { gemm.run(nullptr, a.p, s.p, 6, 5, y.p, 256); }, "scale_ld = 6");
  expect_error([&] { gemm.run(nullptr, a.p, s.p, 4, 5, y.p, 256); }, "scale_ld = 4");
  expect_error([&] { gemm.run(nullptr, a.p, s.p, 8, 5, y.p, 258); }, "ldy = 258");
  expect_error([&] { gemm.run(nullptr, a.p + 1, s.p, 8, 5, y.p, 256); }, "16-byte aligned");
  expect_error([&] { gemm.run(nullptr, a.p, s.p + 1, 8, 5, y.p, 256); }, "16-byte aligned");
  expect_error([&] { gemm.run(nullptr, nullptr, s.p, 8, 5, y.p, 256); }, "null");
}

#endif  // KILN_HAVE_CUTLASS

}  // namespace
}  // namespace kiln::ops
