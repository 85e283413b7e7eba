#include "kiln/quant/recipes.h"

#include <fmt/format.h>

namespace kiln::quant {

using nlohmann::json;

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
  if (m == "e_proj" || m == "h_proj" || m == "main_proj") return Role::MtpProj;  // main_proj: DSpark stage 0
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
  using K = SchemeKind;
  const bool bf16_role = role == Role::Compressor || role == Role::WeightsProj || role == Role::Gate || role == Role::Head;
  if (bf16_role) return {};
  switch (r) {
    case RecipeId::Native:
      if (role == Role::Expert) return {K::MXFP4, "scale", DType::F8_E8M0};
      return {K::FP8Block, "scale", DType::F8_E8M0};
    case RecipeId::NativeNvfp4:  // the MTP block stays as the official release has it
      if (role == Role::Expert && !mtp) return {K::NVFP4, "scale", DType::F8_E4M3};
      if (role == Role::Expert) return {K::MXFP4, "scale", DType::F8_E8M0};
      return {K::FP8Block, "scale", DType::F8_E8M0};
    case RecipeId::W4A16:
      if (mtp || role == Role::MtpProj) return {};
      if (role == Role::Expert) return {K::Int4Group, "weight_scale", DType::BF16};
      return {K::FP8Block, "weight_scale", DType::BF16};
    case RecipeId::Nvfp4:
      if (mtp || role == Role::MtpProj || role == Role::WoA) return {};
      if (role == Role::Expert) return {K::NVFP4, "weight_scale", DType::F8_E4M3};
      return {K::FP8Block, "weight_scale", DType::F32};
    case RecipeId::V3:
      return {K::FP8Block, "weight_scale_inv", DType::F32};
  }
  return {};
}

std::string_view target_label(const Target& t) {
  switch (t.kind) {
    case SchemeKind::BF16: return "bf16";
    case SchemeKind::FP8Block:
      if (t.scale_dtype == DType::F8_E8M0) return "fp8_block 128x128 E8M0";
      return t.scale_dtype == DType::F32 ? "fp8_block 128x128 F32" : "fp8_block 128x128 BF16";
    case SchemeKind::MXFP4: return "mxfp4 g32 E8M0";
    case SchemeKind::NVFP4: return t.scale_field == "scale" ? "nvfp4 g16 (native .scale)" : "nvfp4 g16 (modelopt)";
    case SchemeKind::Int4Group: return "int4_group g128 sym BF16";
  }
  return "?";
}

std::optional<std::string> unrepresentable(SchemeKind kind, int64_t /*n*/, int64_t k) {
  if ((kind == SchemeKind::MXFP4 || kind == SchemeKind::NVFP4) && k % 2 != 0)
    return fmt::format("input width {} is odd; packed FP4 holds two values per byte", k);
  if (kind == SchemeKind::NVFP4 && k % 16 != 0)
    return fmt::format("input width {} is not a multiple of NVFP4's group of 16", k);
  return std::nullopt;
}

namespace {
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

uint64_t StoredTensor::nbytes() const {
  uint64_t n = dtype_size(dtype);
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::vector<StoredTensor> target_tensors(const std::string& base, const Target& t, int64_t n, int64_t k) {
  switch (t.kind) {
    case SchemeKind::BF16: return {{base + ".weight", DType::BF16, {n, k}}};
    case SchemeKind::FP8Block:
      return {{base + ".weight", DType::F8_E4M3, {n, k}},
              {base + "." + t.scale_field, t.scale_dtype, {cdiv(n, 128), cdiv(k, 128)}}};
    case SchemeKind::MXFP4:
      return {{base + ".weight", DType::I8, {n, k / 2}}, {base + ".scale", DType::F8_E8M0, {n, cdiv(k, 32)}}};
    case SchemeKind::NVFP4: {
      // ModelOpt: weight_scale, scalar globals; native names: .scale, globals shaped [1].
      const std::vector<int64_t> scalar = t.scale_field == "scale" ? std::vector<int64_t>{1} : std::vector<int64_t>{};
      return {{base + ".weight", DType::U8, {n, k / 2}},
              {base + "." + t.scale_field, DType::F8_E4M3, {n, k / 16}},
              {base + ".weight_scale_2", DType::F32, scalar},
              {base + ".input_scale", DType::F32, scalar}};
    }
    case SchemeKind::Int4Group:
      return {{base + ".weight_packed", DType::I32, {n, cdiv(k, 8)}},
              {base + ".weight_scale", DType::BF16, {n, cdiv(k, 128)}},
              {base + ".weight_shape", DType::I64, {2}}};
  }
  return {};
}

// Plain tensors: the dtype every recipe stores them in (DeepSeek's layout).
DType plain_dtype(const std::string& module) {
  if (module == "ffn.gate.tid2eid") return DType::I64;
  const bool norm = module.size() >= 11 && module.compare(module.size() - 11, 11, "norm.weight") == 0;
  if (norm || module == "embed.weight") return DType::BF16;
  return DType::F32;  // hc_*, attn_sink, compressor ape, gate bias
}

// quantization_config (+ hf_quant_config.json) as each producer writes it. `kept_bf16`:
// modules the recipe would quantize but whose shape the scheme cannot hold (exact names).
void declare_quantization(RecipeId r, json& cfg, std::optional<json>& hf_quant,
                          const std::vector<std::string>& kept_bf16) {
  switch (r) {
    case RecipeId::Native:
    case RecipeId::NativeNvfp4: {
      cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                    {"quant_method", "fp8"},          {"scale_fmt", "ue8m0"},
                                    {"weight_block_size", {128, 128}}};
      // The NVFP4 conversions add moe_quant_algo to the official config and keep the rest.
      if (r == RecipeId::NativeNvfp4) cfg["quantization_config"]["moe_quant_algo"] = "NVFP4";
      if (!kept_bf16.empty()) cfg["quantization_config"]["modules_to_not_convert"] = kept_bf16;
      cfg["expert_dtype"] = "fp4";
      break;
    }
    case RecipeId::W4A16: {
      json ignore = {"head", "re:.*compressor.*", "re:.*ffn\\.gate$", "re:.*weights_proj$", "re:^mtp\\..*"};
      for (const auto& m : kept_bf16) ignore.push_back(m);
      cfg["quantization_config"] = {
          {"quant_method", "compressed-tensors"},
          {"format", "mixed-precision"},
          {"quantization_status", "compressed"},
          {"kv_cache_scheme", nullptr},
          {"config_groups",
           {{"group_0",
             {{"targets", {"re:.*ffn\\.experts\\.\\d+\\.w[123]$"}},
              {"format", "pack-quantized"},
              {"weights",
               {{"num_bits", 4}, {"type", "int"}, {"symmetric", true}, {"group_size", 128}, {"strategy", "group"},
                {"dynamic", false}, {"actorder", nullptr}, {"observer", "minmax"}}},
              {"input_activations", nullptr},
              {"output_activations", nullptr}}},
            {"group_1",
             {{"targets", {"re:.*attn\\.w(q_a|q_b|kv|o_a|o_b)$", "re:.*shared_experts\\.w[123]$", "re:.*indexer\\.wq_b$"}},
              {"format", "float-quantized"},
              {"weights",
               {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "block"},
                {"block_structure", {128, 128}}, {"dynamic", false}, {"observer", "minmax"}}},
              {"input_activations",
               {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "group"}, {"group_size", 128},
                {"dynamic", true}, {"observer", nullptr}}},
              {"output_activations", nullptr}}}}},
          {"ignore", ignore}};
      break;
    }
    case RecipeId::Nvfp4: {
      json ignored = {"attn.wo_a", "mtp."};
      json exclude = {"head", "mtp*", "*attn*", "*shared_experts*", "*ffn.gate"};
      for (const auto& m : kept_bf16) {
        ignored.push_back(m);
        exclude.push_back(m);
      }
      cfg["quantization_config"] = {{"quant_method", "fp8"},
                                    {"activation_scheme", "dynamic"},
                                    {"weight_block_size", {128, 128}},
                                    {"moe_quant_algo", "NVFP4"},
                                    {"ignored_layers", ignored}};
      hf_quant = json{{"producer", {{"name", "kiln"}, {"version", "0.1.0"}}},
                      {"quantization",
                       {{"quant_algo", "NVFP4"},
                        {"kv_cache_quant_algo", nullptr},
                        {"group_size", 16},
                        {"exclude_modules", exclude}}}};
      break;
    }
    case RecipeId::V3: {
      cfg["quantization_config"] = {{"activation_scheme", "dynamic"},
                                    {"fmt", "e4m3"},
                                    {"quant_method", "fp8"},
                                    {"weight_block_size", {128, 128}}};
      if (!kept_bf16.empty()) cfg["quantization_config"]["modules_to_not_convert"] = kept_bf16;
      cfg["expert_dtype"] = "fp8";
      break;
    }
  }
}

}  // namespace kiln::quant
