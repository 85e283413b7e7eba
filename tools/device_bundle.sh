#!/usr/bin/env bash
# Prebuilt binaries for the GPU machine, the fast path beside tools/device_gpu_tests.sh
# (which builds there): build here, carry ~8 MB, spend device time running.
#
#   tools/device_bundle.sh pack [DIR]       here, after `ninja -C build kiln kiln_gpu_tests kiln_ops_harness`:
#                                           strips the three binaries and the Debian libraries
#                                           the GPU image lacks into DIR/bundle.tar.xz
#                                           (DIR default .devcarry; keep it git-ignored and name
#                                           it in the run tool's `carry`)
#   source tools/device_bundle.sh unpack [DIR]
#                                           on the GPU machine, from the repo root: unpacks into
#                                           /tmp/kb, sets LD_LIBRARY_PATH, puts kiln at
#                                           build/kiln, and links the build machine's checkout
#                                           path to this one (the tests' data paths are
#                                           absolute, fixed at configure time)
# The CUDA runtime and cuBLASLt are the GPU image's own (CUDA 13 on both machines).

mode=${1:-}
dir=${2:-.devcarry}
case "$mode" in
  pack)
    set -euo pipefail
    kb=$(mktemp -d)/kb
    mkdir -p "$kb/bin" "$kb/lib"
    for b in build/kiln build/tests/gpu/kiln_gpu_tests build/tests/ops_harness/kiln_ops_harness; do
      [ -x "$b" ] || { echo "device_bundle: $b is missing (build it first)" >&2; exit 1; }
      cp "$b" "$kb/bin/" && strip "$kb/bin/$(basename "$b")"
    done
    for b in "$kb"/bin/*; do ldd "$b" | awk '/=>/ {print $3}'; done | sort -u |
      grep -E 'libfmt|libpcre2|httplib|brotli|libssl|libcrypto|libz\.' | while read -r l; do cp -L "$l" "$kb/lib/"; done
    pwd > "$kb/source_dir"
    mkdir -p "$dir"
    tar -C "$(dirname "$kb")" -cJf "$dir/bundle.tar.xz" kb
    rm -rf "$(dirname "$kb")"
    ls -la "$dir/bundle.tar.xz"
    ;;
  unpack)
    [ -f "$dir/bundle.tar.xz" ] || { echo "device_bundle: no $dir/bundle.tar.xz" >&2; return 1 2>/dev/null || exit 1; }
    rm -rf /tmp/kb && tar -C /tmp -xJf "$dir/bundle.tar.xz"
    export LD_LIBRARY_PATH=/tmp/kb/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export PATH=/usr/local/cuda/bin:$PATH
    src=$(cat /tmp/kb/source_dir)
    if [ "$src" != "$PWD" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
    mkdir -p build && cp /tmp/kb/bin/kiln build/kiln
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    ;;
  *)
    echo "usage: tools/device_bundle.sh pack [DIR] | source tools/device_bundle.sh unpack [DIR]" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac
