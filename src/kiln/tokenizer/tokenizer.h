// Byte-level BPE tokenizer loaded from a Hugging Face `tokenizer.json`, producing the same
// ids as HF `tokenizers` (checked against tokenizers 0.23.2 on DeepSeek's 128k vocabulary).
//
// Pipeline (as HF's TokenizerImpl::encode_single_sequence, without post-processing):
//   1. added tokens that are not `normalized` are cut out of the raw text (leftmost,
//      then longest match; `single_word`, `lstrip`, `rstrip` honoured);
//   2. each remaining piece is normalized, and `normalized` added tokens are cut out of it;
//   3. the pre-tokenizer splits each remaining piece (Split with a Regex or String
//      pattern, every behaviour and `invert`; Digits; ByteLevel with `add_prefix_space`
//      and `use_regex`), regexes running under PCRE2 with Oniguruma semantics (regex.h);
//   4. the BPE model merges each word (cached), with `byte_fallback`, `unk_token`,
//      `fuse_unk`, `continuing_subword_prefix`, `end_of_word_suffix`, `ignore_merges`.
// The post-processor is not applied: encode() gives HF's encode(text,
// add_special_tokens=False) (DeepSeek's ByteLevel post-processor adds nothing anyway; the
// chat encoding writes BOS into the prompt text).
// Supported: normalizers Sequence / Replace / Prepend (or none); pre-tokenizers Sequence /
// Split / Digits / ByteLevel (ByteLevel last); model BPE without dropout; decoder ByteLevel
// (or none: tokens joined by spaces, as HF). Anything else is refused at load with a
// kiln::Error naming the file and the field.
//
// A Tokenizer is immutable after loading; encode/decode may run on many threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

struct EncodeOptions {
  // HF's `encode_special_tokens` / transformers' `split_special_tokens`: special added
  // tokens in the text are not matched and get tokenized as ordinary text.
  bool split_special_tokens = false;
};

class Tokenizer {
 public:
  // Throws kiln::Error: IO when the file cannot be read, Invalid (naming the file and the
  // field) when it is not a tokenizer.json kiln can run.
  static Tokenizer from_file(const std::filesystem::path& path);
  // `source` names the JSON in error messages.
  static Tokenizer from_json(std::string_view json, std::string_view source);

  // Text must be valid UTF-8 (kiln::Error Usage otherwise, naming the byte offset).
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Unknown ids are skipped (as HF). Invalid UTF-8 produced by the byte tokens becomes U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The pieces BPE would see (raw bytes, a ByteLevel prefix space included), with added
  // tokens as their own pieces: for debugging and tests.
  std::vector<std::string> pre_tokenize(std::string_view text, const EncodeOptions& options = {}) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token's string as stored in tokenizer.json (byte-level characters for BPE tokens).
  std::optional<std::string> id_to_token(int32_t id) const;
  // One past the largest id (model vocabulary and added tokens).
  size_t vocab_size() const;
  bool is_special(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;

  // What the decoder produces for one id: raw bytes (possibly an incomplete UTF-8
  // sequence); nullopt for an unknown id. Used by StreamDecoder.
  std::optional<std::string_view> token_bytes(int32_t id) const;
  // True when the decoder is ByteLevel; false when it joins token strings with spaces.
  bool byte_level_decoder() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  friend class StreamDecoder;
  std::shared_ptr<const Impl> impl_;
};

// Incremental decoding for streaming: push ids one at a time and get text that never ends
// inside a UTF-8 character. Bytes of an incomplete character are held until the next ids
// complete it; bytes that can no longer become valid are emitted as U+FFFD right away.
// The concatenation of every push() and finish() equals Tokenizer::decode of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string push(std::span<const int32_t> ids);
  // Flushes held bytes (as U+FFFD: the stream ended inside a character).
  std::string finish();
  // Bytes held back waiting for the rest of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  void append(int32_t id, std::string& out);
  Tokenizer tok_;
  bool skip_special_;
  bool first_ = true;
  std::string pending_;
};

}  // namespace kiln::tokenizer
