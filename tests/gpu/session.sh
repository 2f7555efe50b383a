#!/usr/bin/env bash
# One GPU-host session: build for sm_90a, run the GPU test suite, check the
# demo model's golden continuations on the CUDA backend, and run benchmarks.
# Prints a short table; logs and JSON go to $OUT (default build/gpu-session).
#   usage: tests/gpu/session.sh [tests] [golden] [bench-quick] [bench] [ab] ...
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
probe)
    # wgmma helpers (descriptor layouts, fragment orders) against a CPU product
    $(command -v nvcc || echo /usr/local/cuda/bin/nvcc) -std=c++17 -gencode=arch=compute_90a,code=sm_90a \
        -Ikernels/cuda tests/gpu/wgmma_probe.cu -o build/wgmma_probe 2>"$OUT/probe-build.log" &&
        build/wgmma_probe | tee "$OUT/probe.log" ;;
tests)
    for t in ${GPU_TESTS:-build/tests/test_gpu_*}; do
        case $t in build/*) ;; *) t=build/tests/$t ;; esac
        SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout ${TEST_TIMEOUT:-240} "$t" >"$OUT/$(basename "$t").log" 2>&1
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
    # 3,000 requests at 2048/128 for the 8B shape: TensorRT-LLM's count there
    for spec in "llama-3.1-8b 128 128 3000" "llama-3.1-8b 2048 128 3000" \
                "llama-2-7b 128 128 3000" "llama-2-7b 2048 128 500"; do
        set -- $spec
        timeout 300 build/sluice bench --arch "$1" --isl "$2" --osl "$3" --requests "$4" \
            --backend cuda --output "$OUT/bench-$1-$2-$3.json" 2>&1 | tee "$OUT/bench-$1-$2-$3.log" | tail -9
    done ;;
bench-dtypes)
    # FP8 (weights + activations + KV; per-channel/dynamic and per-tensor/static
    # scales) and INT4 (W4A16) next to BF16, one run each
    n=${DT_REQ:-2000}
    for spec in "bf16:--dtype bf16" "fp8-pt-kvfp8:--dtype fp8 --fp8-per-tensor --kv-dtype fp8" \
                "fp8-pc-kvfp8:--dtype fp8 --kv-dtype fp8" "int4:--dtype int4"; do
        label=${spec%%:*}; args=${spec#*:}
        timeout 300 build/sluice bench --arch llama-3.1-8b --isl ${DT_ISL:-128} --osl ${DT_OSL:-128} \
            --requests $n --backend cuda $args ${DT_ARGS:-} --output "$OUT/bench-8b-$label.json" 2>&1 \
            | tee "$OUT/bench-8b-$label.log" | grep -E "sluice bench|output tokens/s|TPOT|memory|rror" | head -5
    done ;;
bench-int4)
    # W4A16 (group 128, zero points) on the 8B shape at batch 1, 16 and 256,
    # with an FP8 KV cache too, then the Falcon-180B shape on this one GPU
    specs=${B4_SPECS:-"llama-3.1-8b 1 8,llama-3.1-8b 16 64,llama-3.1-8b 256 2000,llama-3.1-8b 256 2000 --kv-dtype fp8,falcon-180b 256 ${N180:-768}"}
    IFS=, read -ra speclist <<<"$specs"
    for spec in "${speclist[@]}"; do
        set -- $spec; a=$1 mb=$2 n=$3; shift 3
        timeout 300 build/sluice bench --arch $a --isl 128 --osl 128 --requests $n --max-batch $mb \
            --backend cuda --dtype int4 "$@" --output "$OUT/bench-int4-$a-b$mb$*.json" 2>&1 \
            | tee "$OUT/bench-int4-$a-b$mb.log" | grep -E "sluice bench|output tokens/s|TPOT|memory|rror" | head -5
    done ;;
readprobe)
    # HBM read bandwidth by access pattern (the W4A16 GEMV's ceiling)
    nvcc -O3 -gencode=arch=compute_90a,code=sm_90a tests/gpu/read_probe.cu -o build/read_probe \
        2>"$OUT/readprobe-build.log" && build/read_probe | tee "$OUT/readprobe.log" ;;
gemmpower)
    # cuBLASLt's candidates for the prefill GEMMs under sustained load (power-limited clocks)
    nvcc -O3 -gencode=arch=compute_90a,code=sm_90a tests/gpu/gemm_power_probe.cu -lcublasLt \
        -o build/gemm_power_probe 2>"$OUT/gemmpower-build.log" || tail -5 "$OUT/gemmpower-build.log"
    for dt in ${GP_TYPES:-fp8 bf16}; do
        build/gemm_power_probe $dt ${GP_SECS:-2.5} | tee "$OUT/gemmpower-$dt.log"
    done ;;
bench-180)
    # Falcon-180B shape, INT4 weights + FP8 KV cache, on this one GPU
    timeout ${B180_TIMEOUT:-200} build/sluice bench --arch falcon-180b --isl 128 --osl 128 --requests ${N180:-512} \
        --max-batch ${MB180:-512} --backend cuda --dtype int4 --kv-dtype fp8 \
        --output "$OUT/bench-180b-int4-kvfp8.json" 2>&1 | tee "$OUT/bench-180b-int4-kvfp8.log" | tail -9 ;;
bench-zoo)
    # every family's flagship shape, BF16 (and FP8 weights), 128/128, one GPU
    for a in ${ZOO_ARCHS:-gpt2-xl gpt-j-6b falcon-7b falcon-40b mpt-7b bloom-7b1 mistral-7b qwen2-7b phi-3-mini gemma-7b}; do
        for dt in ${ZOO_DTYPES:-bf16 fp8}; do
            timeout 200 build/sluice bench --arch $a --isl 128 --osl 128 --requests ${ZOO_REQ:-1000} \
                --backend cuda --dtype $dt --output "$OUT/bench-zoo-$a-$dt.json" >"$OUT/bench-zoo-$a-$dt.log" 2>&1
            row "zoo $a $dt" "$(grep -E 'output tokens/s' "$OUT/bench-zoo-$a-$dt.log" | head -1) $(grep -m1 -E 'rror' "$OUT/bench-zoo-$a-$dt.log")"
        done
    done ;;
bench-fp8)
    # FP8 weights + activations (per-tensor, static) + FP8 KV against the
    # issue's three shapes; BF16 at the same shapes and batch for comparison
    specs=${FP8_SPECS:-"128 128 3000,2048 128 3000,128 2048 ${N_LONGOUT:-500}"}
    IFS=, read -ra speclist <<<"$specs"
    for spec in "${speclist[@]}"; do
        set -- $spec
        dts=("fp8:--dtype fp8 --fp8-per-tensor --kv-dtype fp8")
        [ -z "${FP8_NO_BF16:-}" ] && dts+=("bf16:--dtype bf16")
        for dt in "${dts[@]}"; do
            l=${dt%%:*}; a=${dt#*:}
            timeout 300 build/sluice bench --arch llama-3.1-8b --isl $1 --osl $2 --requests $3 \
                --backend cuda $a --max-batch ${FP8_MB:-512} ${FP8_ARGS:-} \
                --output "$OUT/bench-fp8-$l-$1-$2.json" >"$OUT/bench-fp8-$l-$1-$2.log" 2>&1
            row "8b $l $1/$2 mb ${FP8_MB:-512}" "$(grep -E 'output tokens/s' "$OUT/bench-fp8-$l-$1-$2.log" | head -1) $(grep -m1 -E 'rror' "$OUT/bench-fp8-$l-$1-$2.log")"
        done
    done ;;
kbench)
    # the kernel benchmarks of the GPU tests (attention: decode GB/s against a
    # device copy, prefill TFLOP/s; with the 64-row prefill tiles too)
    for t in ${KBENCH_TESTS:-test_gpu_attention test_gpu_kernels test_gpu_gemm test_gpu_int4}; do
        SLUICE_TEST_ONLY=${KBENCH_ONLY:-} SLUICE_GPU_BENCH=1 SLUICE_REQUIRE_GPU=1 \
            SLUICE_ROOT=$PWD timeout 120 build/tests/$t >"$OUT/kbench-$t.log" 2>&1
        grep -iE "GB/s|TFLOP|copy|^ +[0-9]+ +[0-9]+ " "$OUT/kbench-$t.log" | head -40
    done
    [ -n "${KBENCH_TESTS:-}" ] && continue
    SLUICE_PREFILL_MT=1 SLUICE_GPU_BENCH=1 SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout 120 \
        build/tests/test_gpu_attention >"$OUT/kbench-attention-mt1.log" 2>&1
    grep -E "prefill" "$OUT/kbench-attention-mt1.log" | sed 's/^/64-row tiles: /' ;;
kprof)
    # Nsight Compute (full set) on one launch of a kernel in a GPU test's
    # benchmark: KPROF "regex:skip,..." (skip: matching launches before it)
    IFS=, read -ra kl <<<"${KPROF:-attn_prefill_wg_kernel:2,attn_prefill_kernel:2}"
    for ks in "${kl[@]}"; do
        k=${ks%%:*}; n=${ks#*:}
        SLUICE_TEST_ONLY=${KBENCH_ONLY:-benchmark} SLUICE_GPU_BENCH=1 SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD \
            timeout 240 ncu --set full -k regex:"$k" --launch-skip $n --launch-count 1 \
            build/tests/${KPROF_TEST:-test_gpu_attention} >"$OUT/kprof-$k-$n.txt" 2>&1
        echo "== $k (skip $n)"
        grep -E "^  [a-z_]+.*\(|Duration|Throughput|Occupancy|Registers Per|Shared Memory Configuration Size|Dynamic Shared|Executed Ipc A|Issue Slots Busy|One or More Eligible|No Eligible|Bank" \
            "$OUT/kprof-$k-$n.txt" | head -40
        grep -oE "stalled [^.]*\." "$OUT/kprof-$k-$n.txt" | head -6
    done ;;
bench-2k-ab)
    # 2048/128 BF16 with the 128-row prefill tiles (default) and the 64-row ones
    for mt in 2 1; do
        SLUICE_PREFILL_MT=$mt timeout 240 build/sluice bench --arch llama-3.1-8b --isl 2048 --osl 128 \
            --requests 500 --backend cuda --output "$OUT/bench-8b-2048-128-mt$mt.json" \
            >"$OUT/bench-8b-2048-128-mt$mt.log" 2>&1
        row "8b bf16 2048/128, prefill MT=$mt" "$(grep -E 'output tokens/s' "$OUT/bench-8b-2048-128-mt$mt.log")"
    done ;;
ab)
    # Same-run A/B pairs: "label|environment|bench flags" (AB_SPECS, ';'-separated),
    # each `sluice bench` run once with its environment. The default list is
    # what the fourth session could not compare in one run: cuBLASLt tuning
    # on/off at 2048/128 (BF16, FP8), and INT4 v2/v3 at large batches.
    F8="--dtype fp8 --fp8-per-tensor --kv-dtype fp8 --max-batch 512"
    specs=${AB_SPECS:-"bf16 2k tune0|SLUICE_GEMM_TUNE=0|--isl 2048 --osl 128 --requests 500;\
bf16 2k tune1|SLUICE_GEMM_TUNE=1|--isl 2048 --osl 128 --requests 500;\
fp8 2k tune0|SLUICE_GEMM_TUNE=0|--isl 2048 --osl 128 --requests 500 $F8;\
fp8 2k tune1|SLUICE_GEMM_TUNE=1|--isl 2048 --osl 128 --requests 500 $F8;\
int4 b256 v2|SLUICE_INT4_KERNELS=v2|--dtype int4 --isl 128 --osl 128 --requests 2000;\
int4 b256 v3|SLUICE_INT4_KERNELS=v3|--dtype int4 --isl 128 --osl 128 --requests 2000"}
    IFS=';' read -ra speclist <<<"$specs"
    for spec in "${speclist[@]}"; do
        IFS='|' read -r label envs args <<<"$spec"
        label=${label//\//-}; log="$OUT/ab-${label// /-}.log"
        # power and SM clock once a second (nvidia-smi dmon) during the run
        nvidia-smi dmon -s pc -d 1 >"${log%.log}.dmon" 2>/dev/null & dm=$!
        env $envs timeout ${AB_TIMEOUT:-240} build/sluice bench --arch ${AB_ARCH:-llama-3.1-8b} \
            --backend cuda $args --output "${log%.log}.json" >"$log" 2>&1
        kill $dm 2>/dev/null; wait $dm 2>/dev/null
        # mean power and SM clock over the busy samples (above 200 W)
        pw=$(awk '!/^#/ && $2 > 200 { p += $2; c += $6; n++ } END { if (n) printf "%.0f W, SM %.0f MHz (%d s)", p / n, c / n, n }' "${log%.log}.dmon")
        row "$label" "$(grep -E 'output tokens/s' "$log" | head -1) $(grep -m1 -E 'TPOT' "$log" | awk '{print "TPOT p50", $5}') $(grep -m1 -E 'rror' "$log") [$pw]"
    done ;;
golden-f32)
    [ -f build/golden-prompts.h5 ] || bash "$0" golden >/dev/null
    build/sluice run --model tests/models/tiny-code-llama --input build/golden-prompts.h5 \
        --output "$OUT/golden-f32" --overwrite --max-new-tokens 48 --ignore-eos --backend cuda \
        --dtype f32 >"$OUT/golden-f32.log" 2>&1 || tail -5 "$OUT/golden-f32.log"
    python3 tests/golden/check_completions.py "$OUT/golden-f32/completions.h5" \
        tests/models/tiny-code-llama/golden_greedy.json | tee -a "$OUT/golden-f32.log" | tail -1 ;;
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
    for mnt in ${MNT_LIST:-16384}; do
        timeout 240 build/sluice bench --arch llama-3.1-8b --isl 2048 --osl 128 --requests 500 \
            --max-num-tokens $mnt --backend cuda --output "$OUT/bench-8b-2048-128-mnt$mnt.json" 2>&1 | tail -9
    done ;;
sanitize)
    for t in ${SAN_TESTS:-test_gpu_model test_gpu_attention test_gpu_kernels test_gpu_sampling}; do
        SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout 300 compute-sanitizer --tool memcheck \
            --error-exitcode 9 build/tests/$t >"$OUT/sanitize-$t.log" 2>&1
        row "memcheck $t" "exit $? $(grep -E 'ERROR SUMMARY' "$OUT/sanitize-$t.log" | tail -1)"
    done ;;
resume)
    # A CUDA job stopped by SIGUSR1 and resumed, against an uninterrupted one.
    # At --max-batch 1 every request runs alone, so the two must be identical
    # bit for bit; at the default batch size bf16 results depend on which
    # requests share a step, so only completeness is asserted there.
    python3 - <<'PY'
import h5py, numpy as np
for name, n, top in (("big", 30000, 200), ("small", 400, 60)):
    rng = np.random.default_rng(3)
    lens = rng.integers(1, top, size=n)
    with h5py.File(f"build/resume-{name}.h5", "w") as f:
        f["prompt_tokens"] = rng.integers(1, 8000, size=lens.sum()).astype(np.int32)
        f["prompt_offsets"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        f["max_new_tokens"] = rng.integers(1, top, size=n).astype(np.int32)
PY
    for spec in "big 256 4" "small 1 3"; do
        set -- $spec
        args="--model tests/models/tiny-code-llama --input build/resume-$1.h5 --ignore-eos --backend cuda --checkpoint 0.5 --progress 0 --quiet --max-batch $2"
        build/sluice run $args --output "$OUT/resume-ref-$1" --overwrite
        rm -rf "$OUT/resume-cut-$1"
        build/sluice run $args --output "$OUT/resume-cut-$1" & pid=$!
        sleep $3; kill -USR1 $pid; wait $pid; echo "max-batch $2: stopped: exit $?"
        build/sluice run $args --output "$OUT/resume-cut-$1"; echo "resumed: exit $?"
        python3 - "$OUT" "$1" "$2" <<'PY'
import sys, json, h5py, numpy as np
o, name, mb = sys.argv[1:4]
a, b = h5py.File(f"{o}/resume-ref-{name}/completions.h5"), h5py.File(f"{o}/resume-cut-{name}/completions.h5")
same = all(np.array_equal(a[k][:], b[k][:]) for k in ("prompt_index", "completion_offsets", "completion_tokens", "finish_reason"))
once = np.array_equal(np.sort(b["prompt_index"][:]), np.arange(len(a["prompt_index"])))
r = json.load(open(f"{o}/resume-cut-{name}/report.json"))
print(f"resume on GPU, max-batch {mb}: every prompt exactly once = {once}; identical = {same}; "
      f"resumed_completions = {r['resumed_completions']} of {len(a['prompt_index'])}")
PY
    done ;;
tp)
    # NCCL tensor parallelism on this host's GPUs: TP=2 (and TP=4 when 4 GPUs
    # are here) against one GPU on the demo model and a random GQA fixture
    # (8 query heads, 2 kv heads), data parallelism D=2, then a rank killed
    # mid-run must end the whole job quickly, with a message.
    export NCCL_NVLS_ENABLE=0
    ngpu=$(nvidia-smi -L | wc -l)
    MPI="mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x PATH"
    mkprompts() { python3 - "$1" "$2" <<'PY'
import json, sys, h5py, numpy as np
d = json.load(open(sys.argv[1])); ids = [c["prompt_ids"] for c in d["cases"]]
rng = np.random.default_rng(7)
ids += [list(rng.integers(3, 200, size=int(rng.integers(2, 300)))) for _ in range(60)]
with h5py.File(sys.argv[2], "w") as f:
    f["prompt_tokens"] = np.array(sum(ids, []), dtype=np.int32)
    f["prompt_offsets"] = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
PY
    }
    for spec in "tests/models/tiny-code-llama golden_greedy.json demo" \
                "tests/golden/llama-gqa4-llama3rope-f16 golden.json gqa4"; do
        set -- $spec
        mkprompts "$1/$2" "build/tp-$3.h5"
        for dt in ${TP_DTYPES:-bf16}; do
            dflag=""; [ "$dt" != bf16 ] && dflag="--dtype $dt"
            args="--model $1 --input build/tp-$3.h5 --max-new-tokens 48 --ignore-eos --backend cuda --overwrite --progress 0 $dflag"
            build/sluice run $args --output "$OUT/tp-$3-$dt-1" >"$OUT/tp-$3-$dt-1.log" 2>&1 || tail -3 "$OUT/tp-$3-$dt-1.log"
            for tp in 2 4; do
                [ $tp -gt "$ngpu" ] && continue
                [ "$3" = demo ] && [ $tp = 4 ] && continue # 6 heads
                t0s=$SECONDS
                timeout 300 $MPI -np $tp build/sluice run $args --tp $tp --output "$OUT/tp-$3-$dt-$tp" \
                    >"$OUT/tp-$3-$dt-$tp.log" 2>&1 || { echo "tp $tp failed:"; tail -5 "$OUT/tp-$3-$dt-$tp.log"; }
                python3 tests/gpu/compare_completions.py "$OUT/tp-$3-$dt-1/completions.h5" \
                    "$OUT/tp-$3-$dt-$tp/completions.h5" "$3 $dt TP=$tp vs 1 GPU ($((SECONDS - t0s)) s)"
            done
            timeout 300 $MPI -np 2 build/sluice run $args --output "$OUT/tp-$3-$dt-dp2" \
                >"$OUT/tp-$3-$dt-dp2.log" 2>&1 || tail -5 "$OUT/tp-$3-$dt-dp2.log"
            python3 tests/gpu/compare_completions.py "$OUT/tp-$3-$dt-1/completions.h5" \
                "$OUT/tp-$3-$dt-dp2/completions.h5" "$3 $dt D=2 replicas vs 1 GPU"
        done
    done
    # kill -9 one rank of a TP=2 job: the job must end by itself, non-zero
    python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(5)
lens = rng.integers(1, 200, size=20000)
with h5py.File("build/tp-kill.h5", "w") as f:
    f["prompt_tokens"] = rng.integers(3, 8000, size=lens.sum()).astype(np.int32)
    f["prompt_offsets"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
PY
    $MPI -np 2 build/sluice run --model tests/models/tiny-code-llama --input build/tp-kill.h5 \
        --output "$OUT/tp-kill" --overwrite --max-new-tokens 100 --ignore-eos --backend cuda --tp 2 \
        >"$OUT/tp-kill.log" 2>&1 & mp=$!
    sleep 8
    victim=$(pgrep -f "^build/sluice run --model tests/models/tiny-code-llama --input build/tp-kill.h5" | tail -1)
    t0k=$SECONDS; kill -9 "$victim"; wait $mp; rck=$?
    row "kill -9 one rank of TP=2" "job ended after $((SECONDS - t0k)) s, exit $rck"
    grep -iE "error|abort|killed|signal" "$OUT/tp-kill.log" | head -4 ;;
bench-70b)
    # llama-3.1-70b shape, BF16, tensor parallel over every GPU here (2 or 4);
    # the all-reduce share: the same run with the all-reduce left out
    # (SLUICE_TP_ABLATE_ALLREDUCE=1: timing experiment, wrong outputs).
    export NCCL_NVLS_ENABLE=0
    ngpu=$(nvidia-smi -L | wc -l)
    MPI="mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x PATH"
    for tp in ${BENCH70_TP:-$ngpu}; do
        for spec in "128 128 ${N70_SHORT:-2000}" "2048 128 ${N70_LONG:-300}"; do
            set -- $spec
            timeout 300 $MPI -np $tp build/sluice bench --arch llama-3.1-70b --isl $1 --osl $2 \
                --requests $3 --backend cuda --tp $tp --output "$OUT/bench-70b-tp$tp-$1-$2.json" \
                2>&1 | tee "$OUT/bench-70b-tp$tp-$1-$2.log" | tail -9
            [ -n "${NO_ABLATE:-}" ] && continue
            timeout 300 $MPI -np $tp -x SLUICE_TP_ABLATE_ALLREDUCE=1 build/sluice bench --arch llama-3.1-70b \
                --isl $1 --osl $2 --requests $3 --backend cuda --tp $tp \
                --output "$OUT/bench-70b-tp$tp-$1-$2-noar.json" 2>&1 | grep "output tokens/s"
        done
    done ;;
profile)
    # Where a step's GPU time goes: Nsight Compute times every kernel of ~one
    # step (launches in a row, caches not flushed) for the 8B shape: a
    # prefill-heavy step and a decode step of 2048/128, a decode step of 128/128.
    # Steps' wall time comes from the same run's bench summary (PROFILE_ARGS:
    # extra bench flags, e.g. --dtype fp8).
    specs=${PROFILE_SPECS:-"2048 128 256 2500 prefill,2048 128 256 30000 decode,128 128 512 8000 decode"}
    IFS=, read -ra speclist <<<"$specs"
    for spec in "${speclist[@]}"; do
        set -- $spec
        timeout 400 ncu --csv --metrics gpu__time_duration.sum --cache-control none \
            --launch-skip $4 --launch-count 400 build/sluice bench --arch llama-3.1-8b --isl $1 \
            --osl $2 --requests $3 --backend cuda ${PROFILE_ARGS:-} >"$OUT/ncu-$1-$2-$5.csv" 2>"$OUT/ncu-$1-$2-$5.err"
        python3 tests/gpu/ncu_table.py "$OUT/ncu-$1-$2-$5.csv" "8b $1/$2 $5 step (skip $4)" || tail -3 "$OUT/ncu-$1-$2-$5.err"
    done ;;
racecheck)
    for t in test_gpu_attention test_gpu_kernels test_gpu_sampling; do
        SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout 400 compute-sanitizer --tool racecheck \
            --error-exitcode 9 build/tests/$t >"$OUT/racecheck-$t.log" 2>&1
        row "racecheck $t" "exit $? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck-$t.log" | tail -1)"
    done ;;
esac
done
echo "total: $((SECONDS - t0)) s"
