#!/usr/bin/env python3
"""Builds an AutoAWQ-format INT4 checkpoint from a plain Llama checkpoint.

A test fixture writer that follows AutoAWQ's published "gemm" layout
(WQLinear_GEMM) without AutoAWQ itself (numpy + safetensors only):

  <module>.qweight  int32 (in, out/8)    8 nibbles per word along out; nibble i
                                         of word c holds column 8c + ORDER[i],
                                         ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
  <module>.qzeros   int32 (in/g, out/8)  zero points, packed the same way
  <module>.scales   fp16  (in/g, out)
  W^T[k, o] = (q[k, o] - zeros[k // g, o]) * scales[k // g, o]

The quantisation is AutoAWQ's round-to-nearest asymmetric group quantiser
(no activation-aware scaling: the layout is what is under test). config.json
gains quantization_config {quant_method awq, bits 4, group_size, zero_point,
version gemm, modules_to_not_convert}.

With --ref DIR it also writes the dequantised model as a plain F32 checkpoint
(the same config without quantization_config): the reference a loader's
weights and logits are compared against.

usage: make_awq_fixture.py --model SRC --out DIR [--ref DIR] [--group 128]
                           [--not-convert layers.7.mlp,...]
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np
from safetensors.numpy import save_file

ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_safetensors(path):
    """name -> float32 / int array; handles BF16, which numpy lacks."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw = data[a:b]
        dt, shape = meta["dtype"], meta["shape"]
        if dt == "BF16":
            v = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            v = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "F32":
            v = np.frombuffer(raw, dtype="<f4").copy()
        else:
            raise SystemExit(f"{path}: tensor {name}: dtype {dt} not handled")
        out[name] = v.reshape(shape)
    return out


def read_checkpoint(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(idx))["weight_map"].values()))
             if os.path.exists(idx) else ["model.safetensors"])
    t = {}
    for f in files:
        t.update(read_safetensors(os.path.join(d, f)))
    return t


def quantize(w, g):
    """AutoAWQ's pseudo_quantize_tensor (zero_point=True) on w (out, in):
    returns q (out, in) uint8, zeros (out, in/g) uint8, scales (out, in/g) fp16."""
    out_f, in_f = w.shape
    wg = w.reshape(out_f, in_f // g, g).astype(np.float32)
    mx, mn = wg.max(axis=2), wg.min(axis=2)
    scales = (np.maximum(mx - mn, 1e-5) / 15.0).astype(np.float16)
    s32 = scales.astype(np.float32)
    zeros = np.clip(-np.round(mn / s32), 0, 15)
    q = np.clip(np.round(wg / s32[:, :, None]) + zeros[:, :, None], 0, 15)
    return q.reshape(out_f, in_f).astype(np.uint8), zeros.astype(np.uint8), scales


def pack_cols(v):
    """v (rows, cols) values 0..15 -> int32 (rows, cols/8) in AWQ's order."""
    rows, cols = v.shape
    v = v.astype(np.uint32).reshape(rows, cols // 8, 8)
    word = np.zeros((rows, cols // 8), dtype=np.uint32)
    for i in range(8):
        word |= v[:, :, ORDER[i]] << np.uint32(4 * i)
    return word.view(np.int32)


def dequant(q, zeros, scales, g):
    out_f, in_f = q.shape
    s = scales.astype(np.float32)
    w = (q.reshape(out_f, in_f // g, g).astype(np.float32) - zeros[:, :, None].astype(np.float32))
    return (w * s[:, :, None]).reshape(out_f, in_f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--not-convert", default="")
    a = ap.parse_args()
    skip = [s for s in a.not_convert.split(",") if s]
    src = read_checkpoint(a.model)
    awq, ref = {}, {}
    for name, t in src.items():
        mod = name[: -len(".weight")] if name.endswith(".weight") else None
        if mod and mod.split(".")[-1] in LINEARS and not any(s in mod for s in skip):
            q, z, s = quantize(t, a.group)
            awq[mod + ".qweight"] = pack_cols(np.ascontiguousarray(q.T))
            awq[mod + ".qzeros"] = pack_cols(np.ascontiguousarray(z.T))
            awq[mod + ".scales"] = np.ascontiguousarray(s.T)
            ref[name] = dequant(q, z, s, a.group)
        else:
            awq[name] = t.astype(np.float32)
            ref[name] = t.astype(np.float32)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    for d, tensors, quant in ((a.out, awq, True), (a.ref, ref, False)):
        if not d:
            continue
        os.makedirs(d, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  os.path.join(d, "model.safetensors"))
        c = dict(cfg)
        if quant:
            c["quantization_config"] = {
                "quant_method": "awq", "bits": 4, "group_size": a.group, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": skip or None}
        json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)
        for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            if os.path.exists(os.path.join(a.model, f)):
                shutil.copy(os.path.join(a.model, f), d)


if __name__ == "__main__":
    main()
