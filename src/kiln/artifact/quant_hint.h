// The checkpoint's own declaration of its quantization — config.json's
// quantization_config (DeepSeek fp8, compressed-tensors, modelopt) and
// hf_quant_config.json (ModelOpt) — read as a hint. The plan never follows it: it
// compares each module's detected scheme with what the hint predicts and reports every
// disagreement as a warning naming the modules.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/artifact/names.h"
#include "kiln/artifact/scheme.h"
#include "kiln/io/config.h"

namespace kiln {

struct HintSource;

class QuantHint {
 public:
  explicit QuantHint(const ModelConfig& cfg);
  ~QuantHint();
  QuantHint(QuantHint&&) noexcept;

  // What the declarations predict for one linear module, or nullopt where they say
  // nothing. `disk_module` is the module's name as spelled on disk (tensor name less its
  // field); `canonical` its canonical name.
  struct Prediction {
    SchemeKind kind;
    std::string source;  // e.g. "quantization_config (compressed-tensors group_0)"
  };
  std::optional<Prediction> predict(std::string_view disk_module, const CanonicalName& canonical) const;

  // FP8 block size declared by weight_block_size / block_structure, if any.
  std::optional<std::pair<int64_t, int64_t>> fp8_block() const { return fp8_block_; }
  // One line per declaration found ("quantization_config: fp8 128x128 (ue8m0)").
  const std::vector<std::string>& summary() const { return summary_; }
  // Problems reading the declarations themselves (unknown method, bad regex).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::vector<std::unique_ptr<HintSource>> sources_;
  std::optional<std::pair<int64_t, int64_t>> fp8_block_;
  std::vector<std::string> summary_;
  std::vector<std::string> warnings_;
};

// compressed-tensors target / ignore matching: "re:<regex>" matched at the start of the
// name (Python re.match), else an exact module name, else a class name ("Linear").
bool ct_target_matches(std::string_view target, std::string_view module_name);
// ModelOpt exclude_modules matching: fnmatch wildcards; `prefix*` also covers `prefix`.
bool modelopt_pattern_matches(std::string_view pattern, std::string_view module_name);

}  // namespace kiln
