#!/usr/bin/env bash
# One GPU-host session: build for sm_90a, run the GPU test suite, check the
# demo model's golden continuations on the CUDA backend, and run benchmarks.
# Prints a short table; logs and JSON go to $OUT (default build/gpu-session).
#   usage: tests/gpu/session.sh [tests] [golden] [bench-quick] [bench]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
what=${*:-tests golden bench-quick}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
t0=$SECONDS
make -j"$(nproc)" all >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $((SECONDS - t0)) s"
row() { printf '%-44s %s\n' "$1" "$2"; }
for w in $what; do
case $w in
tests)
    for t in build/tests/test_gpu_*; do
        SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD "$t" >"$OUT/$(basename "$t").log" 2>&1
        row "$(basename "$t")" "$(grep -E '^[0-9]+ passed' "$OUT/$(basename "$t").log" | tail -1) (exit $?)"
    done ;;
golden)
    python3 - <<'PY'
import json, h5py, numpy as np
d = json.load(open("tests/models/tiny-code-llama/golden_greedy.json"))
ids = [c["prompt_ids"] for c in d["cases"]]
with h5py.File("build/golden-prompts.h5", "w") as f:
    f["prompt_tokens"] = np.array(sum(ids, []), dtype=np.int32)
    f["prompt_offsets"] = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
PY
    # with decode steps replayed from CUDA graphs (the default) and without
    for g in on off; do
        build/sluice run --model tests/models/tiny-code-llama --input build/golden-prompts.h5 \
            --output "$OUT/golden-graphs-$g" --overwrite --max-new-tokens 48 --ignore-eos \
            --backend cuda --cuda-graphs $g >"$OUT/golden-graphs-$g.log" 2>&1 ||
            tail -5 "$OUT/golden-graphs-$g.log"
        python3 tests/golden/check_completions.py "$OUT/golden-graphs-$g/completions.h5" \
            tests/models/tiny-code-llama/golden_greedy.json | tee -a "$OUT/golden-graphs-$g.log" |
            tail -1
    done ;;
bench-quick)
    timeout 300 build/sluice bench --arch llama-3.1-8b --isl 128 --osl 128 --requests 1000 \
        --backend cuda --output "$OUT/bench-8b-128-128-quick.json" 2>&1 | tee "$OUT/bench-quick.log" | tail -9 ;;
bench)
    for spec in "llama-3.1-8b 128 128 3000" "llama-3.1-8b 2048 128 500" \
                "llama-2-7b 128 128 3000" "llama-2-7b 2048 128 500"; do
        set -- $spec
        timeout 240 build/sluice bench --arch "$1" --isl "$2" --osl "$3" --requests "$4" \
            --backend cuda --output "$OUT/bench-$1-$2-$3.json" 2>&1 | tee "$OUT/bench-$1-$2-$3.log" | tail -9
    done ;;
hf)
    timeout 400 python3 tests/gpu/hf_generate_bench.py configs/arch/llama-3.1-8b.json --isl 128 \
        --osl 128 --requests 1024 --batch 256 --output "$OUT/hf-llama-3.1-8b-128-128.json" 2>&1 | tail -1 ;;
o200k)
    # The real o200k_base (tiktoken ranks cached on the GPU host, converted by
    # transformers' TikTokenConverter): regenerate the fixtures there, then the
    # C tokenizer must give HF's ids and text on every corpus line.
    TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-/opt/tiktoken_cache} timeout 300 \
        python3 tests/tokenizer/make_fixtures.py 2>&1 | tail -2
    SLUICE_ROOT=$PWD build/tests/test_tokenizer >"$OUT/tokenizer.log" 2>&1
    row "test_tokenizer (with o200k: $(test -d tests/tokenizer/o200k && echo yes || echo no))" \
        "$(grep -E '^[0-9]+ passed' "$OUT/tokenizer.log" | tail -1)"
    grep -iE "o200k|mismatch" "$OUT/tokenizer.log" | head -5 ;;
prep-scaling)
    # sluice prep on 500,000 prompts (the tokenizer corpus x 200) with 1..16
    # threads: tokenization scales with cores (the host's CPUs, no GPU used).
    python3 -c "
L=open('tests/tokenizer/corpus.jsonl',encoding='utf-8',newline='').read().split('\n')
with open('build/big.jsonl','w',encoding='utf-8',newline='') as f:
    for r in range(200):
        for l in L:
            if l: f.write('{\"prompt\": %s}\n' % l)"
    for t in 1 2 4 8 16; do
        build/sluice prep --model tests/models/tiny-code-llama --input build/big.jsonl \
            --output build/big.h5 --threads $t 2>&1 | tail -1 | sed "s/^/threads $t: /"
    done ;;
bench-big)
    for spec in "llama-3.1-8b 128 128 3000 512" "llama-3.1-8b 2048 128 500 512"; do
        set -- $spec
        timeout 200 build/sluice bench --arch "$1" --isl "$2" --osl "$3" --requests "$4" \
            --max-batch "$5" --backend cuda --output "$OUT/bench-$1-$2-$3-b$5.json" 2>&1 | tail -9
    done ;;
bench-2k)
    for mnt in 16384; do
        timeout 240 build/sluice bench --arch llama-3.1-8b --isl 2048 --osl 128 --requests 500 \
            --max-num-tokens $mnt --backend cuda --output "$OUT/bench-8b-2048-128-mnt$mnt.json" 2>&1 | tail -9
    done ;;
sanitize)
    for t in test_gpu_model test_gpu_attention test_gpu_kernels test_gpu_sampling; do
        SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout 300 compute-sanitizer --tool memcheck \
            --error-exitcode 9 build/tests/$t >"$OUT/sanitize-$t.log" 2>&1
        row "memcheck $t" "exit $? $(grep -E 'ERROR SUMMARY' "$OUT/sanitize-$t.log" | tail -1)"
    done ;;
resume)
    # A CUDA job stopped by SIGUSR1 and resumed equals an uninterrupted one.
    python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(3)
lens = rng.integers(1, 200, size=30000)
with h5py.File("build/resume-prompts.h5", "w") as f:
    f["prompt_tokens"] = rng.integers(1, 8000, size=lens.sum()).astype(np.int32)
    f["prompt_offsets"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    f["max_new_tokens"] = rng.integers(1, 200, size=30000).astype(np.int32)
PY
    args="--model tests/models/tiny-code-llama --input build/resume-prompts.h5 --ignore-eos --backend cuda --checkpoint 0.5 --progress 0 --quiet"
    build/sluice run $args --output "$OUT/resume-ref" --overwrite
    rm -rf "$OUT/resume-cut"
    build/sluice run $args --output "$OUT/resume-cut" & pid=$!
    sleep 4; kill -USR1 $pid; wait $pid; echo "stopped: exit $?"
    build/sluice run $args --output "$OUT/resume-cut"; echo "resumed: exit $?"
    python3 - "$OUT" <<'PY'
import sys, h5py, numpy as np
o = sys.argv[1]
a, b = h5py.File(o + "/resume-ref/completions.h5"), h5py.File(o + "/resume-cut/completions.h5")
same = all(np.array_equal(a[k][:], b[k][:]) for k in ("prompt_index", "completion_offsets", "completion_tokens", "finish_reason"))
import json; r = json.load(open(o + "/resume-cut/report.json"))
print("resume on GPU: identical =", same, "; resumed_completions =", r["resumed_completions"], "of", len(a["prompt_index"]))
PY
    ;;
esac
done
echo "total: $((SECONDS - t0)) s"
