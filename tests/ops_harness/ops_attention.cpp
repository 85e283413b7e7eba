// The harness's cases of the stateful attention ops (ops/cuda/attention.h) against their
// ops/cpu references (ops/cpu/attention.h), each over one cpu::AttentionState per KV slot:
//   attention        cuda window_write then attention   vs cpu::attention
//   compressor_feed  cuda compressor_feed               vs cpu::compressor_feed
//   indexer_select   cuda indexer_select                vs cpu::indexer_select
// A case builds the slots' CPU states, uploads them as the GPU's per-slot state (the ring
// layouts are the same: the row of position p at (p % cap) * width, entry j at j * dim;
// the GPU's slot strides are padded, the padding must stay as it was), then runs one step
// of several slots on both: a prefill chunk from position 0, a chunk past the ring
// capacity (wrap-around), decode rows, a re-feed after a rollback. The launch rewrites
// only the step's own rows with the same values, so it can be repeated (perf mode).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gpu/attention_test_util.h"
#include "harness.h"
#include "kiln/ops/cpu/attention.h"
#include "kiln/ops/cpu/attention_state.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/rope.h"

namespace kiln::ops_harness {

namespace cpu = kiln::ops::cpu;
namespace cuda = kiln::ops::cuda;
namespace at = kiln::ops::cuda::attn_test;  // tests/gpu/attention_test_util.h: Step, CpuStep
using ops::AttnKeys;
using ops::CompressorRole;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Elements the op must not write (row padding, entries not emitted): compared exactly.
constexpr float kSentinel = 12345.0f;

// The CPU references' threads (their results do not depend on the count).
cpu::ThreadPool& pool() {
  static cpu::ThreadPool p(0);
  return p;
}

// A slot's rows in a step: positions [first, end).
struct Span {
  int64_t first, end;
};

at::Step step_of(const std::vector<Span>& plan) {
  at::Step st;
  for (size_t s = 0; s < plan.size(); ++s) {
    for (int64_t p = plan[s].first; p < plan[s].end; ++p) st.add(static_cast<int>(s), p);
  }
  return st;
}

// The step's rows on the device, each in its own slot (harness.h step_rows puts all in 0).
cuda::StepRows dev_rows(Prepared& p, const at::Step& st) {
  cuda::StepRows r;
  r.tok = p.in(std::vector<int32_t>(st.slot.size(), 0));
  r.slot = p.in(st.slot);
  r.pos = p.in(st.pos);
  r.R = st.R();
  return r;
}

float max_abs(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// ---- attention ----------------------------------------------------------------------------

struct AttnShape {
  int heads, dim, window, ratio, max_entries, topk;
  AttnKeys keys;
};

const char* keys_name(AttnKeys k) {
  switch (k) {
    case AttnKeys::Window: return "window";
    case AttnKeys::WindowAndSelected: return "window+selected";
    case AttnKeys::WindowAndAll: return "window+all";
  }
  return "?";
}

// Slots of one step: a prefill chunk from 0 (window shorter than W, no entries yet), a
// chunk of 20 rows past the ring capacity (wrap-around), decode rows, a chunk crossing
// position W, a decode row behind the chunk's slot.
std::vector<Span> attn_mixed_plan(int window) {
  const int64_t far = 5 * (window + 20) + 7;
  return {{0, 13}, {far, far + 20}, {3 * window + 1, 3 * window + 2}, {window - 1, window + 4}, {far + 3, far + 4}};
}
// Eight slots decoding one row each, from position 0 to past 4 * 1024 (CSA's entries clamped).
std::vector<Span> decode_plan() {
  std::vector<Span> plan;
  for (int64_t p : {5000, 127, 0, 300, 129, 4096, 77, 1000}) plan.push_back({p, p + 1});
  return plan;
}

// num = Bf16: q, the keys and the step's rows hold bf16 values (the forward rounds them), and
// the row strides are multiples of 4 floats so that the tensor-core kernel takes the shapes
// it fits (head dims that are multiples of 64); Fp32 pads them by odd amounts.
Prepared attention_case(const AttnShape& a, const std::vector<Span>& plan, bool split, uint32_t seed,
                        ops::AttnNumerics num) {
  const bool bf16 = num == ops::AttnNumerics::Bf16;
  auto values = [&](std::vector<float> v) { return at::attn_inputs(std::move(v), num); };
  Prepared p;
  std::mt19937 g(seed);
  const int S = static_cast<int>(plan.size()), H = a.heads, D = a.dim;
  const at::Step st = step_of(plan);
  const int R = st.R();
  int most = 0;
  for (const Span& sp : plan) most = std::max(most, static_cast<int>(sp.end - sp.first));
  const int cap = a.window + most + 3;  // window + the rows a slot writes before it reads
  const int64_t ring_stride = int64_t{cap} * D + (bf16 ? 4 : 1), entry_stride = int64_t{a.max_entries} * D + (bf16 ? 8 : 2);
  const int topk = std::max(1, a.topk);
  const bool compressed = a.keys != AttnKeys::Window;

  // Per slot: a window ring of random rows (the history the step's earlier positions
  // read) and, for CSA / HCA, max_entries random compressed entries.
  std::vector<cpu::AttentionState> states(static_cast<size_t>(S));
  std::vector<float> ring0(static_cast<size_t>(S * ring_stride), 0.0f), entries(static_cast<size_t>(S * entry_stride), 0.0f);
  for (int s = 0; s < S; ++s) {
    cpu::AttentionState& as = states[static_cast<size_t>(s)];
    as.cap = cap;
    as.dim = D;
    as.sliding_window = a.window;
    as.window = values(at::random_floats(g, static_cast<size_t>(cap * D), -1.0f, 1.0f));
    std::copy(as.window.begin(), as.window.end(), ring0.begin() + s * ring_stride);
    if (compressed) {
      as.comp.emplace(a.ratio, D, false, a.ratio);
      as.comp->entries = values(at::random_floats(g, static_cast<size_t>(a.max_entries) * D, -1.0f, 1.0f));
      as.comp->count = a.max_entries;
      as.comp->length = int64_t{a.max_entries} * a.ratio;
      std::copy(as.comp->entries.begin(), as.comp->entries.end(), entries.begin() + s * entry_stride);
    }
  }
  const int64_t ldkv = D + 2, ldq = int64_t{H} * D + (bf16 ? 8 : 5), ldo = int64_t{H} * D + 3;
  const std::vector<float> kv = values(at::random_floats(g, static_cast<size_t>(R * ldkv), -1.0f, 1.0f));
  const std::vector<float> q = values(at::random_floats(g, static_cast<size_t>(R * ldq), -1.0f, 1.0f));
  const std::vector<float> sink = at::random_floats(g, static_cast<size_t>(H), -2.0f, 2.0f);
  const float scale = 3.0f / std::sqrt(static_cast<float>(D));  // sharper than D^-0.5: the max matters

  // CSA: per row a sorted subset of the visible entries, 0..min(topk, vis) of them
  // (every fourth row the most).
  cpu::Selection sel;
  std::vector<int32_t> sel_dev(static_cast<size_t>(R) * topk, 0), nsel(static_cast<size_t>(R), 0);
  if (a.keys == AttnKeys::WindowAndSelected) {
    sel.resize(static_cast<size_t>(R));
    for (int r = 0; r < R; ++r) {
      const int64_t vis = std::min<int64_t>((st.pos[static_cast<size_t>(r)] + 1) / a.ratio, a.max_entries);
      std::vector<int32_t> all(static_cast<size_t>(vis));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), g);
      const int64_t most_sel = std::min<int64_t>(topk, vis);
      const int64_t n = (r % 4 == 0) ? most_sel : std::uniform_int_distribution<int64_t>(0, most_sel)(g);
      std::sort(all.begin(), all.begin() + n);
      std::copy_n(all.begin(), n, sel_dev.begin() + int64_t{r} * topk);
      sel[static_cast<size_t>(r)].assign(all.begin(), all.begin() + n);
      nsel[static_cast<size_t>(r)] = static_cast<int32_t>(n);
    }
  }

  // CPU: attention reads the step's kv rows from kv and writes them into the rings after.
  at::CpuStep cs(st, states);
  std::vector<float> o(static_cast<size_t>(R) * H * D);
  cpu::attention(cs.rows(), at::packed_rows(q, R, ldq, int64_t{H} * D).data(), at::packed_rows(kv, R, ldkv, D).data(), H, D,
                 scale, sink.data(), a.window, a.keys, sel, o.data(), &pool(), num);
  std::vector<float> ring1 = ring0;
  for (int s = 0; s < S; ++s) {
    const auto& w = states[static_cast<size_t>(s)].window;
    std::copy(w.begin(), w.end(), ring1.begin() + s * ring_stride);
  }
  // o: NaN before the launch; the row padding past heads * dim must keep its sentinel.
  // Tolerance per element: rtol * (|o| + the head's largest |o|).
  std::vector<float> want(static_cast<size_t>(R * ldo), kSentinel), init(want.size(), kSentinel), mag(want.size(), 0.0f);
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < H; ++h) {
      const float* oh = o.data() + (int64_t{r} * H + h) * D;
      const float mx = max_abs(oh, D);
      for (int c = 0; c < D; ++c) {
        const size_t i = static_cast<size_t>(r * ldo + int64_t{h} * D + c);
        want[i] = oh[c];
        init[i] = kNaN;
        mag[i] = std::fabs(oh[c]) + mx;
      }
    }
  }

  const cuda::StepRows rows = dev_rows(p, st);
  const float* dq = p.in(q);
  const float* dkv = p.in(kv);
  const float* dsink = p.in(sink);
  float* dout = p.inout("o", init, want);
  p.outputs.back().mag = std::move(mag);
  float* dring = p.inout("window ring", ring0, ring1);  // a copy: bitwise
  p.outputs.back().exact = true;
  const cuda::WindowRing ring{dring, cap, D, ring_stride};
  cuda::CompressorRing comp;
  if (compressed) {
    comp.entries = p.in(entries);
    comp.max_entries = a.max_entries;
    comp.entry_slot_stride = entry_stride;
    comp.dim = D;
    comp.ratio = a.ratio;
  }
  const int32_t* dsel = nullptr;
  const int32_t* dnsel = nullptr;
  if (a.keys == AttnKeys::WindowAndSelected) {
    dsel = p.in(sel_dev);
    dnsel = p.in(nsel);
  }
  float* work = nullptr;
  if (split) {
    const int64_t n = std::max<int64_t>(1, cuda::attention_workspace_floats(R, H, D));
    work = p.hold<Dev<float>>(static_cast<size_t>(n)).get();
  }
  const AttnShape sh = a;
  p.launch = [=](cudaStream_t s) {
    cuda::window_write(rows, dkv, ldkv, ring, s);
    cuda::attention(rows, dq, ldq, H, scale, dsink, ring, sh.window, sh.keys, compressed ? &comp : nullptr, dsel, dnsel, topk,
                    dout, ldo, s, work, num);
  };
  // Bytes one launch must move: the step's kv rows in and into the ring, q and o, and
  // each row's keys once (a block of a head group reads them again; not counted).
  int64_t keys = 0;
  for (int r = 0; r < R; ++r) {
    const int64_t pos = st.pos[static_cast<size_t>(r)];
    keys += pos - std::max<int64_t>(0, pos - a.window + 1) + 1;
    if (a.keys == AttnKeys::WindowAndSelected) keys += nsel[static_cast<size_t>(r)];
    if (a.keys == AttnKeys::WindowAndAll) keys += std::min<int64_t>((pos + 1) / a.ratio, a.max_entries);
  }
  p.bytes = 4 * (2 * int64_t{R} * D + 2 * int64_t{R} * H * D + keys * D);
  return p;
}

// ---- compressor_feed ----------------------------------------------------------------------

struct CompShape {
  int dim, ratio, rope_dim;
  bool overlap;
  CompressorRole role;
  bool yarn;  // V4's compress rope (YaRN) rather than the default frequencies
};

constexpr int kChunk = 20;    // most rows of one slot in a step
constexpr int kRollback = 4;  // ring rows kept for a rollback (the plan rolls back 3)
constexpr float kEps = 1e-6f;

// A slot of a compressor step: its state fed positions [0, fed) then truncated to `keep`
// (a rollback when keep < fed); the step feeds T rows from keep.
struct CompSlot {
  int64_t fed, keep, T;
};

// Prefill chunk from 0; a chunk past twice the ring capacity crossing a block boundary;
// a decode row completing a block; one not completing a block (ratio > 1); three rows
// rolled back and re-fed with two more.
std::vector<CompSlot> comp_mixed_plan(int ratio, int cap) {
  const int64_t m = ratio;
  const int64_t wrap = (2 * cap + 11 + m - 1) / m * m - 10;
  const int64_t done = ((cap + 1 + m - 1) / m + 1) * m - 1;
  int64_t open = 2 * cap + 1;
  if (m > 1 && (open + 1) % m == 0) ++open;
  const int64_t back = 2 * cap + m + 2;
  return {{0, 0, kChunk}, {wrap, wrap, kChunk}, {done, done, 1}, {open, open, 1}, {back, back - 3, 5}};
}
// Eight slots decoding one row each, half of them completing a block.
std::vector<CompSlot> comp_decode_plan(int ratio) {
  std::vector<CompSlot> plan;
  for (int64_t i = 0; i < 8; ++i) {
    const int64_t p = (i + 3) * ratio - 1 + (i % 2 == 1 && ratio > 1 ? 1 : 0);
    plan.push_back({p, p, 1});
  }
  return plan;
}

cpu::CompressorState& role_state(cpu::AttentionState& s, CompressorRole role) {
  return role == CompressorRole::Attention ? *s.comp : *s.icomp;
}

Prepared compressor_case(const CompShape& c, const std::vector<CompSlot>& plan, uint32_t seed, ops::AttnNumerics num) {
  Prepared p;
  std::mt19937 g(seed);
  const int S = static_cast<int>(plan.size()), m = c.ratio, d = c.dim;
  const int width = (c.overlap ? 2 : 1) * d;
  const int cap = (c.overlap ? 2 : 1) * m + kChunk + kRollback;
  int64_t last = 0;
  for (const CompSlot& cs : plan) last = std::max({last, cs.fed, cs.keep + cs.T});
  const int max_entries = static_cast<int>(last / m) + 2;  // every entry the CPU emits, and one more
  const int64_t ring_stride = int64_t{cap} * width + 7, entry_stride = int64_t{max_entries} * d + 5;
  cpu::RopeSpec spec;
  spec.dim = c.rope_dim;
  if (c.yarn) {
    spec.theta = 160000.0;
    spec.yarn = true;
    spec.factor = 16.0;
    spec.original_max_position = 65536;
  }
  const cpu::Rope rope(spec);
  const std::vector<float> ape = at::random_floats(g, static_cast<size_t>(m) * width, -0.5f, 0.5f);
  const std::vector<float> norm = at::random_floats(g, static_cast<size_t>(d), 0.5f, 1.5f);

  // The slots' states: fed their history by the CPU op itself (one sequence each), then
  // rolled back where the plan says.
  std::vector<cpu::AttentionState> states(static_cast<size_t>(S));
  for (int s = 0; s < S; ++s) {
    cpu::AttentionState& as = states[static_cast<size_t>(s)];
    (c.role == CompressorRole::Attention ? as.comp : as.icomp).emplace(m, d, c.overlap, cap);
    const CompSlot& cs = plan[static_cast<size_t>(s)];
    if (cs.fed > 0) {  // one sequence of fed rows from position 0
      const cpu::SeqRows seq{&as, 0, cs.fed, 0};
      std::vector<int64_t> pos(static_cast<size_t>(cs.fed));
      std::iota(pos.begin(), pos.end(), int64_t{0});
      const std::vector<int32_t> seq_of(pos.size(), 0);
      const std::vector<float> a = at::random_floats(g, static_cast<size_t>(cs.fed * width), -1.0f, 1.0f);
      const std::vector<float> z = at::random_floats(g, a.size(), -2.0f, 2.0f);
      const cpu::StepRows hist{std::span<const cpu::SeqRows>(&seq, 1), pos, seq_of};
      cpu::compressor_feed(hist, c.role, a.data(), z.data(), ape.data(), norm.data(), kEps, rope, num);
    }
    as.truncate(cs.keep);
  }
  // Before the step: the rings and entries as the GPU holds them (entries past the count
  // hold the sentinel; those the step emits start as NaN).
  std::vector<float> kv0(static_cast<size_t>(S * ring_stride), 0.0f), sc0(kv0.size(), 0.0f);
  std::vector<float> e0(static_cast<size_t>(S * entry_stride), kSentinel);
  std::vector<int64_t> count0(static_cast<size_t>(S));
  for (int s = 0; s < S; ++s) {
    const cpu::CompressorState& cs = role_state(states[static_cast<size_t>(s)], c.role);
    std::copy(cs.kv.begin(), cs.kv.end(), kv0.begin() + s * ring_stride);
    std::copy(cs.score.begin(), cs.score.end(), sc0.begin() + s * ring_stride);
    std::copy(cs.entries.begin(), cs.entries.end(), e0.begin() + s * entry_stride);
    count0[static_cast<size_t>(s)] = cs.count;
  }

  at::Step st;
  for (int s = 0; s < S; ++s) {
    const CompSlot& cs = plan[static_cast<size_t>(s)];
    for (int64_t i = 0; i < cs.T; ++i) st.add(s, cs.keep + i);
  }
  const int R = st.R();
  const int64_t ld = width + 3;
  const std::vector<float> a = at::random_floats(g, static_cast<size_t>(R * ld), -1.0f, 1.0f);
  const std::vector<float> z = at::random_floats(g, static_cast<size_t>(R * ld), -2.0f, 2.0f);
  at::CpuStep cstep(st, states);
  cpu::compressor_feed(cstep.rows(), c.role, at::packed_rows(a, R, ld, width).data(), at::packed_rows(z, R, ld, width).data(),
                       ape.data(), norm.data(), kEps, rope, num);

  std::vector<float> kv1 = kv0, sc1 = sc0, e1 = e0, emag(e0.size(), 0.0f);
  for (int s = 0; s < S; ++s) {
    const cpu::CompressorState& cs = role_state(states[static_cast<size_t>(s)], c.role);
    std::copy(cs.kv.begin(), cs.kv.end(), kv1.begin() + s * ring_stride);
    std::copy(cs.score.begin(), cs.score.end(), sc1.begin() + s * ring_stride);
    // Entries: rtol * (|e| + the entry's largest |e|) (expf vs exp by an ulp, then scaled by the norm).
    for (int64_t j = 0; j < cs.count; ++j) {
      const float mx = max_abs(cs.entry(j), d);
      for (int ch = 0; ch < d; ++ch) {
        const size_t i = static_cast<size_t>(s * entry_stride + j * d + ch);
        e1[i] = cs.entry(j)[ch];
        emag[i] = std::fabs(e1[i]) + mx;
        if (j >= count0[static_cast<size_t>(s)]) e0[i] = kNaN;
      }
    }
  }

  const cuda::StepRows rows = dev_rows(p, st);
  const float* da = p.in(a);
  const float* dz = p.in(z);
  const float* dape = p.in(ape);
  const float* dnorm = p.in(norm);
  auto& table = p.hold<cuda::RopeTable>(rope, int64_t{max_entries} * m);
  const cuda::RopeView view = table.view();
  cuda::CompressorRing ring;
  ring.kv = p.inout("kv ring", kv0, kv1);  // copies: bitwise
  p.outputs.back().exact = true;
  ring.score = p.inout("score ring", sc0, sc1);  // z + ape: one fp32 add, bitwise
  p.outputs.back().exact = true;
  ring.entries = p.inout("entries", e0, e1);
  p.outputs.back().mag = std::move(emag);
  ring.cap = cap;
  ring.width = width;
  ring.ring_slot_stride = ring_stride;
  ring.max_entries = max_entries;
  ring.entry_slot_stride = entry_stride;
  ring.dim = d;
  ring.ratio = m;
  ring.overlap = c.overlap;
  p.launch = [=](cudaStream_t s) { cuda::compressor_feed(rows, da, dz, ld, dape, dnorm, kEps, view, ring, s, num); };
  // Bytes: a and z in, the kv and score rows out; per emitted entry its pooled kv and score
  // channels in and the entry out.
  int64_t floats = 4 * int64_t{R} * width;
  for (int r = 0; r < R; ++r) {
    const int64_t pos = st.pos[static_cast<size_t>(r)];
    if ((pos + 1) % m != 0) continue;
    const int64_t rows_pooled = (c.overlap && pos + 1 > m) ? 2 * m : m;
    floats += 2 * rows_pooled * d + d;
  }
  p.bytes = 4 * floats;
  return p;
}

// ---- indexer_select -----------------------------------------------------------------------

struct IdxShape {
  int heads, head_dim, ratio, max_entries, topk;
  int zero_every;  // entries with j % zero_every == 1 score exactly 0 (0: none)
  int keep_every;  // if > 0, only entries with j % keep_every == 0 score above 0
  int dup_every;   // every dup_every-th entry copies its predecessor (0: none)
};

// Slot 0: a prefill chunk from position 0 (no entries yet, then a few); slot 1: a chunk at
// a mid position; slot 2: decode rows past max_entries * ratio (vis clamped); slot 3: a
// chunk whose visible count crosses topk.
at::Step idx_mixed_step(const IdxShape& ic) {
  at::Step st;
  const int64_t M = ic.max_entries;
  for (int p = 0; p < 17; ++p) st.add(0, p);
  const int64_t mid = M * ic.ratio / 2;
  for (int i = 0; i < 9; ++i) st.add(1, mid + i);
  st.add(2, M * ic.ratio + 5);
  st.add(2, M * ic.ratio + 6);
  const int64_t cross = std::min<int64_t>(int64_t{ic.topk} * ic.ratio, M * ic.ratio) - 2;
  for (int i = 0; i < 2 * ic.ratio + 3; ++i) st.add(3, cross + i);
  return st;
}
// Eight slots decoding one row each: no entry visible yet, fewer than topk, just past
// topk, a third, half and all of max_entries, then clamped to max_entries.
at::Step idx_decode_step(const IdxShape& ic) {
  at::Step st;
  const int64_t span = int64_t{ic.max_entries} * ic.ratio, k = int64_t{ic.topk} * ic.ratio;
  int s = 0;
  for (int64_t p : {int64_t{1}, k / 2, k + 1, span / 3, span / 2, span - 1, span + 5, 2 * span}) st.add(s++, p);
  return st;
}

Prepared indexer_case(const IdxShape& ic, const at::Step& st, uint32_t seed) {
  Prepared p;
  std::mt19937 g(seed);
  const int H = ic.heads, D = ic.head_dim, M = ic.max_entries;
  const int S = st.R() == 0 ? 0 : *std::max_element(st.slot.begin(), st.slot.end()) + 1;
  const int64_t entry_stride = int64_t{M} * D + 3;

  // Entries c_j * v per slot (the scores far from rounding near-ties: the ranking follows
  // c_j), c_j a shuffled ladder in [1, 3) (relative gaps >= 1/M), negated for the entries
  // that score exactly 0 (q >= 0: every dot < 0); duplicates copy their predecessor
  // bitwise (bitwise-equal scores). Written straight into each slot's indexer compressor,
  // count M, and the same bytes into the GPU's entries.
  std::vector<cpu::AttentionState> states(static_cast<size_t>(S));
  std::vector<float> entries(static_cast<size_t>(S * entry_stride), 0.0f);
  for (int s = 0; s < S; ++s) {
    const std::vector<float> v = at::random_floats(g, static_cast<size_t>(D), 0.2f, 1.0f);
    std::vector<int> ladder(static_cast<size_t>(M));
    std::iota(ladder.begin(), ladder.end(), 0);
    std::shuffle(ladder.begin(), ladder.end(), g);
    cpu::CompressorState& cs = states[static_cast<size_t>(s)].icomp.emplace(ic.ratio, D, false, ic.ratio);
    cs.entries.assign(static_cast<size_t>(M) * D, 0.0f);
    cs.count = M;
    cs.length = int64_t{M} * ic.ratio;
    for (int j = 0; j < M; ++j) {
      float* e = cs.entries.data() + int64_t{j} * D;
      if (ic.dup_every && j > 0 && j % ic.dup_every == 0) {
        std::copy(e - D, e, e);
        continue;
      }
      float c = 1.0f + 2.0f * static_cast<float>(ladder[static_cast<size_t>(j)]) / static_cast<float>(M);
      if ((ic.zero_every && j % ic.zero_every == 1) || (ic.keep_every && j % ic.keep_every != 0)) c = -c;
      for (int i = 0; i < D; ++i) e[i] = c * v[static_cast<size_t>(i)];
    }
    std::copy(cs.entries.begin(), cs.entries.end(), entries.begin() + s * entry_stride);
  }
  // q positive per head, w positive except one head (-0.1 of its weight), so every row's
  // score is c_j * K_r with |K_r| bounded away from 0.
  const int R = st.R();
  const int64_t ldq = int64_t{H} * D + 2, ldw = H + 1;
  const std::vector<float> q = at::random_floats(g, static_cast<size_t>(R * ldq), 0.1f, 1.0f);
  std::vector<float> w = at::random_floats(g, static_cast<size_t>(R * ldw), 0.2f, 1.0f);
  for (int r = 0; r < R; ++r) w[static_cast<size_t>(r * ldw + (r % H))] *= (H > 1 ? -0.1f : 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  at::CpuStep cs(st, states);
  cpu::Selection sel;
  cpu::indexer_select(cs.rows(), at::packed_rows(q, R, ldq, int64_t{H} * D).data(), at::packed_rows(w, R, ldw, H).data(), H,
                      D, scale, ic.topk, sel, &pool());
  // sel rows: ascending indices, then -1 (the poison) past the count: nothing written there.
  std::vector<int32_t> want_sel(static_cast<size_t>(R) * ic.topk, -1), want_nsel(static_cast<size_t>(R));
  int64_t read = 0;
  for (int r = 0; r < R; ++r) {
    const auto& sr = sel[static_cast<size_t>(r)];
    std::copy(sr.begin(), sr.end(), want_sel.begin() + int64_t{r} * ic.topk);
    want_nsel[static_cast<size_t>(r)] = static_cast<int32_t>(sr.size());
    read += std::min<int64_t>((st.pos[static_cast<size_t>(r)] + 1) / ic.ratio, M);
  }

  const cuda::StepRows rows = dev_rows(p, st);
  const float* dq = p.in(q);
  const float* dw = p.in(w);
  cuda::CompressorRing ring;
  ring.entries = p.in(entries);
  ring.max_entries = M;
  ring.entry_slot_stride = entry_stride;
  ring.dim = D;
  ring.ratio = ic.ratio;
  int32_t* dsel = p.out_index("sel", want_sel);
  int32_t* dnsel = p.out_index("nsel", want_nsel);
  float* scratch = p.hold<Dev<float>>(static_cast<size_t>(R) * M).get();
  const int topk = ic.topk;
  p.launch = [=](cudaStream_t s) {
    cuda::indexer_select(rows, dq, ldq, dw, ldw, H, D, scale, ring, topk, dsel, dnsel, scratch, s);
  };
  // Bytes: q and w in, each row's visible entries in, its scores through scratch, sel out.
  p.bytes = 4 * (int64_t{R} * H * D + int64_t{R} * H + read * D + 2 * read + int64_t{R} * (topk + 1));
  return p;
}

}  // namespace

std::vector<Case> attention_cases_in(ops::AttnNumerics num) {
  struct C {
    AttnShape a;
    std::vector<Span> plan;
    const char* what;
  };
  const AttnKeys W = AttnKeys::Window, Sel = AttnKeys::WindowAndSelected, All = AttnKeys::WindowAndAll;
  const std::vector<C> list = {
      {{4, 64, 8, 4, 64, 8, W}, attn_mixed_plan(8), "mixed steps"},
      {{4, 64, 8, 4, 64, 8, Sel}, attn_mixed_plan(8), "mixed steps"},
      {{4, 64, 8, 4, 64, 8, All}, attn_mixed_plan(8), "mixed steps"},
      // heads not a multiple of the kernels' head groups; dims not multiples of 32 or 64 (in
      // Bf16 the CUDA-core kernel: the tensor-core one takes multiples of 64)
      {{12, 40, 5, 2, 100, 16, Sel}, attn_mixed_plan(5), "mixed steps, odd shape"},
      {{3, 96, 6, 3, 10, 1, All}, attn_mixed_plan(6), "mixed steps, odd shape, entries clamped"},
      {{3, 64, 8, 4, 40, 1, All}, {{200, 201}, {2, 3}, {31, 35}}, "few rows, odd heads"},
      {{20, 128, 16, 4, 64, 24, Sel}, attn_mixed_plan(16), "mixed steps, a partial head group"},
      // V4: dim 512, window 128, 512 selected (CSA ratio 4) or all (HCA ratio 128)
      {{16, 512, 128, 4, 1024, 512, Sel}, {{2040, 2060}, {0, 7}, {3000, 3001}}, "V4 mixed"},
      {{9, 512, 128, 128, 64, 1, All}, {{4000, 4020}, {5, 9}}, "V4 mixed, odd heads"},
      {{64, 512, 128, 4, 1024, 512, Sel}, {{3000, 3001}, {17, 18}, {2100, 2104}}, "V4 few rows"},
      {{64, 512, 128, 4, 1024, 512, Sel}, {{2000, 2064}, {50, 51}}, "V4 prefill chunk"},
      {{64, 512, 128, 4, 1, 1, W}, decode_plan(), "V4 decode batch"},
      {{64, 512, 128, 4, 1024, 512, Sel}, decode_plan(), "V4 decode batch"},
      {{64, 512, 128, 128, 64, 1, All}, decode_plan(), "V4 decode batch"},
  };
  std::vector<Case> cs;
  uint32_t seed = 21;
  for (const C& c : list) {
    int R = 0;
    for (const Span& sp : c.plan) R += static_cast<int>(sp.end - sp.first);
    std::string shape = dims({{"heads", c.a.heads}, {"dim", c.a.dim}, {"window", c.a.window}});
    if (c.a.keys != AttnKeys::Window) shape += " " + dims({{"ratio", c.a.ratio}, {"entries", c.a.max_entries}});
    if (c.a.keys == AttnKeys::WindowAndSelected) shape += " " + dims({{"topk", c.a.topk}});
    shape += " " + dims({{"R", R}, {"slots", static_cast<int64_t>(c.plan.size())}});
    for (bool split : {false, true}) {
      const std::string scheme = std::string(keys_name(c.a.keys)) + ", " + c.what + (split ? ", split keys" : "");
      cs.push_back({shape, scheme, [c, split, seed, num] { return attention_case(c.a, c.plan, split, seed, num); }});
    }
    ++seed;
  }
  return cs;
}

std::vector<Case> attention_cases() { return attention_cases_in(ops::AttnNumerics::Fp32); }
std::vector<Case> attention_bf16_cases() { return attention_cases_in(ops::AttnNumerics::Bf16); }

std::vector<Case> compressor_feed_cases_in(ops::AttnNumerics num) {
  struct C {
    CompShape c;
    bool decode;
    const char* what;
  };
  const CompressorRole A = CompressorRole::Attention, I = CompressorRole::Indexer;
  const std::vector<C> list = {
      {{64, 4, 16, true, A, false}, false, ""},
      {{48, 5, 48, false, A, false}, false, ""},
      {{32, 1, 8, true, A, false}, false, ""},
      {{32, 1, 8, false, A, false}, false, ""},
      {{96, 5, 32, true, I, false}, false, ""},
      {{256, 128, 64, true, A, false}, false, ""},
      {{512, 128, 64, false, A, true}, false, "V4 HCA, "},
      {{512, 4, 64, true, A, true}, false, "V4 CSA, "},
      {{128, 4, 64, true, I, true}, false, "V4 indexer, "},
      {{512, 128, 64, false, A, true}, true, "V4 HCA, "},
      {{512, 4, 64, true, A, true}, true, "V4 CSA, "},
      {{128, 4, 64, true, I, true}, true, "V4 indexer, "},
  };
  std::vector<Case> cs;
  uint32_t seed = 1;
  for (const C& c : list) {
    const int cap = (c.c.overlap ? 2 : 1) * c.c.ratio + kChunk + kRollback;
    const std::vector<CompSlot> plan = c.decode ? comp_decode_plan(c.c.ratio) : comp_mixed_plan(c.c.ratio, cap);
    int64_t R = 0;
    for (const CompSlot& s : plan) R += s.T;
    const std::string shape = dims({{"dim", c.c.dim}, {"ratio", c.c.ratio}, {"rope_dim", c.c.rope_dim}, {"R", R},
                                    {"slots", static_cast<int64_t>(plan.size())}});
    const std::string scheme = std::string(c.what) + (c.c.role == A ? "attention" : "indexer") +
                               (c.c.overlap ? " overlap" : "") + (c.decode ? ", decode batch" : ", mixed steps");
    const CompShape sh = c.c;
    cs.push_back({shape, scheme, [sh, plan, seed, num] { return compressor_case(sh, plan, seed, num); }});
    ++seed;
  }
  return cs;
}

std::vector<Case> compressor_feed_cases() { return compressor_feed_cases_in(ops::AttnNumerics::Fp32); }
std::vector<Case> compressor_feed_bf16_cases() { return compressor_feed_cases_in(ops::AttnNumerics::Bf16); }

std::vector<Case> indexer_select_cases() {
  struct C {
    IdxShape s;
    bool decode;
    const char* what;
  };
  // {heads, head_dim, ratio, max_entries, topk, zero_every, keep_every, dup_every}
  const std::vector<C> list = {
      {{4, 32, 4, 300, 16, 0, 0, 0}, false, "distinct"},
      {{4, 32, 4, 400, 64, 2, 0, 0}, false, "half exact zeros"},
      // few positive scores: the cut falls inside the run of exact zeros (lowest indices)
      {{3, 24, 2, 500, 100, 0, 7, 0}, false, "zero ties at the cut"},
      {{8, 64, 4, 600, 128, 0, 0, 3}, false, "duplicate entries"},
      {{5, 40, 3, 700, 33, 9, 0, 4}, false, "head_dim not a multiple of 32, zeros, duplicates"},
      {{64, 128, 4, 4096, 512, 7, 0, 11}, false, "V4, zeros, duplicates"},
      {{16, 128, 4, 16384, 2048, 0, 9, 0}, false, "large topk, zero ties at the cut"},
      {{64, 128, 4, 4096, 512, 7, 0, 11}, true, "V4 decode batch"},
      {{64, 128, 4, 16384, 2048, 0, 0, 5}, true, "V4 decode batch, long context"},
  };
  std::vector<Case> cs;
  uint32_t seed = 11;
  for (const C& c : list) {
    const at::Step st = c.decode ? idx_decode_step(c.s) : idx_mixed_step(c.s);
    const std::string shape = dims({{"heads", c.s.heads}, {"head_dim", c.s.head_dim}, {"ratio", c.s.ratio},
                                    {"entries", c.s.max_entries}, {"topk", c.s.topk}, {"R", st.R()},
                                    {"slots", *std::max_element(st.slot.begin(), st.slot.end()) + 1}});
    const IdxShape sh = c.s;
    cs.push_back({shape, c.what, [sh, st, seed] { return indexer_case(sh, st, seed); }});
    ++seed;
  }
  return cs;
}

}  // namespace kiln::ops_harness
