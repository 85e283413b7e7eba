#include "kiln/ops/cpu/quant_linear.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/quant_decode.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {
namespace {

// Decoded values of every e4m3 byte and every e2m1 nibble (core/codecs.h, exact).
struct Tables {
  std::array<float, 256> e4m3{};
  std::array<float, 16> e2m1{};
  Tables() {
    for (int i = 0; i < 256; ++i) e4m3[static_cast<size_t>(i)] = e4m3_to_f32(static_cast<uint8_t>(i));
    for (int i = 0; i < 16; ++i) e2m1[static_cast<size_t>(i)] = e2m1_to_f32(static_cast<uint8_t>(i));
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void decode_bf16(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const uint8_t* p = q.codes.data() + r0 * q.row_bytes;
  const int64_t n = (r1 - r0) * in;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    out[i] = std::bit_cast<float>(static_cast<uint32_t>(v) << 16);  // bf16_to_f32
  }
}

void decode_f16(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const uint8_t* p = q.codes.data() + r0 * q.row_bytes;
  const int64_t n = (r1 - r0) * in;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    out[i] = f16_to_f32(v);
  }
}

typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

inline u32x4 widen4(const uint8_t* p) { return u32x4{p[0], p[1], p[2], p[3]}; }
inline f32x4 as_f32(u32x4 v) {
  f32x4 f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline u32x4 as_u32(f32x4 v) {
  u32x4 u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// Four e4m3 bytes as the exact floats of e4m3_to_f32, by bit arithmetic: normals rebias
// the exponent (7 -> 127), subnormals are m * 2^-9 (integer to float, exact). The one
// code without an arithmetic form (NaN, S.1111.111) is left to the caller.
inline f32x4 e4m3x4(u32x4 b) {
  const u32x4 sign = (b & 0x80u) << 24;
  const u32x4 e = (b >> 3) & 0xFu, m = b & 7u;
  const u32x4 normal = sign | ((e + 120u) << 23) | (m << 20);
  const f32x4 subf = __builtin_convertvector(__builtin_convertvector(m, i32x4), f32x4) * 0x1p-9f;
  const u32x4 sub = as_u32(subf) | sign;
  return as_f32(e == 0u ? sub : normal);
}

// w = e4m3 * block scale.
void decode_fp8_block(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const auto& lut = tables().e4m3;
  const int64_t bk = q.block_k;
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const float* s = q.scales.data() + (r / q.block_n) * q.scale_cols;
    for (int64_t b = 0, gi = 0; b < in; b += bk, ++gi) {
      const float sc = s[gi];
      const f32x4 sv = {sc, sc, sc, sc};
      const int64_t e = std::min(in, b + bk);
      int64_t i = b;
      for (; i + 4 <= e; i += 4) {
        const u32x4 v = widen4(c + i);
        const u32x4 nan = (v & 0x7Fu) == 0x7Fu;
        if (nan[0] | nan[1] | nan[2] | nan[3]) {
          for (int j = 0; j < 4; ++j) out[i + j] = lut[c[i + j]] * sc;
        } else {
          store4(out + i, e4m3x4(v) * sv);
        }
      }
      for (; i < e; ++i) out[i] = lut[c[i]] * sc;
    }
  }
}

inline uint32_t word_at(const uint8_t* p, int64_t w) {
  uint32_t v;
  std::memcpy(&v, p + 4 * w, 4);
  return v;
}

// w = float(u - z) * group scale, group = c / block_k: each group through a 16-entry
// table of exactly those products.
void decode_int4(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const int64_t g = q.block_k;
  float t[16];
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const float* s = q.scales.data() + r * q.scale_cols;
    const uint8_t* z = q.zeros.empty() ? nullptr : q.zeros.data() + r * q.scale_cols;
    for (int64_t b = 0, gi = 0; b < in; b += g, ++gi) {
      const int64_t grp = gi;
      const int zp = z ? z[grp] : 8;
      for (int u = 0; u < 16; ++u) t[u] = static_cast<float>(u - zp) * s[grp];
      const int64_t e = std::min(in, b + g);
      int64_t i = b;
      for (; i < e && (i & 7) != 0; ++i) out[i] = t[(word_at(c, i / 8) >> (4 * (i & 7))) & 0xF];
      for (; i + 8 <= e; i += 8) {
        const uint32_t w = word_at(c, i / 8);
        for (int j = 0; j < 8; ++j) out[i + j] = t[(w >> (4 * j)) & 0xF];
      }
      for (; i < e; ++i) out[i] = t[(word_at(c, i / 8) >> (4 * (i & 7))) & 0xF];
    }
  }
}

// Act-order int4: column c belongs to group g_idx[c].
void decode_int4_gidx(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const float* s = q.scales.data() + r * q.scale_cols;
    const uint8_t* z = q.zeros.empty() ? nullptr : q.zeros.data() + r * q.scale_cols;
    for (int64_t i = 0; i < in; ++i) {
      const int u = static_cast<int>((word_at(c, i / 8) >> (4 * (i & 7))) & 0xF);
      const int32_t grp = q.g_idx[static_cast<size_t>(i)];
      out[i] = static_cast<float>(u - (z ? z[grp] : 8)) * s[grp];
    }
  }
}

// Four e2m1 nibbles (low 4 bits of each lane) as the exact floats of e2m1_to_f32:
// exponent field e > 0 rebiases (1 -> 127), e = 0 is 0 or 0.5.
inline f32x4 e2m1x4(u32x4 n) {
  const u32x4 sign = (n & 8u) << 28;
  const u32x4 e = (n >> 1) & 3u, m = n & 1u;
  const u32x4 normal = ((e + 126u) << 23) | (m << 22);
  const u32x4 sub = m * 0x3F000000u;  // 0.5 or 0
  return as_f32(sign | (e == 0u ? sub : normal));
}

// w = (e2m1 * group scale) * global, in that order (the load-time expression).
void decode_fp4(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const auto& e2m1 = tables().e2m1;
  const int64_t g = q.block_k;
  const float gl = q.global;
  const f32x4 glv = {gl, gl, gl, gl};
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const uint8_t* s = q.scale_codes.data() + r * q.scale_cols;
    for (int64_t b = 0, gi = 0; b < in; b += g, ++gi) {
      const float sc = q.scale_lut[s[gi]];
      const f32x4 sv = {sc, sc, sc, sc};
      const int64_t e = std::min(in, b + g);
      int64_t i = b;
      for (; i < e && (i & 1); ++i) out[i] = (e2m1[c[i >> 1] >> 4] * sc) * gl;
      for (; i + 4 <= e; i += 4) {
        const uint8_t b0 = c[i >> 1], b1 = c[(i >> 1) + 1];
        const u32x4 n = {b0 & 0xFu, static_cast<uint32_t>(b0 >> 4), b1 & 0xFu, static_cast<uint32_t>(b1 >> 4)};
        store4(out + i, (e2m1x4(n) * sv) * glv);
      }
      for (; i < e; ++i) out[i] = (e2m1[(c[i >> 1] >> (4 * (i & 1))) & 0xF] * sc) * gl;
    }
  }
}

[[noreturn]] void bad(std::string_view what, std::string_view msg) {
  fail_invalid("{}: prepared weight {}", what, msg);
}

// Rows [lo, hi) of one job for all T tokens, a cache-sized tile at a time.
void run_rows(const LinearJob& j, int64_t T, int64_t lo, int64_t hi, std::vector<float>& scratch) {
  const PreparedLinear& w = *j.w;
  const int64_t in = w.in, tile = linear_tile_rows(in);
  for (int64_t ob = lo; ob < hi; ob += tile) {
    const int64_t oe = std::min(hi, ob + tile);
    const int64_t r0 = j.row0 + ob, r1 = j.row0 + oe;
    const float* rows;
    if (w.decode != nullptr) {
      if (scratch.size() < static_cast<size_t>(tile * in)) scratch.resize(static_cast<size_t>(tile * in));
      w.decode(w.q, in, r0, r1, scratch.data());
      rows = scratch.data();
    } else {
      rows = w.w.data() + r0 * in;
    }
    linear_tile(j.x, j.ldx, T, rows, oe - ob, in, j.y + ob, j.ldy);
  }
}

}  // namespace

uint64_t QuantWeight::bytes() const {
  return codes.size() + scales.size() * sizeof(float) + scale_codes.size() + zeros.size() +
         g_idx.size() * sizeof(int32_t) + (scale_codes.empty() ? 0 : sizeof scale_lut);
}

DecodeRowsFn decoder_for(const QuantWeight& q) {
  if (DecodeRowsFn f = avx2_decoder(q)) return f;
  return portable_decoder(q);
}

DecodeRowsFn portable_decoder(const QuantWeight& q) {
  switch (q.scheme) {
    case SchemeKind::BF16:
      return q.weight_dtype == DType::BF16 ? decode_bf16 : q.weight_dtype == DType::F16 ? decode_f16 : nullptr;
    case SchemeKind::FP8Block: return decode_fp8_block;
    case SchemeKind::Int4Group: return q.g_idx.empty() ? decode_int4 : decode_int4_gidx;
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: return decode_fp4;
  }
  return nullptr;
}

bool PreparedLinear::complete() const {
  if (out <= 0 || in <= 0) return false;
  return decode != nullptr || static_cast<int64_t>(w.size()) == out * in;
}

uint64_t PreparedLinear::bytes() const { return w.size() * sizeof(float) + q.bytes(); }

void PreparedLinear::prepare(QuantWeight qw, std::string_view what) {
  if (out <= 0 || in <= 0) bad(what, "needs a positive shape");
  const auto n = static_cast<size_t>(out);
  auto need = [&](size_t have, size_t want, const char* field) {
    if (have != want) bad(what, fmt::format("{} has {} entries; [{}, {}] needs {}", field, have, out, in, want));
  };
  auto groups_cover = [&] {
    if (qw.block_k <= 0 || qw.scale_cols < ceil_div(in, qw.block_k)) {
      bad(what, fmt::format("has {} scale columns; {} inputs in groups of {} need {}", qw.scale_cols, in, qw.block_k,
                            qw.block_k > 0 ? ceil_div(in, qw.block_k) : 0));
    }
  };
  switch (qw.scheme) {
    case SchemeKind::BF16:
      if (qw.weight_dtype != DType::BF16 && qw.weight_dtype != DType::F16) {
        bad(what, fmt::format("of dtype {} has no quantized form", dtype_name(qw.weight_dtype)));
      }
      qw.row_bytes = 2 * in;
      need(qw.codes.size(), n * static_cast<size_t>(qw.row_bytes), "codes");
      break;
    case SchemeKind::FP8Block:
      qw.row_bytes = in;
      need(qw.codes.size(), n * static_cast<size_t>(in), "codes");
      if (qw.block_n <= 0) bad(what, "needs a positive block_n");
      groups_cover();
      need(qw.scales.size(), static_cast<size_t>(ceil_div(out, qw.block_n) * qw.scale_cols), "scales");
      break;
    case SchemeKind::Int4Group:
      qw.row_bytes = 4 * ceil_div(in, 8);
      need(qw.codes.size(), n * static_cast<size_t>(qw.row_bytes), "codes");
      if (qw.scale_cols <= 0) bad(what, "needs at least one group");
      need(qw.scales.size(), n * static_cast<size_t>(qw.scale_cols), "scales");
      if (!qw.zeros.empty()) {
        need(qw.zeros.size(), n * static_cast<size_t>(qw.scale_cols), "zeros");
        for (uint8_t z : qw.zeros) {
          if (z > 15) bad(what, fmt::format("zero point {} is not a 4-bit value", z));
        }
      }
      if (qw.g_idx.empty()) {
        groups_cover();
      } else {
        need(qw.g_idx.size(), static_cast<size_t>(in), "g_idx");
        for (size_t c = 0; c < qw.g_idx.size(); ++c) {
          if (qw.g_idx[c] < 0 || qw.g_idx[c] >= qw.scale_cols) {
            bad(what, fmt::format("g_idx[{}] = {} is outside [0, {})", c, qw.g_idx[c], qw.scale_cols));
          }
        }
      }
      break;
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4:
      if (in % 2 != 0) bad(what, fmt::format("packs e2m1 pairs; {} inputs is odd", in));
      qw.row_bytes = in / 2;
      need(qw.codes.size(), n * static_cast<size_t>(qw.row_bytes), "codes");
      groups_cover();
      need(qw.scale_codes.size(), n * static_cast<size_t>(qw.scale_cols), "scale codes");
      break;
  }
  w.clear();
  w.shrink_to_fit();
  q = std::move(qw);
  decode = decoder_for(q);
}

std::vector<float> PreparedLinear::dequantized_rows(int64_t r0, int64_t r1) const {
  std::vector<float> v(static_cast<size_t>((r1 - r0) * in));
  if (decode != nullptr) decode(q, in, r0, r1, v.data());
  else std::copy(w.begin() + r0 * in, w.begin() + r1 * in, v.begin());
  return v;
}

void linear(std::span<const LinearJob> jobs, int64_t T, ThreadPool* pool) {
  if (T <= 0 || jobs.empty()) return;
  std::vector<int64_t> start(jobs.size() + 1, 0);
  int64_t max_in = 1;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const LinearJob& j = jobs[i];
    if (j.w == nullptr || !j.w->complete() || j.row0 < 0 || j.rows < 0 || j.row0 + j.rows > j.w->out ||
        j.ldx < j.w->in || j.ldy < j.rows) {
      fail(ErrorKind::Usage, "linear: job {} does not fit its weight (rows {}+{} of {}, ldx {}, ldy {})", i, j.row0,
           j.rows, j.w ? j.w->out : 0, j.ldx, j.ldy);
    }
    start[i + 1] = start[i] + j.rows;
    max_in = std::max(max_in, j.w->in);
  }
  const int64_t total = start.back();
  if (total == 0) return;
  auto run = [&](int64_t b, int64_t e) {
    thread_local std::vector<float> scratch;
    for (size_t i = 0; i < jobs.size(); ++i) {
      const int64_t lo = std::max(b, start[i]), hi = std::min(e, start[i + 1]);
      if (lo < hi) run_rows(jobs[i], T, lo - start[i], hi - start[i], scratch);
    }
  };
  if (pool == nullptr) {
    run(0, total);
    return;
  }
  pool->parallel_for(total, linear_grain(T, max_in), run);
}

void linear(const PreparedLinear& w, const float* x, int64_t T, float* y, ThreadPool* pool) {
  const LinearJob j{&w, x, w.in, y, w.out, 0, w.out};
  linear(std::span<const LinearJob>(&j, 1), T, pool);
}

}  // namespace kiln::ops::cpu
