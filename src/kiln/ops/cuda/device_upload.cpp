#include "kiln/ops/cuda/device_upload.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {
namespace {

using Clock = std::chrono::steady_clock;

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 1 || x > 1024) fail(ErrorKind::Usage, "${}={}: expected an integer in 1..1024", name, v);
  return static_cast<int>(x);
}

// The page-aligned span of `src` a piece [off, off + len) of a `bytes`-byte range reads,
// taking the source to be read in proportion (exact for copies and fixed-ratio conversions;
// a hint otherwise).
std::pair<uintptr_t, uintptr_t> source_pages(const DeviceUploader::Source& src, uint64_t bytes, uint64_t off,
                                             uint64_t len) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const long double r = static_cast<long double>(src.bytes) / static_cast<long double>(bytes);
  const uint64_t s0 = static_cast<uint64_t>(static_cast<long double>(off) * r);
  const uint64_t s1 = static_cast<uint64_t>(static_cast<long double>(off + len) * r) + 1;
  const uintptr_t base = reinterpret_cast<uintptr_t>(src.data);
  return {(base + s0) / page * page, (base + std::min(s1, src.bytes) + page - 1) / page * page};
}

}  // namespace

struct DeviceUploader::Impl {
  struct Job {
    std::byte* dst = nullptr;
    uint64_t bytes = 0;
    Fill fill;
    Source src;
  };
  struct Piece {
    std::shared_ptr<const Job> job;
    uint64_t off = 0, len = 0;
  };
  struct Worker {
    std::thread thread;
    cudaStream_t stream = nullptr;
    std::byte* buf[2] = {nullptr, nullptr};
    cudaEvent_t ev[2] = {nullptr, nullptr};
  };

  UploadOptions o;
  int device = 0;
  std::mutex mu;
  std::condition_variable cv_work, cv_report;
  std::deque<Piece> queue;
  bool closed = false, cancelled = false, stopped = false;
  std::exception_ptr error;
  std::atomic<uint64_t> enqueued{0}, copied{0};
  std::atomic<bool> populate_ok{true};
  std::vector<Worker> workers;
  std::thread reporter;
  Clock::time_point t0 = Clock::now();
  double done_s = -1;

  void run(Worker& w) {
    cudaSetDevice(device);
    int which = 0;
    for (;;) {
      Piece p;
      {
        std::unique_lock lk(mu);
        cv_work.wait(lk, [&] { return !queue.empty() || closed; });
        if (queue.empty()) break;
        p = std::move(queue.front());
        queue.pop_front();
        if (cancelled || error) continue;
      }
      try {
        const Job& j = *p.job;
        std::byte* buf = w.buf[which];
        cudaEvent_t ev = w.ev[which];
        which ^= 1;
        KILN_CUDA_CHECK(cudaEventSynchronize(ev));  // the last copy out of this buffer is done
        std::pair<uintptr_t, uintptr_t> pages{0, 0};
        if (j.src.data && j.src.bytes && j.bytes) {
          pages = source_pages(j.src, j.bytes, p.off, p.len);
#ifdef MADV_POPULATE_READ
          if (pages.second > pages.first && populate_ok.load(std::memory_order_relaxed) &&
              madvise(reinterpret_cast<void*>(pages.first), pages.second - pages.first, MADV_POPULATE_READ) != 0) {
            populate_ok = false;  // an older kernel: the fill faults the pages in instead
          }
#endif
        }
        j.fill(p.off, p.len, buf);
        if (o.drop_source_pages && pages.second > pages.first)
          madvise(reinterpret_cast<void*>(pages.first), pages.second - pages.first, MADV_DONTNEED);
        KILN_CUDA_CHECK(cudaMemcpyAsync(j.dst + p.off, buf, p.len, cudaMemcpyHostToDevice, w.stream));
        KILN_CUDA_CHECK(cudaEventRecord(ev, w.stream));
        copied += p.len;
      } catch (...) {
        std::lock_guard lk(mu);
        if (!error) error = std::current_exception();
      }
    }
    cudaStreamSynchronize(w.stream);
  }

  void report() {
    std::unique_lock lk(mu);
    while (!cv_report.wait_for(lk, std::chrono::seconds(2), [&] { return stopped; })) {
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      const double gb = static_cast<double>(copied.load()) / 1e9;
      *o.progress << fmt::format("  gpu: {:.2f} of {:.2f} GB copied ({:.2f} GB/s)\n", gb,
                                 static_cast<double>(enqueued.load()) / 1e9, dt > 0 ? gb / dt : 0.0)
                  << std::flush;
    }
  }

  // Stops the workers (after the queue drains, or at once when cancelled) and the reporter.
  void stop() noexcept {
    {
      std::lock_guard lk(mu);
      if (stopped) return;
      closed = true;
    }
    cv_work.notify_all();
    for (auto& w : workers)
      if (w.thread.joinable()) w.thread.join();
    {
      std::lock_guard lk(mu);
      stopped = true;
      if (done_s < 0) done_s = std::chrono::duration<double>(Clock::now() - t0).count();
    }
    cv_report.notify_all();
    if (reporter.joinable()) reporter.join();
  }
};

DeviceUploader::DeviceUploader(const UploadOptions& o) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.o = o;
  if (m.o.threads <= 0) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    m.o.threads = env_int("KILN_LOAD_THREADS", std::clamp(cores / 2, 2, 8));
  }
  if (m.o.staging_bytes == 0) m.o.staging_bytes = size_t(env_int("KILN_LOAD_STAGING_MB", 16)) << 20;
  m.o.staging_bytes = (m.o.staging_bytes + 4095) / 4096 * 4096;  // pieces start at 4-byte (and page) multiples
  KILN_CUDA_CHECK(cudaGetDevice(&m.device));
  m.workers.resize(static_cast<size_t>(m.o.threads));
  try {
    for (auto& w : m.workers) {
      KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&w.stream, cudaStreamNonBlocking));
      for (int b = 0; b < 2; ++b) {
        KILN_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&w.buf[b]), m.o.staging_bytes, cudaHostAllocDefault));
        KILN_CUDA_CHECK(cudaEventCreateWithFlags(&w.ev[b], cudaEventDisableTiming));
      }
    }
    for (auto& w : m.workers) w.thread = std::thread([&m, &w] { m.run(w); });
    if (m.o.progress) m.reporter = std::thread([&m] { m.report(); });
  } catch (...) {
    m.stop();
    for (auto& w : m.workers) {
      for (int b = 0; b < 2; ++b) {
        if (w.buf[b]) cudaFreeHost(w.buf[b]);
        if (w.ev[b]) cudaEventDestroy(w.ev[b]);
      }
      if (w.stream) cudaStreamDestroy(w.stream);
    }
    throw;
  }
}

DeviceUploader::~DeviceUploader() {
  cancel();
  for (auto& w : impl_->workers) {
    for (int b = 0; b < 2; ++b) {
      cudaFreeHost(w.buf[b]);
      cudaEventDestroy(w.ev[b]);
    }
    cudaStreamDestroy(w.stream);
  }
}

void DeviceUploader::enqueue(void* dst, uint64_t bytes, Fill fill, Source src) {
  if (bytes == 0) return;
  Impl& m = *impl_;
  auto job = std::make_shared<Impl::Job>(Impl::Job{static_cast<std::byte*>(dst), bytes, std::move(fill), src});
  {
    std::lock_guard lk(m.mu);
    if (m.closed) fail(ErrorKind::Usage, "DeviceUploader::enqueue after finish() or cancel()");
    for (uint64_t off = 0; off < bytes; off += m.o.staging_bytes)
      m.queue.push_back({job, off, std::min<uint64_t>(m.o.staging_bytes, bytes - off)});
  }
  m.enqueued += bytes;
  m.cv_work.notify_all();
}

void DeviceUploader::finish() {
  Impl& m = *impl_;
  m.stop();
  std::lock_guard lk(m.mu);
  if (m.cancelled) fail(ErrorKind::Usage, "DeviceUploader::finish after cancel()");
  if (m.error) std::rethrow_exception(m.error);
}

void DeviceUploader::cancel() noexcept {
  Impl& m = *impl_;
  {
    std::lock_guard lk(m.mu);
    if (m.stopped) return;
    m.cancelled = true;
    m.queue.clear();
  }
  m.stop();
}

uint64_t DeviceUploader::bytes_enqueued() const { return impl_->enqueued.load(); }
uint64_t DeviceUploader::bytes_copied() const { return impl_->copied.load(); }
double DeviceUploader::seconds() const {
  std::lock_guard lk(impl_->mu);
  return impl_->done_s >= 0 ? impl_->done_s : std::chrono::duration<double>(Clock::now() - impl_->t0).count();
}
int DeviceUploader::threads() const { return impl_->o.threads; }
size_t DeviceUploader::staging_bytes() const { return impl_->o.staging_bytes; }

}  // namespace kiln::ops::cuda
