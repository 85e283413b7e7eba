// The engine's DSpark round (engine.h, model/dspark.h): all K drafts of a round come from
// one drafter pass at the start of the step (the block at the committed length, anchored
// on the pending token, then the sequential Markov loop choosing each draft as an MTP
// draft is chosen: the argmax, or a draw from the same sampling distribution, recorded
// for the rejection sampler); the verification, acceptance and rollback of the main model
// are the MTP round's. After the main pass the positions it committed (prompt chunks, the
// pending token and the accepted drafts) are written to the drafter's rings from that
// pass's target features, so the rings only ever hold committed positions.
#include "kiln/runtime/engine_active.h"

namespace kiln::runtime {

void Engine::draft_dspark(std::vector<Active*>& spec) {
  std::vector<Backend::DSparkRound> rounds;
  std::vector<Active*> who;
  for (Active* a : spec) {
    a->start_round();
    if (a->K == 0) continue;
    rounds.push_back({a->slot, a->pending, a->K, a->draft_by_argmax()});
    who.push_back(a);
  }
  if (!rounds.empty()) {
    std::vector<std::vector<int32_t>> drafts;
    std::vector<std::vector<float>> confidence;
    const bool by_confidence = opts_.dspark_min_survival > 0.0;
    b_.dspark_draft(
        rounds,
        // Only for rounds not marked by_argmax: the backend takes those rows' argmax itself.
        [&](size_t i, int k, std::span<const float> row) { return who[i]->pick_draft(k, row, -1); },
        drafts, by_confidence ? &confidence : nullptr);
    for (size_t i = 0; i < who.size(); ++i) {
      Active* a = who[i];
      a->drafts = std::move(drafts[i]);
      if (!by_confidence || confidence[i].empty()) continue;
      // Verify the leading drafts whose survival reaches the bound (drafter outputs only).
      double survival = 1.0;
      int keep = 0;
      while (keep < a->K && (survival *= confidence[i][static_cast<size_t>(keep)]) >= opts_.dspark_min_survival) ++keep;
      a->truncate_round(keep);
    }
  }
  if (opts_.draft_hook) {
    for (Active* a : who) {
      if (a->draft_by_argmax()) opts_.draft_hook(a->length + 1, a->drafts);
    }
  }
}

void Engine::commit_dspark(std::vector<std::unique_ptr<Active>>& running) {
  PassRows rows;
  for (auto& ap : running) {
    const Active* a = ap.get();
    if (a->k == 0 || a->length == a->base) continue;
    for (int64_t p = a->base; p < a->length; ++p) {
      rows.add(0, a->slot, p);
      rows.src.push_back(static_cast<int32_t>(a->main_row0 + (p - a->base)));
    }
  }
  if (!rows.empty()) b_.dspark_commit(rows);
}

}  // namespace kiln::runtime
