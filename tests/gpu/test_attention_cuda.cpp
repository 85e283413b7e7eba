// window_write and attention (ops/cuda/attention.h): the shape checks. The results are
// compared with ops/cpu's attention (the sink softmax over window rows and selected / all
// compressed entries, over per-slot cpu::AttentionState) by the op harness
// (tests/ops_harness/ops_attention.cpp, op `attention`: every key kind, mixed and decode
// steps, ring wrap-around, odd and V4 shapes, with and without the split-keys workspace).
#include <gtest/gtest.h>

#include <cstdint>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/attention.h"

namespace kiln::ops::cuda {
namespace {

TEST(CudaAttention, RejectsBadShapes) {
  float f = 0.0f;
  int32_t i = 0;
  StepRows rows{&i, &i, &i, 1};
  WindowRing ring{&f, 16, 64, 16 * 64};
  EXPECT_THROW(attention(rows, &f, 64, 1, 1.0f, &f, ring, 17, AttnKeys::Window, nullptr, nullptr, nullptr, 1, &f, 64, nullptr),
               Error);  // window > cap
  EXPECT_THROW(attention(rows, &f, 64, 1, 1.0f, &f, ring, 8, AttnKeys::WindowAndAll, nullptr, nullptr, nullptr, 1, &f, 64, nullptr),
               Error);  // no compressor
  WindowRing wide{&f, 16, 1024, 16 * 1024};
  EXPECT_THROW(attention(rows, &f, 1024, 1, 1.0f, &f, wide, 8, AttnKeys::Window, nullptr, nullptr, nullptr, 1, &f, 1024, nullptr),
               Error);  // dim > 512
  EXPECT_THROW(window_write(rows, &f, 32, ring, nullptr), Error);  // ldkv < dim
}

}  // namespace
}  // namespace kiln::ops::cuda
