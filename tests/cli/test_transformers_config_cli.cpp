// A config.json in the form transformers 5.17 saves for a DeepseekV4Config built with
// explicit rope_parameters tables: the tables carry the real partial_rotary_factor, while
// the top-level partial_rotary_factor and qk_rope_head_dim are the stale defaults
// transformers writes (0.125, and head_dim * 0.125) but never reads. Through the real
// binary: `kiln inspect` loads it, warns about both stale fields (naming them and both
// values), and `kiln score` gives the logits of transformers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "kiln/io/npy.h"
#include "cli/kiln_process.h"
#include "support/artifacts.h"

namespace {

namespace fs = std::filesystem;
using kiln::test::kiln_run;

const fs::path kFx = fs::path(KILN_TEST_DATA_DIR) / "fixtures" / "tiny_a";

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

// Why the fixture's reference logits are transformers' logits for the rewritten checkpoint:
// transformers 5.17 sizes each rope table by int(head_dim * rope_parameters.<table>.
// partial_rotary_factor) (DeepseekV4RotaryEmbedding.compute_default_rope_parameters and
// the YaRN init read only the table's own factor), and apply_rotary_pos_emb rotates
// 2 * cos.shape[-1] trailing dims. With nested main/compress tables,
// DeepseekV4Config.__post_init__ keeps the tables as they are; the top-level
// partial_rotary_factor only fills tables it builds itself (flat rope_parameters), and
// qk_rope_head_dim is a runtime attribute recomputed from it that no module reads. The
// rewrite below leaves the tables (0.25 of head_dim 64: 16 dims, the fixture's) and the
// weights untouched and changes only those two unread fields, so transformers computes the
// same forward, and tools/make_fixtures.py's logits.npy are its logits for this
// checkpoint too. kiln is not bitwise transformers (its sums run in another order: the
// oracle suite allows 1e-4), so the test asks for the oracle's tolerance against
// transformers and bitwise equality with kiln's own logits on the untouched fixture.
TEST(TransformersConfigCli, StaleTopLevelRotaryFieldsLoadAndScoreLikeTransformers) {
  kiln::test::TempDir d;
  const fs::path dir = d.path() / "hf-stale";
  fs::create_directories(dir);
  fs::copy_file(kFx / "hf" / "model.safetensors", dir / "model.safetensors");
  nlohmann::json cfg = read_json(kFx / "hf" / "config.json");
  ASSERT_EQ(cfg["head_dim"], 64);
  ASSERT_EQ(cfg["rope_parameters"]["main"]["partial_rotary_factor"], 0.25);
  ASSERT_EQ(cfg["rope_parameters"]["compress"]["partial_rotary_factor"], 0.25);
  cfg["partial_rotary_factor"] = 0.125;  // DeepseekV4Config.default_partial_rotary_factor
  cfg["qk_rope_head_dim"] = 8;           // int(head_dim * 0.125)
  std::ofstream(dir / "config.json") << cfg.dump(2);

  auto r = kiln_run("inspect " + dir.string());
  ASSERT_EQ(r.code, 0) << r.text;
  EXPECT_NE(r.text.find("verdict: loadable"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("'partial_rotary_factor' (0.125, a rotary dim of 8) is stale"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("'qk_rope_head_dim' (8) is stale"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("'rope_parameters.{main,compress}.partial_rotary_factor' (0.25), a rotary dim of 16"),
            std::string::npos)
      << r.text;

  auto js = kiln_run("inspect --json " + dir.string());
  ASSERT_EQ(js.code, 0) << js.text;
  const auto j = nlohmann::json::parse(js.text);
  EXPECT_EQ(j["model"]["rope_head_dim"], 16);
  EXPECT_EQ(j["warnings"].size(), 2u) << j["warnings"].dump();

  const std::string tokens = (kFx / "tokens.npy").string();
  for (const auto& [model, out] : {std::pair{dir, d.path() / "stale.npy"}, std::pair{kFx / "hf", d.path() / "fixture.npy"}}) {
    auto s = kiln_run("score --model " + model.string() + " --tokens " + tokens + " --out " + out.string() + " --threads 1");
    ASSERT_EQ(s.code, 0) << s.text;
  }
  const auto got = kiln::read_npy(d.path() / "stale.npy"), own = kiln::read_npy(d.path() / "fixture.npy");
  const auto ref = kiln::read_npy(kFx / "logits.npy");
  ASSERT_EQ(got.shape, ref.shape);
  const auto a = got.as_floats(), b = own.as_floats(), t = ref.as_floats();
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "logits differ from the fixture's";
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - t[i])));
    den = std::max(den, static_cast<double>(std::fabs(t[i])));
  }
  EXPECT_LE(num / den, 1e-4) << "max |kiln - transformers| / max |transformers|";
}

}  // namespace
