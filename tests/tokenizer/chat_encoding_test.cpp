// DeepSeek-V4 chat encoding against DeepSeek's encoding_dsv4.py: tests/data/tokenizer/
// chat_cases.json holds conversations, options and the reference's prompt (or the
// exception it raised), written by tools/tokenizer_chat_reference.py.
#include "kiln/tokenizer/chat_encoding.h"

#include <gmock/gmock.h>

#include "kiln/core/error.h"
#include "test_support.h"

namespace kiln::tokenizer::test {
namespace {

using nlohmann::ordered_json;
namespace ds4 = kiln::tokenizer::dsv4;

std::string run_case(const ordered_json& c) {
  ds4::ChatOptions o;
  o.thinking_mode = ds4::thinking_mode_from_string(c["thinking_mode"].get<std::string>());
  if (c.contains("drop_thinking")) o.drop_thinking = c["drop_thinking"].get<bool>();
  if (c.contains("add_default_bos_token")) o.add_bos = c["add_default_bos_token"].get<bool>();
  if (c.contains("reasoning_effort") && !c["reasoning_effort"].is_null())
    o.reasoning_effort = ds4::reasoning_effort_from_string(c["reasoning_effort"].get<std::string>());
  return ds4::encode_messages(c["messages"], o, c.contains("context") ? c["context"] : ordered_json());
}

TEST(ChatEncoding, PromptsMatchDeepSeekReference) {
  const auto data = read_json(data_dir() / "chat_cases.json");
  size_t n = 0, refused = 0;
  for (const auto& c : data["encode"]) {
    const std::string name = c["name"].get<std::string>();
    if (c.contains("error")) {
      ++refused;
      EXPECT_THROW(run_case(c), Error) << name << " (reference raised " << c["error"].get<std::string>() << ")";
      continue;
    }
    try {
      EXPECT_EQ(run_case(c), c["expected"].get<std::string>()) << name;
    } catch (const Error& e) {
      ADD_FAILURE() << name << ": " << e.what();
    }
    ++n;
  }
  EXPECT_GE(n, 90u);
  EXPECT_GE(refused, 7u);
}

TEST(ChatEncoding, CompletionParsingMatchesDeepSeekReference) {
  const auto data = read_json(data_dir() / "chat_cases.json");
  size_t n = 0;
  for (const auto& c : data["parse"]) {
    const std::string text = c["text"].get<std::string>();
    const auto mode = ds4::thinking_mode_from_string(c["thinking_mode"].get<std::string>());
    if (c.contains("error")) {
      EXPECT_THROW(ds4::parse_completion(text, mode), Error) << text;
    } else {
      try {
        EXPECT_EQ(ds4::parse_completion(text, mode), c["expected"]) << text;
      } catch (const Error& e) {
        ADD_FAILURE() << text << ": " << e.what();
      }
    }
    ++n;
  }
  EXPECT_GE(n, 17u);
}

TEST(ChatEncoding, PythonJsonDumps) {
  const auto j = ordered_json::parse(
      R"({"b": [1, 2.5, -0.0, 1e16, 1e15, 0.0001, 1e-5, 123456789.125], "a": {"s": "q\"\\\n\t\u0001é😀"}, "n": null, "t": true})");
  EXPECT_EQ(ds4::python_json_dumps(j),
            "{\"b\": [1, 2.5, -0.0, 1e+16, 1000000000000000.0, 0.0001, 1e-05, 123456789.125], "
            "\"a\": {\"s\": \"q\\\"\\\\\\n\\t\\u0001é😀\"}, \"n\": null, \"t\": true}");
  EXPECT_EQ(ds4::python_json_dumps(ordered_json::array()), "[]");
  EXPECT_EQ(ds4::python_json_dumps(ordered_json::object()), "{}");
}

TEST(ChatEncoding, RefusalsNameTheField) {
  try {
    ds4::encode_messages(ordered_json::parse(R"([{"role": "user", "content": "x"}, {"role": "robot"}])"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    EXPECT_THAT(e.what(), ::testing::HasSubstr("messages[1].role"));
  }
  EXPECT_THROW(ds4::encode_messages(ordered_json::parse(R"({"role": "user"})")), Error);
  EXPECT_THROW(ds4::thinking_mode_from_string("fast"), Error);
  EXPECT_THROW(ds4::reasoning_effort_from_string("low"), Error);
}

}  // namespace
}  // namespace kiln::tokenizer::test
