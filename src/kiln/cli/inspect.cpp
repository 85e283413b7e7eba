#include "kiln/cli/inspect.h"

#include "kiln/artifact/plan.h"
#include "kiln/artifact/report.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"

namespace kiln::cli {

int run_inspect(const InspectOptions& opt, std::ostream& out, std::ostream& err) {
  try {
    ModelConfig cfg = load_model_config(opt.dir);
    Checkpoint ckpt = Checkpoint::open(opt.dir);
    Plan plan = build_plan(ckpt, cfg);
    if (opt.json) {
      out << render_json(plan, opt.dir).dump(2) << "\n";
    } else {
      out << render_text(plan, opt.dir);
    }
    return plan.loadable() ? 0 : 2;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::Invalid) {
      err << "kiln inspect: error: " << e.what() << "\n";
      return e.exit_code();
    }
    if (opt.json) {
      out << render_json_failure(opt.dir, e.what()).dump(2) << "\n";
    } else {
      out << render_text_failure(opt.dir, e.what());
    }
    err << "kiln inspect: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace kiln::cli
