// The bytes of planned tensors, read through the plan's roles: a tensor slice's bytes in
// its memory-mapped shard, the NVFP4 global multiplier (the one place either on-disk
// convention is normalised), and a planned linear module's stored form by role
// (core/stored_linear.h), which the CPU and CUDA loaders and `kiln quantize` take.
#pragma once

#include <cstddef>
#include <span>

#include "kiln/core/stored_linear.h"

namespace kiln {

class Checkpoint;
struct PlannedLinear;
struct TensorSlice;

// The bytes of one planned tensor slice (for fused [E, ...] expert tensors: the expert's
// part, and of a fused gate_up its half), borrowed from the memory-mapped shard.
std::span<const std::byte> slice_bytes(const Checkpoint& ckpt, const TensorSlice& s);

// The NVFP4 global as the multiplier every consumer applies: ModelOpt's weight_scale_2 as
// stored, compressed-tensors' weight_global_scale inverted (1 / g). 1 for other schemes.
// Read here, at load, from the scalar on disk: the plan itself reads headers only.
float global_multiplier(const Checkpoint& ckpt, const PlannedLinear& m);

// The module's stored tensors by role, as views into the mapped shards (valid while the
// checkpoint lives); name points into m.path.
HostQuantLinear linear_view(const Checkpoint& ckpt, const PlannedLinear& m);

}  // namespace kiln
