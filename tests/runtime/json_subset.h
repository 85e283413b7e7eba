// The JSON Schema subset of structured output (runtime/json_schema.h), restated
// independently of the matcher for the tests: whether a parsed value satisfies a schema.
#pragma once

#include <nlohmann/json.hpp>

namespace kiln::test {

using json = nlohmann::json;

inline bool json_subset_valid(const json& v, const json& s) {
  if (s.contains("const")) return v == s["const"];
  if (s.contains("enum")) {
    for (const auto& e : s["enum"]) {
      if (v == e) return true;
    }
    return false;
  }
  if (s.contains("anyOf")) {
    for (const auto& a : s["anyOf"]) {
      if (json_subset_valid(v, a)) return true;
    }
    return false;
  }
  if (!s.contains("type")) return true;
  if (s["type"].is_array()) {
    for (const auto& t : s["type"]) {
      json one = s;
      one["type"] = t;
      if (json_subset_valid(v, one)) return true;
    }
    return false;
  }
  const std::string t = s["type"];
  if (t == "string") return v.is_string();
  if (t == "integer") return v.is_number_integer();
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  if (t == "array") {
    if (!v.is_array()) return false;
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
    for (const auto& x : v) {
      if (s.contains("items") && !json_subset_valid(x, s["items"])) return false;
    }
    return true;
  }
  if (t == "object") {
    if (!v.is_object()) return false;
    for (const auto& r : s.value("required", json::array())) {
      if (!v.contains(r.get<std::string>())) return false;
    }
    const json props = s.value("properties", json::object());
    for (const auto& [k, x] : v.items()) {
      if (props.contains(k)) {
        if (!json_subset_valid(x, props[k])) return false;
      } else if (s.contains("properties") && !s.value("additionalProperties", false)) {
        return false;
      }
    }
    return true;
  }
  return false;
}

}  // namespace kiln::test
