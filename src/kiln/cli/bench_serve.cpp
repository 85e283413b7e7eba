#include "kiln/cli/bench_serve.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/cli/serve.h"
#include "kiln/cli/int_list.h"
#include "kiln/core/error.h"

namespace kiln::cli {

namespace {

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string clip(std::string_view s, size_t n = 200) {
  return s.size() <= n ? std::string(s) : std::string(s.substr(0, n)) + "...";
}

// The message of an OpenAI-shaped error body ({"error": {"message": ...}}), else the body.
std::string api_message(std::string_view body) {
  const json j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    const json& e = j["error"];
    if (e.is_object() && e.contains("message") && e["message"].is_string()) return e["message"].get<std::string>();
    if (e.is_string()) return e.get<std::string>();
  }
  return clip(body);
}

std::string describe(httplib::Error e) {
  switch (e) {
    case httplib::Error::Connection: return "could not connect";
    case httplib::Error::ConnectionTimeout: return "timed out connecting";
    case httplib::Error::Read: return "reading the response failed or timed out";
    case httplib::Error::Write: return "sending the request failed";
    default: return "cpp-httplib error " + httplib::to_string(e);
  }
}

// Where requests go: the origin cpp-httplib connects to and a path prefix. A trailing
// "/v1" (an OpenAI base URL) is dropped: paths are appended as /v1/... .
struct Target {
  std::string url;     // origin + base, for messages
  std::string origin;  // scheme://host[:port]
  std::string base;    // "" or "/prefix"
  httplib::Headers headers;
  int timeout_s = 600;
};

Target parse_target(const std::string& url, const std::string& api_key, int timeout_s) {
  Target t;
  t.timeout_s = timeout_s;
  const size_t sep = url.find("://");
  const std::string scheme = sep == std::string::npos ? "" : url.substr(0, sep);
  if (scheme != "http" && scheme != "https") fail(ErrorKind::Usage, "--url {}: expected http://host:port", url);
  const std::string rest = url.substr(sep + 3);
  const size_t slash = rest.find('/');
  const std::string host = rest.substr(0, slash);
  if (host.empty()) fail(ErrorKind::Usage, "--url {}: no host", url);
  t.origin = scheme + "://" + host;
  t.base = slash == std::string::npos ? "" : rest.substr(slash);
  while (!t.base.empty() && t.base.back() == '/') t.base.pop_back();
  if (t.base.size() >= 3 && t.base.compare(t.base.size() - 3, 3, "/v1") == 0) t.base.resize(t.base.size() - 3);
  t.url = t.origin + t.base;
  if (!api_key.empty()) t.headers.emplace("Authorization", "Bearer " + api_key);
  if (!httplib::Client(t.origin).is_valid()) fail(ErrorKind::Usage, "--url {}: not a URL this client can open", url);
  return t;
}

void configure(httplib::Client& c, const Target& t) {
  c.set_connection_timeout(30, 0);
  c.set_write_timeout(30, 0);
  c.set_read_timeout(t.timeout_s, 0);
}

struct Got {
  int status = 0;  // 0: no response (error says why)
  std::string body, error;
};

Got http_get(const Target& t, const std::string& path) {
  httplib::Client c(t.origin);
  configure(c, t);
  const auto r = c.Get(t.base + path, t.headers);
  if (!r) return {0, {}, describe(r.error())};
  return {r->status, r->body, {}};
}

// kiln's scheduler steps so far (kiln_engine_steps_total in /metrics), if the server has them.
std::optional<double> engine_steps(const Target& t) {
  const Got g = http_get(t, "/metrics");
  if (g.status != 200) return std::nullopt;
  std::istringstream lines(g.body);
  std::string line;
  static constexpr std::string_view kName = "kiln_engine_steps_total";
  while (std::getline(lines, line)) {
    if (line.rfind(kName, 0) != 0 || line.size() <= kName.size() || (line[kName.size()] != ' ' && line[kName.size()] != '{')) {
      continue;
    }
    const size_t close = line.find('}');
    const size_t at = close == std::string::npos ? kName.size() : close + 1;
    char* end = nullptr;
    const double v = std::strtod(line.c_str() + at, &end);
    if (end != line.c_str() + at) return v;
  }
  return std::nullopt;
}

// What /v1/models says about the served model.
struct ServerInfo {
  std::string model;                 // the id requests name
  std::optional<int64_t> vocab;      // vocab_size (a kiln extension)
  std::optional<int64_t> context;    // max_model_len
};

ServerInfo query_models(const Target& t) {
  const Got g = http_get(t, "/v1/models");
  if (g.status == 0) fail_io("cannot reach the server at {}: {} (is it running?)", t.url, g.error);
  if (g.status != 200) fail_io("{}/v1/models: HTTP {}: {}", t.url, g.status, api_message(g.body));
  const json j = json::parse(g.body, nullptr, false);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() || !j["data"][0].is_object()) {
    fail_io("{}/v1/models: expected {{\"data\": [{{\"id\": ...}}]}}, got {}", t.url, clip(g.body));
  }
  const json& m = j["data"][0];
  ServerInfo info;
  if (m.contains("id") && m["id"].is_string()) info.model = m["id"].get<std::string>();
  if (m.contains("vocab_size") && m["vocab_size"].is_number_integer()) info.vocab = m["vocab_size"].get<int64_t>();
  if (m.contains("max_model_len") && m["max_model_len"].is_number_integer()) info.context = m["max_model_len"].get<int64_t>();
  return info;
}

// One streamed request, timed at the client. Times are seconds from the level's start.
struct Sample {
  bool sent = false, ok = false;
  std::string error;
  double start = 0, end = 0;
  double ttft = kNaN;  // sending -> the first chunk carrying a token (text or finish_reason)
  double tpot = kNaN;  // (last token chunk - first) / (tokens - 1)
  int64_t tokens = 0;  // usage.completion_tokens
};

// The SSE events of one response, fed as bytes arrive.
struct StreamState {
  std::string buf;
  std::optional<Clock::time_point> first, last;
  std::optional<int64_t> usage;
  bool done = false;
  std::string error;

  void feed(const char* data, size_t n, Clock::time_point now) {
    for (size_t i = 0; i < n; ++i)
      if (data[i] != '\r') buf.push_back(data[i]);
    size_t pos = 0, end;
    while ((end = buf.find("\n\n", pos)) != std::string::npos) {
      std::string payload;
      std::istringstream ev(buf.substr(pos, end - pos));
      std::string line;
      while (std::getline(ev, line)) {
        if (line.rfind("data:", 0) != 0) continue;  // comments (keep-alive), event:, id:
        if (!payload.empty()) payload += '\n';
        payload += line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
      }
      if (!payload.empty()) event(payload, now);
      pos = end + 2;
    }
    buf.erase(0, pos);
  }

  void event(const std::string& data, Clock::time_point now) {
    if (data == "[DONE]") {
      done = true;
      return;
    }
    const json j = json::parse(data, nullptr, false);
    if (!j.is_object()) {
      if (error.empty()) error = "unparsable event: " + clip(data);
      return;
    }
    if (j.contains("error")) {
      if (error.empty()) error = "error event: " + api_message(data);
      return;
    }
    if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty()) {
      const json& c = j["choices"][0];
      const bool text = c.contains("text") && c["text"].is_string() && !c["text"].get_ref<const std::string&>().empty();
      const bool finish = c.contains("finish_reason") && !c["finish_reason"].is_null();
      if (text || finish) {
        if (!first) first = now;
        last = now;
      }
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      const json& u = j["usage"];
      if (u.contains("completion_tokens") && u["completion_tokens"].is_number_integer()) {
        usage = u["completion_tokens"].get<int64_t>();
      }
    }
  }
};

Sample stream_one(const Target& t, const std::string& body, int expect_tokens, Clock::time_point t0) {
  Sample s;
  s.sent = true;
  httplib::Client c(t.origin);
  configure(c, t);
  httplib::Request req;
  req.method = "POST";
  req.path = t.base + "/v1/completions";
  req.headers = t.headers;
  req.headers.emplace("Content-Type", "application/json");
  req.body = body;
  int status = 0;
  std::string raw;  // the body of a response other than 200
  StreamState st;
  req.response_handler = [&](const httplib::Response& r) {
    status = r.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (status == 200) {
      st.feed(data, n, Clock::now());
    } else {
      raw.append(data, n);
    }
    return true;
  };
  const auto sent = Clock::now();
  const auto res = c.send(req);
  const auto done = Clock::now();
  s.start = std::chrono::duration<double>(sent - t0).count();
  s.end = std::chrono::duration<double>(done - t0).count();
  if (!res) {
    s.error = status == 200 ? fmt::format("the stream broke: {}", describe(res.error()))
                            : fmt::format("{}: {}", t.url, describe(res.error()));
    return s;
  }
  if (status != 200) {
    s.error = fmt::format("HTTP {}: {}", status, api_message(raw));
    return s;
  }
  if (!st.error.empty()) {
    s.error = st.error;
  } else if (!st.done) {
    s.error = "the stream ended without 'data: [DONE]'";
  } else if (!st.first) {
    s.error = "the stream carried no token";
  } else if (!st.usage) {
    s.error = "no usage in the stream (the server ignored stream_options.include_usage)";
  } else if (*st.usage != expect_tokens) {
    s.error = fmt::format("usage.completion_tokens is {}, expected --output-tokens {} (the server did not honour "
                          "max_tokens with ignore_eos)", *st.usage, expect_tokens);
  }
  if (!s.error.empty()) return s;
  s.ok = true;
  s.tokens = *st.usage;
  s.ttft = std::chrono::duration<double>(*st.first - sent).count();
  if (s.tokens >= 2) s.tpot = std::chrono::duration<double>(*st.last - *st.first).count() / static_cast<double>(s.tokens - 1);
  return s;
}

// Runs every body with `concurrency` streams (one thread each, taking the next request as
// one finishes). After a failure no new request starts.
std::vector<Sample> run_requests(const Target& t, const std::vector<std::string>& bodies, int concurrency,
                                 int expect_tokens) {
  std::vector<Sample> samples(bodies.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  const size_t n = std::min(static_cast<size_t>(concurrency), bodies.size());
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&] {
      for (size_t k; !failed.load() && (k = next.fetch_add(1)) < bodies.size();) {
        samples[k] = stream_one(t, bodies[k], expect_tokens, t0);
        if (!samples[k].ok) failed = true;
      }
    });
  }
  for (auto& th : threads) th.join();
  return samples;
}

// Throws naming how many requests failed and the distinct reasons (at most 3).
void check(const std::vector<Sample>& samples, const std::string& what) {
  size_t bad = 0, unsent = 0;
  std::vector<std::string> reasons;
  for (const auto& s : samples) {
    if (!s.sent) {
      ++unsent;
      continue;
    }
    if (s.ok) continue;
    ++bad;
    if (reasons.size() < 3 && std::find(reasons.begin(), reasons.end(), s.error) == reasons.end()) reasons.push_back(s.error);
  }
  if (bad == 0) return;
  fail_io("{}: {} of {} requests failed{}: {}", what, bad, samples.size(),
          unsent ? fmt::format(" ({} not sent after the first failure)", unsent) : "", fmt::join(reasons, "; "));
}

// Linear interpolation between the closest ranks (numpy's default); NaN when empty.
double percentile(std::vector<double> v, double p) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  const double r = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(r));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (r - static_cast<double>(lo));
}

json summary_ms(const std::vector<double>& seconds) {
  std::vector<double> v;
  for (double s : seconds)
    if (!std::isnan(s)) v.push_back(s * 1e3);
  if (v.empty()) return nullptr;
  double sum = 0;
  for (double x : v) sum += x;
  return {{"p50", percentile(v, 50)}, {"p99", percentile(v, 99)}, {"mean", sum / static_cast<double>(v.size())},
          {"max", *std::max_element(v.begin(), v.end())}};
}

std::string cell(const json& v, const char* spec) {
  return v.is_number() ? fmt::format(fmt::runtime(spec), v.get<double>()) : std::string("-");
}

// `kiln serve` in this process, on a free loopback port, until destroyed.
struct InProcessServer {
  ServeInstance instance;
  std::thread thread;
  InProcessServer(const ServeOptions& so, std::ostream& err) : instance(so, err), thread([this] { instance.run(); }) {}
  ~InProcessServer() {
    instance.stop();
    thread.join();
  }
};

}  // namespace

int run_bench_serve(const BenchServeOptions& o, std::ostream& out, std::ostream& err) {
  const std::vector<int> levels = parse_positive_list(o.concurrency, "--concurrency");
  if (o.url.empty() == o.model.empty()) {
    fail(ErrorKind::Usage, "give exactly one of --url URL (a running server) and --model DIR (kiln serve in this process)");
  }
  if (o.prompt_tokens < 1 || o.output_tokens < 1) fail(ErrorKind::Usage, "--prompt-tokens and --output-tokens must be >= 1");
  if (o.requests < 0 || o.warmup < 0 || o.vocab < 0) fail(ErrorKind::Usage, "--requests, --warmup and --vocab must be >= 0");
  if (o.timeout_s < 1) fail(ErrorKind::Usage, "--timeout must be >= 1");
  const int max_level = *std::max_element(levels.begin(), levels.end());
  // A write to a connection the server closed must fail, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<InProcessServer> local;
  std::string url = o.url;
  if (!o.model.empty()) {
    ServeOptions so;
    so.model = o.model;
    so.device = o.device;
    so.precision = o.precision;
    so.parallel = o.parallel;
    so.threads = o.threads;
    so.host = "127.0.0.1";
    so.port = 0;
    so.api_key = o.api_key;
    so.max_batch = o.max_batch;
    so.prefill_chunk = o.prefill_chunk;
    so.mtp = o.mtp;
    so.max_context = o.max_context;
    so.http_threads = std::max(so.http_threads, max_level + 16);
    local = std::make_unique<InProcessServer>(so, err);
    url = local->instance.url();
    err << "bench: " << local->instance.ready_line() << "\n";
  }
  const Target target = parse_target(url, o.api_key, o.timeout_s);
  const ServerInfo info = query_models(target);
  const std::string model = o.served_model.empty() ? info.model : o.served_model;
  const int64_t vocab = o.vocab > 0 ? o.vocab : info.vocab.value_or(0);
  if (vocab <= 0) {
    fail(ErrorKind::Usage, "{}/v1/models reports no vocab_size: pass --vocab N (prompt token ids are drawn from [0, N))",
         target.url);
  }
  if (info.context && o.prompt_tokens + int64_t{o.output_tokens} > *info.context) {
    fail(ErrorKind::Usage, "--prompt-tokens {} + --output-tokens {} exceed the server's context of {} tokens (max_model_len)",
         o.prompt_tokens, o.output_tokens, *info.context);
  }
  err << fmt::format("bench: {}: model '{}', vocab {} ({}), context {}\n", target.url, model, vocab,
                     o.vocab > 0 ? "--vocab" : "/v1/models", info.context ? std::to_string(*info.context) : "not reported");

  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  auto bodies = [&](int n) {
    std::vector<std::string> b(static_cast<size_t>(n));
    for (auto& s : b) {
      std::vector<int64_t> ids(static_cast<size_t>(o.prompt_tokens));
      for (auto& id : ids) id = pick(rng);
      json r = {{"prompt", ids},
                {"max_tokens", o.output_tokens},
                {"temperature", 0},
                {"stream", true},
                {"stream_options", {{"include_usage", true}}},
                {"ignore_eos", true}};
      if (!model.empty()) r["model"] = model;
      s = r.dump();
    }
    return b;
  };

  if (o.warmup > 0) {
    err << fmt::format("bench: warm-up, {} request(s)\n", o.warmup);
    check(run_requests(target, bodies(o.warmup), o.warmup, o.output_tokens), "warm-up");
  }

  out << fmt::format("# kiln bench --serve: {} (model '{}'{}); prompts of {} random token ids (vocab {}, seed {}), "
                     "{} output tokens each (ignore_eos, temperature 0)\n\n",
                     target.url, model, local ? ", in-process" : "", o.prompt_tokens, vocab, o.seed, o.output_tokens);
  out << "| concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | engine steps | "
         "output tok/step |\n|---|---|---|---|---|---|---|---|---|\n"
      << std::flush;
  json rows = json::array();
  for (const int c : levels) {
    const int n = o.requests > 0 ? std::max(o.requests, c) : 2 * c;
    err << fmt::format("bench: concurrency {}: {} requests\n", c, n);
    const auto b = bodies(n);
    const auto steps0 = engine_steps(target);
    const auto samples = run_requests(target, b, c, o.output_tokens);
    const auto steps1 = engine_steps(target);
    check(samples, fmt::format("concurrency {}", c));
    int64_t tokens = 0;
    double wall = 0;
    std::vector<double> ttft, tpot;
    for (const auto& s : samples) {
      tokens += s.tokens;
      wall = std::max(wall, s.end);
      ttft.push_back(s.ttft);
      tpot.push_back(s.tpot);
    }
    json r = {{"concurrency", c},
              {"requests", n},
              {"output_tokens", tokens},
              {"wall_s", wall},
              {"output_tok_s", static_cast<double>(tokens) / wall},
              {"ttft_ms", summary_ms(ttft)},
              {"tpot_ms", summary_ms(tpot)},
              {"engine_steps", nullptr},
              {"output_tokens_per_step", nullptr}};
    if (steps0 && steps1) {
      const double steps = *steps1 - *steps0;
      r["engine_steps"] = steps;
      if (steps > 0) r["output_tokens_per_step"] = static_cast<double>(tokens) / steps;
    }
    auto ms = [&r](const char* what, const char* p) { return r[what].is_object() ? cell(r[what][p], "{:.2f}") : "-"; };
    out << fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", c, n, cell(r["output_tok_s"], "{:.1f}"),
                       ms("ttft_ms", "p50"), ms("ttft_ms", "p99"), ms("tpot_ms", "p50"), ms("tpot_ms", "p99"),
                       cell(r["engine_steps"], "{:.0f}"), cell(r["output_tokens_per_step"], "{:.2f}"))
        << std::flush;
    rows.push_back(std::move(r));
  }
  if (o.json) {
    out << json{{"url", target.url},
                {"model", model},
                {"in_process", local != nullptr},
                {"vocab", vocab},
                {"vocab_from", o.vocab > 0 ? "--vocab" : "/v1/models"},
                {"prompt_tokens", o.prompt_tokens},
                {"output_tokens", o.output_tokens},
                {"seed", o.seed},
                {"levels", rows}}
               .dump()
        << "\n";
  }
  return 0;
}

}  // namespace kiln::cli
