#!/usr/bin/env bash
# smoke.sh: runs each libFuzzer target for a short time over its committed
# corpus (`make fuzz-smoke`); fails on any crash, leak, timeout or sanitizer
# report in sluice's code.
#   usage: tests/fuzz/smoke.sh FUZZ_DIR SECONDS TARGET...
# New inputs go to FUZZ_DIR/new-TARGET (the first corpus directory is the one
# libFuzzer writes to), so tests/fuzz/corpus stays as committed; artifacts go
# to FUZZ_DIR/crash-TARGET/.
#
# fuzz_h5prompts is the exception: the system libhdf5 crashes, leaks or loops
# on some corrupt files within minutes (docs/FUZZING.md), so that target runs
# with -fork=1 and -ignore_crashes/ooms/timeouts, and afterwards every
# artifact is replayed by tests/fuzz/triage.sh, which fails the smoke test
# unless the fault lies inside libhdf5.
set -uo pipefail
dir=$1; secs=$2; shift 2
cd "$(dirname "$0")/../.."
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export LSAN_OPTIONS=suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0
status=0
for t in "$@"; do
    bin=$dir/fuzz_$t log=$dir/smoke-$t.log art=$dir/crash-$t
    rm -rf "$art"; mkdir -p "$dir/new-$t" "$art"
    dict=(); [ -f tests/fuzz/$t.dict ] && dict=(-dict=tests/fuzz/$t.dict)
    mode=(); [ "$t" = h5prompts ] && mode=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
    t0=$SECONDS
    "$bin" "${mode[@]}" "${dict[@]}" -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$art/" "$dir/new-$t" "tests/fuzz/corpus/$t" \
        >"$log" 2>&1
    rc=$?
    runs=$(grep -E '^stat::number_of_executed_units|^#[0-9]+: cov' "$log" | tail -n 1 |
           sed -E 's/^stat::number_of_executed_units: *//; s/^#([0-9]+):.*/\1/')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
    if [ "$t" = h5prompts ]; then
        arts=("$art"/*)
        if [ -e "${arts[0]}" ]; then
            if ! bash tests/fuzz/triage.sh "$bin" "${arts[@]}" >"$dir/triage-$t.txt" 2>&1; then rc=1; else rc=0; fi
            echo "  fuzz_$t: ${#arts[@]} artifact(s), triage in $dir/triage-$t.txt:"
            sed 's/^/        | /' "$dir/triage-$t.txt"
        else
            rc=0
        fi
    fi
    if [ $rc = 0 ]; then
        printf '  PASS  fuzz_%-14s %4ds  %s runs, %s\n' "$t" $((SECONDS-t0)) "${runs:-?}" "${cov:-cov: ?}"
    else
        status=1
        printf '  FAIL  fuzz_%-14s %4ds  (log: %s, artifacts: %s)\n' "$t" $((SECONDS-t0)) "$log" "$art"
        grep -E -A25 'ERROR: |runtime error:' "$log" | head -n 40 | sed 's/^/        | /'
    fi
done
exit $status
