// kiln's OpenAI-compatible HTTP server (cpp-httplib): /v1/completions and
// /v1/chat/completions (streaming SSE or not), /v1/models, /health, /metrics.
// Requests go to a runtime::Engine (continuous batching); each HTTP worker thread waits
// on its request's handle and writes tokens as they come. A client that disconnects is
// noticed at the next write (streams write every token, and a keep-alive comment or
// whitespace at least every kHeartbeat) and its request is cancelled, freeing its state.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/runtime/engine.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                          // 0 = any free port (see Server::port())
  std::string api_key;                      // non-empty: /v1/* need "Authorization: Bearer <key>"
  std::string model_name = "kiln";         // the id /v1/models reports (requests may name any model)
  size_t max_body_bytes = 4u << 20;         // larger bodies get 413
  int http_threads = 512;                   // concurrent connections served
  int64_t max_context = 4096;               // prompt + generated tokens per request
  int64_t vocab_size = 0;                   // > 0: /v1/models reports it (token-id prompts are < it)
  int default_chat_max_tokens = 1024;       // chat requests without max_tokens (bounded by the context)
  bool drafting = true;                     // false (kiln serve --spec off): requests may not ask for drafts ('mtp')
  std::chrono::milliseconds heartbeat{1000};  // longest silence on a waiting connection
  // How long an open connection may wait for its (next) request before the server closes
  // it. Also how long stop() can wait for a connection that stays idle: cpp-httplib ends
  // an idle connection's thread only at this timeout.
  std::chrono::seconds idle_timeout{5};
  // Connections the kernel completes before the server accepts them (capped by
  // net.core.somaxconn). cpp-httplib listens with 5; under a burst of connects a full
  // queue drops handshakes, and a request retransmitted after the server's wait for it
  // ran out finds the connection closed.
  int listen_backlog = 4096;
};

struct ModelTokens {
  int32_t bos = -1, eos = -1;  // -1 = none
};

class Server {
 public:
  Server(runtime::Engine& engine, const tokenizer::Tokenizer& tokenizer, ModelTokens tokens, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket (kiln::Error IO when it cannot) and returns the port.
  int bind();
  // Serves until stop(); bind() first.
  void run();
  void stop();
  int port() const { return port_; }
  // Requests whose HTTP handler is still running (tests wait for 0).
  int64_t active_requests() const { return active_.load(); }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int port_ = -1;
  std::atomic<int64_t> active_{0};
};

}  // namespace kiln::server
