// Structured output: the JSON Schema subset of OpenAI's structured outputs, compiled for
// constrained decoding, and an incremental matcher over the bytes of the text generated so
// far. A byte is accepted only if the text stays a prefix of a document the schema accepts,
// so sampling only accepted tokens (token_mask.h) ends in a valid document.
//
// Supported: type (object, array, string, number, integer, boolean, null, or a list of
// them), properties, required, additionalProperties (false, or true), items, minItems,
// maxItems, enum, const, anyOf, and the annotations title, description, default, $schema,
// strict. Anything else is refused, naming the keyword. An object with no `properties`
// takes any keys; with `properties` and no `additionalProperties: true`, only those.
// To keep every document finite, the matcher also bounds what the schema leaves open:
// strings to 512 characters, numbers to 15 integer, 8 fraction and 2 exponent digits (a
// double holds them), arrays without
// maxItems to 64 items, free-form nesting (`json_object`, untyped values) to depth 8, and
// whitespace to one byte at a time. Strings and keys it writes use no escapes beyond
// JSON's own; enum and const values are matched in their compact JSON spelling.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::runtime {

// A schema outside the subset: `keyword` names the offending keyword or path.
class JsonSchemaError : public std::runtime_error {
 public:
  JsonSchemaError(std::string keyword, const std::string& message) : std::runtime_error(message), keyword_(std::move(keyword)) {}
  const std::string& keyword() const { return keyword_; }

 private:
  std::string keyword_;
};

struct JsonNode {
  enum class Kind : uint8_t { Any, Object, Array, String, Number, Integer, Boolean, Null, Literals, AnyOf };
  Kind kind = Kind::Any;
  int depth = 0;  // free-form nesting budget (Any)
  // Object: properties by their JSON-encoded key (without quotes), required flags, whether
  // other keys are allowed (with free-form values).
  std::vector<std::string> keys;
  std::vector<int> key_nodes;
  std::vector<bool> required;
  bool additional = false;
  // Array
  int items = -1;
  int min_items = 0, max_items = 64;
  // Literals: compact JSON texts (enum, const)
  std::vector<std::string> literals;
  // AnyOf
  std::vector<int> alts;
};

class JsonSchema {
 public:
  // Throws JsonSchemaError for what the subset does not cover or a malformed schema.
  static JsonSchema compile(const nlohmann::json& schema);
  // response_format {"type": "json_object"}: any JSON object.
  static JsonSchema any_object();

  const std::vector<JsonNode>& nodes() const { return nodes_; }
  int root() const { return root_; }

 private:
  int add(JsonNode n);
  int compile_node(const nlohmann::json& s, const std::string& path);
  int any_node(int depth);
  std::vector<JsonNode> nodes_;
  int root_ = -1;
};

// The incremental matcher: the set of parser states the bytes so far can be in (several
// while anyOf alternatives or literals still agree). Cheap to copy.
class JsonMatcher {
 public:
  explicit JsonMatcher(const JsonSchema& schema);
  // Consumes one byte; false (state unchanged) if no document the schema accepts has the
  // text so far followed by it.
  bool advance(uint8_t byte);
  bool advance(std::string_view bytes);  // all or nothing
  // The text so far is a whole document (generation may end here).
  bool accepting() const;
  // Nothing can follow (the document is closed): only the end may come.
  bool closed() const;
  bool dead() const { return stacks_.empty(); }
  // Inside a string's plain text in every state, with room for `chars` more characters:
  // then any run of plain string characters (token_mask.h's "plain" tokens) is accepted.
  bool in_plain_string(int chars) const;

  struct Frame {
    uint8_t type = 0, phase = 0;
    int16_t node = -1;
    int32_t a = 0, b = 0;    // per type: counts, positions, indices
    uint64_t seen = 0;       // objects: properties given (up to 64)
    bool operator==(const Frame&) const = default;
  };
  using Stack = std::vector<Frame>;

 private:
  void step(const Stack& s, uint8_t c, std::vector<Stack>& out) const;
  void start_value(Stack s, int node, uint8_t c, std::vector<Stack>& out) const;
  void complete(Stack s, uint8_t c, bool consumed, std::vector<Stack>& out) const;
  bool could_end(const Stack& s) const;
  const JsonSchema* schema_;
  std::vector<Stack> stacks_;
};

}  // namespace kiln::runtime
