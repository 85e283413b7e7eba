// One HTTP generation request between the engine and its connection: one engine request
// per prompt (each with n choices), every choice's text built as its tokens arrive (stop
// strings, chat splitting, logprobs), and the response written from them: SSE events of
// what is new (streaming) or the whole body. Used by one connection thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "kiln/runtime/engine.h"
#include "kiln/server/api.h"
#include "kiln/server/logprobs_json.h"
#include "kiln/server/output_text.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::server {

struct GenerationPrompt {
  std::shared_ptr<runtime::RequestHandle> handle;
  std::vector<int32_t> ids;
  std::string text;  // echo: the prompt as returned (its text, or its ids decoded)
};

struct GenerationChoice {
  GenerationChoice(const tokenizer::Tokenizer& tok, const ParsedRequest& req, size_t prompt, int choice, int index)
      : prompt(prompt), choice(choice), index(index), out(tok, req.stop), chat(req.thinking) {}
  size_t prompt;     // index into Generation::prompts
  int choice;        // within its prompt's engine request
  int index;         // OpenAI's: prompt * n + choice
  size_t have = 0;   // tokens taken from the handle
  size_t sent = 0;   // completions: text bytes streamed
  size_t lp_sent = 0;               // logprobs streamed
  std::vector<runtime::TokenLogprob> lps;  // of the tokens taken (when asked)
  std::vector<size_t> ends;         // per token taken: the text's length after it
  int64_t text_offset = 0;          // completions logprobs: the next token's text_offset
  OutputText out;
  ChatSplitter chat;
  bool over = false, failed = false, echo_sent = false, sent_role = false, finish_sent = false;
  std::string finish;  // OpenAI finish_reason once over
};

class Generation {
 public:
  Generation(ParsedRequest req, const tokenizer::Tokenizer& tok, std::string model_name);
  // After construction: the engine request of each prompt, in order; then ready().
  void add_prompt(GenerationPrompt p);
  void ready(std::string id, int64_t created);

  const ParsedRequest& request() const { return req_; }
  bool is_chat() const { return req_.endpoint == Endpoint::Chat; }
  const std::shared_ptr<runtime::Waker>& waker() const { return waker_; }
  // Cancels every engine request (the client went away).
  void cancel();
  bool done() const { return done_; }

  // One wait of the connection's worker: on server shutdown cancels and ends the request;
  // otherwise takes new tokens, returning at the first (streams) or only once every
  // choice is over (until_over), after `wait` at most. True when every choice is over.
  bool advance(bool stopping, std::chrono::milliseconds wait, bool until_over);

  // Streaming: the SSE events of what is new ("" when nothing is), and, once every choice
  // is over, the usage chunk (when asked) and [DONE]; done() afterwards.
  std::string events();
  // Non-streaming: the response body (an error body when the engine failed); done() afterwards.
  std::string body();
  // The engine failed the request (its error), else "".
  std::string error() const;

 private:
  bool pull();  // takes what the handles hold; true when anything changed
  bool all_over() const;
  std::string chunk(GenerationChoice& c, const std::string& text, const ChatDelta* delta, const char* finish,
                    const nlohmann::ordered_json* tool_calls, nlohmann::ordered_json logprobs) const;
  std::string choice_events(GenerationChoice& c);
  // Completions logprobs of the prompt (echo), continuing c's text_offset.
  void add_prompt_logprobs(const GenerationChoice& c, CompletionLogprobs& lp) const;
  nlohmann::ordered_json usage() const;

  ParsedRequest req_;
  const tokenizer::Tokenizer& tok_;
  std::string model_name_;
  TokenStrings strings_;
  std::shared_ptr<runtime::Waker> waker_ = std::make_shared<runtime::Waker>();
  std::vector<GenerationPrompt> prompts_;
  std::deque<GenerationChoice> choices_;
  std::string id_;
  int64_t created_ = 0;
  bool done_ = false;
};

}  // namespace kiln::server
