#!/usr/bin/env bash
# The CUDA check of the engine (docs/engine.md, "CUDA"). On a GPU machine with a CUDA build
# of torch, transformers, a C++ compiler, CMake and ninja, but perhaps no network and none of
# attnvar's build libraries:
#   1. builds attnvar against that machine's torch in build/cuda (no C++ tests),
#   2. runs tests/python/test_cuda.py: the engine on the GPU against the engine on the CPU
#      and against HF transformers on the GPU, printing every max difference,
#   3. runs bench/cuda_bench.py: attnvar beside HF on the GPU.
# Logs go to LOG_DIR (default $OUT, else /tmp/attnvar-cuda).
#
#   bash scripts/cuda_check.sh --fetch-deps   # here, with apt: Debian packages into .deps/
#   bash scripts/cuda_check.sh [LOG_DIR]      # there: unpacks .deps/*.deb, builds, checks
set -uo pipefail
cd "$(dirname "$0")/.."

DEPS=(nlohmann-json3-dev libpcre2-dev libpcre2-8-0)
if [[ "${1:-}" == "--fetch-deps" ]]; then
  mkdir -p .deps && cd .deps && rm -f ./*.deb && apt-get download "${DEPS[@]}" && ls -l
  exit
fi

LOG=${1:-${OUT:-/tmp/attnvar-cuda}}
mkdir -p "$LOG"
PREFIX=$PWD/.deps/root
failed=()
run() {  # run NAME CMD...: the command's output to the terminal and LOG/NAME.log
  echo "== $1"
  local name=$1
  shift
  "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  ((rc == 0)) || failed+=("$name (exit $rc)")
  return "$rc"
}

if compgen -G ".deps/*.deb" >/dev/null; then
  mkdir -p "$PREFIX"
  for f in .deps/*.deb; do
    if command -v dpkg >/dev/null; then
      dpkg -x "$f" "$PREFIX"
    else
      ar p "$f" "$(ar t "$f" | grep '^data\.tar')" | tar -x --auto-compress -C "$PREFIX" 2>/dev/null ||
        ar p "$f" "$(ar t "$f" | grep '^data\.tar')" | tar -xJ -C "$PREFIX"
    fi
  done
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', \
torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available() and \
torch.cuda.get_device_name(0), '| transformers', transformers.__version__)"

run configure cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DATTNVAR_BUILD_TESTS=OFF -DPython_EXECUTABLE="$(command -v python3)" \
  -DCMAKE_PREFIX_PATH="$PREFIX/usr" &&
  run build cmake --build build/cuda -j"$(nproc)" || {
  echo "build failed: ${failed[*]}"
  exit 1
}

export PYTHONPATH=$PWD/build/cuda/pkg PYTHONUNBUFFERED=1
run test_cuda python3 -m pytest -q -s -p no:cacheprovider -W ignore::FutureWarning \
  tests/python/test_cuda.py
# The same build's CPU path against HF (the engine is built here against another torch).
run test_cpu_parity timeout 300 python3 -m pytest -q -p no:cacheprovider -W ignore::FutureWarning \
  tests/python/test_engine_parity.py tests/python/test_generate.py
run cuda_bench python3 -W ignore::FutureWarning bench/cuda_bench.py

if ((${#failed[@]})); then
  echo "CUDA check FAILED: ${failed[*]}"
  exit 1
fi
echo "CUDA check passed"
