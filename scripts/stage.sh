# Sourced by scripts/test.sh and .ci/run. `stage NAME CMD...` runs CMD, then prints how long
# it took ("== NAME: 12 s"), and its exit code when it failed; with ATTNVAR_STAGE_LOG set,
# it also appends "NAME<TAB>SECONDS<TAB>EXIT<TAB>FREE" to that file (FREE: MiB left on the
# file system of the temporary folder after the stage), from which .ci/run prints the table
# of every stage's time at the end. The stage's exit code is returned (so `set -e`
# stops the caller at a failed stage, after its time is printed).
stage() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "== $name: $*"
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if ((rc)); then
    echo "== $name: FAILED (exit $rc) after $dt s"
  else
    echo "== $name: $dt s"
  fi
  if [[ -n "${ATTNVAR_STAGE_LOG:-}" ]]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "$dt" "$rc" "$(free_mib)" >>"$ATTNVAR_STAGE_LOG"
  fi
  return "$rc"
}

# MiB free on the file system that holds the temporary folder ("?" where df can't tell).
free_mib() {
  df -Pm "${TMPDIR:-/tmp}" 2>/dev/null | awk 'NR == 2 { print $4; found = 1 } END { if (!found) print "?" }'
}

# The table of the stages logged so far in ATTNVAR_STAGE_LOG.
stage_summary() {
  [[ -s "${ATTNVAR_STAGE_LOG:-}" ]] || return 0
  echo "== stage times (s), and MiB free in ${TMPDIR:-/tmp} after each"
  awk -F'\t' '{ printf "  %-34s %6d %9s%s\n", $1, $2, $4, ($3 != 0 ? "  FAILED (exit " $3 ")" : "") }' \
    "$ATTNVAR_STAGE_LOG"
}
