// The `kiln inspect` report of a plan: human-readable text, and JSON with a stable
// schema ("kiln.inspect/1", documented in docs/inspect-json.md).
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/artifact/plan.h"

namespace kiln {

std::string render_text(const Plan& plan, const std::filesystem::path& dir);
nlohmann::json render_json(const Plan& plan, const std::filesystem::path& dir);

// The report for a checkpoint that could not be planned at all (unreadable shard,
// malformed config): verdict "not loadable" with the one error.
std::string render_text_failure(const std::filesystem::path& dir, const std::string& error);
nlohmann::json render_json_failure(const std::filesystem::path& dir, const std::string& error);

std::string format_bytes(uint64_t bytes);  // "148.7 GB", "612 KB"

}  // namespace kiln
