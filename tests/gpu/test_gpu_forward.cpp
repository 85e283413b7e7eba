// The GPU forward against the CPU reference on the fixtures, every artifact flavour and
// the non-default router score functions: logits (prefill, chunked, MTP), greedy tokens
// over 64 steps, MTP exactness on the GPU, batching, and graph replay equal to eager bit
// for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/cli/quantize.h"
#include "kiln/cli/run_commands.h"
#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/runtime/cuda/gpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/speculative.h"
#include "gpu_fixtures.h"
#include "support/artifacts.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using model::cuda::GpuForward;
using model::cuda::GpuOptions;

using namespace gpu_test;  // flavours, model_dir, load, prompt_tokens, iota_vec (gpu_fixtures.h)

// Tolerance of GPU vs CPU logits: both sum in fp32, in different orders (~1e-6 relative
// per op); kept well above that and well below what a wrong kernel gives (O(1)).
constexpr double kLogitTol = 2e-4;

TEST(GpuForward, LogitsMatchTheCpuReferenceForEveryFlavour) {
  for (const Flavour& fl : flavours()) {
    SCOPED_TRACE(fl.label);
    test::TempDir tmp;
    Loaded m = load(model_dir(fl, tmp));
    const auto& c = m.cpu->config;
    const int T = 40;
    const auto tok = prompt_tokens(c.vocab_size, T + 1);
    // CPU: prefill T tokens, then the MTP block over the returned streams.
    std::vector<float> cpu_logits(static_cast<size_t>(T * c.vocab_size)), streams(static_cast<size_t>(T * c.hc_mult * c.hidden_size));
    auto st = m.cpu->forward->new_state();
    m.cpu->forward->step(st, std::span(tok.data(), static_cast<size_t>(T)), cpu_logits.data(), streams.data());
    std::vector<float> cpu_mtp;
    if (!m.cpu->weights.mtp.empty()) {
      cpu_mtp.resize(cpu_logits.size());
      m.cpu->forward->mtp_step(st, 0, streams, std::span(tok.data() + 1, static_cast<size_t>(T)), cpu_mtp.data(), nullptr);
    }
    // GPU, one pass of T rows in slot 0.
    GpuForward& g = *m.gpu;
    g.set_graphs(false);
    const std::vector<int32_t> slot0(static_cast<size_t>(T), 0), pos = iota_vec(T);
    g.main(std::span(tok.data(), static_cast<size_t>(T)), slot0, pos);
    const auto gl = g.download_main_logits(T);
    const double e_main = max_rel_row_error(gl, cpu_logits, c.vocab_size);
    EXPECT_LT(e_main, kLogitTol);
    const double e_streams = max_rel_row_error(g.download_main_streams(T), streams, c.hc_mult * c.hidden_size);
    EXPECT_LT(e_streams, kLogitTol);
    double e_mtp = 0;
    if (!cpu_mtp.empty()) {
      g.mtp(0, std::span(tok.data() + 1, static_cast<size_t>(T)), slot0, pos, pos, false);
      e_mtp = max_rel_row_error(g.download_mtp_logits(T), cpu_mtp, c.vocab_size);
      EXPECT_LT(e_mtp, kLogitTol);
    }
    // Chunked (7 rows at a time, slot 1) and token by token (slot 2): the same logits.
    std::vector<float> chunked, single;
    for (int c0 = 0; c0 < T; c0 += 7) {
      const int n = std::min(7, T - c0);
      const std::vector<int32_t> s1(static_cast<size_t>(n), 1);
      g.main(std::span(tok.data() + c0, static_cast<size_t>(n)), s1, iota_vec(n, c0));
      const auto l = g.download_main_logits(n);
      chunked.insert(chunked.end(), l.begin(), l.end());
    }
    for (int t = 0; t < T; ++t) {
      const int32_t s2 = 2, p = t;
      g.main(std::span(tok.data() + t, 1), std::span(&s2, 1), std::span(&p, 1));
      const auto l = g.download_main_logits(1);
      single.insert(single.end(), l.begin(), l.end());
    }
    const double e_chunk = max_rel_row_error(chunked, cpu_logits, c.vocab_size);
    const double e_single = max_rel_row_error(single, cpu_logits, c.vocab_size);
    EXPECT_LT(e_chunk, kLogitTol);
    EXPECT_LT(e_single, kLogitTol);
    std::printf("[gpu-vs-cpu] %-40s main %.2e  streams %.2e  mtp %.2e  chunked %.2e  one-by-one %.2e\n", fl.label.c_str(),
                e_main, e_streams, e_mtp, e_chunk, e_single);
  }
}

TEST(GpuForward, GraphReplayEqualsEagerBitForBit) {
  Loaded m = load(kFixtures + "/tiny_a/native");
  GpuForward& g = *m.gpu;
  const auto& c = m.cpu->config;
  const int T = 24;
  const auto tok = prompt_tokens(c.vocab_size, T + 8);
  auto run = [&](bool graphs, int32_t slot) {
    g.set_graphs(graphs);
    std::vector<float> out;
    const std::vector<int32_t> s(static_cast<size_t>(T), slot);
    g.main(std::span(tok.data(), static_cast<size_t>(T)), s, iota_vec(T));
    out = g.download_main_logits(T);
    for (int t = T; t < T + 8; ++t) {  // decode steps: one row each, the same graph replayed
      g.main(std::span(tok.data() + t, 1), std::span(&slot, 1), std::span(&t, 1));
      const auto l = g.download_main_logits(1);
      out.insert(out.end(), l.begin(), l.end());
    }
    return out;
  };
  const auto eager = run(false, 0);
  const auto graph = run(true, 1);
  EXPECT_GE(g.graphs_captured(), 2u);
  ASSERT_EQ(eager.size(), graph.size());
  EXPECT_EQ(std::memcmp(eager.data(), graph.data(), eager.size() * sizeof(float)), 0);
  // The node counts kiln bench prints: every layer launches kernels; rows never fed, none.
  const ops::cuda::GraphNodes one = g.main_graph_nodes(1), prompt = g.main_graph_nodes(T);
  EXPECT_GT(one.kernels, 5 * c.num_layers) << "kernels in the one-row pass's graph";
  EXPECT_GT(prompt.kernels, 5 * c.num_layers) << "kernels in the prompt pass's graph";
  EXPECT_EQ(g.main_graph_nodes(T + 1).kernels, 0) << "no graph was captured for " << T + 1 << " rows";
}

// Programmatic dependent launch (ops/cuda/launch.cuh) only moves when a kernel is scheduled:
// a prompt pass, decode steps and the MTP block, as captured graphs in both precisions, give
// the same bits with it as without. A kernel reading its inputs before the kernel before it
// finished would show here as a difference (or, by luck, not: run repeatedly on the GPU).
TEST(GpuForward, ProgrammaticLaunchesGiveTheSameBits) {
  for (const ops::Precision prec : {ops::Precision::Exact, ops::Precision::DeepSeek}) {
    auto run = [&](bool pdl) {
      ops::cuda::set_pdl_enabled(pdl);
      Loaded m = load(kFixtures + "/tiny_b/native", {}, prec);
      GpuForward& g = *m.gpu;
      g.set_graphs(true);
      const auto& c = m.cpu->config;
      const int T = 24;
      const auto tok = prompt_tokens(c.vocab_size, T + 8);
      std::vector<float> out;
      for (int32_t slot = 0; slot < 2; ++slot) {  // the second time, every graph is replayed
        const std::vector<int32_t> s(static_cast<size_t>(T), slot), pos = iota_vec(T);
        g.main(std::span(tok.data(), static_cast<size_t>(T)), s, pos);
        auto l = g.download_main_logits(T);
        out.insert(out.end(), l.begin(), l.end());
        if (!m.cpu->weights.mtp.empty()) {
          g.mtp(0, std::span(tok.data() + 1, static_cast<size_t>(T - 1)), std::span(s.data(), T - 1),
                std::span(pos.data(), T - 1), std::span(pos.data(), T - 1), false);
          l = g.download_mtp_logits(T - 1);
          out.insert(out.end(), l.begin(), l.end());
        }
        for (int t = T; t < T + 8; ++t) {
          g.main(std::span(tok.data() + t, 1), std::span(&slot, 1), std::span(&t, 1));
          l = g.download_main_logits(1);
          out.insert(out.end(), l.begin(), l.end());
        }
      }
      EXPECT_GE(g.graphs_captured(), 2u);
      return out;
    };
    const auto plain = run(false);
    const auto pdl = run(true);
    ops::cuda::set_pdl_enabled(true);
    ASSERT_EQ(plain.size(), pdl.size());
    size_t differ = 0;
    for (size_t i = 0; i < plain.size(); ++i) differ += std::memcmp(&plain[i], &pdl[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "of " << plain.size() << " logits, precision " << static_cast<int>(prec);
  }
}

TEST(GpuForward, Greedy64StepsEqualTheCpuForBf16AndFp8) {
  for (const Flavour& fl : flavours()) {
    if (!fl.recipe.empty() && fl.recipe != "fp8-v3-style") continue;
    SCOPED_TRACE(fl.label);
    test::TempDir tmp;
    Loaded m = load(model_dir(fl, tmp));
    const auto prompt = prompt_tokens(m.cpu->config.vocab_size, 12);
    runtime::SamplingParams sp;
    sp.temperature = 0;
    const auto cpu = runtime::generate_plain(*m.cpu->forward, prompt, 64, sp, -1);
    const auto gpu = decode_greedy(*m.backend, {prompt}, 64, 0);
    EXPECT_EQ(gpu.tokens.at(0), cpu.tokens);
  }
}

// In both precisions (deepseek: every linear batch-invariant, so a verify row sums as the
// plain decode row does).
TEST(GpuForward, MtpSpeculativeIsExactOnTheGpu) {
  for (const Flavour& fl : flavours()) {
    if (fl.label != "tiny_a native bf16" && fl.label != "tiny_a w4a16-fp8-mtp" &&
        fl.label != "tiny_a deepseek-native (fp8 + mxfp4)")
      continue;
    for (const auto precision : {ops::Precision::Exact, ops::Precision::DeepSeek}) {
      SCOPED_TRACE(fl.label + ", " + std::string(ops::precision_name(precision)));
      test::TempDir tmp;
      Loaded m = load(model_dir(fl, tmp), {}, precision);
      const int64_t V = m.cpu->config.vocab_size;
      const std::vector<std::vector<int32_t>> prompts = {prompt_tokens(V, 9), prompt_tokens(V, 14, 1), prompt_tokens(V, 5, 2)};
      const auto plain = decode_greedy(*m.backend, prompts, 48, 0);
      for (int k = 1; k <= 3; ++k) {
        const auto spec = decode_greedy(*m.backend, prompts, 48, k);
        EXPECT_EQ(spec.tokens, plain.tokens) << "k=" << k;
        EXPECT_GT(spec.rounds, 0);
      }
    }
  }
}

TEST(GpuForward, BatchedSequencesEqualEachAlone) {
  Loaded m = load(kFixtures + "/tiny_b/native");
  const int64_t V = m.cpu->config.vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {prompt_tokens(V, 7), prompt_tokens(V, 19, 3), prompt_tokens(V, 3, 5)};
  const auto together = decode_greedy(*m.backend, prompts, 32, 0);
  runtime::SamplingParams sp;
  sp.temperature = 0;
  for (size_t b = 0; b < prompts.size(); ++b) {
    const auto cpu = runtime::generate_plain(*m.cpu->forward, prompts[b], 32, sp, -1);
    EXPECT_EQ(together.tokens[b], cpu.tokens) << "prompt " << b;
  }
}

// Head rows (GpuForward::main's head_rows, what the backend passes for prompt chunks): the
// logits and argmax of the listed rows equal those rows of the pass with every row's head
// (within 5e-5 of the row's largest logit: the exact precision's BF16 head takes cuBLASLt from 16
// rows and the CUDA-core kernel below, two sums in other orders; seen 1.8e-5 on an H100,
// relative to max(1, |logit|)),
// a pass with no head rows runs, and a row the head skipped is refused.
TEST(GpuForward, HeadRowsEqualThoseRowsOfTheFullPass) {
  Loaded m = load(kFixtures + "/tiny_a/native");
  GpuForward& g = *m.gpu;
  const auto& c = m.cpu->config;
  const int T = 20;
  const int64_t V = c.vocab_size;
  const auto tok = prompt_tokens(V, T);
  const std::vector<int32_t> s(static_cast<size_t>(T), 0);
  for (bool graphs : {false, true}) {
    g.set_graphs(graphs);
    g.main(tok, s, iota_vec(T));
    const auto all = g.download_main_logits(T);
    const auto all_arg = g.download_main_argmax(T);
    const std::vector<int32_t> pick = {2, 3, 11, 19};
    g.main(tok, s, iota_vec(T), std::span<const int32_t>(pick));  // the same positions again: the same state
    std::vector<float> got(pick.size() * static_cast<size_t>(V));
    std::vector<int32_t> arg(pick.size());
    g.logits_rows_to_host(false, pick, got.data());
    g.argmax_rows_to_host(false, pick, arg.data());
    const auto compact = g.download_main_logits(static_cast<int>(pick.size()));
    EXPECT_EQ(compact, got) << "main_logits holds the head rows, compacted";
    std::vector<float> want;
    for (size_t i = 0; i < pick.size(); ++i) {
      const size_t r = static_cast<size_t>(pick[i]);
      want.insert(want.end(), all.begin() + static_cast<std::ptrdiff_t>(r * static_cast<size_t>(V)),
                  all.begin() + static_cast<std::ptrdiff_t>((r + 1) * static_cast<size_t>(V)));
      EXPECT_EQ(arg[i], all_arg[r]) << "row " << r;
    }
    EXPECT_LT(max_rel_row_error(got, want, V), 5e-5) << (graphs ? "graphs" : "eager");
    const int32_t skipped[1] = {5};
    EXPECT_THROW(g.logits_rows_to_host(false, skipped, got.data()), Error);
    EXPECT_THROW(g.argmax_rows_to_host(false, skipped, arg.data()), Error);
    // No head rows (a prompt chunk no prompt ends in): the pass runs, no row has logits.
    g.main(tok, s, iota_vec(T), std::span<const int32_t>());
    g.synchronize();
    const int32_t last[1] = {T - 1};
    EXPECT_THROW(g.logits_rows_to_host(false, last, got.data()), Error);
  }
}

TEST(GpuForward, BadRowsAreClearErrors) {
  Loaded m = load(kFixtures + "/tiny_a/native");
  GpuForward& g = *m.gpu;
  const int32_t tok = 3, slot = 0, pos = 0, bad_slot = 99, bad_pos = 1 << 30, bad_tok = 1 << 20;
  EXPECT_THROW(g.main(std::span(&tok, 1), std::span(&bad_slot, 1), std::span(&pos, 1)), Error);
  EXPECT_THROW(g.main(std::span(&tok, 1), std::span(&slot, 1), std::span(&bad_pos, 1)), Error);
  EXPECT_THROW(g.main(std::span(&bad_tok, 1), std::span(&slot, 1), std::span(&pos, 1)), Error);
  EXPECT_THROW(g.mtp(5, std::span(&tok, 1), std::span(&slot, 1), std::span(&pos, 1), std::span(&pos, 1), false), Error);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// `kiln generate --device cuda` (plain and --mtp, on the bundled trained model) prints the
// tokens `--device cpu` prints.
TEST(GpuGenerateCli, CudaTokensEqualCpuTokens) {
  const fs::path model = fs::path(KILN_TEST_DATA_DIR).parent_path().parent_path() / "models" / "kiln-dsv4-mini";
  for (int mtp : {0, 2}) {
    std::string outs[2];
    for (int d = 0; d < 2; ++d) {
      cli::GenerateOptions o;
      o.model = model;
      o.tokens = "5,17,42,100,3,9,200,11,12";
      o.max_tokens = 40;
      o.ignore_eos = true;
      o.device = d == 0 ? "cpu" : "cuda";
      o.precision = "exact";  // the GPU's default is deepseek; tokens equal the CPU's in exact
      if (mtp > 0) o.mtp = mtp;
      std::ostringstream out, err;
      ASSERT_EQ(cli::run_generate(o, out, err), 0) << err.str();
      outs[d] = out.str();
    }
    EXPECT_EQ(outs[1], outs[0]) << "mtp " << mtp;
    EXPECT_GT(outs[0].size(), 40u);
  }
  // Sampling runs on the GPU engine too (the sampler is the host's): a seed reproduces a run.
  std::string sampled[2];
  for (auto& s : sampled) {
    cli::GenerateOptions o;
    o.model = model;
    o.tokens = "5,17";
    o.device = "cuda";
    o.max_tokens = 24;
    o.ignore_eos = true;
    o.sampling.temperature = 0.7f;
    o.sampling.seed = 9;
    std::ostringstream out, err;
    ASSERT_EQ(cli::run_generate(o, out, err), 0) << err.str();
    s = out.str();
  }
  EXPECT_EQ(sampled[0], sampled[1]);
  EXPECT_EQ(std::count(sampled[0].begin(), sampled[0].end(), ','), 23);
}

}  // namespace
}  // namespace kiln
