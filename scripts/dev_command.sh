#!/usr/bin/env bash
# Provides the `attnvar` command for the dev build: a small wrapper, in the directory where
# pip puts the interpreter's console scripts (on PATH), that runs `python -m attnvar` with
# the build's importable package (build/dev/pkg) first on PYTHONPATH — what an editable
# install's console script gives, without a second build of the extension. scripts/build.sh
# calls it after each build; rewritten only when it changes. An `attnvar` command that pip
# installed (from a wheel, or an editable install) is left alone, with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-${ATTNVAR_BUILD_DIR:-build/dev}}
[[ -d "$BUILD/pkg/attnvar" ]] || { echo "dev_command: no $BUILD/pkg/attnvar: build first" >&2; exit 1; }
PKG=$(cd "$BUILD/pkg" && pwd)
read -r PYEXE BIN < <("${PYTHON:-python3}" -c \
  'import sys, sysconfig; print(sys.executable, sysconfig.get_path("scripts"))')
target=$BIN/attnvar
marker="# attnvar dev command, written by scripts/dev_command.sh"
if [[ -e "$target" ]] && ! grep -qF "$marker" "$target"; then
  echo "dev_command: $target exists and was not written here (pip-installed attnvar?):" \
       "left alone; the dev build runs as PYTHONPATH=$PKG python3 -m attnvar" >&2
  exit 0
fi
wrapper="#!/bin/sh
$marker
# The dev build in $PKG (python -m attnvar with it first on PYTHONPATH).
PYTHONPATH=\"$PKG\${PYTHONPATH:+:\$PYTHONPATH}\" exec \"$PYEXE\" -m attnvar \"\$@\""
if [[ ! -f "$target" || "$(cat "$target")" != "$wrapper" ]]; then
  tmp=$(mktemp "$BIN/.attnvar.XXXXXX")
  printf '%s\n' "$wrapper" >"$tmp"
  chmod 755 "$tmp"
  mv -f "$tmp" "$target"
  # pyenv puts commands on PATH through shims, made by `pyenv rehash`.
  if command -v pyenv >/dev/null; then pyenv rehash 2>/dev/null || true; fi
  echo "dev_command: \`attnvar\` runs the dev build ($target → $PKG)"
fi
