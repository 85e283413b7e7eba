// Logprobs in OpenAI's two shapes, from the engine's entries (runtime/logprobs.h):
//  - completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token:
//    logprob, ...}], "text_offset": [...]}; each top_logprobs dict holds the top-N and the
//    chosen token (so up to N + 1 entries, as OpenAI and vLLM); a prompt's first token
//    (echo) has null logprob and null top_logprobs;
//  - chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
//    "logprob", "bytes"}]}]}.
// A token's string is its own decoding (special tokens by name; a byte-level piece of an
// unfinished UTF-8 character decodes to U+FFFD, as vLLM), or "token_id:N" with
// return_tokens_as_token_ids. text_offset counts characters (code points) of each token's
// decoding with special tokens skipped, from the start of the returned text.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "kiln/runtime/logprobs.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::server {

class TokenStrings {
 public:
  TokenStrings(const tokenizer::Tokenizer& tok, bool as_ids) : tok_(tok), as_ids_(as_ids) {}
  std::string token(int32_t id) const;
  // Code points the token adds to the returned text (special tokens add none).
  int64_t text_chars(int32_t id) const;
  nlohmann::ordered_json bytes(int32_t id) const;  // its raw bytes, as integers

 private:
  const tokenizer::Tokenizer& tok_;
  bool as_ids_;
};

// Completions logprobs, built token by token; text_offset continues from `offset`.
class CompletionLogprobs {
 public:
  explicit CompletionLogprobs(int64_t offset = 0) : offset_(offset) {}
  // lp == nullptr: a prompt's first token (nothing before it to score it).
  void add(const TokenStrings& s, int32_t id, const runtime::TokenLogprob* lp);
  bool empty() const { return tokens_.empty(); }
  int64_t offset() const { return offset_; }
  nlohmann::ordered_json to_json() const;

 private:
  int64_t offset_;
  nlohmann::ordered_json tokens_ = nlohmann::ordered_json::array(), logprobs_ = nlohmann::ordered_json::array(),
                         top_ = nlohmann::ordered_json::array(), offsets_ = nlohmann::ordered_json::array();
};

// Chat logprobs: {"content": [...]} for these tokens.
nlohmann::ordered_json chat_logprobs(const TokenStrings& s, std::span<const runtime::TokenLogprob> lps);

}  // namespace kiln::server
