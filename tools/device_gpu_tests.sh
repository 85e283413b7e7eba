#!/usr/bin/env bash
# Builds and runs kiln's GPU tests (ctest label `gpu`) and, with KILN_GPU_BENCH=1, the CUDA
# linear benchmark, on the GPU machine, whose image has CUDA 13, CMake and Ninja but not
# the Debian -dev packages kiln builds against: those travel as .deb files in .deps/
# (apt-get download, see docs/gpu-testing.md) and are unpacked into a private prefix.
#   usage (on the GPU machine, from the repo root): tools/device_gpu_tests.sh OUT_DIR
#   KILN_GPU_TARGETS: targets to build (default: kiln_gpu_tests and kiln, plus the linear bench with KILN_GPU_BENCH=1)
#   KILN_GPU_FILTER:  a gtest filter for the GPU tests (default: all)
#   KILN_GPU_AFTER:   shell commands run after the tests (e.g. `./build-gpu/kiln bench ...`), output in OUT_DIR/after.log
set -uo pipefail
out=${1:-/tmp/kiln-gpu-out}
mkdir -p "$out"
prefix=/tmp/kiln-deps
mkdir -p "$prefix"
for f in .deps/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
# pkg-config (for PCRE2) from the prefix, its .pc files rebased onto the prefix.
export PATH="/usr/local/cuda/bin:$PATH:$prefix/usr/bin"
export PKG_CONFIG_LIBDIR="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$prefix"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
bench=${KILN_GPU_BENCH:-0}
targets=${KILN_GPU_TARGETS:-kiln_gpu_tests kiln}
[ "$bench" = 1 ] && targets="$targets kiln_bench_cuda_linear"
cmake -B build-gpu -G Ninja -DKILN_CUDA=ON -DKILN_BENCH=$([ "$bench" = 1 ] && echo ON || echo OFF) \
  -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$out/configure.log" 2>&1 ||
  { tail -40 "$out/configure.log"; exit 1; }
# shellcheck disable=SC2086
cmake --build build-gpu -j "$(nproc)" --target $targets > "$out/build.log" 2>&1 || { tail -60 "$out/build.log"; exit 1; }
status=0
# The test binary directly (not ctest): one process, and its GPU-vs-CPU error lines in the log.
./build-gpu/tests/gpu/kiln_gpu_tests --gtest_filter="${KILN_GPU_FILTER:-*}" > "$out/gpu-tests.log" 2>&1 || status=1
grep -E "^\[  (FAILED|PASSED) |^\[       OK|Failure|rror|Expected|Which is|\[gpu-vs-cpu\]" "$out/gpu-tests.log" | tail -80
if [ -n "${KILN_GPU_AFTER:-}" ]; then
  (eval "$KILN_GPU_AFTER") > "$out/after.log" 2>&1 || status=1
  tail -60 "$out/after.log"
fi
if [ "$bench" = 1 ]; then
  ./build-gpu/bench/kiln_bench_cuda_linear ${KILN_GPU_BENCH_ARGS:-} > "$out/bench-cuda-linear.md" 2>&1 || status=1
  cat "$out/bench-cuda-linear.md"
fi
exit $status
