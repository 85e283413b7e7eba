#include "kiln/server/http_server.h"

#include <httplib.h>

#include <sys/socket.h>

#include <atomic>
#include <ctime>
#include <random>
#include <mutex>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/server/api.h"
#include "kiln/server/generation.h"
#include "kiln/server/metrics_text.h"
#include "kiln/server/output_text.h"

namespace kiln::server {

using json = nlohmann::ordered_json;

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

}  // namespace

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
  // Structured output: the vocabulary's bytes as a trie, built at the first request that
  // asks for a response_format.
  std::once_flag trie_once;
  std::shared_ptr<const runtime::TokenTrie> trie;
  std::shared_ptr<const runtime::TokenTrie> token_trie() {
    std::call_once(trie_once, [&] {
      std::vector<std::string> bytes(tok.vocab_size());
      for (size_t id = 0; id < bytes.size(); ++id) {
        const auto b = tok.token_bytes(static_cast<int32_t>(id));
        if (b && !tok.is_special(static_cast<int32_t>(id))) bytes[id] = std::string(*b);
      }
      trie = std::make_shared<runtime::TokenTrie>(bytes);
    });
    return trie;
  }

  Impl(runtime::Engine& e, const tokenizer::Tokenizer& t, ModelTokens mt, ServerOptions o)
      : engine(e), tok(t), tokens(mt), opt(std::move(o)) {
    std::random_device rd;
    id_prefix = fmt::format("{:08x}", rd());
  }

  std::shared_ptr<Generation> start(ParsedRequest req);
  void generate(const httplib::Request& q, httplib::Response& res, Endpoint endpoint);
  void tokenize(const httplib::Request& q, httplib::Response& res);
  void detokenize(const httplib::Request& q, httplib::Response& res);
  void routes();
};

std::shared_ptr<Generation> Server::Impl::start(ParsedRequest req) {
  const bool chat = req.endpoint == Endpoint::Chat;
  const char* prompt_field = chat ? "messages" : "prompt";
  if (req.n > engine.options().max_batch) {
    throw ApiError(400, fmt::format("'n' is {}; this server decodes at most {} sequences at once (--max-batch)", req.n,
                                    engine.options().max_batch), "n");
  }
  // Every prompt is checked before any is submitted.
  std::vector<GenerationPrompt> prompts;
  std::vector<int> max_tokens;
  const size_t count = chat ? 1 : req.prompts.size();
  for (size_t i = 0; i < count; ++i) {
    const std::string field = count > 1 ? fmt::format("{}[{}]", prompt_field, i) : prompt_field;
    GenerationPrompt p;
    try {
      if (chat) {
        p.ids = tok.encode(chat_prompt_text(req));
      } else if (req.prompts[i].text) {
        if (tokens.bos >= 0) p.ids.push_back(tokens.bos);
        const auto ids = tok.encode(*req.prompts[i].text);
        p.ids.insert(p.ids.end(), ids.begin(), ids.end());
        p.text = *req.prompts[i].text;
      } else {
        p.ids = req.prompts[i].ids;
        for (size_t j = 0; j < p.ids.size(); ++j) {
          if (p.ids[j] >= engine.vocab_size()) {
            throw ApiError(400, fmt::format("'{}[{}]' is {}, outside the vocabulary [0, {})", field, j, p.ids[j],
                                            engine.vocab_size()), field);
          }
        }
        if (req.echo) p.text = tok.decode(p.ids, /*skip_special_tokens=*/true);
      }
    } catch (const Error& e) {
      throw ApiError(400, e.what(), field);
    }
    const int64_t P = static_cast<int64_t>(p.ids.size());
    if (P == 0) throw ApiError(400, fmt::format("'{}' encodes to no tokens", field), field);
    if (P >= opt.max_context) {
      throw ApiError(400, fmt::format("the prompt is {} tokens; the context is {} tokens", P, opt.max_context), field);
    }
    const int64_t room = opt.max_context - P;
    const int mt = req.max_tokens ? *req.max_tokens
                                  : static_cast<int>(std::min<int64_t>(chat ? opt.default_chat_max_tokens : 16, room));
    if (mt > room) {
      throw ApiError(400, fmt::format("max_tokens {} + the prompt's {} tokens exceed the context of {} tokens", mt, P,
                                      opt.max_context), req.max_tokens ? "max_tokens" : field);
    }
    max_tokens.push_back(mt);
    prompts.push_back(std::move(p));
  }
  if (req.mtp && *req.mtp > 0) {
    const bool dspark = engine.drafter() == DrafterKind::DSpark;
    if (!opt.drafting) throw ApiError(400, "'mtp': this server drafts nothing (kiln serve --spec off)", "mtp");
    if (!engine.has_mtp()) {
      throw ApiError(400, dspark ? "'mtp': this server runs no DSpark drafter" : "'mtp': the model has no MTP block", "mtp");
    }
    if (*req.mtp > engine.max_drafts()) {
      throw ApiError(400, fmt::format("'mtp' is {}; expected 0..{} drafts per round ({})", *req.mtp, engine.max_drafts(),
                                      dspark ? "the DSpark block size" : "MTP"), "mtp");
    }
  }
  uint64_t seed = 0;
  if (req.seed) {
    seed = *req.seed;
  } else {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  auto gen = std::make_shared<Generation>(req, tok, opt.model_name);
  for (size_t i = 0; i < prompts.size(); ++i) {
    runtime::GenerationRequest g;
    g.prompt = prompts[i].ids;
    g.max_tokens = max_tokens[i];
    g.sampling.temperature = req.temperature;
    g.sampling.top_p = req.top_p;
    g.sampling.top_k = req.top_k;
    // Prompt i's choice c draws with seed + i * n + c: every choice of the request its own.
    g.sampling.seed = seed + static_cast<uint64_t>(i) * static_cast<uint64_t>(req.n);
    if (!req.ignore_eos && tokens.eos >= 0) g.stop_tokens.push_back(tokens.eos);
    if (req.response_schema) {
      // The document ends with the end token (ignore_eos or not: nothing may follow it).
      if (tokens.eos < 0) throw ApiError(400, "'response_format': the model has no end token to close the document", "response_format");
      auto c = std::make_shared<runtime::TokenConstraint>();
      c->schema = req.response_schema;
      c->trie = token_trie();
      c->end_tokens = {tokens.eos};
      g.constraint = std::move(c);
      if (req.ignore_eos) g.stop_tokens.push_back(tokens.eos);
    }
    if (req.mtp) g.mtp = *req.mtp;
    g.n = req.n;
    g.logprobs = req.logprobs;
    g.prompt_logprobs = req.echo && req.logprobs >= 0;
    g.waker = gen->waker();
    try {
      prompts[i].handle = engine.submit(std::move(g));
    } catch (const Error& e) {
      gen->cancel();
      throw ApiError(400, e.what(), prompts.size() > 1 ? fmt::format("{}[{}]", prompt_field, i) : prompt_field);
    }
    if (!prompts[i].handle) {
      gen->cancel();
      throw ApiError(429, "the request queue is full; retry later", {}, {}, "queue_full");
    }
    gen->add_prompt(std::move(prompts[i]));
  }
  gen->ready(fmt::format("{}-{}{:x}", chat ? "chatcmpl" : "cmpl", id_prefix, next_id.fetch_add(1)),
             static_cast<int64_t>(std::time(nullptr)));
  return gen;
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
    g->cancel();  // no effect once finished; frees the state of a dropped client
    --*act;
  };
  const auto wait = opt.heartbeat;
  if (g->request().stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, g, wait](size_t, httplib::DataSink& sink) {
          if (g->done()) {
            sink.done();
            return true;
          }
          g->advance(stopping.load(), wait, /*until_over=*/false);
          const std::string out = g->events();
          if (out.empty()) {
            static constexpr char kPing[] = ": keep-alive\n\n";
            return sink.write(kPing, sizeof kPing - 1);
          }
          return sink.write(out.data(), out.size());
        },
        release);
    return;
  }
  res.set_chunked_content_provider(
      "application/json",
      [this, g, wait](size_t, httplib::DataSink& sink) {
        if (g->done()) {
          sink.done();
          return true;
        }
        if (!g->advance(stopping.load(), wait, /*until_over=*/true)) {
          // Whitespace before a JSON document is valid; it finds a client that left.
          return sink.write(" ", 1);
        }
        const std::string body = g->body();
        return sink.write(body.data(), body.size());
      },
      release);
}

// vLLM's /tokenize: the ids completions (a prompt) or chat completions (messages) feed.
void Server::Impl::tokenize(const httplib::Request& q, httplib::Response& res) {
  try {
    const TokenizeRequest t = parse_tokenize(q.body);
    std::vector<int32_t> ids;
    try {
      if (t.chat) {
        ids = tok.encode(chat_prompt_text(*t.chat));
      } else {
        if (t.add_special_tokens && tokens.bos >= 0) ids.push_back(tokens.bos);
        const auto more = tok.encode(*t.prompt);
        ids.insert(ids.end(), more.begin(), more.end());
      }
    } catch (const Error& e) {
      throw ApiError(400, e.what(), t.chat ? "messages" : "prompt");
    }
    json r = json::object();
    r["count"] = ids.size();
    r["max_model_len"] = opt.max_context;
    r["tokens"] = ids;
    if (t.return_token_strs) {
      json strs = json::array();
      for (const int32_t id : ids) strs.push_back(tok.id_to_token(id).value_or(""));
      r["token_strs"] = std::move(strs);
    } else {
      r["token_strs"] = nullptr;
    }
    counters.count(200);
    res.set_content(dump(r), "application/json");
  } catch (const ApiError& e) {
    counters.count(e.status());
    send_error(res, e);
  }
}

void Server::Impl::detokenize(const httplib::Request& q, httplib::Response& res) {
  try {
    const auto ids = parse_detokenize(q.body, engine.vocab_size());
    json r = json::object();
    r["prompt"] = tok.decode(ids, /*skip_special_tokens=*/false);
    counters.count(200);
    res.set_content(dump(r), "application/json");
  } catch (const ApiError& e) {
    counters.count(e.status());
    send_error(res, e);
  }
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
  http.Post("/tokenize", [this](const httplib::Request& q, httplib::Response& res) { tokenize(q, res); });
  http.Post("/detokenize", [this](const httplib::Request& q, httplib::Response& res) { detokenize(q, res); });
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
