// Tokenizer::Impl::load*: reading a tokenizer.json (HF tokenizers' format) into the
// tokenizer's tables, with an error naming the file and the field for anything malformed.
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

#include "kiln/tokenizer/tokenizer_impl.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tokenizer {

using json = nlohmann::json;

namespace {

const json& need(const Tokenizer::Impl& t, const json& obj, const char* key, const std::string& field) {
  if (!obj.is_object()) t.bad(field, "expected a JSON object");
  const auto it = obj.find(key);
  if (it == obj.end()) t.bad(field + "." + key, "missing");
  return *it;
}

std::string need_string(const Tokenizer::Impl& t, const json& obj, const char* key, const std::string& field) {
  const json& v = need(t, obj, key, field);
  if (!v.is_string()) t.bad(field + "." + key, "expected a string");
  return v.get<std::string>();
}

bool opt_bool(const Tokenizer::Impl& t, const json& obj, const char* key, const std::string& field, bool dflt) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) t.bad(field + "." + key, "expected true or false");
  return it->get<bool>();
}

std::optional<std::string> opt_string(const Tokenizer::Impl& t, const json& obj, const char* key,
                                      const std::string& field) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) t.bad(field + "." + key, "expected a string or null");
  return it->get<std::string>();
}

Regex pattern_of(const Tokenizer::Impl& t, const json& obj, const std::string& field) {
  const json& p = need(t, obj, "pattern", field);
  const std::string f = field + ".pattern";
  const std::string where = fmt::format("tokenizer {}: {}", t.source, f);
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
    return Regex(p["Regex"].get<std::string>(), where);
  if (p.is_object() && p.contains("String") && p["String"].is_string())
    return Regex::literal(p["String"].get<std::string>(), where);
  t.bad(f, "expected {\"Regex\": ...} or {\"String\": ...}");
}

Behavior behavior_of(const Tokenizer::Impl& t, const json& obj, const std::string& field) {
  const std::string b = need_string(t, obj, "behavior", field);
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  t.bad(field + ".behavior", fmt::format("unknown behavior '{}'", b));
}

}  // namespace

void Tokenizer::Impl::load(const json& j) {
  if (!j.is_object()) bad("(root)", "expected a JSON object");
  load_model(need(*this, j, "model", ""));
  if (auto it = j.find("normalizer"); it != j.end() && !it->is_null()) load_normalizer(*it, "normalizer");
  if (auto it = j.find("pre_tokenizer"); it != j.end() && !it->is_null()) {
    bool saw = false;
    load_pre_tokenizer(*it, "pre_tokenizer", saw);
  }
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) load_added(*it);
  if (auto it = j.find("decoder"); it != j.end() && !it->is_null()) load_decoder(*it);

  // Byte-level fast path: each byte's character is a model token.
  const auto& chars = byte_level_chars();
  byte_fast = byte_level && prefix.empty() && suffix.empty();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, chars[b]);
    const auto it = vocab.find(s);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
    if (byte_ids[b] < 0) byte_fast = false;
    const auto fb = vocab.find(fmt::format("<0x{:02X}>", b));
    byte_fallback_ids[b] = fb == vocab.end() ? -1 : fb->second;
  }

  // What each id decodes to.
  vocab_size = model_tokens.size();
  for (const auto& a : added) vocab_size = std::max(vocab_size, size_t(a.id) + 1);
  decoded.assign(vocab_size, {});
  known.assign(vocab_size, 0);
  special.assign(vocab_size, 0);
  std::unordered_set<std::string> special_contents;
  for (const auto& a : added)
    if (a.special) special_contents.insert(a.content);
  for (size_t id = 0; id < vocab_size; ++id) {
    const std::string* tok = nullptr;
    if (auto it = added_by_id.find(int32_t(id)); it != added_by_id.end())
      tok = &added[it->second].content;
    else if (id < in_model.size() && in_model[id])
      tok = &model_tokens[id];
    if (!tok) continue;
    known[id] = 1;
    special[id] = special_contents.count(*tok) ? 1 : 0;
    if (!byte_level_decoder) {
      decoded[id] = *tok;
      continue;
    }
    // ByteLevel decoder: the token's characters mapped back to bytes, or the token's own
    // UTF-8 when any character is outside the byte map (HF decode_chain).
    std::string bytes;
    bool all = true;
    for (size_t i = 0; i < tok->size();) {
      const size_t n = utf8_sequence_length(*tok, i);
      const int b = n ? byte_level_byte(utf8_decode(*tok, i, n)) : -1;
      if (b < 0) {
        all = false;
        break;
      }
      bytes.push_back(static_cast<char>(b));
      i += n;
    }
    decoded[id] = all ? std::move(bytes) : *tok;
  }
}

void Tokenizer::Impl::load_model(const json& m) {
  const std::string f = "model";
  if (!m.is_object()) bad(f, "expected a JSON object");
  if (auto type = opt_string(*this, m, "type", f); type && *type != "BPE")
    bad(f + ".type", fmt::format("'{}' is not supported (kiln runs BPE models)", *type));
  if (auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
    if (!it->is_number()) bad(f + ".dropout", "expected a number or null");
    if (it->get<double>() != 0.0) bad(f + ".dropout", "BPE dropout is not supported for inference");
  }
  unk_token = opt_string(*this, m, "unk_token", f);
  fuse_unk = opt_bool(*this, m, "fuse_unk", f, false);
  byte_fallback = opt_bool(*this, m, "byte_fallback", f, false);
  ignore_merges = opt_bool(*this, m, "ignore_merges", f, false);
  prefix = opt_string(*this, m, "continuing_subword_prefix", f).value_or("");
  suffix = opt_string(*this, m, "end_of_word_suffix", f).value_or("");

  const json& v = need(*this, m, "vocab", f);
  if (!v.is_object()) bad(f + ".vocab", "expected an object of token -> id");
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad(f + ".vocab[\"" + it.key() + "\"]", "expected a non-negative integer id");
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    vocab[it.key()] = id;
    if (size_t(id) >= model_tokens.size()) {
      model_tokens.resize(size_t(id) + 1);
      in_model.resize(size_t(id) + 1, 0);
    }
    model_tokens[id] = it.key();
    in_model[id] = 1;
  }

  const json& mg = need(*this, m, "merges", f);
  if (!mg.is_array()) bad(f + ".merges", "expected an array");
  merges.reserve(mg.size());
  std::string a, b;
  for (size_t r = 0; r < mg.size(); ++r) {
    const json& e = mg[r];
    const std::string field = fmt::format("{}.merges[{}]", f, r);
    if (e.is_string()) {
      const auto& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) bad(field, fmt::format("'{}' is not two tokens separated by a space", s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      bad(field, "expected \"a b\" or [\"a\", \"b\"]");
    }
    const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    if (ia == vocab.end()) bad(field, fmt::format("token '{}' is not in model.vocab", a));
    if (ib == vocab.end()) bad(field, fmt::format("token '{}' is not in model.vocab", b));
    if (iab == vocab.end()) bad(field, fmt::format("merged token '{}' is not in model.vocab", a + b));
    merges.insert(ia->second, ib->second, uint32_t(r), iab->second);
  }
}

void Tokenizer::Impl::load_normalizer(const json& n, const std::string& f) {
  const std::string type = need_string(*this, n, "type", f);
  if (type == "Sequence") {
    const json& list = need(*this, n, "normalizers", f);
    if (!list.is_array()) bad(f + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) load_normalizer(list[i], fmt::format("{}.normalizers[{}]", f, i));
  } else if (type == "Replace") {
    norm.push_back({NormKind::Replace, pattern_of(*this, n, f), need_string(*this, n, "content", f)});
  } else if (type == "Prepend") {
    norm.push_back({NormKind::Prepend, std::nullopt, need_string(*this, n, "prepend", f)});
  } else {
    bad(f + ".type", fmt::format("normalizer '{}' is not supported (kiln supports Sequence, Replace, Prepend)", type));
  }
}

void Tokenizer::Impl::load_pre_tokenizer(const json& p, const std::string& f, bool& saw_byte_level) {
  const std::string type = need_string(*this, p, "type", f);
  if (type == "Sequence") {
    const json& list = need(*this, p, "pretokenizers", f);
    if (!list.is_array()) bad(f + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      load_pre_tokenizer(list[i], fmt::format("{}.pretokenizers[{}]", f, i), saw_byte_level);
    return;
  }
  if (saw_byte_level)
    bad(f, fmt::format("'{}' after ByteLevel is not supported (ByteLevel must be the last pre-tokenizer)", type));
  if (type == "Split") {
    splits.push_back({pattern_of(*this, p, f), behavior_of(*this, p, f), opt_bool(*this, p, "invert", f, false)});
  } else if (type == "Digits") {
    const bool individual = opt_bool(*this, p, "individual_digits", f, false);
    splits.push_back({Regex("\\p{N}", f), individual ? Behavior::Isolated : Behavior::Contiguous, false});
  } else if (type == "ByteLevel") {
    saw_byte_level = true;
    byte_level = true;
    bl_prefix_space = opt_bool(*this, p, "add_prefix_space", f, true);
    if (opt_bool(*this, p, "use_regex", f, true))
      bl_regex.emplace("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", f);
  } else {
    bad(f + ".type",
        fmt::format("pre-tokenizer '{}' is not supported (kiln supports Sequence, Split, Digits, ByteLevel)", type));
  }
}

void Tokenizer::Impl::load_added(const json& a) {
  const std::string f = "added_tokens";
  if (!a.is_array()) bad(f, "expected an array");
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string field = fmt::format("{}[{}]", f, i);
    const json& e = a[i];
    AddedToken t;
    const json& id = need(*this, e, "id", field);
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad(field + ".id", "expected a non-negative integer");
    t.id = static_cast<int32_t>(id.get<int64_t>());
    t.content = need_string(*this, e, "content", field);
    t.special = opt_bool(*this, e, "special", field, false);
    t.single_word = opt_bool(*this, e, "single_word", field, false);
    t.lstrip = opt_bool(*this, e, "lstrip", field, false);
    t.rstrip = opt_bool(*this, e, "rstrip", field, false);
    t.normalized = opt_bool(*this, e, "normalized", field, !t.special);
    if (t.content.empty()) bad(field + ".content", "empty");
    if (utf8_first_invalid(t.content) != t.content.size()) bad(field + ".content", "not valid UTF-8");
    if (auto it = vocab.find(t.content); it != vocab.end() && it->second != t.id)
      bad(field + ".id", fmt::format("'{}' has id {} in model.vocab but {} here", t.content, it->second, t.id));
    if (size_t(t.id) < in_model.size() && in_model[t.id] && model_tokens[t.id] != t.content)
      bad(field + ".id", fmt::format("id {} of '{}' is '{}' in model.vocab", t.id, t.content, model_tokens[t.id]));
    if (added_by_id.count(t.id)) bad(field + ".id", fmt::format("id {} is used by two added tokens", t.id));
    added_by_id[t.id] = added.size();
    added_by_content.emplace(t.content, t.id);
    added.push_back(std::move(t));
  }
  // HF builds its matchers from the special tokens first, then the others, each in file order.
  for (int pass = 0; pass < 2; ++pass)
    for (size_t i = 0; i < added.size(); ++i) {
      const auto& t = added[i];
      if (t.special != (pass == 0)) continue;
      if (t.normalized)
        norm_trie.insert(normalize(t.content), int32_t(i));
      else
        raw_trie.insert(t.content, int32_t(i));
    }
  const bool any_strip = std::any_of(added.begin(), added.end(), [](const auto& t) { return t.lstrip || t.rstrip; });
  const bool any_word = std::any_of(added.begin(), added.end(), [](const auto& t) { return t.single_word; });
  if (any_strip) ws_regex.emplace("\\s", f);
  if (any_word) {
    // Rust regex's \w: Alphabetic, M, Nd, Pc, Join_Control (Alphabetic approximated by L + Nl).
    word_start.emplace("\\A[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]", f);
    word_end.emplace("[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]\\z", f);
  }
}

void Tokenizer::Impl::load_decoder(const json& d) {
  const std::string type = need_string(*this, d, "type", "decoder");
  if (type != "ByteLevel")
    bad("decoder.type", fmt::format("decoder '{}' is not supported (kiln supports ByteLevel)", type));
  byte_level_decoder = true;
}

}  // namespace kiln::tokenizer
