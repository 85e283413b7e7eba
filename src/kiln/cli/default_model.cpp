#include "kiln/cli/default_model.h"

#include <cstdlib>
#include <system_error>

#include "kiln/core/error.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR ""
#endif

namespace kiln::cli {
namespace {

std::filesystem::path executable_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path{} : exe.parent_path();
}

bool is_model_dir(const std::filesystem::path& d) {
  std::error_code ec;
  return std::filesystem::is_regular_file(d / "config.json", ec);
}

}  // namespace

std::vector<ModelCandidate> default_model_candidates() {
  std::vector<ModelCandidate> out;
  if (const char* env = std::getenv(kDefaultModelEnv); env && *env) {
    out.push_back({env, std::string("$") + kDefaultModelEnv});
    return out;
  }
  if (auto exe = executable_dir(); !exe.empty()) {
    out.push_back({(exe / ".." / "models" / kDefaultModelName).lexically_normal(), "next to the executable"});
    out.push_back({exe / "models" / kDefaultModelName, "next to the executable"});
  }
  if (std::string src = KILN_SOURCE_DIR; !src.empty())
    out.push_back({std::filesystem::path(src) / "models" / kDefaultModelName, "source tree"});
  return out;
}

std::filesystem::path find_default_model() {
  const auto candidates = default_model_candidates();
  std::string tried;
  for (const auto& c : candidates) {
    if (is_model_dir(c.dir)) return c.dir;
    tried += "\n  " + c.dir.string() + " (" + c.origin + "): no config.json";
  }
  fail(ErrorKind::Usage,
       "no --model given and the bundled model {} was not found; looked in:{}\n"
       "pass --model DIR or set {} to a model directory",
       kDefaultModelName, tried, kDefaultModelEnv);
}

std::filesystem::path model_or_default(const std::filesystem::path& given) {
  return given.empty() ? find_default_model() : given;
}

}  // namespace kiln::cli
