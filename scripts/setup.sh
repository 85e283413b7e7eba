#!/usr/bin/env bash
# Installs what kiln needs on a fresh Debian machine (apt packages only) and builds it:
#   build/       the default build (CUDA backend too when nvcc is on the PATH or in /usr/local/cuda)
#   build-asan/  the same with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only)
#   build-fuzz/  clang + libFuzzer target for the safetensors header parser
# Re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake ninja-build g++ clang libclang-rt-dev nlohmann-json3-dev libcli11-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nvcc is usually not on the PATH of a CUDA toolkit install.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON -DKILN_CUDA=OFF -DKILN_BENCH=OFF
cmake --build build-asan -j "$jobs"

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_FUZZ=ON \
  -DKILN_CUDA=OFF -DKILN_BENCH=OFF -DBUILD_TESTING=ON
cmake --build build-fuzz -j "$jobs" --target fuzz_safetensors_header
echo "kiln built: ./build/kiln"
