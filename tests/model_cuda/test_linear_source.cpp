// The host side of the CUDA backend's loader, which runs without a GPU (so in CI): what
// host_view hands the kernels' prepare step for each stored form, the clear errors for
// forms the CUDA kernels do not take, fused HF expert slices, and the synthetic
// V4-Flash-shaped config of `kiln bench`.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>

#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/linear_source.h"
#include "kiln/model/synthetic.h"
#include "support/artifacts.h"
#include "support/plan_module.h"

namespace kiln::model::cuda {
namespace {

std::vector<std::byte> filled(size_t n, int start) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((start + static_cast<int>(i) * 7) & 0x77);
  return b;
}

struct Written {
  test::TempDir dir;
  std::optional<Checkpoint> ckpt;
  PlannedLinear pl;
};

// One module "m" of [n, k] with the given tensors, its scheme detected as the loader does
// (detect = false: left at its default, BF16, for a fused tensor the test slices itself).
std::unique_ptr<Written> write(const std::vector<SafetensorsWriter::Tensor>& tensors, int64_t n, int64_t k,
                               bool detect = true) {
  auto w = std::make_unique<Written>();
  SafetensorsWriter::write_file(w->dir.path() / "m.safetensors", tensors);
  w->ckpt.emplace(Checkpoint::open(w->dir.path()));
  w->pl = test::plan_module_m(*w->ckpt, n, k);
  if (!detect) return w;
  auto det = detect_scheme("m", w->pl.fields, n, k);
  EXPECT_TRUE(det.scheme) << (det.errors.empty() ? "" : det.errors[0]);
  if (det.scheme) {
    w->pl.scheme = *det.scheme;
    w->pl.roles = det.roles;
  }
  return w;
}

TEST(LinearSource, Bf16WeightIsHandedOverAsStored) {
  const auto bytes = filled(6 * 8 * 2, 3);
  auto w = write({{"m.weight", DType::BF16, {6, 8}, bytes}}, 6, 8);
  const ops::HostQuantLinear h = host_view(*w->ckpt, w->pl);
  EXPECT_EQ(h.scheme, SchemeKind::BF16);
  EXPECT_EQ(h.n, 6);
  EXPECT_EQ(h.k, 8);
  EXPECT_EQ(h.weight_dtype, DType::BF16);
  ASSERT_EQ(h.weight.size, bytes.size());
  EXPECT_EQ(std::memcmp(h.weight.data, bytes.data(), bytes.size()), 0);
  EXPECT_TRUE(h.scale.empty());
  EXPECT_STREQ(h.name, "m");
}

TEST(LinearSource, Fp8BlockCarriesItsScaleGrid) {
  auto w = write({{"m.weight", DType::F8_E4M3, {256, 128}, filled(256 * 128, 1)},
                  {"m.weight_scale_inv", DType::F32, {2, 1}, filled(8, 0)}},
                 256, 128);
  const ops::HostQuantLinear h = host_view(*w->ckpt, w->pl);
  EXPECT_EQ(h.scheme, SchemeKind::FP8Block);
  EXPECT_EQ(h.scale_dtype, DType::F32);
  EXPECT_EQ(h.scale_rows, 2);
  EXPECT_EQ(h.scale_cols, 1);
  EXPECT_EQ(h.block_n, 128);
  EXPECT_EQ(h.block_k, 128);
  EXPECT_EQ(h.scale.size, 8u);
}

TEST(LinearSource, WeightsTheCudaKernelsDoNotTakeAreClearErrors) {
  for (DType dt : {DType::F32, DType::F16}) {
    auto w = write({{"m.weight", dt, {4, 8}, filled(4 * 8 * dtype_size(dt), 0)}}, 4, 8);
    try {
      host_view(*w->ckpt, w->pl);
      ADD_FAILURE() << "no error for a " << dtype_name(dt) << " weight";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("linear module m"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string(dtype_name(dt))), std::string::npos) << msg;
      EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    }
  }
}

// A fused [E, 2I, H] gate_up tensor (HF layout): each (expert, half) slice is exactly its
// own rows.
TEST(LinearSource, FusedExpertSlicesPointAtTheirOwnRows) {
  const int64_t E = 3, I = 4, H = 8;
  const auto bytes = filled(static_cast<size_t>(E * 2 * I * H * 2), 5);
  auto w = write({{"m.weight", DType::BF16, {E, 2 * I, H}, bytes}}, I, H, /*detect=*/false);
  for (int64_t e = 0; e < E; ++e) {
    for (int half = 0; half < 2; ++half) {
      PlannedLinear pl = w->pl;
      pl.roles.weight = pl.fields.at("weight");
      pl.roles.weight.expert = e;
      pl.roles.weight.half = half;
      const ops::HostQuantLinear h = host_view(*w->ckpt, pl);
      const size_t len = static_cast<size_t>(I * H * 2);
      ASSERT_EQ(h.weight.size, len);
      EXPECT_EQ(std::memcmp(h.weight.data, bytes.data() + (static_cast<size_t>(e) * 2 + static_cast<size_t>(half)) * len, len), 0)
          << "expert " << e << " half " << half;
    }
  }
}

TEST(SyntheticModel, FlashShapedConfigHasFlashWidthsAndLayerPattern) {
  const ModelConfig c = flash_shaped_config(4, true);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_heads, 64);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.q_lora_rank, 1024);
  EXPECT_EQ(c.o_groups, 8);
  EXPECT_EQ(c.o_lora_rank, 1024);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.num_mtp_layers, 1);
  const AttnKind want[] = {AttnKind::SWA, AttnKind::SWA, AttnKind::CSA, AttnKind::HCA, AttnKind::SWA};
  for (int l = 0; l < 5; ++l) EXPECT_EQ(c.attn_kind(l), want[l]) << "layer " << l;
  for (int l = 0; l < 4; ++l) EXPECT_EQ(c.is_hash_layer(l), l < 3) << "layer " << l;
  EXPECT_THROW(flash_shaped_config(0, false), Error);
}

}  // namespace
}  // namespace kiln::model::cuda
