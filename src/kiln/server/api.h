// The OpenAI-compatible request layer: JSON bodies of /v1/completions and
// /v1/chat/completions validated into a typed request, and OpenAI-style error bodies.
// Pure functions (no I/O), so the fuzzer (tests/fuzz/fuzz_server_request.cpp) can drive
// them directly: any byte string either parses or throws ApiError, never anything else.
#pragma once

#include <memory>

#include "kiln/runtime/json_schema.h"

#include <fmt/format.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/chat_encoding.h"

namespace kiln::server {

// An HTTP error with an OpenAI error body {"error": {message, type, param, code}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string type = {}, std::string code = {});
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }
  std::string body() const;

 private:
  int status_;
  std::string param_, type_, code_;
};

// 400 invalid_request_error naming the field.
template <typename... Args>
[[noreturn]] void bad_field(std::string param, fmt::format_string<Args...> f, Args&&... args) {
  throw ApiError(400, fmt::format(f, std::forward<Args>(args)...), std::move(param));
}

enum class Endpoint { Completions, Chat };

struct ParsedRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  // Completions: one prompt or several (OpenAI's list of strings or of token-id arrays),
  // each as text or as token ids.
  struct Prompt {
    std::optional<std::string> text;
    std::vector<int32_t> ids;
  };
  std::vector<Prompt> prompts;
  // Chat: the messages (top-level `tools` attached to the system message, as DeepSeek's
  // encoding expects them) and the thinking mode.
  nlohmann::ordered_json messages;
  bool has_tools = false;
  tokenizer::dsv4::ThinkingMode thinking = tokenizer::dsv4::ThinkingMode::Chat;
  tokenizer::dsv4::ReasoningEffort reasoning_effort = tokenizer::dsv4::ReasoningEffort::None;
  // Sampling and limits.
  std::optional<int> max_tokens;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // kiln extension (as vLLM)
  std::optional<int> mtp;      // kiln extension: drafts per round for this request (MTP or DSpark; 0: none)
  // Choices per prompt.
  int n = 1;
  // -1: none. Completions: `logprobs` N; chat: `top_logprobs` (0 unless given) once
  // `logprobs` is true. 0..20.
  int logprobs = -1;
  bool echo = false;                 // completions: the prompt before the completion (and its logprobs)
  bool tokens_as_ids = false;        // return_tokens_as_token_ids (vLLM): tokens as "token_id:N"
  // response_format json_object / json_schema: the compiled schema (nullptr: free text).
  std::shared_ptr<const runtime::JsonSchema> response_schema;
};

// The most prompts one completions request may carry.
inline constexpr size_t kMaxPrompts = 1024;
// The most choices per prompt (`n`; the engine's batch bounds it further).
inline constexpr int kMaxChoices = 128;

// Throws ApiError (400) naming the offending field for anything kiln cannot honour.
ParsedRequest parse_request(std::string_view body, Endpoint endpoint);

// POST /tokenize (vLLM's shape): {"prompt": "..."} or {"messages": [...]} (with the chat
// fields of chat completions: tools, thinking, ...), "add_special_tokens" (default: true
// for a prompt, which then starts with BOS as completions do; messages carry their own)
// and "return_token_strs".
struct TokenizeRequest {
  std::optional<std::string> prompt;
  std::optional<ParsedRequest> chat;  // messages, as a chat completions request
  bool add_special_tokens = true;
  bool return_token_strs = false;
};
TokenizeRequest parse_tokenize(std::string_view body);

// POST /detokenize: {"tokens": [ids]} (each id in [0, vocab)).
std::vector<int32_t> parse_detokenize(std::string_view body, int64_t vocab);

// The messages of a chat request as the prompt text chat completions feed (DeepSeek-V4's
// encoding, BOS included). Throws ApiError (400, "messages") for input it refuses.
std::string chat_prompt_text(const ParsedRequest& r);

}  // namespace kiln::server
