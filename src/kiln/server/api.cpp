#include "kiln/server/api.h"

#include <cmath>
#include <limits>

#include "kiln/core/error.h"

namespace kiln::server {

using json = nlohmann::ordered_json;

ApiError::ApiError(int status, std::string message, std::string param, std::string type, std::string code)
    : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), type_(std::move(type)),
      code_(std::move(code)) {
  if (type_.empty()) {
    type_ = status_ == 401   ? "authentication_error"
            : status_ == 404 ? "not_found_error"
            : status_ == 429 ? "rate_limit_error"
            : status_ >= 500 ? "server_error"
                             : "invalid_request_error";
  }
}

std::string ApiError::body() const {
  json e = json::object();
  e["message"] = what();
  e["type"] = type_;
  e["param"] = param_.empty() ? json(nullptr) : json(param_);
  e["code"] = code_.empty() ? json(nullptr) : json(code_);
  json out = json::object();
  out["error"] = std::move(e);
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::binary: return "binary";
    case json::value_t::discarded: return "discarded";
    default: return "a number";
  }
}

const json* field(const json& o, const char* name) {
  const auto it = o.find(name);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad_field(name, "'{}' must be a number, got {}", name, type_name(v));
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) bad_field(name, "'{}' is {}; expected a number in [{}, {}]", name, d, lo, hi);
  return d;
}

int64_t integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer() && !(v.is_number_float() && std::nearbyint(v.get<double>()) == v.get<double>())) {
    bad_field(name, "'{}' must be an integer, got {}", name, v.is_number() ? "a fraction" : type_name(v));
  }
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    bad_field(name, "'{}' is out of range [{}, {}]", name, lo, hi);
  }
  const double d = v.is_number_float() ? v.get<double>() : 0.0;
  if (v.is_number_float() && (d < static_cast<double>(lo) || d > static_cast<double>(hi))) {
    bad_field(name, "'{}' is {}; expected an integer in [{}, {}]", name, d, lo, hi);
  }
  const int64_t i = v.is_number_float() ? static_cast<int64_t>(d) : v.get<int64_t>();
  if (i < lo || i > hi) bad_field(name, "'{}' is {}; expected an integer in [{}, {}]", name, i, lo, hi);
  return i;
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad_field(name, "'{}' must be a boolean, got {}", name, type_name(v));
  return v.get<bool>();
}

std::string string(const json& v, const std::string& name) {
  if (!v.is_string()) bad_field(name, "'{}' must be a string, got {}", name, type_name(v));
  return v.get<std::string>();
}

// Parameters kiln does not implement are refused unless they ask for the default.
void refuse_unsupported(const json& o) {
  if (const json* n = field(o, "n"); n && integer(*n, "n", 1, 128) != 1) bad_field("n", "'n' must be 1 (one choice per request)");
  if (const json* b = field(o, "best_of"); b && integer(*b, "best_of", 1, 128) != 1) bad_field("best_of", "'best_of' must be 1");
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (const json* p = field(o, name); p && number(*p, name, -2.0, 2.0) != 0.0) {
      bad_field(name, "'{}' is not supported (only 0)", name);
    }
  }
  if (const json* l = field(o, "logit_bias"); l && !(l->is_object() && l->empty())) {
    bad_field("logit_bias", "'logit_bias' is not supported");
  }
  for (const char* name : {"logprobs", "top_logprobs"}) {
    if (const json* l = field(o, name); l && !(l->is_boolean() && !l->get<bool>()) && !(l->is_number_integer() && l->get<int64_t>() == 0)) {
      bad_field(name, "'{}' is not supported", name);
    }
  }
  if (const json* e = field(o, "echo"); e && boolean(*e, "echo")) bad_field("echo", "'echo' is not supported");
  if (const json* s = field(o, "suffix"); s && !(s->is_string() && s->get<std::string>().empty())) {
    bad_field("suffix", "'suffix' is not supported");
  }
}

void parse_common(const json& o, ParsedRequest& r) {
  if (const json* m = field(o, "model")) r.model = string(*m, "model");
  if (const json* t = field(o, "temperature")) r.temperature = static_cast<float>(number(*t, "temperature", 0.0, 2.0));
  if (const json* t = field(o, "top_p")) {
    r.top_p = static_cast<float>(number(*t, "top_p", 0.0, 1.0));
    if (r.top_p <= 0.0f) bad_field("top_p", "'top_p' must be > 0");
  }
  if (const json* t = field(o, "top_k")) {
    const int64_t k = integer(*t, "top_k", -1, 1 << 30);
    r.top_k = k < 0 ? 0 : static_cast<int>(k);  // -1 = all (vLLM)
  }
  if (const json* s = field(o, "seed")) {
    if (!s->is_number_integer()) bad_field("seed", "'seed' must be an integer, got {}", s->is_number() ? "a fraction" : type_name(*s));
    r.seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
  }
  const char* max_name = field(o, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (const json* m = field(o, max_name)) r.max_tokens = static_cast<int>(integer(*m, max_name, 1, 1 << 30));
  if (const json* s = field(o, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 16) bad_field("stop", "'stop' has {} strings; at most 16", s->size());
      for (size_t i = 0; i < s->size(); ++i) r.stop.push_back(string((*s)[i], fmt::format("stop[{}]", i)));
    } else {
      bad_field("stop", "'stop' must be a string or an array of strings, got {}", type_name(*s));
    }
    for (size_t i = 0; i < r.stop.size(); ++i) {
      if (r.stop[i].empty()) bad_field("stop", "'stop' strings must not be empty");
    }
  }
  if (const json* s = field(o, "stream")) r.stream = boolean(*s, "stream");
  if (const json* so = field(o, "stream_options")) {
    if (!so->is_object()) bad_field("stream_options", "'stream_options' must be an object, got {}", type_name(*so));
    if (const json* u = field(*so, "include_usage")) r.include_usage = boolean(*u, "stream_options.include_usage");
  }
  if (const json* e = field(o, "ignore_eos")) r.ignore_eos = boolean(*e, "ignore_eos");
  if (const json* m = field(o, "mtp")) r.mtp = static_cast<int>(integer(*m, "mtp", 0, 4));
  refuse_unsupported(o);
}

void parse_prompt(const json& o, ParsedRequest& r) {
  const json* p = field(o, "prompt");
  if (!p) bad_field("prompt", "'prompt' is required");
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
  } else if (p->is_array()) {
    if (p->empty()) bad_field("prompt", "'prompt' is an empty array");
    if ((*p)[0].is_string()) {
      if (p->size() != 1) bad_field("prompt", "'prompt' with {} strings: one prompt per request", p->size());
      r.prompt_text = (*p)[0].get<std::string>();
    } else {
      for (size_t i = 0; i < p->size(); ++i) {
        r.prompt_ids.push_back(static_cast<int32_t>(integer((*p)[i], fmt::format("prompt[{}]", i), 0, std::numeric_limits<int32_t>::max())));
      }
    }
  } else {
    bad_field("prompt", "'prompt' must be a string, an array of one string or an array of token ids, got {}", type_name(*p));
  }
  if (r.prompt_text && r.prompt_text->empty()) bad_field("prompt", "'prompt' is empty");
}

void parse_chat(const json& o, ParsedRequest& r) {
  const json* m = field(o, "messages");
  if (!m) bad_field("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) bad_field("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!msg.is_object()) bad_field(where, "'{}' must be an object, got {}", where, type_name(msg));
    const json* role = field(msg, "role");
    if (!role || !role->is_string()) bad_field(where + ".role", "'{}.role' must be a string", where);
    const std::string rs = role->get<std::string>();
    if (rs != "system" && rs != "developer" && rs != "user" && rs != "assistant" && rs != "tool") {
      bad_field(where + ".role", "'{}.role' is '{}'; expected system, developer, user, assistant or tool", where, rs);
    }
    if (const json* c = field(msg, "content")) {
      if (c->is_array()) {
        // OpenAI content parts: text parts only.
        std::string text;
        for (size_t j = 0; j < c->size(); ++j) {
          const json& part = (*c)[j];
          const std::string pw = fmt::format("{}.content[{}]", where, j);
          if (!part.is_object() || !field(part, "type") || !(*field(part, "type")).is_string() ||
              part["type"].get<std::string>() != "text") {
            bad_field(pw, "'{}' must be a text part ({{\"type\": \"text\", \"text\": ...}})", pw);
          }
          const json* t = field(part, "text");
          if (!t) bad_field(pw + ".text", "'{}.text' is required", pw);
          text += string(*t, pw + ".text");
        }
        r.messages.push_back(msg);
        r.messages.back()["content"] = text;
        continue;
      }
      if (!c->is_string()) bad_field(where + ".content", "'{}.content' must be a string or an array of text parts", where);
    }
    r.messages.push_back(msg);
  }
  if (const json* t = field(o, "tools")) {
    if (!t->is_array()) bad_field("tools", "'tools' must be an array, got {}", type_name(*t));
    for (size_t i = 0; i < t->size(); ++i) {
      const json& tool = (*t)[i];
      const std::string where = fmt::format("tools[{}]", i);
      if (!tool.is_object() || !field(tool, "function") || !tool["function"].is_object() ||
          !field(tool["function"], "name") || !tool["function"]["name"].is_string()) {
        bad_field(where, "'{}' must be {{\"type\": \"function\", \"function\": {{\"name\": ..., ...}}}}", where);
      }
    }
    bool use = !t->empty();
    if (const json* c = field(o, "tool_choice")) {
      const std::string choice = c->is_string() ? c->get<std::string>() : "";
      if (choice == "none") use = false;
      else if (choice != "auto") bad_field("tool_choice", "'tool_choice' must be \"auto\" or \"none\"");
    }
    if (use) {
      r.has_tools = true;
      json& first = r.messages[0];
      const std::string role = first["role"].get<std::string>();
      if (role == "system" || role == "developer") {
        first["tools"] = *t;
      } else {
        json sys = json::object();
        sys["role"] = "system";
        sys["content"] = "";
        sys["tools"] = *t;
        r.messages.insert(r.messages.begin(), std::move(sys));
      }
    }
  }
  // Thinking: DeepSeek's API ({"thinking": {"type": "enabled"}}), vLLM's
  // chat_template_kwargs.thinking, or a plain boolean.
  bool thinking = false;
  if (const json* t = field(o, "thinking")) {
    if (t->is_boolean()) {
      thinking = t->get<bool>();
    } else if (t->is_object() && field(*t, "type") && (*t)["type"].is_string()) {
      const std::string ty = (*t)["type"].get<std::string>();
      if (ty != "enabled" && ty != "disabled") bad_field("thinking.type", "'thinking.type' must be \"enabled\" or \"disabled\"");
      thinking = ty == "enabled";
    } else {
      bad_field("thinking", "'thinking' must be a boolean or {{\"type\": \"enabled\"|\"disabled\"}}");
    }
  }
  if (const json* k = field(o, "chat_template_kwargs")) {
    if (!k->is_object()) bad_field("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    if (const json* t = field(*k, "thinking")) thinking = boolean(*t, "chat_template_kwargs.thinking");
  }
  r.thinking = thinking ? tokenizer::dsv4::ThinkingMode::Thinking : tokenizer::dsv4::ThinkingMode::Chat;
  if (const json* e = field(o, "reasoning_effort")) {
    const std::string s = string(*e, "reasoning_effort");
    if (s == "high" || s == "max") r.reasoning_effort = tokenizer::dsv4::reasoning_effort_from_string(s);
    else if (s != "low" && s != "medium" && s != "none") bad_field("reasoning_effort", "'reasoning_effort' is '{}'; expected low, medium, high or max", s);
  }
  if (const json* rf = field(o, "response_format")) {
    if (!rf->is_object() || !field(*rf, "type") || !(*rf)["type"].is_string() || (*rf)["type"].get<std::string>() != "text") {
      bad_field("response_format", "'response_format' other than {{\"type\": \"text\"}} is not supported");
    }
  }
}

// Nesting deeper than this is refused before parsing: nlohmann's dump() and kiln's chat
// encoding recurse over values, so a body of 8 MB of '[' must not reach them.
constexpr int kMaxDepth = 64;

void check_depth(std::string_view body) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth) throw ApiError(400, fmt::format("the request body nests deeper than {} levels", kMaxDepth));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

}  // namespace

ParsedRequest parse_request(std::string_view body, Endpoint endpoint) {
  check_depth(body);
  json o = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (o.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!o.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, got {}", type_name(o)));
  ParsedRequest r;
  r.endpoint = endpoint;
  if (endpoint == Endpoint::Completions) {
    parse_prompt(o, r);
  } else {
    parse_chat(o, r);
  }
  parse_common(o, r);
  return r;
}

}  // namespace kiln::server
