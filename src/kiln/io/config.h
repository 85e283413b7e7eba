// DeepSeek-V4 model configuration, parsed from config.json in either of its two forms
// into one internal struct:
//  - DeepSeek's official form: compress_ratios (per layer, + MTP entries), num_hash_layers,
//    qk_rope_head_dim, rope_scaling {type: yarn, factor, original_max_position_embeddings,
//    beta_fast, beta_slow}, expert_dtype, quantization_config;
//  - transformers' form: layer_types ("sliding_attention" | "compressed_sparse_attention" |
//    "heavily_compressed_attention"), mlp_layer_types ("hash_moe" | "moe"), compress_rates
//    {layer type -> ratio}, partial_rotary_factor, rope_parameters {main: {...}, compress: {...}}.
// hf_quant_config.json (ModelOpt) is read alongside when present.
// A config with the dspark_* keys (V4-Flash-DSpark, V4-Flash-0731, V4-Pro-0813) declares a
// DSpark drafter instead of classic MTP blocks (../shared/docs/dspark.md section 1.2).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/core/rope_params.h"
#include "kiln/core/scoring.h"

namespace kiln {

enum class AttnKind { SWA, CSA, HCA };  // compress ratio 0 / 4-like (indexer) / 128-like
std::string_view attn_kind_name(AttnKind k);

enum class ConfigForm { DeepSeek, Transformers };

// What drafts tokens for speculative decoding: nothing, classic MTP blocks (e_proj/h_proj,
// one token per block pass), or DeepSeek's DSpark drafter.
enum class DrafterKind { None, Mtp, DSpark };
std::string_view drafter_kind_name(DrafterKind k);  // "none", "mtp", "dspark"

// DeepSeek's DSpark drafter, from the dspark_* keys: `stages` sliding-window V4 blocks
// stored under mtp.0 .. mtp.{stages-1} (not classic MTP blocks), fed by the outputs of the
// backbone layers target_layer_ids, drafting block_size tokens per pass; the last stage
// carries a Markov head of rank markov_rank. kiln reads and reports it; it does not run it.
struct DSparkConfig {
  int64_t stages = 0;          // len(compress_ratios) - num_hidden_layers (not num_nextn_predict_layers)
  int64_t block_size = 0;      // dspark_block_size
  int64_t noise_token_id = 0;  // dspark_noise_token_id: the mask token filling the block after the anchor
  int64_t markov_rank = 0;     // dspark_markov_rank
  std::vector<int64_t> target_layer_ids;  // dspark_target_layer_ids: strictly increasing backbone layers
};

struct ModelConfig {
  ConfigForm form = ConfigForm::DeepSeek;
  std::string model_type;  // "deepseek_v4"

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_mtp_layers = 0;  // classic MTP blocks: num_nextn_predict_layers, 0 with DSpark
  int64_t num_nextn_predict_layers = 0;  // as written (DSpark checkpoints keep it at 1)
  int64_t num_heads = 0;
  int64_t num_kv_heads = 1;
  int64_t head_dim = 0;
  int64_t rope_head_dim = 0;  // qk_rope_head_dim, or as transformers derives it (config.cpp)
  int64_t q_lora_rank = 0;
  int64_t o_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t sliding_window = 0;

  // Per backbone layer (num_layers), then per MTP layer (num_mtp_layers), then per DSpark
  // stage (dspark->stages, always 0): 0 = SWA.
  std::vector<int64_t> compress_ratios;
  // Same indexing as compress_ratios. DeepSeek form: 0 -> SWA, 4 -> CSA, other -> HCA;
  // transformers' form: from the layer type name (MTP layers: SWA).
  std::vector<AttnKind> attn_kinds;
  std::vector<bool> hash_layers;  // per backbone layer: routed by tid2eid
  int64_t num_hash_layers = 0;

  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;

  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  ScoringFunc scoring_func = ScoringFunc::SqrtSoftplus;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  double swiglu_limit = 0.0;

  int64_t hc_mult = 0;
  int64_t hc_sinkhorn_iters = 0;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;

  RopeParams rope_main;      // SWA layers
  RopeParams rope_compress;  // CSA/HCA layers
  int64_t max_position_embeddings = 0;

  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  bool tie_word_embeddings = false;
  std::string torch_dtype;
  std::optional<std::string> expert_dtype;  // "fp4" | "fp8" when present

  // Hints, kept raw; interpreted by artifact/quant_hint.
  std::optional<nlohmann::json> quantization_config;
  std::optional<nlohmann::json> hf_quant_config;  // hf_quant_config.json (ModelOpt)

  std::optional<DSparkConfig> dspark;  // present when the dspark_* keys are

  // Fields read differently from their face value, each naming the field and both values
  // (e.g. a stale top-level partial_rotary_factor that transformers writes but does not
  // use); the plan reports them as warnings.
  std::vector<std::string> warnings;

  DrafterKind drafter() const {
    return dspark ? DrafterKind::DSpark : num_mtp_layers > 0 ? DrafterKind::Mtp : DrafterKind::None;
  }
  // Layer entries after the backbone: MTP layers, then DSpark stages.
  int64_t num_draft_layers() const { return num_mtp_layers + (dspark ? dspark->stages : 0); }
  // The layer index of DSpark stage `s` (compress_ratios / attn_kinds).
  int64_t dspark_layer(int64_t s) const { return num_layers + num_mtp_layers + s; }

  AttnKind attn_kind(int64_t layer) const;  // layer in [0, num_layers + num_draft_layers())
  int64_t compress_ratio(int64_t layer) const { return compress_ratios.at(static_cast<size_t>(layer)); }
  bool is_hash_layer(int64_t layer) const;  // false for MTP layers and DSpark stages
};

// Parses config.json content. `label` names the file in error messages. Missing or
// ill-typed required fields, inconsistent lengths (layer_types vs num_hidden_layers),
// unknown layer types, non-positive dimensions, an incomplete or inconsistent set of
// dspark_* keys: Error(Invalid) naming the field.
ModelConfig parse_model_config(const nlohmann::json& j, std::string_view label);

// Reads DIR/config.json (required) and DIR/hf_quant_config.json (optional).
ModelConfig load_model_config(const std::filesystem::path& dir);

}  // namespace kiln
