#!/usr/bin/env bash
# Builds and runs every test: a warnings-as-errors build and an ASan+UBSan
# build, each with the whole ctest suite; then a short libFuzzer smoke run of
# every fuzz target (when clang is present). Exit status is non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs=$(nproc)
status=0
echo "== build (-Werror) =="
bash scripts/build.sh build -DGPTOSS_WERROR=ON
echo "== tests =="
(cd build && ctest --output-on-failure -j "$jobs") || status=1
echo "== build (ASan+UBSan) =="
bash scripts/build.sh build-asan -DGPTOSS_WERROR=ON -DGPTOSS_SANITIZE=ON -DGPTOSS_CUDA=OFF
echo "== tests under ASan+UBSan =="
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$jobs") || status=1
if command -v clang >/dev/null; then
  echo "== fuzz smoke (libFuzzer, ${FUZZ_SECONDS:-10}s per target) =="
  CC=clang bash scripts/build.sh build-fuzz -DGPTOSS_FUZZ=ON -DGPTOSS_CUDA=OFF
  for f in build-fuzz/fuzz_*; do
    [ -x "$f" ] || continue
    corpus=$(mktemp -d)
    if ! GPTOSS_TOKENIZER="$PWD/build-fuzz/fixtures/tokenizer" "$f" -max_total_time="${FUZZ_SECONDS:-10}" -max_len=8192 "$corpus" >"$corpus.log" 2>&1; then
      echo "FAIL: $f"; tail -30 "$corpus.log"; status=1
    else
      echo "ok: $f ($(grep -o 'Done [0-9]* runs' "$corpus.log"))"
    fi
    rm -rf "$corpus" "$corpus.log"
  done
fi
exit $status
