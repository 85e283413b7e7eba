// Where kiln finds its bundled model (models/kiln-dsv4-mini, docs/model.md) when a
// command is given no --model. Shared by every subcommand that runs a model.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace kiln::cli {

inline constexpr const char* kDefaultModelName = "kiln-dsv4-mini";
// Names a model directory; when set it is the only place looked at.
inline constexpr const char* kDefaultModelEnv = "KILN_DEFAULT_MODEL";

struct ModelCandidate {
  std::filesystem::path dir;
  std::string origin;  // "$KILN_DEFAULT_MODEL", "next to the executable", "source tree"
};

// In order: $KILN_DEFAULT_MODEL alone when set; else <executable's dir>/../models/<name>,
// <executable's dir>/models/<name>, then <source dir baked in at build time>/models/<name>.
std::vector<ModelCandidate> default_model_candidates();

// The first candidate holding a config.json. Throws kiln::Error (Usage) listing every
// place tried when there is none (or when $KILN_DEFAULT_MODEL names no model directory).
std::filesystem::path find_default_model();

// `given` when non-empty, else find_default_model().
std::filesystem::path model_or_default(const std::filesystem::path& given);

}  // namespace kiln::cli
