// `kiln inspect` end to end: the real binary, real files, exit codes, and a clear
// message for every kind of bad input (the same tests run under ASan/UBSan in CI).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "support/artifacts.h"

namespace {

using kiln::test::Layout;
using kiln::test::TempDir;

struct CmdResult {
  int code;
  std::string out;  // stdout + stderr
};

CmdResult kiln_cmd(const std::string& args) {
  std::string cmd = std::string(KILN_BINARY) + " " + args + " 2>&1";
  CmdResult r{-1, {}};
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

std::string q(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

// Rewrites a safetensors file's JSON header, keeping its data section.
void edit_header(const std::filesystem::path& file, const std::function<void(nlohmann::json&)>& fn) {
  std::ifstream in(file, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto j = nlohmann::json::parse(header);
  fn(j);
  std::string h = j.dump();
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  uint64_t m = h.size();
  out.write(reinterpret_cast<const char*>(&m), 8);
  out << h << data;
}

std::filesystem::path shard(const TempDir& d, int i, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", i, n);
  return d.path() / buf;
}

TEST(InspectCli, TransformersSavedModelIsLoadable) {
  CmdResult r = kiln_cmd("inspect " + std::string(KILN_TEST_DATA_DIR) + "/hf_tiny_bf16");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("verdict: loadable"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("schedule    SWA [2]  CSA [1, 3]  HCA [0]"), std::string::npos) << r.out;
}

TEST(InspectCli, JsonSchema) {
  TempDir d;
  kiln::test::write_spec(kiln::test::make_spec(Layout::Native, kiln::test::tiny_config(), 3), d.path());
  CmdResult r = kiln_cmd("inspect --json " + q(d.path()));
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["schema"], "kiln.inspect/1");
  EXPECT_EQ(j["loadable"], true);
  EXPECT_EQ(j["model"]["num_layers"], 4);
  EXPECT_EQ(j["layers"].size(), 5u);
  EXPECT_EQ(j["layers"][1]["attention"], "CSA");
  EXPECT_EQ(j["layers"][0]["routing"], "hash");
  EXPECT_EQ(j["layers"][4]["layer"], "mtp.0");
  EXPECT_EQ(j["mtp"]["found"], nlohmann::json::array({0}));
  EXPECT_EQ(j["checkpoint"]["shards"], 3);
  bool experts = false;
  for (const auto& g : j["groups"]) {
    if (g["label"] == "routed experts") {
      experts = true;
      EXPECT_EQ(g["scheme"], "mxfp4 g32 F8_E8M0 .scale");
      EXPECT_EQ(g["layer_ranges"], "0-3");
      EXPECT_EQ(g["modules"], 4 * 8 * 3);
      EXPECT_EQ(g["tensors"], 4 * 8 * 3 * 2);
    }
  }
  EXPECT_TRUE(experts);
  for (const char* k : {"unused", "missing", "warnings", "errors"}) EXPECT_TRUE(j[k].is_array()) << k;
}

TEST(InspectCli, UsageAndIoErrorsExitOne) {
  EXPECT_EQ(kiln_cmd("").code, 1);
  EXPECT_EQ(kiln_cmd("inspect").code, 1);
  EXPECT_EQ(kiln_cmd("inspect --bogus x").code, 1);
  CmdResult r = kiln_cmd("inspect /nonexistent/kiln/dir");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("/nonexistent/kiln/dir"), std::string::npos) << r.out;
}

struct BadCase {
  std::string name;
  std::function<void(const TempDir&)> corrupt;  // applied to the written files
  std::vector<std::string> expect;               // substrings of the output
  std::function<void(kiln::test::ArtifactSpec&)> mutate = nullptr;  // applied before writing
};

class InspectBadInput : public ::testing::TestWithParam<int> {};

std::vector<BadCase> bad_cases() {
  auto s1 = [](const TempDir& d) { return shard(d, 1, 3); };
  return {
      {"truncated shard",
       [&](const TempDir& d) {
         auto f = s1(d);
         std::filesystem::resize_file(f, std::filesystem::file_size(f) - 1000);
       },
       {"model-00001-of-00003.safetensors", "truncated"}},
      {"header length past end of file",
       [&](const TempDir& d) {
         std::fstream f(s1(d), std::ios::in | std::ios::out | std::ios::binary);
         uint64_t huge = 50000000;  // under the sanity bound, past the end of the file
         f.write(reinterpret_cast<const char*>(&huge), 8);
       },
       {"model-00001-of-00003.safetensors", "past end of file"}},
      {"overlapping offsets",
       [&](const TempDir& d) {
         edit_header(s1(d), [](nlohmann::json& j) {
           auto a = j["layers.0.attn_norm.weight"]["data_offsets"];
           j["layers.0.ffn_norm.weight"]["data_offsets"] = a;
         });
       },
       {"model-00001-of-00003.safetensors", "layers.0.attn_norm.weight", "layers.0.ffn_norm.weight", "overlap"}},
      {"bytes do not match dtype x shape",
       [&](const TempDir& d) {
         edit_header(s1(d), [](nlohmann::json& j) { j["layers.0.attn_norm.weight"]["shape"] = {255}; });
       },
       {"model-00001-of-00003.safetensors", "layers.0.attn_norm.weight", "510", "512"}},
      {"unknown dtype",
       [&](const TempDir& d) {
         edit_header(s1(d), [](nlohmann::json& j) { j["layers.0.attn_norm.weight"]["dtype"] = "F7_E3M3"; });
       },
       {"model-00001-of-00003.safetensors", "layers.0.attn_norm.weight", "F7_E3M3"}},
      {"duplicate tensor name",
       [&](const TempDir& d) {
         // JSON with the same key twice cannot be built with nlohmann: splice the text.
         auto f = s1(d);
         std::ifstream in(f, std::ios::binary);
         uint64_t n = 0;
         in.read(reinterpret_cast<char*>(&n), 8);
         std::string h(n, '\0');
         in.read(h.data(), static_cast<std::streamsize>(n));
         std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
         in.close();
         auto j = nlohmann::json::parse(h);
         std::string entry = "\"layers.0.attn_norm.weight\":" + j["layers.0.attn_norm.weight"].dump();
         std::string h2 = "{" + entry + "," + h.substr(h.find('{') + 1);
         std::ofstream out(f, std::ios::binary | std::ios::trunc);
         uint64_t m = h2.size();
         out.write(reinterpret_cast<const char*>(&m), 8);
         out << h2 << data;
       },
       {"model-00001-of-00003.safetensors", "layers.0.attn_norm.weight", "duplicate"}},
      {"index names a missing shard",
       [&](const TempDir& d) { std::filesystem::remove(shard(d, 2, 3)); },
       {"model.safetensors.index.json", "model-00002-of-00003.safetensors"}},
      {"tensor in index but absent from its shard",
       [&](const TempDir& d) {
         auto idx = d.path() / "model.safetensors.index.json";
         std::ifstream in(idx);
         auto j = nlohmann::json::parse(in);
         in.close();
         j["weight_map"]["layers.0.attn.wq_c.weight"] = "model-00001-of-00003.safetensors";
         std::ofstream(idx) << j.dump();
       },
       {"layers.0.attn.wq_c.weight", "model-00001-of-00003.safetensors"}},
      {"config.json is not JSON",
       [&](const TempDir& d) { std::ofstream(d.path() / "config.json") << "{\"hidden_size\": 256,"; },
       {"config.json"}},
      {"config.json lacks a required field",
       [&](const TempDir& d) {
         std::ifstream in(d.path() / "config.json");
         auto j = nlohmann::json::parse(in);
         in.close();
         j.erase("hidden_size");
         std::ofstream(d.path() / "config.json") << j.dump();
       },
       {"config.json", "hidden_size"}},
      {"scale shape does not fit its weight",
       [](const TempDir&) {},
       {"layers.0.attn.wq_a.scale", "[3, 2]", "[128, 256]"},
       [](kiln::test::ArtifactSpec& s) {
         auto* t = s.find("layers.0.attn.wq_a.scale");
         t->shape = {3, 2};
         t->bytes.resize(6);
       }},
      {"E8M0 exponent bytes stored as F32 scales (vllm#43416)",
       [](const TempDir&) {},
       {"layers.0.attn.wq_a.weight_scale_inv", "F32", "E8M0 exponent bytes", "Refusing"},
       [](kiln::test::ArtifactSpec& s) {
         auto t = *s.find("layers.0.attn.wq_a.scale");
         s.erase("layers.0.attn.wq_a.scale");
         t.name = "layers.0.attn.wq_a.weight_scale_inv";
         t.dtype = kiln::DType::F32;
         std::vector<std::byte> b(t.bytes.size() * 4);
         for (size_t i = 0; i < t.bytes.size(); ++i) {
           float v = static_cast<float>(std::to_integer<uint8_t>(t.bytes[i]));  // the byte's value, as a float
           std::memcpy(b.data() + 4 * i, &v, 4);
         }
         t.bytes = b;
         s.tensors.push_back(t);
       }},
      {"two scale names on one module",
       [](const TempDir&) {},
       {"layers.0.attn.wq_a.scale", "layers.0.attn.wq_a.weight_scale_inv", "different scale tensors"},
       [](kiln::test::ArtifactSpec& s) {
         auto t = *s.find("layers.0.attn.wq_a.scale");
         t.name = "layers.0.attn.wq_a.weight_scale_inv";
         s.tensors.push_back(t);
       }},
  };
}

TEST_P(InspectBadInput, ClearErrorExitTwo) {
  const BadCase c = bad_cases()[static_cast<size_t>(GetParam())];
  TempDir d;
  auto spec = kiln::test::make_spec(Layout::Native, kiln::test::tiny_config(), 3);
  if (c.mutate) c.mutate(spec);
  kiln::test::write_spec(spec, d.path());
  c.corrupt(d);
  for (const char* json : {"", "--json "}) {
    CmdResult r = kiln_cmd(std::string("inspect ") + json + q(d.path()));
    EXPECT_EQ(r.code, 2) << c.name << "\n" << r.out;
    for (const auto& e : c.expect) EXPECT_NE(r.out.find(e), std::string::npos) << c.name << ": no '" << e << "' in\n" << r.out;
    EXPECT_EQ(r.out.find("AddressSanitizer"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("runtime error"), std::string::npos) << r.out;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, InspectBadInput, ::testing::Range(0, static_cast<int>(bad_cases().size())),
                         [](const ::testing::TestParamInfo<int>& i) {
                           std::string n = bad_cases()[static_cast<size_t>(i.param)].name;
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
