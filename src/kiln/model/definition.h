// DeepSeek-V4 written once: the layer schedule, the decoder block (mHC around attention and
// MoE), attention with its compressors and lightning indexer, the MoE, the head and the
// MTP block's input (dsv4-model.md section 2; transformers 5.17's DeepseekV4ForCausalLM,
// DeepSeek's MTPBlock), as templates over an ops interface. The CPU reference
// (model/cpu_ops.h, over ops/cpu) and the CUDA forward (model/cuda/gpu_ops.h, over
// ops/cuda) implement it with the same signatures; each instantiates these functions
// with its own weights (the one tree of model/weights_tree.h, over the CPU's types in
// model/weights.h and the GPU's in model/cuda/gpu_weights.h) and its own per-layer state (model/decode_contract.h says what it
// holds). Why templates rather than a virtual interface: docs/model-definition.md.
//
// The ops interface, for one pass over R rows (every pointer is the backend's memory):
//   config(), rows() (R), buf() (the pass's Activations), mark(label) (profiling; may do
//   nothing), layer(l) (the state of layer l of every row's sequence: backbone layers,
//   then MTP block m at l = layers + m).
//   Products: linear(W, x, R, y); linear2(A, xa, ya, B, xb, yb, R) (two products over the
//   same rows, one pass where the backend can); linear_grouped(W, x, ldx, in_per_group,
//   R, G, y, ldy) (group g: rows [g*out/G, (g+1)*out/G) of W over columns g*in_per_group
//   of x); out_features(W).
//   Elementwise: rmsnorm(x, rows, n, weight, y), rmsnorm(x, rows, n, y) (unweighted);
//   rope(kind, x, ld, heads, head_stride, n, inverse) (the rope of attention kind `kind`,
//   at each row's position); scale_rows(x, ld, R, n, factor); swiglu(g, u, R, I,
//   row_weight, out) (times row_weight[r] per row when not null; out is an activation, see
//   act_bf16).
//   Precision (ops/linear_numerics.h): precision(); act_bf16(x, ld, R, n): x holds a tensor
//   DeepSeek's code holds in bf16 at this point; `deepseek` rounds it to bf16, `exact`
//   leaves it (the linears apply their own numerics inside linear*). rmsnorm, rope,
//   scale_rows, hc_pre, hc_post, hc_head and moe_combine take a last ops::Store argument:
//   Act is the same as an act_bf16 of what they write right after them (rope: of the
//   rotated vectors before and after), in the op's own launch on the GPU.
//   mHC: hc_pre(hc, X, R, collapsed, post, comb); hc_post(X, R, y, post, comb, out);
//   hc_head(head, X, R, h).
//   Attention state: compressor_feed(layer, role, compressor, kind, kv_rows, score_rows);
//   indexer_select(layer, q, w, heads, head_dim, softmax_scale, topk, selection);
//   attend(layer, kind, q, kv, sink, scale, keys, selection, o) (also stores the step's
//   K=V rows in the window ring).
//   MoE: route(moe, logits, idx, wt); routed_experts(moe, x, idx, wt, ye) (a fused op on
//   the GPU; the CPU composes it from expert() below; wt null: unweighted);
//   moe_combine(ye, idx, wt, shared, out) (wt null: a plain sum).
//   Rows in and out: embed_streams(embed, X); embed_rows(embed, e); mtp_input(streams)
//   (the streams each MTP row takes); add_broadcast_streams(ep, hp, X);
//   copy_streams(dst, X); head_rows(X) -> {rows, count} (the rows logits are asked for);
//   layer_output(l, X) (backbone layer l's output streams, for a caller that records
//   some, e.g. a DSpark drafter's features; may do nothing).
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "kiln/io/config.h"
#include "kiln/ops/attention_kinds.h"
#include "kiln/ops/linear_numerics.h"

namespace kiln::model::def {

using ops::AttnKeys;
using ops::CompressorRole;
inline constexpr ops::Store Act = ops::Store::Act;

// The activation buffers of one pass, by the names the definition uses. Index: the
// backend's expert index type; Selection: its form of the indexer's picks.
template <class Index, class Selection>
struct Activations {
  float* X = nullptr;  // residual streams [R, n, H] and their next value (swapped)
  float* Xn = nullptr;
  float* u = nullptr;     // a sub-block's input, collapsed and normed [R, H]
  float* y = nullptr;     // a sub-block's output [R, H]
  float* post = nullptr;  // mHC [R, n]
  float* comb = nullptr;  // mHC [R, n, n]
  float* qres = nullptr;  // attention: q_lora [R, q_lora_rank]
  float* kv = nullptr;    // the K=V head [R, head_dim]
  float* q = nullptr;     // queries [R, heads * head_dim]
  float* o = nullptr;     // attention output [R, heads * head_dim]
  float* mid = nullptr;   // grouped output projection [R, o_groups * o_lora_rank]
  float* ca = nullptr;    // compressor kv projections [R, width]
  float* cz = nullptr;    // compressor gate projections [R, width]
  float* iq = nullptr;    // indexer queries [R, index_heads * index_head_dim]
  float* iw = nullptr;    // indexer head weights [R, index_heads]
  Selection sel{};        // the indexer's picks
  float* glog = nullptr;  // router logits [R, n_routed_experts]
  float* wt = nullptr;    // routing weights [R, top-k]
  Index* idx = nullptr;   // routed experts [R, top-k]
  float* ye = nullptr;    // routed experts' outputs [R * top-k, H]
  float* sg = nullptr;    // shared expert gate, up, output
  float* su = nullptr;
  float* sy = nullptr;
  float* h = nullptr;       // the head's input [R, H]
  float* mtp_in = nullptr;  // MTP: the streams each row takes [R, n, H]
  float* e = nullptr;       // MTP: the next token's embedding [R, H]
  float* ep = nullptr;      // MTP: e_proj of it [R, H]
  float* hs = nullptr;      // MTP: hnorm of the streams [R, n, H]
};

inline float fpow(double base, double e) { return static_cast<float>(std::pow(base, e)); }

// A compressor (attention's or the indexer's) on x [R, H]: both projections, then the
// state op stores the rows and emits the entries whose blocks complete.
template <class Ops, class Comp, class Layer>
void compressor(Ops& ops, const Comp& cp, Layer& st, CompressorRole role, AttnKind kind, const float* x) {
  auto& b = ops.buf();
  ops.linear2(cp.wkv, x, b.ca, cp.wgate, x, b.cz, ops.rows());
  ops.compressor_feed(st, role, cp, kind, b.ca, b.cz);
}

// DeepseekV4Attention on x (collapsed, normed) -> out [R, H].
template <class Ops, class Attn, class Layer>
void attention(Ops& ops, const Attn& a, Layer& st, const float* x, float* out) {
  const ModelConfig& c = ops.config();
  auto& b = ops.buf();
  const int64_t R = ops.rows(), D = c.head_dim, nh = c.num_heads, qr = c.q_lora_rank;
  // q path and the single K=V head, each rotated at its row's position.
  ops.linear2(a.wq_a, x, b.qres, a.wkv, x, b.kv, R);
  // Store::Act: the op's output is rounded as an act_bf16 after it would (ops::Store).
  ops.rmsnorm(b.qres, R, qr, a.q_norm, b.qres, Act);
  ops.linear(a.wq_b, b.qres, R, b.q);
  ops.rmsnorm(b.q, R * nh, D, b.q, Act);  // per-head unweighted RMS norm
  ops.rope(a.kind, b.q, nh * D, nh, D, D, false, Act);
  ops.rmsnorm(b.kv, R, D, a.kv_norm, b.kv, Act);
  ops.rope(a.kind, b.kv, D, 1, D, D, false, Act);
  ops.mark("attn q/kv projections, norms, rope");

  // Compressed entries: every row of the step is fed first; visibility is per query.
  if (a.compressor) {
    compressor(ops, *a.compressor, st, CompressorRole::Attention, a.kind, x);
    ops.mark("attn compressor");
  }
  if (a.indexer) {
    const auto& ix = *a.indexer;
    compressor(ops, ix.compressor, st, CompressorRole::Indexer, a.kind, x);
    ops.mark("indexer compressor");
    const int64_t ih = c.index_n_heads, id = c.index_head_dim;
    ops.linear2(ix.wq_b, b.qres, b.iq, ix.weights_proj, x, b.iw, R);
    // (a rope with Store::Act also rounds its input: iq is wq_b's output, bf16 already)
    ops.rope(a.kind, b.iq, ih * id, ih, id, id, false, Act);
    ops.scale_rows(b.iw, ih, R, ih, fpow(static_cast<double>(ih), -0.5), Act);
    ops.mark("indexer projections");
    ops.indexer_select(st, b.iq, b.iw, ih, id, fpow(static_cast<double>(id), -0.5), c.index_topk, b.sel);
    ops.mark("indexer top-k");
  }
  const AttnKeys keys = a.kind == AttnKind::CSA   ? AttnKeys::WindowAndSelected
                        : a.kind == AttnKind::HCA ? AttnKeys::WindowAndAll
                                                  : AttnKeys::Window;
  ops.attend(st, a.kind, b.q, b.kv, a.sink, fpow(static_cast<double>(D), -0.5), keys, b.sel, b.o);
  // K = V carried the rotation into the output: undo it at the query position (o rounded
  // to bf16 before and after).
  ops.rope(a.kind, b.o, nh * D, nh, D, D, true, Act);
  ops.mark("attention core + inverse rope");
  // Grouped output projection: heads split in G contiguous groups, each projected by its
  // own [o_lora_rank, nh*D/G] block of wo_a, then wo_b over the concatenation.
  const int64_t G = c.o_groups, Rlo = c.o_lora_rank;
  ops.linear_grouped(a.wo_a, b.o, nh * D, nh * D / G, R, G, b.mid, G * Rlo);
  ops.linear(a.wo_b, b.mid, R, out);
  ops.mark("attn output projections");
}

// One expert's SwiGLU FFN on x [R, H] -> y [R, H] (g, u: [R, I] scratch). The clamp is
// transformers': gate <= limit, -limit <= up <= limit (swiglu_limit <= 0: none).
// row_weight (not null): each row's SwiGLU output is multiplied by its routing weight before
// w2, as DeepSeek's Expert does.
template <class Ops, class Expert>
void expert(Ops& ops, const Expert& e, const float* x, int64_t R, float* g, float* u, float* y,
            const float* row_weight = nullptr) {
  const int64_t I = ops.out_features(e.w1);
  ops.linear2(e.w1, x, g, e.w3, x, u, R);
  ops.swiglu(g, u, R, I, row_weight, g);
  ops.linear(e.w2, g, R, y);
}

// DeepseekV4SparseMoeBlock on x -> out [R, H]: DeepSeek's Gate (hash or score routing),
// the routed experts, the shared expert, the weighted sum in ascending expert order. The
// routing weight multiplies each expert's output in the sum (transformers; exact), or its
// SwiGLU output before w2 (DeepSeek's Expert; deepseek).
template <class Ops, class Moe>
void moe(Ops& ops, const Moe& m, const float* x, float* out) {
  auto& b = ops.buf();
  const int64_t R = ops.rows();
  const bool weight_first = ops.precision() == ops::Precision::DeepSeek;
  ops.linear(m.gate, x, R, b.glog);
  ops.route(m, b.glog, b.idx, b.wt);
  ops.mark("moe router");
  ops.routed_experts(m, x, b.idx, weight_first ? b.wt : nullptr, b.ye);
  ops.mark("moe routed experts");
  const float* shared = nullptr;
  if (m.shared) {
    expert(ops, *m.shared, x, R, b.sg, b.su, b.sy);
    shared = b.sy;
    ops.mark("moe shared expert");
  }
  ops.moe_combine(b.ye, b.idx, weight_first ? nullptr : b.wt, shared, out, Act);
  ops.mark("moe combine");
}

// DeepseekV4DecoderLayer on streams *X (the result lands in *X; *Xn is scratch), with
// attend(u, y) as its attention (y [R, H] from the collapsed, normed input u [R, H]).
template <class Ops, class Block, class Attend>
void block_with(Ops& ops, const Block& blk, float*& X, float*& Xn, Attend&& attend) {
  auto& b = ops.buf();
  const int64_t R = ops.rows(), H = ops.config().hidden_size;
  ops.hc_pre(blk.hc_attn, X, R, b.u, b.post, b.comb, Act);
  ops.rmsnorm(b.u, R, H, blk.attn_norm, b.u, Act);
  ops.mark("mHC pre + norm");
  attend(static_cast<const float*>(b.u), b.y);
  ops.hc_post(X, R, b.y, b.post, b.comb, Xn, Act);
  std::swap(X, Xn);
  ops.hc_pre(blk.hc_ffn, X, R, b.u, b.post, b.comb, Act);
  ops.rmsnorm(b.u, R, H, blk.ffn_norm, b.u, Act);
  ops.mark("mHC post + pre + norm");
  moe(ops, blk.ffn, b.u, b.y);
  ops.hc_post(X, R, b.y, b.post, b.comb, Xn, Act);
  std::swap(X, Xn);
  ops.mark("mHC post");
}

// The block with its own attention over the layer state `st`.
template <class Ops, class Block, class Layer>
void block(Ops& ops, const Block& blk, Layer& st, float*& X, float*& Xn) {
  block_with(ops, blk, X, Xn, [&](const float* u, float* y) { attention(ops, blk.attn, st, u, y); });
}

// hc_head, RMSNorm, head: logits [Rh, vocab] of the Rh stream rows X.
template <class Ops, class Head, class Norm, class Linear>
void head(Ops& ops, const Head& hh, const Norm& norm, const Linear& head_w, const float* X, int64_t Rh, float* logits) {
  auto& b = ops.buf();
  const int64_t H = ops.config().hidden_size;
  ops.hc_head(hh, X, Rh, b.h, Act);
  ops.rmsnorm(b.h, Rh, H, norm, b.h, Act);
  ops.mark("head mHC + norm");
  ops.linear(head_w, b.h, Rh, logits);
  ops.mark("head linear");
}

// The streams (when asked) and the logits of the rows head_rows picks (when asked).
template <class Ops, class Head, class Norm, class Linear>
void outputs(Ops& ops, const Head& hh, const Norm& norm, const Linear& head_w, const float* X, float* streams,
             float* logits) {
  if (streams) ops.copy_streams(streams, X);
  if (logits) {
    const auto [rows, count] = ops.head_rows(X);
    head(ops, hh, norm, head_w, rows, count, logits);
  }
}

// The backbone: the embedding copied into every stream, then every layer in order.
// Writes the last layer's streams (the MTP block's input) and the logits as outputs() says.
template <class Ops, class Weights>
void main_pass(Ops& ops, const Weights& w, float* streams, float* logits) {
  auto& b = ops.buf();
  float* X = b.X;
  float* Xn = b.Xn;
  ops.embed_streams(w.embed, X);
  ops.mark("embedding");
  for (size_t l = 0; l < w.layers.size(); ++l) {
    auto&& st = ops.layer(l);
    block(ops, w.layers[l], st, X, Xn);
    ops.layer_output(l, X);
  }
  outputs(ops, w.hc_head, w.norm, w.head, X, streams, logits);
}

// MTP block m (MTPBlock.forward): x = e_proj(enorm(embed(next token))) broadcast over the
// streams + h_proj(hnorm(streams)), hnorm applied to each stream's H values; then the
// block and the shared head. Row r runs at the position of the streams it takes.
template <class Ops, class Weights>
void mtp_pass(Ops& ops, const Weights& w, size_t m, float* streams, float* logits) {
  const ModelConfig& c = ops.config();
  auto& b = ops.buf();
  const auto& mb = w.mtp[m];
  const int64_t R = ops.rows(), H = c.hidden_size, n = c.hc_mult;
  float* X = b.X;
  float* Xn = b.Xn;
  ops.mtp_input(b.mtp_in);
  ops.embed_rows(w.embed, b.e);
  ops.rmsnorm(b.e, R, H, mb.enorm, b.e, Act);
  ops.linear(mb.e_proj, b.e, R, b.ep);
  ops.rmsnorm(b.mtp_in, R * n, H, mb.hnorm, b.hs, Act);
  ops.linear(mb.h_proj, b.hs, R * n, X);
  ops.add_broadcast_streams(b.ep, X, X);
  ops.act_bf16(X, n * H, R, n * H);
  auto&& st = ops.layer(w.layers.size() + m);
  block(ops, mb.block, st, X, Xn);
  outputs(ops, mb.hc_head, mb.norm, w.head, X, streams, logits);
}

}  // namespace kiln::model::def
