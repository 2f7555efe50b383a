#!/usr/bin/env python3
"""Writes small pre-quantized FP8 checkpoints of the demo model in the two
Hugging Face FP8 layouts sluice reads, from the layouts' documented tensor
names and dtypes (numpy only: the safetensors files are written by hand; an independent implementation of
the E4M3 rounding, so the test that loads these also checks sluice's own).

  compressed-tensors (llm-compressor "FP8_DYNAMIC"): per-channel
    weight_scale [out, 1] F32, dynamic per-token activations (no input_scale),
    config.json quantization_config.quant_method = "compressed-tensors".
  modelopt (NVIDIA ModelOpt unified HF export, quant_algo FP8): per-tensor
    weight_scale [] F32, static input_scale [] F32, k_proj.k_scale /
    v_proj.v_scale [] F32, hf_quant_config.json, quant_method = "modelopt".

usage: make_fp8_fixtures.py SRC_MODEL_DIR OUT_DIR   (writes OUT_DIR/ct, OUT_DIR/modelopt)
"""
import glob
import json
import os
import shutil
import sys

import numpy as np

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(f):
    u = f.astype(np.float32).view(np.uint32)
    r = ((u >> 16) & 1) + 0x7FFF
    return ((u + r) >> 16).astype(np.uint16)


def e4m3_encode(x):
    """float32 array -> uint8 e4m3fn codes: round to nearest even, saturate."""
    x = np.asarray(x, dtype=np.float32)
    sign = np.where(np.signbit(x), 0x80, 0).astype(np.uint8)
    a = np.abs(x).astype(np.float64)
    # the quantum of a's binade: 2^(e-3) for normals (e >= -6), 2^-9 below
    e = np.floor(np.log2(np.maximum(a, 2.0 ** -20)))
    q = np.maximum(e - 3, -9)
    r = np.round(a / 2.0 ** q) * 2.0 ** q  # numpy rounds half to even
    r = np.minimum(r, 448.0)
    code = np.zeros(a.shape, dtype=np.int64)
    sub = r < 2.0 ** -6
    code[sub] = np.round(r[sub] * 512).astype(np.int64)
    n = ~sub
    en = np.floor(np.log2(np.maximum(r[n], 2.0 ** -6)))
    m = np.round((r[n] / 2.0 ** en - 1) * 8).astype(np.int64)
    code[n] = ((en + 7).astype(np.int64) << 3) | m
    return (code.astype(np.uint8) | sign)


def e4m3_decode(c):
    c = np.asarray(c, dtype=np.uint8)
    e = (c >> 3) & 15
    m = (c & 7).astype(np.float32)
    v = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8) * 2.0 ** (e.astype(np.float32) - 7))
    return np.where(c & 0x80, -v, v).astype(np.float32)


def main():
    src_dir, out_dir = sys.argv[1], sys.argv[2]
    raw = {}
    for f in sorted(glob.glob(os.path.join(src_dir, "*.safetensors"))):
        raw.update(read_raw(f))  # numpy has no bf16: the raw bytes
    ct, mo = {}, {}
    rng = np.random.default_rng(0)
    for name, (dtype, shape, buf) in raw.items():
        if dtype == "BF16":
            f32 = bf16_to_f32(np.frombuffer(buf, dtype=np.uint16).reshape(shape))
        elif dtype == "F32":
            f32 = np.frombuffer(buf, dtype=np.float32).reshape(shape)
        else:
            raise SystemExit(f"{name}: unexpected dtype {dtype}")
        base = name[: -len(".weight")]
        if any(name.endswith(l + ".weight") for l in LINEARS):
            # compressed-tensors: per output channel
            s = (np.abs(f32).max(axis=1, keepdims=True) / np.float32(448.0)).astype(np.float32)
            s[s == 0] = 1.0
            ct[name] = e4m3_encode(f32 * (np.float32(1.0) / s))
            ct[base + ".weight_scale"] = s
            # modelopt: per tensor, static input scale, kv scales
            st = np.float32(np.abs(f32).max() / np.float32(448.0))
            mo[name] = e4m3_encode(f32 * (np.float32(1.0) / st))
            mo[base + ".weight_scale"] = np.array(st, dtype=np.float32)
            mo[base + ".input_scale"] = np.array(0.02 + 0.01 * rng.random(), dtype=np.float32)
            if base.endswith("k_proj"):
                mo[base + ".k_scale"] = np.array(0.05, dtype=np.float32)
            if base.endswith("v_proj"):
                mo[base + ".v_scale"] = np.array(0.01, dtype=np.float32)
        else:
            ct[name] = f32_to_bf16(f32)
            mo[name] = ct[name]
    ct_cfg = {"quant_method": "compressed-tensors", "format": "float-quantized",
              "quantization_status": "compressed",
              "config_groups": {"group_0": {"targets": ["Linear"],
                  "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                              "symmetric": True, "dynamic": False},
                  "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                        "symmetric": True, "dynamic": True}}},
              "ignore": ["lm_head"], "kv_cache_scheme": None}
    mo_cfg = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    hf_q = {"producer": {"name": "modelopt", "version": "fixture"},
            "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                             "exclude_modules": ["lm_head"]}}
    write_raw(src_dir, os.path.join(out_dir, "ct"), ct, ct_cfg)
    write_raw(src_dir, os.path.join(out_dir, "modelopt"), mo, mo_cfg, {"hf_quant_config.json": hf_q})


def read_raw(path):
    """name -> (dtype string, shape, bytes) straight from the safetensors header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
        data = f.read()
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in hdr.items() if k != "__metadata__"}


def write_raw(src_dir, out, tensors, qcfg, extra=None):
    """A safetensors file by hand: numpy has no bf16 / float8 dtypes."""
    os.makedirs(out, exist_ok=True)
    hdr, blobs, off = {}, [], 0
    for k, v in tensors.items():
        if v.dtype == np.uint16:
            dt = "BF16"
        elif v.dtype == np.uint8:
            dt = "F8_E4M3"
        else:
            dt, v = "F32", v.astype(np.float32)
        b = np.ascontiguousarray(v).tobytes()
        hdr[k] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hdr["__metadata__"] = {"format": "pt"}
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    cfg = json.load(open(os.path.join(src_dir, "config.json")))
    cfg["quantization_config"] = qcfg
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "golden_greedy.json"]:
        if os.path.exists(os.path.join(src_dir, f)):
            shutil.copy(os.path.join(src_dir, f), out)
    for name, obj in (extra or {}).items():
        json.dump(obj, open(os.path.join(out, name), "w"), indent=2)


if __name__ == "__main__":
    main()
