#!/usr/bin/env bash
# Runs kiln's CPU tests with ctest: the fuzzer over its seed corpus, the ASan+UBSan
# build, then the default build (its summary line is the last one printed). GPU tests
# carry the ctest label `gpu` and run on a GPU machine (docs/gpu-testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
ctest --test-dir build-fuzz -L fuzz --output-on-failure || status=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -LE "gpu|slow" --output-on-failure -j "$(nproc)" || status=1
ctest --test-dir build -LE gpu --output-on-failure -j "$(nproc)" || status=1
exit $status
