#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <set>

#include <fmt/format.h>

#include "io/io_test_util.h"
#include "kiln/core/error.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::le64;
using testing::st_image;
using testing::TempDir;
using testing::write_bytes;

std::vector<std::byte> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xff);
  return v;
}

std::vector<std::byte> as_vec(std::span<const std::byte> s) { return {s.begin(), s.end()}; }

// Writes `header` (+ data_bytes of data) as a file named `name` and opens it, expecting
// Error(Invalid) whose message names the file and contains every needle.
class BadHeader : public ::testing::Test {
 protected:
  void expect_invalid(std::string_view header, size_t data_bytes, std::initializer_list<std::string_view> needles,
                      std::string name = "bad.safetensors") {
    const auto p = dir_ / name;
    write_bytes(p, st_image(header, data_bytes));
    expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid, {name});
    expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid, needles);
  }
  TempDir dir_;
};

// ---------------------------------------------------------------------------------------
// Prefix checks

TEST_F(BadHeader, FileShorterThan8Bytes) {
  const auto p = dir_ / "tiny.safetensors";
  write_bytes(p, "abcde");
  expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid, {"tiny.safetensors", "only 5 bytes"});
  write_bytes(p, "");
  expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid, {"tiny.safetensors", "only 0 bytes"});
}

TEST_F(BadHeader, HeaderLengthZero) {
  const auto p = dir_ / "zero.safetensors";
  write_bytes(p, le64(0) + "{}");
  expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid, {"zero.safetensors", "header length is 0"});
}

TEST_F(BadHeader, HeaderLengthOverLimit) {
  const auto p = dir_ / "huge.safetensors";
  write_bytes(p, le64(100'000'001) + "{}");
  expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid,
               {"huge.safetensors", "header length 100000001", "100000000"});
  // A plausible-looking length that is simply garbage (e.g. a pickle file).
  write_bytes(p, le64(0x8000000000000000ull) + "{}");
  expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid, {"huge.safetensors", "exceeds"});
}

TEST_F(BadHeader, HeaderLengthPastEndOfFile) {
  const auto p = dir_ / "short.safetensors";
  write_bytes(p, le64(1000) + std::string(42, ' '));
  expect_error([&] { SafetensorsFile::open(p); }, ErrorKind::Invalid,
               {"short.safetensors", "header length 1000 past end of file (size 50)"});
}

TEST(SafetensorsPrefix, PureFunction) {
  std::string s = le64(16);
  auto span = std::as_bytes(std::span(s.data(), s.size()));
  EXPECT_EQ(parse_safetensors_prefix(span, 24, "x"), 16u);
  expect_error([&] { parse_safetensors_prefix(span, 23, "lbl.safetensors"); }, ErrorKind::Invalid,
               {"lbl.safetensors", "header length 16 past end of file (size 23)"});
  expect_error([&] { parse_safetensors_prefix(span.first(4), 24, "lbl"); }, ErrorKind::Usage, {"lbl"});
}

// ---------------------------------------------------------------------------------------
// JSON structure

TEST_F(BadHeader, MalformedJson) {
  expect_invalid(R"({"w": {"dtype": "F32", )", 0, {"not valid JSON", "byte"});
  expect_invalid(R"({"w" 1})", 0, {"not valid JSON", "byte 6"});
  // Events arrive in order: an entry that is already wrong is reported before a later
  // syntax error.
  expect_invalid(R"({"w": 1,})", 0, {"\"w\"", "entry is a number"});
  expect_invalid(R"({} trailing)", 0, {"not valid JSON"});
  // Padding must be spaces: NUL padding is not JSON whitespace.
  expect_invalid(std::string("{}\0\0\0\0\0\0", 8), 0, {"not valid JSON", "byte 2", "NUL"});
  expect_invalid(std::string("{}\0{\"x\": 1}", 10), 0, {"not valid JSON", "NUL"});
  // Invalid UTF-8 inside a string.
  expect_invalid("{\"w\xff\": {}}", 0, {"not valid JSON"});
}

TEST_F(BadHeader, TopLevelNotAnObject) {
  expect_invalid(R"([1, 2])", 0, {"top level is an array", "expected an object"});
  expect_invalid(R"("hello")", 0, {"top level is a string"});
  expect_invalid(R"(42)", 0, {"top level is a number"});
  expect_invalid(R"(null)", 0, {"top level is null"});
}

TEST_F(BadHeader, EntryNotAnObject) {
  expect_invalid(R"({"model.w": 5})", 0, {"\"model.w\"", "entry is a number", "expected an object"});
  expect_invalid(R"({"model.w": [0, 4]})", 0, {"\"model.w\"", "entry is an array"});
  expect_invalid(R"({"model.w": "F32"})", 0, {"\"model.w\"", "entry is a string"});
}

TEST_F(BadHeader, MissingFields) {
  expect_invalid(R"({"w.a": {"shape": [1], "data_offsets": [0, 4]}})", 4, {"\"w.a\"", "missing \"dtype\""});
  expect_invalid(R"({"w.b": {"dtype": "F32", "data_offsets": [0, 4]}})", 4, {"\"w.b\"", "missing \"shape\""});
  expect_invalid(R"({"w.c": {"dtype": "F32", "shape": [1]}})", 4, {"\"w.c\"", "missing \"data_offsets\""});
  expect_invalid(R"({"w.d": {}})", 0, {"\"w.d\"", "missing \"dtype\""});
}

TEST_F(BadHeader, IllTypedFields) {
  expect_invalid(R"({"t1": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}})", 4,
                 {"\"t1\"", "dtype is a number", "expected a string"});
  expect_invalid(R"({"t2": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4,
                 {"\"t2\"", "shape is a string", "array of non-negative integers"});
  expect_invalid(R"({"t3": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4,
                 {"\"t3\"", "shape contains a non-integer number"});
  expect_invalid(R"({"t4": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}})", 4,
                 {"\"t4\"", "shape contains an array"});
  expect_invalid(R"({"t5": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}})", 4,
                 {"\"t5\"", "data_offsets is a string", "[begin, end]"});
  expect_invalid(R"({"t6": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8,
                 {"\"t6\"", "more than 2 elements", "[begin, end]"});
  expect_invalid(R"({"t7": {"dtype": "F32", "shape": [1], "data_offsets": [4]}})", 8,
                 {"\"t7\"", "1 element(s)", "[begin, end]"});
  expect_invalid(R"({"t8": {"dtype": "F32", "shape": [1], "data_offsets": [0, true]}})", 8,
                 {"\"t8\"", "data_offsets contains a boolean"});
  expect_invalid(R"({"t9": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 8,
                 {"\"t9\"", "negative value -4"});
  expect_invalid(R"({"t10": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 8,
                 {"\"t10\"", "\"dtype\" appears twice"});
  expect_invalid(R"({"t11": {"dtype": null, "shape": [1], "data_offsets": [0, 4]}})", 8,
                 {"\"t11\"", "dtype is null"});
  expect_invalid(R"({"t12": {"dtype": "F32", "shape": {"0": 1}, "data_offsets": [0, 4]}})", 8,
                 {"\"t12\"", "shape is an object"});
}

TEST_F(BadHeader, MetadataNotStringMap) {
  expect_invalid(R"({"__metadata__": {"format": 1}})", 0, {"__metadata__", "\"format\"", "expected a string"});
  expect_invalid(R"({"__metadata__": {"format": {"a": "b"}}})", 0, {"__metadata__", "\"format\"", "an object"});
  expect_invalid(R"({"__metadata__": ["pt"]})", 0, {"__metadata__", "is an array"});
  expect_invalid(R"({"__metadata__": "pt"})", 0, {"__metadata__", "is a string"});
  expect_invalid(R"({"__metadata__": {"a": "1", "a": "2"}})", 0, {"__metadata__", "\"a\" twice"});
  expect_invalid(R"({"__metadata__": {}, "__metadata__": {}})", 0, {"__metadata__", "twice"});
}

TEST_F(BadHeader, DuplicateTensorNames) {
  // nlohmann's DOM would keep only the second entry; the reader must notice.
  expect_invalid(R"({"layers.0.w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "other":       {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},
                     "layers.0.w": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}})",
                 12, {"\"layers.0.w\"", "duplicate tensor name"});
}

// ---------------------------------------------------------------------------------------
// Tensor entries

TEST_F(BadHeader, UnknownDtype) {
  expect_invalid(R"({"experts.w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", 1,
                 {"\"experts.w\"", "unknown dtype \"F4\"", "known:", "BF16", "F8_E4M3", "F8_E8M0"});
  expect_invalid(R"({"x": {"dtype": "bf16", "shape": [2], "data_offsets": [0, 4]}})", 4,
                 {"\"x\"", "unknown dtype \"bf16\""});
}

TEST_F(BadHeader, NegativeDim) {
  expect_invalid(R"({"neg.w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 0]}})", 0,
                 {"\"neg.w\"", "negative dimension -3"});
}

TEST_F(BadHeader, NumelOverflow) {
  expect_invalid(R"({"big.w": {"dtype": "U8", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 0]}})", 0,
                 {"\"big.w\"", "too many elements", "[4294967296, 4294967296, 4]"});
  // numel fits in int64, bytes do not fit in uint64.
  expect_invalid(R"({"big.b": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0,
                 {"\"big.b\"", "more than 2^64 bytes"});
  expect_invalid(R"({"big.d": {"dtype": "F64", "shape": [99999999999999999999], "data_offsets": [0, 0]}})", 0,
                 {"\"big.d\"", "shape contains a non-integer"});
}

TEST_F(BadHeader, OffsetsBeginAfterEnd) {
  expect_invalid(R"({"rev": {"dtype": "U8", "shape": [4], "data_offsets": [8, 4]}})", 8,
                 {"\"rev\"", "[8, 4]", "begin > end"});
}

TEST_F(BadHeader, TruncatedDataSection) {
  expect_invalid(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "layers.9.ffn.w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                 20,
                 {"truncated: tensor \"layers.9.ffn.w\" needs bytes [8, 24) of the data section but the file has "
                  "only 20"});
}

TEST_F(BadHeader, ByteCountMismatch) {
  expect_invalid(R"({"mis.w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 10]}})", 16,
                 {"\"mis.w\"", "hold 10 bytes", "needs 12 bytes", "BF16", "[2, 3]"});
}

TEST_F(BadHeader, OverlappingTensors) {
  expect_invalid(R"({"first":  {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                     "second": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})",
                 12, {"\"first\"", "\"second\"", "overlap"});
  // A small tensor wholly inside a big one, listed first in JSON.
  expect_invalid(R"({"inner": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]},
                     "outer": {"dtype": "U8", "shape": [32], "data_offsets": [0, 32]},
                     "after": {"dtype": "U8", "shape": [2], "data_offsets": [40, 42]}})",
                 64, {"\"inner\"", "\"outer\"", "overlap"});
  // Identical ranges.
  expect_invalid(R"({"x1": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "x2": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})",
                 4, {"\"x1\"", "\"x2\"", "overlap"});
}

TEST(SafetensorsHeader, HolesTrailingBytesUnknownFieldsAllowed) {
  const std::string h = R"({"b": {"dtype": "U8", "shape": [4], "data_offsets": [16, 20], "extra": {"x": [1, {}]}},
                            "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                            "e": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]},
                            "__metadata__": {"format": "pt"}})";
  SafetensorsHeader hdr = parse_safetensors_header(h, 100, "x.safetensors");
  ASSERT_EQ(hdr.tensors.size(), 3u);
  // Offset order (the empty tensor at 2 sorts between).
  EXPECT_EQ(hdr.tensors[0].name, "a");
  EXPECT_EQ(hdr.tensors[1].name, "e");
  EXPECT_EQ(hdr.tensors[2].name, "b");
  EXPECT_EQ(hdr.tensors[2].begin, 16u);
  EXPECT_EQ(hdr.tensors[2].end, 20u);
  EXPECT_EQ(hdr.metadata.at("format"), "pt");
  EXPECT_EQ(hdr.header_size, h.size());
  EXPECT_EQ(hdr.data_size, 100u);
  EXPECT_EQ(hdr.tensors[1].numel(), 0);
}

TEST(SafetensorsHeader, EmptyHeaderAndPureLabel) {
  EXPECT_TRUE(parse_safetensors_header("{}", 0, "e").tensors.empty());
  EXPECT_TRUE(parse_safetensors_header("  {}    ", 0, "e").tensors.empty());
  expect_error([] { parse_safetensors_header(R"({"w": 1})", 0, "label-xyz"); }, ErrorKind::Invalid,
               {"label-xyz", "\"w\""});
  expect_error([] { parse_safetensors_header("", 0, "label-xyz"); }, ErrorKind::Invalid,
               {"label-xyz", "not valid JSON"});
}

TEST(SafetensorsHeader, FastPathAgreesWithReference) {
  // Headers on both sides of the fast scanner's subset: escapes, raw UTF-8, floats and
  // deep nesting in ignored fields, -0, uint64 limits, odd whitespace, and errors.
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  const std::vector<std::string> headers = {
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
      R"({"a\"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
      R"({"caf\u00e9":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
      "{\"caf\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":1.5e3}})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":)" + deep + "}}",
      R"({"a":{"dtype":"U8","shape":[-0, 2],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}})",
      " \t\r\n{ \"a\" :\n{\"dtype\" : \"U8\" , \"shape\":[ 2 ],\"data_offsets\":[0 ,2] } } \n",
      R"({"__metadata__":{"k":"v\n","k2":"\u0041"}})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}} x)",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":tru})",
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":true})",
      "{\"a\x01\":{}}",
      "{\"a\x7f\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
      R"([])",
      R"({})",
      "",
  };
  for (const std::string& h : headers) {
    std::string fast_err, ref_err;
    std::optional<SafetensorsHeader> fast, ref;
    try {
      fast = parse_safetensors_header(h, 16, "agree");
    } catch (const Error& e) {
      fast_err = e.what();
    }
    try {
      ref = detail::parse_safetensors_header_reference(h, 16, "agree");
    } catch (const Error& e) {
      ref_err = e.what();
    }
    EXPECT_EQ(fast_err, ref_err) << h;
    ASSERT_EQ(fast.has_value(), ref.has_value()) << h;
    if (!fast) continue;
    ASSERT_EQ(fast->tensors.size(), ref->tensors.size()) << h;
    for (size_t i = 0; i < fast->tensors.size(); ++i) {
      EXPECT_EQ(fast->tensors[i].name, ref->tensors[i].name) << h;
      EXPECT_EQ(fast->tensors[i].shape, ref->tensors[i].shape) << h;
      EXPECT_EQ(fast->tensors[i].begin, ref->tensors[i].begin) << h;
    }
    EXPECT_EQ(fast->metadata, ref->metadata) << h;
  }
  // Spot checks of what the fallback produced.
  EXPECT_EQ(parse_safetensors_header(headers[1], 2, "x").tensors[0].name, "a\"b");
  EXPECT_EQ(parse_safetensors_header(headers[2], 2, "x").tensors[0].name, "caf\xc3\xa9");
  EXPECT_EQ(parse_safetensors_header(headers[3], 2, "x").tensors[0].name, "caf\xc3\xa9");
  EXPECT_EQ(parse_safetensors_header(headers[6], 0, "x").tensors[0].shape, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(parse_safetensors_header(headers[11], 0, "x").metadata.at("k2"), "A");
}

TEST(SafetensorsHeader, ManyDims) {
  // More dims than the parser's inline buffer.
  SafetensorsHeader h = parse_safetensors_header(
      R"({"a":{"dtype":"U8","shape":[1,2,1,2,1,2,1,2,1,2,3],"data_offsets":[0,96]}})", 96, "dims");
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 3}));
  EXPECT_EQ(h.tensors[0].numel(), 96);
}

TEST(SafetensorsHeader, ManyTensorsShuffled) {
  // 5000 tensors listed in a scrambled order with holes; sorted by offset on return.
  constexpr int n = 5000;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  std::string h = "{";
  for (int k = 0; k < n; ++k) {
    int i = order[k];
    if (k) h += ',';
    h += fmt::format(R"("model.layers.{}.mlp.experts.{}.w": {{"dtype":"BF16","shape":[2,{}],"data_offsets":[{},{}]}})",
                     i / 100, i % 100, i % 7, i * 64, i * 64 + 4 * (i % 7));
  }
  h += "}";
  SafetensorsHeader hdr = parse_safetensors_header(h, uint64_t{n} * 64, "many");
  ASSERT_EQ(hdr.tensors.size(), size_t{n});
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(hdr.tensors[i].begin, uint64_t(i) * 64);
    EXPECT_EQ(hdr.tensors[i].name, fmt::format("model.layers.{}.mlp.experts.{}.w", i / 100, i % 100));
  }
}

// ---------------------------------------------------------------------------------------
// Round trips through the writer

TEST(SafetensorsWriter, RoundTripAllDtypes) {
  TempDir dir;
  const auto p = dir / "all.safetensors";
  std::vector<SafetensorsWriter::Tensor> ts;
  for (int i = 0; i < kNumDTypes; ++i) {
    DType d = static_cast<DType>(i);
    std::vector<int64_t> shape = {i % 3 + 1, 5};
    size_t nbytes = dtype_size(d) * static_cast<size_t>(shape[0] * shape[1]);
    ts.push_back({fmt::format("t.{}.{}", i, dtype_name(d)), d, shape, random_bytes(nbytes, i + 1)});
  }
  ts.push_back({"scalar", DType::F32, {}, random_bytes(4, 99)});
  ts.push_back({"empty", DType::BF16, {3, 0, 2}, {}});
  ts.push_back({"after_empty", DType::I64, {1}, random_bytes(8, 100)});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "quote \" and \\ and \n ünï"}};
  SafetensorsWriter::write_file(p, ts, meta);

  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.path(), p);
  EXPECT_EQ(f.header().metadata, meta);
  EXPECT_EQ(f.header().header_size % 8, 0u);
  EXPECT_EQ(f.file_size(), std::filesystem::file_size(p));
  EXPECT_EQ(f.file_size(), 8 + f.header().header_size + f.header().data_size);
  ASSERT_EQ(f.tensors().size(), ts.size());
  // Laid out contiguously in declaration order.
  uint64_t off = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const TensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.name, ts[i].name);
    EXPECT_EQ(t.dtype, ts[i].dtype);
    EXPECT_EQ(t.shape, ts[i].shape);
    EXPECT_EQ(t.begin, off);
    EXPECT_EQ(t.nbytes(), ts[i].bytes.size());
    off = t.end;
    EXPECT_EQ(as_vec(f.data(t)), ts[i].bytes) << t.name;
    EXPECT_EQ(f.find(t.name), &t);
  }
  EXPECT_EQ(f.header().data_size, off);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_EQ(f.find(""), nullptr);

  const TensorInfo* s = f.find("scalar");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->numel(), 1);
  const TensorInfo* e = f.find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->numel(), 0);
  EXPECT_EQ(e->nbytes(), 0u);
  EXPECT_TRUE(f.data(*e).empty());

  // The raw file: le64 length, JSON padded with spaces.
  std::ifstream in(p, std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(raw.substr(0, 8), le64(f.header().header_size));
  const std::string json = raw.substr(8, f.header().header_size);
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(json.substr(0, 15), "{\"__metadata__\"");
  EXPECT_EQ(json.find_last_not_of(' '), json.rfind('}'));
}

TEST(SafetensorsWriter, NoMetadataAndNoTensors) {
  TempDir dir;
  const auto p = dir / "empty.safetensors";
  SafetensorsWriter::write_file(p, {});
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.header().metadata.empty());
  EXPECT_EQ(f.file_size(), 16u);  // "{}" padded to 8

  const auto q = dir / "nometa.safetensors";
  SafetensorsWriter::write_file(q, {{"x", DType::U8, {3}, random_bytes(3, 1)}});
  std::ifstream in(q, std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(raw.find("__metadata__"), std::string::npos);
}

TEST(SafetensorsWriter, StreamingApi) {
  TempDir dir;
  const auto p = dir / "stream.safetensors";
  auto a = random_bytes(64, 1), c = random_bytes(6, 3);
  {
    SafetensorsWriter w(p);
    w.set_metadata("k", "v");
    w.declare("a", DType::F32, {4, 4});
    w.declare("b", DType::F32, {2}, /*sparse=*/true);
    w.declare("c", DType::F16, {3});
    w.begin();
    w.write("a", a);
    w.write("c", c);
    w.finish();
  }
  SafetensorsFile f = SafetensorsFile::open(p);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(as_vec(f.data(*f.find("a"))), a);
  EXPECT_EQ(as_vec(f.data(*f.find("b"))), std::vector<std::byte>(8, std::byte{0}));
  EXPECT_EQ(as_vec(f.data(*f.find("c"))), c);
  EXPECT_EQ(f.header().metadata.at("k"), "v");
}

TEST(SafetensorsWriter, UsageErrors) {
  TempDir dir;
  const auto p = dir / "usage.safetensors";
  SafetensorsWriter w(p);
  w.declare("a", DType::U8, {4});
  w.declare("s", DType::U8, {4}, true);
  w.declare("b", DType::U8, {2});
  expect_error([&] { w.declare("a", DType::U8, {1}); }, ErrorKind::Usage, {"usage.safetensors", "\"a\"", "twice"});
  expect_error([&] { w.declare("neg", DType::U8, {-1}); }, ErrorKind::Usage, {"\"neg\"", "negative"});
  expect_error([&] { w.declare("__metadata__", DType::U8, {1}); }, ErrorKind::Usage, {"__metadata__"});
  expect_error([&] { w.declare("huge", DType::F64, {int64_t{1} << 40, int64_t{1} << 30}); }, ErrorKind::Usage,
               {"\"huge\""});
  expect_error([&] { w.write("a", {}); }, ErrorKind::Usage, {"begin()"});
  expect_error([&] { w.finish(); }, ErrorKind::Usage, {"begin()"});
  w.begin();
  expect_error([&] { w.declare("late", DType::U8, {1}); }, ErrorKind::Usage, {"begin() was already called"});
  expect_error([&] { w.set_metadata("k", "v"); }, ErrorKind::Usage, {"begin() was already called"});
  expect_error([&] { w.begin(); }, ErrorKind::Usage, {"begin() was already called"});
  auto four = random_bytes(4, 1), two = random_bytes(2, 2);
  expect_error([&] { w.write("b", two); }, ErrorKind::Usage, {"\"b\"", "declaration order", "next is \"a\""});
  expect_error([&] { w.write("a", two); }, ErrorKind::Usage, {"\"a\"", "got 2 bytes, expected 4"});
  expect_error([&] { w.finish(); }, ErrorKind::Usage, {"\"a\"", "never written"});
  w.write("a", four);
  expect_error([&] { w.write("s", four); }, ErrorKind::Usage, {"\"s\"", "sparse"});
  w.write("b", two);
  expect_error([&] { w.write("b", two); }, ErrorKind::Usage, {"every declared tensor has been written"});
  w.finish();
  expect_error([&] { w.finish(); }, ErrorKind::Usage, {"finish() was already called"});
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(as_vec(f.data(*f.find("a"))), four);
  EXPECT_EQ(as_vec(f.data(*f.find("b"))), two);

  expect_error(
      [&] {
        SafetensorsWriter::write_file(dir / "x.safetensors", {{"sp", DType::U8, {1}, random_bytes(1, 1), true}});
      },
      ErrorKind::Usage, {"\"sp\"", "sparse"});
}

TEST(SafetensorsWriter, IoErrorNamesPath) {
  TempDir dir;
  const auto p = dir / "no_such_dir" / "out.safetensors";
  expect_error([&] { SafetensorsWriter::write_file(p, {{"a", DType::U8, {1}, random_bytes(1, 1)}}); },
               ErrorKind::IO, {"no_such_dir/out.safetensors", "cannot create"});
}

TEST(SafetensorsWriter, AbandonedWriterRemovesFile) {
  TempDir dir;
  const auto p = dir / "partial.safetensors";
  {
    SafetensorsWriter w(p);
    w.declare("a", DType::U8, {4});
    w.begin();
    EXPECT_TRUE(std::filesystem::exists(p));
  }
  EXPECT_FALSE(std::filesystem::exists(p));
}

TEST(SafetensorsWriter, SparseFileIsSparseAndReadsZeros) {
  TempDir dir;
  const auto p = dir / "sparse.safetensors";
  constexpr int64_t rows = 16384, cols = 4096;  // 128 MiB of BF16
  auto small = random_bytes(32, 5);
  SafetensorsWriter::write_file(p, {{"head", DType::U8, {32}, small},
                                    {"big", DType::BF16, {rows, cols}, {}, true},
                                    {"mid", DType::U8, {32}, small},
                                    {"tail", DType::F32, {1024, 1024}, {}, true}});  // trailing hole
  SafetensorsFile f = SafetensorsFile::open(p);
  const uint64_t expect_size = 8 + f.header().header_size + 32 + rows * cols * 2 + 32 + 4 * 1024 * 1024;
  EXPECT_EQ(f.file_size(), expect_size);
  EXPECT_EQ(std::filesystem::file_size(p), expect_size);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_LT(uint64_t(st.st_blocks) * 512, uint64_t{1} << 20) << "file is not sparse";

  auto big = f.data(*f.find("big"));
  ASSERT_EQ(big.size(), size_t(rows * cols * 2));
  // All zeros: compare 64 KiB blocks against a zero block.
  static const std::vector<std::byte> zeros(1 << 16);
  for (size_t off = 0; off < big.size(); off += zeros.size())
    ASSERT_EQ(std::memcmp(big.data() + off, zeros.data(), std::min(zeros.size(), big.size() - off)), 0) << off;
  auto tail = f.data(*f.find("tail"));
  ASSERT_EQ(tail.size(), 4u << 20);
  EXPECT_EQ(std::memcmp(tail.data() + tail.size() - 4096, zeros.data(), 4096), 0);
  EXPECT_EQ(as_vec(f.data(*f.find("head"))), small);
  EXPECT_EQ(as_vec(f.data(*f.find("mid"))), small);
}

// ---------------------------------------------------------------------------------------
// File-level behaviour

TEST(SafetensorsFile, OpenErrors) {
  TempDir dir;
  expect_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); }, ErrorKind::IO,
               {"missing.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile::open(dir.path()); }, ErrorKind::IO, {dir.path().string(), "not a regular file"});
}

TEST(SafetensorsFile, OpenReadsOnlyTheHeader) {
  // A data section full of garbage is never looked at by open(); holes + trailing bytes OK.
  TempDir dir;
  const auto p = dir / "holes.safetensors";
  const std::string h = R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}})";
  write_bytes(p, st_image(h, 64, '\x07'));
  SafetensorsFile f = SafetensorsFile::open(p);
  ASSERT_EQ(f.tensors().size(), 1u);
  auto d = f.data(f.tensors()[0]);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0], std::byte{7});
  // data() of a TensorInfo that is not within this file is a usage error.
  TensorInfo bogus{"bogus", DType::U8, {100}, 0, 100};
  expect_error([&] { f.data(bogus); }, ErrorKind::Usage, {"holes.safetensors", "\"bogus\""});
}

TEST(SafetensorsFile, MoveKeepsMappingAndPointers) {
  TempDir dir;
  const auto p = dir / "mv.safetensors";
  auto bytes = random_bytes(16, 4);
  SafetensorsWriter::write_file(p, {{"w", DType::F32, {4}, bytes}});
  SafetensorsFile a = SafetensorsFile::open(p);
  const TensorInfo* t = a.find("w");
  auto d1 = a.data(*t);
  SafetensorsFile b = std::move(a);
  EXPECT_EQ(b.find("w"), t);
  auto d2 = b.data(*t);
  EXPECT_EQ(d1.data(), d2.data());
  EXPECT_EQ(as_vec(d2), bytes);
}

TEST(SafetensorsFile, SeedCorpusParsesOrFailsCleanly) {
  // The fuzz seeds: valid_* open and read; bad_* throw Error(Invalid) naming the file.
  const std::filesystem::path corpus = std::filesystem::path(KILN_FUZZ_CORPUS_DIR) / "safetensors_header";
  ASSERT_TRUE(std::filesystem::is_directory(corpus)) << corpus;
  int valid = 0, bad = 0;
  for (const auto& e : std::filesystem::directory_iterator(corpus)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("valid_")) {
      ++valid;
      try {
        SafetensorsFile f = SafetensorsFile::open(e.path());
        for (const auto& t : f.tensors()) EXPECT_EQ(f.data(t).size(), t.nbytes());
      } catch (const Error& err) {
        ADD_FAILURE() << name << ": " << err.what();
      }
    } else if (name.starts_with("bad_")) {
      ++bad;
      expect_error([&] { SafetensorsFile::open(e.path()); }, ErrorKind::Invalid, {name});
    }
  }
  EXPECT_GE(valid, 5);
  EXPECT_GE(bad, 10);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// vllm#43416: E8M0 scale bytes stored under an F32 declaration.
TEST(SafetensorsE8M0AsF32, OneBytePerElementIsNamed) {
  const std::string header = R"({"w.scale":{"dtype":"F32","shape":[4,8],"data_offsets":[0,32]}})";
  try {
    parse_safetensors_header(header, 32, "shard.safetensors");
    FAIL() << "accepted";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("shard.safetensors"), std::string::npos) << m;
    EXPECT_NE(m.find("w.scale"), std::string::npos) << m;
    EXPECT_NE(m.find("one byte per element"), std::string::npos) << m;
    EXPECT_EQ(e.exit_code(), 2);
  }
}

}  // namespace
}  // namespace kiln
