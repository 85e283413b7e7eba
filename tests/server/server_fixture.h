// The OpenAI-compatible server on loopback with the bundled trained model, for the server
// tests (tests/server) and the GPU serving tests (tests/gpu): an engine on a backend (the
// CPU backend unless one is given), the server on a free port, a client; and the text of
// an SSE body.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/server/http_server.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::test {

namespace server_fixture_detail {
namespace fs = std::filesystem;
using json = nlohmann::json;
}  // namespace server_fixture_detail
using namespace server_fixture_detail;

struct Fixture {
  std::unique_ptr<kiln::runtime::LoadedModel> model;
  std::optional<kiln::tokenizer::Tokenizer> tok;
  std::unique_ptr<kiln::runtime::Backend> backend;
  std::unique_ptr<kiln::runtime::Engine> engine;
  std::unique_ptr<kiln::server::Server> server;
  std::thread thread;
  int port = 0;

  // backend: the engine's backend (nullptr: the CPU backend over `model`).
  explicit Fixture(kiln::runtime::EngineOptions eo = {}, kiln::server::ServerOptions so = {}, bool run = true,
                   std::unique_ptr<kiln::runtime::Backend> backend_in = nullptr) {
    const fs::path dir = KILN_BUNDLED_MODEL;
    model = kiln::runtime::load_model(dir, 1, nullptr);
    tok = kiln::tokenizer::Tokenizer::from_file(dir / "tokenizer.json");
    backend = backend_in ? std::move(backend_in) : std::make_unique<kiln::runtime::CpuBackend>(*model->forward);
    engine = std::make_unique<kiln::runtime::Engine>(*backend, eo);
    so.port = 0;
    so.http_threads = 256;
    so.max_body_bytes = 1 << 16;
    so.max_context = model->config.max_position_embeddings;
    kiln::server::ModelTokens mt{static_cast<int32_t>(model->config.bos_token_id), static_cast<int32_t>(model->config.eos_token_id)};
    server = std::make_unique<kiln::server::Server>(*engine, *tok, mt, so);
    port = server->bind();
    if (run) start();
  }
  void start() {
    thread = std::thread([this] { server->run(); });
  }
  ~Fixture() {
    server->stop();
    if (thread.joinable()) thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return c;
  }
  // The oracle: the runtime's plain decoding of the same prompt, decoded as the server does.
  std::string solo_text(const std::string& prompt, int max_tokens) const {
    std::vector<int32_t> ids{static_cast<int32_t>(model->config.bos_token_id)};
    const auto p = tok->encode(prompt);
    ids.insert(ids.end(), p.begin(), p.end());
    const auto r = kiln::runtime::generate_plain(*model->forward, ids, max_tokens, {}, static_cast<int32_t>(model->config.eos_token_id));
    return tok->decode(r.tokens, /*skip_special_tokens=*/true);
  }
};

// Concatenates the streamed text of an SSE body; checks the framing.
inline std::string sse_text(const std::string& body, bool chat, std::string* finish = nullptr) {
  std::string text;
  size_t pos = 0;
  bool done = false;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event";
    if (end == std::string::npos) break;
    const std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind(":", 0) == 0) continue;  // keep-alive comment
    EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    const std::string data = ev.substr(6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    const json j = json::parse(data);
    if (j["choices"].empty()) continue;
    const json& c = j["choices"][0];
    if (chat) {
      if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
    } else {
      text += c["text"].get<std::string>();
    }
    if (!c["finish_reason"].is_null() && finish) *finish = c["finish_reason"].get<std::string>();
  }
  EXPECT_TRUE(done) << "no [DONE]";
  return text;
}

}  // namespace kiln::test
