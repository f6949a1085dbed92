# Sourced by scripts/test.sh and .ci/run. `stage NAME CMD...` runs CMD, then prints how long
# it took ("== NAME: 12 s"), and its exit code when it failed; with ATTNVAR_STAGE_LOG set,
# it also appends "NAME<TAB>SECONDS<TAB>EXIT" to that file, from which .ci/run prints the
# table of every stage's time at the end. The stage's exit code is returned (so `set -e`
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
    printf '%s\t%s\t%s\n' "$name" "$dt" "$rc" >>"$ATTNVAR_STAGE_LOG"
  fi
  return "$rc"
}

# The table of the stages logged so far in ATTNVAR_STAGE_LOG.
stage_summary() {
  [[ -s "${ATTNVAR_STAGE_LOG:-}" ]] || return 0
  echo "== stage times (s)"
  awk -F'\t' '{ printf "  %-34s %6d%s\n", $1, $2, ($3 != 0 ? "  FAILED (exit " $3 ")" : "") }' \
    "$ATTNVAR_STAGE_LOG"
}
