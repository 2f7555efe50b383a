#!/usr/bin/env bash
# `make run`: the whole job on the bundled demo model, text in and text out:
#   sluice prep   tests/data/demo-prompts.jsonl -> OUT/prompts.h5
#   sluice run    tiny-code-llama (CPU backend)  -> OUT/completions.h5, OUT/report.json
#   sluice export OUT -> OUT/completions.jsonl, and a few completions printed
# usage: tests/demo_run.sh BUILD/sluice OUTDIR
set -euo pipefail
BIN=${1:-build/sluice}
OUT=${2:-build/demo-out}
MODEL=tests/models/tiny-code-llama
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
"$BIN" prep --model "$MODEL" --input tests/data/demo-prompts.jsonl --output "$OUT/prompts.h5"
"$BIN" run --model "$MODEL" --input "$OUT/prompts.h5" --output "$OUT/run" --max-new-tokens 64 --overwrite
"$BIN" export "$OUT/run" --prompts "$OUT/prompts.h5" --output "$OUT/completions.jsonl"
echo
echo "completions: $OUT/run/completions.h5 (HDF5), $OUT/completions.jsonl (JSON lines)"
echo "report:      $OUT/run/report.json"
echo
# Show the first three as text (python3 only for pretty-printing JSON).
head -n 3 "$OUT/completions.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("--- prompt %d (%s, %d tokens) ---" % (r["prompt_index"], r["finish_reason"], len(r["completion_ids"])))
    print(r.get("prompt", "") + "\033[1m" + r.get("completion_text", str(r["completion_ids"])) + "\033[0m")
' 2>/dev/null || head -n 3 "$OUT/completions.jsonl"
