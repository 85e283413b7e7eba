// The CUDA loader's host side on a DSpark checkpoint (V4-Flash-0731 layout, tiny): the
// modules it uploads are the main model's, each with a view the kernels take; the
// drafter's are not among them (nothing of it reaches the GPU).
#include <gtest/gtest.h>

#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/model/linear_source.h"
#include "kiln/model/weights.h"
#include "support/artifacts.h"

namespace kiln::model::cuda {
namespace {

TEST(DSparkLoader, UploadsTheMainModelOnly) {
  test::TempDir dir;
  test::write_spec(test::make_spec(test::Layout::Native, test::tiny_dspark_config(), 5), dir.path());
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  const Plan plan = build_plan(ckpt, load_model_config(dir.path()));
  ASSERT_TRUE(plan.loadable());
  ASSERT_TRUE(plan.dspark && !plan.dspark->linears.empty());
  const Weights w = load_weights(ckpt, plan);
  EXPECT_TRUE(w.mtp.empty());  // upload_weights uploads w.mtp: nothing of the drafter

  const LinearSource src = checkpoint_linears(ckpt, plan);
  for (const PlannedLinear& l : plan.linears) {
    EXPECT_NE(l.name.scope, Scope::Mtp) << l.path;
    const ops::HostQuantLinear h = src(l.path);
    EXPECT_EQ(h.n, l.n) << l.path;
  }
  for (const PlannedLinear& l : plan.dspark->linears) {
    EXPECT_THROW(src(l.path), Error) << l.path;
  }
}

}  // namespace
}  // namespace kiln::model::cuda
