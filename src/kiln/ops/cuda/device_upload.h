// Host-to-device copies of a model's weights through a bounded pinned staging area.
//
// A caller enqueues device ranges, each with a `fill` that writes any piece of the range's
// content into host memory (straight from a memory-mapped checkpoint, repacked or converted
// on the way). Ranges are cut into pieces of at most one staging buffer; several reader
// threads each own two pinned buffers and a stream: a thread fills one buffer while the
// copy from its other buffer runs (an event per buffer says when it may be refilled), so
// reading the page cache, converting and the PCIe copies overlap. Host memory stays at
// threads x 2 x staging_bytes whatever the model's size.
//
// Nothing runs a fill after cancel() (or the destructor) has returned, and no copy is in
// flight then either: device buffers that were enqueued may be freed afterwards. A caller
// that can throw between enqueue() and finish() while holding such buffers cancels first
// (see CancelUploadsOnThrow).
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <ostream>

namespace kiln::ops::cuda {

struct UploadOptions {
  // Reader threads; 0: $KILN_LOAD_THREADS, else min(8, max(2, cores / 2)).
  int threads = 0;
  // Bytes of one pinned staging buffer (two per thread); 0: $KILN_LOAD_STAGING_MB MiB, else 16 MiB.
  size_t staging_bytes = 0;
  // The sources given to enqueue() are read-only file mappings: after a piece is copied, its
  // source pages are dropped from this process's page tables (MADV_DONTNEED; the page cache
  // keeps them), so resident memory does not grow with the model. Never set this for
  // anonymous memory: dropping it would zero it.
  bool drop_source_pages = false;
  // A line every ~2 s while copying (GB copied, GB/s); nullptr: silent.
  std::ostream* progress = nullptr;
};

// The host memory a range's fill reads (for page hints; may be empty).
struct UploadSource {
  const std::byte* data = nullptr;
  uint64_t bytes = 0;
};

class DeviceUploader {
 public:
  // Writes bytes [offset, offset + bytes) of a range's content to dst (host memory).
  using Fill = std::function<void(uint64_t offset, uint64_t bytes, std::byte* dst)>;
  using Source = UploadSource;

  explicit DeviceUploader(const UploadOptions& o = {});
  ~DeviceUploader();  // cancel()
  DeviceUploader(const DeviceUploader&) = delete;
  DeviceUploader& operator=(const DeviceUploader&) = delete;

  // Copies `bytes` bytes produced by `fill` to device memory at `dst`, asynchronously.
  void enqueue(void* dst, uint64_t bytes, Fill fill, Source src = {});
  // Waits for every enqueued range to be on the device; rethrows the first error a fill or
  // copy raised (the other ranges are then left incomplete).
  void finish();
  // Drops every range not yet started, waits for the pieces in progress and their copies.
  void cancel() noexcept;

  uint64_t bytes_enqueued() const;
  uint64_t bytes_copied() const;
  double seconds() const;  // from construction to finish() (or now)
  int threads() const;
  size_t staging_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Declared after the objects that own enqueued device buffers, it cancels the uploader when
// the scope is left by an exception, before those objects free their buffers.
class CancelUploadsOnThrow {
 public:
  explicit CancelUploadsOnThrow(DeviceUploader* up) : up_(up), n_(std::uncaught_exceptions()) {}
  ~CancelUploadsOnThrow() {
    if (up_ && std::uncaught_exceptions() > n_) up_->cancel();
  }
  CancelUploadsOnThrow(const CancelUploadsOnThrow&) = delete;
  CancelUploadsOnThrow& operator=(const CancelUploadsOnThrow&) = delete;

 private:
  DeviceUploader* up_;
  int n_;
};

}  // namespace kiln::ops::cuda
