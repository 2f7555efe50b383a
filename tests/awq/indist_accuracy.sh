#!/usr/bin/env bash
# FP8 and INT4 accuracy of the demo model on text of its training
# distribution (docs/ACCURACY.md, "In-distribution text"): the first four
# ~1500-character pieces of four Python standard-library modules, which the
# demo model continues with perplexity ~1.2 (it was trained on code of this
# kind; this is NOT held-out text). All on the CPU backend, ~15 minutes on
# two cores. The modules are read from the running python3 (3.11.7 for the
# recorded figures).
#
#   usage: tests/awq/indist_accuracy.sh [BUILD] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
WORK=${2:-$BUILD/indist-accuracy}
SLUICE=$BUILD/sluice
MODEL=tests/models/tiny-code-llama
mkdir -p "$WORK"

# the modules' files, from the running python3
mapfile -t MODS < <(python3 -c 'import argparse, json.decoder, shutil, textwrap
for m in (argparse, json.decoder, shutil, textwrap): print(m.__file__)')
python3 tests/awq/cut_prompts.py "$WORK/std.jsonl" --max-per-file 4 --txt "$WORK/std.txt" "${MODS[@]}"
# calibration: as tests/awq/int4_accuracy.sh (this repository's code)
python3 tests/awq/cut_prompts.py "$WORK/calib.jsonl" tests/golden/make_golden.py

for s in std calib; do
    "$SLUICE" prep --model "$MODEL" --input "$WORK/$s.jsonl" --output "$WORK/$s.h5" >/dev/null
done
"$SLUICE" eval --model "$MODEL" --corpus "$WORK/std.txt" --table
"$SLUICE" quantize --int4-rtn --model "$MODEL" --group 128 --output "$WORK/rtn-g128"
"$SLUICE" quantize --int4-awq --model "$MODEL" --group 128 --calib "$WORK/calib.h5" \
    --output "$WORK/awq-g128"
"$SLUICE" quantize --int4-eval --model "$MODEL" --compare "$WORK/rtn-g128,$WORK/awq-g128" \
    --eval "$WORK/std.h5"
