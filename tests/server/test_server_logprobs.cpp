// logprobs, echo, n, /tokenize and /detokenize through the real server on loopback with
// the bundled trained model. The oracle for logprobs is `kiln score` (the built binary,
// whose own oracle is transformers): echo and generated-token logprobs equal the
// log-softmax of its logits within 1e-5, top alternatives are its top-N in its order.
// Also lm-evaluation-harness's loglikelihood request, and bad input answered with 400s
// naming the field without a request reaching the engine or a slot leaking.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "kiln/io/npy.h"
#include "kiln/runtime/logprobs.h"
#include "server/server_fixture.h"

namespace {

using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;
using kiln::test::Fixture;

struct Reply {
  int status = 0;
  ojson body;
};

Reply post(const Fixture& f, const std::string& path, const ojson& req) {
  auto c = f.client();
  auto r = c.Post(path, req.dump(), "application/json");
  if (!r) return {-1, nullptr};
  return {r->status, ojson::parse(r->body, nullptr, false)};
}

std::string post_raw(const Fixture& f, const std::string& path, const ojson& req) {
  auto c = f.client();
  auto r = c.Post(path, req.dump(), "application/json");
  EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
  return r ? r->body : "";
}

// The data events of an SSE body, parsed.
std::vector<ojson> sse_events(const std::string& body) {
  std::vector<ojson> out;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) break;
    const std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0 || ev == "data: [DONE]") continue;
    out.push_back(ojson::parse(ev.substr(6)));
  }
  return out;
}

int32_t id_of(const std::string& token) {  // "token_id:N" (return_tokens_as_token_ids)
  EXPECT_EQ(token.rfind("token_id:", 0), 0u) << token;
  return static_cast<int32_t>(std::stol(token.substr(9)));
}

// `kiln score` over ids: logits [T, V].
struct Scores {
  std::vector<float> logits;
  int64_t V = 0;
  std::span<const float> row(size_t t) const {
    return std::span<const float>(logits).subspan(t * static_cast<size_t>(V), static_cast<size_t>(V));
  }
  // log-softmax of row t at id, in long double.
  double logprob(size_t t, int32_t id) const {
    const auto r = row(t);
    long double mx = r[0];
    for (float x : r) mx = std::max(mx, static_cast<long double>(x));
    long double sum = 0.0L;
    for (float x : r) sum += std::exp(static_cast<long double>(x) - mx);
    return static_cast<double>(static_cast<long double>(r[static_cast<size_t>(id)]) - mx - std::log(sum));
  }
};

Scores kiln_score(const std::vector<int32_t>& ids) {
  static int calls = 0;
  const fs::path out = fs::temp_directory_path() / ("kiln_server_logprobs_" + std::to_string(getpid()) + "_" +
                                                    std::to_string(calls++) + ".npy");
  std::string list;
  for (size_t i = 0; i < ids.size(); ++i) list += (i ? "," : "") + std::to_string(ids[i]);
  const std::string cmd = std::string(KILN_BINARY) + " score --device cpu --threads 2 --model " + KILN_BUNDLED_MODEL +
                          " --tokens " + list + " --out " + out.string() + " > /dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto a = kiln::read_npy(out);
  fs::remove(out);
  Scores s;
  s.logits = a.as_floats();
  s.V = a.shape.at(1);
  EXPECT_EQ(a.shape.at(0), static_cast<int64_t>(ids.size()));
  return s;
}

std::vector<int32_t> tokenize(const Fixture& f, const ojson& req) {
  const Reply r = post(f, "/tokenize", req);
  EXPECT_EQ(r.status, 200) << r.body.dump();
  return r.body["tokens"].get<std::vector<int32_t>>();
}

// Completions logprobs of tokens [from, to) against score's rows (the row before each
// token): logprob within 1e-5, the first `top` entries of top_logprobs are score's top-N
// in score's order.
void expect_completion_logprobs_match(const ojson& lp, const std::vector<int32_t>& ids, const Scores& s, size_t from,
                                      int top) {
  for (size_t i = from; i < ids.size(); ++i) {
    EXPECT_EQ(id_of(lp["tokens"][i]), ids[i]) << "token " << i;
    ASSERT_TRUE(lp["token_logprobs"][i].is_number()) << "token " << i;
    EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), s.logprob(i - 1, ids[i]), 1e-5) << "token " << i;
    const ojson& t = lp["top_logprobs"][i];
    const auto want = kiln::runtime::top_ids(s.row(i - 1), top);
    ASSERT_GE(t.size(), want.size()) << "token " << i;
    ASSERT_LE(t.size(), want.size() + 1) << "token " << i;
    size_t j = 0;
    for (auto it = t.begin(); it != t.end() && j < want.size(); ++it, ++j) {
      EXPECT_EQ(id_of(it.key()), want[j]) << "token " << i << " alternative " << j;
      EXPECT_NEAR(it.value().get<double>(), s.logprob(i - 1, want[j]), 1e-5);
    }
    EXPECT_TRUE(t.contains("token_id:" + std::to_string(ids[i]))) << "the chosen token is among top_logprobs";
  }
}

TEST(ServerLogprobs, EchoLogprobsEqualTheLogSoftmaxOfKilnScore) {
  Fixture f;
  const std::string prompt = "def parse_args(argv):\n    return argv[1:]\n";
  const auto prompt_ids = tokenize(f, {{"prompt", prompt}});
  ASSERT_GT(prompt_ids.size(), 8u);
  const ojson req = {{"prompt", prompt}, {"echo", true}, {"logprobs", 5}, {"max_tokens", 4},
                     {"temperature", 0}, {"ignore_eos", true}, {"return_tokens_as_token_ids", true}};
  const Reply r = post(f, "/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const ojson& c = r.body["choices"][0];
  const ojson& lp = c["logprobs"];
  const size_t P = prompt_ids.size();
  ASSERT_EQ(lp["tokens"].size(), P + 4);
  ASSERT_EQ(lp["token_logprobs"].size(), P + 4);
  ASSERT_EQ(lp["top_logprobs"].size(), P + 4);
  ASSERT_EQ(lp["text_offset"].size(), P + 4);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  std::vector<int32_t> ids;
  for (const auto& t : lp["tokens"]) ids.push_back(id_of(t));
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(P)), prompt_ids);
  const std::string text = c["text"];
  EXPECT_EQ(text.rfind(prompt, 0), 0u) << "echo puts the prompt first";
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], P);
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 4);
  // text_offset: characters before each token; the first generated token starts after the prompt.
  EXPECT_EQ(lp["text_offset"][0], 0);
  EXPECT_EQ(lp["text_offset"][P].get<size_t>(), prompt.size());  // ASCII: characters = bytes
  for (size_t i = 1; i < P + 4; ++i) EXPECT_GE(lp["text_offset"][i], lp["text_offset"][i - 1]);

  const Scores s = kiln_score(ids);
  expect_completion_logprobs_match(lp, ids, s, 1, 5);
  // Greedy: every generated token is its row's argmax.
  for (size_t i = P; i < ids.size(); ++i) EXPECT_EQ(ids[i], kiln::runtime::top_ids(s.row(i - 1), 1)[0]);

  // Speculative decoding reports the same logprobs (from its verify rows).
  ojson spec = req;
  spec["mtp"] = 2;
  const Reply m = post(f, "/v1/completions", spec);
  ASSERT_EQ(m.status, 200);
  const ojson& ml = m.body["choices"][0]["logprobs"];
  ASSERT_EQ(ml["tokens"], lp["tokens"]);
  for (size_t i = 1; i < P + 4; ++i) EXPECT_NEAR(ml["token_logprobs"][i].get<double>(), lp["token_logprobs"][i].get<double>(), 1e-5);
  EXPECT_GT(f.engine->metrics().mtp_proposed[0].load(), 0u);
}

// Sampled tokens report the model's distribution before temperature.
TEST(ServerLogprobs, SampledTokensReportLogprobsBeforeTemperature) {
  Fixture f;
  const std::string prompt = "import os\n";
  const auto prompt_ids = tokenize(f, {{"prompt", prompt}});
  const Reply r = post(f, "/v1/completions", {{"prompt", prompt}, {"logprobs", 3}, {"max_tokens", 8}, {"temperature", 1.7},
                                              {"top_k", 50}, {"seed", 9}, {"ignore_eos", true},
                                              {"return_tokens_as_token_ids", true}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const ojson& lp = r.body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 8u);
  std::vector<int32_t> ids = prompt_ids;
  for (const auto& t : lp["tokens"]) ids.push_back(id_of(t));
  const Scores s = kiln_score(ids);
  // Shift: entry i of the response is token P + i.
  ojson shifted = {{"tokens", ojson::array()}, {"token_logprobs", ojson::array()}, {"top_logprobs", ojson::array()}};
  for (size_t i = 0; i < prompt_ids.size(); ++i) {
    shifted["tokens"].push_back("token_id:" + std::to_string(prompt_ids[i]));
    shifted["token_logprobs"].push_back(nullptr);
    shifted["top_logprobs"].push_back(nullptr);
  }
  for (size_t i = 0; i < 8; ++i) {
    shifted["tokens"].push_back(lp["tokens"][i]);
    shifted["token_logprobs"].push_back(lp["token_logprobs"][i]);
    shifted["top_logprobs"].push_back(lp["top_logprobs"][i]);
  }
  expect_completion_logprobs_match(shifted, ids, s, prompt_ids.size(), 3);
}

TEST(ServerLogprobs, ChatLogprobsAreTheTrueTopNInScoresOrder) {
  Fixture f;
  const ojson messages = {{{"role", "user"}, {"content", "Write a function that adds two numbers."}}};
  const auto prompt_ids = tokenize(f, {{"messages", messages}});
  const Reply r = post(f, "/v1/chat/completions", {{"messages", messages}, {"logprobs", true}, {"top_logprobs", 4},
                                                   {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true},
                                                   {"return_tokens_as_token_ids", true}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt_ids.size()) << "/tokenize gives the chat's prompt";
  const ojson& content = r.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 6u);
  std::vector<int32_t> ids = prompt_ids;
  for (const auto& e : content) ids.push_back(id_of(e["token"]));
  const Scores s = kiln_score(ids);
  for (size_t i = 0; i < content.size(); ++i) {
    const size_t row = prompt_ids.size() - 1 + i;
    const ojson& e = content[i];
    EXPECT_NEAR(e["logprob"].get<double>(), s.logprob(row, ids[row + 1]), 1e-5);
    EXPECT_TRUE(e["bytes"].is_array());
    const auto want = kiln::runtime::top_ids(s.row(row), 4);
    ASSERT_EQ(e["top_logprobs"].size(), 4u);
    for (size_t j = 0; j < 4; ++j) {
      EXPECT_EQ(id_of(e["top_logprobs"][j]["token"]), want[j]) << "token " << i << " alternative " << j;
      EXPECT_NEAR(e["top_logprobs"][j]["logprob"].get<double>(), s.logprob(row, want[j]), 1e-5);
    }
    EXPECT_EQ(want[0], ids[row + 1]) << "greedy";
  }
  // Without return_tokens_as_token_ids: the token's text and its UTF-8 bytes.
  const Reply plain = post(f, "/v1/chat/completions", {{"messages", messages}, {"logprobs", true}, {"max_tokens", 6},
                                                       {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(plain.status, 200);
  const ojson& pc = plain.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(pc.size(), 6u);
  for (size_t i = 0; i < pc.size(); ++i) {
    const int32_t id = ids[prompt_ids.size() + i];
    EXPECT_EQ(pc[i]["token"], f.tok->decode(std::vector<int32_t>{id}));
    std::string bytes;
    for (const auto& b : pc[i]["bytes"]) bytes.push_back(static_cast<char>(b.get<int>()));
    EXPECT_EQ(bytes, std::string(*f.tok->token_bytes(id)));
    EXPECT_TRUE(pc[i]["top_logprobs"].empty());
    EXPECT_EQ(pc[i]["logprob"], content[i]["logprob"]);
  }
}

// The logprobs of a stream are those of the response, chunk by chunk.
TEST(ServerLogprobs, StreamingCarriesEachChunksLogprobs) {
  Fixture f;
  const ojson req = {{"prompt", "class Stack:\n    def push(self, x):\n"}, {"echo", true}, {"logprobs", 2},
                     {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true}};
  const Reply whole = post(f, "/v1/completions", req);
  ASSERT_EQ(whole.status, 200);
  ojson sreq = req;
  sreq["stream"] = true;
  std::string text;
  ojson lp = {{"tokens", ojson::array()}, {"token_logprobs", ojson::array()}, {"top_logprobs", ojson::array()},
              {"text_offset", ojson::array()}};
  for (const ojson& ev : sse_events(post_raw(f, "/v1/completions", sreq))) {
    const ojson& c = ev["choices"][0];
    text += c["text"].get<std::string>();
    if (c["logprobs"].is_null()) continue;
    for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
      for (const auto& v : c["logprobs"][k]) lp[k].push_back(v);
    }
  }
  EXPECT_EQ(text, whole.body["choices"][0]["text"]);
  EXPECT_EQ(lp, whole.body["choices"][0]["logprobs"]);

  const ojson chat = {{"messages", {{{"role", "user"}, {"content", "Sort a list."}}}}, {"logprobs", true},
                      {"top_logprobs", 2}, {"max_tokens", 10}, {"temperature", 0}};
  const Reply cw = post(f, "/v1/chat/completions", chat);
  ASSERT_EQ(cw.status, 200);
  ojson schat = chat;
  schat["stream"] = true;
  ojson content = ojson::array();
  for (const ojson& ev : sse_events(post_raw(f, "/v1/chat/completions", schat))) {
    const ojson& c = ev["choices"][0];
    if (!c["logprobs"].is_null()) {
      for (const auto& e : c["logprobs"]["content"]) content.push_back(e);
    }
  }
  EXPECT_EQ(content, cw.body["choices"][0]["logprobs"]["content"]);
}

// lm-evaluation-harness's local-completions loglikelihood request: token-id prompts (a
// batch), echo, logprobs 1, max_tokens 1 (or 0), temperature 0; it reads
// choices[i].logprobs.token_logprobs[ctxlen:-1] and compares each top_logprobs dict's
// best value with the token's logprob (is_greedy).
TEST(ServerLogprobs, LmEvalHarnessLoglikelihoodRequest) {
  Fixture f;
  const auto ctx = tokenize(f, {{"prompt", "The capital of France is"}, {"add_special_tokens", false}});
  const auto cont1 = tokenize(f, {{"prompt", " Paris"}, {"add_special_tokens", false}});
  const auto cont2 = tokenize(f, {{"prompt", " a list of numbers"}, {"add_special_tokens", false}});
  std::vector<std::vector<int32_t>> batch = {ctx, ctx};
  batch[0].insert(batch[0].end(), cont1.begin(), cont1.end());
  batch[1].insert(batch[1].end(), cont2.begin(), cont2.end());
  for (int max_tokens : {1, 0}) {
    const ojson req = {{"model", "kiln"}, {"prompt", batch}, {"temperature", 0}, {"max_tokens", max_tokens},
                       {"logprobs", 1}, {"seed", 1234}, {"echo", true}};
    const Reply r = post(f, "/v1/completions", req);
    ASSERT_EQ(r.status, 200) << r.body.dump();
    ASSERT_EQ(r.body["choices"].size(), 2u);
    for (size_t b = 0; b < 2; ++b) {
      const ojson& c = r.body["choices"][b];
      EXPECT_EQ(c["index"], b);
      const auto& ids = batch[b];
      const ojson& lp = c["logprobs"];
      const size_t n = ids.size() + static_cast<size_t>(max_tokens);
      ASSERT_EQ(lp["token_logprobs"].size(), n);
      ASSERT_EQ(lp["top_logprobs"].size(), n);
      EXPECT_TRUE(lp["token_logprobs"][0].is_null());
      // The harness's arithmetic: ctxlen = len(context); [ctxlen:-1] drops the generated
      // token (max_tokens 1); with max_tokens 0 the continuation is [ctxlen:].
      const size_t ctxlen = ctx.size();
      const size_t end = max_tokens == 1 ? n - 1 : n;
      double sum = 0.0;
      bool greedy = true;
      for (size_t i = ctxlen; i < end; ++i) {
        const double v = lp["token_logprobs"][i].get<double>();
        sum += v;
        double best = -INFINITY;
        for (const auto& [k, x] : lp["top_logprobs"][i].items()) best = std::max(best, x.get<double>());
        greedy = greedy && v == best;
      }
      const Scores s = kiln_score(ids);
      double want = 0.0;
      bool want_greedy = true;
      for (size_t i = ctxlen; i < ids.size(); ++i) {
        want += s.logprob(i - 1, ids[i]);
        want_greedy = want_greedy && kiln::runtime::top_ids(s.row(i - 1), 1)[0] == ids[i];
      }
      EXPECT_NEAR(sum, want, 1e-5 * static_cast<double>(ids.size()));
      EXPECT_EQ(greedy, want_greedy);
      EXPECT_EQ(c["text"].get<std::string>().rfind(f.tok->decode(ids, true), 0), 0u) << "echo puts the prompt first";
      if (max_tokens == 0) {
        EXPECT_EQ(c["finish_reason"], "length");
      }
    }
    EXPECT_EQ(r.body["usage"]["prompt_tokens"], batch[0].size() + batch[1].size());
    EXPECT_EQ(r.body["usage"]["completion_tokens"], 2 * max_tokens);
  }
}

TEST(ServerChoices, NChoicesShareThePromptAndFollowTheirSeeds) {
  kiln::runtime::EngineOptions eo;
  eo.max_batch = 8;
  Fixture f(eo);
  const std::string prompt = "def fib(n):\n";
  // Temperature 0: n equal choices.
  const Reply g = post(f, "/v1/completions", {{"prompt", prompt}, {"n", 3}, {"max_tokens", 16}, {"temperature", 0}});
  ASSERT_EQ(g.status, 200) << g.body.dump();
  ASSERT_EQ(g.body["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(g.body["choices"][i]["index"], i);
    EXPECT_EQ(g.body["choices"][i]["text"], g.body["choices"][0]["text"]);
  }
  EXPECT_EQ(g.body["choices"][0]["text"], f.solo_text(prompt, 16));
  const int P = g.body["usage"]["prompt_tokens"];
  EXPECT_EQ(f.engine->metrics().prompt_tokens.load(), static_cast<uint64_t>(P)) << "the prompt is fed once";
  // Sampled with a seed: choice i is the one-choice request with seed + i, and the
  // request reproduces itself (plain and speculative).
  for (int mtp : {0, 1}) {
    const ojson req = {{"prompt", prompt}, {"n", 3}, {"max_tokens", 16}, {"temperature", 1.0}, {"seed", 77},
                       {"mtp", mtp}, {"ignore_eos", true}};
    const Reply a = post(f, "/v1/completions", req);
    const Reply b = post(f, "/v1/completions", req);
    ASSERT_EQ(a.status, 200);
    std::set<std::string> distinct;
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(a.body["choices"][i]["text"], b.body["choices"][i]["text"]) << "choice " << i << " mtp " << mtp;
      ojson one = req;
      one["n"] = 1;
      one["seed"] = 77 + i;
      const Reply o = post(f, "/v1/completions", one);
      EXPECT_EQ(a.body["choices"][i]["text"], o.body["choices"][0]["text"]) << "choice " << i << " mtp " << mtp;
      distinct.insert(a.body["choices"][i]["text"].get<std::string>());
    }
    EXPECT_GT(distinct.size(), 1u) << "sampled choices all equal";
  }
  // Several prompts times n: prompt-major indices; prompt p's choice c draws with seed + p * n + c.
  const ojson multi = {{"prompt", {"import ", "class "}}, {"n", 2}, {"max_tokens", 8}, {"temperature", 1.0}, {"seed", 5},
                       {"ignore_eos", true}};
  const Reply m = post(f, "/v1/completions", multi);
  ASSERT_EQ(m.status, 200) << m.body.dump();
  ASSERT_EQ(m.body["choices"].size(), 4u);
  const Reply last = post(f, "/v1/completions", {{"prompt", "class "}, {"max_tokens", 8}, {"temperature", 1.0},
                                                 {"seed", 5 + 3}, {"ignore_eos", true}});
  EXPECT_EQ(m.body["choices"][3]["text"], last.body["choices"][0]["text"]);
  EXPECT_EQ(m.body["usage"]["completion_tokens"], 32);
  // Streamed: each chunk names its choice; per choice the text equals the response's.
  ojson chat = {{"messages", {{{"role", "user"}, {"content", "Hello"}}}}, {"n", 2}, {"max_tokens", 10}, {"temperature", 0.8},
                {"seed", 3}};
  const Reply cw = post(f, "/v1/chat/completions", chat);
  ASSERT_EQ(cw.status, 200);
  chat["stream"] = true;
  std::vector<std::string> texts(2);
  std::vector<int> finishes(2, 0);
  for (const ojson& ev : sse_events(post_raw(f, "/v1/chat/completions", chat))) {
    const ojson& c = ev["choices"][0];
    const int i = c["index"];
    if (c["delta"].contains("content")) texts[static_cast<size_t>(i)] += c["delta"]["content"].get<std::string>();
    finishes[static_cast<size_t>(i)] += !c["finish_reason"].is_null();
  }
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(texts[i], cw.body["choices"][i]["message"]["content"]);
    EXPECT_EQ(finishes[i], 1);
  }
  for (int i = 0; i < 100 && f.engine->metrics().running.load() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (int s = 0; s < f.backend->max_slots(); ++s) ASSERT_GE(f.backend->acquire(), 0) << "slot " << s << " still held";
}

TEST(ServerTokenize, TokenizeDetokenizeRoundTrip) {
  Fixture f;
  for (const std::string text : {"def parse(argv):\n    return argv[1:]\n", "naïve café — 東京 🙂", "  spaces\t\ttabs\n\n"}) {
    const Reply t = post(f, "/tokenize", {{"prompt", text}, {"add_special_tokens", false}});
    ASSERT_EQ(t.status, 200) << t.body.dump();
    EXPECT_EQ(t.body["tokens"].get<std::vector<int32_t>>(), f.tok->encode(text));
    EXPECT_EQ(t.body["count"], t.body["tokens"].size());
    EXPECT_EQ(t.body["max_model_len"], f.model->config.max_position_embeddings);
    const Reply d = post(f, "/detokenize", {{"tokens", t.body["tokens"]}});
    ASSERT_EQ(d.status, 200) << d.body.dump();
    EXPECT_EQ(d.body["prompt"], text);
    // By default a prompt starts with BOS, as completions feed it.
    const Reply b = post(f, "/tokenize", {{"prompt", text}, {"return_token_strs", true}});
    EXPECT_EQ(b.body["tokens"][0], f.model->config.bos_token_id);
    EXPECT_EQ(b.body["count"], t.body["count"].get<int>() + 1);
    EXPECT_EQ(b.body["token_strs"].size(), b.body["tokens"].size());
  }
  // Messages: the prompt chat completions feed.
  const ojson messages = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}};
  const Reply t = post(f, "/tokenize", {{"messages", messages}});
  ASSERT_EQ(t.status, 200);
  const Reply c = post(f, "/v1/chat/completions", {{"messages", messages}, {"max_tokens", 1}});
  EXPECT_EQ(t.body["count"], c.body["usage"]["prompt_tokens"]);
  const Reply d = post(f, "/detokenize", {{"tokens", t.body["tokens"]}});
  EXPECT_NE(d.body["prompt"].get<std::string>().find("Be brief."), std::string::npos);
}

// Bad input gets a 400 naming the field; nothing reaches the engine, nothing leaks.
TEST(ServerLogprobs, BadInputIs400NamingTheFieldAndLeaksNothing) {
  kiln::runtime::EngineOptions eo;
  eo.max_batch = 4;
  Fixture f(eo);
  const ojson user = {{{"role", "user"}, {"content", "Hi"}}};
  struct Case {
    const char* path;
    ojson body;
    const char* param;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", {{"prompt", "x"}, {"logprobs", 21}}, "logprobs"},
      {"/v1/completions", {{"prompt", "x"}, {"logprobs", -1}}, "logprobs"},
      {"/v1/completions", {{"prompt", "x"}, {"logprobs", true}}, "logprobs"},
      {"/v1/completions", {{"prompt", "x"}, {"top_logprobs", 2}}, "top_logprobs"},
      {"/v1/chat/completions", {{"messages", user}, {"top_logprobs", 3}}, "top_logprobs"},
      {"/v1/chat/completions", {{"messages", user}, {"logprobs", false}, {"top_logprobs", 3}}, "top_logprobs"},
      {"/v1/chat/completions", {{"messages", user}, {"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs"},
      {"/v1/chat/completions", {{"messages", user}, {"logprobs", 5}}, "logprobs"},
      {"/v1/completions", {{"prompt", "x"}, {"n", 0}}, "n"},
      {"/v1/completions", {{"prompt", "x"}, {"n", -3}}, "n"},
      {"/v1/completions", {{"prompt", "x"}, {"n", 1.5}}, "n"},
      {"/v1/completions", {{"prompt", "x"}, {"n", 100000}}, "n"},
      {"/v1/completions", {{"prompt", "x"}, {"n", 5}}, "n"},  // beyond the batch of 4
      {"/v1/chat/completions", {{"messages", user}, {"n", 5}}, "n"},
      {"/v1/completions", {{"prompt", "x"}, {"n", 2}, {"best_of", 3}}, "best_of"},
      {"/v1/chat/completions", {{"messages", user}, {"echo", true}, {"stream", true}}, "echo"},
      {"/v1/chat/completions", {{"messages", user}, {"echo", true}}, "echo"},
      {"/v1/completions", {{"prompt", "x"}, {"echo", "yes"}}, "echo"},
      {"/v1/completions", {{"prompt", "x"}, {"max_tokens", 0}}, "max_tokens"},
      {"/v1/chat/completions", {{"messages", user}, {"max_tokens", 0}}, "max_tokens"},
      {"/v1/completions", {{"prompt", {{1, 2}, ojson::array()}}}, "prompt[1]"},
      {"/v1/completions", {{"prompt", {1, "x"}}}, "prompt[1]"},
      {"/v1/completions", {{"prompt", {{1, 2}, {3, 99999}}}}, "prompt[1]"},
      {"/v1/completions", {{"prompt", {"a", ""}}}, "prompt[1]"},
      {"/tokenize", ojson::object(), "prompt"},
      {"/tokenize", {{"prompt", 5}}, "prompt"},
      {"/tokenize", {{"messages", {{{"role", "wizard"}}}}}, "messages[0].role"},
      {"/detokenize", {{"tokens", "1 2"}}, "tokens"},
      {"/detokenize", {{"tokens", {1, -1}}}, "tokens[1]"},
      {"/detokenize", {{"tokens", {1, 1 << 20}}}, "tokens[1]"},
  };
  for (const Case& c : cases) {
    const Reply r = post(f, c.path, c.body);
    EXPECT_EQ(r.status, 400) << c.path << " " << c.body.dump() << " -> " << r.body.dump();
    ASSERT_TRUE(r.body.is_object() && r.body.contains("error")) << r.body.dump();
    EXPECT_EQ(r.body["error"]["param"], c.param) << c.path << " " << c.body.dump() << " -> " << r.body.dump();
    EXPECT_EQ(r.body["error"]["type"], "invalid_request_error");
  }
  const auto& m = f.engine->metrics();
  EXPECT_EQ(m.requests_total.load(), 0u) << "a bad request reached the engine";
  EXPECT_EQ(m.running.load(), 0);
  EXPECT_EQ(m.waiting.load(), 0);
  // The server still answers; afterwards every slot is free.
  const Reply ok = post(f, "/v1/completions", {{"prompt", "x"}, {"n", 4}, {"logprobs", 20}, {"echo", true}, {"max_tokens", 2}});
  EXPECT_EQ(ok.status, 200) << ok.body.dump();
  EXPECT_EQ(m.requests_total.load(), 1u);
  for (int i = 0; i < 100 && (m.running.load() != 0 || f.server->active_requests() != 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(m.requests_finished.load(), 1u);
  EXPECT_EQ(m.running.load(), 0);
  for (int s = 0; s < f.backend->max_slots(); ++s) ASSERT_GE(f.backend->acquire(), 0) << "slot " << s << " still held";
}

}  // namespace
