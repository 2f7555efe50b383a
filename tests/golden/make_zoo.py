#!/usr/bin/env python3
"""Make the Hugging Face golden fixtures of sluice's model zoo.

One small random checkpoint per family (Qwen2, Mistral, Phi-3, Gemma,
GPT-NeoX, ...) with awkward shapes, written by transformers' own
save_pretrained (so the tensor names and config keys are what real
checkpoints of that family use), plus golden.json: greedy continuations and
logits that transformers computes for it in fp32.  tests/test_model.c
compares sluice's CPU forward pass with these numbers; tests/test_mpi.c runs
some of them tensor-parallel.

The reference is made as tests/golden/make_golden.py makes the Llama ones
(whose helpers this script imports): weights drawn with fixed seeds at scales
that keep activations O(1) (HF's near-zero init would make every logit look
alike), rounded to the storage dtype first and reloaded through
from_pretrained; fp32 compute, eager attention, no TF32; greedy decoding by
a manual loop cross-checked against model.generate(); prompts whose greedy
argmax has a top1-top2 gap under MIN_MARGIN are redrawn.

What each fixture exercises is in its `why` field and in README.md.

Usage:  python3 tests/golden/make_zoo.py [--only NAME] [OUT_DIR]
Needs torch, transformers>=5, safetensors, numpy.
"""

import argparse
import math
import re
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import (MIN_MARGIN, TORCH_DTYPES, clean_dir, dump_json,  # noqa: E402
                         make_case, setup_torch)

MAX_DIR_BYTES = 900 << 10

# Each fixture: the HF model_type and config overrides, storage dtype, prompt
# lengths (longer than any sliding window, so windows matter).
FIXTURES = [
    dict(name="zoo-qwen2", model_type="qwen2", seed=5101, dtype="float32",
         why="q/k/v biases (o none), GQA 6/2, untied, theta 1e6",
         config=dict(vocab_size=263, hidden_size=72, intermediate_size=120,
                     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                     max_position_embeddings=256, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                     tie_word_embeddings=False, use_sliding_window=False),
         prompt_lens=[17, 1, 3, 9, 33]),
    dict(name="zoo-mistral-window", model_type="mistral", seed=5202, dtype="bfloat16",
         why="sliding window 6 (prompts up to 41 tokens), GQA 4/2, head_dim 20",
         config=dict(vocab_size=277, hidden_size=64, intermediate_size=112,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=20, max_position_embeddings=256, rms_norm_eps=1e-5,
                     sliding_window=6, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         prompt_lens=[19, 1, 5, 8, 41]),
    dict(name="zoo-phi3", model_type="phi3", seed=5303, dtype="float32",
         why="fused qkv_proj and gate_up_proj, GQA 6/3, sliding window 11",
         config=dict(vocab_size=251, hidden_size=72, intermediate_size=104,
                     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                     max_position_embeddings=256, original_max_position_embeddings=256,
                     rms_norm_eps=1e-5, sliding_window=11, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                     pad_token_id=0, bos_token_id=1, eos_token_id=2),
         prompt_lens=[15, 1, 2, 12, 36]),
    dict(name="zoo-gemma", model_type="gemma", seed=5404, dtype="bfloat16",
         why="GeGLU (gelu_pytorch_tanh), (1 + w) RMSNorm, embeddings x sqrt(hidden), "
             "tied, MQA, head_dim 24 != hidden/heads",
         config=dict(vocab_size=307, hidden_size=60, intermediate_size=136,
                     num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                     head_dim=24, max_position_embeddings=256, rms_norm_eps=1e-6,
                     hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                     pad_token_id=0, bos_token_id=2, eos_token_id=1),
         prompt_lens=[16, 1, 2, 9, 30]),
    dict(name="zoo-gpt-neox", model_type="gpt_neox", seed=5505, dtype="float32",
         why="LayerNorm with bias, partial rotary (0.4 of head_dim 20 = 8), parallel "
             "residual with two norms, per-head fused query_key_value, exact GELU, biases",
         config=dict(vocab_size=269, hidden_size=80, intermediate_size=176,
                     num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256, layer_norm_eps=1e-5, hidden_act="gelu",
                     use_parallel_residual=True, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.4},
                     bos_token_id=0, eos_token_id=0),
         prompt_lens=[18, 1, 4, 7, 35]),
    dict(name="zoo-gpt-neox-seq", model_type="gpt_neox", seed=5606, dtype="bfloat16",
         why="GPT-NeoX with use_parallel_residual false, rotary_pct 0.25 (v4 spelling), "
             "gelu_new",
         config=dict(vocab_size=241, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=256, layer_norm_eps=1e-5,
                     hidden_act="gelu_new", use_parallel_residual=False,
                     tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.25},
                     bos_token_id=0, eos_token_id=0),
         legacy_rotary=True,
         prompt_lens=[14, 1, 3, 8, 29]),
    dict(name="zoo-gptj", model_type="gptj", seed=5707, dtype="bfloat16",
         why="parallel attention + MLP from one LayerNorm, interleaved rotary on 6 of 16 "
             "head dims, n_inner null (4 x hidden), biased MLP and LM head",
         config=dict(vocab_size=257, n_embd=64, n_layer=2, n_head=4, rotary_dim=6,
                     n_inner=None, n_positions=256, layer_norm_epsilon=1e-5,
                     activation_function="gelu_new", tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0),
         prompt_lens=[16, 1, 2, 9, 31]),
    dict(name="zoo-gpt2", model_type="gpt2", seed=5808, dtype="bfloat16",
         why="learned positions, Conv1D (in, out) weights with fused c_attn, biases, "
             "tied head, head_dim 12",
         config=dict(vocab_size=283, n_embd=72, n_layer=2, n_head=6, n_inner=None,
                     n_positions=128, layer_norm_epsilon=1e-5,
                     activation_function="gelu_new", bos_token_id=0, eos_token_id=0),
         prompt_lens=[15, 1, 3, 8, 34]),
    dict(name="zoo-falcon-mq", model_type="falcon", seed=5909, dtype="bfloat16",
         why="Falcon-7B layout: multi-query fused query_key_value, parallel attention + MLP "
             "from one LayerNorm, no biases, untied head",
         config=dict(vocab_size=271, hidden_size=80, num_hidden_layers=2,
                     num_attention_heads=5, multi_query=True, parallel_attn=True,
                     new_decoder_architecture=False, bias=False, alibi=False,
                     layer_norm_epsilon=1e-5, tie_word_embeddings=False,
                     max_position_embeddings=256,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                     bos_token_id=1, eos_token_id=2),
         prompt_lens=[17, 1, 2, 10, 30]),
    dict(name="zoo-falcon-new", model_type="falcon", seed=6010, dtype="bfloat16",
         why="Falcon-40B/180B layout: grouped kv (6 heads, 2 kv), per-group fused "
             "query_key_value, ln_attn + ln_mlp, ffn_hidden_size 136, biases on, tied",
         config=dict(vocab_size=263, hidden_size=72, num_hidden_layers=2,
                     num_attention_heads=6, num_kv_heads=2, new_decoder_architecture=True,
                     multi_query=True, parallel_attn=True, bias=True, alibi=False,
                     ffn_hidden_size=136, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                     max_position_embeddings=256,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                     bos_token_id=1, eos_token_id=2),
         prompt_lens=[18, 1, 3, 7, 33]),
    dict(name="zoo-mpt", model_type="mpt", seed=6111, dtype="bfloat16",
         why="ALiBi with MPT's slopes over 6 heads (not a power of two: interleaved), "
             "alibi_bias_max 8, fused Wqkv, no linear biases, exact GELU, tied head",
         config=dict(vocab_size=269, d_model=72, n_layers=2, n_heads=6, max_seq_len=256,
                     layer_norm_epsilon=1e-5, no_bias=True,
                     attn_config={"alibi": True, "alibi_bias_max": 8},
                     bos_token_id=0, eos_token_id=0),
         prompt_lens=[16, 1, 3, 9, 37]),
    dict(name="zoo-bloom", model_type="bloom", seed=6212, dtype="bfloat16",
         why="ALiBi with BLOOM's slopes over 6 heads (4 + 2 extra), LayerNorm after the "
             "embedding, per-head fused query_key_value, biases, tied head",
         config=dict(vocab_size=277, hidden_size=72, n_layer=2, n_head=6,
                     layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2),
         prompt_lens=[15, 1, 2, 11, 35]),
]


def draw_weights(fx, model):
    """Random values for every parameter, by role, rounded to the storage dtype.

    Norm weights 1 + 0.1 N (Gemma stores w of (1 + w): 0.1 N); biases 0.1 N;
    embeddings N(0,1); projections N(0,1) * 0.9 / sqrt(fan_in); the head
    1/sqrt(fan_in). With tied embeddings the final norm is signed N(0,1) so
    greedy does not just echo the last token (see make_golden.py)."""
    gen = torch.Generator().manual_seed(fx["seed"])
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    gemma = fx["model_type"] == "gemma"
    out = {}
    # named_parameters lists a tied tensor once (under the embedding's name)
    for name, p in sorted(model.named_parameters()):
        if name in out or not p.is_floating_point():
            continue
        x = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[0]
        last = leaf.rsplit(".", 1)[-1]
        is_norm = "norm" in last or last.startswith("ln")  # norm_1, ln_f, ln_attn, ...
        # the final norm: not inside a layer, not BLOOM's embedding norm
        final_norm = (is_norm and not re.search(r"\.(layers|h|blocks)\.\d+\.", name)
                      and "embeddings_layernorm" not in name)
        if p.ndim == 1 and is_norm and name.endswith("weight"):
            if tied and final_norm:
                x = x - 1.0 if gemma else x
            else:
                x = 0.1 * x if gemma else 1.0 + 0.1 * x
        elif p.ndim == 1:
            x = 0.1 * x
        elif ("embed" in name and "out" not in name) or name.endswith("wte.weight") \
                or "word_embeddings" in name:
            pass
        elif name.endswith("wpe.weight"):
            x = 0.5 * x
        elif "lm_head" in name or "embed_out" in name:
            x = x / math.sqrt(p.shape[1])
        elif any(k in name for k in (".c_attn.", ".c_proj.", ".c_fc.")):  # Conv1D: (in, out)
            x = x * (0.9 / math.sqrt(p.shape[0]))
        else:
            x = x * (0.9 / math.sqrt(p.shape[1]))
        out[name] = x.to(TORCH_DTYPES[fx["dtype"]])
    return out


def build_fixture(fx, root, device):
    d = os.path.join(root, fx["name"])
    clean_dir(d)
    cfg = AutoConfig.for_model(fx["model_type"], **fx["config"])
    cfg.architectures = [type(AutoModelForCausalLM.from_config(cfg)).__name__]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    weights = draw_weights(fx, model)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    model = model.to(TORCH_DTYPES[fx["dtype"]])
    cfg.dtype = fx["dtype"]
    model.save_pretrained(d, safe_serialization=True)
    if fx.get("legacy_rotary"):
        # transformers 4 spelling of GPT-NeoX's rotary settings
        import json
        p = os.path.join(d, "config.json")
        j = json.load(open(p))
        rp = j.pop("rope_parameters")
        j["rotary_pct"] = rp["partial_rotary_factor"]
        j["rotary_emb_base"] = rp["rope_theta"]
        j["torch_dtype"] = j.pop("dtype", fx["dtype"])
        with open(p, "w") as f:
            f.write(json.dumps(j, indent=2, sort_keys=True) + "\n")
    gc = fx["config"]
    GenerationConfig(bos_token_id=gc.get("bos_token_id", 1),
                     eos_token_id=gc.get("eos_token_id", 2)).save_pretrained(d)
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)

    model, info = AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(k), f"{fx['name']}: {k} {info.get(k)}"
    model = model.to(device).eval()
    sd = model.state_dict()
    for n, t in weights.items():
        assert torch.equal(sd[n].cpu(), t.float()), f"{fx['name']}: {n} not reloaded exactly"
    if model.config.tie_word_embeddings:
        assert torch.equal(model.get_output_embeddings().weight.cpu(),
                           model.get_input_embeddings().weight.cpu()), "head not tied"

    rng = np.random.default_rng(fx["seed"])
    vfx = {"name": fx["name"], "vocab": gc["vocab_size"]}
    cases, all_pos = [], None
    for length in fx["prompt_lens"]:
        case, logits = make_case(model, vfx, rng, length, device)
        if all_pos is None:
            all_pos = [[float(f"{v:.6g}") for v in row] for row in logits.tolist()]
        cases.append(case)
    golden = {
        "model": fx["name"],
        "why": fx["why"],
        "dtype_note": f"weights stored {fx['dtype']}, reference computed in fp32 "
                      f"(HF transformers {transformers.__version__}, torch "
                      f"{torch.__version__.split('+')[0]}, eager attention, no TF32, "
                      f"on {device.type})",
        "min_margin": MIN_MARGIN,
        "cases": cases,
        "all_position_logits_case0": all_pos,
    }
    with open(os.path.join(d, "golden.json"), "w") as f:
        f.write(dump_json(golden) + "\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert size < MAX_DIR_BYTES, f"{d} is {size} bytes"
    worst = min(min(c["greedy_margins"] + c["prompt_argmax_margins"]) for c in cases)
    names = sorted(weights)
    print(f"{fx['name']}: {size} bytes, {len(cases)} cases, min margin {worst:.4g}, "
          f"tensors {names[:3]}...")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    device = setup_torch()
    for fx in FIXTURES:
        if a.only and fx["name"] != a.only:
            continue
        build_fixture(fx, a.out, device)


if __name__ == "__main__":
    main()
