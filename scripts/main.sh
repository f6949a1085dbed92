#!/usr/bin/env bash
# The main job: installs what is missing, builds, then runs `attnvar study` on the core
# suite (132 prompts, 30 matched pairs) with the bundled SmolLM2-135M, θ 0.1 and 0.2,
# isolated and visible modes, serial and top_only replays, 20 steps, one worker per core,
# into ./results: the preregistered plan, the runs, their analysis and the H1–H4 report
# (results/report/report.html), printing the summary table and each hypothesis's answer.
# Extra arguments go to `attnvar study` and win over these (e.g. --suite core-small for
# the few-minute smoke test, whose report withholds its verdicts; --full; --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-1000}  # docs/benchmarks.md
bash scripts/setup.sh
bash scripts/build.sh >/dev/null
PYTHONPATH="$PWD/${ATTNVAR_BUILD_DIR:-build/dev}/pkg" exec "${PYTHON:-python3}" -m attnvar study \
  --suite core --workers "$(nproc)" "$@"
