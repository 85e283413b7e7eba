// `kiln inspect DIR [--json]`: reads headers only and reports the load plan.
// Exit 0 = loadable, 2 = not loadable, 1 = usage or I/O error.
#pragma once

#include <filesystem>
#include <ostream>

namespace kiln::cli {

struct InspectOptions {
  std::filesystem::path dir;
  bool json = false;
};

int run_inspect(const InspectOptions& opt, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
