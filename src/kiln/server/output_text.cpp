#include "kiln/server/output_text.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln::server {

namespace {

// Length of the longest suffix of `text` that is a proper prefix of one of `markers`.
size_t partial_suffix(std::string_view text, std::initializer_list<std::string_view> markers) {
  size_t best = 0;
  for (const auto m : markers) {
    for (size_t n = std::min(text.size(), m.size() - 1); n > best; --n) {
      if (text.substr(text.size() - n) == m.substr(0, n)) {
        best = n;
        break;
      }
    }
  }
  return best;
}

}  // namespace

OutputText::OutputText(const tokenizer::Tokenizer& tok, std::vector<std::string> stops)
    : decoder_(tok, /*skip_special_tokens=*/true), stops_(std::move(stops)) {
  for (const auto& s : stops_) longest_stop_ = std::max(longest_stop_, s.size());
}

bool OutputText::add(std::span<const int32_t> ids) {
  if (stopped_ || finished_) return stopped_;
  const size_t before = text_.size();
  text_ += decoder_.push(ids);
  settle(before);
  return stopped_;
}

void OutputText::finish() {
  if (finished_) return;
  finished_ = true;
  if (stopped_) return;
  const size_t before = text_.size();
  text_ += decoder_.finish();
  settle(before);
  if (!stopped_) stable_ = text_.size();
}

void OutputText::settle(size_t before) {
  // A match can start up to longest_stop_ - 1 bytes before the new text.
  const size_t from = before > longest_stop_ ? before - longest_stop_ + 1 : 0;
  size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, text_.find(s, from));
  if (cut != std::string::npos) {
    text_.resize(cut);
    stable_ = cut;
    stopped_ = true;
    return;
  }
  size_t hold = 0;
  for (const auto& s : stops_) hold = std::max(hold, partial_suffix(text_, {s}));
  stable_ = text_.size() - hold;
}

ChatDelta ChatSplitter::update(std::string_view text, bool final) {
  using namespace tokenizer::dsv4;
  const std::string calls_start = "\n\n<" + std::string(kDsml) + "tool_calls";
  std::string reasoning, content;
  std::string_view rest = text;
  if (mode_ == ThinkingMode::Thinking) {
    const size_t e = text.find(kThinkEnd);
    if (e == std::string_view::npos) {
      const size_t hold = final ? 0 : partial_suffix(text, {kThinkEnd});
      reasoning = std::string(text.substr(0, text.size() - hold));
      rest = {};
    } else {
      reasoning = std::string(text.substr(0, e));
      rest = text.substr(e + kThinkEnd.size());
    }
  }
  const size_t c = rest.find(calls_start);
  if (c == std::string_view::npos) {
    const size_t hold = final ? 0 : partial_suffix(rest, {calls_start});
    content = std::string(rest.substr(0, rest.size() - hold));
  } else {
    content = std::string(rest.substr(0, c));
    if (final) {
      try {
        const auto msg = parse_completion(std::string(text) + std::string(kEos), mode_);
        tool_calls_ = nlohmann::ordered_json::array();
        for (size_t i = 0; i < msg["tool_calls"].size(); ++i) {
          nlohmann::ordered_json call = nlohmann::ordered_json::object();
          call["id"] = fmt::format("call_{}", i);
          call["type"] = "function";
          call["function"] = msg["tool_calls"][i]["function"];
          tool_calls_.push_back(std::move(call));
        }
      } catch (const Error&) {
        content = std::string(rest);  // not a tool-call block after all: nothing is lost
      }
    }
  }
  ChatDelta d;
  // Earlier deltas are prefixes of the new parts (the text only grows).
  if (reasoning.size() > reasoning_.size()) d.reasoning = reasoning.substr(reasoning_.size());
  if (content.size() > content_.size()) d.content = content.substr(content_.size());
  if (reasoning.size() > reasoning_.size()) reasoning_ = std::move(reasoning);
  if (content.size() > content_.size()) content_ = std::move(content);
  return d;
}

}  // namespace kiln::server
