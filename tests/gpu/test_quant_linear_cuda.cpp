// The CUDA linear kernels of every weight scheme against kiln's CPU reference: each
// weight is quantized by kiln's quantizers, written as a one-module safetensors file,
// detected (detect_scheme) and dequantized by model::dequantize_linear exactly as the
// loader does; the GPU gets the same on-disk bytes through a HostQuantLinear view. The
// reference y = x W^T is summed in double from the dequantized fp32 W.
//
// Tolerance, per output element: |y - ref| <= 2e-5 * sum_k |x_k W_nk| (fp32 sums of up to
// 8192 products in a fixed tree, plus one rounding of each group's scale product; the
// nvfp4 global multiplies the sum rather than each element). A single wrong or missing
// element of W moves y by about sum|x W| / k >= 1.2e-4 * sum|x W| for k <= 8192, so the
// bound catches indexing errors. Outputs are poisoned with NaN beforehand; elements the
// call must not write (rows >= M, the gap between n and ldy) must stay poisoned.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/quant_linear.h"
#include "kiln/quant/quantize.h"
#include "quant_linear_cases.h"

namespace kiln::ops {
namespace {

using namespace test_linear;

// Writes the case, plans and dequantizes it on the CPU, runs it on the GPU for every M.
void check_case(const Case& c, std::initializer_list<int> ms, uint32_t seed, int rows_per_thread = 0) {
  SCOPED_TRACE(c.label + " [" + std::to_string(c.n) + ", " + std::to_string(c.k) + "]");
  const LoadedCase lc(c);
  const std::vector<float>& W = lc.W;

  const int max_m = 64;
  auto lin = cuda::QuantLinear::prepare(lc.host, max_m, rows_per_thread);
  EXPECT_EQ(lin.n(), c.n);
  EXPECT_EQ(lin.k(), c.k);

  const int64_t ldx = c.k + 3, ldy = c.n + 5;  // odd strides: the unaligned path
  for (int M : ms) {
    SCOPED_TRACE("M=" + std::to_string(M) + " " + lin.describe(M));
    // Aligned, contiguous x (the direct path when k is a whole number of chunks); for
    // M = 3 also x with an odd row stride (always staged through the padded copy).
    for (bool strided : {false, true}) {
      if (strided && M != 3) continue;
      const int64_t lx = strided ? ldx : c.k, ly = strided ? ldy : c.n;
      std::vector<float> x = random_matrix(M, lx, seed + static_cast<uint32_t>(M) * 7 + strided);
      DevBuf<float> dx(static_cast<size_t>(M * lx)), dy(static_cast<size_t>(max_m * ly));
      std::vector<float> y(static_cast<size_t>(max_m * ly), std::nanf(""));
      KILN_CUDA_CHECK(cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
      KILN_CUDA_CHECK(cudaMemcpy(dy.p, y.data(), y.size() * 4, cudaMemcpyHostToDevice));
      lin.forward(dx.p, lx, M, dy.p, ly, nullptr);
      KILN_CUDA_CHECK(cudaDeviceSynchronize());
      KILN_CUDA_CHECK(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost));
      int bad = 0;
      double worst = 0;
      for (int m = 0; m < max_m; ++m) {
        for (int64_t o = 0; o < ly; ++o) {
          const float got = y[static_cast<size_t>(m * ly + o)];
          if (m >= M || o >= c.n) {
            if (!std::isnan(got) && ++bad <= 3) ADD_FAILURE() << "wrote outside the output: y[" << m << ", " << o << "]";
            continue;
          }
          double ref = 0, mag = 0;
          for (int64_t j = 0; j < c.k; ++j) {
            const double p = static_cast<double>(x[static_cast<size_t>(m * lx + j)]) * W[static_cast<size_t>(o * c.k + j)];
            ref += p;
            mag += std::fabs(p);
          }
          const double err = std::fabs(got - ref), tol = 2e-5 * mag + 1e-30;
          if (mag > 0) worst = std::max(worst, err / mag);
          if (!(err <= tol) && ++bad <= 3)
            ADD_FAILURE() << (strided ? "strided " : "") << "y[" << m << ", " << o << "] = " << got << ", reference "
                          << ref << " (sum|xw| " << mag << ")";
        }
      }
      EXPECT_EQ(bad, 0) << (strided ? "strided" : "contiguous") << ", worst relative error " << worst;
    }
  }
}

const std::initializer_list<int> kMs = {1, 3, 16, 64};

struct Shape {
  int64_t n, k;
};
// Includes k not a multiple of 128 (or of the chunk), few rows with long k (many lanes
// per row, the shared-memory reduction), and many rows with short k.
const Shape kShapes[] = {{1, 256}, {37, 200}, {300, 520}, {64, 8192}, {1030, 128}, {257, 4096}};

TEST(CudaQuantLinear, Bf16) {
  for (const auto& s : kShapes) {
    for (int64_t k : {s.k, s.k + 3}) {  // k = 203 etc.: not even a whole 16-byte chunk
      auto w = random_matrix(s.n, k, 1);
      check_case({"bf16", {{"weight", quant::encode_floats(w, {s.n, k}, DType::BF16)}}, s.n, k}, kMs, 11);
    }
  }
}

TEST(CudaQuantLinear, Fp8Block) {
  struct V {
    DType sd;
    int64_t bn, bk;
    const char* field;
  };
  for (V v : {V{DType::F8_E8M0, 128, 128, "scale"}, V{DType::F32, 128, 128, "weight_scale_inv"},
              V{DType::BF16, 128, 128, "weight_scale"}}) {
    for (const auto& s : kShapes) {
      auto w = random_matrix(s.n, s.k, 2);
      quant::Fp8BlockOptions o;
      o.block_n = v.bn;
      o.block_k = v.bk;
      o.scale_dtype = v.sd;
      auto q = quant::quantize_fp8_block(w, s.n, s.k, o);
      check_case({std::string("fp8_block ") + std::string(dtype_name(v.sd)), {{"weight", q.weight}, {v.field, q.scale}}, s.n, s.k},
                 kMs, 12);
    }
  }
}

TEST(CudaQuantLinear, Int4Group) {
  struct V {
    int64_t group;
    bool sym;
    DType sd;
  };
  for (V v : {V{128, true, DType::BF16}, V{32, false, DType::F32}, V{64, true, DType::F16}, V{128, false, DType::BF16}}) {
    for (const auto& s : kShapes) {
      auto w = random_matrix(s.n, s.k, 3);
      quant::Int4Options o;
      o.group = v.group;
      o.symmetric = v.sym;
      o.scale_dtype = v.sd;
      auto q = quant::quantize_int4_group(w, s.n, s.k, o);
      Fields f{{"weight_packed", q.packed}, {"weight_scale", q.scale}, {"weight_shape", q.shape}};
      if (q.zero_point) f.push_back({"weight_zero_point", *q.zero_point});
      check_case({"int4 g" + std::to_string(v.group) + (v.sym ? " sym" : " asym"), f, s.n, s.k}, kMs, 13);
    }
  }
}

TEST(CudaQuantLinear, Mxfp4) {
  for (DType wd : {DType::I8, DType::U8}) {
    for (const auto& s : kShapes) {
      auto w = random_matrix(s.n, s.k, 4);
      quant::Mxfp4Options o;
      o.weight_dtype = wd;
      o.scale_dtype = wd == DType::I8 ? DType::F8_E8M0 : DType::U8;
      auto q = quant::quantize_mxfp4(w, s.n, s.k, o);
      Fields f = wd == DType::I8 ? Fields{{"weight", q.weight}, {"scale", q.scale}}
                                 : Fields{{"weight_packed", q.weight}, {"weight_scale", q.scale}};
      check_case({std::string("mxfp4 ") + std::string(dtype_name(wd)), f, s.n, s.k}, kMs, 14);
    }
  }
}

TEST(CudaQuantLinear, Nvfp4) {
  for (auto conv : {quant::Nvfp4Convention::ModelOpt, quant::Nvfp4Convention::CompressedTensors}) {
    for (const auto& s : kShapes) {
      const int64_t k = (s.k + 15) / 16 * 16;  // 200 -> 208: nvfp4 needs k % 16 == 0
      auto w = random_matrix(s.n, k, 5);
      auto q = quant::quantize_nvfp4(w, s.n, k, quant::nvfp4_global_for(quant::amax(w)), conv);
      Fields f = conv == quant::Nvfp4Convention::ModelOpt
                     ? Fields{{"weight", q.weight}, {"weight_scale", q.scale}, {"weight_scale_2", q.global_scale}}
                     : Fields{{"weight_packed", q.weight}, {"weight_scale", q.scale}, {"weight_global_scale", q.global_scale}};
      check_case({conv == quant::Nvfp4Convention::ModelOpt ? "nvfp4 modelopt" : "nvfp4 ct", f, s.n, k}, kMs, 15);
    }
  }
}

// Every M from 1 to 64 on one shape: each token tile and the partial tiles beyond 32.
TEST(CudaQuantLinear, EveryTokenCount) {
  auto w = random_matrix(96, 384, 6);
  auto q = quant::quantize_fp8_block(w, 96, 384);
  Case c{"fp8_block e8m0", {{"weight", q.weight}, {"scale", q.scale}}, 96, 384};
  for (int M = 1; M <= 64; ++M) check_case(c, {M}, 16 + static_cast<uint32_t>(M));
}

// The kernels with 1 and 2 rows per thread (the benchmark's variants; the defaults are
// covered above), each scheme on a shape with a partial chunk and a partial row block.
TEST(CudaQuantLinear, RowsPerThreadVariants) {
  const int64_t n = 37, k = 208;
  // int4 with its default group (128), the other schemes as everywhere
  const std::vector<Case> cases = one_of_each_scheme(n, k, 7, quant::Int4Options{}.group);
  for (const Case& c : cases)
    for (int rw : {1, 2, 4}) check_case(c, {1, 2, 3, 8, 16, 33, 64}, 17, rw);
}

// A weight whose one-token grid fills few multiprocessors runs M tokens as M one-row
// tiles of the one-token kernel (quant_linear.cpp): each row of an M-row product is then
// bitwise the one-row product of that row, for every scheme. A large weight keeps the
// shared token tile.
TEST(CudaQuantLinear, SmallWeightsRunEachTokenRowAsTheOneTokenKernel) {
  const int64_t n = 128, k = 256;
  const int max_m = 16;
  for (const Case& c : one_of_each_scheme(n, k, 9)) {
    SCOPED_TRACE(c.label);
    const LoadedCase lc(c);
    auto lin = cuda::QuantLinear::prepare(lc.host, max_m);
    const std::vector<float> x = random_matrix(max_m, k, 29);
    DevBuf<float> dx(static_cast<size_t>(max_m * k)), dy(static_cast<size_t>(max_m * n));
    KILN_CUDA_CHECK(cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    // The one-row product of every row, one call each.
    std::vector<float> one(static_cast<size_t>(max_m * n));
    for (int m = 0; m < max_m; ++m) lin.forward(dx.p + m * k, k, 1, dy.p + m * n, n, nullptr);
    KILN_CUDA_CHECK(cudaMemcpy(one.data(), dy.p, one.size() * 4, cudaMemcpyDeviceToHost));
    for (int M = 2; M <= 8; ++M) {
      const std::string plan = lin.describe(M);
      SCOPED_TRACE("M=" + std::to_string(M) + " " + plan);
      EXPECT_NE(plan.find("mt=1 "), std::string::npos);
      EXPECT_NE(plan.find("x" + std::to_string(M)), std::string::npos) << "M token tiles";
      std::vector<float> y(static_cast<size_t>(M * n));
      lin.forward(dx.p, k, M, dy.p, n, nullptr);
      KILN_CUDA_CHECK(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost));
      EXPECT_EQ(0, std::memcmp(y.data(), one.data(), y.size() * 4)) << "rows differ from the one-row products";
    }
  }
  // 16384 x 512 BF16 (16 MB): its one-token grid fills the GPU; two tokens share a tile.
  auto w = random_matrix(16384, 512, 3);
  const Case big{"bf16", {{"weight", quant::encode_floats(w, {16384, 512}, DType::BF16)}}, 16384, 512};
  const LoadedCase lb(big);
  auto lin = cuda::QuantLinear::prepare(lb.host, 4);
  EXPECT_NE(std::string(lin.describe(2)).find("mt=2 "), std::string::npos) << lin.describe(2);
}

TEST(CudaQuantLinear, BadInputIsAClearError) {
  std::vector<std::byte> wb(64 * 2), sb(1);
  HostQuantLinear h;
  h.name = "layers.0.attn.wq_a";
  h.scheme = SchemeKind::FP8Block;
  h.n = 8;
  h.k = 16;
  h.weight_dtype = DType::F8_E4M3;
  h.weight = {wb.data(), wb.size()};  // 128 bytes for 8 x 16 = 128 elements
  h.scale_dtype = DType::F8_E8M0;
  h.scale = {sb.data(), sb.size()};
  h.scale_rows = 1;
  h.scale_cols = 1;
  h.block_n = 128;
  h.block_k = 128;
  EXPECT_NO_THROW(cuda::QuantLinear::prepare(h, 4));
  auto expect_error = [&](const HostQuantLinear& bad, const char* needle) {
    try {
      cuda::QuantLinear::prepare(bad, 4);
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("layers.0.attn.wq_a"), std::string::npos) << e.what();
    }
  };
  HostQuantLinear b = h;
  b.k = 17;
  expect_error(b, "weight holds 128 bytes, expected 136");
  b = h;
  b.scale_dtype = DType::I32;
  expect_error(b, "scale is I32");
  b = h;
  b.scale_cols = 2;
  expect_error(b, "scale is [1, 2], expected [1, 1]");
  b = h;
  wb[37] = std::byte{0x7F};
  expect_error(b, "e4m3 NaN code");
  wb[37] = std::byte{0};
  b = h;
  b.block_k = 48;
  b.k = 96;
  b.n = 1;
  b.scale_cols = 2;
  std::vector<std::byte> sb2(2);
  b.scale = {sb2.data(), sb2.size()};
  b.weight = {wb.data(), 96};
  expect_error(b, "block/group of 48 inputs is not supported");
  b = h;
  b.scheme = SchemeKind::NVFP4;
  b.weight_dtype = DType::U8;
  b.scale_dtype = DType::F8_E4M3;
  b.k = 24;
  b.n = 1;
  b.weight = {wb.data(), 12};
  expect_error(b, "multiple of 16");
  auto lin = cuda::QuantLinear::prepare(h, 4);
  try {
    lin.forward(nullptr, 16, 5, nullptr, 8, nullptr);
    ADD_FAILURE() << "M beyond max_m accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("M = 5 is outside [1, 4]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::ops
