// Row decoders of the quantized weight formats (quant_linear.h), one set per instruction
// set. prepare() binds decoder_for(q): the AVX2 decoder where the CPU has AVX2 and one
// exists for the format, else the portable one. Both give the same bits (tested).
#pragma once

#include "kiln/ops/cpu/quant_linear.h"

namespace kiln::ops::cpu {

bool cpu_has_avx2();  // AVX2 and F16C

// The baseline x86-64 / any-target decoder of q's scheme (nullptr for an fp32 weight).
DecodeRowsFn portable_decoder(const QuantWeight& q);

// The AVX2 decoder of q's scheme, or nullptr (no AVX2 on this CPU, or none for the scheme).
DecodeRowsFn avx2_decoder(const QuantWeight& q);

}  // namespace kiln::ops::cpu
