// DeepSeek-V4 chat encoding: messages -> prompt string, and the model's completion text ->
// assistant message. DeepSeek ships this as Python (encoding/encoding_dsv4.py in the
// DeepSeek-V4 model repository) instead of a Jinja chat template; this is a C++
// re-implementation checked against it (tests/tokenizer/chat_encoding_test.cpp, expected
// strings from tools/tokenizer_chat_reference.py).
//
// Messages are OpenAI-style JSON objects, with DeepSeek's extras:
//   role: system | developer | user | assistant | tool | latest_reminder
//   content (string or null), tools (OpenAI tool list), response_format,
//   tool_calls ([{id, type, function: {name, arguments}}]), tool_call_id,
//   reasoning_content, task (action|query|authority|domain|title|read_url), wo_eos,
//   content_blocks (user: [{type: text|tool_result, ...}]).
// Tool messages are merged into user turns as <tool_result> blocks, ordered as the
// preceding assistant's tool calls; thinking is dropped from turns before the last user
// message unless tools are defined or drop_thinking is false.
//
// Where DeepSeek's Python would turn a non-string value into its Python repr (a list as
// `content`, say), kiln refuses the request instead. Integers beyond 64 bits in tool-call
// arguments are rendered as floats (nlohmann) where Python keeps them exact.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace kiln::tokenizer::dsv4 {

inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";
inline constexpr std::string_view kDsml = "｜DSML｜";
inline constexpr std::string_view kUser = "<｜User｜>";
inline constexpr std::string_view kAssistant = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminder = "<｜latest_reminder｜>";

enum class ThinkingMode { Chat, Thinking };
enum class ReasoningEffort { None, High, Max };

// "chat" / "thinking"; "high" / "max" (empty: None). kiln::Error (Usage) otherwise.
ThinkingMode thinking_mode_from_string(std::string_view s);
ReasoningEffort reasoning_effort_from_string(std::string_view s);

struct ChatOptions {
  ThinkingMode thinking_mode = ThinkingMode::Chat;
  bool drop_thinking = true;
  bool add_bos = true;  // only when there is no context
  ReasoningEffort reasoning_effort = ReasoningEffort::None;
};

// encode_messages(messages, thinking_mode, context, drop_thinking, add_default_bos_token,
// reasoning_effort). `context`: earlier messages whose encoding is already in the prompt
// (null or an empty array for none). Throws kiln::Error (Usage) naming the message and
// field for input the reference refuses.
std::string encode_messages(const nlohmann::ordered_json& messages, const ChatOptions& options = {},
                            const nlohmann::ordered_json& context = nullptr);

// parse_message_from_completion_text: {"role": "assistant", "content", "reasoning_content",
// "tool_calls": [{"type": "function", "function": {"name", "arguments"}}]}; the text must
// end with the EOS token (or after the tool-call block). kiln::Error (Invalid) when
// malformed.
nlohmann::ordered_json parse_completion(std::string_view text, ThinkingMode mode);

// Python's json.dumps(value, ensure_ascii=False): ", " and ": " separators, Python float
// repr, \uXXXX only for control characters.
std::string python_json_dumps(const nlohmann::ordered_json& value);

}  // namespace kiln::tokenizer::dsv4
