// Scheme detection from dtype, shape and companion tensors, module by module.
#include <gtest/gtest.h>

#include <deque>

#include "kiln/artifact/scheme.h"

namespace kiln {
namespace {

class SchemeTest : public ::testing::Test {
 protected:
  // Adds field `f` of module "m" with the given dtype and shape.
  void add(const std::string& f, DType dt, std::vector<int64_t> shape) {
    TensorInfo& t = infos_.emplace_back();
    t.name = "m." + f;
    t.dtype = dt;
    t.shape = std::move(shape);
    t.end = static_cast<uint64_t>(t.numel()) * dtype_size(dt);
    TensorSlice s;
    s.name = t.name;
    s.info = &t;
    s.shard = 0;
    fields_[f] = s;
  }
  DetectResult detect(int64_t n, int64_t k, std::optional<std::pair<int64_t, int64_t>> hint = std::nullopt) {
    return detect_scheme("layers.0.attn.wq_b", fields_, n, k, hint);
  }
  static std::string errs(const DetectResult& r) {
    std::string s;
    for (const auto& e : r.errors) s += e + "\n";
    return s;
  }

  std::deque<TensorInfo> infos_;
  ModuleFields fields_;
};

TEST_F(SchemeTest, Bf16) {
  add("weight", DType::BF16, {64, 32});
  auto r = detect(64, 32);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::BF16);
  EXPECT_EQ(r.scheme->describe(), "bf16");
}

TEST_F(SchemeTest, Bf16WithStrayScaleIsAnError) {
  add("weight", DType::BF16, {64, 32});
  add("scale", DType::F8_E8M0, {1, 1});
  auto r = detect(64, 32);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.scale does not belong to a bf16"), std::string::npos) << errs(r);
}

TEST_F(SchemeTest, Fp8BlockEveryScaleSpelling) {
  struct Case {
    const char* field;
    DType dt;
  } cases[] = {{"scale", DType::F8_E8M0}, {"weight_scale_inv", DType::F32}, {"weight_scale", DType::BF16}};
  for (auto c : cases) {
    fields_.clear();
    add("weight", DType::F8_E4M3, {1024, 4096});
    add(c.field, c.dt, {8, 32});
    auto r = detect(1024, 4096);
    ASSERT_TRUE(r.scheme) << errs(r);
    EXPECT_EQ(r.scheme->kind, SchemeKind::FP8Block);
    EXPECT_EQ(r.scheme->block_n, 128);
    EXPECT_EQ(r.scheme->block_k, 128);
    EXPECT_EQ(r.scheme->scale_field, c.field);
    EXPECT_EQ(r.scheme->scale_dtype, c.dt);
  }
}

TEST_F(SchemeTest, Fp8BlockSizeInferredFromShapesIncludingRaggedEdges) {
  add("weight", DType::F8_E4M3, {576, 7168});  // 576 = 4.5 blocks of 128
  add("scale", DType::F8_E8M0, {5, 56});
  auto r = detect(576, 7168);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->block_n, 128);
  EXPECT_EQ(r.scheme->block_k, 128);

  fields_.clear();
  add("weight", DType::F8_E4M3, {256, 256});
  add("weight_scale_inv", DType::F32, {4, 4});  // 64x64 blocks
  r = detect(256, 256);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->block_n, 64);
  EXPECT_EQ(r.scheme->block_k, 64);
}

TEST_F(SchemeTest, Fp8DegenerateGrids) {
  add("weight", DType::F8_E4M3, {64, 32});
  add("weight_scale", DType::F32, {});
  add("input_scale", DType::F32, {});
  auto r = detect(64, 32);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->block_n, 64);  // per-tensor
  EXPECT_EQ(r.scheme->block_k, 32);
  EXPECT_TRUE(r.scheme->input_scale);

  fields_.clear();
  add("weight", DType::F8_E4M3, {64, 32});
  add("weight_scale", DType::F32, {64, 1});
  r = detect(64, 32);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->block_n, 1);  // per-channel
  EXPECT_EQ(r.scheme->block_k, 32);

  fields_.clear();
  add("weight", DType::F8_E4M3, {256, 512});
  add("weight_scale", DType::F32, {2, 1, 4, 1});  // ModelOpt FP8_PB_WO
  r = detect(256, 512);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->block_n, 128);
  EXPECT_EQ(r.scheme->block_k, 128);
}

TEST_F(SchemeTest, Fp8ScaleThatFitsNoBlock) {
  add("weight", DType::F8_E4M3, {256, 256});
  add("scale", DType::F8_E8M0, {3, 2});
  auto r = detect(256, 256);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.scale has shape [3, 2], which fits no block size for a [256, 256] weight"),
            std::string::npos)
      << errs(r);
}

TEST_F(SchemeTest, TwoScaleNamesIsAnError) {
  add("weight", DType::F8_E4M3, {256, 256});
  add("scale", DType::F8_E8M0, {2, 2});
  add("weight_scale_inv", DType::F32, {2, 2});
  auto r = detect(256, 256);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("2 different scale tensors (m.scale, m.weight_scale_inv)"), std::string::npos) << errs(r);
}

TEST_F(SchemeTest, Fp8WithoutScale) {
  add("weight", DType::F8_E4M3, {256, 256});
  auto r = detect(256, 256);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.weight is F8_E4M3 but the module has no scale"), std::string::npos) << errs(r);
}

TEST_F(SchemeTest, WeightShapeMismatch) {
  add("weight", DType::BF16, {64, 33});
  auto r = detect(64, 32);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.weight has shape [64, 33] but the weight needs [64, 32]"), std::string::npos) << errs(r);
}

TEST_F(SchemeTest, MxFp4Native) {
  add("weight", DType::I8, {2048, 2048});
  add("scale", DType::F8_E8M0, {2048, 128});
  auto r = detect(2048, 4096);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::MXFP4);
  EXPECT_EQ(r.scheme->block_k, 32);
}

TEST_F(SchemeTest, MxFp4CompressedTensors) {
  add("weight_packed", DType::U8, {64, 64});
  add("weight_scale", DType::U8, {64, 4});
  auto r = detect(64, 128);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::MXFP4);
}

TEST_F(SchemeTest, MxFp4ScaleShapeChecked) {
  add("weight", DType::I8, {64, 64});
  add("scale", DType::F8_E8M0, {64, 8});
  auto r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.scale has shape [64, 8] but an MXFP4 scale (one E8M0 per 32 inputs) needs [64, 4]"),
            std::string::npos)
      << errs(r);
}

TEST_F(SchemeTest, NvFp4ModelOpt) {
  add("weight", DType::U8, {64, 64});
  add("weight_scale", DType::F8_E4M3, {64, 8});
  add("weight_scale_2", DType::F32, {});
  add("input_scale", DType::F32, {});
  auto r = detect(64, 128);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::NVFP4);
  EXPECT_EQ(r.scheme->global, GlobalScaleConvention::Multiplier);
}

// artifact-formats.md (d), third NVFP4 spelling (V4-Pro NVFP4 conversions): DeepSeek's
// native `.scale` holds the e4m3 group-16 scale, the global is ModelOpt's weight_scale_2 [1].
TEST_F(SchemeTest, NvFp4NativeNames) {
  add("weight", DType::U8, {64, 64});
  add("scale", DType::F8_E4M3, {64, 8});
  add("weight_scale_2", DType::F32, {1});
  add("input_scale", DType::F32, {1});
  auto r = detect(64, 128);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::NVFP4);
  EXPECT_EQ(r.scheme->global, GlobalScaleConvention::Multiplier);
  EXPECT_EQ(r.scheme->scale_field, "scale");
  EXPECT_EQ(r.scheme->block_k, 16);
  EXPECT_TRUE(r.scheme->input_scale);
  EXPECT_EQ(r.scheme->describe(), "nvfp4 (modelopt weight_scale_2, native .scale)");

  fields_.clear();  // ModelOpt's own spelling is another group
  add("weight", DType::U8, {64, 64});
  add("weight_scale", DType::F8_E4M3, {64, 8});
  add("weight_scale_2", DType::F32, {});
  auto mo = detect(64, 128);
  ASSERT_TRUE(mo.scheme) << errs(mo);
  EXPECT_EQ(mo.scheme->describe(), "nvfp4 (modelopt weight_scale_2)");
  EXPECT_FALSE(mo.scheme->same_as(*r.scheme));
}

TEST_F(SchemeTest, NvFp4NativeNamesChecked) {
  // .scale as the E4M3 group scale still needs a global scale ...
  add("weight", DType::U8, {64, 64});
  add("scale", DType::F8_E4M3, {64, 8});
  auto r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.scale is an NVFP4 group scale but the module has no global scale"), std::string::npos)
      << errs(r);
  // ... one per 16 inputs (not MXFP4's 32) ...
  add("weight_scale_2", DType::F32, {1});
  add("scale", DType::F8_E4M3, {64, 4});
  r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.scale has shape [64, 4] but an NVFP4 group scale (one per 16 inputs) needs [64, 8]"),
            std::string::npos)
      << errs(r);
  // ... and takes no compressed-tensors companions.
  add("scale", DType::F8_E4M3, {64, 8});
  add("input_global_scale", DType::F32, {1});
  r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.input_global_scale does not belong to a native-named nvfp4 module"), std::string::npos)
      << errs(r);
}

TEST_F(SchemeTest, NvFp4CompressedTensors) {
  add("weight_packed", DType::U8, {64, 64});
  add("weight_scale", DType::F8_E4M3, {64, 8});
  add("weight_global_scale", DType::F32, {1});
  add("input_global_scale", DType::F32, {1});
  auto r = detect(64, 128);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::NVFP4);
  EXPECT_EQ(r.scheme->global, GlobalScaleConvention::Divisor);
}

TEST_F(SchemeTest, NvFp4NeedsExactlyOneGlobalScale) {
  add("weight", DType::U8, {64, 64});
  add("weight_scale", DType::F8_E4M3, {64, 8});
  auto r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("no global scale"), std::string::npos) << errs(r);
  add("weight_scale_2", DType::F32, {});
  add("weight_global_scale", DType::F32, {1});
  r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("expected one NVFP4 global scale"), std::string::npos) << errs(r);
}

TEST_F(SchemeTest, Int4GroupSymmetric) {
  add("weight_packed", DType::I32, {2048, 512});
  add("weight_scale", DType::BF16, {2048, 32});
  add("weight_shape", DType::I64, {2});
  auto r = detect(2048, 4096);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->kind, SchemeKind::Int4Group);
  EXPECT_EQ(r.scheme->block_k, 128);
  EXPECT_FALSE(r.scheme->zero_point);
  EXPECT_EQ(r.scheme->describe(), "int4_group g128 sym BF16");
}

TEST_F(SchemeTest, Int4GroupAsymmetricActOrderAndRaggedK) {
  add("weight_packed", DType::I32, {64, 25});  // K = 200: 25 words, 2 groups of 128
  add("weight_scale", DType::F16, {64, 2});
  add("weight_zero_point", DType::I32, {8, 2});
  add("weight_g_idx", DType::I32, {200});
  auto r = detect(64, 200);
  ASSERT_TRUE(r.scheme) << errs(r);
  EXPECT_EQ(r.scheme->block_k, 128);
  EXPECT_TRUE(r.scheme->zero_point);
  EXPECT_TRUE(r.scheme->g_idx);
}

TEST_F(SchemeTest, Int4ZeroPointShapeChecked) {
  add("weight_packed", DType::I32, {64, 16});
  add("weight_scale", DType::BF16, {64, 1});
  add("weight_zero_point", DType::I32, {64, 1});
  auto r = detect(64, 128);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.weight_zero_point has shape [64, 1] but an int4 zero point (packed along N) needs [8, 1]"),
            std::string::npos)
      << errs(r);
}

TEST_F(SchemeTest, NoWeightTensor) {
  add("scale", DType::F8_E8M0, {2, 2});
  auto r = detect(256, 256);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("has no weight tensor (found only m.scale)"), std::string::npos) << errs(r);
}

TEST_F(SchemeTest, UnknownWeightDtype) {
  add("weight", DType::I64, {4, 4});
  auto r = detect(4, 4);
  EXPECT_FALSE(r.scheme);
  EXPECT_NE(errs(r).find("m.weight has dtype I64"), std::string::npos) << errs(r);
}

}  // namespace
}  // namespace kiln
