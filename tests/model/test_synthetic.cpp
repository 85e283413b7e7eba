// The synthetic model's generators: seekable (any piece equals the same bytes of the whole,
// which lets the checkpoint writer stream), deterministic, never an fp8 NaN code, and the
// in-memory SyntheticModel built from the same values.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kiln/core/codecs.h"
#include "kiln/model/synthetic.h"

namespace kiln::model {
namespace {


TEST(SyntheticGenerators, AnyPieceEqualsTheWhole) {
  for (SchemeKind s : {SchemeKind::BF16, SchemeKind::FP8Block, SchemeKind::Int4Group, SchemeKind::MXFP4,
                         SchemeKind::NVFP4}) {
    for (bool scale : {false, true}) {
      std::vector<std::byte> whole(4099);
      synthetic_linear_bytes(s, 256, 512, scale, 7, 0, whole);
      for (uint64_t off : {1u, 7u, 8u, 13u, 4000u}) {
        std::vector<std::byte> part(whole.size() - off);
        synthetic_linear_bytes(s, 256, 512, scale, 7, off, part);
        EXPECT_EQ(std::memcmp(part.data(), whole.data() + off, part.size()), 0) << static_cast<int>(s) << " " << off;
      }
      std::vector<std::byte> again(whole.size());
      synthetic_linear_bytes(s, 256, 512, scale, 7, 0, again);
      EXPECT_EQ(again, whole);
    }
  }
}

TEST(SyntheticGenerators, ValuesAreValidAndSmall) {
  std::vector<std::byte> b(1 << 16);
  synthetic_linear_bytes(SchemeKind::FP8Block, 128, 512, false, 1, 0, b);
  for (std::byte x : b) EXPECT_NE(static_cast<uint8_t>(x) & 0x7F, 0x7F);
  synthetic_linear_bytes(SchemeKind::BF16, 128, 256, false, 1, 0, b);
  for (size_t i = 0; i < b.size(); i += 2) {
    uint16_t h;
    std::memcpy(&h, b.data() + i, 2);
    const float v = std::abs(bf16_to_f32(h));
    EXPECT_GE(v, 0x1p-9f);
    EXPECT_LT(v, 0x1p-5f);
  }
  EXPECT_EQ(synthetic_plain_value("attn_norm.weight", 1, 5), 1.0f);
  EXPECT_EQ(synthetic_plain_value("hc_ffn_scale", 1, 2), 1.0f);
  EXPECT_LE(std::abs(synthetic_plain_value("hc_attn_fn", 1, 3)), 1e-2f);
  EXPECT_LE(std::abs(synthetic_plain_value("embed.weight", 1, 3)), 1.0f);
  EXPECT_NE(synthetic_plain_value("embed.weight", 1, 3), synthetic_plain_value("embed.weight", 2, 3));
  const ModelConfig c = flash_shaped_config(1, false);
  for (uint64_t t = 0; t < 50; ++t) {
    std::vector<int32_t> e;
    for (uint64_t k = 0; k < static_cast<uint64_t>(c.num_experts_per_tok); ++k) {
      const int32_t x = synthetic_tid2eid(c, 3, t * c.num_experts_per_tok + k);
      EXPECT_GE(x, 0);
      EXPECT_LT(x, c.n_routed_experts);
      for (int32_t y : e) EXPECT_NE(x, y);  // distinct experts per token
      e.push_back(x);
    }
  }
}

TEST(SyntheticGenerators, FormMatchesTheBytes) {
  const ops::HostQuantLinear f = synthetic_linear_form(SchemeKind::NVFP4, 64, 256);
  EXPECT_EQ(f.scale_dtype, DType::F8_E4M3);
  EXPECT_EQ(f.block_k, 16);
  EXPECT_EQ(f.scale_cols, 16);
  EXPECT_FLOAT_EQ(f.global, 1.0f / 256.0f);
  const ops::HostQuantLinear g = synthetic_linear_form(SchemeKind::FP8Block, 300, 200);
  EXPECT_EQ(g.scale_rows, 3);
  EXPECT_EQ(g.scale_cols, 2);
  EXPECT_EQ(g.scale_dtype, DType::F8_E8M0);
}

}  // namespace
}  // namespace kiln::model
