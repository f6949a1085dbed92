#!/usr/bin/env bash
# Fuzzing (libFuzzer, ASan+UBSan) of the GGUF, safetensors, tokenizer.json and config.json
# readers and of the tokenizer: builds fuzz/ with clang into build/fuzz, replays the
# regression corpus, then fuzzes each target for a bounded time.
#
#   scripts/fuzz.sh                      # every target, 60 s each (what CI runs)
#   scripts/fuzz.sh --seconds 1800 gguf  # a longer campaign on one target
#   scripts/fuzz.sh --replay-only        # the regression corpus and seeds only
#
# Fails on any crash, sanitizer report, leak, broken contract (fuzz/fuzz_input.h), input
# slower than --timeout seconds or allocation above 64 MB. A finding is left in
# build/fuzz/artifacts/<target>/; minimise it, add it to tests/data/fuzz/regressions/<target>/
# and fix the code. Each target's growing corpus stays in build/fuzz/corpus/<target> between
# runs (seeded from tests/data/fuzz/seeds/<target>). docs/development.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60 timeout=1 replay_only=0 targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --replay-only) replay_only=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(gguf safetensors tokenizer_json tokenizer config_json)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (${all[*]})" >&2; exit 2; }
done

# clang with libFuzzer: the newest Debian ships among these (bookworm: 16; trixie: 19).
cxx=""
for v in 19 18 17 16; do
  if command -v "clang++-$v" >/dev/null &&
     compgen -G "/usr/lib/llvm-$v/lib/clang/*/lib/*/libclang_rt.fuzzer*.a" >/dev/null; then
    cxx=clang++-$v; break
  fi
done
if [[ -z $cxx ]]; then
  # A fresh machine may have no package lists yet.
  apt-cache show clang-16 >/dev/null 2>&1 || apt-cache show clang-19 >/dev/null 2>&1 ||
    apt-get update -qq
  for v in 19 18 17 16; do
    if apt-cache show "clang-$v" "libclang-rt-$v-dev" >/dev/null 2>&1; then
      echo "fuzz.sh: installing clang-$v and libclang-rt-$v-dev"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "clang-$v" "libclang-rt-$v-dev" >/dev/null
      cxx=clang++-$v; break
    fi
  done
fi
[[ -n $cxx ]] || { echo "fuzz.sh: no clang with libFuzzer (apt-get install clang-16 libclang-rt-16-dev)" >&2; exit 1; }

BUILD=build/fuzz
if [[ ! -f $BUILD/build.ninja ]] || ! grep -q "$cxx" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
  cmake -S fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" \
    -DPython_EXECUTABLE="$(command -v "${PYTHON:-python3}")" >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)" >/dev/null
echo "== fuzzing with $cxx, ASan+UBSan, targets: ${targets[*]}"

# detect_stack_use_after_return off: with it, every thrown FormatError costs a fake-stack
# sweep (a third of the GGUF target's time); the parsers return by value, never a stack address.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Readable stacks need LLVM's symbolizer (Debian's llvm-N package, not installed by default:
# replay a finding with it installed to see function names).
for s in "/usr/lib/llvm-${cxx#clang++-}/bin/llvm-symbolizer" "$(command -v llvm-symbolizer || true)"; do
  if [[ -x $s ]]; then export ASAN_SYMBOLIZER_PATH=$s; break; fi
done
data=tests/data/fuzz
row() { printf '%-15s %10s %8s %8s %8s  %s\n' "$@"; }

# One target: replay, then fuzz; its table row goes to logs/<target>.row, the tail of its
# log (on a failure) to logs/<target>.tail; exit 1 on a failure.
fuzz_one() {
  local t=$1 bin=$BUILD/fuzz_$1 log=$BUILD/logs/$1.log out=$BUILD/logs/$1
  mkdir -p "$BUILD/artifacts/$t" "$BUILD/corpus/$t"
  rm -f "$out.row" "$out.tail"
  local common=(-timeout="$timeout" -malloc_limit_mb=64 -rss_limit_mb=2048
                -artifact_prefix="$BUILD/artifacts/$t/" -print_final_stats=1)
  # Replay: every regression and seed input once (a crash fails here, before fuzzing).
  local replay=("$data/seeds/$t"/*)
  [[ -d $data/regressions/$t ]] && replay+=("$data/regressions/$t"/*)
  if ! "$bin" "${common[@]}" "${replay[@]}" >"$log" 2>&1; then
    row "$t" - - - - "FAILED replaying (see $log)" >"$out.row"
    tail -n 30 "$log" >"$out.tail"
    return 1
  fi
  if ((replay_only)); then
    row "$t" "${#replay[@]}" - - - "replayed" >"$out.row"
    return 0
  fi
  local result=ok
  "$bin" "${common[@]}" -max_total_time="$seconds" -report_slow_units=0 \
    "$BUILD/corpus/$t" "$data/seeds/$t" >>"$log" 2>&1 || result="FAILED (see $log)"
  local runs rate corpus slowest
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "$BUILD/corpus/$t" -type f | wc -l)
  slowest=$(grep -o 'Slowest unit: [0-9]* s' "$log" | grep -o '[0-9]*' | sort -n | tail -1 || true)
  row "$t" "$runs" "$rate" "$corpus" "${slowest:-<1}s" "$result" >"$out.row"
  [[ $result == ok ]] || { tail -n 40 "$log" >"$out.tail"; return 1; }
}

# The targets run side by side, one per core (each fuzzer is one process on one thread):
# five targets of 60 s take ~3 min of wall time on two cores instead of 5.
mkdir -p "$BUILD/logs"
jobs_max=$(nproc)
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs_max)); do wait -n || true; done
  rm -f "$BUILD/logs/$t.status"
  { fuzz_one "$t" && rc=0 || rc=$?; echo "$rc" >"$BUILD/logs/$t.status"; } &
done
wait || true
status=0
row target runs exec/s corpus slowest result
for t in "${targets[@]}"; do
  cat "$BUILD/logs/$t.row" 2>/dev/null || row "$t" - - - - "FAILED (no result)"
  [[ -f $BUILD/logs/$t.tail ]] && cat "$BUILD/logs/$t.tail"
  [[ $(cat "$BUILD/logs/$t.status" 2>/dev/null) == 0 ]] || status=1
done
exit $status
