// libFuzzer target: the server's request path before the model — JSON body validation for
// both endpoints and /tokenize, /detokenize (server/api.cpp) and, for chat bodies that
// validate, DeepSeek-V4's chat encoding of the messages. Every input must either succeed or raise ApiError /
// kiln::Error; a crash, a sanitizer report or any other exception is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kiln/core/error.h"
#include "kiln/server/api.h"
#include "kiln/tokenizer/chat_encoding.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (const auto endpoint : {kiln::server::Endpoint::Completions, kiln::server::Endpoint::Chat}) {
    try {
      const auto r = kiln::server::parse_request(body, endpoint);
      if (endpoint == kiln::server::Endpoint::Chat) {
        kiln::tokenizer::dsv4::ChatOptions o;
        o.thinking_mode = r.thinking;
        (void)kiln::tokenizer::dsv4::encode_messages(r.messages, o);
      }
    } catch (const kiln::server::ApiError&) {
    } catch (const kiln::Error&) {
    }
  }
  // /tokenize (with messages: the chat encoding) and /detokenize.
  try {
    const auto t = kiln::server::parse_tokenize(body);
    if (t.chat) (void)kiln::server::chat_prompt_text(*t.chat);
  } catch (const kiln::server::ApiError&) {
  } catch (const kiln::Error&) {
  }
  try {
    (void)kiln::server::parse_detokenize(body, 4096);
  } catch (const kiln::server::ApiError&) {
  }
  return 0;
}
