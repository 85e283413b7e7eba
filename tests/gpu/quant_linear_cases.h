// Shared by the CUDA linear tests: a weight quantized by kiln's quantizers is written as
// a one-module safetensors file, detected (detect_scheme) and dequantized by
// model::dequantize_linear exactly as the loader does; the GPU gets the same on-disk
// bytes through a HostQuantLinear view (valid while the LoadedCase lives).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kiln/artifact/plan.h"
#include "kiln/artifact/scheme.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/weights.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/quant_linear.h"
#include "kiln/model/linear_source.h"
#include "kiln/quant/quantize.h"
#include "support/artifacts.h"

namespace kiln::ops::test_linear {

using quant::QTensor;
using Fields = std::vector<std::pair<std::string, QTensor>>;

// The loader's view of one planned module as the CUDA prepare step takes it (the GPU
// model loader's own function).
inline HostQuantLinear host_view(const Checkpoint& ckpt, const PlannedLinear& m) {
  return model::host_view(ckpt, m);
}

struct Case {
  std::string label;
  Fields fields;
  int64_t n, k;
};

inline std::vector<float> random_matrix(int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-6, 6);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i) {
    const float mag = std::ldexp(1.0f, ex(rng));
    for (int64_t j = 0; j < k; ++j) w[static_cast<size_t>(i * k + j)] = nd(rng) * mag;
  }
  return w;
}

template <typename T>
struct DevBuf {
  T* p = nullptr;
  explicit DevBuf(size_t n) { KILN_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T))); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

// One case written, opened, planned and dequantized (W: [n, k] fp32, the CPU reference's
// weight); `host` points into `ckpt`.
struct LoadedCase {
  kiln::test::TempDir dir;
  Checkpoint ckpt;
  PlannedLinear plan;
  std::vector<float> W;
  HostQuantLinear host;

  explicit LoadedCase(const Case& c, const std::string& module = "m") : ckpt(write(dir, c, module)) {
    plan.path = module;
    plan.n = c.n;
    plan.k = c.k;
    for (const auto& [name, e] : ckpt.tensors()) {
      TensorSlice s;
      s.name = std::string(name);
      s.info = e.info;
      s.shard = e.shard;
      plan.fields[std::string(name.substr(module.size() + 1))] = s;
    }
    auto det = detect_scheme(module, plan.fields, c.n, c.k);
    if (!det.scheme) throw std::runtime_error(c.label + ": " + (det.errors.empty() ? "?" : det.errors[0]));
    plan.scheme = *det.scheme;
    plan.roles = det.roles;
    W = model::dequantize_linear(ckpt, plan).w;
    host = host_view(ckpt, plan);
  }

 private:
  static Checkpoint write(const kiln::test::TempDir& d, const Case& c, const std::string& module) {
    std::vector<SafetensorsWriter::Tensor> ts;
    for (const auto& [f, t] : c.fields) ts.push_back({module + "." + f, t.dtype, t.shape, t.bytes});
    SafetensorsWriter::write_file(d.path() / (module + ".safetensors"), ts);
    return Checkpoint::open(d.path());
  }
};

// One [n, k] case of every scheme from the same float weight (k even and a multiple of 16
// for the fp4 schemes): bf16, fp8_block (128 x 128 E8M0), int4 asymmetric (group 32),
// mxfp4, nvfp4. int4_group: the int4 group size.
inline std::vector<Case> one_of_each_scheme(int64_t n, int64_t k, uint32_t seed, int int4_group = 32) {
  auto w = random_matrix(n, k, seed);
  std::vector<Case> cases;
  cases.push_back({"bf16", {{"weight", quant::encode_floats(w, {n, k}, DType::BF16)}}, n, k});
  auto f8 = quant::quantize_fp8_block(w, n, k);
  cases.push_back({"fp8_block", {{"weight", f8.weight}, {"scale", f8.scale}}, n, k});
  quant::Int4Options io;
  io.symmetric = false;
  io.group = int4_group;
  auto i4 = quant::quantize_int4_group(w, n, k, io);
  cases.push_back({"int4 asym", {{"weight_packed", i4.packed}, {"weight_scale", i4.scale}, {"weight_shape", i4.shape},
                                 {"weight_zero_point", *i4.zero_point}}, n, k});
  auto mx = quant::quantize_mxfp4(w, n, k);
  cases.push_back({"mxfp4", {{"weight", mx.weight}, {"scale", mx.scale}}, n, k});
  auto nv = quant::quantize_nvfp4(w, n, k, quant::nvfp4_global_for(quant::amax(w)));
  cases.push_back({"nvfp4", {{"weight", nv.weight}, {"weight_scale", nv.scale}, {"weight_scale_2", nv.global_scale}}, n, k});
  return cases;
}

}  // namespace kiln::ops::test_linear
