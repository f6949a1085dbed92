#!/usr/bin/env bash
# C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (build/asan). Only
# attnvar's own code is instrumented; libtorch is not, and reports from its frames are
# suppressed by the files in .ci/sanitizers/, never by disabling the sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
supp="$PWD/.ci/sanitizers"
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
# Long-spinning OpenMP workers collapse throughput when cores are shared (6x slower decode,
# docs/benchmarks.md); passive waiting after a short spin (~10 us) is safe there and keeps
# a pass's back-to-back parallel regions from each paying a wake-up.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-1000}
export ASAN_OPTIONS="suppressions=$supp/asan.supp:detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_odr_violation=0"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="suppressions=$supp/ubsan.supp:print_stacktrace=1:halt_on_error=1"
BUILD=build/asan
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTNVAR_BUILD_TESTS=ON \
    -DATTNVAR_BUILD_PYTHON=OFF -DATTNVAR_SANITIZE=address,undefined \
    -DPython_EXECUTABLE="$(command -v "${PYTHON:-python3}")" >/dev/null
fi
# The tests and the examples (ctest runs examples/generate_parallel on the default model).
cmake --build "$BUILD" -j"$(nproc)" --target attnvar_tests generate_parallel
# Guard against a silently uninstrumented build.
# (ldd's output is read in full first: `ldd | grep -q` under pipefail fails at random when
# grep stops reading early and ldd dies of SIGPIPE.)
for bin in tests/cpp/attnvar_tests examples/generate_parallel; do
  libs=$(ldd "$BUILD/$bin")
  grep -q libasan <<<"$libs" || { echo "$bin lacks ASan"; exit 1; }
  grep -q libubsan <<<"$libs" || { echo "$bin lacks UBSan"; exit 1; }
done
echo "== C++ tests under ASan+UBSan ($BUILD)"
(cd "$BUILD" && ctest --output-on-failure -j2)
