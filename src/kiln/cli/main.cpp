// kiln — serves DeepSeek-V4-class models from the artifacts people publish.
#include <CLI/CLI.hpp>

#include <iostream>

#include "kiln/cli/inspect.h"
#include "kiln/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"kiln: DeepSeek-V4 inference engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kiln 0.1.0");

  kiln::cli::InspectOptions inspect;
  auto* ins = app.add_subcommand("inspect", "Report how a checkpoint would load (headers only): schemes per module "
                                            "group, missing/unused tensors, warnings, verdict");
  ins->add_option("dir", inspect.dir, "Checkpoint directory (config.json + *.safetensors)")->required();
  ins->add_flag("--json", inspect.json, "Machine-readable report (schema kiln.inspect/1, docs/inspect-json.md)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 1;
  }

  try {
    if (*ins) return kiln::cli::run_inspect(inspect, std::cout, std::cerr);
  } catch (const kiln::Error& e) {
    std::cerr << "kiln: error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "kiln: internal error: " << e.what() << "\n";
    return 1;
  }
  return 1;
}
