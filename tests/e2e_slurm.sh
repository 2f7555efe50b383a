#!/usr/bin/env bash
# e2e_slurm.sh: the Slurm batch scripts in jobs/ against a real one-node Slurm
# (munge + slurmctld + slurmd) that this test starts on the host
# (tests/slurm/start-slurm.sh) and stops again, even on failure.
#
# Checks, each a PASS or FAIL line:
#   - the cluster comes up and its node is idle
#   - a 2-task job runs a tiny MPI all-reduce under `srun --mpi=pmix`
#   - jobs/sluice-1node.sbatch with 1 rank: completions equal a plain
#     single-process `sluice run` of the same prompts (completion_ids and
#     finish_reason per prompt, compared through `sluice export`)
#   - multi-rank, once `sluice run` has --tp: jobs/sluice-1node.sbatch with 2
#     ranks as --tp 2 (one replica of 2 tensor-parallel ranks) and as --tp 1
#     (2 data-parallel replicas), and jobs/sluice-multinode.sbatch with --tp 2 on
#     this one node, each compared the same way. Until then: both scripts start
#     2 ranks that find each other over PMIx (sluice says "several ranks are not
#     supported yet"), and a "pending:" line says what is not tested.
#   - jobs/sluice-1node.sbatch with --requeue: the time-limit warning (USR1) stops
#     sluice, the script requeues the job, the second start resumes the output
#     and completes it; the result equals a single-process run
#   - jobs/sluice-sweep.sbatch as a 2-task job array of `sluice bench`
#
# Runs from the repository root with SLUICE_BIN (tests/run_all.sh sets it).
# Skips (exit 0) when not root or when the Slurm packages are missing, except
# that with CI=true missing packages are a failure. About 30 s; bounded by
# SLUICE_SLURM_TEST_BUDGET seconds (default 170). SLUICE_KEEP=1 keeps the
# job logs and outputs (kept anyway on failure).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=${SLUICE_BIN:-$ROOT/build/sluice}
case "$BIN" in /*) ;; *) BIN=$ROOT/$BIN ;; esac
MODEL=$ROOT/tests/models/tiny-code-llama
START=$ROOT/tests/slurm/start-slurm.sh
BUDGET=${SLUICE_SLURM_TEST_BUDGET:-170}
MAX_NEW=12  # tokens per prompt: enough to differ, quick on the CPU

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
finish() {
    echo
    echo "$pass passed, $fail failed"
    [ "$fail" = 0 ]
    exit $?
}
skip() {
    echo "skipped: $*"
    echo "0 passed, 0 failed"
    exit 0
}

# ---------------------------------------------------------------------------
# can this machine run it?

if [ "$(id -u)" != 0 ]; then
    skip "e2e_slurm needs root to start munged, slurmctld and slurmd"
fi
missing=()
for c in munged slurmctld slurmd sbatch srun scontrol sinfo mpicc; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ ${#missing[@]} != 0 ]; then
    msg="missing ${missing[*]} (apt-get install munge slurmctld slurmd slurm-client libopenmpi-dev; .ci/deps.sh)"
    if [ "${CI:-}" = true ]; then
        bad "$msg"
        finish
    fi
    skip "$msg"
fi
if [ ! -x "$BIN" ]; then
    bad "no sluice binary at $BIN (set SLUICE_BIN)"
    finish
fi

WORK=$(mktemp -d /tmp/sluice-e2e-slurm.XXXXXX)
export SLUICE_SLURM_DIR=${SLUICE_SLURM_DIR:-/tmp/sluice-slurm}
# A cluster already running (someone ran start-slurm.sh start) is used and left up.
was_up=0
if [ -s "$SLUICE_SLURM_DIR/run/slurmctld.pid" ] &&
   [ "$(cat "/proc/$(cat "$SLUICE_SLURM_DIR/run/slurmctld.pid")/comm" 2>/dev/null)" = slurmctld ]; then
    was_up=1
fi
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local rc=$?
    if [ "$was_up" = 0 ]; then
        "$START" stop >"$WORK/stop.log" 2>&1 || { echo "e2e_slurm: stopping Slurm failed:"; cat "$WORK/stop.log"; }
    fi
    if [ "$fail" = 0 ] && [ "$rc" = 0 ] && [ -z "${SLUICE_KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "e2e_slurm: files kept in $WORK"
    fi
}
trap cleanup EXIT
trap 'echo "e2e_slurm: interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------
# helpers

# submit NAME LOG [sbatch args...]: submits from the repository root, prints
# the job id; on failure prints nothing and reports sbatch's error.
submit() {
    local name=$1 log=$2
    shift 2
    local id
    if ! id=$(sbatch --parsable --job-name="$name" --output="$log" "$@" 2>"$WORK/$name.sbatch-err"); then
        echo "sbatch of $name failed: $(cat "$WORK/$name.sbatch-err")" >&2
        return 1
    fi
    echo "${id%%;*}"
}

# wait_job ID LOG...: polls `scontrol show job` (no accounting database here)
# until every record of job ID (every array task) has ended or the budget is
# spent. Returns 0 when all COMPLETED with exit code 0; otherwise prints the
# job's records and LOGs, cancels it if still running, and returns 1.
wait_job() {
    local id=$1
    shift
    local out states
    while :; do
        out=$(scontrol show job -o "$id" 2>&1) || true
        states=$(grep -o 'JobState=[A-Z_]*' <<<"$out" | sort -u)
        if [ -n "$states" ] && ! grep -q -E 'JobState=(PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|RESIZING)' <<<"$states"; then
            break
        fi
        if [ "$SECONDS" -ge "$BUDGET" ]; then
            echo "job $id still not done after ${SECONDS}s (test budget ${BUDGET}s); cancelling"
            scancel "$id" 2>/dev/null
            out="$out"$'\n'"(timed out)"
            break
        fi
        sleep 0.5
    done
    if [ "$states" = "JobState=COMPLETED" ] && ! grep -q -E 'ExitCode=[1-9]|ExitCode=0:[1-9]' <<<"$out" &&
       ! grep -q "timed out" <<<"$out"; then
        return 0
    fi
    echo "---- job $id:"
    grep -o -E '(JobId|ArrayTaskId|JobName|JobState|Reason|ExitCode)=[^ ]*' <<<"$out" | paste -sd' ' -
    local f
    for f in "$@"; do
        for g in $f; do
            [ -f "$g" ] || continue
            echo "---- $g:"
            tail -n 40 "$g"
        done
    done
    return 1
}

# digest JSONL: one "index ids finish_reason" line per completion, whatever
# the order of the fields within a line.
digest() {
    local line
    while IFS= read -r line; do
        printf '%s %s %s\n' "$(grep -o '"prompt_index": *[0-9]*' <<<"$line")" \
            "$(grep -o '"completion_ids": *\[[^]]*\]' <<<"$line")" \
            "$(grep -o '"finish_reason": *"[a-z_]*"' <<<"$line")"
    done <"$1"
}

# same_as_reference WHAT OUTDIR [REF N]: OUTDIR/completions.h5 exists and its
# export matches the single-process reference's digest REF (default
# WORK/ref.digest, N prompts) prompt by prompt.
same_as_reference() {
    local what=$1 dir=$2 ref=${3:-$WORK/ref.digest} NPROMPTS=${4:-$NPROMPTS}
    if [ ! -s "$dir/completions.h5" ]; then
        bad "$what: no $dir/completions.h5"
        return
    fi
    if ! "$BIN" export "$dir" --output "$dir.jsonl" >"$dir.export.log" 2>&1; then
        bad "$what: sluice export failed: $(cat "$dir.export.log")"
        return
    fi
    digest "$dir.jsonl" >"$dir.digest"
    if [ "$(wc -l <"$dir.digest")" != "$NPROMPTS" ]; then
        bad "$what: $(wc -l <"$dir.digest") completions, expected $NPROMPTS"
    elif ! diff -u "$ref" "$dir.digest" >"$dir.diff"; then
        bad "$what: completions differ from the single-process run:"
        head -n 20 "$dir.diff"
    else
        ok "$what: $NPROMPTS completions identical to the single-process run"
    fi
}

# ---------------------------------------------------------------------------
# 1. the cluster

t0=$SECONDS
if ! SLUICE_SLURM_TIMEOUT=60 "$START" start >"$WORK/start.log" 2>&1; then
    cat "$WORK/start.log"
    bad "Slurm did not start (tests/slurm/start-slurm.sh start)"
    finish
fi
eval "$("$START" env)"
export SLURM_CONF
ok "one-node Slurm up in $((SECONDS - t0))s: $(sinfo -h -o '%P %D node(s) %c CPUs %T' | head -1)"

# Everything the jobs need lives under WORK or the repository; jobs run from ROOT.
export SLUICE=$BIN
unset SLURM_JOB_ID SLURM_NTASKS OMPI_COMM_WORLD_SIZE PMIX_RANK PMI_RANK PMI_SIZE
COMMON=(--overcommit --cpus-per-task=1 --gpus-per-node=0 --time=00:05:00)

# 2. MPI over PMIx: a C all-reduce, 2 tasks
cat >"$WORK/allreduce.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, x, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    x = rank + 1;
    MPI_Allreduce(&x, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d/%d sum=%d\n", rank, size, sum);
    MPI_Finalize();
    return sum != size * (size + 1) / 2;
}
EOF
mpi_job=""
if mpicc -O1 -o "$WORK/allreduce" "$WORK/allreduce.c" >"$WORK/mpicc.log" 2>&1; then
    mpi_job=$(submit mpi "$WORK/mpi.log" --ntasks=2 "${COMMON[@]}" \
        --wrap "srun --mpi=pmix $WORK/allreduce") || bad "2-task MPI job: sbatch failed"
else
    bad "mpicc failed: $(cat "$WORK/mpicc.log")"
fi

# 3. prompts and the single-process reference
NPROMPTS=0
if ! "$BIN" prep --help >/dev/null 2>&1; then
    bad "this sluice binary has no 'prep' command: cannot make the prompts file"
    finish
fi
if ! "$BIN" prep --model "$MODEL" --input tests/data/demo-prompts.jsonl \
        --output "$WORK/prompts.h5" --quiet >"$WORK/prep.log" 2>&1; then
    bad "sluice prep failed: $(cat "$WORK/prep.log")"
    finish
fi
NPROMPTS=$(grep -c . tests/data/demo-prompts.jsonl)
RUN_ARGS=(--backend cpu --max-new-tokens "$MAX_NEW" --quiet)
if "$BIN" run --model "$MODEL" --input "$WORK/prompts.h5" --output "$WORK/ref" --threads 1 \
        "${RUN_ARGS[@]}" >"$WORK/ref.log" 2>&1 &&
   "$BIN" export "$WORK/ref" --output "$WORK/ref.jsonl" >>"$WORK/ref.log" 2>&1; then
    digest "$WORK/ref.jsonl" >"$WORK/ref.digest"
    n_real=$(grep -c -E '"completion_ids": *\[[0-9]' "$WORK/ref.digest")
    if [ "$(wc -l <"$WORK/ref.digest")" = "$NPROMPTS" ] && [ "$n_real" -gt 0 ]; then
        ok "single-process reference: $NPROMPTS completions, $n_real with tokens"
    else
        bad "single-process reference: $(wc -l <"$WORK/ref.digest") completions, $n_real with tokens (need $NPROMPTS, >0)"
    fi
else
    bad "single-process reference run failed: $(tail -n 5 "$WORK/ref.log")"
    finish
fi

# 4. the scripts. Submit everything, then wait: the scheduler packs what fits.
declare -A JOB LOG
run_job() {  # run_job KEY SCRIPT SBATCH-ARGS... -- SCRIPT-ARGS...
    local key=$1 script=$2
    shift 2
    local sargs=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do sargs+=("$1"); shift; done
    shift
    LOG[$key]=$WORK/$key.log
    JOB[$key]=$(submit "$key" "${LOG[$key]}" "${sargs[@]}" "$script" "$@") ||
        { bad "$key: sbatch failed"; JOB[$key]=""; }
}
HAS_TP=0
"$BIN" run --help 2>&1 | grep -q -- '--tp' && HAS_TP=1

run_job 1node-1rank jobs/sluice-1node.sbatch "${COMMON[@]}" -- \
    "$MODEL" "$WORK/prompts.h5" "$WORK/out-1rank" "${RUN_ARGS[@]}"
if [ "$HAS_TP" = 1 ]; then
    run_job 1node-tp2 jobs/sluice-1node.sbatch --ntasks-per-node=2 "${COMMON[@]}" -- \
        "$MODEL" "$WORK/prompts.h5" "$WORK/out-tp2" "${RUN_ARGS[@]}" --tp 2
    run_job 1node-dp2 jobs/sluice-1node.sbatch --ntasks-per-node=2 "${COMMON[@]}" -- \
        "$MODEL" "$WORK/prompts.h5" "$WORK/out-dp2" "${RUN_ARGS[@]}" --tp 1
    run_job multinode-tp2 jobs/sluice-multinode.sbatch --nodes=1 --ntasks-per-node=2 "${COMMON[@]}" -- \
        "$MODEL" "$WORK/prompts.h5" "$WORK/out-mn-tp2" "${RUN_ARGS[@]}" --tp 2
else
    run_job 1node-2ranks jobs/sluice-1node.sbatch --ntasks-per-node=2 "${COMMON[@]}" -- \
        "$MODEL" "$WORK/prompts.h5" "$WORK/out-2ranks" "${RUN_ARGS[@]}"
    run_job multinode-2ranks jobs/sluice-multinode.sbatch --nodes=1 --ntasks-per-node=2 "${COMMON[@]}" -- \
        "$MODEL" "$WORK/prompts.h5" "$WORK/out-mn-2ranks" "${RUN_ARGS[@]}"
fi
export SWEEP_MAX_BATCH="2 4" SWEEP_ISL=8 SWEEP_OSL=4
run_job sweep jobs/sluice-sweep.sbatch --array=0-1 "${COMMON[@]}" \
    --output="$WORK/sweep-%A_%a.log" -- \
    "$WORK/sweep" --model "$MODEL" --backend cpu --requests 6 --seed 3
LOG[sweep]="$WORK/sweep-*.log"
# Time-limit warning + --requeue + resume. Two short and two long requests:
# the test waits for the first checkpoint (the short ones), then sends the USR1
# that --signal=B:USR1@120 sends before the time limit. With --grace 0 sluice
# stops at once and exits 3; the script must requeue the job, and its second
# start must resume (keep the short ones) and finish the long ones.
HAS_RESUME=0
"$BIN" run --help 2>&1 | grep -q -i 'resume' && HAS_RESUME=1
if [ "$HAS_RESUME" = 1 ]; then
    {
        printf '%s\n' '{"prompt": "def add(a, b):\n", "max_new_tokens": 6, "temperature": 0}'
        printf '%s\n' '{"prompt": "import os\n", "max_new_tokens": 400, "temperature": 0}'
        printf '%s\n' '{"prompt": "class Node:\n", "max_new_tokens": 6, "temperature": 0}'
        printf '%s\n' '{"prompt": "for i in range(10):\n", "max_new_tokens": 400, "temperature": 0}'
    } >"$WORK/requeue.jsonl"
    "$BIN" prep --model "$MODEL" --input "$WORK/requeue.jsonl" --output "$WORK/requeue.h5" \
        --quiet >"$WORK/requeue-prep.log" 2>&1 || bad "sluice prep of requeue.jsonl: $(cat "$WORK/requeue-prep.log")"
    REQ_ARGS=(--backend cpu --ignore-eos --quiet)
    run_job requeue jobs/sluice-1node.sbatch "${COMMON[@]}" --requeue --open-mode=append -- \
        "$MODEL" "$WORK/requeue.h5" "$WORK/out-requeue" "${REQ_ARGS[@]}" --grace 0 --checkpoint 1
else
    echo "pending: this sluice cannot resume (no 'resume' in 'sluice run --help'): requeue + resume not tested"
fi
t_jobs=$SECONDS

# ---------------------------------------------------------------------------
# 5. results

if [ -n "$mpi_job" ]; then
    if wait_job "$mpi_job" "$WORK/mpi.log" &&
       grep -q '^rank 0/2 sum=3$' "$WORK/mpi.log" && grep -q '^rank 1/2 sum=3$' "$WORK/mpi.log"; then
        ok "2-task job: srun --mpi=pmix MPI all-reduce on both ranks"
    else
        bad "2-task job: srun --mpi=pmix MPI all-reduce (log: $(tr '\n' '|' <"$WORK/mpi.log" 2>/dev/null))"
    fi
fi

# check_run KEY WHAT OUTDIR: a sluice run job ended well and matches the reference.
check_run() {
    [ -n "${JOB[$1]}" ] || return
    if wait_job "${JOB[$1]}" "${LOG[$1]}"; then
        same_as_reference "$2" "$3"
    else
        bad "$2: job ${JOB[$1]} did not complete"
    fi
}
check_run 1node-1rank "jobs/sluice-1node.sbatch, 1 rank" "$WORK/out-1rank"
if [ "$HAS_TP" = 1 ]; then
    check_run 1node-tp2 "jobs/sluice-1node.sbatch, 2 ranks --tp 2 (1 replica x 2 TP)" "$WORK/out-tp2"
    check_run 1node-dp2 "jobs/sluice-1node.sbatch, 2 ranks --tp 1 (2 DP replicas)" "$WORK/out-dp2"
    check_run multinode-tp2 "jobs/sluice-multinode.sbatch, 1 node x 2 ranks --tp 2" "$WORK/out-mn-tp2"
else
    # Interim: the job fails by design, but both ranks must have started under
    # PMIx and seen a world of 2 (that is what sluice refuses).
    for key in 1node-2ranks multinode-2ranks; do
        [ -n "${JOB[$key]}" ] || continue
        what="jobs/sluice-${key%-2ranks}.sbatch, 2 ranks"
        # the job fails by design: its state is not the check, its log is
        wait_job "${JOB[$key]}" >"$WORK/$key.wait" 2>&1
        n=$(grep -c 'several ranks are not supported yet' "${LOG[$key]}" 2>/dev/null || true)
        if [ "$n" = 2 ]; then
            ok "$what: srun --mpi=pmix started 2 sluice ranks that saw each other (interim: sluice says several ranks are not supported yet)"
        else
            bad "$what: expected both ranks to report 'several ranks are not supported yet', got $n"
            cat "$WORK/$key.wait"
        fi
    done
    echo "pending: multi-rank sluice run is not in this binary (no --tp in 'sluice run --help'):"
    echo "pending:   --tp 2 and --tp 1 over 2 ranks (sluice-1node) and --tp 2 (sluice-multinode) not compared yet"
fi

# requeue: wait for the first checkpoint, send USR1 to the batch shell, then
# lift the 2-minute hold Slurm puts on a requeued job. The reference for these
# prompts runs here meanwhile.
check_requeue() {
    local id=${JOB[requeue]} what="jobs/sluice-1node.sbatch, USR1 + --requeue + resume"
    [ -n "$id" ] || return
    "$BIN" run --model "$MODEL" --input "$WORK/requeue.h5" --output "$WORK/requeue-ref" --threads 1 \
        "${REQ_ARGS[@]}" >"$WORK/requeue-ref.log" 2>&1 &
    local ref_pid=$!
    until compgen -G "$WORK/out-requeue/part-*.h5" >/dev/null || [ "$SECONDS" -ge "$BUDGET" ]; do sleep 0.2; done
    if ! scancel --batch --signal=USR1 "$id"; then
        bad "$what: scancel --signal=USR1 failed"
        wait "$ref_pid"
        return
    fi
    until scontrol show job -o "$id" | grep -q 'Restarts=1' || [ "$SECONDS" -ge "$BUDGET" ]; do sleep 0.3; done
    until scontrol show job -o "$id" | grep -q 'JobState=PENDING' || [ "$SECONDS" -ge "$BUDGET" ]; do sleep 0.3; done
    # Not at once: slurmd refuses a credential issued in the same second as the
    # first start's was revoked ("Job credential revoked"), failing the job.
    sleep 2
    scontrol update jobid="$id" StartTime=now >/dev/null 2>&1
    local ref_rc=0
    wait "$ref_pid" || ref_rc=$?
    if [ "$ref_rc" != 0 ] || ! "$BIN" export "$WORK/requeue-ref" --output "$WORK/requeue-ref.jsonl" >>"$WORK/requeue-ref.log" 2>&1; then
        bad "$what: single-process reference failed: $(tail -n 5 "$WORK/requeue-ref.log")"
        return
    fi
    digest "$WORK/requeue-ref.jsonl" >"$WORK/requeue-ref.digest"
    local resumed
    if ! wait_job "$id" "${LOG[requeue]}"; then
        bad "$what: job $id did not complete"
    elif ! grep -q 'exit 3 after' "${LOG[requeue]}" || ! grep -q 'requeueing' "${LOG[requeue]}" ||
         ! grep -q 'start 2: resuming' "${LOG[requeue]}"; then
        bad "$what: the log does not show the stop (exit 3), the requeue and the resumed start:"
        cat "${LOG[requeue]}"
    else
        resumed=$(sed -n 's/.*"resumed_completions": *\([0-9]*\).*/\1/p' "$WORK/out-requeue/report.json")
        if [ "${resumed:-0}" -ge 2 ] && [ "$resumed" -lt 4 ]; then
            ok "$what: stopped at the signal, requeued, resumed $resumed of 4 completions, completed"
        else
            bad "$what: report.json says resumed_completions '${resumed}', expected the 2 or 3 finished before the signal"
        fi
        same_as_reference "$what, after the resume" "$WORK/out-requeue" "$WORK/requeue-ref.digest" 4
    fi
}
check_requeue

if [ -n "${JOB[sweep]}" ]; then
    if wait_job "${JOB[sweep]}" "${LOG[sweep]}"; then
        sweep_ok=1
        for b in 2 4; do
            j=$WORK/sweep/mb$b-isl8-osl4.json
            if ! grep -q "\"max_batch\": *$b," "$j" 2>/dev/null || ! grep -q '"isl": *8,' "$j" ||
               ! grep -q '"osl": *4,' "$j" || ! grep -q '"requests": *6,' "$j"; then
                bad "sweep: $j missing or not max_batch $b, isl 8, osl 4, 6 requests"
                sweep_ok=0
            fi
        done
        rows=$(awk -F'\t' 'NR > 1 && $4 + 0 > 0' "$WORK/sweep/sweep.tsv" 2>/dev/null | wc -l)
        if [ "$rows" != 2 ]; then
            bad "sweep: sweep.tsv has $rows rows with a positive tokens/s, expected 2"
            cat "$WORK/sweep/sweep.tsv" 2>/dev/null
            sweep_ok=0
        fi
        [ "$sweep_ok" = 1 ] && ok "jobs/sluice-sweep.sbatch: 2-task array of sluice bench, results in sweep.tsv"
    else
        bad "jobs/sluice-sweep.sbatch: array job ${JOB[sweep]} did not complete"
    fi
fi
echo "jobs took $((SECONDS - t_jobs))s after submission; whole test ${SECONDS}s"
finish
