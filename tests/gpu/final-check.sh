. .devdeps/activate.sh; export NCCL_NVLS_ENABLE=0; S=/tmp/s; mkdir -p $S
make -j32 all > $S/build.log 2>&1 || { tail -20 $S/build.log; exit 1; }
SLUICE_TEST_FP8_SCALAR_ONLY=1 SLUICE_REQUIRE_GPU=1 SLUICE_ROOT=$PWD timeout 40 build/tests/test_gpu_fp8 > $S/fp8.log 2>&1; echo "test_gpu_fp8 (per-tensor GEMM only): $(grep -E '^[0-9]+ passed' $S/fp8.log) $(grep -m2 -iE 'abort|rror' $S/fp8.log)"
python3 - <<'PY'
import json, h5py, numpy as np
d = json.load(open("tests/models/tiny-code-llama/golden_greedy.json")); ids = [c["prompt_ids"] for c in d["cases"]]
rng = np.random.default_rng(7); ids += [list(rng.integers(3, 200, size=int(rng.integers(2, 300)))) for _ in range(60)]
with h5py.File("build/tp-demo.h5", "w") as f:
    f["prompt_tokens"] = np.array(sum(ids, []), dtype=np.int32); f["prompt_offsets"] = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
PY
for dt in f32 bf16; do a="--model tests/models/tiny-code-llama --input build/tp-demo.h5 --max-new-tokens 48 --ignore-eos --backend cuda --overwrite --progress 0 --dtype $dt"
 build/sluice run $a --output $S/t1-$dt > $S/t1-$dt.log 2>&1; t0=$SECONDS
 timeout 40 mpirun --allow-run-as-root -x NCCL_NVLS_ENABLE -np 2 build/sluice run $a --tp 2 --output $S/t2-$dt > $S/t2-$dt.log 2>&1; echo "tp2 $dt exit $? in $((SECONDS-t0)) s"
 python3 tests/gpu/compare_completions.py $S/t1-$dt/completions.h5 $S/t2-$dt/completions.h5 "demo $dt TP=2 vs 1 GPU"; done
for spec in "bf16:--dtype bf16" "fp8pt:--dtype fp8 --fp8-per-tensor --kv-dtype fp8" "int4:--dtype int4"; do l=${spec%%:*}; a=${spec#*:}
 timeout 45 build/sluice bench --arch llama-3.1-8b --isl 128 --osl 128 --requests 1000 --backend cuda $a --output $S/b-$l.json > $S/b-$l.log 2>&1; echo "bench $l exit $?: $(grep -E 'output tokens/s' $S/b-$l.log) $(grep -m1 -E 'rror' $S/b-$l.log)"; done
tar czf $OUT/final.tgz -C $S --exclude='*.h5' .
