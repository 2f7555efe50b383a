#!/usr/bin/env bash
# triage.sh: replays libFuzzer artifacts (crash-*, leak-*, timeout-*, oom-*)
# and says, for each, whether the fault is in sluice or inside libhdf5.
#
#   usage: tests/fuzz/triage.sh FUZZ_BINARY ARTIFACT...
#
# The system libhdf5 (1.10.x on Debian 12) has known memory-safety bugs on
# corrupt files (see docs/FUZZING.md) that sluice cannot fix; fuzz_h5prompts
# runs into them within minutes. An artifact counts as "libhdf5" only when
# every stack of its report (the fault, every leak, and every "allocated by" /
# "freed by" stack) has its innermost frame that is not sanitizer, libFuzzer
# or libc runtime inside libhdf5; any other report counts as "sluice". An
# artifact that gives no report when replayed on its own is "unreproduced":
# listed, not failed (in fork mode a leak can be charged to the input that
# happened to be running, and LeakSanitizer's conservative scan finds some
# leaks only some of the time; sluice's readers keep no state between calls,
# so a replay that is clean means the input alone does not trigger a fault).
# Prints one line per artifact and exits 1 when any artifact is sluice's.
set -uo pipefail
bin=$1; shift
bad=0
for a in "$@"; do
    out=$(ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:symbolize=1 \
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
          timeout 120 "$bin" -timeout=25 -rss_limit_mb=4096 "$a" 2>&1)
    rc=$?
    verdict=$(printf '%s\n' "$out" | awk '
        # a new report section: the fault, a leak, or an allocation/free stack
        /ERROR: |leak of [0-9]+ byte|allocated by thread|freed by thread|previously allocated by/ {
            if (open && nfr && !decided) nsluice++ # frames, none of them placed
            open = 1; decided = 0; nfr = 0; nsec++; next }
        open && !decided && /^ +#[0-9]+ / {
            nfr++
            if ($0 ~ / in (__interceptor_|__asan|__sanitizer|__lsan|__ubsan|fuzzer::|std::|malloc|calloc|realloc|free|posix_memalign|aligned_alloc|strdup|__libc_|_start|abort|raise|gsignal|__GI_|__pthread|main )/) next
            if ($0 ~ /libc\.so|libstdc\+\+|ld-linux|libgcc_s/) next
            decided = 1
            if ($0 ~ /libhdf5/) nhdf5++; else nsluice++
        }
        END {
            if (open && nfr && !decided) nsluice++
            if (nsec == 0) print "unreproduced"
            else if (nsluice) print "sluice"
            else print "libhdf5"
        }')
    kind=$(printf '%s\n' "$out" | grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer): [a-z-]+[^ ]*' || echo "rc=$rc")
    where=$(printf '%s\n' "$out" | grep -m1 -E '^ +#[0-9]+ .* in (H5|[a-z_]+ /)' | sed -E 's/^ +#[0-9]+ 0x[0-9a-f]+ in ([^ ]+).*/\1/')
    printf '%-12s %-50s %s (at %s)\n' "${verdict%% *}" "$(basename "$a")" "$kind" "${where:-?}"
    case $verdict in libhdf5|unreproduced) ;; *) bad=1;; esac
done
exit $bad
