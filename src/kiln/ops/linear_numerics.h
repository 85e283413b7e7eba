// The two activation precisions (DESIGN.md, "Numerics: two precisions") and what each
// means for one linear layer, decided once at load from the layer's role in the model and
// its weight's scheme, never per call.
//
//   exact     fp32 activations in and out of every linear (the CPU reference's numerics,
//             ~1e-6 from transformers and DeepSeek's code run in fp32).
//   deepseek  the numerics of DeepSeek's inference/model.py: activations are bf16 values
//             (held in fp32; the model definition rounds them where DeepSeek's code holds
//             a bf16 tensor, model/definition.h), and per linear, by its `linear` and the
//             dtypes its modules are declared with:
//             - a layer declared with the checkpoint's dtype (attention wq_a, wq_b, wkv,
//               wo_b, the indexer's wq_b, every expert, MTP e_proj and h_proj) on an FP8 or
//               FP4 (mxfp4) weight quantizes its input with act_quant (ops/act_quant.h:
//               e4m3 per 1 x 128 block, power-of-two scales); on int4, nvfp4 (sm_90 has no
//               tensor cores for them) or bf16 weights it takes the bf16 input as it is;
//             - a layer declared bf16 (wo_a, which DeepSeek runs as a bf16 einsum on the
//               dequantized weight, and the indexer's weights_proj) takes its input as
//               bf16 (LinearInput::Bf16: rounded, which changes nothing on the bf16 values
//               the forward gives it) and multiplies it exactly, one bf16 term per input;
//             - a layer computed in fp32 (the compressors' wkv and wgate, the MoE gate,
//               the LM head) takes and gives fp32;
//             - every other layer's output is rounded to bf16.
#pragma once

#include <cstdint>
#include <string_view>  // (also compiled as C++17 by nvcc)

#include "kiln/core/scheme_kind.h"
#include "kiln/ops/attention_kinds.h"

namespace kiln::ops {

enum class Precision : uint8_t { Exact, DeepSeek };

constexpr std::string_view precision_name(Precision p) { return p == Precision::Exact ? "exact" : "deepseek"; }

// The attention state and core's arithmetic the forward runs in a precision
// (ops/attention_kinds.h): exact keeps fp32; deepseek takes DeepSeek's (bf16 KV entries,
// bf16 q and keys, bf16 probabilities in the value sum).
constexpr AttnNumerics attn_numerics(Precision p) {
  return p == Precision::DeepSeek ? AttnNumerics::Bf16 : AttnNumerics::Fp32;
}

// What an op of the model definition does with the values it writes. Plain: fp32 as
// computed. Act: they are activations, which the deepseek precision rounds to bf16 as an
// act_bf16 after the op would (exact keeps fp32); a GPU kernel rounds them on the store
// instead of a separate launch.
enum class Store : uint8_t { Plain, Act };

// What DeepSeek's code declares a linear layer as (see above).
enum class LinearRole : uint8_t {
  Quantized,  // the checkpoint's dtype: FP8 / FP4 GEMM on quantized activations
  Bf16,       // declared bf16
  Fp32,       // computed in fp32
};

// How a linear treats its input.
enum class LinearInput : uint8_t {
  Fp32,      // as given
  Fp8Block,  // act_quant: e4m3 codes per 1 x 128 block (a last partial block is a block
             // of its own), i.e. each value becomes e4m3(x / s) * s
  Bf16,      // rounded to bf16 (nearest even), as DeepSeek's bf16 layers take it
};

struct LinearNumerics {
  LinearInput input = LinearInput::Fp32;
  bool bf16_output = false;
  // A row's result must not depend on how many rows share the call (deepseek: every layer;
  // the backends then fix each output's summation order per shape).
  bool batch_invariant = false;

  bool exact() const { return input == LinearInput::Fp32 && !bf16_output && !batch_invariant; }
  friend bool operator==(const LinearNumerics& a, const LinearNumerics& b) {
    return a.input == b.input && a.bf16_output == b.bf16_output && a.batch_invariant == b.batch_invariant;
  }
};

constexpr LinearNumerics linear_numerics(Precision p, LinearRole role, SchemeKind scheme) {
  if (p == Precision::Exact) return {};
  if (role == LinearRole::Fp32) return {LinearInput::Fp32, false, true};
  const bool fp8_act =
      role == LinearRole::Quantized && (scheme == SchemeKind::FP8Block || scheme == SchemeKind::MXFP4);
  return {fp8_act ? LinearInput::Fp8Block : role == LinearRole::Bf16 ? LinearInput::Bf16 : LinearInput::Fp32, true, true};
}

}  // namespace kiln::ops
