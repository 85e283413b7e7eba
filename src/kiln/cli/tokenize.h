// `kiln tokenize`: the ids a tokenizer.json gives a text, a file or a chat, as the server
// feeds them. A text is encoded as is (HF tokenizers' encode with add_special_tokens
// False); a chat is DeepSeek-V4's encoding of its messages (BOS included), exactly the
// prompt of /v1/chat/completions and of /tokenize with "messages".
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

struct TokenizeOptions {
  std::optional<std::string> text;
  std::optional<std::filesystem::path> file;
  // A chat: JSON text, or the path of a JSON file. Either an array of messages or an
  // object with "messages" and the chat fields of a chat completions request (tools,
  // thinking, reasoning_effort, ...).
  std::optional<std::string> chat;
  std::optional<std::filesystem::path> tokenizer;  // tokenizer.json
  std::optional<std::filesystem::path> model;      // or DIR/tokenizer.json (neither: the bundled model's)
  bool json = false;                               // {"ids": [...]} instead of 5,17,42
};

// The ids of o's input (text, file or chat) under `tok`: what run_tokenize prints.
std::vector<int32_t> tokenize_input(const tokenizer::Tokenizer& tok, const TokenizeOptions& o);

// Prints the ids on one line, comma-separated (what --tokens of score / generate take).
// Throws kiln::Error: Usage for no input or several, a missing tokenizer, invalid UTF-8
// or a chat the encoding refuses; IO when a file cannot be read.
int run_tokenize(const TokenizeOptions& o, std::ostream& out, std::ostream& err);

}  // namespace kiln::cli
