// What a client sees of a request's generated ids, built incrementally for streaming:
//  - OutputText: UTF-8-safe decoding, stop strings (the text ends before the earliest
//    match, and generation is cancelled), and the stable prefix that can be sent now (a
//    suffix that could still grow into a stop string is held back);
//  - ChatSplitter: DeepSeek-V4's completion format split into reasoning_content (before
//    </think> in thinking mode), content, and a trailing DSML tool-call block, which is
//    parsed into OpenAI tool_calls when the completion ends.
#pragma once

#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/chat_encoding.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::server {

class OutputText {
 public:
  // Special tokens (BOS, EOS) are not part of the text, as HF's skip_special_tokens.
  OutputText(const tokenizer::Tokenizer& tok, std::vector<std::string> stops);
  // Returns true when a stop string matched: text() is then cut before it and final.
  bool add(std::span<const int32_t> ids);
  // No more ids: held bytes are flushed and the whole text is stable.
  void finish();
  const std::string& text() const { return text_; }
  // Bytes of text() that no later id can change.
  size_t stable() const { return stable_; }
  bool stopped() const { return stopped_; }

 private:
  void settle(size_t searched_from);
  tokenizer::StreamDecoder decoder_;
  std::vector<std::string> stops_;
  size_t longest_stop_ = 0;
  std::string text_;
  size_t stable_ = 0;
  bool stopped_ = false, finished_ = false;
};

struct ChatDelta {
  std::string reasoning, content;
  bool empty() const { return reasoning.empty() && content.empty(); }
};

class ChatSplitter {
 public:
  explicit ChatSplitter(tokenizer::dsv4::ThinkingMode mode) : mode_(mode) {}
  // text: the stable text so far (each call extends the previous one); final: the
  // completion is over. Returns what is new in reasoning and content.
  ChatDelta update(std::string_view text, bool final);
  const std::string& reasoning() const { return reasoning_; }
  const std::string& content() const { return content_; }
  // After a final update: the tool calls of a DSML block at the end (OpenAI form, with
  // ids), empty when there is none. A block that does not parse stays in content.
  const nlohmann::ordered_json& tool_calls() const { return tool_calls_; }

 private:
  tokenizer::dsv4::ThinkingMode mode_;
  std::string reasoning_, content_;
  nlohmann::ordered_json tool_calls_ = nlohmann::ordered_json::array();
};

}  // namespace kiln::server
