#include "kiln/tokenizer/chat_encoding.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tokenizer::dsv4 {

using json = nlohmann::ordered_json;

namespace {

// The prompt format's fixed texts.
constexpr std::string_view kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

std::string tools_section(const std::string& schemas) {
  const std::string d(kDsml);
  return "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
         "writing a \"<" +
         d + "tool_calls>\" block like the following:\n\n<" + d + "tool_calls>\n<" + d +
         "invoke name=\"$TOOL_NAME\">\n<" + d +
         "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" + d + "parameter>\n...\n</" +
         d + "invoke>\n<" + d + "invoke name=\"$TOOL_NAME2\">\n...\n</" + d + "invoke>\n</" + d +
         "tool_calls>\n\nString parameters should be specified as is and set `string=\"true\"`. For all other types "
         "(numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\nIf "
         "thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside "
         "<think>...</think> BEFORE any tool calls or final response.\n\nOtherwise, output directly after "
         "</think> with tool calls or final response.\n\n### Available Tool Schemas\n\n" +
         schemas +
         "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
}

constexpr std::string_view kResponseFormatPrefix =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

const std::map<std::string, std::string, std::less<>>& task_tokens() {
  static const std::map<std::string, std::string, std::less<>> m = {
      {"action", "<｜action｜>"}, {"query", "<｜query｜>"}, {"authority", "<｜authority｜>"},
      {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"}, {"read_url", "<｜read_url｜>"}};
  return m;
}

template <typename... Args>
[[noreturn]] void refuse(fmt::format_string<Args...> f, Args&&... args) {
  fail(ErrorKind::Usage, f, std::forward<Args>(args)...);
}

// Python's dict.get(key) (None when absent) and dict.get(key, default).
const json& get(const json& obj, std::string_view key) {
  static const json null;
  if (!obj.is_object()) return null;
  const auto it = obj.find(key);
  return it == obj.end() ? null : *it;
}

json get_or(const json& obj, std::string_view key, json dflt) {
  if (obj.is_object())
    if (const auto it = obj.find(key); it != obj.end()) return *it;
  return dflt;
}

bool truthy(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return false;
    case json::value_t::boolean:
      return v.get<bool>();
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return v.get<int64_t>() != 0;
    case json::value_t::number_float:
      return v.get<double>() != 0.0;
    case json::value_t::string:
      return !v.get_ref<const std::string&>().empty();
    case json::value_t::array:
    case json::value_t::object:
      return !v.empty();
    default:
      return true;
  }
}

std::string role_of(const json& msg) {
  const json& r = get(msg, "role");
  return r.is_string() ? r.get<std::string>() : std::string();
}

std::string python_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // [-]d[.ddd]e[+-]xx, shortest round trip
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp10 = std::stoi(sci.substr(e + 1));
  const int decpt = exp10 + 1;  // digits d1 d2 ... with the point after decpt of them
  const int nd = static_cast<int>(digits.size());
  std::string out = sign;
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (nd > 1) out += "." + digits.substr(1);
    const int x = decpt - 1;
    out += x < 0 ? "e-" : "e+";
    const std::string xs = std::to_string(std::abs(x));
    out += (xs.size() < 2 ? "0" : "") + xs;
  } else if (decpt <= 0) {
    out += "0." + std::string(size_t(-decpt), '0') + digits;
  } else if (decpt >= nd) {
    out += digits + std::string(size_t(decpt - nd), '0') + ".0";
  } else {
    out += digits.substr(0, size_t(decpt)) + "." + digits.substr(size_t(decpt));
  }
  return out;
}

void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", unsigned(c));
        else
          out += ch;
    }
  }
  out += '"';
}

void dump(std::string& out, const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      out += "null";
      break;
    case json::value_t::boolean:
      out += v.get<bool>() ? "true" : "false";
      break;
    case json::value_t::number_integer:
      out += std::to_string(v.get<int64_t>());
      break;
    case json::value_t::number_unsigned:
      out += std::to_string(v.get<uint64_t>());
      break;
    case json::value_t::number_float:
      out += python_float(v.get<double>());
      break;
    case json::value_t::string:
      dump_string(out, v.get_ref<const std::string&>());
      break;
    case json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& x : v) {
        if (!first) out += ", ";
        first = false;
        dump(out, x);
      }
      out += ']';
      break;
    }
    case json::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        dump_string(out, it.key());
        out += ": ";
        dump(out, it.value());
      }
      out += '}';
      break;
    }
    default:
      refuse("cannot serialise a binary JSON value");
  }
}

// str(value) where the reference formats a value into the prompt: None -> "None"; kiln
// takes strings and None only (Python would print its repr of anything else).
std::string py_str(const json& v, std::string_view where) {
  if (v.is_null()) return "None";
  if (v.is_string()) return v.get<std::string>();
  refuse("{}: expected a string, got {}", where, v.type_name());
}

// `value or ""` for string fields.
std::string str_or_empty(const json& v, std::string_view where) {
  if (!truthy(v)) return "";
  return py_str(v, where);
}

// ---------------------------------------------------------------------------------------
// Preprocessing (merge_tool_messages, sort_tool_results_by_call_order, _drop_thinking).

std::vector<json> merge_tool_messages(const std::vector<json>& messages) {
  std::vector<json> merged;
  for (const json& msg : messages) {
    const std::string role = role_of(msg);
    if (role == "tool") {
      json block = json::object();
      block["type"] = "tool_result";
      block["tool_use_id"] = get_or(msg, "tool_call_id", "");
      block["content"] = get_or(msg, "content", "");
      if (!merged.empty() && role_of(merged.back()) == "user" && merged.back().contains("content_blocks")) {
        merged.back()["content_blocks"].push_back(std::move(block));
      } else {
        json m = json::object();
        m["role"] = "user";
        m["content_blocks"] = json::array({std::move(block)});
        merged.push_back(std::move(m));
      }
    } else if (role == "user") {
      json text = json::object();
      text["type"] = "text";
      text["text"] = get_or(msg, "content", "");
      if (!merged.empty() && role_of(merged.back()) == "user" && merged.back().contains("content_blocks") &&
          get(merged.back(), "task").is_null()) {
        merged.back()["content_blocks"].push_back(std::move(text));
      } else {
        json m = json::object();
        m["role"] = "user";
        m["content"] = get_or(msg, "content", "");
        m["content_blocks"] = json::array({std::move(text)});
        for (const char* key : {"task", "wo_eos", "mask"})
          if (msg.contains(key)) m[key] = msg[key];
        merged.push_back(std::move(m));
      }
    } else {
      merged.push_back(msg);
    }
  }
  return merged;
}

void sort_tool_results(std::vector<json>& messages) {
  std::map<std::string, size_t> order;  // tool call id (as JSON text) -> position
  for (json& msg : messages) {
    const std::string role = role_of(msg);
    if (role == "assistant" && truthy(get(msg, "tool_calls"))) {
      order.clear();
      const json& calls = msg["tool_calls"];
      if (!calls.is_array()) refuse("tool_calls: expected an array");
      for (size_t i = 0; i < calls.size(); ++i) {
        json id = get(calls[i], "id");
        if (!truthy(id)) id = get_or(get_or(calls[i], "function", json::object()), "id", "");
        if (truthy(id)) order[id.dump()] = i;
      }
    } else if (role == "user" && truthy(get(msg, "content_blocks"))) {
      json& blocks = msg["content_blocks"];
      std::vector<json> tool_blocks;
      for (const auto& b : blocks)
        if (get(b, "type") == "tool_result") tool_blocks.push_back(b);
      if (tool_blocks.size() > 1 && !order.empty()) {
        const auto key = [&](const json& b) {
          const auto it = order.find(get_or(b, "tool_use_id", "").dump());
          return it == order.end() ? size_t(0) : it->second;
        };
        std::stable_sort(tool_blocks.begin(), tool_blocks.end(),
                         [&](const json& a, const json& b) { return key(a) < key(b); });
        size_t k = 0;
        for (auto& b : blocks)
          if (get(b, "type") == "tool_result") b = tool_blocks[k++];
      }
    }
  }
}

int last_user_index(const std::vector<json>& messages) {
  for (int i = int(messages.size()) - 1; i >= 0; --i) {
    const std::string r = role_of(messages[size_t(i)]);
    if (r == "user" || r == "developer") return i;
  }
  return -1;
}

std::vector<json> drop_thinking_messages(const std::vector<json>& messages) {
  const int last = last_user_index(messages);
  std::vector<json> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string r = role_of(messages[i]);
    if (r == "user" || r == "system" || r == "tool" || r == "latest_reminder" || r == "direct_search_results" ||
        int(i) >= last) {
      out.push_back(messages[i]);
    } else if (r == "assistant") {
      json m = messages[i];
      m.erase("reasoning_content");
      out.push_back(std::move(m));
    }  // developer and other roles before the last user message are dropped
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Rendering.

std::string render_tools(const json& tools, std::string_view where) {
  std::string schemas;
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& f = get(tools[i], "function");
    if (!tools[i].is_object() || !tools[i].contains("function"))
      refuse("{}.tools[{}]: missing \"function\"", where, i);
    if (i) schemas += '\n';
    dump(schemas, f);
  }
  return tools_section(schemas);
}

std::string render_arguments(const json& call, std::string_view where) {
  const json& raw = call["function"]["arguments"];
  json args;
  bool parsed = false;
  if (raw.is_string()) {
    try {
      args = json::parse(raw.get_ref<const std::string&>());
      parsed = true;
    } catch (const json::parse_error&) {
    }
  }
  if (!parsed) args = json{{"arguments", raw}};
  if (!args.is_object()) refuse("{}: tool call arguments are JSON but not an object", where);
  std::string out;
  bool first = true;
  for (auto it = args.begin(); it != args.end(); ++it) {
    if (!first) out += '\n';
    first = false;
    const bool is_str = it.value().is_string();
    out += "<" + std::string(kDsml) + "parameter name=\"" + it.key() + "\" string=\"" + (is_str ? "true" : "false") +
           "\">";
    if (is_str)
      out += it.value().get<std::string>();
    else
      dump(out, it.value());
    out += "</" + std::string(kDsml) + "parameter>";
  }
  return out;
}

std::string render_message(size_t index, const std::vector<json>& messages, const ChatOptions& o, bool drop_thinking) {
  const json& msg = messages[index];
  const std::string where = fmt::format("messages[{}]", index);
  if (!msg.is_object()) refuse("{}: expected a JSON object", where);
  const bool thinking = o.thinking_mode == ThinkingMode::Thinking;
  const int last_user = last_user_index(messages);
  const std::string role = role_of(msg);
  const json& content = get(msg, "content");
  const json& tools = get(msg, "tools");
  const json& response_format = get(msg, "response_format");
  const json& tool_calls = get(msg, "tool_calls");
  if (truthy(tools) && !tools.is_array()) refuse("{}.tools: expected an array", where);
  if (truthy(tool_calls)) {
    if (!tool_calls.is_array()) refuse("{}.tool_calls: expected an array", where);
    for (size_t i = 0; i < tool_calls.size(); ++i) {
      const json& f = get(tool_calls[i], "function");
      if (!f.is_object() || !f.contains("name") || !f.contains("arguments"))
        refuse("{}.tool_calls[{}]: needs function.name and function.arguments", where, i);
    }
  }

  std::string prompt;
  if (index == 0 && thinking && o.reasoning_effort == ReasoningEffort::Max) prompt += kReasoningEffortMax;

  if (role == "system") {
    prompt += str_or_empty(content, where + ".content");
    if (truthy(tools)) prompt += "\n\n" + render_tools(tools, where);
    if (truthy(response_format)) {
      prompt += "\n\n";
      prompt += kResponseFormatPrefix;
      dump(prompt, response_format);
    }
  } else if (role == "developer") {
    if (!truthy(content)) refuse("{}: a developer message needs content", where);
    prompt += kUser;
    prompt += py_str(content, where + ".content");
    if (truthy(tools)) prompt += "\n\n" + render_tools(tools, where);
    if (truthy(response_format)) {
      prompt += "\n\n";
      prompt += kResponseFormatPrefix;
      dump(prompt, response_format);
    }
  } else if (role == "user") {
    prompt += kUser;
    const json& blocks = get(msg, "content_blocks");
    if (truthy(blocks)) {
      if (!blocks.is_array()) refuse("{}.content_blocks: expected an array", where);
      for (size_t i = 0; i < blocks.size(); ++i) {
        const json& b = blocks[i];
        const std::string bw = fmt::format("{}.content_blocks[{}]", where, i);
        if (i) prompt += "\n\n";
        const json& type = get(b, "type");
        if (type == "text") {
          const json text = get_or(b, "text", "");
          if (!text.is_string()) refuse("{}.text: expected a string", bw);
          prompt += text.get<std::string>();
        } else if (type == "tool_result") {
          const json tc = get_or(b, "content", "");
          std::string body;
          if (tc.is_array()) {
            for (size_t k = 0; k < tc.size(); ++k) {
              if (k) body += "\n\n";
              if (get(tc[k], "type") == "text") {
                const json t = get_or(tc[k], "text", "");
                if (!t.is_string()) refuse("{}.content[{}].text: expected a string", bw, k);
                body += t.get<std::string>();
              } else {
                body += "[Unsupported " + py_str(get(tc[k], "type"), bw + ".content.type") + "]";
              }
            }
          } else {
            body = py_str(tc, bw + ".content");
          }
          prompt += "<tool_result>" + body + "</tool_result>";
        } else {
          prompt += "[Unsupported " + py_str(type, bw + ".type") + "]";
        }
      }
    } else {
      prompt += str_or_empty(content, where + ".content");
    }
  } else if (role == "latest_reminder") {
    prompt += kLatestReminder;
    prompt += py_str(content, where + ".content");
  } else if (role == "assistant") {
    std::string calls;
    if (truthy(tool_calls)) {
      const std::string d(kDsml);
      calls = "\n\n<" + d + "tool_calls>\n";
      for (size_t i = 0; i < tool_calls.size(); ++i) {
        const std::string cw = fmt::format("{}.tool_calls[{}]", where, i);
        if (i) calls += '\n';
        calls += "<" + d + "invoke name=\"" + py_str(tool_calls[i]["function"]["name"], cw + ".function.name") +
                 "\">\n" + render_arguments(tool_calls[i], cw) + "\n</" + d + "invoke>";
      }
      calls += "\n</" + d + "tool_calls>";
    }
    const bool prev_has_task = index > 0 && !get(messages[index - 1], "task").is_null();
    std::string think;
    if (thinking && !prev_has_task && (!drop_thinking || int(index) > last_user))
      think = str_or_empty(get(msg, "reasoning_content"), where + ".reasoning_content") + std::string(kThinkEnd);
    prompt += think + str_or_empty(content, where + ".content") + calls;
    if (!truthy(get_or(msg, "wo_eos", false))) prompt += kEos;
  } else {
    refuse("{}.role: unknown role '{}'", where, role);
  }

  // What follows this message.
  if (index + 1 < messages.size()) {
    const std::string next = role_of(messages[index + 1]);
    if (next != "assistant" && next != "latest_reminder") return prompt;
  }
  const json& task = get(msg, "task");
  if (!task.is_null()) {
    const auto it = task.is_string() ? task_tokens().find(task.get<std::string>()) : task_tokens().end();
    if (it == task_tokens().end()) refuse("{}.task: unknown task {}", where, task.dump());
    if (it->first != "action") {
      prompt += it->second;
    } else {
      prompt += kAssistant;
      prompt += thinking ? kThinkStart : kThinkEnd;
      prompt += it->second;
    }
  } else if (role == "user" || role == "developer") {
    prompt += kAssistant;
    if (thinking && (!drop_thinking || int(index) >= last_user))
      prompt += kThinkStart;
    else
      prompt += kThinkEnd;
  }
  return prompt;
}

std::vector<json> as_list(const json& v, std::string_view what) {
  if (v.is_null()) return {};
  if (!v.is_array()) refuse("{}: expected an array of messages", what);
  return std::vector<json>(v.begin(), v.end());
}

}  // namespace

ThinkingMode thinking_mode_from_string(std::string_view s) {
  if (s == "chat") return ThinkingMode::Chat;
  if (s == "thinking") return ThinkingMode::Thinking;
  refuse("thinking mode '{}' is not 'chat' or 'thinking'", s);
}

ReasoningEffort reasoning_effort_from_string(std::string_view s) {
  if (s.empty()) return ReasoningEffort::None;
  if (s == "high") return ReasoningEffort::High;
  if (s == "max") return ReasoningEffort::Max;
  refuse("reasoning effort '{}' is not 'high' or 'max'", s);
}

std::string python_json_dumps(const json& value) {
  std::string out;
  dump(out, value);
  return out;
}

std::string encode_messages(const json& messages_in, const ChatOptions& o, const json& context_in) {
  std::vector<json> raw_context = as_list(context_in, "context");
  std::vector<json> messages = merge_tool_messages(as_list(messages_in, "messages"));
  {
    // Tool results are ordered by the calls of the last assistant turn, context included.
    std::vector<json> all = raw_context;
    all.insert(all.end(), messages.begin(), messages.end());
    sort_tool_results(all);
    messages.assign(all.begin() + std::ptrdiff_t(raw_context.size()), all.end());
  }
  std::vector<json> context;
  if (!raw_context.empty()) {
    context = merge_tool_messages(raw_context);
    sort_tool_results(context);
  }
  std::vector<json> full = context;
  full.insert(full.end(), messages.begin(), messages.end());

  std::string prompt = o.add_bos && context.empty() ? std::string(kBos) : std::string();
  bool drop = o.drop_thinking;
  if (std::any_of(full.begin(), full.end(), [](const json& m) { return truthy(get(m, "tools")); })) drop = false;

  size_t render = messages.size(), context_len = context.size();
  if (o.thinking_mode == ThinkingMode::Thinking && drop) {
    full = drop_thinking_messages(full);
    render = full.size() - drop_thinking_messages(context).size();
    context_len = full.size() - render;
  }
  for (size_t i = 0; i < render; ++i) prompt += render_message(i + context_len, full, o, drop);
  return prompt;
}

// ---------------------------------------------------------------------------------------
// Parsing a completion.

namespace {

struct Reader {
  std::string_view text;
  size_t index = 0;

  // _read_until_stop: the text up to the earliest stop (the first listed wins a tie).
  std::string_view until(std::initializer_list<std::string_view> stops, std::string_view& matched) {
    size_t best = text.size();
    matched = {};
    bool found = false;
    for (const auto s : stops) {
      const size_t p = text.find(s, index);
      if (p != std::string_view::npos && p < best) {
        best = p;
        matched = s;
        found = true;
      }
    }
    const std::string_view content = text.substr(index, (found ? best : text.size()) - index);
    index = found ? best + matched.size() : text.size();
    return content;
  }
};

[[noreturn]] void malformed(std::string_view what) { fail_invalid("malformed completion: {}", what); }

bool py_space(std::string_view s, size_t i, size_t& n) {
  n = utf8_sequence_length(s, i);
  if (!n) return false;
  const char32_t c = utf8_decode(s, i, n);
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's `$` without MULTILINE: the end, or before a final "\n".
bool ends_here(std::string_view s, size_t pos) { return pos == s.size() || (pos + 1 == s.size() && s[pos] == '\n'); }

// re.findall(r'^\s*name="(.*?)">\n$', s, DOTALL) == [name]
bool match_invoke_name(std::string_view s, std::string& name) {
  size_t i = 0, n;
  while (i < s.size() && py_space(s, i, n)) i += n;
  // \s* is greedy but may give back; `name="` starts with a non-space, so no giving back helps.
  if (s.substr(i, 6) != "name=\"") return false;
  const size_t start = i + 6;
  for (size_t e = start; e + 3 <= s.size(); ++e)
    if (s.substr(e, 3) == "\">\n" && ends_here(s, e + 3)) {
      name = std::string(s.substr(start, e - start));
      return true;
    }
  return false;
}

// re.findall(r'^ name="(.*?)" string="(true|false)">(.*?)<$', s, DOTALL) == [(name, flag, value)]
bool match_parameter(std::string_view s, std::string& name, std::string& flag, std::string& value) {
  if (s.substr(0, 7) != " name=\"") return false;
  for (size_t a = 7; a < s.size(); ++a) {
    for (const std::string_view f : {std::string_view("true"), std::string_view("false")}) {
      const std::string mid = "\" string=\"" + std::string(f) + "\">";
      if (s.substr(a, mid.size()) != mid) continue;
      const size_t vstart = a + mid.size();
      for (size_t b = vstart; b < s.size(); ++b)
        if (s[b] == '<' && ends_here(s, b + 1)) {
          name = std::string(s.substr(7, a - 7));
          flag = std::string(f);
          value = std::string(s.substr(vstart, b - vstart));
          return true;
        }
    }
  }
  return false;
}

}  // namespace

json parse_completion(std::string_view text, ThinkingMode mode) {
  const std::string d(kDsml);
  const std::string calls_start = "\n\n<" + d + "tool_calls";
  const std::string calls_end = "</" + d + "tool_calls>";
  const std::string invoke = "<" + d + "invoke", invoke_end = "</" + d + "invoke";
  const std::string param = "<" + d + "parameter", param_end = "/" + d + "parameter";
  Reader r{text};
  std::string_view stop;
  std::string reasoning, content;
  json calls = json::array();
  if (mode == ThinkingMode::Thinking) {
    reasoning = std::string(r.until({kThinkEnd, calls_start}, stop));
    if (stop != kThinkEnd) malformed("missing </think>");
  }
  content = std::string(r.until({kEos, calls_start}, stop));
  if (stop == calls_start) {
    // parse_tool_calls
    while (r.index < text.size()) {
      const std::string_view gap = r.until({invoke, calls_end}, stop);
      if (gap != ">\n") malformed(fmt::format("expected '>\\n' before a tool call, got '{}'", gap));
      if (stop == calls_end) break;
      if (stop.empty()) malformed("missing special token in tool calls");
      const std::string_view head = r.until({param, invoke_end}, stop);
      std::string name;
      if (!match_invoke_name(head, name)) malformed(fmt::format("tool name format: '{}'", head));
      std::vector<std::tuple<std::string, std::string, std::string>> args;
      while (stop == param) {
        const std::string_view p = r.until({param_end}, stop);
        std::string key, flag, value;
        if (!match_parameter(p, key, flag, value)) malformed(fmt::format("parameter format: '{}'", p));
        for (const auto& a : args)
          if (std::get<0>(a) == key) malformed(fmt::format("duplicate parameter '{}'", key));
        args.emplace_back(key, flag, value);
        const std::string_view after = r.until({param, invoke_end}, stop);
        if (after != ">\n") malformed(fmt::format("expected '>\\n' after a parameter, got '{}'", after));
      }
      // decode_dsml_to_arguments
      std::string arguments = "{";
      for (size_t i = 0; i < args.size(); ++i) {
        if (i) arguments += ", ";
        dump_string(arguments, std::get<0>(args[i]));
        arguments += ": ";
        if (std::get<1>(args[i]) == "true")
          dump_string(arguments, std::get<2>(args[i]));
        else
          arguments += std::get<2>(args[i]);
      }
      arguments += "}";
      json fn = json::object();
      fn["name"] = name;
      fn["arguments"] = arguments;
      json call = json::object();
      call["type"] = "function";
      call["function"] = std::move(fn);
      calls.push_back(std::move(call));
    }
    const std::string_view tail = r.until({kEos}, stop);
    if (!tail.empty()) malformed("unexpected content after the tool calls");
  } else if (stop != kEos) {
    malformed("missing the end-of-sentence token");
  }
  if (r.index != text.size() || !(stop == kEos || stop.empty())) malformed("unexpected content at the end");
  for (const std::string_view sp : {kBos, kEos, kThinkStart, kThinkEnd, kDsml})
    if (content.find(sp) != std::string::npos || reasoning.find(sp) != std::string::npos)
      malformed(fmt::format("special token '{}' inside the content", sp));
  json out = json::object();
  out["role"] = "assistant";
  out["content"] = content;
  out["reasoning_content"] = reasoning;
  out["tool_calls"] = std::move(calls);
  return out;
}

}  // namespace kiln::tokenizer::dsv4
