// Round trip of every quantizer through kiln's own loader: quantize(w) is written as a
// one-module safetensors file, its scheme detected from disk (detect_scheme, as the plan
// does) and dequantized by dequantize_linear; the error of every element must stay within
// the scheme's rounding bound: half the grid step at the element's magnitude (in units of
// its decoded scale), plus any saturation the scale rule allows (none, for these rules).
// Also: byte layouts worked out by hand, partial blocks, zero blocks, extreme values.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kiln/artifact/plan.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/weights.h"
#include "kiln/quant/fast_codecs.h"
#include "kiln/quant/quantize.h"
#include "support/artifacts.h"
#include "support/plan_module.h"

namespace kiln::quant {
namespace {

using Fields = std::vector<std::pair<std::string, QTensor>>;

struct Deq {
  Scheme scheme;
  std::vector<float> w;
};

// Writes the module "m" with `fields`, detects its scheme and dequantizes it.
Deq roundtrip(const Fields& fields, int64_t n, int64_t k) {
  test::TempDir d;
  std::vector<SafetensorsWriter::Tensor> ts;
  for (const auto& [f, t] : fields) ts.push_back({"m." + f, t.dtype, t.shape, t.bytes});
  SafetensorsWriter::write_file(d.path() / "m.safetensors", ts);
  auto ckpt = Checkpoint::open(d.path());
  PlannedLinear pl = test::plan_module_m(ckpt, n, k);
  auto det = detect_scheme("m", pl.fields, n, k);
  if (!det.scheme) {
    ADD_FAILURE() << "detect_scheme: " << (det.errors.empty() ? "?" : det.errors[0]);
    return {};
  }
  pl.scheme = *det.scheme;
  pl.roles = det.roles;
  return {*det.scheme, model::dequantize_linear(ckpt, pl).w};
}

// Half the distance between neighbouring e4m3 values around x >= 0 (x <= 448), or the
// saturation excess x - 448.
double e4m3_bound(double x) {
  if (x >= 448.0) return x - 448.0;
  if (x < 0x1p-6) return 0x1p-10;  // subnormal step 2^-9
  const int e = static_cast<int>(std::floor(std::log2(x)));
  return std::ldexp(1.0, e - 4);
}
// Same for e2m1: grid {0, .5, 1, 1.5, 2, 3, 4, 6}.
double e2m1_bound(double x) {
  if (x >= 6.0) return x - 6.0;
  if (x < 2.0) return 0.25;
  if (x < 4.0) return 0.5;
  return 1.0;
}

// Float rounding of w / s (quantize) and of code * s (dequantize): a few ulps of the values.
double slack(float w, float d) { return 0x1p-21 * (std::fabs(static_cast<double>(w)) + std::fabs(static_cast<double>(d))) + 1e-45; }

// Near FLT_MAX the quantizers round toward zero where rounding up would overflow: the
// error may then reach a whole grid step (twice the half-step bound).
double near_max(float w, double bound) {
  return std::fabs(static_cast<double>(w)) + bound > static_cast<double>(std::numeric_limits<float>::max()) ? 2.0 : 1.0;
}

float scale_at(const QTensor& t, int64_t idx) { return decode_scale(t.dtype, t.bytes.data() + idx * dtype_size(t.dtype)); }

// Random matrix: normal values times a per-row magnitude 2^U(-12, 12), with an all-zero
// region, a row of mixed extremes and exact e2m1/e4m3 ties sprinkled in.
std::vector<float> make_matrix(int64_t n, int64_t k, uint32_t seed, bool extremes = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-12, 12);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i) {
    const float mag = std::ldexp(1.0f, ex(rng));
    for (int64_t j = 0; j < k; ++j) w[static_cast<size_t>(i * k + j)] = nd(rng) * mag;
  }
  // Zero region: the first rows' leading columns (whole blocks for small shapes).
  for (int64_t i = 0; i < std::min<int64_t>(n, 2); ++i)
    for (int64_t j = 0; j < std::min<int64_t>(k, 48); ++j) w[static_cast<size_t>(i * k + j)] = 0.0f;
  if (extremes && n > 3) {
    float* r = w.data() + 3 * k;
    const float vals[] = {3.0e38f, -1.0e-40f, 1.5f, -0.0f, 6.0f, 1e-30f, -2.5e37f, 0.75f, 4.4e-44f, 448.0f};
    for (int64_t j = 0; j < k; ++j) r[j] = vals[j % 10];
  }
  return w;
}

struct Shape {
  int64_t n, k;
};
const Shape kShapes[] = {{1, 2}, {3, 16}, {5, 30}, {4, 64}, {130, 200}, {257, 96}, {64, 80}, {128, 128}, {9, 272}};

TEST(Fp8Block, E8M0LayoutByHand) {
  // One 1x4 block, amax 3: 3/448 -> ceil pow2 = 2^-7 (code 120); w/s = 128, -256, 64, 384.
  std::vector<float> w{1.0f, -2.0f, 0.5f, 3.0f};
  auto q = quantize_fp8_block(w, 1, 4);
  ASSERT_EQ(q.scale.shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(q.scale.dtype, DType::F8_E8M0);
  EXPECT_EQ(static_cast<int>(q.scale.bytes[0]), 120);
  const float want[] = {128.0f, -256.0f, 64.0f, 384.0f};
  for (int j = 0; j < 4; ++j) EXPECT_EQ(e4m3_to_f32(static_cast<uint8_t>(q.weight.bytes[j])), want[j]) << j;
  // amax exactly 448 * 2^-3: the scale is that power of two, the max maps to 448.
  std::vector<float> w2{56.0f, 0.0f};
  auto q2 = quantize_fp8_block(w2, 1, 2);
  EXPECT_EQ(static_cast<int>(q2.scale.bytes[0]), 127 - 3);
  EXPECT_EQ(e4m3_to_f32(static_cast<uint8_t>(q2.weight.bytes[0])), 448.0f);
}

TEST(Fp8Block, GridShapeAndPartialBlocks) {
  auto w = make_matrix(130, 200, 1, false);
  auto q = quantize_fp8_block(w, 130, 200);
  EXPECT_EQ(q.weight.shape, (std::vector<int64_t>{130, 200}));
  EXPECT_EQ(q.scale.shape, (std::vector<int64_t>{2, 2}));
  // The partial block (rows 128-129, cols 128-199) takes its scale from its own elements.
  float m = 0;
  for (int i = 128; i < 130; ++i)
    for (int j = 128; j < 200; ++j) m = std::max(m, std::fabs(w[static_cast<size_t>(i * 200 + j)]));
  EXPECT_EQ(scale_at(q.scale, 3), e8m0_to_f32(f32_to_e8m0_ceil(m / 448.0f)));
}

void check_fp8(DType sd, int64_t bn, int64_t bk) {
  for (const auto& [n, k] : kShapes) {
    SCOPED_TRACE(testing::Message() << dtype_name(sd) << " " << n << "x" << k);
    auto w = make_matrix(n, k, static_cast<uint32_t>(n * 1000 + k));
    Fp8BlockOptions o;
    o.scale_dtype = sd;
    o.block_n = bn;
    o.block_k = bk;
    auto q = quantize_fp8_block(w, n, k, o);
    const std::string field = sd == DType::F8_E8M0 ? "scale" : sd == DType::F32 ? "weight_scale_inv" : "weight_scale";
    auto d = roundtrip({{"weight", q.weight}, {field, q.scale}}, n, k);
    ASSERT_EQ(d.w.size(), w.size());
    EXPECT_EQ(d.scheme.kind, SchemeKind::FP8Block);
    EXPECT_EQ(d.scheme.scale_dtype, sd);
    const int64_t gc = (k + bk - 1) / bk;
    size_t zero_blocks_exact = 0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const size_t at = static_cast<size_t>(i * k + j);
        const double s = scale_at(q.scale, (i / bn) * gc + j / bk);
        ASSERT_GT(s, 0.0);
        const double x = std::fabs(static_cast<double>(w[at])) / s;
        ASSERT_LE(x, 448.0 * (1 + 1e-6)) << "the scale rule must not saturate: " << i << "," << j;
        const double err = std::fabs(static_cast<double>(d.w[at]) - w[at]);
        ASSERT_LE(err, near_max(w[at], e4m3_bound(x) * s) * e4m3_bound(x) * s + slack(w[at], d.w[at])) << i << "," << j << " w=" << w[at] << " s=" << s;
        if (w[at] == 0.0f) {
          ASSERT_EQ(d.w[at], 0.0f);
          ++zero_blocks_exact;
        }
      }
    }
    EXPECT_GT(zero_blocks_exact, 0u);
  }
}

TEST(Fp8Block, RoundTripE8M0) { check_fp8(DType::F8_E8M0, 128, 128); }
TEST(Fp8Block, RoundTripF32) { check_fp8(DType::F32, 128, 128); }
TEST(Fp8Block, RoundTripBf16) { check_fp8(DType::BF16, 128, 128); }
TEST(Fp8Block, RoundTripOtherBlocks) { check_fp8(DType::F32, 1, 64); }

TEST(Fp8Block, ZeroBlockScaleIsOne) {
  std::vector<float> w(4, 0.0f);
  for (DType sd : {DType::F8_E8M0, DType::F32, DType::BF16}) {
    Fp8BlockOptions o;
    o.scale_dtype = sd;
    auto q = quantize_fp8_block(w, 2, 2, o);
    EXPECT_EQ(scale_at(q.scale, 0), 1.0f);
    for (auto b : q.weight.bytes) EXPECT_EQ(e4m3_to_f32(static_cast<uint8_t>(b)), 0.0f);
  }
}

TEST(Fp8Block, Bf16ScaleRoundsUpSoNothingSaturates) {
  // amax/448 is not a bf16 value; rounding it to nearest would land below and clip the max.
  std::vector<float> w{1.0f + 0x1p-9f};
  Fp8BlockOptions o;
  o.scale_dtype = DType::BF16;
  auto q = quantize_fp8_block(w, 1, 1, o);
  const float s = scale_at(q.scale, 0);
  EXPECT_GE(s * 448.0f, w[0]);
  EXPECT_LE(e4m3_to_f32(static_cast<uint8_t>(q.weight.bytes[0])), 448.0f);
}

TEST(Mxfp4, LayoutByHand) {
  // 32 values, amax 3 -> s = 2^ceil(log2(3/6)) = 0.5 (code 126); w/s = 1, -6, 0.5, 2.
  std::vector<float> w(32, 0.0f);
  w[0] = 0.5f;   // 1.0  -> code 2
  w[1] = -3.0f;  // -6.0 -> code 0xF
  w[2] = 0.25f;  // 0.5  -> code 1
  w[3] = 1.0f;   // 2.0  -> code 4
  auto q = quantize_mxfp4(w, 1, 32);
  EXPECT_EQ(q.weight.dtype, DType::I8);
  EXPECT_EQ(q.weight.shape, (std::vector<int64_t>{1, 16}));
  EXPECT_EQ(q.scale.shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(static_cast<int>(q.scale.bytes[0]), 126);
  EXPECT_EQ(static_cast<int>(q.weight.bytes[0]), 0xF2);  // element 0 low nibble, element 1 high
  EXPECT_EQ(static_cast<int>(q.weight.bytes[1]), 0x41);
}

TEST(Mxfp4, RoundTrip) {
  for (auto [wd, sd] : {std::pair{DType::I8, DType::F8_E8M0}, std::pair{DType::U8, DType::U8}}) {
    for (const auto& [n, k] : kShapes) {
      SCOPED_TRACE(testing::Message() << dtype_name(wd) << " " << n << "x" << k);
      auto w = make_matrix(n, k, static_cast<uint32_t>(7 * n + k));
      auto q = quantize_mxfp4(w, n, k, {wd, sd});
      Fields f = wd == DType::I8 ? Fields{{"weight", q.weight}, {"scale", q.scale}}
                                 : Fields{{"weight_packed", q.weight}, {"weight_scale", q.scale}};
      auto d = roundtrip(f, n, k);
      ASSERT_EQ(d.w.size(), w.size());
      EXPECT_EQ(d.scheme.kind, SchemeKind::MXFP4);
      const int64_t groups = (k + 31) / 32;
      ASSERT_EQ(q.scale.shape, (std::vector<int64_t>{n, groups}));
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < k; ++j) {
          const size_t at = static_cast<size_t>(i * k + j);
          const double s = scale_at(q.scale, i * groups + j / 32);
          const double x = std::fabs(static_cast<double>(w[at])) / s;
          ASSERT_LE(x, 6.0 * (1 + 1e-6)) << "the scale rule must not saturate";
          const double err = std::fabs(static_cast<double>(d.w[at]) - w[at]);
          ASSERT_LE(err, near_max(w[at], e2m1_bound(x) * s) * e2m1_bound(x) * s + slack(w[at], d.w[at])) << i << "," << j << " w=" << w[at];
        }
      }
    }
  }
}

TEST(Mxfp4, OddWidthIsRefused) {
  std::vector<float> w(3, 1.0f);
  EXPECT_THROW(quantize_mxfp4(w, 1, 3), Error);
}

TEST(Nvfp4, LayoutByHand) {
  // amax 6 -> global 6/2688 = 1/448; block scale e4m3(6 / (6/448)) = 448; w/(448/448) = w.
  std::vector<float> w(16, 0.0f);
  w[0] = 6.0f;
  w[1] = -0.5f;
  w[2] = 1.5f;
  const float g = nvfp4_global_for(amax(w));
  EXPECT_EQ(g, 6.0f / 2688.0f);
  auto q = quantize_nvfp4(w, 1, 16, g);
  EXPECT_EQ(q.global_scale.shape, (std::vector<int64_t>{}));
  float stored;
  std::memcpy(&stored, q.global_scale.bytes.data(), 4);
  EXPECT_EQ(stored, g);
  EXPECT_EQ(e4m3_to_f32(static_cast<uint8_t>(q.scale.bytes[0])), 448.0f);
  EXPECT_EQ(static_cast<int>(q.weight.bytes[0]), 0x97);  // 6 -> 7, -0.5 -> 9
  EXPECT_EQ(static_cast<int>(q.weight.bytes[1]), 0x03);  // 1.5 -> 3, 0 -> 0
  auto ct = quantize_nvfp4(w, 1, 16, g, Nvfp4Convention::CompressedTensors);
  EXPECT_EQ(ct.global_scale.shape, (std::vector<int64_t>{1}));
  std::memcpy(&stored, ct.global_scale.bytes.data(), 4);
  EXPECT_EQ(stored, 1.0f / g);
}

void check_nvfp4(Nvfp4Convention conv, bool shared_global) {
  for (const auto& [n, k] : kShapes) {
    if (k % 16 != 0) continue;
    SCOPED_TRACE(testing::Message() << n << "x" << k);
    auto w = make_matrix(n, k, static_cast<uint32_t>(13 * n + k), /*extremes=*/!shared_global);
    // A shared global comes from a larger partner tensor (w1/w3 of one expert).
    const float g = nvfp4_global_for(amax(w) * (shared_global ? 3.0f : 1.0f));
    auto q = quantize_nvfp4(w, n, k, g, conv);
    Fields f = conv == Nvfp4Convention::ModelOpt
                   ? Fields{{"weight", q.weight}, {"weight_scale", q.scale}, {"weight_scale_2", q.global_scale}}
                   : Fields{{"weight_packed", q.weight}, {"weight_scale", q.scale}, {"weight_global_scale", q.global_scale}};
    auto d = roundtrip(f, n, k);
    ASSERT_EQ(d.w.size(), w.size());
    EXPECT_EQ(d.scheme.kind, SchemeKind::NVFP4);
    const int64_t groups = k / 16;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const size_t at = static_cast<size_t>(i * k + j);
        const double s = static_cast<double>(scale_at(q.scale, i * groups + j / 16)) * q.multiplier;
        const double x = std::fabs(static_cast<double>(w[at])) / s;
        // The e4m3 block scale is block_amax / (6 g) rounded to nearest, so the block max may
        // land above 6 and saturate (by up to half an e4m3 step of the scale); the element
        // bound below includes the saturation, the scale rule is checked here.
        if (j % 16 == 0) {
          float bm = 0;
          for (int64_t t = j; t < j + 16; ++t) bm = std::max(bm, std::fabs(w[static_cast<size_t>(i * k + t)]));
          const double want = bm / (6.0 * q.multiplier), got = scale_at(q.scale, i * groups + j / 16);
          if (bm == 0) ASSERT_EQ(got, 1.0);
          else ASSERT_LE(std::fabs(got - want), std::max(e4m3_bound(want), want < 0x1p-9 ? 0x1p-9 : 0.0) * (1 + 1e-5)) << i << "," << j;
        }
        const double err = std::fabs(static_cast<double>(d.w[at]) - w[at]);
        ASSERT_LE(err, near_max(w[at], e2m1_bound(x) * s) * e2m1_bound(x) * s + slack(w[at], d.w[at])) << i << "," << j << " w=" << w[at];
      }
    }
  }
}

TEST(Nvfp4, RoundTripModelOpt) { check_nvfp4(Nvfp4Convention::ModelOpt, false); }
TEST(Nvfp4, RoundTripCompressedTensors) { check_nvfp4(Nvfp4Convention::CompressedTensors, false); }
TEST(Nvfp4, RoundTripSharedGlobal) { check_nvfp4(Nvfp4Convention::ModelOpt, true); }

TEST(Nvfp4, ZeroAndTinyBlocks) {
  // Block 0 all zero; block 1 tiny next to a large block 2: its e4m3 scale would round to
  // 0, so it gets the smallest subnormal and still dequantizes near its values.
  std::vector<float> w(48, 0.0f);
  for (int j = 16; j < 32; ++j) w[static_cast<size_t>(j)] = 1e-9f * static_cast<float>(j - 15);
  for (int j = 32; j < 48; ++j) w[static_cast<size_t>(j)] = 100.0f;
  const float g = nvfp4_global_for(amax(w));
  auto q = quantize_nvfp4(w, 1, 48, g);
  EXPECT_EQ(e4m3_to_f32(static_cast<uint8_t>(q.scale.bytes[0])), 1.0f);
  EXPECT_EQ(static_cast<int>(q.scale.bytes[1]), 0x01);
  auto d = roundtrip({{"weight", q.weight}, {"weight_scale", q.scale}, {"weight_scale_2", q.global_scale}}, 1, 48);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(d.w[static_cast<size_t>(j)], 0.0f);
  for (int j = 32; j < 48; ++j) EXPECT_NEAR(d.w[static_cast<size_t>(j)], 100.0f, 100.0f * 0x1p-4);
  const double s1 = 0x1p-9 * g;
  for (int j = 16; j < 32; ++j) EXPECT_LE(std::fabs(d.w[static_cast<size_t>(j)] - w[static_cast<size_t>(j)]), 0.25 * s1 + 1e-20);
}

TEST(Nvfp4, WidthNotMultipleOf16IsRefused) {
  std::vector<float> w(24, 1.0f);
  EXPECT_THROW(quantize_nvfp4(w, 1, 24, 1.0f), Error);
}

TEST(Int4Group, LayoutByHand) {
  // One group of 8, amax 7.5 -> s = 1: q = round(w) clamped to [-8, 7], stored q + 8, LSB first.
  std::vector<float> w{7.5f, -7.5f, 0.0f, 1.0f, -1.4f, 2.5f, 3.5f, -8.0f};
  Int4Options o;
  o.group = 8;
  auto q = quantize_int4_group(w, 1, 8, o);
  EXPECT_EQ(q.packed.shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(q.scale.dtype, DType::BF16);
  // amax is 8 here, so s = 8/7.5 rounded up to bf16.
  const float s = scale_at(q.scale, 0);
  EXPECT_GE(s * 7.5f, 8.0f);
  uint32_t word;
  std::memcpy(&word, q.packed.bytes.data(), 4);
  for (int i = 0; i < 8; ++i) {
    const int u = static_cast<int>((word >> (4 * i)) & 0xF);
    const float want = std::clamp(std::nearbyint(w[static_cast<size_t>(i)] / s), -8.0f, 7.0f);
    EXPECT_EQ(u - 8, static_cast<int>(want)) << i;
  }
  int64_t shape[2];
  std::memcpy(shape, q.shape.bytes.data(), 16);
  EXPECT_EQ(shape[0], 1);
  EXPECT_EQ(shape[1], 8);
  // Exactly representable: amax 7.5 with a power-of-two scale of 1.
  std::vector<float> e{7.5f, -7.5f, 0.0f, 1.0f, -1.0f, 2.0f, 3.0f, -4.0f};
  auto qe = quantize_int4_group(e, 1, 8, o);
  EXPECT_EQ(scale_at(qe.scale, 0), 1.0f);
  std::memcpy(&word, qe.packed.bytes.data(), 4);
  // 7.5 -> 8 (ties to even) clamped to 7 (u 0xF), -7.5 -> -8 (0x0), 0 -> 0x8, 1 -> 0x9, -1 -> 0x7, 2 -> 0xA,
  // 3 -> 0xB, -4 -> 0x4; element i in bits 4i.
  EXPECT_EQ(word, 0x4BA7980Fu);
}

void check_int4(bool symmetric, DType sd, int64_t group) {
  for (const auto& [n, k] : kShapes) {
    SCOPED_TRACE(testing::Message() << (symmetric ? "sym " : "asym ") << n << "x" << k << " g" << group);
    auto w = make_matrix(n, k, static_cast<uint32_t>(31 * n + k), /*extremes=*/symmetric);
    Int4Options o;
    o.symmetric = symmetric;
    o.scale_dtype = sd;
    o.group = group;
    auto q = quantize_int4_group(w, n, k, o);
    const int64_t groups = (k + group - 1) / group;
    ASSERT_EQ(q.packed.shape, (std::vector<int64_t>{n, (k + 7) / 8}));
    ASSERT_EQ(q.scale.shape, (std::vector<int64_t>{n, groups}));
    Fields f{{"weight_packed", q.packed}, {"weight_scale", q.scale}, {"weight_shape", q.shape}};
    if (q.zero_point) {
      ASSERT_EQ(q.zero_point->shape, (std::vector<int64_t>{(n + 7) / 8, groups}));
      f.push_back({"weight_zero_point", *q.zero_point});
    }
    auto d = roundtrip(f, n, k);
    ASSERT_EQ(d.w.size(), w.size());
    EXPECT_EQ(d.scheme.kind, SchemeKind::Int4Group);
    EXPECT_EQ(d.scheme.zero_point, !symmetric);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const size_t at = static_cast<size_t>(i * k + j);
        const double s = scale_at(q.scale, i * groups + j / group);
        const double err = std::fabs(static_cast<double>(d.w[at]) - w[at]);
        ASSERT_LE(err, near_max(w[at], 0.5 * s) * 0.5 * s + slack(w[at], d.w[at])) << i << "," << j << " w=" << w[at] << " s=" << s;
      }
    }
  }
}

TEST(Int4Group, RoundTripSymmetric) { check_int4(true, DType::BF16, 128); }
TEST(Int4Group, RoundTripSymmetricF32Group32) { check_int4(true, DType::F32, 32); }
TEST(Int4Group, RoundTripAsymmetric) { check_int4(false, DType::BF16, 128); }

TEST(Int4Group, AsymmetricOppositeExtremes) {
  // hi - lo overflows float; the half-range scale rule still fits.
  std::vector<float> w{3.0e38f, -3.0e38f, 1.0f, 0.0f};
  Int4Options o;
  o.symmetric = false;
  auto q = quantize_int4_group(w, 1, 4, o);
  auto d = roundtrip({{"weight_packed", q.packed}, {"weight_scale", q.scale}, {"weight_zero_point", *q.zero_point}}, 1, 4);
  const double s = scale_at(q.scale, 0);
  for (int j = 0; j < 4; ++j) EXPECT_LE(std::fabs(static_cast<double>(d.w[static_cast<size_t>(j)]) - w[static_cast<size_t>(j)]), 0.5 * s * (1 + 1e-6));
}


TEST(FastCodecs, EqualTheCoreEncoders) {
  // Every float whose low 12 mantissa bits are zero (every e4m3 and e2m1 grid point and
  // tie among them), the float just below each, and one with the low bits half set.
  int64_t checked = 0;
  for (uint64_t a = 0; a <= 0x7F7FFFFFull; a += 0x1000) {
    for (uint32_t bits : {static_cast<uint32_t>(a), static_cast<uint32_t>(a) + 0x7FFu, static_cast<uint32_t>(a) - 1u}) {
      if (bits > 0x7F7FFFFFu) continue;
      for (uint32_t sign : {0u, 0x80000000u}) {
        const float x = std::bit_cast<float>(bits | sign);
        ASSERT_EQ(fast::e4m3(x), f32_to_e4m3(x)) << x;
        ASSERT_EQ(fast::e2m1(x), f32_to_e2m1(x)) << x;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 1000000);
}

}  // namespace
}  // namespace kiln::quant
