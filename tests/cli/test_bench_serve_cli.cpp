// `kiln bench --serve`, the HTTP load generator, through the real binary: against `kiln
// serve` started in-process on the bundled trained model (models/kiln-dsv4-mini, CPU), and
// against a closed port.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/kiln_process.h"

namespace {

using kiln::test::kiln_run;

const std::string kModel = std::string(KILN_TEST_DATA_DIR) + "/../../models/kiln-dsv4-mini";

// The last output line that is a JSON object (--json prints it after the table).
nlohmann::json last_json_line(const std::string& text) {
  std::istringstream lines(text);
  std::string line, last;
  while (std::getline(lines, line))
    if (!line.empty() && line.front() == '{') last = line;
  return nlohmann::json::parse(last);
}

// A loopback port nothing listens on: bound, then closed.
int closed_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ADD_FAILURE() << "cannot bind a loopback socket";
  }
  close(fd);
  return ntohs(a.sin_port);
}

TEST(BenchServeCli, DrivesTheInProcessServerAndReportsEveryLevel) {
  auto r = kiln_run("bench --serve --model " + kModel +
                    " --device cpu --concurrency 1,4 --prompt-tokens 32 --output-tokens 8 --json");
  ASSERT_EQ(r.code, 0) << r.text;
  const auto j = last_json_line(r.text);
  EXPECT_EQ(j["in_process"], true);
  EXPECT_EQ(j["prompt_tokens"], 32);
  EXPECT_EQ(j["output_tokens"], 8);
  // The vocabulary comes from kiln's /v1/models (vocab_size).
  EXPECT_EQ(j["vocab"], 4096);
  EXPECT_EQ(j["vocab_from"], "/v1/models");
  EXPECT_EQ(j["model"], "kiln-dsv4-mini");
  ASSERT_EQ(j["levels"].size(), 2u);
  const int want[] = {1, 4};
  for (size_t i = 0; i < 2; ++i) {
    const auto& l = j["levels"][i];
    SCOPED_TRACE(l.dump());
    const int c = want[i];
    EXPECT_EQ(l["concurrency"], c);
    EXPECT_EQ(l["requests"], 2 * c);  // default: 2 x the concurrency
    EXPECT_EQ(l["output_tokens"], 2 * c * 8);
    EXPECT_GT(l["wall_s"].get<double>(), 0.0);
    EXPECT_GT(l["output_tok_s"].get<double>(), 0.0);
    EXPECT_NEAR(l["output_tok_s"].get<double>(), l["output_tokens"].get<double>() / l["wall_s"].get<double>(), 1e-6);
    for (const char* m : {"ttft_ms", "tpot_ms"}) {
      ASSERT_TRUE(l[m].is_object()) << m;
      EXPECT_GT(l[m]["p50"].get<double>(), 0.0) << m;
      EXPECT_GE(l[m]["p99"].get<double>(), l[m]["p50"].get<double>()) << m;
      EXPECT_GE(l[m]["max"].get<double>(), l[m]["p99"].get<double>()) << m;
    }
    // kiln's /metrics: every token took a scheduler step, and a step decodes at most one
    // token per running stream.
    ASSERT_TRUE(l["engine_steps"].is_number());
    EXPECT_GT(l["engine_steps"].get<double>(), 0.0);
    EXPECT_LE(l["output_tokens_per_step"].get<double>(), c + 1e-9);
    EXPECT_NE(r.text.find("\n| " + std::to_string(c) + " | " + std::to_string(2 * c) + " | "), std::string::npos)
        << "no table row";
  }
  EXPECT_NE(r.text.find("| concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |"),
            std::string::npos);
}

TEST(BenchServeCli, RequestsPerLevelAreNeverFewerThanTheConcurrency) {
  auto r = kiln_run("bench --serve --model " + kModel +
                    " --device cpu --concurrency 3 --requests 2 --prompt-tokens 8 --output-tokens 3 --warmup 0 --json");
  ASSERT_EQ(r.code, 0) << r.text;
  const auto l = last_json_line(r.text)["levels"][0];
  EXPECT_EQ(l["requests"], 3);
  EXPECT_EQ(l["output_tokens"], 9);
}

TEST(BenchServeCli, AClosedPortFailsNamingTheUrl) {
  const std::string url = "http://127.0.0.1:" + std::to_string(closed_port());
  auto r = kiln_run("bench --serve --url " + url + " --concurrency 1 --prompt-tokens 4 --output-tokens 2");
  EXPECT_NE(r.code, 0) << r.text;
  EXPECT_NE(r.text.find(url), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("could not connect"), std::string::npos) << r.text;
}

TEST(BenchServeCli, BadCommandLinesAreRefused) {
  auto r = kiln_run("bench --serve --concurrency 1");
  EXPECT_NE(r.code, 0) << r.text;
  EXPECT_NE(r.text.find("exactly one of --url"), std::string::npos) << r.text;
  r = kiln_run("bench --serve --url http://127.0.0.1:1 --concurrency 1,0");
  EXPECT_NE(r.code, 0) << r.text;
  EXPECT_NE(r.text.find("--concurrency"), std::string::npos) << r.text;
  // A request past the server's context is refused before any is sent.
  r = kiln_run("bench --serve --model " + kModel + " --device cpu --prompt-tokens 2048 --output-tokens 8");
  EXPECT_NE(r.code, 0) << r.text;
  EXPECT_NE(r.text.find("exceed the server's context of 2048"), std::string::npos) << r.text;
}

}  // namespace
