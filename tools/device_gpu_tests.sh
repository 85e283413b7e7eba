#!/usr/bin/env bash
# Builds and runs kiln's GPU tests (ctest label `gpu`) on the GPU machine, whose image
# has CUDA 13, CMake and Ninja but not the Debian -dev packages kiln builds against:
# those travel as .deb files in .deps/ (apt-get download, see docs/gpu-testing.md) and
# are unpacked into a private prefix.
#   usage (on the GPU machine, from the repo root): tools/device_gpu_tests.sh OUT_DIR
set -euo pipefail
out=${1:-/tmp/kiln-gpu-out}
mkdir -p "$out"
prefix=/tmp/kiln-deps
mkdir -p "$prefix"
for f in .deps/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cmake -B build-gpu -G Ninja -DKILN_CUDA=ON -DKILN_BENCH=OFF -DCMAKE_PREFIX_PATH="$prefix/usr" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j 16 --target ${KILN_GPU_TARGETS:-all} > "$out/build.log" 2>&1 || { tail -60 "$out/build.log"; exit 1; }
ctest --test-dir build-gpu -L gpu --output-on-failure 2>&1 | tee "$out/ctest-gpu.log"
