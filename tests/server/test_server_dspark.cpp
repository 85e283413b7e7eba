// `kiln serve` on a DSpark checkpoint, through the real binary: the oracle fixture
// tests/data/fixtures/tiny_dspark (DeepSeek's 0731 layout, a 3-stage drafter with block 5;
// random weights, vocabulary 256) with a byte-level tokenizer written here. It drafts with
// the DSpark drafter by default; greedy answers equal those of the same requests without
// drafts (per-request "mtp": 0), streamed and not; /metrics counts proposals and
// acceptances for all 5 draft positions; a request that opts out drafts nothing; bad
// drafting options are errors naming the value.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>

#include "server/server_fixture.h"
#include "support/artifacts.h"

namespace {

using json = nlohmann::json;
using kiln::test::TempDir;

const std::string kFixture = std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_dspark/native";
constexpr int kBlock = 5;  // the fixture's dspark_block_size

// A byte-level BPE without merges: id b is byte b (GPT-2's byte-to-character map), so every
// id of the fixture's 256-token vocabulary decodes to one byte.
void write_byte_tokenizer(const std::filesystem::path& path) {
  std::vector<int> cps(256, -1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cps[static_cast<size_t>(b)] = printable ? b : 256 + extra++;
  }
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    const int c = cps[static_cast<size_t>(b)];
    std::string s;
    if (c < 0x80) {
      s += static_cast<char>(c);
    } else {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
    vocab[s] = b;
  }
  const json t = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
                  {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
                  {"decoder", {{"type", "ByteLevel"}}}};
  std::ofstream(path) << t.dump();
}

// `kiln serve ARGS` as a child process on a free port: its URL from the ready line, or its
// exit status when it stops first.
class ServeProcess {
 public:
  explicit ServeProcess(const std::string& args) : log_(dir_.path() / "serve.log") {
    const std::string cmd = "exec " + std::string(KILN_BINARY) + " serve --port 0 " + args;
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    const std::regex url("http://127\\.0\\.0\\.1:([0-9]+)");
    for (int i = 0; i < 1200; ++i) {
      std::smatch m;
      const std::string text = log();
      if (std::regex_search(text, m, url)) {
        port_ = std::stoi(m[1].str());
        return;
      }
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  bool ready() const { return port_ > 0; }
  int exit_code() const { return exit_code_; }  // -1 while it runs
  ~ServeProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  std::string log() const {
    std::ifstream f(log_);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    return c;
  }
  json post(const json& body, int want_status = 200) const {
    auto r = client().Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(r) << body.dump();
    if (!r) return {};
    EXPECT_EQ(r->status, want_status) << body.dump() << "\n" << r->body;
    return body.value("stream", false) ? json{{"sse", r->body}} : json::parse(r->body);
  }
  // kiln_mtp_{draft,accepted}_tokens_total per position.
  std::pair<std::vector<uint64_t>, std::vector<uint64_t>> draft_metrics() const {
    auto r = client().Get("/metrics");
    std::vector<uint64_t> proposed, accepted;
    EXPECT_TRUE(r && r->status == 200);
    if (!r) return {proposed, accepted};
    const std::regex line("kiln_mtp_(draft|accepted)_tokens_total\\{position=\"([0-9]+)\"\\} ([0-9]+)");
    for (std::sregex_iterator it(r->body.begin(), r->body.end(), line), end; it != end; ++it) {
      auto& v = (*it)[1].str() == "draft" ? proposed : accepted;
      EXPECT_EQ(std::stoul((*it)[2].str()), v.size()) << "positions in order";
      v.push_back(std::stoull((*it)[3].str()));
    }
    return {proposed, accepted};
  }
  double metric_total(const char* name) const {
    auto r = client().Get("/metrics");
    const std::regex line(std::string("\n") + name + " ([0-9.e+]+)");
    std::smatch m;
    if (!r || !std::regex_search(r->body, m, line)) {
      ADD_FAILURE() << "no " << name << " in /metrics";
      return -1;
    }
    return std::stod(m[1].str());
  }

 private:
  TempDir dir_{"kiln-serve-dspark"};
  std::filesystem::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_code_ = -1;
};

class ServerDSpark : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("kiln-dspark-tok");
    write_byte_tokenizer(tokenizer());
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::filesystem::path tokenizer() { return dir_->path() / "tokenizer.json"; }
  static std::string serve_args(const std::string& extra = "") {
    return "--model '" + kFixture + "' --tokenizer '" + tokenizer().string() + "' --device cpu --threads 1 --max-batch 4 " +
           extra;
  }
  static TempDir* dir_;
};
TempDir* ServerDSpark::dir_ = nullptr;

// The generated ids ("token_id:N" logprob tokens) of a response, streamed or not.
std::vector<std::string> ids_of(const json& r) {
  std::vector<std::string> ids;
  if (!r.contains("sse")) {
    for (const auto& t : r["choices"][0]["logprobs"]["tokens"]) ids.push_back(t);
    return ids;
  }
  const std::string body = r["sse"];
  for (size_t pos = body.find("data: {"); pos != std::string::npos; pos = body.find("data: {", pos + 1)) {
    const json j = json::parse(body.substr(pos + 6, body.find("\n\n", pos) - pos - 6));
    if (j["choices"].empty() || j["choices"][0]["logprobs"].is_null()) continue;
    for (const auto& t : j["choices"][0]["logprobs"]["tokens"]) ids.push_back(t);
  }
  return ids;
}

std::string text_of(const json& r) {
  return r.contains("sse") ? kiln::test::sse_text(r["sse"], false) : r["choices"][0]["text"].get<std::string>();
}

const std::vector<std::vector<int>> kPrompts = {{5, 17, 42, 100, 3, 9, 200}, {100, 100, 100, 100},
                                                {250, 1, 64, 128, 31, 2, 8, 99, 12, 13, 14}};

TEST_F(ServerDSpark, GreedyAnswersWithDSparkEqualThoseWithout) {
  ServeProcess s(serve_args());
  ASSERT_TRUE(s.ready()) << s.log();
  const std::string log = s.log();
  EXPECT_NE(log.find("; DSpark 5 drafts per round (block 5)"), std::string::npos) << log;
  for (const auto& prompt : kPrompts) {
    for (bool logprobs : {true, false}) {
      for (bool stream : {false, true}) {
        json body = {{"prompt", prompt}, {"max_tokens", 120}, {"temperature", 0}, {"ignore_eos", true}, {"stream", stream}};
        if (logprobs) body.update({{"logprobs", 0}, {"return_tokens_as_token_ids", true}});
        json plain_req = body;
        plain_req["mtp"] = 0;
        const json plain = s.post(plain_req);
        if (logprobs) {
          ASSERT_EQ(ids_of(plain).size(), 120u);
        }
        for (int mtp : {-1, 1, 3, kBlock}) {  // -1: the server's default (the whole block)
          SCOPED_TRACE(::testing::Message() << "prompt " << prompt[0] << " mtp " << mtp << " stream " << stream
                                            << " logprobs " << logprobs);
          json req = body;
          if (mtp >= 0) req["mtp"] = mtp;
          const json r = s.post(req);
          EXPECT_EQ(text_of(r), text_of(plain));
          if (logprobs) {
            EXPECT_EQ(ids_of(r), ids_of(plain));
          }
        }
      }
    }
  }
  // Every position was drafted, and some drafts were accepted (the random-weight drafter
  // rarely agrees, at position 0 only; tests/runtime/test_dspark_spec.cpp forces every
  // accept length), so the answers above went through acceptance as well as rejection.
  auto [proposed, accepted] = s.draft_metrics();
  ASSERT_EQ(proposed.size(), static_cast<size_t>(kBlock));
  for (int i = 0; i < kBlock; ++i) EXPECT_GT(proposed[static_cast<size_t>(i)], 0u) << i;
  EXPECT_GT(accepted[0], 0u);

  // Choices of one request share the prompt's prefill (the copied slot holds the rings).
  const json body = {{"prompt", kPrompts[0]}, {"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
  json plain_req = body;
  plain_req["mtp"] = 0;
  const std::string want = text_of(s.post(plain_req));
  json req = body;
  req["n"] = 3;
  const json r = s.post(req);
  ASSERT_EQ(r["choices"].size(), 3u);
  for (const auto& c : r["choices"]) EXPECT_EQ(c["text"], want);
}

TEST_F(ServerDSpark, MetricsCountEveryDraftPositionAndAnOptOutDraftsNothing) {
  ServeProcess s(serve_args());
  ASSERT_TRUE(s.ready()) << s.log();
  auto [p0, a0] = s.draft_metrics();
  ASSERT_EQ(p0.size(), static_cast<size_t>(kBlock)) << "one counter per draft position";
  ASSERT_EQ(a0.size(), static_cast<size_t>(kBlock));
  for (size_t i = 0; i < p0.size(); ++i) EXPECT_EQ(p0[i] + a0[i], 0u);

  // Opted out: tokens generated, nothing drafted.
  const double gen0 = s.metric_total("kiln_generation_tokens_total");
  s.post({{"prompt", kPrompts[1]}, {"max_tokens", 30}, {"temperature", 0}, {"ignore_eos", true}, {"mtp", 0}});
  EXPECT_EQ(s.metric_total("kiln_generation_tokens_total"), gen0 + 30);
  auto [p1, a1] = s.draft_metrics();
  EXPECT_EQ(p1, p0);
  EXPECT_EQ(a1, a0);

  // Drafting (the whole block by default): M tokens = the prefill's first + one per round
  // + the accepted drafts; every round but the last (which may draft none, having one
  // token left) proposes position 0, and only the last rounds (fewer tokens left than the
  // block) propose fewer than all 5.
  constexpr int M = 48;
  s.post({{"prompt", kPrompts[0]}, {"max_tokens", M}, {"temperature", 0}, {"ignore_eos", true}});
  auto [p2, a2] = s.draft_metrics();
  uint64_t accepted = 0;
  for (int i = 0; i < kBlock; ++i) {
    SCOPED_TRACE(i);
    EXPECT_GT(p2[static_cast<size_t>(i)], 0u);
    EXPECT_LE(a2[static_cast<size_t>(i)], p2[static_cast<size_t>(i)]);
    if (i > 0) {
      EXPECT_LE(p2[static_cast<size_t>(i)], p2[static_cast<size_t>(i) - 1]);
      EXPECT_LE(a2[static_cast<size_t>(i)], a2[static_cast<size_t>(i) - 1]);
    }
    accepted += a2[static_cast<size_t>(i)];
  }
  EXPECT_LE(p2[0] - p2[kBlock - 1], static_cast<uint64_t>(kBlock - 1));
  const int64_t rounds = M - 1 - static_cast<int64_t>(accepted);
  EXPECT_TRUE(rounds == static_cast<int64_t>(p2[0]) || rounds == static_cast<int64_t>(p2[0]) + 1)
      << "rounds " << rounds << ", position 0 proposed " << p2[0] << ", accepted " << accepted;

  // A request's own K: positions beyond it are not proposed.
  s.post({{"prompt", kPrompts[2]}, {"max_tokens", 20}, {"temperature", 0}, {"ignore_eos", true}, {"mtp", 2}});
  auto [p3, a3] = s.draft_metrics();
  EXPECT_GT(p3[1], p2[1]);
  for (int i = 2; i < kBlock; ++i) EXPECT_EQ(p3[static_cast<size_t>(i)], p2[static_cast<size_t>(i)]) << i;
}

TEST_F(ServerDSpark, RequestsAskingBeyondTheBlockOrWithDraftingOffAreRefused) {
  {
    ServeProcess s(serve_args());
    ASSERT_TRUE(s.ready()) << s.log();
    const json base = {{"prompt", kPrompts[0]}, {"max_tokens", 4}, {"temperature", 0}};
    json req = base;
    req["mtp"] = kBlock + 1;  // beyond the block, and beyond any drafter kiln runs
    const json e = s.post(req, 400);
    EXPECT_EQ(e["error"]["param"], "mtp");
    EXPECT_NE(e["error"]["message"].get<std::string>().find("'mtp' is 6; expected an integer in [0, 5]"), std::string::npos)
        << e.dump();
  }
  {
    // An MTP model (the bundled one): K beyond MTP's 4 is refused, naming the value.
    ServeProcess s("--device cpu --threads 1 --max-batch 2");
    ASSERT_TRUE(s.ready()) << s.log();
    EXPECT_NE(s.log().find("; MTP on request"), std::string::npos) << s.log();
    const json e = s.post({{"prompt", "def f(x):"}, {"max_tokens", 4}, {"mtp", kBlock}}, 400);
    EXPECT_EQ(e["error"]["param"], "mtp");
    EXPECT_NE(e["error"]["message"].get<std::string>().find("'mtp' is 5; expected 0..4 drafts per round (MTP)"),
              std::string::npos) << e.dump();
  }
  ServeProcess off(serve_args("--spec off"));
  ASSERT_TRUE(off.ready()) << off.log();
  EXPECT_EQ(off.log().find("drafts per round"), std::string::npos) << off.log();
  const json e = off.post({{"prompt", kPrompts[0]}, {"max_tokens", 4}, {"mtp", 2}}, 400);
  EXPECT_EQ(e["error"]["param"], "mtp");
  EXPECT_NE(e["error"]["message"].get<std::string>().find("--spec off"), std::string::npos) << e.dump();
  off.post({{"prompt", kPrompts[0]}, {"max_tokens", 4}, {"mtp", 0}});
  auto [p, a] = off.draft_metrics();
  for (size_t i = 0; i < p.size(); ++i) EXPECT_EQ(p[i] + a[i], 0u);
}

TEST_F(ServerDSpark, BadDraftingOptionsAreErrorsNamingTheValue) {
  struct Case {
    std::string args;
    std::vector<std::string> want;
  } cases[] = {
      {"--mtp 6", {"--mtp 6: expected 0..5 draft tokens per round (the DSpark block size)"}},
      {"--spec dspark --mtp 9", {"--mtp 9: expected 0..5"}},
      {"--spec mtp", {"--spec mtp", "has a DSpark drafter (3 stages, block size 5), not a classic MTP block"}},
      {"--spec off --mtp 2", {"--mtp 2: --spec off drafts nothing"}},
      {"--spec eagle", {"--spec eagle: expected dspark, mtp or off"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    ServeProcess r(serve_args(c.args));
    EXPECT_FALSE(r.ready()) << r.log();
    EXPECT_NE(r.exit_code(), 0) << r.log();
    for (const auto& w : c.want) EXPECT_NE(r.log().find(w), std::string::npos) << w << "\n" << r.log();
  }
  // --mtp within the block: the ready line says so.
  ServeProcess s(serve_args("--mtp 2"));
  ASSERT_TRUE(s.ready()) << s.log();
  EXPECT_NE(s.log().find("; DSpark 2 drafts per round (block 5)"), std::string::npos) << s.log();
}

}  // namespace
