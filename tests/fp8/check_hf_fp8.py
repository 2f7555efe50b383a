#!/usr/bin/env python3
# usage (repo root; needs torch + transformers): check_hf_fp8.py N_CHUNKS
# Independent check of the FP8 W8A8 agreement figure: HF transformers in fp32,
# linear layers (not lm_head) fake-quantised per channel (weights) and per
# token (activations) with torch's float8_e4m3fn casts.
import sys, glob, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
d = 'tests/models/tiny-code-llama'
tok = AutoTokenizer.from_pretrained(d)
ref = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
q = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
def fq(x, s):
    return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
for name, mod in q.named_modules():
    if isinstance(mod, torch.nn.Linear) and 'lm_head' not in name:
        w = mod.weight.data
        s = (w.abs().amax(dim=1, keepdim=True) / 448).clamp(min=1e-30)
        mod.weight.data = fq(w, s)
        def hook(m, inp):
            x = inp[0]
            s = (x.abs().amax(dim=-1, keepdim=True) / 448)
            s = torch.where(s > 0, s, torch.ones_like(s))
            return (fq(x, s),)
        mod.register_forward_pre_hook(hook)
files = sorted(glob.glob('tests/**/*.py', recursive=True))
ids = []
for f in files:
    t = tok(open(f).read(), add_special_tokens=False)['input_ids']
    for s in range(0, len(t) - 16, 256):
        ids.append(t[s:s + 256])
ids = ids[:int(sys.argv[1])]
agree = n = 0; kl = 0.0
with torch.no_grad():
    for c in ids:
        x = torch.tensor([c])
        a = ref(x).logits[0]; b = q(x).logits[0]
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item(); n += len(c)
        la, lb = a.log_softmax(-1), b.log_softmax(-1)
        kl += (la.exp() * (la - lb)).sum().item()
print(f'HF fp32 + torch e4m3 fake-quant W8A8: top-1 {100*agree/n:.2f}% ({agree}/{n}), mean KL {kl/n:.3e}')
