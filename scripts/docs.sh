#!/usr/bin/env bash
# Builds the documentation site into build/site (MkDocs + Material + mkdocstrings; the C++
# reference through Doxygen), in strict mode: a broken link or anchor, an unresolvable API
# reference, or a name the C++ entry header lists that Doxygen cannot find fails the build.
# Fails past ATTNVAR_BUDGET_DOCS_S seconds (default 120; measured 2-18 s).
# Needs the pinned doc tools and Doxygen (scripts/setup.sh installs both); not the compiled
# extension: the Python reference reads the sources statically. Extra arguments go to mkdocs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null \
    || ! command -v doxygen >/dev/null; then
  echo "docs: the doc tools or Doxygen are missing: run bash scripts/setup.sh" >&2
  exit 1
fi
export NO_MKDOCS_2_WARNING=1  # Material's banner about MkDocs 2, printed on every build
start=$SECONDS
"$PY" -m mkdocs build --strict --site-dir "${ATTNVAR_SITE_DIR:-build/site}" "$@"
took=$((SECONDS - start)) budget=${ATTNVAR_BUDGET_DOCS_S:-120}
echo "docs: site built in $took s (budget $budget s): ${ATTNVAR_SITE_DIR:-build/site}/index.html"
if (( took > budget )); then
  echo "docs: the build took $took s, over its $budget s budget (ATTNVAR_BUDGET_DOCS_S)" >&2
  exit 1
fi
