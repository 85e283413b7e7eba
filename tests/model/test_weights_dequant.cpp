// Dequantization at load, per scheme, against values worked out by hand from the
// format definitions (artifact-formats.md), and every test layout loading whole.
#include <gtest/gtest.h>

#include <cstring>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/weights.h"
#include "support/artifacts.h"
#include "support/plan_module.h"

namespace kiln::model {
namespace {

std::vector<std::byte> bytes(std::initializer_list<int> v) {
  std::vector<std::byte> b;
  for (int x : v) b.push_back(static_cast<std::byte>(x));
  return b;
}
template <typename T>
std::vector<std::byte> raw(std::initializer_list<T> v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  std::memcpy(b.data(), std::data(v), b.size());
  return b;
}

// Writes one module's tensors, plans it as [n, k] and dequantizes it.
std::vector<float> dequant(const std::vector<SafetensorsWriter::Tensor>& tensors, int64_t n, int64_t k) {
  test::TempDir d;
  SafetensorsWriter::write_file(d.path() / "m.safetensors", tensors);
  auto ckpt = Checkpoint::open(d.path());
  PlannedLinear pl = test::plan_module_m(ckpt, n, k);
  auto det = detect_scheme("m", pl.fields, n, k);
  EXPECT_TRUE(det.scheme) << (det.errors.empty() ? "" : det.errors[0]);
  pl.scheme = *det.scheme;
  pl.roles = det.roles;
  return dequantize_linear(ckpt, pl).w;
}

TEST(Dequant, Fp8BlockE8M0) {
  // e4m3 0x38 = 1.0, 0xC0 = -2.0, 0x01 = 2^-9; e8m0 128 = 2, 126 = 0.5. Blocks 1x2.
  auto w = dequant({{"m.weight", DType::F8_E4M3, {2, 4}, bytes({0x38, 0xC0, 0x38, 0x01, 0x38, 0x38, 0xC0, 0xC0})},
                    {"m.scale", DType::F8_E8M0, {2, 2}, bytes({128, 126, 127, 129})}},
                   2, 4);
  EXPECT_EQ(w, (std::vector<float>{2.0f, -4.0f, 0.5f, 0x1p-10f, 1.0f, 1.0f, -8.0f, -8.0f}));
}

TEST(Dequant, Fp8PerTensorF32AndBf16Grid) {
  auto w = dequant({{"m.weight", DType::F8_E4M3, {1, 2}, bytes({0x38, 0x40})},
                    {"m.weight_scale", DType::F32, {}, raw<float>({0.25f})}},
                   1, 2);
  EXPECT_EQ(w, (std::vector<float>{0.25f, 0.5f}));
  // bf16 0x3F00 = 0.5
  w = dequant({{"m.weight", DType::F8_E4M3, {1, 2}, bytes({0x38, 0x40})},
               {"m.weight_scale_inv", DType::BF16, {1, 1}, raw<uint16_t>({0x3F00})}},
              1, 2);
  EXPECT_EQ(w, (std::vector<float>{0.5f, 1.0f}));
}

TEST(Dequant, Mxfp4LowNibbleFirst) {
  // byte 0xB2: element 0 = nibble 2 (1.0), element 1 = nibble 0xB (-1.5); scale 2^-1.
  std::vector<std::byte> q(16, std::byte{0});
  q[0] = std::byte{0xB2};
  q[15] = std::byte{0x70};  // element 31 = nibble 7 (6.0)
  auto w = dequant({{"m.weight", DType::I8, {1, 16}, q}, {"m.scale", DType::F8_E8M0, {1, 1}, bytes({126})}}, 1, 32);
  EXPECT_EQ(w[0], 0.5f);
  EXPECT_EQ(w[1], -0.75f);
  EXPECT_EQ(w[30], 0.0f);
  EXPECT_EQ(w[31], 3.0f);
}

TEST(Dequant, Nvfp4BothGlobalConventions) {
  // nibble 7 = 6.0; group scale e4m3 0x38 = 1.0 (0x40 = 2.0 for group 2); global 1/8.
  std::vector<std::byte> q(16, std::byte{0x77});
  auto mo = dequant({{"m.weight", DType::U8, {1, 16}, q},
                     {"m.weight_scale", DType::F8_E4M3, {1, 2}, bytes({0x38, 0x40})},
                     {"m.weight_scale_2", DType::F32, {}, raw<float>({0.125f})}},
                    1, 32);
  auto ct = dequant({{"m.weight_packed", DType::U8, {1, 16}, q},
                     {"m.weight_scale", DType::F8_E4M3, {1, 2}, bytes({0x38, 0x40})},
                     {"m.weight_global_scale", DType::F32, {1}, raw<float>({8.0f})}},
                    1, 32);
  EXPECT_EQ(mo[0], 0.75f);
  EXPECT_EQ(mo[16], 1.5f);
  EXPECT_EQ(mo, ct);
}

TEST(Dequant, Int4SymmetricAndZeroPoint) {
  // word 0x89ABCDEF: elements (LSB first) F,E,D,C,B,A,9,8 -> minus 8: 7,6,5,4,3,2,1,0.
  auto w = dequant({{"m.weight_packed", DType::I32, {1, 1}, raw<uint32_t>({0x89ABCDEFu})},
                    {"m.weight_scale", DType::BF16, {1, 1}, raw<uint16_t>({0x3F00})}},
                   1, 8);
  EXPECT_EQ(w, (std::vector<float>{3.5f, 3.0f, 2.5f, 2.0f, 1.5f, 1.0f, 0.5f, 0.0f}));
  // Two rows, zero points packed along N: row 0 z = 0xF, row 1 z = 0x1.
  w = dequant({{"m.weight_packed", DType::I32, {2, 1}, raw<uint32_t>({0xFFFFFFFFu, 0x11111112u})},
               {"m.weight_scale", DType::F32, {2, 1}, raw<float>({1.0f, 2.0f})},
               {"m.weight_zero_point", DType::I32, {1, 1}, raw<uint32_t>({0x1Fu})}},
              2, 8);
  EXPECT_EQ(w[0], 0.0f);
  EXPECT_EQ(w[8], 2.0f);   // (2 - 1) * 2
  EXPECT_EQ(w[9], 0.0f);   // (1 - 1) * 2
}

TEST(Dequant, EveryTestLayoutLoadsWhole) {
  using test::Layout;
  for (Layout l : {Layout::Native, Layout::NativeNvfp4, Layout::W4A16Fp8Mtp, Layout::Nvfp4Fp8Mtp, Layout::V3Fp8,
                   Layout::HfBf16}) {
    test::TempDir d;
    test::write_spec(test::make_spec(l, test::tiny_config(), 2), d.path());
    auto ckpt = Checkpoint::open(d.path());
    auto plan = build_plan(ckpt, load_model_config(d.path()));
    ASSERT_TRUE(plan.loadable()) << test::layout_name(l);
    Weights w = load_weights(ckpt, plan);
    EXPECT_EQ(w.layers.size(), 4u);
    EXPECT_EQ(w.mtp.size(), l == Layout::HfBf16 ? 0u : 1u) << test::layout_name(l);
    EXPECT_EQ(w.layers[1].attn.indexer->wq_b.out, 512);
    EXPECT_EQ(w.layers[1].attn.indexer->wq_b.in, 128);
    EXPECT_TRUE(w.layers[1].attn.indexer->wq_b.complete());
    EXPECT_EQ(w.layers[0].ffn.tid2eid.size(), 256u * 2u);
    EXPECT_TRUE(w.layers[0].ffn.hash);
    EXPECT_FALSE(w.layers[1].ffn.hash);
    const Linear& w2 = w.layers[2].ffn.experts[3].w2;
    for (float v : w2.dequantized_rows(0, w2.out)) ASSERT_TRUE(std::isfinite(v)) << test::layout_name(l);
  }
}

}  // namespace
}  // namespace kiln::model
