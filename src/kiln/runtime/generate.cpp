#include "kiln/runtime/generate.h"

#include <chrono>

#include "kiln/core/error.h"
#include "kiln/model/weights.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"

namespace kiln::runtime {

namespace {

// The reference helpers take the positions they need (the CLI holds requests to the
// model's max_position_embeddings).
int64_t reference_context(std::span<const int32_t> prompt, int max_tokens) {
  return static_cast<int64_t>(prompt.size()) + std::max(max_tokens, 1);
}

}  // namespace

GenerateResult generate(Backend& backend, std::span<const int32_t> prompt, int max_tokens, const SamplingParams& params,
                        int k, int32_t eos, double dspark_min_survival, bool sampled_drafts_by_argmax) {
  if (prompt.empty()) fail(ErrorKind::Usage, "generate: empty prompt");
  // DSpark drafts (when the backend runs a drafter) go up to its block size.
  const int most = backend.dspark_block() > 0 ? backend.dspark_block() : kMaxDrafts;
  if (k < 0 || k > most) {
    fail(ErrorKind::Usage, "generate: {} drafts per round; expected 0..{}{}", k, most,
         backend.dspark_block() > 0 ? " (the DSpark block size)" : "");
  }
  if (k > 0 && backend.mtp_blocks() == 0 && backend.dspark_block() == 0) {
    fail_invalid("speculative decoding: the model {}", model::mtp_unavailable(backend.config(), 0));
  }
  GenerateResult r;
  if (max_tokens <= 0) return r;
  EngineOptions eo;
  eo.max_batch = 1;
  eo.max_waiting = 1;
  eo.mtp = k;
  eo.dspark_min_survival = dspark_min_survival;
  eo.sampled_drafts_by_argmax = sampled_drafts_by_argmax;
  eo.prefill_chunk = std::max<int64_t>(1, backend.max_rows() - 1 - k);
  Engine engine(backend, eo);
  GenerationRequest req;
  req.prompt.assign(prompt.begin(), prompt.end());
  req.max_tokens = max_tokens;
  req.sampling = params;
  if (eos >= 0) req.stop_tokens = {eos};
  req.mtp = k;
  auto h = engine.submit(std::move(req));
  while (!h->finished()) h->wait_tokens(h->tokens().size(), std::chrono::milliseconds(100));
  if (h->finish_reason() == FinishReason::Error) fail(ErrorKind::Usage, "generate: {}", h->error());
  r.tokens = h->tokens();
  if (h->finish_reason() == FinishReason::Stop) r.stop = "eos";
  const auto t = h->timing();
  r.prefill_s = std::chrono::duration<double>(t.first_token - t.submitted).count();
  r.decode_s = std::chrono::duration<double>(t.finished - t.first_token).count();
  r.stats = h->draft_stats();
  return r;
}

GenerateResult generate_plain(const model::Forward& forward, std::span<const int32_t> prompt, int max_tokens,
                              const SamplingParams& params, int32_t eos) {
  CpuBackend b(forward, {.max_slots = 1, .max_context = reference_context(prompt, max_tokens)});
  return generate(b, prompt, max_tokens, params, 0, eos);
}

GenerateResult generate_speculative(const model::Forward& forward, std::span<const int32_t> prompt, int max_tokens,
                                    const SamplingParams& params, int k, int32_t eos) {
  if (k < 1) fail(ErrorKind::Usage, "speculative decoding: {} drafts per round; expected 1..{}", k, kMaxDrafts);
  CpuBackend b(forward, {.max_slots = 1, .max_context = reference_context(prompt, max_tokens)});
  return generate(b, prompt, max_tokens, params, k, eos);
}

}  // namespace kiln::runtime
