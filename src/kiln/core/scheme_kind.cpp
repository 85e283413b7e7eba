#include "kiln/core/scheme_kind.h"

namespace kiln {

const char* scheme_kind_name(SchemeKind k) {
  switch (k) {
    case SchemeKind::BF16: return "bf16";
    case SchemeKind::FP8Block: return "fp8_block";
    case SchemeKind::Int4Group: return "int4_group";
    case SchemeKind::MXFP4: return "mxfp4";
    case SchemeKind::NVFP4: return "nvfp4";
  }
  return "?";
}

}  // namespace kiln
