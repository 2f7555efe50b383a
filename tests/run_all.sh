#!/usr/bin/env bash
# Runs every CUnit binary in BUILD/tests, then every tests/e2e_*.sh script.
# Prints one line per program and a closing "N passed, N failed" line; exits
# non-zero when anything failed.
#   usage: tests/run_all.sh BUILD [gpu]
set -uo pipefail
BUILD=${1:-build}
MODE=${2:-cpu}
cd "$(dirname "$0")/.."
case $BUILD in /*) B=$BUILD;; *) B=$PWD/$BUILD;; esac
export SLUICE_ROOT=$PWD SLUICE_BIN=$B/sluice
pass=0; fail=0; failed=()
run_one() {
    local name=$1; shift
    local log=$BUILD/test-logs/$name.log
    mkdir -p "$BUILD/test-logs"
    local t0=$SECONDS
    if "$@" >"$log" 2>&1; then
        pass=$((pass+1)); printf '  PASS  %-28s %4ds  %s\n' "$name" $((SECONDS-t0)) "$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)"
    else
        fail=$((fail+1)); failed+=("$name")
        printf '  FAIL  %-28s %4ds  (log: %s)\n' "$name" $((SECONDS-t0)) "$log"
        tail -n 40 "$log" | sed 's/^/        | /'
    fi
}
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    if [ "$MODE" = gpu ]; then case "$t" in *gpu*) ;; *) continue;; esac; fi
    run_one "$(basename "$t")" "$t"
done
if [ "$MODE" = cpu ]; then
    for s in tests/e2e_*.sh; do
        [ -f "$s" ] || continue
        run_one "$(basename "$s" .sh)" bash "$s"
    done
fi
echo
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
