#include "kiln/cli/tokenize.h"

#include <fmt/format.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/cli/default_model.h"
#include "kiln/core/error.h"
#include "kiln/server/api.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

std::string read_file(const std::filesystem::path& p, const char* what) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail_io("{} {}: cannot read", what, p.string());
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The chat as a /tokenize body: {"messages": [...], ...}.
std::string chat_body(const std::string& arg) {
  const size_t first = arg.find_first_not_of(" \t\r\n");
  const bool inline_json = first != std::string::npos && (arg[first] == '[' || arg[first] == '{');
  const std::string text = inline_json ? arg : read_file(arg, "--chat");
  const auto j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(ErrorKind::Usage, "--chat: {} is not valid JSON", inline_json ? "the argument" : arg);
  if (j.is_array()) return nlohmann::ordered_json{{"messages", j}}.dump();
  if (!j.is_object()) fail(ErrorKind::Usage, "--chat: expected an array of messages or an object with \"messages\"");
  return text;
}

}  // namespace

std::vector<int32_t> tokenize_input(const tokenizer::Tokenizer& tok, const TokenizeOptions& o) {
  if ((o.text ? 1 : 0) + (o.file ? 1 : 0) + (o.chat ? 1 : 0) != 1) {
    fail(ErrorKind::Usage, "give one input: --text STR, --file PATH or --chat JSON");
  }
  if (!o.chat) return tok.encode(o.text ? *o.text : read_file(*o.file, "--file"));
  try {
    const server::TokenizeRequest t = server::parse_tokenize(chat_body(*o.chat));
    if (!t.chat) fail(ErrorKind::Usage, "--chat: expected \"messages\"");
    return tok.encode(server::chat_prompt_text(*t.chat));
  } catch (const server::ApiError& e) {
    fail(ErrorKind::Usage, "--chat: {}", e.what());
  }
}

int run_tokenize(const TokenizeOptions& o, std::ostream& out, std::ostream& /*err*/) {
  if ((o.text ? 1 : 0) + (o.file ? 1 : 0) + (o.chat ? 1 : 0) != 1) {
    fail(ErrorKind::Usage, "give one input: --text STR, --file PATH or --chat JSON");
  }
  if (o.tokenizer && o.model) fail(ErrorKind::Usage, "give --tokenizer FILE or --model DIR, not both");
  const std::filesystem::path tok_path =
      o.tokenizer ? *o.tokenizer : model_or_default(o.model ? *o.model : std::filesystem::path()) / "tokenizer.json";
  if (!std::filesystem::exists(tok_path)) fail(ErrorKind::Usage, "{} not found (pass --tokenizer FILE or --model DIR)", tok_path.string());
  const std::vector<int32_t> ids = tokenize_input(tokenizer::Tokenizer::from_file(tok_path), o);
  if (o.json) {
    out << nlohmann::json{{"ids", ids}}.dump() << "\n";
  } else {
    std::ostringstream s;
    for (size_t i = 0; i < ids.size(); ++i) s << (i ? "," : "") << ids[i];
    out << s.str() << "\n";
  }
  return 0;
}

}  // namespace kiln::cli
