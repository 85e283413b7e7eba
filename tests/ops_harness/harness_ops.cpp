// The one table of the harness: each op of the ops interface (model/definition.h) with its
// tolerance and the reason for it, and the function listing its cases. Bitwise where the
// kernel repeats the CPU's exact sequence of roundings; relative where a long sum is
// reassociated or expf / log1pf differ from libm by an ulp.
#include "harness.h"

namespace kiln::ops_harness {

const std::vector<OpEntry>& all_ops() {
  using K = Tol::Kind;
  static const std::vector<OpEntry> ops = {
      {"rmsnorm", {K::Close, 1e-5f, 1.0f, "sum of squares reassociated (block reduction)"}, rmsnorm_cases},
      {"rope", {K::Bitwise, 0, 0, "same cos/sin table (cpu::Rope::cos_sin), same products"}, rope_cases},
      {"scale_rows", {K::Bitwise, 0, 0, "one product per element"}, scale_rows_cases},
      {"hc_pre", {K::Close, 3e-5f, 1.0f, "mix sums split and reassociated; Sinkhorn divides a few times"}, hc_pre_cases},
      {"hc_post", {K::Bitwise, 0, 0, "same per-element order"}, hc_post_cases},
      {"hc_head", {K::Close, 3e-5f, 1.0f, "mix sums reassociated"}, hc_head_cases},
      {"swiglu", {K::Close, 1e-5f, 1.0f, "expf vs libm exp in silu"}, swiglu_cases},
      {"moe_route", {K::Close, 1e-5f, 1.0f, "indices exact (ties to the lowest id); weights: expf/log1pf, softmax sum order"},
       moe_route_cases},
      {"moe_combine", {K::Bitwise, 0, 0, "ascending expert id, acc += y * w from 0, as the CPU"}, moe_combine_cases},
      {"argmax", {K::Bitwise, 0, 0, "an index: exact, ties to the lowest id"}, argmax_cases},
      {"embed", {K::Bitwise, 0, 0, "a gather"}, embed_cases},
      {"add_broadcast_streams", {K::Bitwise, 0, 0, "one add per element"}, add_broadcast_streams_cases},
      // Products: 2e-5 of sum_k |x_k W_nk| covers fp32 sums of up to 8192 products in two
      // different trees (and nvfp4's global applied to the sum); one wrong weight element
      // moves y by about sum|x W| / k >= 1.2e-4 of it, so indexing errors still fail.
      {"linear", {K::Close, 4e-5f, 0.0f, "fp32 sums in another tree; relative to sum |x W|"}, linear_cases},
      {"linear_grouped", {K::Close, 4e-5f, 0.0f, "as linear, per group"}, linear_grouped_cases},
      {"routed_experts", {K::Close, 2e-4f, 0.0f, "three products and SwiGLU chained; relative to max |ye|"},
       routed_experts_cases},
      // The stateful attention ops (ops_attention.cpp), over per-slot CPU states uploaded as
      // the GPU's. Rings (and the padding the op must not write) compared bitwise: copies.
      {"attention", {K::Close, 1e-5f, 0.0f, "q.k and the softmax sums in other orders, online rescaling, expf; "
                                           "relative to |o| + the head's largest |o|"},
       attention_cases},
      // DeepSeek's numerics (bf16 q and keys on tensor cores, bf16 probabilities in the value
      // sum): both sides round each probability to bf16 against the same power of two
      // (ops/attention_kinds.h), so they round alike but where their fp32 scores (other
      // summation orders) straddle a bf16 rounding boundary; such a flip moves o by at most
      // 2^-8 of that key's weight times |v|. A wrong key or head is far outside.
      {"attention_bf16", {K::Close, 4e-3f, 0.0f, "bf16 rounding of a probability flipped by an fp32 ulp; "
                                                "relative to |o| + the head's largest |o|"},
       attention_bf16_cases},
      {"compressor_feed", {K::Close, 1e-5f, 0.0f, "pooling expf vs exp, norm sum reassociated; entries relative to "
                                                 "|e| + the entry's largest |e|"},
       compressor_feed_cases},
      // Bf16: the pooled vector, the norm's output and the entry rounded to bf16; an fp32
      // difference of an ulp that straddles a rounding boundary becomes one bf16 ulp (up to
      // 2^-7 relative), which the norm carries into the entry.
      {"compressor_feed_bf16", {K::Close, 1e-2f, 0.0f, "bf16 roundings of values an fp32 ulp apart; relative to "
                                                      "|e| + the entry's largest |e|"},
       compressor_feed_bf16_cases},
      {"indexer_select", {K::Bitwise, 0, 0, "indices exact: scores built far from rounding near-ties, exact ties to "
                                           "the lowest index"},
       indexer_select_cases},
  };
  return ops;
}

}  // namespace kiln::ops_harness
