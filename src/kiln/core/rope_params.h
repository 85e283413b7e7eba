// The parameters of one of DeepSeek-V4's two rotary embeddings (SWA layers: rope_main;
// CSA/HCA layers: rope_compress) as config.json gives them: the base, and YaRN's scaling
// when present. Read by io/config.h, used by the rotary ops (ops/cpu/rope.h RopeSpec adds
// the rotated dim).
#pragma once

#include <cstdint>

namespace kiln {

struct RopeParams {
  double theta = 10000.0;
  bool yarn = false;
  double factor = 1.0;
  int64_t original_max_position = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

}  // namespace kiln
