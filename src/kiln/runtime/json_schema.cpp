#include "kiln/runtime/json_schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace kiln::runtime {

namespace {

using json = nlohmann::json;
using Kind = JsonNode::Kind;

constexpr int kMaxString = 512, kMaxIntDigits = 15, kMaxFracDigits = 8, kMaxExpDigits = 2, kMaxFreeKey = 64;
constexpr int kFreeDepth = 8, kMaxStacks = 64;

[[noreturn]] void refuse(const std::string& keyword, const std::string& path, const std::string& why) {
  throw JsonSchemaError(keyword, fmt::format("response_format schema at {}: {}", path.empty() ? "the root" : path, why));
}

bool is_ws(uint8_t c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

}  // namespace

int JsonSchema::add(JsonNode n) {
  nodes_.push_back(std::move(n));
  return static_cast<int>(nodes_.size()) - 1;
}

// A free-form value nested at most `depth` containers deep; its `items` is the free-form
// node one level down (values inside its objects and arrays), -1 at depth 0.
int JsonSchema::any_node(int depth) {
  JsonNode n;
  n.kind = Kind::Any;
  n.depth = depth;
  n.items = depth > 0 ? any_node(depth - 1) : -1;
  return add(std::move(n));
}

JsonSchema JsonSchema::any_object() {
  JsonSchema s;
  JsonNode o;
  o.kind = Kind::Object;
  o.additional = true;
  o.items = s.any_node(kFreeDepth - 1);
  s.root_ = s.add(std::move(o));
  return s;
}

JsonSchema JsonSchema::compile(const json& schema) {
  JsonSchema s;
  s.root_ = s.compile_node(schema, "");
  return s;
}

int JsonSchema::compile_node(const json& s, const std::string& path) {
  if (s.is_boolean() && s.get<bool>()) return any_node(kFreeDepth);
  if (!s.is_object()) refuse("schema", path, "a schema must be a JSON object");
  static const std::set<std::string> kKnown = {"type",  "properties", "required", "additionalProperties", "items",
                                               "enum",  "const",      "anyOf",    "minItems",             "maxItems",
                                               "title", "description", "default", "$schema",              "strict"};
  for (const auto& [k, v] : s.items()) {
    if (!kKnown.count(k)) refuse(k, path, fmt::format("the keyword '{}' is not in the supported subset", k));
  }
  if (s.contains("const")) {
    JsonNode n;
    n.kind = Kind::Literals;
    n.literals.push_back(s["const"].dump());
    return add(std::move(n));
  }
  if (s.contains("enum")) {
    const json& e = s["enum"];
    if (!e.is_array() || e.empty()) refuse("enum", path, "'enum' must be a non-empty array");
    JsonNode n;
    n.kind = Kind::Literals;
    for (const auto& v : e) {
      if (v.is_object() || v.is_array()) refuse("enum", path, "'enum' values must be strings, numbers, booleans or null");
      n.literals.push_back(v.dump());
    }
    return add(std::move(n));
  }
  if (s.contains("anyOf")) {
    const json& a = s["anyOf"];
    if (!a.is_array() || a.empty()) refuse("anyOf", path, "'anyOf' must be a non-empty array of schemas");
    if (s.contains("type")) refuse("anyOf", path, "'anyOf' beside 'type' is not supported");
    std::vector<int> alts;
    for (size_t i = 0; i < a.size(); ++i) alts.push_back(compile_node(a[i], fmt::format("{}/anyOf/{}", path, i)));
    JsonNode n;
    n.kind = Kind::AnyOf;
    n.alts = std::move(alts);
    return add(std::move(n));
  }
  if (!s.contains("type")) {
    for (const char* k : {"properties", "required", "additionalProperties", "items", "minItems", "maxItems"}) {
      if (s.contains(k)) refuse("type", path, fmt::format("'{}' needs a 'type'", k));
    }
    return any_node(kFreeDepth);
  }
  const json& t = s["type"];
  if (t.is_array()) {  // ["string", "null"]: one alternative per type
    if (t.empty()) refuse("type", path, "'type' is an empty list");
    JsonNode n;
    n.kind = Kind::AnyOf;
    for (const auto& one : t) {
      json sub = s;
      sub["type"] = one;
      n.alts.push_back(compile_node(sub, path));
    }
    return add(std::move(n));
  }
  if (!t.is_string()) refuse("type", path, "'type' must be a string or a list of strings");
  const std::string type = t.get<std::string>();
  JsonNode n;
  if (type == "object") {
    n.kind = Kind::Object;
    n.depth = kFreeDepth;
    const json* props = s.contains("properties") ? &s["properties"] : nullptr;
    if (props && !props->is_object()) refuse("properties", path, "'properties' must be an object");
    if (props && props->size() > 64) refuse("properties", path, "more than 64 properties in one object");
    std::vector<std::string> req;
    if (s.contains("required")) {
      if (!s["required"].is_array()) refuse("required", path, "'required' must be an array of names");
      for (const auto& r : s["required"]) {
        if (!r.is_string()) refuse("required", path, "'required' must be an array of names");
        req.push_back(r.get<std::string>());
      }
    }
    n.additional = !props;
    n.items = any_node(kFreeDepth - 1);  // the values of keys outside `properties`
    if (s.contains("additionalProperties")) {
      const json& ap = s["additionalProperties"];
      if (!ap.is_boolean()) refuse("additionalProperties", path, "only additionalProperties: false or true is supported");
      // true with properties: other keys are allowed but never written (a valid subset).
      if (!props) n.additional = ap.get<bool>();
    }
    if (props) {
      for (const auto& [k, v] : props->items()) {
        const std::string encoded = json(k).dump();
        n.keys.push_back(encoded.substr(1, encoded.size() - 2));
        n.required.push_back(std::find(req.begin(), req.end(), k) != req.end());
        n.key_nodes.push_back(-1);
      }
    }
    for (const auto& r : req) {
      if (!props || !props->contains(r)) refuse("required", path, fmt::format("required property '{}' is not in 'properties'", r));
    }
    const int id = add(std::move(n));
    if (props) {
      size_t i = 0;
      for (const auto& [k, v] : props->items()) {
        const int child = compile_node(v, path + "/properties/" + k);
        nodes_[static_cast<size_t>(id)].key_nodes[i++] = child;
      }
    }
    return id;
  }
  if (type == "array") {
    n.kind = Kind::Array;
    n.min_items = s.contains("minItems") ? s["minItems"].get<int>() : 0;
    n.max_items = s.contains("maxItems") ? s["maxItems"].get<int>() : 64;
    if (n.min_items < 0 || n.max_items < n.min_items) refuse("minItems", path, "minItems must be between 0 and maxItems");
    const int id = add(std::move(n));
    const int items = s.contains("items") ? compile_node(s["items"], path + "/items") : any_node(kFreeDepth);
    nodes_[static_cast<size_t>(id)].items = items;
    return id;
  }
  if (type == "string") n.kind = Kind::String;
  else if (type == "number") n.kind = Kind::Number;
  else if (type == "integer") n.kind = Kind::Integer;
  else if (type == "boolean") n.kind = Kind::Boolean;
  else if (type == "null") n.kind = Kind::Null;
  else refuse("type", path, fmt::format("unknown type '{}'", type));
  for (const char* k : {"properties", "required", "additionalProperties", "items", "minItems", "maxItems"}) {
    if (s.contains(k)) refuse(k, path, fmt::format("'{}' on a {} schema", k, type));
  }
  return add(std::move(n));
}

// ---- matcher ----------------------------------------------------------------------------

namespace {

enum Type : uint8_t { kValue, kObject, kArray, kString, kNumber, kLiteral, kKey };
enum ObjPhase : uint8_t { kOpen, kColon, kAfterValue, kComma };  // objects and arrays (no colon)
// Numbers: after '-', after a leading 0, in the integer digits, after '.', in the fraction,
// after e/E, after the exponent's sign, in the exponent digits.
enum NumPhase : uint8_t { kMinus, kZero, kInt, kDot, kFrac, kE, kESign, kExp };
// Strings: plain, after '\', in \uXXXX (4 - remaining), UTF-8 continuations expected.
enum StrPhase : uint8_t { kPlain, kEscape, kHex1, kHex2, kHex3, kHex4, kCont1, kCont2, kCont3 };

constexpr std::string_view kWords[] = {"true", "false", "null"};

bool is_hex(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

JsonMatcher::JsonMatcher(const JsonSchema& schema) : schema_(&schema) {
  Frame f;
  f.type = kValue;
  f.node = static_cast<int16_t>(schema.root());
  stacks_.push_back({f});
}

bool JsonMatcher::advance(uint8_t c) {
  std::vector<Stack> next;
  for (const Stack& s : stacks_) step(s, c, next);
  // Keep distinct states only, and a bounded number of them.
  std::vector<Stack> unique;
  for (auto& s : next) {
    if (std::find(unique.begin(), unique.end(), s) == unique.end()) unique.push_back(std::move(s));
    if (static_cast<int>(unique.size()) == kMaxStacks) break;
  }
  if (unique.empty()) return false;
  stacks_ = std::move(unique);
  return true;
}

bool JsonMatcher::advance(std::string_view bytes) {
  JsonMatcher copy = *this;
  for (char ch : bytes) {
    if (!copy.advance(static_cast<uint8_t>(ch))) return false;
  }
  *this = std::move(copy);
  return true;
}

bool JsonMatcher::could_end(const Stack& s) const {
  if (s.empty()) return true;
  if (s.size() != 1) return false;
  const Frame& f = s.back();
  if (f.type == kNumber) return f.phase == kZero || f.phase == kInt || f.phase == kFrac || f.phase == kExp;
  if (f.type == kLiteral) {
    const auto& lit = f.node >= 0 ? schema_->nodes()[static_cast<size_t>(f.node)].literals[static_cast<size_t>(f.a)]
                                  : std::string(kWords[f.a]);
    return static_cast<size_t>(f.b) == lit.size();
  }
  return false;
}

bool JsonMatcher::in_plain_string(int chars) const {
  if (stacks_.empty()) return false;
  for (const Stack& s : stacks_) {
    if (s.empty()) return false;
    const Frame& f = s.back();
    if (f.type != kString || f.phase != kPlain || f.a + chars > kMaxString) return false;
  }
  return true;
}

bool JsonMatcher::accepting() const {
  return std::any_of(stacks_.begin(), stacks_.end(), [&](const Stack& s) { return could_end(s); });
}

bool JsonMatcher::closed() const {
  return std::all_of(stacks_.begin(), stacks_.end(), [](const Stack& s) { return s.empty(); });
}

// A value of `node` starts with byte c (whitespace before it is the caller's business).
// Each kind opens its frame through the same starters; a free-form value (Any) tries them
// all.
void JsonMatcher::start_value(Stack s, int node, uint8_t c, std::vector<Stack>& out) const {
  const JsonNode& n = schema_->nodes()[static_cast<size_t>(node)];
  auto push = [&](Frame fr) {
    Stack t = s;
    t.push_back(fr);
    out.push_back(std::move(t));
  };
  auto frame = [&](uint8_t type) {
    Frame f;
    f.node = static_cast<int16_t>(node);
    f.type = type;
    return f;
  };
  auto container = [&](uint8_t open, uint8_t type) {
    if (c != open) return;
    Frame f = frame(type);
    f.phase = kOpen;
    push(f);
  };
  auto string = [&] {
    if (c == '"') push(frame(kString));
  };
  auto number = [&] {
    if (c != '-' && !(c >= '0' && c <= '9')) return;
    Frame f = frame(kNumber);
    f.phase = c == '-' ? kMinus : c == '0' ? kZero : kInt;
    f.a = c >= '1' && c <= '9' ? 1 : 0;
    push(f);
  };
  auto words = [&](int first, int last) {  // kWords[first .. last)
    for (int w = first; w < last; ++w) {
      if (c != static_cast<uint8_t>(kWords[w][0])) continue;
      Frame f = frame(kLiteral);
      f.node = -1;
      f.a = w;
      f.b = 1;
      push(f);
    }
  };
  switch (n.kind) {
    case Kind::AnyOf:
      for (int alt : n.alts) start_value(s, alt, c, out);
      return;
    case Kind::Any:
      // Free-form: any JSON value, containers only while the nesting budget lasts.
      if (n.items >= 0) {
        container('{', kObject);
        container('[', kArray);
      }
      string();
      number();
      words(0, 3);
      return;
    case Kind::Object: container('{', kObject); return;
    case Kind::Array: container('[', kArray); return;
    case Kind::String: string(); return;
    case Kind::Number:
    case Kind::Integer: number(); return;
    case Kind::Boolean: words(0, 2); return;
    case Kind::Null: words(2, 3); return;
    case Kind::Literals:
      for (size_t i = 0; i < n.literals.size(); ++i) {
        if (static_cast<uint8_t>(n.literals[i][0]) != c) continue;
        Frame f = frame(kLiteral);
        f.a = static_cast<int32_t>(i);
        f.b = 1;
        push(f);
      }
      return;
  }
}

// The top frame of s is complete; pop it and tell its parent. If !consumed, byte c (which
// ended a number or literal) goes on to the parent.
void JsonMatcher::complete(Stack s, uint8_t c, bool consumed, std::vector<Stack>& out) const {
  s.pop_back();
  if (!s.empty()) {
    Frame& p = s.back();
    if (p.type == kObject) {
      p.phase = kAfterValue;
      p.b = 0;
    } else if (p.type == kArray) {
      p.phase = kAfterValue;
      p.b = 0;
      ++p.a;
    }
  }
  if (consumed) {
    out.push_back(std::move(s));
  } else if (!s.empty()) {
    step(s, c, out);
  }
}

void JsonMatcher::step(const Stack& s, uint8_t c, std::vector<Stack>& out) const {
  if (s.empty()) return;  // a closed document takes nothing more
  const Frame& f = s.back();
  const auto& nodes = schema_->nodes();
  auto with = [&](Frame nf) {
    Stack t = s;
    t.back() = nf;
    return t;
  };
  switch (f.type) {
    case kValue: {
      if (is_ws(c)) {
        if (f.a < 1) {
          Frame nf = f;
          ++nf.a;
          out.push_back(with(nf));
        }
        return;
      }
      Stack t = s;
      t.pop_back();
      start_value(std::move(t), f.node, c, out);
      return;
    }
    case kObject: {
      const JsonNode* n = &nodes[static_cast<size_t>(f.node)];
      const bool free_form = n->kind == Kind::Any;
      const bool additional = free_form || n->additional;
      const size_t np = free_form ? 0 : n->keys.size();
      uint64_t unseen = 0;
      for (size_t i = 0; i < np; ++i) {
        if (!(f.seen >> i & 1)) unseen |= uint64_t{1} << i;
      }
      bool required_left = false;
      for (size_t i = 0; i < np; ++i) required_left |= n->required[i] && (unseen >> i & 1);
      if (is_ws(c)) {
        if (f.b < 1 && f.phase != kColon) {
          Frame nf = f;
          ++nf.b;
          out.push_back(with(nf));
        }
        return;
      }
      if ((f.phase == kOpen || f.phase == kComma) && c == '"') {
        // A key: a property not given yet, or (free-form) any key.
        if (unseen) {
          Frame k;
          k.type = kKey;
          k.node = f.node;
          k.seen = unseen;
          Stack t = s;
          t.push_back(k);
          out.push_back(std::move(t));
        }
        if (additional && np == 0) {
          Frame k;
          k.type = kKey;
          k.phase = 1;  // free key
          k.node = f.node;
          Stack t = s;
          t.push_back(k);
          out.push_back(std::move(t));
        }
        return;
      }
      if ((f.phase == kOpen || f.phase == kAfterValue) && c == '}') {
        if (!required_left) complete(s, c, true, out);
        return;
      }
      if (f.phase == kAfterValue && c == ',') {
        if (unseen || (additional && np == 0)) {
          Frame nf = f;
          nf.phase = kComma;
          nf.b = 0;
          out.push_back(with(nf));
        }
        return;
      }
      if (f.phase == kColon && c == ':') {
        // The value of the property just named (a), or a free-form value.
        Frame nf = f;
        nf.phase = kAfterValue;  // set when the value completes; the value frame goes on top
        Stack t = with(nf);
        Frame v;
        v.type = kValue;
        // The property's schema, or a free-form value one level down.
        v.node = static_cast<int16_t>(f.a >= 0 ? n->key_nodes[static_cast<size_t>(f.a)] : n->items);
        t.push_back(v);
        out.push_back(std::move(t));
      }
      return;
    }
    case kKey: {
      Stack parent = s;
      parent.pop_back();
      Frame& obj = parent.back();
      const JsonNode& n = nodes[static_cast<size_t>(obj.node)];
      if (f.phase == 1) {  // free key: plain characters, no escapes
        if (c == '"') {
          if (f.a == 0) return;
          obj.phase = kColon;
          obj.a = -1;
          obj.b = 0;
          out.push_back(std::move(parent));
          return;
        }
        if (c < 0x20 || c == '\\' || c >= 0x80 || f.a >= kMaxFreeKey) return;
        Frame nf = f;
        ++nf.a;
        out.push_back(with(nf));
        return;
      }
      if (c == '"') {
        for (size_t i = 0; i < n.keys.size(); ++i) {
          if ((f.seen >> i & 1) && n.keys[i].size() == static_cast<size_t>(f.a)) {
            obj.phase = kColon;
            obj.a = static_cast<int32_t>(i);
            obj.seen |= uint64_t{1} << i;
            obj.b = 0;
            out.push_back(std::move(parent));
            return;
          }
        }
        return;
      }
      uint64_t keep = 0;
      for (size_t i = 0; i < n.keys.size(); ++i) {
        if ((f.seen >> i & 1) && n.keys[i].size() > static_cast<size_t>(f.a) &&
            static_cast<uint8_t>(n.keys[i][static_cast<size_t>(f.a)]) == c) {
          keep |= uint64_t{1} << i;
        }
      }
      if (!keep) return;
      Frame nf = f;
      nf.seen = keep;
      ++nf.a;
      out.push_back(with(nf));
      return;
    }
    case kArray: {
      const JsonNode& n = nodes[static_cast<size_t>(f.node)];
      const bool free_form = n.kind == Kind::Any;
      const int min_items = free_form ? 0 : n.min_items, max_items = free_form ? 64 : n.max_items;
      if (is_ws(c)) {
        if (f.b < 1) {
          Frame nf = f;
          ++nf.b;
          out.push_back(with(nf));
        }
        return;
      }
      if ((f.phase == kOpen || f.phase == kAfterValue) && c == ']') {
        if (f.a >= min_items) complete(s, c, true, out);
        return;
      }
      if (f.phase == kAfterValue && c == ',') {
        if (f.a < max_items) {
          Frame nf = f;
          nf.phase = kComma;
          nf.b = 0;
          out.push_back(with(nf));
        }
        return;
      }
      if (f.phase == kOpen || f.phase == kComma) {
        if (f.phase == kOpen && max_items == 0) return;
        // The item's value starts with c; the array frame waits for it to complete.
        // The items' schema (free-form arrays: the free-form node one level down).
        start_value(s, n.items, c, out);
      }
      return;
    }
    case kString: {
      Frame nf = f;
      switch (f.phase) {
        case kPlain:
          if (c == '"') {
            complete(s, c, true, out);
            return;
          }
          if (f.a >= kMaxString || c < 0x20) return;
          if (c == '\\') {
            nf.phase = kEscape;
          } else if (c >= 0x80) {
            if (c >= 0xC2 && c <= 0xDF) nf.phase = kCont1;
            else if (c >= 0xE0 && c <= 0xEF) nf.phase = kCont2;
            else if (c >= 0xF0 && c <= 0xF4) nf.phase = kCont3;
            else return;
            ++nf.a;
          } else {
            ++nf.a;
          }
          out.push_back(with(nf));
          return;
        case kEscape:
          if (c == 'u') {
            nf.phase = kHex1;
          } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
            nf.phase = kPlain;
            ++nf.a;
          } else {
            return;
          }
          out.push_back(with(nf));
          return;
        case kHex1:
        case kHex2:
        case kHex3:
        case kHex4:
          if (!is_hex(c)) return;
          // No surrogate halves (\uD800-\uDFFF): they need a pair, which is not worth the states.
          if (f.phase == kHex1 && (c == 'd' || c == 'D')) return;
          nf.phase = f.phase == kHex4 ? kPlain : static_cast<uint8_t>(f.phase + 1);
          if (f.phase == kHex4) ++nf.a;
          out.push_back(with(nf));
          return;
        case kCont1:
        case kCont2:
        case kCont3:
          if (c < 0x80 || c > 0xBF) return;
          nf.phase = f.phase == kCont1 ? kPlain : static_cast<uint8_t>(f.phase - 1);
          out.push_back(with(nf));
          return;
        default:
          return;
      }
    }
    case kNumber: {
      const bool integer = f.node >= 0 && nodes[static_cast<size_t>(f.node)].kind == Kind::Integer;
      Frame nf = f;
      const bool digit = c >= '0' && c <= '9';
      switch (f.phase) {
        case kMinus:
          if (!digit) return;
          nf.phase = c == '0' ? kZero : kInt;
          nf.a = c == '0' ? 0 : 1;
          out.push_back(with(nf));
          return;
        case kZero:
        case kInt:
          if (digit && f.phase == kInt && f.a < kMaxIntDigits) {
            ++nf.a;
            out.push_back(with(nf));
            return;
          }
          if (!integer && c == '.') {
            nf.phase = kDot;
            out.push_back(with(nf));
            return;
          }
          if (!integer && (c == 'e' || c == 'E')) {
            nf.phase = kE;
            nf.b = 0;
            out.push_back(with(nf));
            return;
          }
          if (digit) return;
          complete(s, c, false, out);
          return;
        case kDot:
          if (!digit) return;
          nf.phase = kFrac;
          nf.b = 1;
          out.push_back(with(nf));
          return;
        case kFrac:
          if (digit) {
            if (f.b < kMaxFracDigits) {
              ++nf.b;
              out.push_back(with(nf));
            }
            return;
          }
          if (c == 'e' || c == 'E') {
            nf.phase = kE;
            nf.b = 0;
            out.push_back(with(nf));
            return;
          }
          complete(s, c, false, out);
          return;
        case kE:
          if (c == '+' || c == '-') {
            nf.phase = kESign;
            out.push_back(with(nf));
            return;
          }
          [[fallthrough]];
        case kESign:
          if (!digit) return;
          nf.phase = kExp;
          nf.b = 1;
          out.push_back(with(nf));
          return;
        case kExp:
          if (digit) {
            if (f.b < kMaxExpDigits) {
              ++nf.b;
              out.push_back(with(nf));
            }
            return;
          }
          complete(s, c, false, out);
          return;
        default:
          return;
      }
    }
    case kLiteral: {
      const std::string_view lit = f.node >= 0 ? std::string_view(nodes[static_cast<size_t>(f.node)].literals[static_cast<size_t>(f.a)])
                                               : kWords[f.a];
      if (static_cast<size_t>(f.b) < lit.size()) {
        if (static_cast<uint8_t>(lit[static_cast<size_t>(f.b)]) != c) return;
        Frame nf = f;
        ++nf.b;
        // Strings, objects and arrays end with their closing byte: complete at once.
        if (static_cast<size_t>(nf.b) == lit.size() && (c == '"' || c == '}' || c == ']')) {
          complete(with(nf), c, true, out);
          return;
        }
        out.push_back(with(nf));
        return;
      }
      complete(s, c, false, out);  // a number / word literal ends at the next byte
      return;
    }
    default:
      return;
  }
}

}  // namespace kiln::runtime
