// The host side of the grouped expert upload: repacking a routed expert's stored weight
// into the kernels' record layout (ops/grouped_expert_layout.h), on one thread, per kind,
// on a DeepSeek-V4-Flash expert (w1: 2,048 x 4,096). Prints GB/s of repacked bytes for the
// byte-by-byte map (how the upload filled before) and for the record fill, and the ratio.
// The upload runs one such fill per reader thread (ops/cuda/device_upload.h).
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "kiln/ops/grouped_expert_layout.h"

using namespace kiln::ops::grouped_layout;

namespace {

// Seconds per call of f, the best of `reps` after one warm-up.
template <typename F>
double best_seconds(int reps, F f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main() {
  const uint64_t n = 2048, k = 4096;
  std::printf("# grouped expert repack, one thread, expert [%llu, %llu]; the upload's fills run in chunks of its staging buffer\n",
              static_cast<unsigned long long>(n), static_cast<unsigned long long>(k));
  std::printf("| kind | bytes | byte map GB/s | record fill GB/s | speedup |\n|---|---|---|---|---|\n");
  std::mt19937_64 g(1);
  const struct {
    Kind kind;
    const char* name;
  } kinds[] = {{Kind::MXFP4, "mxfp4"}, {Kind::FP8, "fp8"}, {Kind::Nibbles, "nvfp4 / int4"}};
  for (const auto& [kind, name] : kinds) {
    const uint64_t total = n * row_bytes(kind, k);
    std::vector<std::byte> src(total), dst(total);
    for (auto& b : src) b = static_cast<std::byte>(g());
    const uint64_t rb = row_bytes(kind, k);
    const double by_byte = best_seconds(3, [&] {
      for (uint64_t i = 0; i < total; ++i) {
        const SourceByte p = source_of(kind, k, i);
        dst[i] = src[p.row * rb + p.col];
      }
    });
    const std::vector<std::byte> want = dst;
    const double by_record = best_seconds(3, [&] { fill(kind, src.data(), k, 0, total, dst.data()); });
    if (dst != want) {
      std::fprintf(stderr, "the fill and the byte map disagree\n");
      return 1;
    }
    std::printf("| %s | %llu | %.2f | %.2f | %.1fx |\n", name, static_cast<unsigned long long>(total), total / by_byte / 1e9,
                total / by_record / 1e9, by_byte / by_record);
  }
  return 0;
}
