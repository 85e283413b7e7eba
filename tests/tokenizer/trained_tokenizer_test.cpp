// The bundled model's tokenizer (models/kiln-dsv4-mini/tokenizer.json, a byte-level BPE
// trained by tools/train/train_dsv4.py with DeepSeek-V3's pre-tokenizer) against HF
// `tokenizers` 0.23.2: heldout_ids.npy are HF's ids of heldout.txt (add_special_tokens=False).
#include "kiln/io/npy.h"
#include "test_support.h"

namespace kiln::tokenizer::test {
namespace {

const std::filesystem::path kData = std::filesystem::path(KILN_TEST_DATA_DIR) / "trained" / "kiln-dsv4-mini";
const std::filesystem::path kModels = std::filesystem::path(KILN_TEST_DATA_DIR).parent_path().parent_path() / "models";

TEST(TrainedTokenizer, HeldOutIdsIdenticalToHF) {
  const auto tok = Tokenizer::from_file(kModels / "kiln-dsv4-mini" / "tokenizer.json");
  EXPECT_EQ(tok.vocab_size(), 4096u);
  EXPECT_EQ(tok.token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(tok.token_to_id("<｜end▁of▁sentence｜>"), 1);
  const std::string text = read_text(kData / "heldout.txt");
  std::vector<int32_t> want;
  for (int64_t v : read_npy(kData / "heldout_ids.npy").as_ints()) want.push_back(static_cast<int32_t>(v));
  ASSERT_GT(want.size(), 20000u);
  const auto got = tok.encode(text);
  ASSERT_EQ(got.size(), want.size());
  size_t first_diff = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      first_diff = i;
      break;
    }
  }
  EXPECT_EQ(first_diff, got.size()) << "first differing id at " << first_diff;
  EXPECT_EQ(tok.decode(got), text);
}

TEST(TrainedTokenizer, QuantizedFlavourCarriesTheSameTokenizer) {
  EXPECT_EQ(read_text(kModels / "kiln-dsv4-mini" / "tokenizer.json"),
            read_text(kModels / "kiln-dsv4-mini-fp8-mxfp4" / "tokenizer.json"));
}

}  // namespace
}  // namespace kiln::tokenizer::test
