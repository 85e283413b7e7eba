// Compares kiln's tokenizer with reference results computed by HF `tokenizers` at test
// time (tests/tokenizer/hf_oracle.py writes them):
//   tokenizer_hf_check TOKENIZER_JSON CASES_JSON
// CASES_JSON: {"encode": [{"text", "ids", "split_special_tokens"?}], "decode": [{"ids",
// "text", "text_skip_special"}]}. Prints the first differences; exit 1 if any.
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/tokenizer/tokenizer.h"

namespace {

std::string show(const std::vector<int32_t>& ids, size_t from) {
  std::string s;
  for (size_t i = from; i < ids.size() && i < from + 8; ++i) s += std::to_string(ids[i]) + " ";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: tokenizer_hf_check TOKENIZER_JSON CASES_JSON\n");
    return 2;
  }
  try {
    const auto tok = kiln::tokenizer::Tokenizer::from_file(argv[1]);
    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const auto cases = nlohmann::json::parse(ss.str());
    size_t bad = 0, n_encode = 0, n_decode = 0, n_ids = 0;
    const auto report = [&](const std::string& what) {
      if (++bad <= 10) std::fprintf(stderr, "%s\n", what.c_str());
    };
    for (const auto& c : cases.at("encode")) {
      const auto text = c.at("text").get<std::string>();
      const auto want = c.at("ids").get<std::vector<int32_t>>();
      const bool split = c.value("split_special_tokens", false);
      const auto got = tok.encode(text, {.split_special_tokens = split});
      ++n_encode;
      n_ids += want.size();
      if (got != want) {
        size_t k = 0;
        while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
        const size_t from = k > 2 ? k - 2 : 0;
        report("encode" + std::string(split ? " (split special tokens)" : "") + " of " + nlohmann::json(text).dump() +
               ": first difference at id " + std::to_string(k) + "\n  kiln: " + show(got, from) +
               "\n  HF:   " + show(want, from));
      }
      if (!split && tok.decode(want) != text) report("decode of HF's ids does not give back " + nlohmann::json(text).dump());
    }
    for (const auto& c : cases.at("decode")) {
      const auto ids = c.at("ids").get<std::vector<int32_t>>();
      ++n_decode;
      for (const bool skip : {false, true}) {
        const auto want = c.at(skip ? "text_skip_special" : "text").get<std::string>();
        const auto got = tok.decode(ids, skip);
        if (got != want)
          report("decode" + std::string(skip ? " (skip special)" : "") + " of " + nlohmann::json(ids).dump() +
                 ":\n  kiln: " + nlohmann::json(got).dump() + "\n  HF:   " + nlohmann::json(want).dump());
      }
    }
    std::printf("kiln vs HF tokenizers %s: %zu encode cases (%zu ids), %zu decode cases, %zu differences\n",
                cases.value("tokenizers_version", std::string("?")).c_str(), n_encode, n_ids, n_decode, bad);
    return bad == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
