// Structured output's matcher and token masks: documents the schema accepts go through,
// prefixes of them stay alive and nothing else does; random walks over allowed bytes and
// allowed tokens always end in a document that parses and satisfies the schema (checked
// here with nlohmann::json and a restatement of the subset's rules); schemas outside the
// subset are refused naming the keyword.
#include <gtest/gtest.h>

#include <random>

#include "kiln/runtime/json_schema.h"
#include "kiln/runtime/token_mask.h"
#include "json_subset.h"

namespace kiln::runtime {
namespace {

using json = nlohmann::json;

bool matches(const JsonSchema& s, std::string_view text) {
  JsonMatcher m(s);
  return m.advance(text) && m.accepting();
}

const json kPerson = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "role": {"enum": ["admin", "user", 7, null]},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                "required": ["city"], "additionalProperties": false},
    "id": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "ok": {"type": "boolean"}
  },
  "required": ["name", "age"],
  "additionalProperties": false
})");

TEST(JsonSchema, AcceptsDocumentsAndTheirPrefixesOnly) {
  const auto s = JsonSchema::compile(kPerson);
  for (const char* doc : {R"({"name":"Ann","age":3})", R"({"age":-12,"name":"B\u00e9 \"q\""})",
                          R"({"name":"x","age":0,"score":1.5e-3,"tags":["a","b"],"role":"user"})",
                          R"({"name":"x","age":1,"address":{"city":"Oslo","zip":null},"id":"k9","ok":true})",
                          R"({ "name": "x", "age": 2, "role": 7, "id": 44 })", "{\"name\":\"\xc3\xa9\",\"age\":5}"}) {
    EXPECT_TRUE(matches(s, doc)) << doc;
    JsonMatcher m(s);
    for (const char* p = doc; *p; ++p) {
      ASSERT_TRUE(m.advance(static_cast<uint8_t>(*p))) << doc << " at " << (p - doc);
      ASSERT_FALSE(m.dead());
    }
    EXPECT_TRUE(m.closed()) << doc;
  }
  for (const char* bad : {R"({"age":3})",                       // required name missing
                          R"({"name":"a","age":3.5})",           // integer
                          R"({"name":"a","age":3,"x":1})",       // additional property
                          R"({"name":"a","age":3,"age":4})",     // a key twice
                          R"({"name":1,"age":3})", R"({"name":"a","age":3,"role":"root"})",
                          R"({"name":"a","age":3,"tags":["1","2","3","4"]})", R"({"name":"a","age":3,"address":{}})",
                          R"({"name":"a","age":03})", R"({"name":"a\q","age":3})", "{\"name\":\"\xff\",\"age\":3}",
                          R"([1])", R"({"name":"a","age":3} )", R"({"name":"a","age":3}x)", "{\"name\":\"a\nb\",\"age\":1}",
                          R"({  "name":"a","age":3})"}) {
    EXPECT_FALSE(matches(s, bad)) << bad;
  }
}

TEST(JsonSchema, RootScalarsLiteralsAndFreeForm) {
  EXPECT_TRUE(matches(JsonSchema::compile(json{{"type", "integer"}}), "42"));
  EXPECT_FALSE(matches(JsonSchema::compile(json{{"type", "integer"}}), "4.2"));
  const auto e = JsonSchema::compile(json::parse(R"({"enum": [1, 12, "a"]})"));
  EXPECT_TRUE(matches(e, "1"));
  EXPECT_TRUE(matches(e, "12"));
  EXPECT_TRUE(matches(e, "\"a\""));
  EXPECT_FALSE(matches(e, "123"));
  const auto o = JsonSchema::any_object();
  EXPECT_TRUE(matches(o, R"({"a":[1,{"b":null}],"c":"d","e":-0.5E+2})"));
  EXPECT_FALSE(matches(o, "[]"));
  EXPECT_FALSE(matches(o, R"({"a":})"));
}

TEST(JsonSchema, OutsideTheSubsetIsRefusedNamingTheKeyword) {
  for (const auto& [schema, keyword] : std::vector<std::pair<const char*, const char*>>{
           {R"({"type": "string", "pattern": "a+"})", "pattern"},
           {R"({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}})", "format"},
           {R"({"$ref": "#/$defs/x"})", "$ref"},
           {R"({"type": "object", "additionalProperties": {"type": "string"}})", "additionalProperties"},
           {R"({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]})", "required"},
           {R"({"type": "frob"})", "type"},
           {R"({"enum": []})", "enum"},
           {R"({"type": "string", "minLength": 2})", "minLength"}}) {
    try {
      JsonSchema::compile(json::parse(schema));
      ADD_FAILURE() << "accepted " << schema;
    } catch (const JsonSchemaError& err) {
      EXPECT_EQ(err.keyword(), keyword) << schema << ": " << err.what();
    }
  }
}

// Random walks: at every step pick a random allowed token (or end when accepting, with
// some probability); every walk ends in a valid document within the bounds.
TEST(JsonSchema, RandomTokenWalksEndInValidDocuments) {
  std::vector<std::string> vocab;
  for (int c = 0x20; c < 0x7F; ++c) vocab.emplace_back(1, static_cast<char>(c));
  for (const char* t : {"{\"", "\":", "\",\"", "\"}", "name", "age", "tags", "\":[\"", "true", "null", "12", "-0.",
                        "e+5", "\\u00e9", "\xc3\xa9", "\xe2\x82\xac", "  ", "\n", "role", "\"admin\"", "address", "city",
                        "\xc3", "\xa9x", "a\"b", "x\\n", "\x7f", "long plain text with spaces"}) {
    vocab.emplace_back(t);
  }
  vocab.emplace_back("");  // a special token: never allowed
  const TokenTrie trie(vocab);
  std::mt19937_64 g(5);
  for (const json& schema : {kPerson, json::parse(R"({"type":"array","items":{"enum":[1,2,"x"]},"minItems":2})"),
                             json::parse(R"({"anyOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},{"type":"string"}]})")}) {
    const auto s = JsonSchema::compile(schema);
    int done = 0;
    for (int walk = 0; walk < 60; ++walk) {
      JsonMatcher m(s);
      std::string text;
      std::vector<uint8_t> mask;
      for (int step = 0; step < 3000; ++step) {
        if (m.accepting() && (m.closed() || g() % 4 == 0)) break;
        trie.mask(m, mask);
        std::vector<size_t> ok;
        for (size_t i = 0; i < mask.size(); ++i) {
          if (mask[i]) ok.push_back(i);
        }
        ASSERT_FALSE(ok.empty()) << schema.dump() << " stuck after " << text;
        // The trie's mask (with its plain-string shortcut) equals asking the matcher about
        // every token's bytes.
        for (size_t id = 0; id < vocab.size(); ++id) {
          JsonMatcher t = m;
          const bool want = !vocab[id].empty() && t.advance(vocab[id]);
          ASSERT_EQ(mask[id] != 0, want) << "token " << id << " after " << text;
        }
        // Prefer closing tokens now and then so walks end.
        const std::string& tok = vocab[ok[g() % ok.size()]];
        ASSERT_TRUE(m.advance(tok));
        text += tok;
      }
      if (!m.accepting()) continue;  // ran out of steps (bounded, but long)
      ++done;
      json v;
      ASSERT_NO_THROW(v = json::parse(text)) << "[" << text << "]";
      EXPECT_TRUE(test::json_subset_valid(v, schema)) << schema.dump() << "\n" << text;
    }
    EXPECT_GE(done, 40) << schema.dump();
  }
}

}  // namespace
}  // namespace kiln::runtime
