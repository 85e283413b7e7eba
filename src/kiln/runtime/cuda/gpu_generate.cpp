#include "kiln/runtime/cuda/gpu_generate.h"

#include <algorithm>
#include <chrono>

#include "kiln/core/error.h"

namespace kiln::runtime::cuda {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Rows {
  std::vector<int32_t> tok, slot, pos, src;
  void clear() { tok.clear(), slot.clear(), pos.clear(), src.clear(); }
  void add(int32_t t, int32_t s, int32_t p, int32_t r = 0) {
    tok.push_back(t), slot.push_back(s), pos.push_back(p), src.push_back(r);
  }
  int size() const { return static_cast<int>(slot.size()); }
};

}  // namespace

GpuGenerateResult gpu_generate_greedy(model::cuda::GpuForward& f, const std::vector<std::vector<int32_t>>& prompts,
                                      int max_tokens, int mtp_k) {
  const auto& opt = f.options();
  const int B = static_cast<int>(prompts.size());
  const int Rm = opt.max_rows;
  if (B < 1 || B > opt.max_slots) fail(ErrorKind::Usage, "gpu generate: {} prompts; this GpuForward holds 1..{}", B, opt.max_slots);
  if (max_tokens < 1) fail(ErrorKind::Usage, "gpu generate: max_tokens must be >= 1");
  if (mtp_k < 0 || mtp_k > kMaxDrafts) fail(ErrorKind::Usage, "gpu generate: {} drafts per round (0..{})", mtp_k, kMaxDrafts);
  if (mtp_k > 0 && f.mtp_blocks() == 0) fail(ErrorKind::Usage, "gpu generate: --mtp needs a model with an MTP block");
  if (mtp_k > 0 && B * (mtp_k + 1) > Rm) {
    fail(ErrorKind::Usage, "gpu generate: {} sequences x {} verify rows exceed max_rows {}", B, mtp_k + 1, Rm);
  }
  for (const auto& p : prompts) {
    if (p.empty()) fail(ErrorKind::Usage, "gpu generate: empty prompt");
    if (static_cast<int64_t>(p.size()) + max_tokens + mtp_k + 1 > opt.max_context) {
      fail(ErrorKind::Usage, "gpu generate: prompt of {} tokens + {} new exceeds max_context {}", p.size(), max_tokens,
           opt.max_context);
    }
  }
  GpuGenerateResult res;
  res.tokens.resize(static_cast<size_t>(B));
  std::vector<int32_t> pending(static_cast<size_t>(B));
  Rows rows;
  const auto t0 = Clock::now();

  // Prefill, one sequence at a time in chunks of max_rows; the MTP block is fed the same
  // positions from the chunk's streams (token p + 1, or the first generated token).
  for (int b = 0; b < B; ++b) {
    const auto& pr = prompts[static_cast<size_t>(b)];
    const int P = static_cast<int>(pr.size());
    for (int c0 = 0; c0 < P; c0 += Rm) {
      const int T = std::min(Rm, P - c0);
      rows.clear();
      for (int t = 0; t < T; ++t) rows.add(pr[static_cast<size_t>(c0 + t)], b, c0 + t);
      f.main(rows.tok, rows.slot, rows.pos);
      const bool last = c0 + T == P;
      if (last) pending[static_cast<size_t>(b)] = f.download_main_argmax(T).back();
      if (mtp_k > 0) {
        Rows mr;
        for (int t = 0; t < T; ++t) {
          const int p = c0 + t;
          mr.add(p + 1 < P ? pr[static_cast<size_t>(p + 1)] : pending[static_cast<size_t>(b)], b, p, t);
        }
        f.mtp(0, mr.tok, mr.slot, mr.pos, mr.src, false);
      }
    }
    res.tokens[static_cast<size_t>(b)].push_back(pending[static_cast<size_t>(b)]);
  }
  // MTP: re-feed every sequence's last prompt position to the main model and the MTP
  // block in one batched pass (the same rows with the same values: the state does not
  // change), so that row b of the MTP outputs is sequence b's kept row: its argmax is the
  // first draft and its streams feed the second draft step.
  std::vector<int32_t> draft1(static_cast<size_t>(B)), kept(static_cast<size_t>(B));
  if (mtp_k > 0) {
    Rows mains, mr;
    for (int b = 0; b < B; ++b) {
      const auto& pr = prompts[static_cast<size_t>(b)];
      const int32_t P = static_cast<int32_t>(pr.size());
      mains.add(pr.back(), b, P - 1);
      mr.add(pending[static_cast<size_t>(b)], b, P - 1, b);
      kept[static_cast<size_t>(b)] = b;
    }
    f.main(mains.tok, mains.slot, mains.pos);
    f.mtp(0, mr.tok, mr.slot, mr.pos, mr.src, false);
    draft1 = f.download_mtp_argmax(B);
    res.stats.k = mtp_k;
    res.stats.proposed.assign(static_cast<size_t>(mtp_k), 0);
    res.stats.accepted.assign(static_cast<size_t>(mtp_k), 0);
  } else {
    f.synchronize();
  }
  res.prefill_s = seconds_since(t0);

  std::vector<int32_t> length(static_cast<size_t>(B));  // main-model length (tokens fed)
  for (int b = 0; b < B; ++b) length[static_cast<size_t>(b)] = static_cast<int32_t>(prompts[static_cast<size_t>(b)].size());
  const auto t1 = Clock::now();
  auto done = [&](int b) { return static_cast<int>(res.tokens[static_cast<size_t>(b)].size()) >= max_tokens; };
  auto active = [&] {
    std::vector<int> who;
    for (int b = 0; b < B; ++b)
      if (!done(b)) who.push_back(b);
    return who;
  };

  if (mtp_k == 0) {
    for (std::vector<int> who = active(); !who.empty(); who = active()) {
      rows.clear();
      for (int b : who) rows.add(pending[static_cast<size_t>(b)], b, length[static_cast<size_t>(b)]);
      f.main(rows.tok, rows.slot, rows.pos);
      const auto am = f.download_main_argmax(rows.size());
      ++res.decode_passes;
      for (size_t i = 0; i < who.size(); ++i) {
        const size_t b = static_cast<size_t>(who[i]);
        ++length[b];
        pending[b] = am[i];
        res.tokens[b].push_back(am[i]);
      }
    }
    res.decode_s = seconds_since(t1);
    return res;
  }

  const int K = mtp_k;
  model::cuda::PinnedInts staged(static_cast<size_t>(K) * static_cast<size_t>(B));  // draft argmaxes, [K][B]
  std::vector<std::vector<int32_t>> drafts(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(K)));
  for (std::vector<int> who = active(); !who.empty(); who = active()) {
    const size_t A = who.size();
    // 1. Draft: d1 from the kept row; step s + 1 (s >= 1) at position N + s - 1 on the
    //    previous step's output streams and its draft.
    for (int b : who) drafts[static_cast<size_t>(b)][0] = draft1[static_cast<size_t>(b)];
    //    The chain stays on the device: step s + 1 >= 3 takes its tokens from step s's
    //    argmax (row i of both passes is sequence who[i]), each step's argmax is copied to
    //    pinned memory asynchronously, and the host waits once, before the verify pass.
    for (int s = 1; s < K; ++s) {
      rows.clear();
      for (size_t i = 0; i < A; ++i) {
        const size_t b = static_cast<size_t>(who[i]);
        rows.add(drafts[b][static_cast<size_t>(s - 1)], static_cast<int32_t>(b), length[b] + s - 1,
                 s == 1 ? kept[b] : static_cast<int32_t>(i));
      }
      const std::span<const int32_t> tok = s == 1 ? std::span<const int32_t>(rows.tok) : std::span<const int32_t>();
      f.mtp(0, tok, rows.slot, rows.pos, rows.src, true);
      f.mtp_argmax_to_host_async(static_cast<int>(A), staged.data() + static_cast<size_t>(s) * static_cast<size_t>(B));
    }
    if (K > 1) {
      f.synchronize();
      for (int s = 1; s < K; ++s)
        for (size_t i = 0; i < A; ++i)
          drafts[static_cast<size_t>(who[i])][static_cast<size_t>(s)] = staged[static_cast<size_t>(s) * static_cast<size_t>(B) + i];
    }
    // 2. Verify [pending, d1 .. dK] at N .. N + K in one main pass.
    rows.clear();
    for (int b : who) {
      const size_t bb = static_cast<size_t>(b);
      rows.add(pending[bb], b, length[bb]);
      for (int j = 0; j < K; ++j) rows.add(drafts[bb][static_cast<size_t>(j)], b, length[bb] + j + 1);
    }
    f.main(rows.tok, rows.slot, rows.pos);
    const auto am = f.download_main_argmax(rows.size());
    ++res.decode_passes;
    // 3. Accept the longest matching prefix, then the main model's own token; 4. the
    //    main state "rolls back" by feeding from N + accepted + 1 next time; 5. MTP
    //    catch-up at N .. N + accepted from the verify rows' streams.
    Rows cu;
    std::vector<int> accepted(A);
    for (size_t i = 0; i < A; ++i) {
      const size_t b = static_cast<size_t>(who[i]);
      const size_t base = i * static_cast<size_t>(K + 1);
      int a = 0;
      while (a < K && drafts[b][static_cast<size_t>(a)] == am[base + static_cast<size_t>(a)]) ++a;
      const int32_t next = am[base + static_cast<size_t>(a)];
      accepted[i] = a;
      ++res.stats.rounds;
      res.stats.accepted_drafts += a;
      res.stats.emitted += a + 1;
      for (int j = 0; j < K; ++j) {
        ++res.stats.proposed[static_cast<size_t>(j)];
        if (j < a) ++res.stats.accepted[static_cast<size_t>(j)];
      }
      for (int j = 0; j <= a; ++j) {
        const int32_t t = j < a ? drafts[b][static_cast<size_t>(j)] : next;
        if (!done(static_cast<int>(b))) res.tokens[b].push_back(t);
        cu.add(t, static_cast<int32_t>(b), length[b] + j, static_cast<int32_t>(base) + j);
      }
      kept[b] = cu.size() - 1;
      length[b] += a + 1;
      pending[b] = next;
    }
    f.mtp(0, cu.tok, cu.slot, cu.pos, cu.src, false);
    const auto dm = f.download_mtp_argmax(cu.size());
    for (int b : who) draft1[static_cast<size_t>(b)] = dm[static_cast<size_t>(kept[static_cast<size_t>(b)])];
  }
  res.decode_s = seconds_since(t1);
  return res;
}

}  // namespace kiln::runtime::cuda
