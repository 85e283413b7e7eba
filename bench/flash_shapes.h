// The DeepSeek-V4-Flash linear shapes the CUDA benches time: hidden 4096; q_lora 1024,
// 64 heads x 512 head dim, o_groups 8 x o_lora 1024, expert intermediate 2048.
#pragma once

#include <cstdint>

namespace kiln::bench {

struct Shape {
  const char* name;
  int64_t n, k;
};
inline constexpr Shape kFlashShapes[] = {{"wq_b", 64 * 512, 1024},
                                         {"wo_b", 4096, 8 * 1024},
                                         {"expert_w1_w3", 2048, 4096},
                                         {"expert_w2", 4096, 2048},
                                         {"wq_a", 1024, 4096}};

}  // namespace kiln::bench
