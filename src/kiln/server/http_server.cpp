#include "kiln/server/http_server.h"

#include <httplib.h>

#include <sys/socket.h>

#include <atomic>
#include <ctime>
#include <random>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/server/api.h"
#include "kiln/server/metrics_text.h"
#include "kiln/server/output_text.h"

namespace kiln::server {

using json = nlohmann::ordered_json;
using runtime::FinishReason;

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(e.body(), "application/json");
}

const char* reason_phrase(int status) {
  switch (status) {
    case 400: return "bad request";
    case 401: return "missing or wrong API key";
    case 404: return "no such endpoint";
    case 405: return "method not allowed";
    case 413: return "the request body is too large";
    case 414: return "the request URI is too long";
    case 429: return "too many requests";
    case 503: return "the server is not ready";
    default: return status >= 500 ? "internal server error" : "request failed";
  }
}

json usage_json(size_t prompt, size_t completion) {
  json u = json::object();
  u["prompt_tokens"] = prompt;
  u["completion_tokens"] = completion;
  u["total_tokens"] = prompt + completion;
  return u;
}

}  // namespace

// One request between the engine and its HTTP connection.
struct Generation {
  ParsedRequest req;
  std::shared_ptr<runtime::RequestHandle> handle;
  std::string id;
  int64_t created = 0;
  size_t have = 0;  // tokens taken from the handle
  size_t sent = 0;  // completions: text bytes streamed
  OutputText out;
  ChatSplitter chat;
  bool sent_role = false, done = false;
  std::string finish;  // OpenAI finish_reason once finished

  Generation(ParsedRequest r, std::shared_ptr<runtime::RequestHandle> h, const tokenizer::Tokenizer& tok)
      : req(std::move(r)), handle(std::move(h)), out(tok, req.stop), chat(req.thinking) {}
  bool is_chat() const { return req.endpoint == Endpoint::Chat; }

  // One wait of a connection's worker: on server shutdown, cancels and ends the request;
  // otherwise takes new tokens, returning at the first ones (streams) or only when the
  // request is over (until_over), in both cases after `wait` at most. True when over.
  bool advance(bool stopping, std::chrono::milliseconds wait, bool until_over) {
    if (stopping) {
      handle->cancel();
      pull(std::chrono::milliseconds(0));
      return true;
    }
    if (!until_over) return pull(wait);
    const auto until = std::chrono::steady_clock::now() + wait;
    bool over = false;
    while (!over && std::chrono::steady_clock::now() < until) {
      over = pull(std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()) +
                  std::chrono::milliseconds(1));
    }
    return over;
  }

  // Takes new tokens (waiting up to `wait`); returns true when the request is over.
  bool pull(std::chrono::milliseconds wait) {
    auto ids = handle->wait_tokens(have, wait);
    bool over = handle->finished();
    if (over) ids = [&] {  // tokens pushed together with the finish
      auto all = handle->tokens();
      return std::vector<int32_t>(all.begin() + static_cast<std::ptrdiff_t>(have), all.end());
    }();
    have += ids.size();
    if (!ids.empty() && out.add(ids)) {
      handle->cancel();  // a stop string matched
      over = true;
    }
    if (over) {
      out.finish();
      const FinishReason r = out.stopped() ? FinishReason::Stop : handle->finish_reason();
      finish = r == FinishReason::Length ? "length" : r == FinishReason::Cancelled ? "abort" : "stop";
    }
    return over;
  }
};

struct Server::Impl {
  runtime::Engine& engine;
  const tokenizer::Tokenizer& tok;
  ModelTokens tokens;
  ServerOptions opt;
  httplib::Server http;
  std::atomic<uint64_t> next_id{0};
  std::string id_prefix;
  std::atomic<bool> stopping{false};
  std::atomic<bool> in_run{false};  // inside Server::run()
  HttpCounters counters;
  std::atomic<int64_t>* active = nullptr;
  int listen_fd = -1;  // the socket cpp-httplib binds (set by the socket-options hook)

  Impl(runtime::Engine& e, const tokenizer::Tokenizer& t, ModelTokens mt, ServerOptions o)
      : engine(e), tok(t), tokens(mt), opt(std::move(o)) {
    std::random_device rd;
    id_prefix = fmt::format("{:08x}", rd());
  }

  std::shared_ptr<Generation> start(ParsedRequest req);
  void generate(const httplib::Request& q, httplib::Response& res, Endpoint endpoint);
  std::string chunk(Generation& g, const std::string& text, const ChatDelta* delta, const char* finish,
                    const json* tool_calls) const;
  std::string full_response(Generation& g) const;
  void routes();
};

std::shared_ptr<Generation> Server::Impl::start(ParsedRequest req) {
  const bool chat = req.endpoint == Endpoint::Chat;
  std::vector<int32_t> prompt;
  const char* prompt_field = chat ? "messages" : "prompt";
  try {
    if (chat) {
      tokenizer::dsv4::ChatOptions co;
      co.thinking_mode = req.thinking;
      co.reasoning_effort = req.reasoning_effort;
      prompt = tok.encode(tokenizer::dsv4::encode_messages(req.messages, co));
    } else if (req.prompt_text) {
      if (tokens.bos >= 0) prompt.push_back(tokens.bos);
      const auto ids = tok.encode(*req.prompt_text);
      prompt.insert(prompt.end(), ids.begin(), ids.end());
    } else {
      prompt = req.prompt_ids;
    }
  } catch (const Error& e) {
    throw ApiError(400, e.what(), prompt_field);
  }
  const int64_t P = static_cast<int64_t>(prompt.size());
  if (P == 0) throw ApiError(400, fmt::format("'{}' encodes to no tokens", prompt_field), prompt_field);
  if (P >= opt.max_context) {
    throw ApiError(400, fmt::format("the prompt is {} tokens; the context is {} tokens", P, opt.max_context), prompt_field);
  }
  const int64_t room = opt.max_context - P;
  int max_tokens = req.max_tokens ? *req.max_tokens
                                  : static_cast<int>(std::min<int64_t>(chat ? opt.default_chat_max_tokens : 16, room));
  if (max_tokens > room) {
    throw ApiError(400, fmt::format("max_tokens {} + the prompt's {} tokens exceed the context of {} tokens", max_tokens, P,
                                    opt.max_context), req.max_tokens ? "max_tokens" : prompt_field);
  }
  runtime::GenerationRequest g;
  g.prompt = std::move(prompt);
  g.max_tokens = max_tokens;
  g.sampling.temperature = req.temperature;
  g.sampling.top_p = req.top_p;
  g.sampling.top_k = req.top_k;
  if (req.seed) {
    g.sampling.seed = *req.seed;
  } else {
    std::random_device rd;
    g.sampling.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  if (!req.ignore_eos && tokens.eos >= 0) g.stop_tokens.push_back(tokens.eos);
  if (req.mtp) {
    if (*req.mtp > 0 && !engine.has_mtp()) throw ApiError(400, "'mtp': the model has no MTP block", "mtp");
    g.mtp = *req.mtp;
  }
  std::shared_ptr<runtime::RequestHandle> handle;
  try {
    handle = engine.submit(std::move(g));
  } catch (const Error& e) {
    throw ApiError(400, e.what(), prompt_field);
  }
  if (!handle) throw ApiError(429, "the request queue is full; retry later", {}, {}, "queue_full");
  auto gen = std::make_shared<Generation>(std::move(req), std::move(handle), tok);
  gen->id = fmt::format("{}-{}{:x}", chat ? "chatcmpl" : "cmpl", id_prefix, next_id.fetch_add(1));
  gen->created = static_cast<int64_t>(std::time(nullptr));
  return gen;
}

std::string Server::Impl::chunk(Generation& g, const std::string& text, const ChatDelta* delta, const char* finish,
                                const json* tool_calls) const {
  json c = json::object();
  c["id"] = g.id;
  c["object"] = g.is_chat() ? "chat.completion.chunk" : "text_completion";
  c["created"] = g.created;
  c["model"] = opt.model_name;
  json choice = json::object();
  choice["index"] = 0;
  if (g.is_chat()) {
    json d = json::object();
    if (!g.sent_role) {
      d["role"] = "assistant";
      g.sent_role = true;
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
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish ? json(finish) : json(nullptr);
  c["choices"] = json::array({std::move(choice)});
  return "data: " + dump(c) + "\n\n";
}

std::string Server::Impl::full_response(Generation& g) const {
  json r = json::object();
  r["id"] = g.id;
  r["object"] = g.is_chat() ? "chat.completion" : "text_completion";
  r["created"] = g.created;
  r["model"] = opt.model_name;
  json choice = json::object();
  choice["index"] = 0;
  if (g.is_chat()) {
    json m = json::object();
    m["role"] = "assistant";
    m["content"] = g.chat.content();
    if (g.req.thinking == tokenizer::dsv4::ThinkingMode::Thinking) m["reasoning_content"] = g.chat.reasoning();
    if (!g.chat.tool_calls().empty()) {
      m["tool_calls"] = g.chat.tool_calls();
      g.finish = "tool_calls";
    }
    choice["message"] = std::move(m);
  } else {
    choice["text"] = g.out.text();
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = g.finish;
  r["choices"] = json::array({std::move(choice)});
  r["usage"] = usage_json(g.handle->prompt_tokens(), g.have);
  return dump(r);
}

void Server::Impl::generate(const httplib::Request& q, httplib::Response& res, Endpoint endpoint) {
  std::shared_ptr<Generation> g;
  try {
    g = start(parse_request(q.body, endpoint));
  } catch (const ApiError& e) {
    counters.count(e.status());
    send_error(res, e);
    return;
  }
  counters.count(200);
  ++*active;
  auto* act = active;
  auto release = [g, act](bool) {
    g->handle->cancel();  // no effect once finished; frees the state of a dropped client
    --*act;
  };
  const auto wait = opt.heartbeat;
  if (g->req.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, g, wait](size_t, httplib::DataSink& sink) {
          if (g->done) {
            sink.done();
            return true;
          }
          const size_t before = g->have;
          const bool over = g->advance(stopping.load(), wait, /*until_over=*/false);
          if (!over && g->have == before) {
            static constexpr char kPing[] = ": keep-alive\n\n";
            return sink.write(kPing, sizeof kPing - 1);
          }
          std::string out;
          const std::string_view stable(g->out.text().data(), g->out.stable());
          if (g->is_chat()) {
            const ChatDelta d = g->chat.update(stable, over);
            if (!d.empty() || !g->sent_role) out += chunk(*g, {}, &d, nullptr, nullptr);
          } else if (stable.size() > g->sent) {
            out += chunk(*g, std::string(stable.substr(g->sent)), nullptr, nullptr, nullptr);
            g->sent = stable.size();
          }
          if (over) {
            const json* calls = g->is_chat() && !g->chat.tool_calls().empty() ? &g->chat.tool_calls() : nullptr;
            if (calls) g->finish = "tool_calls";
            if (g->handle->finish_reason() == FinishReason::Error) {
              out += "data: " + ApiError(500, g->handle->error()).body() + "\n\n";
            } else {
              out += chunk(*g, {}, nullptr, g->finish.c_str(), calls);
            }
            if (g->req.include_usage) {
              json u = json::object();
              u["id"] = g->id;
              u["object"] = g->is_chat() ? "chat.completion.chunk" : "text_completion";
              u["created"] = g->created;
              u["model"] = opt.model_name;
              u["choices"] = json::array();
              u["usage"] = usage_json(g->handle->prompt_tokens(), g->have);
              out += "data: " + dump(u) + "\n\n";
            }
            out += "data: [DONE]\n\n";
            g->done = true;
          }
          return out.empty() || sink.write(out.data(), out.size());
        },
        release);
    return;
  }
  res.set_chunked_content_provider(
      "application/json",
      [this, g, wait](size_t, httplib::DataSink& sink) {
        if (g->done) {
          sink.done();
          return true;
        }
        const bool over = g->advance(stopping.load(), wait, /*until_over=*/true);
        if (!over) {
          // Whitespace before a JSON document is valid; it finds a client that left.
          return sink.write(" ", 1);
        }
        if (g->is_chat()) g->chat.update(g->out.text(), true);
        std::string body = g->handle->finish_reason() == FinishReason::Error ? ApiError(500, g->handle->error()).body()
                                                                               : full_response(*g);
        g->done = true;
        return sink.write(body.data(), body.size());
      },
      release);
}

void Server::Impl::routes() {
  http.new_task_queue = [n = opt.http_threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http.set_payload_max_length(opt.max_body_bytes);
  http.set_keep_alive_timeout(static_cast<time_t>(opt.idle_timeout.count()));
  // SO_REUSEADDR (restart over TIME_WAIT) but not cpp-httplib's default SO_REUSEPORT,
  // which lets a second server bind the same port and take half its connections.
  http.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  http.set_read_timeout(static_cast<time_t>(opt.idle_timeout.count()), 0);
  http.set_pre_routing_handler([this](const httplib::Request& q, httplib::Response& res) {
    if (opt.api_key.empty() || q.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    if (q.get_header_value("Authorization") == "Bearer " + opt.api_key) return httplib::Server::HandlerResponse::Unhandled;
    counters.count(401);
    send_error(res, ApiError(401, "missing or wrong API key (expected the header 'Authorization: Bearer <key>')", {}, {},
                             "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    counters.count(res.status);
    send_error(res, ApiError(res.status, reason_phrase(res.status)));
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    counters.count(500);
    send_error(res, ApiError(500, what));
  });
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(render_metrics(engine.metrics(), counters, *active), "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json m = json::object();
    m["id"] = opt.model_name;
    m["object"] = "model";
    m["created"] = 0;
    m["owned_by"] = "kiln";
    m["max_model_len"] = opt.max_context;
    if (opt.vocab_size > 0) m["vocab_size"] = opt.vocab_size;
    json r = json::object();
    r["object"] = "list";
    r["data"] = json::array({std::move(m)});
    res.set_content(dump(r), "application/json");
  });
  http.Post("/v1/completions",
            [this](const httplib::Request& q, httplib::Response& res) { generate(q, res, Endpoint::Completions); });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& q, httplib::Response& res) { generate(q, res, Endpoint::Chat); });
}

Server::Server(runtime::Engine& engine, const tokenizer::Tokenizer& tokenizer, ModelTokens tokens, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, tokens, std::move(options))) {
  impl_->active = &active_;
  impl_->routes();
}

Server::~Server() { stop(); }

int Server::bind() {
  const auto& o = impl_->opt;
  if (o.port == 0) {
    port_ = impl_->http.bind_to_any_port(o.host);
    if (port_ < 0) fail_io("cannot listen on {} (any port)", o.host);
  } else {
    if (!impl_->http.bind_to_port(o.host, o.port)) fail_io("cannot listen on {}:{} (in use, or not an address here?)", o.host, o.port);
    port_ = o.port;
  }
  // Listening again on a listening socket resizes its queue.
  if (impl_->listen_fd < 0 || ::listen(impl_->listen_fd, o.listen_backlog) != 0) {
    fail_io("cannot set the listen backlog of {}:{} to {}", o.host, port_, o.listen_backlog);
  }
  return port_;
}

void Server::run() {
  // cpp-httplib's stop() does nothing until the accept loop runs, so a stop() that comes
  // between here and that loop would be lost: stop() waits for the loop while run() is in
  // it, and run() does not start it once stopping is set (seq_cst: one sees the other).
  impl_->in_run = true;
  if (!impl_->stopping) impl_->http.listen_after_bind();
  impl_->in_run = false;
}

void Server::stop() {
  impl_->stopping = true;
  while (impl_->in_run && !impl_->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->http.stop();
}

}  // namespace kiln::server
