#!/usr/bin/env bash
# Configures and builds attnvar in build/dev (library, extension, C++ tests) with the
# installed torch. Incremental and ccache-backed: fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${ATTNVAR_BUILD_DIR:-build/dev}
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNVAR_BUILD_TESTS=ON \
    -DPython_EXECUTABLE="$(command -v "${PYTHON:-python3}")" >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)" "$@"
# The `attnvar` command, running this build (docs/development.md, "The attnvar command").
if [[ -d "$BUILD/pkg/attnvar" ]]; then bash scripts/dev_command.sh "$BUILD"; fi
