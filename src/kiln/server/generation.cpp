#include "kiln/server/generation.h"

#include "kiln/server/api.h"

namespace kiln::server {

using json = nlohmann::ordered_json;
using runtime::FinishReason;

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "abort";
    case FinishReason::Error: return "error";
    default: return "stop";
  }
}

}  // namespace

Generation::Generation(ParsedRequest req, const tokenizer::Tokenizer& tok, std::string model_name)
    : req_(std::move(req)), tok_(tok), model_name_(std::move(model_name)), strings_(tok, req_.tokens_as_ids) {}

void Generation::add_prompt(GenerationPrompt p) {
  const size_t i = prompts_.size();
  prompts_.push_back(std::move(p));
  for (int c = 0; c < req_.n; ++c) choices_.emplace_back(tok_, req_, i, c, static_cast<int>(i) * req_.n + c);
}

void Generation::ready(std::string id, int64_t created) {
  id_ = std::move(id);
  created_ = created;
}

void Generation::cancel() {
  for (auto& p : prompts_) p.handle->cancel();
}

bool Generation::all_over() const {
  for (const auto& c : choices_) {
    if (!c.over) return false;
  }
  return true;
}

std::string Generation::error() const {
  for (const auto& c : choices_) {
    if (c.failed) return prompts_[c.prompt].handle->error();
  }
  return {};
}

bool Generation::pull() {
  bool news = false;
  for (auto& c : choices_) {
    if (c.over) continue;
    runtime::RequestHandle& h = *prompts_[c.prompt].handle;
    auto u = h.take(c.choice, c.have);
    for (size_t i = 0; i < u.tokens.size() && !c.out.stopped(); ++i) {
      news = true;
      ++c.have;
      if (i < u.logprobs.size()) c.lps.push_back(std::move(u.logprobs[i]));
      if (c.out.add(std::span<const int32_t>(&u.tokens[i], 1))) h.cancel(c.choice);  // a stop string matched
      c.ends.push_back(c.out.text().size());
    }
    if (c.out.stopped() || u.finish != FinishReason::None) {
      news = true;
      c.over = true;
      c.out.finish();
      c.failed = !c.out.stopped() && u.finish == FinishReason::Error;
      c.finish = c.out.stopped() ? "stop" : finish_name(u.finish);
    }
  }
  return news;
}

bool Generation::advance(bool stopping, std::chrono::milliseconds wait, bool until_over) {
  if (stopping) {
    cancel();
    pull();
    for (auto& c : choices_) {
      if (c.over) continue;
      c.over = true;
      c.out.finish();
      c.finish = "abort";
    }
    return true;
  }
  const auto until = std::chrono::steady_clock::now() + wait;
  for (;;) {
    const uint64_t seen = waker_->count();
    const bool news = pull();
    if (all_over()) return true;
    if (news && !until_over) return false;
    const auto now = std::chrono::steady_clock::now();
    if (now >= until) return false;
    waker_->wait(seen, std::chrono::duration_cast<std::chrono::milliseconds>(until - now) + std::chrono::milliseconds(1));
  }
}

json Generation::usage() const {
  size_t prompt = 0, completion = 0;
  for (const auto& p : prompts_) prompt += p.ids.size();
  for (const auto& c : choices_) completion += c.have;
  json u = json::object();
  u["prompt_tokens"] = prompt;
  u["completion_tokens"] = completion;
  u["total_tokens"] = prompt + completion;
  return u;
}

void Generation::add_prompt_logprobs(const GenerationChoice& c, CompletionLogprobs& lp) const {
  const GenerationPrompt& p = prompts_[c.prompt];
  const auto plp = p.handle->prompt_logprobs();  // entries of tokens 1..P-1
  for (size_t i = 0; i < p.ids.size(); ++i) lp.add(strings_, p.ids[i], i == 0 || i > plp.size() ? nullptr : &plp[i - 1]);
}

std::string Generation::chunk(GenerationChoice& c, const std::string& text, const ChatDelta* delta, const char* finish,
                              const json* tool_calls, json logprobs) const {
  json j = json::object();
  j["id"] = id_;
  j["object"] = is_chat() ? "chat.completion.chunk" : "text_completion";
  j["created"] = created_;
  j["model"] = model_name_;
  json choice = json::object();
  choice["index"] = c.index;
  if (is_chat()) {
    json d = json::object();
    if (!c.sent_role) {
      d["role"] = "assistant";
      c.sent_role = true;
    }
    if (delta && !delta->reasoning.empty()) d["reasoning_content"] = delta->reasoning;
    if (delta && !delta->content.empty()) d["content"] = delta->content;
    if (tool_calls && !tool_calls->empty()) {
      json calls = *tool_calls;
      for (size_t i = 0; i < calls.size(); ++i) calls[i]["index"] = i;
      d["tool_calls"] = std::move(calls);
    }
    choice["delta"] = std::move(d);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish ? json(finish) : json(nullptr);
  j["choices"] = json::array({std::move(choice)});
  return "data: " + dump(j) + "\n\n";
}

std::string Generation::choice_events(GenerationChoice& c) {
  std::string out;
  if (c.finish_sent) return out;
  const bool lp = req_.logprobs >= 0;
  if (req_.echo && !c.echo_sent) {
    // The prompt first, once its logprobs are known (a request that ended before its
    // prompt was fed has none to show).
    if (lp && !prompts_[c.prompt].handle->prompt_done()) {
      if (!c.over) return out;
    } else {
      CompletionLogprobs l(c.text_offset);
      if (lp) add_prompt_logprobs(c, l);
      c.text_offset = l.offset();
      out += chunk(c, prompts_[c.prompt].text, nullptr, nullptr, nullptr, lp ? l.to_json() : json(nullptr));
    }
    c.echo_sent = true;
  }
  // Logprobs go with the text they produced: those of tokens whose text is all out.
  const size_t stable = c.out.stable();
  size_t upto = c.lp_sent;
  while (upto < c.lps.size() && (c.over || c.ends[upto] <= stable)) ++upto;
  const std::span<const runtime::TokenLogprob> fresh(c.lps.data() + c.lp_sent, upto - c.lp_sent);
  if (is_chat()) {
    const ChatDelta d = c.chat.update(std::string_view(c.out.text().data(), stable), c.over);
    if (!d.empty() || !c.sent_role || !fresh.empty()) {
      out += chunk(c, {}, &d, nullptr, nullptr, lp && !fresh.empty() ? chat_logprobs(strings_, fresh) : json(nullptr));
    }
  } else if (stable > c.sent || !fresh.empty()) {
    json lj = nullptr;
    if (lp && !fresh.empty()) {
      CompletionLogprobs l(c.text_offset);
      for (const auto& e : fresh) l.add(strings_, e.id, &e);
      c.text_offset = l.offset();
      lj = l.to_json();
    }
    out += chunk(c, c.out.text().substr(c.sent, stable - c.sent), nullptr, nullptr, nullptr, std::move(lj));
    c.sent = stable;
  }
  c.lp_sent = upto;
  if (c.over) {
    if (c.failed) {
      out += "data: " + ApiError(500, prompts_[c.prompt].handle->error()).body() + "\n\n";
    } else {
      const json* calls = is_chat() && !c.chat.tool_calls().empty() ? &c.chat.tool_calls() : nullptr;
      if (calls) c.finish = "tool_calls";
      out += chunk(c, {}, nullptr, c.finish.c_str(), calls, nullptr);
    }
    c.finish_sent = true;
  }
  return out;
}

std::string Generation::events() {
  std::string out;
  for (auto& c : choices_) out += choice_events(c);
  if (all_over()) {
    if (req_.include_usage) {
      json u = json::object();
      u["id"] = id_;
      u["object"] = is_chat() ? "chat.completion.chunk" : "text_completion";
      u["created"] = created_;
      u["model"] = model_name_;
      u["choices"] = json::array();
      u["usage"] = usage();
      out += "data: " + dump(u) + "\n\n";
    }
    out += "data: [DONE]\n\n";
    done_ = true;
  }
  return out;
}

std::string Generation::body() {
  done_ = true;
  if (const std::string e = error(); !e.empty()) return ApiError(500, e).body();
  json r = json::object();
  r["id"] = id_;
  r["object"] = is_chat() ? "chat.completion" : "text_completion";
  r["created"] = created_;
  r["model"] = model_name_;
  json choices = json::array();
  const bool lp = req_.logprobs >= 0;
  for (auto& c : choices_) {
    json choice = json::object();
    choice["index"] = c.index;
    if (is_chat()) {
      c.chat.update(c.out.text(), true);
      json m = json::object();
      m["role"] = "assistant";
      m["content"] = c.chat.content();
      if (req_.thinking == tokenizer::dsv4::ThinkingMode::Thinking) m["reasoning_content"] = c.chat.reasoning();
      if (!c.chat.tool_calls().empty()) {
        m["tool_calls"] = c.chat.tool_calls();
        c.finish = "tool_calls";
      }
      choice["message"] = std::move(m);
      choice["logprobs"] = lp ? chat_logprobs(strings_, c.lps) : json(nullptr);
    } else {
      choice["text"] = (req_.echo ? prompts_[c.prompt].text : std::string()) + c.out.text();
      json lj = nullptr;
      if (lp) {
        CompletionLogprobs l;
        if (req_.echo) add_prompt_logprobs(c, l);
        for (const auto& e : c.lps) l.add(strings_, e.id, &e);
        lj = l.to_json();
      }
      choice["logprobs"] = std::move(lj);
    }
    choice["finish_reason"] = c.finish;
    choices.push_back(std::move(choice));
  }
  r["choices"] = std::move(choices);
  r["usage"] = usage();
  return dump(r);
}

}  // namespace kiln::server
