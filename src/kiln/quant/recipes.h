// The recipes of `kiln quantize`: for each, the scheme and on-disk spelling every linear
// module of a DeepSeek-V4 checkpoint is written in, by the module's role (docs/quantization.md
// has the exact layouts). Roles are read from canonical module names (artifact/names.h),
// e.g. "attn.wq_a", "ffn.experts.3.w1", "e_proj".
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/core/dtype.h"
#include "kiln/core/scheme_kind.h"

namespace kiln::quant {

// What a recipe stores one linear module as.
struct Target {
  SchemeKind kind = SchemeKind::BF16;
  // FP8: "scale" | "weight_scale" | "weight_scale_inv"; NVFP4: "weight_scale" (ModelOpt)
  // or "scale" (DeepSeek-native names, with [1]-shaped weight_scale_2 / input_scale).
  std::string scale_field;
  DType scale_dtype = DType::F8_E8M0;
};

enum class Role { Attn, WoA, IndexerWqB, Compressor, WeightsProj, Gate, Expert, Shared, MtpProj, Head };
// The role of a canonical module (the part after "layers.N." / "mtp.N.", or a top-level name).
Role role_of(std::string_view module);

enum class RecipeId { Native, NativeNvfp4, W4A16, Nvfp4, V3 };

struct Recipe {
  RecipeId id;
  std::string_view name;
  std::string_view description;
  bool hf_names;  // transformers' module names (else DeepSeek's native ones)
};

std::span<const Recipe> recipes();
const Recipe* find_recipe(std::string_view name);  // nullptr when unknown

// The target of a module of `role`; `mtp`: the module is in an MTP block.
Target target_for(RecipeId r, Role role, bool mtp);
// "fp8_block 128x128 E8M0", "nvfp4 g16 (modelopt)", ...
std::string_view target_label(const Target& t);
// Why a [n, k] module cannot be stored as `kind`, or nullopt.
std::optional<std::string> unrepresentable(SchemeKind kind, int64_t n, int64_t k);

// One tensor a recipe writes.
struct StoredTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};
// The tensors of a [n, k] linear module named `base` (on-disk spelling) stored as `t`, in
// writing order: weight first, then its scale and companions.
std::vector<StoredTensor> target_tensors(const std::string& base, const Target& t, int64_t n, int64_t k);
// The dtype every recipe stores a plain tensor in (DeepSeek's layout), by its canonical
// name inside its scope ("attn_norm.weight", "ffn.gate.tid2eid", "hc_attn_fn", ...).
DType plain_dtype(const std::string& module);
// config.json's quantization_config (and hf_quant_config.json where the producer writes
// one) as recipe `r`'s producer writes them. `kept_bf16`: modules the recipe would quantize
// but whose shape the scheme cannot hold (exact names).
void declare_quantization(RecipeId r, nlohmann::json& cfg, std::optional<nlohmann::json>& hf_quant,
                          const std::vector<std::string>& kept_bf16);

}  // namespace kiln::quant
