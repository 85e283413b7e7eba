// Canonical names. Checkpoints spell the same weight in several ways: DeepSeek's native
// names (`layers.3.attn.wq_a.weight`, `mtp.0.e_proj.weight`), transformers' module names
// (`model.layers.3.self_attn.q_a_proj.weight`, stacked `mlp.experts.gate_up_proj`), and
// what transformers 5.x writes on save (`model.layers.3.attn.wq_a.weight`,
// `model.embed_tokens.weight`, `model.hc_head.hc_fn`, `attn.norm.weight` for kv_norm).
// One rule table maps every spelling to kiln's canonical name, which follows DeepSeek's
// native layout; nothing downstream of artifact/ sees a checkpoint name. A DSpark drafter's
// stages live in the same mtp.N namespace as classic MTP blocks; which one a checkpoint has
// is the plan's call (config keys and tensors), not the name's.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace kiln {

enum class Scope : uint8_t { Top, Layer, Mtp };

// A fused 3-D expert tensor [E, rows, cols] stands for one slice per expert; GateUp
// also splits rows into w1 (first half) and w3 (second half), contiguous halves.
enum class Stack : uint8_t { None, GateUp, Down };

struct CanonicalName {
  Scope scope = Scope::Top;
  int index = -1;       // layer index (Layer) or MTP index (Mtp); -1 for Top
  std::string module;   // canonical path inside the scope: "attn.wq_a", "ffn.experts.5.w1",
                        // or for a plain (non-linear) tensor its full canonical name,
                        // e.g. "attn.attn_sink", "attn_norm.weight"
  bool linear = false;  // module is a (possibly quantized) linear; field names the tensor
  std::string field;    // linear only: the on-disk field spelling ("weight", "scale",
                        // "weight_scale_inv", "weight_packed", "weight_scale_2", ...)
  Stack stack = Stack::None;  // fused experts: module is "ffn.experts.w13" / "ffn.experts.w2"

  // "layers.3.attn.wq_a", "mtp.0.e_proj", "head", "layers.0.attn_norm.weight".
  std::string path() const;
};

// The prefix under which a checkpoint puts its layers: MTP layers also appear as
// `model.layers.{num_layers + i}` (vLLM / DeepSeek-V3 style), so the layer count is needed.
struct NameContext {
  int64_t num_layers = 0;
};

// nullopt when no rule matches (the tensor is reported as unused).
std::optional<CanonicalName> canonicalize(std::string_view checkpoint_name, const NameContext& ctx);

// Field suffixes a linear module may carry on disk (besides the weight itself).
bool is_linear_field(std::string_view field);

// Canonical modules (in an mtp.N scope) that only a DSpark drafter stage has: main_proj,
// main_norm.weight, markov_head.*, confidence_head.*. One of them marks the mtp.N blocks
// as DSpark stages, never classic MTP blocks.
bool is_dspark_module(std::string_view module);

// For rule-table tests: every rule's alias pattern and canonical form, `{E}` = expert.
struct NameRule {
  std::string_view alias;
  std::string_view canonical;
  bool linear;
  bool top = false;  // a top-level rule (else per layer / per MTP block)
  bool hf = false;   // the alias is the spelling transformers writes for the canonical name
};
std::span<const NameRule> name_rules();

// The spelling transformers uses for a canonical tensor or module path ("layers.3.attn.wq_a"
// -> "model.layers.3.self_attn.q_a_proj", "mtp.0.attn.wq_a" -> "model.layers.{num_layers}.
// self_attn.q_a_proj", "head" -> "lm_head"), from the rule table's hf aliases; names
// transformers has no module for (MTP-only tensors) keep their native body under
// model.layers.{num_layers + i}. canonicalize() maps every result back (tested).
std::string hf_name(std::string_view canonical_path, int64_t num_layers);

}  // namespace kiln
