#!/usr/bin/env python3
"""bench_hf.py: HF tokenizers' single-threaded encode throughput on the corpus.

Same work as bench_tok.c: one encode() per corpus line, median of N rounds
after one warm-up round. Run with TOKENIZERS_PARALLELISM=false.

    TOKENIZERS_PARALLELISM=false python3 tests/tokenizer/bench_hf.py \
        tests/tokenizer/llama3/tokenizer.json [rounds]
"""
import json
import os
import statistics
import sys
import time

from tokenizers import Tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
path = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
corpus = sys.argv[3] if len(sys.argv) > 3 else "tests/tokenizer/corpus.jsonl"
lines = [json.loads(s) for s in open(corpus, encoding="utf-8")]
nbytes = sum(len(s.encode("utf-8")) for s in lines)
tok = Tokenizer.from_file(path)
times = []
for r in range(rounds + 1):
    t0 = time.perf_counter()
    ntok = 0
    for s in lines:
        ntok += len(tok.encode(s).ids)
    if r:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(f"hf {path}: {len(lines)} lines, {nbytes / 1e6:.2f} MB, {ntok} tokens; median of {rounds}: "
      f"{med:.4f} s = {nbytes / 1e6 / med:.2f} MB/s, {ntok / med:.0f} tokens/s")
