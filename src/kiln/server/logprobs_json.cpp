#include "kiln/server/logprobs_json.h"

#include <fmt/format.h>

namespace kiln::server {

using json = nlohmann::ordered_json;

std::string TokenStrings::token(int32_t id) const {
  if (as_ids_) return fmt::format("token_id:{}", id);
  const int32_t one[1] = {id};
  return tok_.decode(one, /*skip_special_tokens=*/false);
}

int64_t TokenStrings::text_chars(int32_t id) const {
  const int32_t one[1] = {id};
  int64_t n = 0;
  for (const char c : tok_.decode(one, /*skip_special_tokens=*/true)) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

json TokenStrings::bytes(int32_t id) const {
  json b = json::array();
  if (const auto t = tok_.token_bytes(id)) {
    for (const char c : *t) b.push_back(static_cast<unsigned char>(c));
  }
  return b;
}

void CompletionLogprobs::add(const TokenStrings& s, int32_t id, const runtime::TokenLogprob* lp) {
  tokens_.push_back(s.token(id));
  offsets_.push_back(offset_);
  offset_ += s.text_chars(id);
  if (!lp) {
    logprobs_.push_back(nullptr);
    top_.push_back(nullptr);
    return;
  }
  logprobs_.push_back(lp->logprob);
  json top = json::object();
  for (const runtime::TopLogprob& t : lp->top) top.emplace(s.token(t.id), t.logprob);
  top.emplace(s.token(id), lp->logprob);  // no effect when the chosen token is among them
  top_.push_back(std::move(top));
}

json CompletionLogprobs::to_json() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["tokens"] = tokens_;
  j["token_logprobs"] = logprobs_;
  j["top_logprobs"] = top_;
  j["text_offset"] = offsets_;
  return j;
}

json chat_logprobs(const TokenStrings& s, std::span<const runtime::TokenLogprob> lps) {
  json content = json::array();
  for (const runtime::TokenLogprob& lp : lps) {
    json e = json::object();
    e["token"] = s.token(lp.id);
    e["logprob"] = lp.logprob;
    e["bytes"] = s.bytes(lp.id);
    json top = json::array();
    for (const runtime::TopLogprob& t : lp.top) {
      json x = json::object();
      x["token"] = s.token(t.id);
      x["logprob"] = t.logprob;
      x["bytes"] = s.bytes(t.id);
      top.push_back(std::move(x));
    }
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  json j = json::object();
  j["content"] = std::move(content);
  return j;
}

}  // namespace kiln::server
