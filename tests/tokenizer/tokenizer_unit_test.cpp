// Unit tests: UTF-8 handling, regex translation, streaming, and load errors for malformed
// tokenizer.json files (each names the file and the field).
#include <gmock/gmock.h>

#include "kiln/core/error.h"
#include "kiln/tokenizer/regex.h"
#include "kiln/tokenizer/utf8.h"
#include "test_support.h"

namespace kiln::tokenizer::test {
namespace {

using ::testing::HasSubstr;

std::string lossy(std::string_view s) {
  std::string out;
  utf8_append_lossy(out, s, true);
  return out;
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("abc"), "abc");
  EXPECT_EQ(lossy("a\x80z"), "a" + R + "z");
  EXPECT_EQ(lossy("\xE4\xBD"), R);                  // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(lossy("\xE4\xBDz"), R + "z");
  EXPECT_EQ(lossy("\xF0\x9F\x98"), R);              // truncated 4-byte sequence
  EXPECT_EQ(lossy("\xED\xA0\x80"), R + R + R);      // surrogate: ED is valid, A0 is not after ED
  EXPECT_EQ(lossy("\xC0\xAF"), R + R);              // overlong lead
  EXPECT_EQ(lossy("\xF5\x80"), R + R);
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), R + R + R + R);  // > U+10FFFF
  EXPECT_EQ(lossy("\xE2\x82\xAC"), "\xE2\x82\xAC");
}

TEST(Utf8, NonFinalKeepsAnIncompleteTail) {
  std::string out;
  EXPECT_EQ(utf8_append_lossy(out, "ab\xF0\x9F", false), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(utf8_append_lossy(out, "ab\xF0\x41", false), 4u);  // can never complete: replaced now
  EXPECT_EQ(out, "ab\xEF\xBF\xBD"
                 "A");
}

TEST(Utf8, ByteLevelMapIsGpt2s) {
  EXPECT_EQ(byte_level_chars()['A'], U'A');
  EXPECT_EQ(byte_level_chars()[' '], U'\u0120');  // Ġ
  EXPECT_EQ(byte_level_chars()['\n'], U'\u010A');  // Ċ
  for (int b = 0; b < 256; ++b) EXPECT_EQ(byte_level_byte(byte_level_chars()[b]), b);
  EXPECT_EQ(byte_level_byte(U'\uFF5C'), -1);
}

TEST(Regex, TranslatesOnigurumaConstructs) {
  EXPECT_EQ(Regex::translate("\\s+(?!\\S)"), "[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])");
  EXPECT_THAT(Regex::translate("\\p{L}"), ::testing::StartsWith("[\\p{L}\\x{"));  // plus newer letters
  EXPECT_EQ(Regex::translate("[^\\r\\n]"), "[^\\r\\n]");
  EXPECT_EQ(Regex::translate("\\u00e9"), "\\x{00e9}");
  EXPECT_EQ(Regex::translate("\\p{Han}"), "\\p{Han}");
  EXPECT_THROW(Regex::translate("[a-z&&[^aeiou]]"), Error);
}

TEST(Regex, MatchesLikeOniguruma) {
  const Regex ws("\\s+", "test");
  std::vector<std::pair<size_t, size_t>> m;
  ws.for_each_match("a \xC2\x85"
                    "b",
                    [&](size_t b, size_t e) { m.emplace_back(b, e); });  // U+0085 is \s in Oniguruma
  EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{1, 4}}));
  // Empty matches: one per position, none right after a match (the onig crate's rule).
  m.clear();
  const Regex star("x*", "test");
  star.for_each_match("axxb", [&](size_t b, size_t e) { m.emplace_back(b, e); });
  EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{0, 0}, {1, 3}, {4, 4}}));
  const Regex lit = Regex::literal("a.b", "test");
  m.clear();
  lit.for_each_match("axb a.b", [&](size_t b, size_t e) { m.emplace_back(b, e); });
  EXPECT_EQ(m, (std::vector<std::pair<size_t, size_t>>{{4, 7}}));
}

// A tiny byte-level tokenizer, edited per test to break one field.
nlohmann::ordered_json tiny() {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int id = 0;
  for (const char* t : {"a", "b", "c", "ab", "abc", "\u0120", "\u0120a"}) vocab[t] = id++;
  return {
      {"version", "1.0"},
      {"added_tokens", {{{"id", 7}, {"content", "<s>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", "\\p{N}+"}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b", {"ab", "c"}, {"\u0120", "a"}}}, {"byte_fallback", false}}}};
}

TEST(TokenizerLoad, TinyWorks) {
  const Tokenizer t = Tokenizer::from_json(tiny().dump(), "tiny.json");
  // a b -> ab (rank 0, leftmost first), ab c -> abc; "Ġ ab" is no merge.
  EXPECT_EQ(t.encode("abc ab<s>"), (std::vector<int32_t>{4, 5, 3, 7}));
  EXPECT_EQ(t.encode(" a"), (std::vector<int32_t>{6}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{4, 5, 3, 7}), "abc ab<s>");
  EXPECT_EQ(t.decode(std::vector<int32_t>{4, 5, 3, 7}, true), "abc ab");
}

void expect_invalid(const nlohmann::ordered_json& j, const std::vector<std::string>& parts) {
  try {
    Tokenizer::from_json(j.dump(), "/models/x/tokenizer.json");
    ADD_FAILURE() << "no error for " << j.dump().substr(0, 200);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    EXPECT_THAT(e.what(), HasSubstr("/models/x/tokenizer.json"));
    for (const auto& p : parts) EXPECT_THAT(e.what(), HasSubstr(p));
  }
}

TEST(TokenizerLoad, MalformedFilesNameTheField) {
  auto j = tiny();
  j.erase("model");
  expect_invalid(j, {"model", "missing"});
  j = tiny();
  j["model"]["merges"][1] = {"ab", "zz"};
  expect_invalid(j, {"model.merges[1]", "'zz' is not in model.vocab"});
  j = tiny();
  j["model"]["merges"][0] = "ab";
  expect_invalid(j, {"model.merges[0]"});
  j = tiny();
  j["model"]["merges"][0] = "b c";
  expect_invalid(j, {"model.merges[0]", "'bc'"});
  j = tiny();
  j["model"]["vocab"]["a"] = "zero";
  expect_invalid(j, {"model.vocab[\"a\"]"});
  j = tiny();
  j["model"]["type"] = "Unigram";
  expect_invalid(j, {"model.type", "Unigram"});
  j = tiny();
  j["model"]["dropout"] = 0.1;
  expect_invalid(j, {"model.dropout"});
  j = tiny();
  j["normalizer"] = {{"type", "NFKC"}};
  expect_invalid(j, {"normalizer.type", "NFKC"});
  j = tiny();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_invalid(j, {"pre_tokenizer.pretokenizers[0].pattern", "does not compile"});
  j = tiny();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_invalid(j, {"pre_tokenizer.pretokenizers[0].behavior", "Sideways"});
  j = tiny();
  j["pre_tokenizer"]["pretokenizers"][1]["type"] = "Metaspace";
  expect_invalid(j, {"pre_tokenizer.pretokenizers[1].type", "Metaspace"});
  j = tiny();
  j["added_tokens"][0]["id"] = 2;
  expect_invalid(j, {"added_tokens[0].id"});
  j = tiny();
  j["added_tokens"][0].erase("content");
  expect_invalid(j, {"added_tokens[0].content", "missing"});
  j = tiny();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_invalid(j, {"decoder.type", "WordPiece"});
  try {
    Tokenizer::from_json("{\"model\": ", "/models/x/tokenizer.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/models/x/tokenizer.json"));
    EXPECT_THAT(e.what(), HasSubstr("not valid JSON"));
  }
}

TEST(TokenizerLoad, MissingFileIsAnIOError) {
  try {
    Tokenizer::from_file("/nonexistent/kiln/tokenizer.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::IO);
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/kiln/tokenizer.json"));
  }
}

}  // namespace
}  // namespace kiln::tokenizer::test
