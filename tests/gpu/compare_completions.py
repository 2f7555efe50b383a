#!/usr/bin/env python3
"""Compares the greedy completions of two sluice runs of the same prompts.

usage: compare_completions.py A/completions.h5 B/completions.h5 [LABEL]

Prints how many completions are token-for-token identical and, for those that
are not, where the first difference falls. Exit status 0 when all are equal.
"""
import sys

import h5py
import numpy as np


def load(path):
    with h5py.File(path, "r") as f:
        idx = f["prompt_index"][:]
        off = f["completion_offsets"][:]
        tok = f["completion_tokens"][:]
    return {int(i): tok[off[k]:off[k + 1]] for k, i in enumerate(idx)}


def main():
    a, b = load(sys.argv[1]), load(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else "completions"
    if sorted(a) != sorted(b):
        print(f"{label}: different prompt sets ({len(a)} vs {len(b)})")
        return 1
    firsts, n_tok, n_same_tok = [], 0, 0
    for i in a:
        x, y = a[i], b[i]
        n = min(len(x), len(y))
        d = np.nonzero(x[:n] != y[:n])[0]
        first = int(d[0]) if len(d) else (n if len(x) != len(y) else None)
        n_tok += max(len(x), len(y))
        n_same_tok += first if first is not None else len(x)
        if first is not None:
            firsts.append(first)
    same = len(a) - len(firsts)
    msg = f"{label}: {same}/{len(a)} identical, {n_same_tok}/{n_tok} tokens before any difference"
    if firsts:
        msg += f"; first differences at positions min {min(firsts)} median {int(np.median(firsts))}"
    print(msg)
    return 0 if not firsts else 1


if __name__ == "__main__":
    sys.exit(main())
