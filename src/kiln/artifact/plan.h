// The load plan: every tensor of a checkpoint matched to its canonical role, every
// linear module's scheme detected from disk, every shape checked against the config,
// and what the checkpoint's own declarations say compared with what is on disk.
// Built from headers only (plus the values of F32/BF16 FP8 scale tensors, which are
// checked for E8M0 bytes stored as floats).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/artifact/inventory.h"
#include "kiln/artifact/names.h"
#include "kiln/artifact/scheme.h"
#include "kiln/core/format_ranges.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"

namespace kiln {

struct PlannedLinear {
  CanonicalName name;       // scope, index, module
  std::string path;         // canonical path, e.g. "layers.3.attn.wq_a"
  std::string disk_module;  // the module as spelled on disk (for hint matching, messages)
  std::string group;        // report group label
  int64_t n = 0, k = 0;     // logical [out, in]
  ModuleFields fields;      // every tensor of the module by on-disk field (report, byte counts)
  Scheme scheme;
  LinearRoles roles;        // the same tensors by role: what loaders read (linear_view.h)
  uint64_t bytes = 0;
};

struct PlannedTensor {
  std::string path;
  std::string group;
  TensorSlice tensor;
};

// One row of the module-group table: modules of one role and one scheme.
struct GroupRow {
  std::string label;   // "routed experts", "MTP attention wq_a", "norms"
  std::string scheme;  // Scheme::describe() for linears, the dtype for plain tensors
  bool linear = false;
  Part part = Part::Main;
  bool mtp = false;         // part == Part::Mtp
  std::vector<int> layers;  // layer (MTP block, DSpark stage) indices covered, sorted
  size_t modules = 0;
  size_t tensors = 0;  // distinct checkpoint tensors
  uint64_t bytes = 0;
};

// A DSpark drafter that config.json declares: its tensors matched, shapes checked and
// schemes detected like the main model's, but kept apart from `linears` / `tensors`:
// model/dspark_weights.cpp loads it when the CPU backend drafts with it.
struct PlannedDSpark {
  std::vector<int> stages_found;  // mtp.N indices with tensors on disk
  std::vector<PlannedLinear> linears;
  std::vector<PlannedTensor> tensors;
  bool confidence_head = false;  // optional; the release has one
  size_t num_tensors = 0;        // distinct checkpoint tensors
  uint64_t bytes = 0;
};

struct Plan {
  // The config the plan follows: as parsed, except that mtp.N blocks holding a DSpark
  // drafter the config does not declare are not taken for the classic MTP blocks that
  // num_nextn_predict_layers asks for (num_mtp_layers is then 0).
  ModelConfig config;
  std::vector<PlannedLinear> linears;
  std::vector<PlannedTensor> tensors;
  std::vector<GroupRow> groups;
  std::vector<std::string> hint_summary;
  std::vector<int> mtp_found;          // classic MTP indices with tensors on disk
  std::optional<PlannedDSpark> dspark;  // when config.dspark: the drafter as found on disk
  std::vector<std::string> unused;     // checkpoint tensors no expected role takes
  std::vector<std::string> missing;    // canonical names expected but absent
  std::vector<std::string> warnings;
  std::vector<std::string> errors;
  uint64_t total_bytes = 0;
  size_t total_tensors = 0;
  size_t num_shards = 0;

  bool loadable() const { return errors.empty() && missing.empty(); }
};

Plan build_plan(const Checkpoint& ckpt, const ModelConfig& cfg);

}  // namespace kiln
