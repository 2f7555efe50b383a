#!/usr/bin/env python3
"""Cuts text files into prompts of about 1500 characters at line boundaries
and writes them as a JSONL prompts file (one {"prompt": ...} per line) for
`sluice prep`; the accuracy scripts' corpora.

    cut_prompts.py OUT.jsonl [--max-per-file N] [--txt OUT.txt] FILE...

--max-per-file keeps the first N pieces of each file; --txt also writes the
kept pieces, concatenated, as one text corpus (for `sluice eval --corpus`).
"""
import argparse
import json


def pieces(text, size=1500):
    piece = ""
    for line in text.splitlines(keepends=True):
        if len(piece) + len(line) > size and piece:
            yield piece
            piece = ""
        piece += line
    if piece.strip():
        yield piece


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--max-per-file", type=int, default=0)
    ap.add_argument("--txt")
    a = ap.parse_args()
    txt = open(a.txt, "w") if a.txt else None
    with open(a.out, "w") as out:
        for f in a.files:
            for i, p in enumerate(pieces(open(f).read())):
                if a.max_per_file and i >= a.max_per_file:
                    break
                out.write(json.dumps({"prompt": p}) + "\n")
                if txt:
                    txt.write(p)
    if txt:
        txt.close()


if __name__ == "__main__":
    main()
