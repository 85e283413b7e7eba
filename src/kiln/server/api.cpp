#include "kiln/server/api.h"

#include <cmath>
#include <limits>

#include "kiln/core/error.h"
#include "kiln/runtime/engine_metrics.h"
#include "kiln/runtime/logprobs.h"

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
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (const json* p = field(o, name); p && number(*p, name, -2.0, 2.0) != 0.0) {
      bad_field(name, "'{}' is not supported (only 0)", name);
    }
  }
  if (const json* l = field(o, "logit_bias"); l && !(l->is_object() && l->empty())) {
    bad_field("logit_bias", "'logit_bias' is not supported");
  }
  if (const json* s = field(o, "suffix"); s && !(s->is_string() && s->get<std::string>().empty())) {
    bad_field("suffix", "'suffix' is not supported");
  }
}

// n, best_of, logprobs / top_logprobs, echo: completions take `logprobs` N (the top-N
// alternatives) and `echo`; chat takes `logprobs: true` with `top_logprobs` N.
void parse_choices_and_logprobs(const json& o, ParsedRequest& r) {
  if (const json* n = field(o, "n")) r.n = static_cast<int>(integer(*n, "n", 1, kMaxChoices));
  if (const json* b = field(o, "best_of"); b && integer(*b, "best_of", 1, kMaxChoices) != r.n) {
    bad_field("best_of", "'best_of' must equal 'n' (kiln returns every choice it samples)");
  }
  const int max_lp = runtime::kMaxLogprobs;
  if (r.endpoint == Endpoint::Completions) {
    if (const json* l = field(o, "logprobs")) {
      if (l->is_boolean()) {
        bad_field("logprobs", "'logprobs' on completions is the number of alternatives per token (an integer 0..{}), "
                  "got a boolean", max_lp);
      }
      r.logprobs = static_cast<int>(integer(*l, "logprobs", 0, max_lp));
    }
    if (field(o, "top_logprobs")) {
      bad_field("top_logprobs", "'top_logprobs' is a chat completions parameter; completions take 'logprobs': N");
    }
    if (const json* e = field(o, "echo")) r.echo = boolean(*e, "echo");
  } else {
    bool lp = false;
    if (const json* l = field(o, "logprobs")) lp = boolean(*l, "logprobs");
    int top = 0;
    if (const json* t = field(o, "top_logprobs")) {
      top = static_cast<int>(integer(*t, "top_logprobs", 0, max_lp));
      if (top > 0 && !lp) bad_field("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    }
    if (lp) r.logprobs = top;
    if (const json* e = field(o, "echo"); e && boolean(*e, "echo")) {
      bad_field("echo", "'echo' is a completions parameter; chat completions do not echo{}",
                r.stream ? " (streamed or not)" : "");
    }
  }
  if (const json* t = field(o, "return_tokens_as_token_ids")) r.tokens_as_ids = boolean(*t, "return_tokens_as_token_ids");
}

// response_format: text, json_object, or json_schema with a schema in the supported subset
// (runtime/json_schema.h; anything else is a 400 naming the keyword).
void parse_response_format(const json& o, ParsedRequest& r) {
  const json* rf = field(o, "response_format");
  if (!rf) return;
  const json* t = rf->is_object() ? field(*rf, "type") : nullptr;
  if (!t || !t->is_string()) bad_field("response_format", "'response_format' must be an object with a 'type'");
  const std::string type = t->get<std::string>();
  if (type == "text") return;
  if (r.thinking == tokenizer::dsv4::ThinkingMode::Thinking) {
    bad_field("response_format", "'response_format' {} with thinking: the reasoning would have to be JSON too", type);
  }
  if (type == "json_object") {
    r.response_schema = std::make_shared<runtime::JsonSchema>(runtime::JsonSchema::any_object());
    return;
  }
  if (type != "json_schema") bad_field("response_format", "'response_format.type' is '{}'; expected text, json_object or json_schema", type);
  const json* js = field(*rf, "json_schema");
  const json* schema = js && js->is_object() ? field(*js, "schema") : nullptr;
  if (!schema) bad_field("response_format", "'response_format.json_schema.schema' is required for type json_schema");
  try {
    r.response_schema = std::make_shared<runtime::JsonSchema>(runtime::JsonSchema::compile(*schema));
  } catch (const runtime::JsonSchemaError& e) {
    bad_field("response_format", "{} (keyword '{}')", e.what(), e.keyword());
  }
}

void parse_common(const json& o, ParsedRequest& r) {
  parse_response_format(o, r);
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
  if (const json* m = field(o, max_name)) r.max_tokens = static_cast<int>(integer(*m, max_name, 0, 1 << 30));
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
  if (const json* m = field(o, "mtp")) r.mtp = static_cast<int>(integer(*m, "mtp", 0, runtime::kMaxDraftPositions));
  refuse_unsupported(o);
  parse_choices_and_logprobs(o, r);
  if (r.max_tokens && *r.max_tokens == 0 && !r.echo) {
    bad_field(max_name, "'{}' is 0; that needs 'echo': true (the prompt scored, nothing generated)", max_name);
  }
}

std::vector<int32_t> token_ids(const json& a, const std::string& name) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < a.size(); ++i) {
    ids.push_back(static_cast<int32_t>(integer(a[i], fmt::format("{}[{}]", name, i), 0, std::numeric_limits<int32_t>::max())));
  }
  return ids;
}

// A string, an array of token ids, or a list of either (several prompts).
void parse_prompt(const json& o, ParsedRequest& r) {
  const json* p = field(o, "prompt");
  if (!p) bad_field("prompt", "'prompt' is required");
  auto text = [&](const json& v, const std::string& name) {
    ParsedRequest::Prompt q;
    q.text = string(v, name);
    if (q.text->empty()) bad_field(name, "'{}' is empty", name);
    r.prompts.push_back(std::move(q));
  };
  if (p->is_string()) {
    text(*p, "prompt");
  } else if (p->is_array()) {
    if (p->empty()) bad_field("prompt", "'prompt' is an empty array");
    if (p->size() > kMaxPrompts) bad_field("prompt", "'prompt' has {} prompts; at most {}", p->size(), kMaxPrompts);
    const json& first = (*p)[0];
    if (first.is_string()) {
      for (size_t i = 0; i < p->size(); ++i) text((*p)[i], fmt::format("prompt[{}]", i));
    } else if (first.is_array()) {
      for (size_t i = 0; i < p->size(); ++i) {
        const std::string name = fmt::format("prompt[{}]", i);
        const json& a = (*p)[i];
        if (!a.is_array() || a.empty()) bad_field(name, "'{}' must be a non-empty array of token ids", name);
        r.prompts.push_back({std::nullopt, token_ids(a, name)});
      }
    } else {
      r.prompts.push_back({std::nullopt, token_ids(*p, "prompt")});
    }
  } else {
    bad_field("prompt", "'prompt' must be a string, an array of token ids, or an array of strings or of token-id arrays, "
              "got {}", type_name(*p));
  }
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

json parse_object(std::string_view body) {
  check_depth(body);
  json o = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (o.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!o.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, got {}", type_name(o)));
  return o;
}

}  // namespace

ParsedRequest parse_request(std::string_view body, Endpoint endpoint) {
  const json o = parse_object(body);
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

TokenizeRequest parse_tokenize(std::string_view body) {
  const json o = parse_object(body);
  TokenizeRequest t;
  const json* p = field(o, "prompt");
  const json* m = field(o, "messages");
  if (p && m) bad_field("messages", "give 'prompt' or 'messages', not both");
  if (!p && !m) bad_field("prompt", "'prompt' (a text) or 'messages' (a chat) is required");
  if (p) {
    t.prompt = string(*p, "prompt");
  } else {
    ParsedRequest r;
    r.endpoint = Endpoint::Chat;
    parse_chat(o, r);
    t.chat = std::move(r);
    t.add_special_tokens = false;
  }
  if (const json* v = field(o, "model")) string(*v, "model");
  if (const json* a = field(o, "add_special_tokens")) t.add_special_tokens = boolean(*a, "add_special_tokens");
  if (const json* a = field(o, "return_token_strs")) t.return_token_strs = boolean(*a, "return_token_strs");
  return t;
}

std::vector<int32_t> parse_detokenize(std::string_view body, int64_t vocab) {
  const json o = parse_object(body);
  const json* t = field(o, "tokens");
  if (!t) bad_field("tokens", "'tokens' is required");
  if (!t->is_array()) bad_field("tokens", "'tokens' must be an array of token ids, got {}", type_name(*t));
  if (const json* v = field(o, "model")) string(*v, "model");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < t->size(); ++i) {
    ids.push_back(static_cast<int32_t>(integer((*t)[i], fmt::format("tokens[{}]", i), 0, std::max<int64_t>(vocab - 1, 0))));
  }
  return ids;
}

std::string chat_prompt_text(const ParsedRequest& r) {
  tokenizer::dsv4::ChatOptions co;
  co.thinking_mode = r.thinking;
  co.reasoning_effort = r.reasoning_effort;
  try {
    return tokenizer::dsv4::encode_messages(r.messages, co);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "messages");
  }
}

}  // namespace kiln::server
