// Quantized linear kernels (ops/cpu/quant_linear.h) against dequantize-then-matmul: each
// module is written to a safetensors file in its on-disk form with random codes and
// scales, planned like a checkpoint module, then prepare_linear (stored form, decoded in
// the kernel) must give y BITWISE equal to dequantize_linear (the load-time fp32 path)
// followed by the fp32 ops::cpu::linear, for T = 1..17, with and without threads, shapes
// that are not multiples of the block or group. A tensor-parallel slice of each
// (ops/cpu/linear_slice.h), starting inside a block, decodes to the same floats as the
// matching block of the whole weight.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <random>

#include "kiln/artifact/plan.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/weights.h"
#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/linear_slice.h"
#include "kiln/ops/cpu/quant_decode.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "support/artifacts.h"
#include "support/plan_module.h"

namespace kiln::model {
namespace {

using Tensors = std::vector<SafetensorsWriter::Tensor>;

struct Gen {
  std::mt19937_64 g{1234};
  int u(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); }
  float f(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g); }
  template <typename T>
  std::vector<std::byte> raw(const std::vector<T>& v) {
    std::vector<std::byte> b(v.size() * sizeof(T));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  }
  // n random bytes from make(i).
  template <typename F>
  std::vector<std::byte> bytes(int64_t n, F make) {
    std::vector<std::byte> b(static_cast<size_t>(n));
    for (auto& x : b) x = static_cast<std::byte>(make());
    return b;
  }
  // Any e4m3 code but NaN (0x7F, 0xFF), sign bit included.
  uint8_t e4m3() {
    for (;;) {
      const auto c = static_cast<uint8_t>(u(0, 255));
      if ((c & 0x7F) != 0x7F) return c;
    }
  }
  // Scales of each float dtype around 2^-6 .. 2^-2.
  std::vector<std::byte> scales(DType dt, int64_t n) {
    std::vector<std::byte> b;
    for (int64_t i = 0; i < n; ++i) {
      const float v = f(0.01f, 0.3f);
      if (dt == DType::F32) {
        auto r = raw(std::vector<float>{v});
        b.insert(b.end(), r.begin(), r.end());
      } else if (dt == DType::BF16 || dt == DType::F16) {
        auto r = raw(std::vector<uint16_t>{dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v)});
        b.insert(b.end(), r.begin(), r.end());
      } else {  // E8M0 / U8
        b.push_back(static_cast<std::byte>(u(119, 126)));
      }
    }
    return b;
  }
};

struct Module {
  Tensors tensors;
  std::optional<std::pair<int64_t, int64_t>> hint;
};

// Plans the module's tensors as [n, k] and checks prepare_linear against the fp32 path.
void expect_bitwise(const Module& m, int64_t n, int64_t k, const char* what, bool expect_quantized = true) {
  SCOPED_TRACE(what);
  test::TempDir d;
  SafetensorsWriter::write_file(d.path() / "m.safetensors", m.tensors);
  auto ckpt = Checkpoint::open(d.path());
  PlannedLinear pl = test::plan_module_m(ckpt, n, k);
  auto det = detect_scheme("m", pl.fields, n, k, m.hint);
  ASSERT_TRUE(det.scheme) << (det.errors.empty() ? "" : det.errors[0]);
  pl.scheme = *det.scheme;
  pl.roles = det.roles;
  const Linear ref = dequantize_linear(ckpt, pl);
  const Linear q = prepare_linear(ckpt, pl);
  ASSERT_EQ(q.quantized(), expect_quantized);
  ASSERT_TRUE(q.complete());
  if (expect_quantized) {
    EXPECT_LT(q.q.codes.size(), ref.bytes());  // scales can outweigh it on degenerate grids
  }
  // The decoder alone reproduces the load-time dequantization bit for bit.
  const std::vector<float> dq = q.dequantized_rows(0, n);
  ASSERT_EQ(std::memcmp(dq.data(), ref.w.data(), dq.size() * sizeof(float)), 0);
  // Every decoder this CPU can run (portable, AVX2) gives those bits.
  if (expect_quantized) {
    for (auto fn : {ops::cpu::portable_decoder(q.q), ops::cpu::avx2_decoder(q.q)}) {
      if (fn == nullptr) continue;
      std::vector<float> v(dq.size(), -7.0f);
      fn(q.q, k, 0, n, v.data());
      ASSERT_EQ(std::memcmp(v.data(), ref.w.data(), v.size() * sizeof(float)), 0);
      if (n > 2) {  // a row range in the middle
        std::vector<float> mid(static_cast<size_t>(k));
        fn(q.q, k, 1, 2, mid.data());
        ASSERT_EQ(std::memcmp(mid.data(), ref.w.data() + k, mid.size() * sizeof(float)), 0);
      }
    }
  }

  // Slices: whole, and one starting inside a block in both directions (even width: fp4
  // packs pairs).
  const int64_t c0 = k / 3, c1 = c0 + ((k - c0) & ~int64_t{1});
  for (auto [r0, r1, a, b] : {std::array<int64_t, 4>{0, n, 0, k}, {n / 3, n, c0, c1}, {0, (n + 1) / 2, 1, 1 + ((k - 1) & ~int64_t{1})}}) {
    if (r0 >= r1 || a >= b) continue;
    const Linear s = ops::cpu::slice_linear(q, r0, r1, a, b, "slice");
    ASSERT_EQ(s.quantized(), q.quantized());
    const std::vector<float> got = s.dequantized_rows(0, r1 - r0);
    for (int64_t r = r0; r < r1; ++r) {
      ASSERT_EQ(std::memcmp(got.data() + (r - r0) * (b - a), ref.w.data() + r * k + a, static_cast<size_t>(b - a) * sizeof(float)), 0)
          << "slice rows [" << r0 << ", " << r1 << ") columns [" << a << ", " << b << ") row " << r;
    }
  }

  std::mt19937_64 g(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  ops::cpu::ThreadPool pool(3);
  for (int64_t T = 1; T <= 17; ++T) {
    std::vector<float> x(static_cast<size_t>(T * k));
    for (float& v : x) v = nd(g);
    std::vector<float> want(static_cast<size_t>(T * n)), got(want.size(), -1.0f), got1(want.size(), -1.0f);
    ops::cpu::linear(x.data(), T, ref.w.data(), n, k, want.data(), nullptr);
    ops::cpu::linear(q, x.data(), T, got.data(), &pool);
    ops::cpu::linear(q, x.data(), T, got1.data(), nullptr);
    ASSERT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0) << "T=" << T << " threaded";
    ASSERT_EQ(std::memcmp(want.data(), got1.data(), want.size() * sizeof(float)), 0) << "T=" << T;
  }
}

TEST(QuantLinear, Avx2DecodersAreUsedWhereTheCpuHasAvx2) {
  ops::cpu::QuantWeight q;
  q.scheme = SchemeKind::MXFP4;
  EXPECT_EQ(ops::cpu::avx2_decoder(q) != nullptr, ops::cpu::cpu_has_avx2());
  EXPECT_EQ(ops::cpu::decoder_for(q), ops::cpu::cpu_has_avx2() ? ops::cpu::avx2_decoder(q) : ops::cpu::portable_decoder(q));
}

TEST(QuantLinear, Bf16AndF16) {
  Gen g;
  for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 1}, {37, 45}, {64, 130}, {5, 700}}) {
    Module b;
    b.tensors = {{"m.weight", DType::BF16, {n, k}, g.bytes(2 * n * k, [&] { return g.u(0, 255) & (g.u(0, 7) ? 0xBF : 0xFF); })}};
    // Keep exponents finite: the high byte's exponent bits never all set.
    for (size_t i = 1; i < b.tensors[0].bytes.size(); i += 2) b.tensors[0].bytes[i] &= std::byte{0xBF};
    expect_bitwise(b, n, k, "bf16");
    Module h;
    h.tensors = {{"m.weight", DType::F16, {n, k}, g.bytes(2 * n * k, [&] { return g.u(0, 255); })}};
    for (size_t i = 1; i < h.tensors[0].bytes.size(); i += 2) h.tensors[0].bytes[i] &= std::byte{0xBB};
    expect_bitwise(h, n, k, "f16");
  }
  // F32 weights stay fp32 (nothing to save).
  Module f;
  f.tensors = {{"m.weight", DType::F32, {3, 5}, g.raw(std::vector<float>(15, 0.5f))}};
  expect_bitwise(f, 3, 5, "f32", /*expect_quantized=*/false);
}

TEST(QuantLinear, Fp8BlockEveryScaleDtypeAndPartialBlocks) {
  Gen g;
  struct Case {
    int64_t n, k, bn, bk;
  };
  for (Case c : {Case{37, 45, 8, 16}, Case{130, 300, 128, 128}, Case{17, 33, 1, 33}, Case{9, 70, 9, 70}, Case{20, 50, 1, 1}}) {
    for (DType sdt : {DType::F8_E8M0, DType::F32, DType::BF16, DType::F16, DType::U8}) {
      SCOPED_TRACE(dtype_name(sdt));
      const int64_t sr = (c.n + c.bn - 1) / c.bn, sc = (c.k + c.bk - 1) / c.bk;
      Module m;
      m.tensors = {{"m.weight", DType::F8_E4M3, {c.n, c.k}, g.bytes(c.n * c.k, [&] { return g.e4m3(); })},
                   {sdt == DType::F32 ? "m.weight_scale_inv" : "m.scale", sdt, {sr, sc}, g.scales(sdt, sr * sc)}};
      m.hint = std::pair(c.bn, c.bk);
      expect_bitwise(m, c.n, c.k, fmt::format("fp8 {}x{} blocks {}x{} {}", c.n, c.k, c.bn, c.bk, dtype_name(sdt)).c_str());
    }
  }
  // Every one of the 256 codes, NaN (S.1111.111) included, decodes as the table does.
  Module all;
  std::vector<std::byte> codes(256 * 3);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::byte>((i * 7) % 256);
  all.tensors = {{"m.weight", DType::F8_E4M3, {3, 256}, codes}, {"m.weight_scale_inv", DType::F32, {1, 2}, g.scales(DType::F32, 2)}};
  all.hint = std::pair(128, 128);
  expect_bitwise(all, 3, 256, "fp8 every code");
}

TEST(QuantLinear, Int4GroupSymmetricZeroPointsAndActOrder) {
  Gen g;
  struct Case {
    int64_t n, k, groups;
  };
  for (Case c : {Case{37, 200, 4}, Case{13, 45, 1}, Case{64, 256, 2}, Case{9, 130, 5}, Case{24, 7, 1}}) {
    const int64_t words = (c.k + 7) / 8;
    for (DType sdt : {DType::BF16, DType::F16, DType::F32}) {
      for (int variant = 0; variant < 4; ++variant) {  // bit 0: zero points, bit 1: g_idx
        Module m;
        m.tensors = {{"m.weight_packed", DType::I32, {c.n, words}, g.bytes(4 * c.n * words, [&] { return g.u(0, 255); })},
                     {"m.weight_scale", sdt, {c.n, c.groups}, g.scales(sdt, c.n * c.groups)}};
        if (variant & 1) {
          m.tensors.push_back({"m.weight_zero_point", DType::I32, {(c.n + 7) / 8, c.groups},
                               g.bytes(4 * ((c.n + 7) / 8) * c.groups, [&] { return g.u(0, 255); })});
        }
        if (variant & 2) {
          std::vector<int32_t> gi(static_cast<size_t>(c.k));
          for (auto& v : gi) v = g.u(0, static_cast<int>(c.groups) - 1);
          m.tensors.push_back({"m.weight_g_idx", DType::I32, {c.k}, g.raw(gi)});
        }
        expect_bitwise(m, c.n, c.k,
                       fmt::format("int4 {}x{} groups {} {} zp={} g_idx={}", c.n, c.k, c.groups, dtype_name(sdt),
                                   variant & 1, variant >> 1).c_str());
      }
    }
  }
}

TEST(QuantLinear, Nvfp4BothGlobalConventions) {
  Gen g;
  for (auto [n, k] : {std::pair<int64_t, int64_t>{37, 48}, {5, 16}, {64, 272}}) {
    auto packed = [&] { return g.bytes(n * k / 2, [&] { return g.u(0, 255); }); };
    auto gscale = [&] { return g.bytes(n * k / 16, [&] { return g.u(0x20, 0x5F); }); };
    Module mo;  // ModelOpt: multiplier weight_scale_2
    mo.tensors = {{"m.weight", DType::U8, {n, k / 2}, packed()},
                  {"m.weight_scale", DType::F8_E4M3, {n, k / 16}, gscale()},
                  {"m.weight_scale_2", DType::F32, {}, g.raw(std::vector<float>{g.f(1e-4f, 1e-2f)})}};
    expect_bitwise(mo, n, k, "nvfp4 modelopt");
    Module ct;  // compressed-tensors: divisor weight_global_scale
    ct.tensors = {{"m.weight_packed", DType::U8, {n, k / 2}, packed()},
                  {"m.weight_scale", DType::F8_E4M3, {n, k / 16}, gscale()},
                  {"m.weight_global_scale", DType::F32, {}, g.raw(std::vector<float>{g.f(100.0f, 3000.0f)})}};
    expect_bitwise(ct, n, k, "nvfp4 compressed-tensors");
  }
}

TEST(QuantLinear, Mxfp4PartialLastBlock) {
  Gen g;
  for (auto [n, k] : {std::pair<int64_t, int64_t>{37, 70}, {3, 2}, {64, 256}, {11, 98}}) {
    for (DType sdt : {DType::F8_E8M0, DType::U8}) {
      const int64_t sc = (k + 31) / 32;
      Module m;
      m.tensors = {{"m.weight", DType::U8, {n, k / 2}, g.bytes(n * k / 2, [&] { return g.u(0, 255); })},
                   {"m.scale", sdt, {n, sc}, g.bytes(n * sc, [&] { return g.u(118, 130); })}};
      expect_bitwise(m, n, k, fmt::format("mxfp4 {}x{} {}", n, k, dtype_name(sdt)).c_str());
    }
  }
}

// A batch of jobs (row ranges of several weights, own inputs and output strides) equals
// running each job alone, and a job that does not fit its weight is refused.
TEST(QuantLinear, BatchedJobsEqualSeparateProducts) {
  Gen g;
  const int64_t k = 40, T = 5;
  Linear a, b;
  a.out = 24;
  a.in = k;
  ops::cpu::QuantWeight qa;
  qa.scheme = SchemeKind::FP8Block;
  for (int64_t i = 0; i < a.out * k; ++i) qa.codes.push_back(g.e4m3());
  qa.block_n = 8;
  qa.block_k = 16;
  qa.scale_cols = 3;
  for (int i = 0; i < 9; ++i) qa.scales.push_back(g.f(0.01f, 1.0f));
  a.prepare(std::move(qa), "a");
  b.out = 10;
  b.in = k;
  for (int64_t i = 0; i < b.out * k; ++i) b.w.push_back(g.f(-1.0f, 1.0f));
  std::vector<float> xa(T * k), xb(T * k);
  for (float& v : xa) v = g.f(-1, 1);
  for (float& v : xb) v = g.f(-1, 1);
  // a's rows 8..19 into columns 0..11 of y (ldy 30), b whole into columns 12..21.
  std::vector<float> y(T * 30, 0.0f), ya(T * 12), yb(T * 10);
  const ops::cpu::LinearJob jobs[2] = {{&a, xa.data(), k, y.data(), 30, 8, 12}, {&b, xb.data(), k, y.data() + 12, 30, 0, 10}};
  ops::cpu::ThreadPool pool(2);
  ops::cpu::linear(jobs, T, &pool);
  const auto wa = a.dequantized_rows(8, 20);
  ops::cpu::linear(xa.data(), T, wa.data(), 12, k, ya.data(), nullptr);
  ops::cpu::linear(xb.data(), T, b.w.data(), 10, k, yb.data(), nullptr);
  for (int64_t t = 0; t < T; ++t) {
    ASSERT_EQ(std::memcmp(y.data() + t * 30, ya.data() + t * 12, 12 * sizeof(float)), 0);
    ASSERT_EQ(std::memcmp(y.data() + t * 30 + 12, yb.data() + t * 10, 10 * sizeof(float)), 0);
  }
  const ops::cpu::LinearJob bad{&a, xa.data(), k, y.data(), 30, 20, 12};
  EXPECT_THROW(ops::cpu::linear(std::span(&bad, 1), T, &pool), Error);
}

// Prepared arrays that do not match the shape are refused with the tensor named.
TEST(QuantLinear, MismatchedArraysAreRefused) {
  Linear l;
  l.out = 4;
  l.in = 32;
  ops::cpu::QuantWeight q;
  q.scheme = SchemeKind::NVFP4;
  q.codes.assign(4 * 16, 0);
  q.block_k = 16;
  q.scale_cols = 2;
  q.scale_codes.assign(7, 0);  // 8 needed
  try {
    l.prepare(q, "layers.0.attn.wq_a.weight");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.attn.wq_a.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("scale codes"), std::string::npos) << e.what();
  }
  q.scale_codes.assign(8, 0);
  q.scheme = SchemeKind::Int4Group;
  q.codes.assign(4 * 16, 0);
  q.scales.assign(8, 1.0f);
  q.scale_codes.clear();
  q.g_idx.assign(32, 0);
  q.g_idx[5] = 2;
  EXPECT_THROW(l.prepare(q, "g"), Error);
  q.g_idx[5] = 1;
  l.prepare(q, "g");
  EXPECT_TRUE(l.quantized());
}

}  // namespace
}  // namespace kiln::model
