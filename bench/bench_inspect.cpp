// Times `kiln inspect` (config + headers of every shard + plan + report) on a header-
// only replica of DeepSeek-V4-Flash's tensor inventory: 43 layers + MTP, 256 experts,
// FP8 .scale E8M0 + MXFP4 experts, 46 shards written as sparse files (no weight bytes
// on disk). Goal: < 1 s.
//   kiln_bench_inspect [WORK_DIR] [REPEATS]
// Prints the time per inspect, the header bytes it reads, and the ratio to the floor of
// just reading those header bytes (pread of every shard's prefix + header).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "kiln/artifact/plan.h"
#include "kiln/artifact/report.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "support/artifacts.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Reads every shard's 8-byte prefix and JSON header, nothing else: the I/O floor.
uint64_t read_headers(const std::vector<std::filesystem::path>& shards) {
  uint64_t total = 0;
  std::vector<char> buf;
  for (const auto& p : shards) {
    int fd = ::open(p.c_str(), O_RDONLY);
    uint64_t n = 0;
    if (fd < 0 || ::pread(fd, &n, 8, 0) != 8) std::abort();
    buf.resize(n);
    if (::pread(fd, buf.data(), n, 8) != static_cast<ssize_t>(n)) std::abort();
    ::close(fd);
    total += 8 + n;
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = argc > 1 ? argv[1] : std::filesystem::temp_directory_path() / "kiln-bench-flash";
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 10;
  if (!std::filesystem::exists(dir / "config.json")) {
    double t0 = now_s();
    auto spec = kiln::test::make_spec(kiln::test::Layout::Native, kiln::test::flash_config(43), 46, /*sparse=*/true);
    kiln::test::write_spec(spec, dir);
    std::printf("wrote the V4-Flash replica (%zu tensors, 46 sparse shards) to %s in %.2f s\n", spec.tensors.size(),
                dir.c_str(), now_s() - t0);
  }
  std::vector<std::filesystem::path> shards;
  uint64_t logical = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") {
      shards.push_back(e.path());
      logical += e.file_size();
    }
  }

  std::vector<double> t_inspect, t_floor;
  uint64_t header_bytes = 0;
  size_t tensors = 0, groups = 0;
  bool loadable = false;
  for (int i = 0; i < repeats; ++i) {
    double t0 = now_s();
    header_bytes = read_headers(shards);
    t_floor.push_back(now_s() - t0);

    t0 = now_s();
    auto cfg = kiln::load_model_config(dir);
    auto ckpt = kiln::Checkpoint::open(dir);
    auto plan = kiln::build_plan(ckpt, cfg);
    auto text = kiln::render_text(plan, dir);
    t_inspect.push_back(now_s() - t0);
    tensors = plan.total_tensors;
    groups = plan.groups.size();
    loadable = plan.loadable() && !text.empty();
  }
  std::sort(t_inspect.begin(), t_inspect.end());
  std::sort(t_floor.begin(), t_floor.end());
  const double med = t_inspect[t_inspect.size() / 2], floor_med = t_floor[t_floor.size() / 2];
  std::printf("replica: %zu shards, %zu tensors, %.1f GB logical (sparse), verdict %s, %zu group rows\n", shards.size(),
              tensors, static_cast<double>(logical) / 1e9, loadable ? "loadable" : "NOT LOADABLE", groups);
  std::printf("inspect: median %.3f s, min %.3f s over %d runs (warm page cache)\n", med, t_inspect.front(), repeats);
  std::printf("bytes read: %.2f MB of headers (%.1f KB per 1000 tensors)\n", static_cast<double>(header_bytes) / 1e6,
              static_cast<double>(header_bytes) / 1e3 / (static_cast<double>(tensors) / 1000.0));
  std::printf("floor (pread of the same header bytes): median %.4f s -> inspect is %.1fx the floor; goal < 1 s: %s\n",
              floor_med, med / floor_med, med < 1.0 ? "met" : "NOT met");
  return loadable ? 0 : 1;
}
