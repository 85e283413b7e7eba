#include "kiln/io/checkpoint.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "support/artifacts.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::TempDir;
using testing::write_bytes;

// Writes a shard holding U8 tensors of 4 bytes each (value = index + 1).
void write_shard(const std::filesystem::path& p, const std::vector<std::string>& names) {
  std::vector<SafetensorsWriter::Tensor> ts;
  uint8_t v = 1;
  for (const auto& n : names) ts.push_back({n, DType::U8, {4}, std::vector<std::byte>(4, std::byte{v++})});
  SafetensorsWriter::write_file(p, ts);
}

void write_index(const std::filesystem::path& dir, const std::vector<std::pair<std::string, std::string>>& map) {
  // Written by hand so that duplicate keys can be produced.
  std::string s = R"({"metadata": {"total_size": 123, "nested": [1, {"a": []}]}, "weight_map": {)";
  for (size_t i = 0; i < map.size(); ++i) {
    if (i) s += ", ";
    s += nlohmann::json(map[i].first).dump() + ": " + nlohmann::json(map[i].second).dump();
  }
  s += "}}";
  write_bytes(dir / "model.safetensors.index.json", s);
}

std::vector<std::string> names_of(const Checkpoint& c) {
  std::vector<std::string> out;
  for (const auto& [n, e] : c.tensors()) out.emplace_back(n);
  return out;
}

constexpr const char* kIndex = "model.safetensors.index.json";

// ---------------------------------------------------------------------------------------
// Without an index

TEST(Checkpoint, NoIndexEverySafetensorsFile) {
  TempDir dir;
  write_shard(dir / "b.safetensors", {"z.w", "m.w"});
  write_shard(dir / "a.safetensors", {"y.w"});
  write_bytes(dir / "config.json", "{}");
  write_bytes(dir / "notes.txt", "x");
  write_bytes(dir / "model.safetensors.bak", "junk");
  std::filesystem::create_directory(dir / "sub.safetensors");  // a directory, not a shard

  Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_FALSE(c.has_index());
  EXPECT_EQ(c.dir(), dir.path());
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.shards()[0].path().filename(), "a.safetensors");  // sorted by name
  EXPECT_EQ(c.shards()[1].path().filename(), "b.safetensors");
  EXPECT_EQ(names_of(c), (std::vector<std::string>{"m.w", "y.w", "z.w"}));
  const CatalogEntry* e = c.find("z.w");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shard, 1);
  EXPECT_EQ(e->info->name, "z.w");
  EXPECT_EQ(c.shards()[1].data(*e->info)[0], std::byte{1});
  EXPECT_EQ(c.find("y.w")->shard, 0);
  EXPECT_EQ(c.find("nope"), nullptr);
  EXPECT_EQ(c.total_tensor_bytes(), 12u);
  EXPECT_TRUE(c.warnings().empty());

  // Moving keeps the catalog's pointers valid.
  Checkpoint d = std::move(c);
  EXPECT_EQ(d.find("m.w")->info->name, "m.w");
}

TEST(Checkpoint, NoIndexDuplicateAcrossShards) {
  TempDir dir;
  write_shard(dir / "s1.safetensors", {"a", "dup.w"});
  write_shard(dir / "s2.safetensors", {"dup.w", "b"});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {"\"dup.w\"", "two shards", "s1.safetensors", "s2.safetensors"});
}

TEST(Checkpoint, NoSafetensorsFiles) {
  TempDir dir;
  write_bytes(dir / "config.json", "{}");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {fmt::format("no .safetensors files in {}", dir.path().string())});
}

TEST(Checkpoint, MissingDirectoryIsIo) {
  TempDir dir;
  expect_error([&] { Checkpoint::open(dir / "gone"); }, ErrorKind::IO, {"gone", "does not exist"});
  write_bytes(dir / "file", "x");
  expect_error([&] { Checkpoint::open(dir / "file"); }, ErrorKind::IO, {"file", "not a directory"});
}

TEST(Checkpoint, BadShardHeaderNamesShard) {
  TempDir dir;
  write_shard(dir / "good.safetensors", {"a"});
  write_bytes(dir / "broken.safetensors", testing::st_image(R"({"w": {"dtype": "F32"}})", 0));
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {"broken.safetensors", "\"w\"", "missing \"shape\""});
}

// ---------------------------------------------------------------------------------------
// With an index

TEST(Checkpoint, IndexHappyPath) {
  TempDir dir;
  std::filesystem::create_directory(dir / "sub");
  write_shard(dir / "model-00001-of-00002.safetensors", {"l.0.w", "l.1.w"});
  write_shard(dir / "sub" / "model-00002-of-00002.safetensors", {"l.2.w"});
  write_shard(dir / "consolidated.safetensors", {"l.0.w", "l.1.w", "l.2.w"});  // not in the index: not loaded
  write_index(dir.path(), {{"l.2.w", "sub/model-00002-of-00002.safetensors"},
                           {"l.0.w", "model-00001-of-00002.safetensors"},
                           {"l.1.w", "./model-00001-of-00002.safetensors"},
                           {"l.0.w", "model-00001-of-00002.safetensors"}});  // harmless duplicate
  Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_TRUE(c.has_index());
  // "./x" and "x" name the same shard, opened once.
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.shards()[0].path(), dir / "model-00001-of-00002.safetensors");
  EXPECT_EQ(c.shards()[1].path(), dir / "sub" / "model-00002-of-00002.safetensors");
  EXPECT_EQ(names_of(c), (std::vector<std::string>{"l.0.w", "l.1.w", "l.2.w"}));
  EXPECT_EQ(c.find("l.2.w")->shard, 1);
  ASSERT_EQ(c.warnings().size(), 1u);  // the file the index does not name
  EXPECT_NE(c.warnings()[0].find("consolidated.safetensors is not named by the index"), std::string::npos);
}

TEST(Checkpoint, IndexOpensEachShardOnce) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a", "b", "c"});
  write_shard(dir / "m2.safetensors", {"d"});
  write_shard(dir / "other.safetensors", {"zzz"});
  write_index(dir.path(), {{"a", "m1.safetensors"}, {"b", "m1.safetensors"}, {"c", "m1.safetensors"},
                           {"d", "m2.safetensors"}});
  Checkpoint c = Checkpoint::open(dir.path());
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.shards()[0].path().filename(), "m1.safetensors");
  EXPECT_EQ(c.shards()[1].path().filename(), "m2.safetensors");
  EXPECT_EQ(names_of(c), (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(c.find("d")->shard, 1);
  EXPECT_EQ(c.find("zzz"), nullptr);
  ASSERT_EQ(c.warnings().size(), 1u);
  EXPECT_NE(c.warnings()[0].find("other.safetensors is not named by the index"), std::string::npos);
  EXPECT_EQ(c.total_tensor_bytes(), 16u);
}

TEST(Checkpoint, IndexNamesMissingShard) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a"});
  write_index(dir.path(), {{"a", "m1.safetensors"}, {"b", "m9.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {fmt::format("index {} names shard m9.safetensors which does not exist", (dir / kIndex).string())});
}

TEST(Checkpoint, IndexTensorAbsentFromItsShard) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a"});
  write_shard(dir / "m2.safetensors", {"b"});
  write_index(dir.path(), {{"a", "m1.safetensors"}, {"b", "m2.safetensors"}, {"layers.5.w", "m2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {"\"layers.5.w\"", "m2.safetensors", kIndex, "has no tensor"});
}

TEST(Checkpoint, TensorInShardButNotInIndexWarns) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a", "extra.w"});
  write_index(dir.path(), {{"a", "m1.safetensors"}});
  Checkpoint c = Checkpoint::open(dir.path());
  ASSERT_EQ(c.warnings().size(), 1u);
  const std::string& w = c.warnings()[0];
  EXPECT_NE(w.find("\"extra.w\""), std::string::npos) << w;
  EXPECT_NE(w.find("m1.safetensors"), std::string::npos) << w;
  EXPECT_NE(w.find(kIndex), std::string::npos) << w;
  ASSERT_NE(c.find("extra.w"), nullptr);  // still catalogued
  EXPECT_EQ(c.find("extra.w")->shard, 0);
}

TEST(Checkpoint, UnlistedWarningsAreCappedPerShard) {
  TempDir dir;
  std::vector<std::string> names = {"a"};
  for (int i = 0; i < 15; ++i) names.push_back(fmt::format("x.{:02}", i));
  write_shard(dir / "m1.safetensors", names);
  write_index(dir.path(), {{"a", "m1.safetensors"}});
  Checkpoint c = Checkpoint::open(dir.path());
  ASSERT_EQ(c.warnings().size(), 11u);
  EXPECT_NE(c.warnings().back().find("5 more"), std::string::npos) << c.warnings().back();
  EXPECT_EQ(c.tensors().size(), 16u);
}

TEST(Checkpoint, IndexSameTensorInTwoShards) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a", "shared.w"});
  write_shard(dir / "m2.safetensors", {"b", "shared.w"});
  write_index(dir.path(), {{"a", "m1.safetensors"}, {"b", "m2.safetensors"}, {"shared.w", "m2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {"\"shared.w\"", "m1.safetensors", "m2.safetensors", "two shards"});
}

TEST(Checkpoint, IndexDuplicateKeyWithDifferentShards) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a"});
  write_shard(dir / "m2.safetensors", {"b"});
  write_index(dir.path(), {{"a", "m1.safetensors"}, {"b", "m2.safetensors"}, {"a", "m2.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid,
               {kIndex, "\"a\"", "m1.safetensors", "m2.safetensors", "twice"});
}

TEST(Checkpoint, IndexShardPathsMustStayInside) {
  TempDir dir;
  std::filesystem::create_directory(dir / "ckpt");
  write_shard(dir / "outside.safetensors", {"a"});
  write_index(dir / "ckpt", {{"a", "../outside.safetensors"}});
  expect_error([&] { Checkpoint::open(dir / "ckpt"); }, ErrorKind::Invalid,
               {kIndex, "../outside.safetensors", "'..'"});
  write_index(dir / "ckpt", {{"a", "sub/../../outside.safetensors"}});
  expect_error([&] { Checkpoint::open(dir / "ckpt"); }, ErrorKind::Invalid, {kIndex, "'..'"});
  write_index(dir / "ckpt", {{"a", (dir / "outside.safetensors").string()}});
  expect_error([&] { Checkpoint::open(dir / "ckpt"); }, ErrorKind::Invalid, {kIndex, "absolute path"});
  write_index(dir / "ckpt", {{"a", ""}});
  expect_error([&] { Checkpoint::open(dir / "ckpt"); }, ErrorKind::Invalid, {kIndex, "empty"});
}

TEST(Checkpoint, IndexShardMaySymlinkOutside) {
  // The Hugging Face cache layout: snapshots/<rev>/shard -> ../../blobs/<hash>. Only the
  // name in the index is checked, not where a symlink points.
  TempDir dir;
  std::filesystem::create_directories(dir / "blobs");
  std::filesystem::create_directories(dir / "snapshots" / "rev");
  write_shard(dir / "blobs" / "abc123", {"a"});
  std::filesystem::create_symlink("../../blobs/abc123", dir / "snapshots" / "rev" / "m1.safetensors");
  write_index(dir / "snapshots" / "rev", {{"a", "m1.safetensors"}});
  Checkpoint c = Checkpoint::open(dir / "snapshots" / "rev");
  EXPECT_NE(c.find("a"), nullptr);
  // Without the index, symlinked shards are found too.
  std::filesystem::remove(dir / "snapshots" / "rev" / kIndex);
  EXPECT_EQ(Checkpoint::open(dir / "snapshots" / "rev").tensors().size(), 1u);
}

TEST(Checkpoint, IndexShardIsADirectory) {
  TempDir dir;
  std::filesystem::create_directory(dir / "d.safetensors");
  write_index(dir.path(), {{"a", "d.safetensors"}});
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "d.safetensors", "regular file"});
}

TEST(Checkpoint, MalformedIndex) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a"});
  const auto idx = dir / kIndex;
  write_bytes(idx, R"({"weight_map": {"a": "m1.safetensors",}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "not valid JSON", "byte"});
  write_bytes(idx, R"({"metadata": {}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "weight_map"});
  write_bytes(idx, R"({"weight_map": ["a"]})");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "weight_map", "an array"});
  write_bytes(idx, R"({"weight_map": {"a": 3}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "\"a\"", "a number"});
  write_bytes(idx, R"({"weight_map": {"a": {"shard": "m1.safetensors"}}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "\"a\"", "an object"});
  write_bytes(idx, R"([1])");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "top level"});
  write_bytes(idx, R"({"weight_map": {}, "weight_map": {}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, ErrorKind::Invalid, {kIndex, "twice"});
}

TEST(Checkpoint, IndexWithEscapesAndUnicode) {
  // Outside the fast scanner's subset: handled by the nlohmann fallback.
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"caf\xc3\xa9.w", "quote\"d"});
  write_bytes(dir / kIndex,
              "{\n  \"metadata\": {\"total_size\": 8.0},\n  \"weight_map\": {\n"
              "    \"caf\\u00e9.w\": \"m1.safetensors\",\n    \"quote\\\"d\": \"m\\u0031.safetensors\"\n  }\n}\n");
  Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_TRUE(c.warnings().empty());
  ASSERT_EQ(c.shards().size(), 1u);
  EXPECT_NE(c.find("caf\xc3\xa9.w"), nullptr);
  EXPECT_NE(c.find("quote\"d"), nullptr);
}

TEST(Checkpoint, EmptyWeightMapOpensNothing) {
  TempDir dir;
  write_shard(dir / "m1.safetensors", {"a"});
  write_bytes(dir / kIndex, R"({"weight_map": {}})");
  Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_TRUE(c.has_index());
  EXPECT_TRUE(c.shards().empty());
  EXPECT_TRUE(c.tensors().empty());
}

// ---------------------------------------------------------------------------------------
// read_json_file

TEST(ReadJsonFile, ParsesAndReportsErrors) {
  TempDir dir;
  write_bytes(dir / "ok.json", R"({"a": [1, 2, {"b": null}]})");
  nlohmann::json j = read_json_file(dir / "ok.json");
  EXPECT_EQ(j["a"][1], 2);
  write_bytes(dir / "bad.json", "{\"a\": [1, 2,, 3]}");
  expect_error([&] { read_json_file(dir / "bad.json"); }, ErrorKind::Invalid, {"bad.json", "byte 13"});
  write_bytes(dir / "empty.json", "");
  expect_error([&] { read_json_file(dir / "empty.json"); }, ErrorKind::Invalid, {"empty.json"});
  expect_error([&] { read_json_file(dir / "missing.json"); }, ErrorKind::IO, {"missing.json"});
  expect_error([&] { read_json_file(dir.path()); }, ErrorKind::IO, {"not a regular file"});
}

TEST(ReadJsonFile, TestDataConfigParses) {
  const std::filesystem::path p =
      std::filesystem::path(KILN_TEST_DATA_DIR) / "configs" / "transformers_default_v4_flash.json";
  if (!std::filesystem::exists(p)) GTEST_SKIP() << p << " not present";
  EXPECT_TRUE(read_json_file(p).is_object());
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(CheckpointStrayShard, FileTheIndexDoesNotNameIsReported) {
  test::TempDir d;
  test::write_spec(test::make_spec(test::Layout::Native, test::tiny_config(), 2), d.path());
  std::filesystem::copy_file(d.path() / "model-00001-of-00002.safetensors", d.path() / "old-shard.safetensors");
  auto c = Checkpoint::open(d.path());
  ASSERT_EQ(c.warnings().size(), 1u);
  EXPECT_NE(c.warnings()[0].find("old-shard.safetensors is not named by the index"), std::string::npos)
      << c.warnings()[0];
  EXPECT_EQ(c.shards().size(), 2u);
}

}  // namespace
}  // namespace kiln
