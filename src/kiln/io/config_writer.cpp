#include "kiln/io/config_writer.h"

#include <fstream>

#include "kiln/core/error.h"
#include "kiln/core/format_ranges.h"

namespace kiln {

using nlohmann::json;

// config.json in DeepSeek's form: the source's own when it is in that form, else built
// from the parsed fields (transformers' form has no DeepSeek spelling for some choices;
// those are refused).
json deepseek_config_json(const json& src, const ModelConfig& c) {
  if (c.form == ConfigForm::DeepSeek) {
    json j = src;
    j.erase("quantization_config");
    j.erase("expert_dtype");
    return j;
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (c.hash_layers[static_cast<size_t>(l)] != (l < c.num_hash_layers)) {
      fail_invalid("the source config routes layers {} by hash; DeepSeek's config form (num_hash_layers) can only "
                   "express the first N layers", format_ranges([&] {
                     std::vector<int> v;
                     for (int64_t i = 0; i < c.num_layers; ++i)
                       if (c.hash_layers[static_cast<size_t>(i)]) v.push_back(static_cast<int>(i));
                     return v;
                   }()));
    }
  }
  for (size_t l = 0; l < c.compress_ratios.size(); ++l) {
    const int64_t r = c.compress_ratios[l];
    const AttnKind want = r == 0 ? AttnKind::SWA : r == 4 ? AttnKind::CSA : AttnKind::HCA;
    if (want != c.attn_kinds[l]) {
      fail_invalid("layer {} is {} with compression ratio {}; DeepSeek's config form reads ratio 4 as CSA and other "
                   "non-zero ratios as HCA", l, attn_kind_name(c.attn_kinds[l]), r);
    }
  }
  if (c.rope_main.yarn) fail_invalid("the source's sliding-window RoPE uses YaRN; DeepSeek's config form cannot express it");
  json j = {
      {"architectures", {"DeepseekV4ForCausalLM"}},
      {"model_type", "deepseek_v4"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_layers},
      {"num_nextn_predict_layers", c.num_mtp_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"qk_rope_head_dim", c.rope_head_dim},
      {"q_lora_rank", c.q_lora_rank},
      {"o_lora_rank", c.o_lora_rank},
      {"o_groups", c.o_groups},
      {"sliding_window", c.sliding_window},
      {"compress_ratios", c.compress_ratios},
      {"compress_rope_theta", c.rope_compress.theta},
      {"rope_theta", c.rope_main.theta},
      {"index_n_heads", c.index_n_heads},
      {"index_head_dim", c.index_head_dim},
      {"index_topk", c.index_topk},
      {"n_routed_experts", c.n_routed_experts},
      {"num_experts_per_tok", c.num_experts_per_tok},
      {"n_shared_experts", c.n_shared_experts},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"scoring_func", std::string(scoring_func_name(c.scoring_func))},
      {"topk_method", "noaux_tc"},
      {"norm_topk_prob", c.norm_topk_prob},
      {"routed_scaling_factor", c.routed_scaling_factor},
      {"num_hash_layers", c.num_hash_layers},
      {"swiglu_limit", c.swiglu_limit},
      {"hidden_act", "silu"},
      {"hc_mult", c.hc_mult},
      {"hc_sinkhorn_iters", c.hc_sinkhorn_iters},
      {"hc_eps", c.hc_eps},
      {"rms_norm_eps", c.rms_norm_eps},
      {"bos_token_id", c.bos_token_id},
      {"eos_token_id", c.eos_token_id},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"torch_dtype", "bfloat16"},
  };
  if (c.rope_compress.yarn) {
    j["rope_scaling"] = {{"type", "yarn"},
                         {"factor", c.rope_compress.factor},
                         {"original_max_position_embeddings", c.rope_compress.original_max_position},
                         {"beta_fast", c.rope_compress.beta_fast},
                         {"beta_slow", c.rope_compress.beta_slow}};
  }
  if (c.max_position_embeddings > 0) j["max_position_embeddings"] = c.max_position_embeddings;
  return j;
}

// The rewritten config must describe the same model as the source's.
void check_same_model(const ModelConfig& a, const ModelConfig& b) {
  auto rope_eq = [](const RopeParams& x, const RopeParams& y) {
    return x.theta == y.theta && x.yarn == y.yarn &&
           (!x.yarn || (x.factor == y.factor && x.original_max_position == y.original_max_position &&
                        x.beta_fast == y.beta_fast && x.beta_slow == y.beta_slow));
  };
  struct F {
    const char* name;
    bool same;
  } fields[] = {
      {"vocab_size", a.vocab_size == b.vocab_size},
      {"hidden_size", a.hidden_size == b.hidden_size},
      {"num_layers", a.num_layers == b.num_layers},
      {"num_mtp_layers", a.num_mtp_layers == b.num_mtp_layers},
      {"heads", a.num_heads == b.num_heads && a.head_dim == b.head_dim && a.rope_head_dim == b.rope_head_dim},
      {"lora ranks", a.q_lora_rank == b.q_lora_rank && a.o_lora_rank == b.o_lora_rank && a.o_groups == b.o_groups},
      {"sliding_window", a.sliding_window == b.sliding_window},
      {"compress_ratios", a.compress_ratios == b.compress_ratios && a.attn_kinds == b.attn_kinds},
      {"hash layers", a.hash_layers == b.hash_layers},
      {"indexer", a.index_n_heads == b.index_n_heads && a.index_head_dim == b.index_head_dim &&
                      a.index_topk == b.index_topk},
      {"experts", a.n_routed_experts == b.n_routed_experts && a.n_shared_experts == b.n_shared_experts &&
                      a.num_experts_per_tok == b.num_experts_per_tok &&
                      a.moe_intermediate_size == b.moe_intermediate_size},
      {"routing", a.scoring_func == b.scoring_func && a.norm_topk_prob == b.norm_topk_prob &&
                      a.routed_scaling_factor == b.routed_scaling_factor && a.swiglu_limit == b.swiglu_limit},
      {"mHC", a.hc_mult == b.hc_mult && a.hc_sinkhorn_iters == b.hc_sinkhorn_iters && a.hc_eps == b.hc_eps},
      {"rms_norm_eps", a.rms_norm_eps == b.rms_norm_eps},
      {"rope", rope_eq(a.rope_main, b.rope_main) && rope_eq(a.rope_compress, b.rope_compress)},
      {"token ids", a.bos_token_id == b.bos_token_id && a.eos_token_id == b.eos_token_id},
  };
  for (const auto& f : fields) {
    if (!f.same) fail_invalid("internal: the rewritten config.json changes the model's {}", f.name);
  }
}

namespace {

void write_text_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::trunc);
  f << text << "\n";
  f.close();
  if (!f) fail_io("{}: write failed", p.string());
}

}  // namespace

void write_json_file(const std::filesystem::path& p, const json& j) { write_text_file(p, j.dump(2)); }
void write_json_file(const std::filesystem::path& p, const nlohmann::ordered_json& j) { write_text_file(p, j.dump(2)); }

}  // namespace kiln
