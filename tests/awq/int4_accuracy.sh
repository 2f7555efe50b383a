#!/usr/bin/env bash
# INT4 accuracy of the demo model (docs/ACCURACY.md, section "INT4"):
# quantises tests/models/tiny-code-llama with --int4-rtn and --int4-awq and
# prints teacher-forced top-1 agreement and mean KL against the BF16 model on
# a held-out corpus, all on the CPU backend.
#
# Corpora: Python files of this repository, split into ~1500-character
# prompts. Calibration and evaluation use disjoint files:
#   calibration  tests/golden/make_golden.py
#   held out     tests/tokenizer/make_fixtures.py, tests/golden/check_completions.py,
#                tests/tokenizer/bench_hf.py, tests/gpu/hf_generate_bench.py
#
#   usage: tests/awq/int4_accuracy.sh [BUILD] [WORKDIR]   (GROUP=128 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
WORK=${2:-$BUILD/int4-accuracy}
GROUP=${GROUP:-128}
SLUICE=$BUILD/sluice
MODEL=tests/models/tiny-code-llama
mkdir -p "$WORK"

python3 tests/awq/cut_prompts.py "$WORK/calib.jsonl" tests/golden/make_golden.py
python3 tests/awq/cut_prompts.py "$WORK/heldout.jsonl" tests/tokenizer/make_fixtures.py \
    tests/golden/check_completions.py tests/tokenizer/bench_hf.py tests/gpu/hf_generate_bench.py

for s in calib heldout; do
    "$SLUICE" prep --model "$MODEL" --input "$WORK/$s.jsonl" --output "$WORK/$s.h5" >/dev/null
done
"$SLUICE" quantize --int4-rtn --model "$MODEL" --group "$GROUP" --output "$WORK/rtn-g$GROUP"
"$SLUICE" quantize --int4-awq --model "$MODEL" --group "$GROUP" --calib "$WORK/calib.h5" \
    --output "$WORK/awq-g$GROUP" --verbose
"$SLUICE" quantize --int4-eval --model "$MODEL" --compare "$WORK/rtn-g$GROUP,$WORK/awq-g$GROUP" \
    --eval "$WORK/heldout.h5"
