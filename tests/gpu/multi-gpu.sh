#!/usr/bin/env bash
# One call on a 4-GPU host (NVLink): correctness of NCCL tensor parallelism
# and the 70B-shape benchmarks, with single-GPU work run beside it on the
# GPUs the TP=2 phase leaves free. Logs go to /tmp/s, packed into
# $OUT/all.tgz. Prints a short table.
#   phase A (parallel): GPUs 0-1: TP=2 and D=2 against one GPU (demo model,
#     random GQA fixture, 8 zoo fixtures; f32 and bf16), kill -9 of one rank;
#     GPU 2: GPU tests (TESTS); GPU 3: 8B 2048/128 variants; then GPUs 2-3:
#     llama-3.1-70b FP8 at TP=2.
#   phase B: TP=4 against one GPU (GQA fixture), llama-3.1-70b BF16 TP=4 at
#     128/128 and 2048/128 with and without the all-reduce, FP8 at TP=4.
cd "$(dirname "$0")/../.."
[ -f .devdeps/activate.sh ] && . .devdeps/activate.sh
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
S=/tmp/s; mkdir -p $S; dest=${OUT:-build}
trap 'tar czf "$dest/all.tgz" -C $S --exclude="*.h5" . 2>/dev/null' EXIT
t0=$SECONDS
make -j"$(nproc)" all >$S/build.log 2>&1 || { tail -30 $S/build.log; exit 1; }
echo "build: $((SECONDS - t0)) s"
MPI="mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x PATH -x CUDA_VISIBLE_DEVICES"
row() { printf '%-52s %s\n' "$1" "$2"; }
mkprompts() { # golden.json, out.h5, longest random prompt
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys, h5py, numpy as np
d = json.load(open(sys.argv[1])); ids = [c["prompt_ids"] for c in d["cases"]]
rng = np.random.default_rng(7); top = int(sys.argv[3])
ids += [list(rng.integers(3, 200, size=int(rng.integers(2, top)))) for _ in range(60)]
with h5py.File(sys.argv[2], "w") as f:
    f["prompt_tokens"] = np.array(sum(ids, []), dtype=np.int32)
    f["prompt_offsets"] = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
PY
}
# run one model on 1 GPU, then with `np` ranks and extra flags; compare
tpcheck() { # label model prompts dtype np extra...
    local label=$1 model=$2 in=$3 dt=$4 np=$5; shift 5
    local a="--model $model --input $in --max-new-tokens ${NEW:-48} --ignore-eos --backend cuda --overwrite --progress 0 --dtype $dt"
    [ -f $S/$label-$dt-1/completions.h5 ] || build/sluice run $a --output $S/$label-$dt-1 >$S/$label-$dt-1.log 2>&1 || tail -3 $S/$label-$dt-1.log
    local t=$SECONDS tag=$(echo "$*" | tr -d ' -')
    timeout 300 $MPI -np $np build/sluice run $a "$@" --output $S/$label-$dt-$np$tag >$S/$label-$dt-$np$tag.log 2>&1 ||
        { echo "$label $dt np=$np $*: failed"; tail -4 $S/$label-$dt-$np$tag.log; }
    python3 tests/gpu/compare_completions.py $S/$label-$dt-1/completions.h5 $S/$label-$dt-$np$tag/completions.h5 \
        "$label $dt np=$np $* vs 1 GPU ($((SECONDS - t)) s)"
}
bench70() { # label np extra...
    local label=$1 np=$2; shift 2
    timeout 300 $MPI -np $np build/sluice bench --arch llama-3.1-70b --backend cuda --tp $np "$@" \
        --output $S/b70-$label.json >$S/b70-$label.log 2>&1
    row "70b $label" "$(grep -E 'output tokens/s' $S/b70-$label.log) $(grep -m1 -iE 'error|abort' $S/b70-$label.log)"
    grep -E "TPOT|memory used" $S/b70-$label.log | sed 's/^/    /'
}
mkprompts tests/models/tiny-code-llama/golden_greedy.json build/tp-demo.h5 300
mkprompts tests/golden/llama-gqa4-llama3rope-f16/golden.json build/tp-gqa4.h5 300
for z in ${ZOO_TP:-qwen2 mistral-window gpt-neox gpt2 gptj falcon-new bloom mpt}; do
    mkprompts tests/golden/zoo-$z/golden.json build/tp-zoo-$z.h5 40; done

echo "== phase A"
(
    export CUDA_VISIBLE_DEVICES=0,1
    for dt in f32 bf16; do
        tpcheck demo tests/models/tiny-code-llama build/tp-demo.h5 $dt 2 --tp 2
        tpcheck gqa4 tests/golden/llama-gqa4-llama3rope-f16 build/tp-gqa4.h5 $dt 2 --tp 2
        tpcheck demo tests/models/tiny-code-llama build/tp-demo.h5 $dt 2
    done
    for z in ${ZOO_TP:-qwen2 mistral-window gpt-neox gpt2 gptj falcon-new bloom mpt}; do
        NEW=24 tpcheck zoo-$z tests/golden/zoo-$z build/tp-zoo-$z.h5 f32 2 --tp 2
    done
    python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(5); lens = rng.integers(1, 200, size=20000)
with h5py.File("build/tp-kill.h5", "w") as f:
    f["prompt_tokens"] = rng.integers(3, 8000, size=lens.sum()).astype(np.int32)
    f["prompt_offsets"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
PY
    $MPI -np 2 build/sluice run --model tests/models/tiny-code-llama --input build/tp-kill.h5 \
        --output $S/tp-kill --overwrite --max-new-tokens 100 --ignore-eos --backend cuda --tp 2 \
        >$S/tp-kill.log 2>&1 & mp=$!
    sleep 8
    victim=$(pgrep -f "^build/sluice run --model tests/models/tiny-code-llama --input build/tp-kill.h5" | tail -1)
    tk=$SECONDS; kill -9 "$victim"; wait $mp; rck=$?
    row "kill -9 one rank of TP=2" "job ended after $((SECONDS - tk)) s, exit $rck"
    grep -iE "error|abort|killed|signal" $S/tp-kill.log | head -3
) >$S/phaseA-tp.txt 2>&1 &
ptp=$!
(
    (
        for t in ${TESTS:-test_gpu_zoo test_gpu_fp8}; do
            CUDA_VISIBLE_DEVICES=2 SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout 200 build/tests/$t >$S/$t.log 2>&1
            row "$t" "$(grep -E '^[0-9]+ passed' $S/$t.log | tail -1) (exit $?)"
        done
    ) &
    (
        for spec in "mb512:--max-batch 512" "mnt16k:--max-num-tokens 16384" "mnt16k-mb512:--max-num-tokens 16384 --max-batch 512"; do
            l=${spec%%:*}; a=${spec#*:}
            CUDA_VISIBLE_DEVICES=3 timeout 200 build/sluice bench --arch llama-3.1-8b --isl 2048 --osl 128 --requests 500 \
                --backend cuda $a --output $S/b8-2k-$l.json >$S/b8-2k-$l.log 2>&1
            row "8b bf16 2048/128 $l" "$(grep -E 'output tokens/s' $S/b8-2k-$l.log)"
        done
    ) &
    wait
    CUDA_VISIBLE_DEVICES=2,3 bench70 fp8-tp2-128-128 2 --isl 128 --osl 128 --requests ${N70:-1000} --dtype fp8 --fp8-per-tensor --kv-dtype fp8
) >$S/phaseA-single.txt 2>&1
wait $ptp
cat $S/phaseA-tp.txt $S/phaseA-single.txt
export CUDA_VISIBLE_DEVICES=0,1,2,3
echo "== phase B ($((SECONDS - t0)) s)"
for dt in f32 bf16; do
    tpcheck gqa4 tests/golden/llama-gqa4-llama3rope-f16 build/tp-gqa4.h5 $dt 4 --tp 4
    tpcheck gqa4 tests/golden/llama-gqa4-llama3rope-f16 build/tp-gqa4.h5 $dt 4 --tp 2
done
bench70 bf16-tp4-128-128 4 --isl 128 --osl 128 --requests ${N70:-1000}
SLUICE_TP_ABLATE_ALLREDUCE=1 MPI="$MPI -x SLUICE_TP_ABLATE_ALLREDUCE" bench70 bf16-tp4-128-128-noar 4 --isl 128 --osl 128 --requests ${N70:-1000}
bench70 bf16-tp4-2048-128 4 --isl 2048 --osl 128 --requests ${N70L:-200}
SLUICE_TP_ABLATE_ALLREDUCE=1 MPI="$MPI -x SLUICE_TP_ABLATE_ALLREDUCE" bench70 bf16-tp4-2048-128-noar 4 --isl 2048 --osl 128 --requests ${N70L:-200}
bench70 fp8-tp4-128-128 4 --isl 128 --osl 128 --requests ${N70:-1000} --dtype fp8 --fp8-per-tensor --kv-dtype fp8
echo "total: $((SECONDS - t0)) s"
