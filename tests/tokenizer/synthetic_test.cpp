// Small tokenizers trained with HF `tokenizers` 0.23.2 (tools/tokenizer_reference.py) that
// exercise what DeepSeek's file does not: ByteLevel's own regex and prefix space, every
// Split behaviour and invert, String patterns, Digits, added tokens with lstrip / rstrip /
// single_word / normalized, byte fallback with a fused unknown token, normalizers,
// ignore_merges, merges as "a b" strings and as [a, b] pairs.
#include "test_support.h"

namespace kiln::tokenizer::test {
namespace {

class Synthetic : public ::testing::TestWithParam<const char*> {};

TEST_P(Synthetic, EncodeAndDecodeMatchHF) {
  const auto data = read_json(data_dir() / (std::string("synthetic_") + GetParam() + ".json"));
  const Tokenizer tok = Tokenizer::from_json(data["tokenizer"].dump(), GetParam());
  size_t n = 0, bad = 0;
  for (const auto& k : data["encode"]) {
    const auto text = k["text"].get<std::string>();
    const auto want = k["ids"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text);
    if (got != want && ++bad <= 5) {
      size_t i = 0;
      while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
      ADD_FAILURE() << GetParam() << " case " << n << " differs at id " << i << "\n  kiln: " << show_ids(got, i, 8)
                    << "\n  HF:   " << show_ids(want, i, 8) << "\n  text: " << text.substr(0, 200);
    }
    ++n;
  }
  EXPECT_EQ(bad, 0u) << "of " << n;
  for (const auto& k : data["decode"]) {
    const auto ids = k["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(ids), k["text"].get<std::string>());
    StreamDecoder sd(tok);
    std::string all = sd.push(ids);
    all += sd.finish();
    EXPECT_EQ(all, k["text"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(HF, Synthetic, ::testing::Values("gpt2", "splits", "bytefallback", "normalizer"));

}  // namespace
}  // namespace kiln::tokenizer::test
