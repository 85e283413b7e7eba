// The CPU linear kernels on the mid-size model's shapes, one thread, at T = 1 and T = 16
// rows, each tile kernel (portable, and AVX-512 where the CPU has it; linear_kernels.h)
// run as ops::cpu::linear runs it: a tile of linear_tile_rows rows at a time, quantized
// weights (mxfp4 experts, fp8_block attention) decoded per tile into a scratch first
// (quant_linear.cpp), then every token passes over the tile. The portable column is the
// kernel every linear ran before the AVX-512 one.
//   kiln_bench_cpu_linear [REPS=20]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/linear_kernels.h"
#include "kiln/ops/cpu/quant_linear.h"

namespace {

using namespace kiln::ops::cpu;

template <typename F>
double best_us(int reps, F f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

PreparedLinear quantized(kiln::SchemeKind scheme, int64_t out, int64_t in, std::mt19937& g) {
  PreparedLinear p;
  p.out = out;
  p.in = in;
  kiln::ops::cpu::QuantWeight q;
  q.scheme = scheme;
  std::uniform_int_distribution<int> byte(0, 255);
  if (scheme == kiln::SchemeKind::MXFP4) {
    q.block_k = 32;
    q.scale_cols = in / 32;
    q.codes.resize(static_cast<size_t>(out * in / 2));
    for (auto& c : q.codes) c = static_cast<uint8_t>(byte(g));
    q.scale_codes.resize(static_cast<size_t>(out * q.scale_cols));
    for (auto& c : q.scale_codes) c = static_cast<uint8_t>(120 + byte(g) % 6);
    for (int i = 0; i < 256; ++i) q.scale_lut[static_cast<size_t>(i)] = std::ldexp(1.0f, i - 127);
  } else {  // FP8Block, 128 x 128 blocks
    q.block_n = q.block_k = 128;
    q.scale_cols = (in + 127) / 128;
    q.codes.resize(static_cast<size_t>(out * in));
    for (auto& c : q.codes) c = static_cast<uint8_t>(byte(g) & 0x7E);  // no NaN codes
    q.scales.assign(static_cast<size_t>((out + 127) / 128 * q.scale_cols), 0.01f);
  }
  p.prepare(std::move(q), "bench");
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  std::mt19937 g(5);
  std::normal_distribution<float> nd;
  const LinearTileFn avx512 = linear_tile_avx512();
  std::printf("linear_tile runs: %s\n\n", linear_tile_kernel() == avx512 && avx512 ? "AVX-512" : "portable");
  std::printf("| weight | out x in | T | portable us | AVX-512 us | speed-up |\n|---|---|---|---|---|---|\n");
  struct Shape {
    const char* what;
    int64_t out, in;
    int scheme;  // 0 fp32, 1 mxfp4, 2 fp8_block
  };
  const Shape shapes[] = {{"fp32", 4096, 1024, 0},      {"fp32", 1024, 1024, 0},      {"mxfp4", 512, 1024, 1},
                          {"mxfp4", 1024, 512, 1},      {"fp8_block", 2048, 256, 2}, {"fp8_block", 1024, 1024, 2}};
  for (const Shape& s : shapes) {
    PreparedLinear p;
    if (s.scheme == 0) {
      p.out = s.out;
      p.in = s.in;
      p.w.resize(static_cast<size_t>(s.out * s.in));
      for (auto& v : p.w) v = nd(g);
    } else {
      p = quantized(s.scheme == 1 ? kiln::SchemeKind::MXFP4 : kiln::SchemeKind::FP8Block, s.out, s.in, g);
    }
    const int64_t tile = linear_tile_rows(s.in);
    std::vector<float> scratch(static_cast<size_t>(tile * s.in));
    for (int64_t T : {1, 16}) {
      std::vector<float> x(static_cast<size_t>(T * s.in)), y(static_cast<size_t>(T * s.out));
      for (auto& v : x) v = nd(g);
      auto tiles = [&](LinearTileFn k) {
        for (int64_t o = 0; o < s.out; o += tile) {
          const int64_t e = std::min(s.out, o + tile);
          const float* rows = p.w.data() + o * s.in;
          if (p.quantized()) {
            p.decode(p.q, s.in, o, e, scratch.data());
            rows = scratch.data();
          }
          k(x.data(), s.in, T, rows, e - o, s.in, y.data() + o, s.out);
        }
      };
      const double port = best_us(reps, [&] { tiles(linear_tile_portable); });
      if (avx512 == nullptr) {
        std::printf("| %s | %lld x %lld | %lld | %.1f | - | - |\n", s.what, static_cast<long long>(s.out),
                    static_cast<long long>(s.in), static_cast<long long>(T), port);
        continue;
      }
      const double simd = best_us(reps, [&] { tiles(avx512); });
      std::printf("| %s | %lld x %lld | %lld | %.1f | %.1f | %.2fx |\n", s.what, static_cast<long long>(s.out),
                  static_cast<long long>(s.in), static_cast<long long>(T), port, simd, port / simd);
    }
  }
  return 0;
}
