#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` report by kernel.

usage: ncu_table.py REPORT.csv [LABEL]

Prints each kernel family's share of the captured GPU time (one step's worth
of launches), its launch count and total microseconds, largest first.
"""
import csv
import re
import sys


def short(name):
    name = re.sub(r"\(.*", "", name)            # drop the argument list
    name = re.sub(r"<.*", "", name)             # and template arguments
    name = name.replace("void ", "").strip()
    if "gemm" in name.lower() or name.startswith(("sm90_", "sm80_", "cutlass", "nvjet")):
        return "cuBLASLt GEMM (" + name[:40] + ")"
    return name


def main():
    rows = list(csv.reader(open(sys.argv[1], encoding="utf-8", errors="replace")))
    head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    h = rows[head]
    ki, mi, ui, vi = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Unit"), h.index("Metric Value")
    tot = {}
    cnt = {}
    for r in rows[head + 1:]:
        if len(r) <= vi or r[mi] != "gpu__time_duration.sum":
            continue
        v = float(r[vi].replace(",", ""))
        v = {"ns": v / 1e3, "nsecond": v / 1e3, "us": v, "usecond": v, "ms": v * 1e3, "msecond": v * 1e3}.get(r[ui], v)
        k = short(r[ki])
        tot[k] = tot.get(k, 0.0) + v
        cnt[k] = cnt.get(k, 0) + 1
    all_us = sum(tot.values())
    label = sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]
    print(f"{label}: {sum(cnt.values())} kernels, {all_us / 1e3:.2f} ms of GPU time")
    for k in sorted(tot, key=tot.get, reverse=True)[:12]:
        print(f"  {100 * tot[k] / all_us:5.1f}%  {tot[k] / 1e3:8.2f} ms  {cnt[k]:5d}x  {k}")


if __name__ == "__main__":
    main()
