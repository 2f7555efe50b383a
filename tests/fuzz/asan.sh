#!/usr/bin/env bash
# asan.sh: runs the CPU test suite built with ASAN=1 (`make asan`) with the
# sanitizers strict: any AddressSanitizer or UndefinedBehaviorSanitizer report,
# or any leak at exit, fails the program. Same output as tests/run_all.sh.
#   usage: tests/fuzz/asan.sh ASAN_BUILD
# ASAN_SKIP (programs not run) and ASAN_NOLEAK (run without leak detection)
# take space-separated test names; docs/FUZZING.md says why the defaults are
# what they are.
set -uo pipefail
BUILD=${1:?usage: asan.sh ASAN_BUILD}
cd "$(dirname "$0")/../.."
case $BUILD in /*) B=$BUILD;; *) B=$PWD/$BUILD;; esac
export SLUICE_ROOT=$PWD SLUICE_BIN=$B/sluice
SKIP=" ${ASAN_SKIP-test_e2e test_resume} "
NOLEAK=" ${ASAN_NOLEAK-test_mpi} "
base_asan=abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export LSAN_OPTIONS=suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0
pass=0; fail=0; skipped=()
mkdir -p "$B/test-logs"
for t in "$B"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    name=$(basename "$t")
    case $SKIP in *" $name "*) skipped+=("$name"); continue;; esac
    leaks=1; case $NOLEAK in *" $name "*) leaks=0;; esac
    log=$B/test-logs/$name.log
    t0=$SECONDS
    if ASAN_OPTIONS=$base_asan:detect_leaks=$leaks "$t" >"$log" 2>&1; then
        pass=$((pass+1))
        printf '  PASS  %-28s %4ds  %s%s\n' "$name" $((SECONDS-t0)) \
            "$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)" \
            "$([ $leaks = 0 ] && echo '  (leak detection off)')"
    else
        fail=$((fail+1))
        printf '  FAIL  %-28s %4ds  (log: %s)\n' "$name" $((SECONDS-t0)) "$log"
        grep -E -A12 'ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:' "$log" |
            head -n 40 | sed 's/^/        | /'
        tail -n 15 "$log" | sed 's/^/        | /'
    fi
done
echo
[ ${#skipped[@]} = 0 ] || echo "asan: not run (ASAN_SKIP): ${skipped[*]}"
echo "asan: $pass passed, $fail failed"
[ "$fail" = 0 ]
