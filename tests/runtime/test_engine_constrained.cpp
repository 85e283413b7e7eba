// Structured output through the engine on a random-weight model whose vocabulary is given
// bytes here (printable ASCII one per id, some multi-byte JSON pieces, the rest special):
// every sampled output is a document the schema accepts, ending with the end token, and
// speculative decoding under the same masks gives exactly the constrained plain tokens.
#include <gtest/gtest.h>

#include <filesystem>

#include "json_subset.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"

namespace kiln::runtime {
namespace {

using json = nlohmann::json;

const std::filesystem::path kModel = std::filesystem::path(KILN_TEST_DATA_DIR) / "fixtures" / "tiny_b" / "native";

// ids 0..94: one printable ASCII byte each; then JSON pieces; the last id ends the text.
std::shared_ptr<TokenConstraint> constraint_for(const json& schema, int64_t vocab) {
  std::vector<std::string> bytes(static_cast<size_t>(vocab));
  for (int c = 0x20; c < 0x7F; ++c) bytes[static_cast<size_t>(c - 0x20)] = std::string(1, static_cast<char>(c));
  const char* pieces[] = {"{\"", "\":", "\",\"", "\"}", "name", "kind", "true", "false", "null", "12", "\"]", "[\"",
                          "\xc3\xa9", "},{", "\":\"", "0.5"};
  for (size_t i = 0; i < std::size(pieces); ++i) bytes[95 + i] = pieces[i];
  auto c = std::make_shared<TokenConstraint>();
  c->schema = std::make_shared<JsonSchema>(JsonSchema::compile(schema));
  c->trie = std::make_shared<TokenTrie>(bytes);
  c->end_tokens = {static_cast<int32_t>(vocab - 1)};
  return c;
}

std::string text_of(const TokenConstraint& c, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t t : ids) {
    if (t != c.end_tokens[0]) s += c.trie->bytes(t);
  }
  return s;
}

std::vector<std::shared_ptr<RequestHandle>> run(Engine& e, const std::shared_ptr<TokenConstraint>& c, int n, float t,
                                                int mtp) {
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    r.prompt = {5, 17, 42, static_cast<int32_t>(i % 90)};
    r.max_tokens = 3000;
    r.sampling.temperature = t;
    r.sampling.seed = 100 + static_cast<uint64_t>(i);
    r.stop_tokens = c->end_tokens;
    r.constraint = c;
    r.mtp = mtp;
    hs.push_back(e.submit(r));
  }
  for (auto& h : hs) {
    while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(20));
  }
  return hs;
}

const json kSchemas[] = {
    json::parse(R"({"type":"object","properties":{"name":{"type":"string"},"kind":{"enum":["a","b",1,null]},
                    "n":{"type":"integer"},"ok":{"type":"boolean"}},"required":["name","kind"],"additionalProperties":false})"),
    json::parse(R"({"type":"array","items":{"anyOf":[{"type":"number"},{"type":"object","properties":{"x":{"type":"null"}},"required":["x"]}]},"minItems":1,"maxItems":4})"),
    json::parse(R"({"type":"object","properties":{"tags":{"type":"array","items":{"type":"string"},"maxItems":2}},"required":["tags"]})"),
};

TEST(EngineConstrained, SampledOutputsAreValidDocuments) {
  auto m = load_model(kModel, 2, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 8, .max_context = 8192});
  EngineOptions eo;
  eo.max_batch = 8;
  eo.max_waiting = 64;
  eo.mtp = 2;
  Engine e(b, eo);
  for (const json& schema : kSchemas) {
    const auto c = constraint_for(schema, m->config.vocab_size);
    for (int mtp : {0, 2}) {
      for (const auto& h : run(e, c, 8, 1.0f, mtp)) {
        ASSERT_EQ(h->finish_reason(), FinishReason::Stop) << schema.dump() << " " << h->error();
        const auto toks = h->tokens();
        ASSERT_EQ(toks.back(), c->end_tokens[0]);
        const std::string text = text_of(*c, toks);
        json v;
        ASSERT_NO_THROW(v = json::parse(text)) << text;
        EXPECT_TRUE(test::json_subset_valid(v, schema)) << schema.dump() << "\n" << text;
      }
    }
  }
}

TEST(EngineConstrained, SpeculativeGreedyEqualsPlainGreedyUnderTheMask) {
  auto m = load_model(kModel, 2, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 4, .max_context = 8192});
  EngineOptions eo;
  eo.max_batch = 4;
  eo.mtp = 3;
  Engine e(b, eo);
  for (const json& schema : kSchemas) {
    const auto c = constraint_for(schema, m->config.vocab_size);
    const auto plain = run(e, c, 3, 0.0f, 0);
    for (int mtp : {1, 3}) {
      const auto spec = run(e, c, 3, 0.0f, mtp);
      for (size_t i = 0; i < plain.size(); ++i) {
        EXPECT_EQ(spec[i]->tokens(), plain[i]->tokens()) << schema.dump() << " mtp " << mtp << " request " << i;
      }
    }
    json v;
    EXPECT_NO_THROW(v = json::parse(text_of(*c, plain[0]->tokens()))) << text_of(*c, plain[0]->tokens());
  }
}

}  // namespace
}  // namespace kiln::runtime
