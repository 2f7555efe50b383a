#!/usr/bin/env python3
"""HF transformers baseline for `sluice bench`: generate() throughput on the
same synthetic workload (fixed input/output lengths, eos ignored, greedy),
random weights of the same architecture (configs/arch/NAME.json), bf16.

usage: hf_generate_bench.py ARCH_JSON --isl 128 --osl 128 --requests 1024 --batch 256
Prints output tokens/s. Needs torch + transformers (the GPU host has them).
"""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch")
    ap.add_argument("--isl", type=int, default=128)
    ap.add_argument("--osl", type=int, default=128)
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--output")
    a = ap.parse_args()
    cfg_d = {k: v for k, v in json.load(open(a.arch)).items() if not k.startswith("_")}
    cfg = transformers.AutoConfig.for_model(cfg_d.pop("model_type"), **cfg_d)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    done, t_total = 0, 0.0
    n_batches = (a.requests + a.batch - 1) // a.batch
    for b in range(n_batches + 1):  # batch 0 warms up and is not timed
        bs = min(a.batch, a.requests - (b - 1) * a.batch) if b else a.batch
        ids = torch.randint(3, cfg.vocab_size, (bs, a.isl), device="cuda", generator=g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=a.osl, min_new_tokens=a.osl, eos_token_id=None,
                             pad_token_id=0)
        torch.cuda.synchronize()
        if b:
            t_total += time.perf_counter() - t0
            done += (out.shape[1] - a.isl) * bs
    res = {"impl": "hf-transformers " + transformers.__version__, "arch": a.arch,
           "isl": a.isl, "osl": a.osl, "requests": a.requests, "batch": a.batch,
           "output_tokens_per_s": done / t_total, "seconds": t_total,
           "gpu": torch.cuda.get_device_name()}
    print(json.dumps(res))
    if a.output:
        json.dump(res, open(a.output, "w"), indent=2)


if __name__ == "__main__":
    main()
