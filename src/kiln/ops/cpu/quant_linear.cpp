#include "kiln/ops/cpu/quant_linear.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/thread_pool.h"

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

// w = e4m3 * block scale.
void decode_fp8_block(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const auto& lut = tables().e4m3;
  const int64_t bk = q.block_k;
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const float* s = q.scales.data() + (r / q.block_n) * q.scale_cols;
    for (int64_t b = 0; b < in; b += bk) {
      const float sc = s[b / bk];
      const int64_t e = std::min(in, b + bk);
      for (int64_t i = b; i < e; ++i) out[i] = lut[c[i]] * sc;
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
    for (int64_t b = 0; b < in; b += g) {
      const int64_t grp = b / g;
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

// w = (e2m1 * group scale) * global, each group through a 16-entry table of exactly those.
void decode_fp4(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const auto& e2m1 = tables().e2m1;
  const int64_t g = q.block_k;
  float t[16];
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const uint8_t* s = q.scale_codes.data() + r * q.scale_cols;
    for (int64_t b = 0; b < in; b += g) {
      const float sc = q.scale_lut[s[b / g]];
      for (int u = 0; u < 16; ++u) t[u] = (e2m1[static_cast<size_t>(u)] * sc) * q.global;
      const int64_t e = std::min(in, b + g);
      int64_t i = b;
      if (i & 1) {
        out[i] = t[c[i >> 1] >> 4];
        ++i;
      }
      for (; i + 2 <= e; i += 2) {
        const uint8_t v = c[i >> 1];
        out[i] = t[v & 0xF];
        out[i + 1] = t[v >> 4];
      }
      if (i < e) out[i] = t[c[i >> 1] & 0xF];
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
  switch (q.format) {
    case WeightFormat::F32: return nullptr;
    case WeightFormat::BF16: return decode_bf16;
    case WeightFormat::F16: return decode_f16;
    case WeightFormat::FP8Block: return decode_fp8_block;
    case WeightFormat::Int4Group: return q.g_idx.empty() ? decode_int4 : decode_int4_gidx;
    case WeightFormat::FP4: return decode_fp4;
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
  switch (qw.format) {
    case WeightFormat::F32: bad(what, "of format f32 has no quantized form");
    case WeightFormat::BF16:
    case WeightFormat::F16:
      qw.row_bytes = 2 * in;
      need(qw.codes.size(), n * static_cast<size_t>(qw.row_bytes), "codes");
      break;
    case WeightFormat::FP8Block:
      qw.row_bytes = in;
      need(qw.codes.size(), n * static_cast<size_t>(in), "codes");
      if (qw.block_n <= 0) bad(what, "needs a positive block_n");
      groups_cover();
      need(qw.scales.size(), static_cast<size_t>(ceil_div(out, qw.block_n) * qw.scale_cols), "scales");
      break;
    case WeightFormat::Int4Group:
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
    case WeightFormat::FP4:
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
