// Loading straight to the device (runtime/cuda/device_model.h): the streaming uploader
// delivers every byte (and reports a fill's error, and cancels); on every artifact flavour
// the straight-to-device load puts byte for byte what the load through the CPU model puts
// on the device, and gives bitwise the same logits; the memory plan counted exactly what
// was allocated; a model that does not fit the --gpu-memory-fraction fails with the message
// (exit 2) instead of a CUDA out-of-memory; serve holds the sequences that fit and the
// engine makes the rest wait or refuses them.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include "cli/kiln_process.h"
#include "gpu_fixtures.h"
#include "kiln/cli/backend_session.h"
#include "kiln/cli/serve.h"
#include "kiln/core/error.h"
#include "kiln/model/gpu_memory.h"
#include "kiln/ops/cuda/device_buffer.h"
#include "kiln/ops/cuda/device_upload.h"
#include "kiln/runtime/cuda/device_model.h"
#include "kiln/runtime/engine.h"

namespace kiln {
namespace {

using namespace gpu_test;
using model::cuda::GpuBlock;
using model::cuda::GpuWeights;
using ops::cuda::DeviceArray;
using ops::cuda::DeviceUploader;

std::byte pattern(uint64_t i, int seed) { return static_cast<std::byte>((i * 131 + static_cast<uint64_t>(seed) * 17) & 0xFF); }

TEST(DeviceUploader, EveryRangeArrivesWhole) {
  ops::cuda::UploadOptions o;
  o.threads = 3;
  o.staging_bytes = 3 * 4096;  // ranges cross several pieces
  DeviceUploader up(o);
  const std::vector<size_t> sizes = {1, 4095, 4096, 12288, 12289, 100000, 7, 65536 + 3};
  std::vector<DeviceArray<uint8_t>> bufs;
  for (size_t s : sizes) bufs.emplace_back(s, /*zero=*/false);  // no memset racing the uploader's streams
  for (size_t r = 0; r < sizes.size(); ++r) {
    const int seed = static_cast<int>(r);
    up.enqueue(bufs[r].get(), sizes[r], [seed](uint64_t off, uint64_t len, std::byte* dst) {
      for (uint64_t i = 0; i < len; ++i) dst[i] = pattern(off + i, seed);
    });
  }
  up.finish();
  uint64_t total = 0;
  for (size_t r = 0; r < sizes.size(); ++r) {
    const auto got = bufs[r].download(sizes[r]);
    for (size_t i = 0; i < sizes[r]; ++i) ASSERT_EQ(static_cast<std::byte>(got[i]), pattern(i, static_cast<int>(r))) << r << " " << i;
    total += sizes[r];
  }
  EXPECT_EQ(up.bytes_copied(), total);
  EXPECT_EQ(up.bytes_enqueued(), total);
  EXPECT_THROW(up.enqueue(bufs[0].get(), 1, [](uint64_t, uint64_t, std::byte*) {}), Error);  // after finish
}

TEST(DeviceUploader, AFillsErrorComesFromFinish) {
  ops::cuda::UploadOptions o;
  o.threads = 2;
  o.staging_bytes = 4096;
  DeviceUploader up(o);
  DeviceArray<uint8_t> a(20000, false), b(20000, false);
  up.enqueue(a.get(), 20000, [](uint64_t, uint64_t len, std::byte* dst) { std::memset(dst, 1, len); });
  up.enqueue(b.get(), 20000, [](uint64_t off, uint64_t len, std::byte* dst) {
    if (off >= 8192) fail_invalid("m: weight element [{}, 0] is the e4m3 NaN code 0x7F", off);
    std::memset(dst, 2, len);
  });
  try {
    up.finish();
    FAIL() << "expected the fill's error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    EXPECT_NE(std::string(e.what()).find("NaN code"), std::string::npos) << e.what();
  }
}

TEST(DeviceUploader, CancelStopsWhatHasNotStarted) {
  ops::cuda::UploadOptions o;
  o.threads = 2;
  o.staging_bytes = 4096;
  std::atomic<int> filled{0};
  DeviceArray<uint8_t> a(4096 * 200, false);
  {
    DeviceUploader up(o);
    up.enqueue(a.get(), 4096 * 200, [&](uint64_t, uint64_t len, std::byte* dst) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      std::memset(dst, 3, len);
      ++filled;
    });
    up.cancel();
    const int at_cancel = filled.load();
    EXPECT_LT(at_cancel, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(filled.load(), at_cancel);  // nothing runs after cancel() returned
    EXPECT_THROW(up.finish(), Error);
  }
}

// ---- The two loads, compared byte for byte.

template <typename T>
void same_array(const DeviceArray<T>& a, const DeviceArray<T>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  const auto x = a.download(a.size()), y = b.download(b.size());
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(T)), 0) << what;
}

void same_linear(const model::cuda::QuantLinear& a, const model::cuda::QuantLinear& b, const std::string& what) {
  EXPECT_EQ(a.download_prepared(), b.download_prepared()) << what;
  EXPECT_EQ(a.device_bytes(), b.device_bytes()) << what;
}

void same_set(const model::cuda::QuantLinearSet& a, const model::cuda::QuantLinearSet& b, const std::string& what) {
  ASSERT_EQ(a.count(), b.count()) << what;
  for (int e = 0; e < a.count(); ++e) EXPECT_EQ(a.download_prepared(e), b.download_prepared(e)) << what << " expert " << e;
  EXPECT_EQ(a.device_bytes(), b.device_bytes()) << what;
}

void same_block(const GpuBlock& a, const GpuBlock& b, const std::string& p) {
  same_array(a.attn_norm, b.attn_norm, p + "attn_norm");
  same_array(a.ffn_norm, b.ffn_norm, p + "ffn_norm");
  for (auto h : {&GpuBlock::hc_attn, &GpuBlock::hc_ffn}) {
    same_array((a.*h).fn, (b.*h).fn, p + "hc fn");
    same_array((a.*h).base, (b.*h).base, p + "hc base");
    same_array((a.*h).scale, (b.*h).scale, p + "hc scale");
  }
  const auto &x = a.attn, &y = b.attn;
  same_linear(x.wq_a, y.wq_a, p + "wq_a");
  same_linear(x.wq_b, y.wq_b, p + "wq_b");
  same_linear(x.wkv, y.wkv, p + "wkv");
  same_linear(x.wo_a, y.wo_a, p + "wo_a");
  same_linear(x.wo_b, y.wo_b, p + "wo_b");
  same_array(x.q_norm, y.q_norm, p + "q_norm");
  same_array(x.kv_norm, y.kv_norm, p + "kv_norm");
  same_array(x.sink, y.sink, p + "sink");
  ASSERT_EQ(x.compressor.has_value(), y.compressor.has_value());
  auto comp = [&](const model::cuda::GpuCompressor& c, const model::cuda::GpuCompressor& d, const std::string& q) {
    same_linear(c.wkv, d.wkv, q + "wkv");
    same_linear(c.wgate, d.wgate, q + "wgate");
    same_array(c.ape, d.ape, q + "ape");
    same_array(c.norm, d.norm, q + "norm");
  };
  if (x.compressor) comp(*x.compressor, *y.compressor, p + "compressor.");
  ASSERT_EQ(x.indexer.has_value(), y.indexer.has_value());
  if (x.indexer) {
    same_linear(x.indexer->wq_b, y.indexer->wq_b, p + "indexer.wq_b");
    same_linear(x.indexer->weights_proj, y.indexer->weights_proj, p + "indexer.weights_proj");
    comp(x.indexer->compressor, y.indexer->compressor, p + "indexer.compressor.");
  }
  const auto &m = a.ffn, &n = b.ffn;
  same_linear(m.gate, n.gate, p + "gate");
  same_array(m.bias, n.bias, p + "bias");
  same_array(m.tid2eid, n.tid2eid, p + "tid2eid");
  same_set(m.w1, n.w1, p + "experts w1");
  same_set(m.w2, n.w2, p + "experts w2");
  same_set(m.w3, n.w3, p + "experts w3");
  ASSERT_EQ(m.shared.has_value(), n.shared.has_value());
  if (m.shared) {
    same_linear(m.shared->w1, n.shared->w1, p + "shared w1");
    same_linear(m.shared->w2, n.shared->w2, p + "shared w2");
    same_linear(m.shared->w3, n.shared->w3, p + "shared w3");
  }
}

void same_weights(const GpuWeights& a, const GpuWeights& b) {
  same_array(a.embed, b.embed, "embed");
  same_linear(a.head, b.head, "head");
  same_array(a.norm, b.norm, "norm");
  same_array(a.hc_head.fn, b.hc_head.fn, "hc_head fn");
  same_array(a.hc_head.base, b.hc_head.base, "hc_head base");
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) same_block(a.layers[l], b.layers[l], fmt::format("layers.{}.", l));
  ASSERT_EQ(a.mtp.size(), b.mtp.size());
  for (size_t m = 0; m < a.mtp.size(); ++m) {
    const std::string p = fmt::format("mtp.{}.", m);
    same_linear(a.mtp[m].e_proj, b.mtp[m].e_proj, p + "e_proj");
    same_linear(a.mtp[m].h_proj, b.mtp[m].h_proj, p + "h_proj");
    same_array(a.mtp[m].enorm, b.mtp[m].enorm, p + "enorm");
    same_array(a.mtp[m].hnorm, b.mtp[m].hnorm, p + "hnorm");
    same_array(a.mtp[m].norm, b.mtp[m].norm, p + "norm");
    same_block(a.mtp[m].block, b.mtp[m].block, p);
  }
  EXPECT_EQ(a.linear_bytes, b.linear_bytes);
  EXPECT_EQ(a.device_bytes, b.device_bytes);
}

::testing::AssertionResult bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  if (std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0) return ::testing::AssertionSuccess();
  double worst = 0;
  size_t at = 0, differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) ++differ;
    if (d > worst || std::isnan(d)) worst = d, at = i;
  }
  return ::testing::AssertionFailure() << differ << " of " << a.size() << " values differ; largest |a-b| " << worst
                                       << " at " << at << " (" << a[at] << " vs " << b[at] << ")";
}

TEST(GpuLoad, StraightToDeviceEqualsTheLoadThroughTheCpuModel) {
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  for (const Flavour& fl : flavours()) {
    SCOPED_TRACE(fl.label);
    test::TempDir tmp;
    const fs::path dir = model_dir(fl, tmp);
    const int rows = 48, slots = 3;
    const int64_t ctx = 1024;
    // Today's path: the CPU model (fp32 embedding, every linear's bytes in host vectors),
    // then each linear prepared and copied synchronously on this thread.
    auto cpu = runtime::load_model(dir, 2, nullptr);
    model::cuda::UploadSettings sync;
    sync.synchronous = true;
    GpuWeights old = model::cuda::upload_weights(
        cpu->weights, model::cuda::DeviceSources{model::checkpoint_linears(cpu->checkpoint, cpu->plan), {}}, rows, sync);
    // Straight to the device.
    runtime::cuda::DeviceModelOptions o;
    o.max_slots = slots;
    o.max_rows = rows;
    o.max_context = ctx;
    runtime::cuda::DeviceModel dm = runtime::cuda::open_device_model(dir, o);
    ASSERT_EQ(dm.memory.slots, slots);
    GpuForward& fresh = *dm.forward;
    same_weights(old, fresh.weights());

    // What the plan counted is what was allocated.
    model::LoadOptions skip;
    skip.skip_linears = skip.skip_embed = true;
    const model::Weights ws = model::load_weights(cpu->checkpoint, cpu->plan, skip);
    const model::GpuWeightBytes counted =
        model::gpu_weight_bytes(ws, model::checkpoint_linears(cpu->checkpoint, cpu->plan), rows);
    EXPECT_EQ(fresh.weights().device_bytes, counted.linears + counted.staging + counted.params);
    EXPECT_EQ(dm.memory.needs.weights, counted.weights());
    const model::GpuModelShape shape = model::gpu_model_shape(ws);
    const ModelConfig& c = cpu->config;
    EXPECT_EQ(fresh.activation_bytes(), model::gpu_activation_sizes(c, shape, rows, ctx, sms).bytes());
    EXPECT_EQ(fresh.state_bytes(), slots * model::gpu_slot_bytes(c, shape, rows, ctx));
    EXPECT_EQ(dm.memory.needs.per_slot, model::gpu_slot_bytes(c, shape, rows, ctx));
    EXPECT_GT(dm.stats.upload_bytes, 0);
    EXPECT_GT(dm.stats.peak_rss_anon, 0);

    // Bitwise the same logits: a prefill, decode steps of two sequences, the MTP block.
    // Each pass is downloaded (which waits for it) before the other forward runs: the
    // cuBLASLt split buffers and workspace are process-wide (ops/cuda/quant_linear_lt.cpp),
    // so two forwards' passes must not overlap on the device.
    GpuForward before(std::move(old), GpuOptions{slots, rows, ctx, true});
    const int T = 40;
    const auto tok = prompt_tokens(c.vocab_size, T + 8);
    auto prefill = [&](GpuForward& g) {
      g.main(std::span(tok.data(), T), std::vector<int32_t>(T, 0), iota_vec(T));
      return g.download_main_logits(T);
    };
    const auto prefilled = prefill(before);
    EXPECT_TRUE(bitwise_equal(prefilled, prefill(fresh)));
    if (fresh.mtp_blocks() > 0) {
      auto mtp = [&](GpuForward& g) {
        g.mtp(0, std::span(tok.data() + 1, T), std::vector<int32_t>(T, 0), iota_vec(T), iota_vec(T), false);
        return g.download_mtp_logits(T);
      };
      const auto drafted = mtp(before);
      EXPECT_TRUE(bitwise_equal(drafted, mtp(fresh)));
    }
    for (int s = 0; s < 6; ++s) {
      const std::vector<int32_t> t2 = {tok[static_cast<size_t>(T + s)], tok[static_cast<size_t>(s)]}, sl = {0, 1}, ps = {T + s, s};
      auto step = [&](GpuForward& g) {
        g.main(t2, sl, ps);
        return g.download_main_logits(2);
      };
      const auto stepped = step(before);
      EXPECT_TRUE(bitwise_equal(stepped, step(fresh))) << "step " << s;
    }
  }
}

TEST(GpuLoad, AModelThatDoesNotFitFailsBeforeLoadingNamingTheBytes) {
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  cli::SessionOptions so;
  so.model = KILN_BUNDLED_MODEL;
  so.device = "cuda";
  so.gpu_memory_fraction = 0.001;  // ~80 MB: less than the reserve alone
  try {
    cli::BackendSession s(so);
    FAIL() << "expected the memory plan to refuse";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    const std::string m = e.what();
    EXPECT_NE(m.find("does not fit"), std::string::npos) << m;
    EXPECT_NE(m.find("GB is available"), std::string::npos) << m;
    EXPECT_NE(m.find("--gpu-memory-fraction 0.001"), std::string::npos) << m;
  }
  size_t free1 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_GE(free1 + (size_t{64} << 20), free0);  // nothing large was left allocated

  // Through the binary: exit 2 and the message, never a CUDA error.
  const test::Out r = test::kiln_run(std::string("generate --device cuda --model ") + KILN_BUNDLED_MODEL +
                                     " --gpu-memory-fraction 0.001 --tokens 1,2,3 --max-tokens 2");
  EXPECT_EQ(r.code, 2) << r.text;
  EXPECT_NE(r.text.find("does not fit"), std::string::npos) << r.text;
  EXPECT_EQ(r.text.find("CUDA error"), std::string::npos) << r.text;
  const test::Out bad = test::kiln_run(std::string("generate --device cuda --model ") + KILN_BUNDLED_MODEL +
                                       " --gpu-memory-fraction 1.5 --tokens 1,2,3 --max-tokens 2");
  EXPECT_EQ(bad.code, 1) << bad.text;
}

TEST(GpuLoad, ServeHoldsTheSequencesThatFitAndTheRestWaitOrAreRefused) {
  const int rows = 64;
  const int64_t ctx = 2048;
  // What one sequence and the fixed part cost, then a fraction that holds exactly 3.
  model::GpuMemoryPlan probe;
  {
    runtime::cuda::DeviceModelOptions o;
    o.max_rows = rows;
    o.max_context = ctx;
    probe = runtime::cuda::open_device_model(KILN_BUNDLED_MODEL, o).memory;
  }
  ASSERT_GT(probe.needs.per_slot, 0);
  const double fraction = (static_cast<double>(probe.bytes(3)) + 0.5 * static_cast<double>(probe.needs.per_slot)) /
                          static_cast<double>(probe.total);
  cli::SessionOptions so;
  so.model = KILN_BUNDLED_MODEL;
  so.device = "cuda";
  so.max_slots = 16;
  so.max_rows = rows;
  so.max_context = ctx;
  so.gpu_memory_fraction = fraction;
  so.fewer_slots_ok = true;
  cli::BackendSession s(so);
  EXPECT_EQ(s.slots(), 3);
  EXPECT_TRUE(s.slots_lowered());
  const std::string d = s.describe();
  EXPECT_NE(d.find("3 sequences x 2048 positions"), std::string::npos) << d;
  EXPECT_NE(d.find("lowered"), std::string::npos) << d;
  EXPECT_NE(d.find("GB/s"), std::string::npos) << d;
  EXPECT_NE(d.find("RssAnon"), std::string::npos) << d;

  // The engine takes the 3 sequences (as serve passes them): more requests wait their turn...
  const auto prompt = prompt_tokens(s.config().vocab_size, 12);
  auto request = [&] {
    runtime::GenerationRequest r;
    r.prompt = prompt;
    r.max_tokens = 24;
    return r;
  };
  {
    runtime::EngineOptions eo;
    eo.max_batch = s.slots();
    eo.max_waiting = 64;
    runtime::Engine engine(s.backend(), eo);
    std::vector<std::shared_ptr<runtime::RequestHandle>> hs;
    for (int i = 0; i < 8; ++i) hs.push_back(engine.submit(request()));
    for (auto& h : hs) {
      ASSERT_TRUE(h);
      while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(50));
      EXPECT_EQ(h->finish_reason(), runtime::FinishReason::Length) << h->error();
      EXPECT_EQ(h->tokens().size(), 24u);
      EXPECT_EQ(h->tokens(), hs[0]->tokens());  // greedy: the same answer wherever it waited
    }
  }
  // ...and with no waiting room, those beyond are refused (the server's 429): at most the 3
  // running and 3 queued for the free batch places while the scheduler has not yet
  // counted the ones it admitted (the running count is updated after each step).
  {
    runtime::EngineOptions eo;
    eo.max_batch = s.slots();
    eo.max_waiting = 0;
    runtime::Engine engine(s.backend(), eo);
    std::vector<std::shared_ptr<runtime::RequestHandle>> hs;
    int refused = 0;
    for (int i = 0; i < 12; ++i) {
      auto h = engine.submit(request());
      if (h) hs.push_back(h);
      else ++refused;
    }
    EXPECT_GE(hs.size(), 3u);
    EXPECT_LE(hs.size(), 6u);
    EXPECT_EQ(refused, 12 - static_cast<int>(hs.size()));
    for (auto& h : hs) {
      while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(50));
      EXPECT_EQ(h->finish_reason(), runtime::FinishReason::Length) << h->error();
    }
  }
}

TEST(GpuLoad, ServeReadyLineShowsCapacityAndTheLoad) {
  cli::ServeOptions o;
  o.model = KILN_BUNDLED_MODEL;
  o.device = "cuda";
  o.port = 0;
  o.max_batch = 4;
  o.max_context = 4096;
  std::ostringstream err;
  cli::ServeInstance inst(o, err);
  const std::string line = inst.ready_line();
  EXPECT_NE(line.find("batch 4;"), std::string::npos) << line;
  EXPECT_NE(line.find("4 sequences x 4096 positions"), std::string::npos) << line;
  EXPECT_NE(line.find("load "), std::string::npos) << line;
  EXPECT_NE(line.find("RssAnon"), std::string::npos) << line;
  EXPECT_NE(err.str().find("gpu memory plan:"), std::string::npos) << err.str();
}

}  // namespace
}  // namespace kiln
