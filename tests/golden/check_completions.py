#!/usr/bin/env python3
"""Compares a sluice completions.h5 with a golden file's greedy ids.

usage: check_completions.py OUTDIR/completions.h5 GOLDEN.json [N_TOKENS]

Prints, per case, whether the greedy continuation equals the golden one and,
if not, the first position where it diverges. Exit status 0 when all match.
Needs h5py (used on the GPU host; CI's tests do the same check in C).
"""
import json
import sys

import h5py


def main():
    path, golden = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else None
    cases = json.load(open(golden))["cases"]
    with h5py.File(path, "r") as f:
        off = f["completion_offsets"][:]
        tok = f["completion_tokens"][:]
    bad = 0
    for i, c in enumerate(cases):
        want = c["greedy_ids"][:n] if n else c["greedy_ids"]
        got = [int(t) for t in tok[off[i]:off[i + 1]]][: len(want)]
        first = next((k for k in range(len(want)) if k >= len(got) or got[k] != want[k]), None)
        if first is None:
            print(f"case {i}: equal ({len(want)} tokens)")
        else:
            bad += 1
            print(f"case {i}: diverges at token {first} (want {want[first]}, "
                  f"got {got[first] if first < len(got) else None})")
    print(f"{len(cases) - bad} of {len(cases)} cases equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
