#include "kiln/quant/recipes.h"

#include <fmt/format.h>

namespace kiln::quant {

Role role_of(std::string_view m) {
  auto starts = [&](std::string_view p) { return m.substr(0, p.size()) == p; };
  if (starts("ffn.experts.")) return Role::Expert;
  if (starts("ffn.shared_experts.")) return Role::Shared;
  if (m == "ffn.gate") return Role::Gate;
  if (starts("attn.compressor.") || starts("attn.indexer.compressor.")) return Role::Compressor;
  if (m == "attn.indexer.wq_b") return Role::IndexerWqB;
  if (m == "attn.indexer.weights_proj") return Role::WeightsProj;
  if (m == "attn.wo_a") return Role::WoA;
  if (starts("attn.")) return Role::Attn;
  if (m == "e_proj" || m == "h_proj") return Role::MtpProj;
  return Role::Head;
}

namespace {

constexpr Recipe kRecipes[] = {
    {RecipeId::Native, "deepseek-native",
     "DeepSeek-V4 as DeepSeek ships it: FP8 128x128 E8M0 .scale (attention, shared experts, indexer wq_b, MTP "
     "e_proj/h_proj), MXFP4 routed experts (MTP too), BF16 compressor/indexer projections, gate, head",
     false},
    {RecipeId::NativeNvfp4, "deepseek-native-nvfp4",
     "deepseek-native with the main model's routed experts in NVFP4 under native names (.scale E4M3 per 16, "
     "weight_scale_2 shared by w1/w3, input_scale; moe_quant_algo NVFP4), as the V4-Pro NVFP4 conversions; MTP "
     "experts MXFP4",
     false},
    {RecipeId::W4A16, "w4a16-fp8-mtp",
     "compressed-tensors: int4 group-128 routed experts, FP8-block attention/shared/indexer wq_b with BF16 "
     "weight_scale, MTP block BF16",
     false},
    {RecipeId::Nvfp4, "nvfp4-fp8-mtp",
     "ModelOpt NVFP4 routed experts, FP8-block attention/shared/indexer wq_b (F32 weight_scale), BF16 wo_a, MTP "
     "block BF16, hf_quant_config.json",
     false},
    {RecipeId::V3, "fp8-v3-style",
     "DeepSeek-V3-style FP8 128x128 with F32 weight_scale_inv on every linear DeepSeek quantizes, routed experts "
     "included (expert_dtype fp8), transformers module names",
     true},
};

}  // namespace

std::span<const Recipe> recipes() { return kRecipes; }

const Recipe* find_recipe(std::string_view name) {
  for (const auto& r : kRecipes) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

Target target_for(RecipeId r, Role role, bool mtp) {
  using K = TargetKind;
  const bool bf16_role = role == Role::Compressor || role == Role::WeightsProj || role == Role::Gate || role == Role::Head;
  if (bf16_role) return {};
  switch (r) {
    case RecipeId::Native:
      if (role == Role::Expert) return {K::MXFP4, "scale", DType::F8_E8M0};
      return {K::FP8, "scale", DType::F8_E8M0};
    case RecipeId::NativeNvfp4:  // the MTP block stays as the official release has it
      if (role == Role::Expert && !mtp) return {K::NVFP4, "scale", DType::F8_E4M3};
      if (role == Role::Expert) return {K::MXFP4, "scale", DType::F8_E8M0};
      return {K::FP8, "scale", DType::F8_E8M0};
    case RecipeId::W4A16:
      if (mtp || role == Role::MtpProj) return {};
      if (role == Role::Expert) return {K::INT4, "weight_scale", DType::BF16};
      return {K::FP8, "weight_scale", DType::BF16};
    case RecipeId::Nvfp4:
      if (mtp || role == Role::MtpProj || role == Role::WoA) return {};
      if (role == Role::Expert) return {K::NVFP4, "weight_scale", DType::F8_E4M3};
      return {K::FP8, "weight_scale", DType::F32};
    case RecipeId::V3:
      return {K::FP8, "weight_scale_inv", DType::F32};
  }
  return {};
}

std::string_view target_label(const Target& t) {
  switch (t.kind) {
    case TargetKind::BF16: return "bf16";
    case TargetKind::FP8:
      if (t.scale_dtype == DType::F8_E8M0) return "fp8_block 128x128 E8M0";
      return t.scale_dtype == DType::F32 ? "fp8_block 128x128 F32" : "fp8_block 128x128 BF16";
    case TargetKind::MXFP4: return "mxfp4 g32 E8M0";
    case TargetKind::NVFP4: return t.scale_field == "scale" ? "nvfp4 g16 (native .scale)" : "nvfp4 g16 (modelopt)";
    case TargetKind::INT4: return "int4_group g128 sym BF16";
  }
  return "?";
}

std::optional<std::string> unrepresentable(TargetKind kind, int64_t /*n*/, int64_t k) {
  if ((kind == TargetKind::MXFP4 || kind == TargetKind::NVFP4) && k % 2 != 0)
    return fmt::format("input width {} is odd; packed FP4 holds two values per byte", k);
  if (kind == TargetKind::NVFP4 && k % 16 != 0)
    return fmt::format("input width {} is not a multiple of NVFP4's group of 16", k);
  return std::nullopt;
}

}  // namespace kiln::quant
