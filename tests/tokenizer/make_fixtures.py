#!/usr/bin/env python3
"""make_fixtures.py: golden data for sluice's C tokenizer (tests/test_tokenizer.c).

Builds one small tokenizer.json per supported family, a deterministic corpus of
hard cases, and the ids / decoded text that Hugging Face `tokenizers` produces
for every corpus line. The C test must reproduce them exactly.

    pip install tokenizers transformers sentencepiece tiktoken protobuf
    python3 tests/tokenizer/make_fixtures.py            # from the repo root

Layout written under tests/tokenizer/:
    corpus.jsonl                 one JSON string per line (CRLF, NEL... survive)
    manifest.json                families: tokenizer path, golden files, specials
    <family>/tokenizer.json      the tokenizer under test
    <family>/ids.txt             encode(line, add_special_tokens=False).ids,
                                 space separated, one corpus line per text line
    <family>/decoded.jsonl       per line [decode(ids_special), decode(ids_special,
                                 skip_special_tokens=True)]; 0 means "equal to the
                                 corpus line" (keeps the files small)
The ids with specials are prefix + ids + suffix (asserted here for every line),
so only the prefix/suffix go in the manifest.

o200k_base: converted from tiktoken's ranks only when they can be loaded offline
(TIKTOKEN_CACHE_DIR, e.g. /opt/tiktoken_cache on the GPU host); otherwise that
family is skipped, see OPTIONAL O200K below.
"""
import json
import os
import random
import shutil
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEMO = os.path.join(ROOT, "tests", "models", "tiny-code-llama", "tokenizer.json")
SEED = 20240611
N_LINES = 2500

LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K_PAT = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])


# ----------------------------------------------------------------------------
# corpus

WORDS = ("the of and to in is was for on that with as by at from it this be are "
         "have not but had his they you were her she which or all one would there "
         "their what so up out if about who get go me when make can like time no "
         "just him know take people into year your good some could them see other "
         "than then now look only come its over think also back after use two how "
         "our work first well way even new want because any these give day most us "
         "tokenizer merges vocabulary encoding unbelievable internationalization "
         "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis").split()
CONTRACTIONS = ["don't", "DON'T", "it'S", "It's", "they're", "THEY'RE", "we've", "I'm",
                "you'll", "he'd", "He'D", "o'clock", "rock'n'roll", "'s", "'S", "''",
                "can't", "won'T", "y'all", "it\u2019s", "ſ'ſ", "x'ſ"]
UNICODE = ["日本語のテキスト", "中文分词测试", "한국어 문장입니다", "ภาษาไทย", "हिन्दी पाठ",
           "العربية نص", "עברית טקסט", "Ελληνικά", "русский текст", "Ünïcödé", "naïve café",
           "e\u0301\u0301", "a\u0308\u0323", "\u0301lead", "ﬁﬂ", "Ⅻ", "①②③", "½¾", "²³",
           "İstanbul", "ß", "ǅ", "K", "Å", "\u00a0nbsp\u00a0", "zero\u200bwidth", "\ufeffbom",
           "zw\u200dj", "nb\u202fsp", "\u2028ls\u2029ps", "nel\u0085x", "\u3000ideo",
           "\u200f\u202ertl\u202c", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🧑🏿‍💻",
           "\U0001d54f\U0001d552", "\U00010348", "ⓐⓑ", "・", "〜", "‐—–", "…", "«»", "€£¥",
           "\u00ad", "\x7f", "\x1b[0m", "\u2060", "\ue000"]
CODE = ["def f(x):\n    return x**2", "for (int i = 0; i < n; i++) {", "    }\n}",
        "if (a != b && c >= d) { x += 1; }", "#include <stdio.h>", "    \tif x:\n\t\tpass",
        "print(\"hello, world\")", "x = [1, 2, 3]  # comment", "SELECT * FROM t WHERE id=42;",
        "fn main() -> Result<(), Box<dyn Error>> {", "a->b; c::d; e..=f", "```python",
        "<div class=\"x\">&amp;</div>", "$ ls -la | grep foo > out.txt 2>&1",
        "0x7fffffff 1e-10 3.14159 1,000,000", "\"\\n\\t\\\\\"", "/* */ // -- ## !! ??"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\r\n", "\n\n", "\r", " \n ", "      ", "\u00a0",
          " \t ", "\n    ", "\r\n\r\n"]
SPECIAL_TEXT = ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|im_start|>",
                "<|im_end|>", "<s>", "</s>", "<unk>", "<pad>", "<mask>", "[WORD]", "<0x41>",
                "<|endoftext", "endoftext|>", "<<s>>", "hello world", "Qwen", "<|reserved_7|>"]


def _digits(rng):
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14)))


def _piece(rng):
    r = rng.random()
    if r < 0.40:
        w = rng.choice(WORDS)
        return w.upper() if rng.random() < 0.1 else (w.capitalize() if rng.random() < 0.2 else w)
    if r < 0.50:
        return rng.choice(CONTRACTIONS)
    if r < 0.62:
        return rng.choice(UNICODE)
    if r < 0.70:
        return _digits(rng)
    if r < 0.78:
        return rng.choice(CODE)
    if r < 0.86:
        return rng.choice(SPECIAL_TEXT)
    if r < 0.95:
        return rng.choice(".,;:!?-()[]{}\"'`~@#$%^&*_=+|\\/<>")
    return rng.choice(SPACES)


def make_corpus():
    rng = random.Random(SEED)
    lines = [
        "", " ", "  ", "\t", "\n", "\r\n", "a", " a", "a ", "  leading and trailing  ",
        "Hello world", "Hello, world!", "DON'T STOP. it'S fine, y'all'd've", "I'M HE'LL WE'D",
        "1234567890 12345 1 22 333 4444", "tabs\tand\tcrlf\r\nline", "trailing space ",
        "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
        "<s> hello </s>", "<s>hello</s>", "x <mask> y", "x<mask>y", "a [WORD] b", "a[WORD]b",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "say hello world please",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "👨‍👩‍👧‍👦 family 👍🏽👍🏿", "e\u0301 vs é", "\u00a0\u00a0x\u200b\u200by", "日本語 and English",
        "ab" * 300, "x" * 1000, "9" * 200, " " * 150 + "end", "\n" * 20, "中" * 300,
        "The quick brown fox jumps over the lazy dog. " * 8, "<0x41><0xE4>",
        "\u0085\u2028\u2029\u000b\u000c", "İı ǅǆ ΣΑΣ σς ﬃ", "ab\r\n\r\n  \r\n\tcd",
    ]
    while len(lines) < N_LINES:
        k = rng.randint(1, 18)
        seps = ["", " ", " ", " ", "  ", "\t", "\n"]
        lines.append("".join(_piece(rng) + rng.choice(seps) for _ in range(k)))
    return lines


# ----------------------------------------------------------------------------
# tokenizers of each family

def train_bytelevel(corpus, pattern, ignore_merges, specials, vocab=2500):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, tr)
    return tok


def fam_llama3(corpus):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"] + [f"<|reserved_{i}|>" for i in range(8)]
    tok = train_bytelevel(corpus, LLAMA3_PAT, True, specials)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("[WORD]", single_word=True, normalized=False)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok


def fam_qwen2(corpus):
    tok = train_bytelevel(corpus, QWEN2_PAT, False, ["<|endoftext|>", "<|im_start|>"], 2000)
    tok.add_special_tokens([AddedToken("<|im_end|>", rstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("Qwen", normalized=True)])
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def fam_o200k_style(corpus):
    tok = train_bytelevel(corpus, O200K_PAT, True, ["<|endoftext|>", "<|endofprompt|>"], 3000)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_sentencepiece_bpe(corpus):
    """A Llama-2-like BPE: <unk> <s> </s>, then <0x00>..<0xFF>, then merges."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tr = trainers.BpeTrainer(vocab_size=2200, special_tokens=["<unk>", "<s>", "</s>"],
                             limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(corpus, tr)
    js = json.loads(tok.to_str())
    old = sorted(js["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {}
    for t, _ in old[:3]:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in old[3:]:
        if t not in vocab:
            vocab[t] = len(vocab)
    js["model"]["vocab"] = vocab
    return js


def sp_finish(js, metaspace):
    if metaspace:
        js["normalizer"] = None
        js["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                               "split": True}
        js["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
    else:
        js["pre_tokenizer"] = None
        js["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(js))
    if metaspace:
        tok.add_special_tokens([AddedToken("<pad>", lstrip=True, rstrip=True, special=True,
                                           normalized=False)])
    else:
        tok.add_tokens([AddedToken("hello world", normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def gpt2_string_merges():
    js = json.load(open(DEMO, encoding="utf-8"))
    js["model"]["merges"] = [" ".join(m) for m in js["model"]["merges"]]
    return Tokenizer.from_str(json.dumps(js, ensure_ascii=False))


def o200k_real():
    """OPTIONAL O200K: needs tiktoken's o200k_base ranks cached offline."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or "/opt/tiktoken_cache"
    if not os.path.isdir(cache):
        return None
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    try:
        import tiktoken
        from transformers.integrations.tiktoken import TikTokenConverter  # noqa
        enc = tiktoken.get_encoding("o200k_base")
    except Exception as e:  # no cached ranks: skip, never download
        print("o200k skipped:", e, file=sys.stderr)
        return None
    from transformers.convert_slow_tokenizer import TikTokenConverter as Conv
    conv = Conv(vocab_file=None, pattern=enc._pat_str,
                additional_special_tokens=list(enc._special_tokens))
    conv.extract_vocab_merges_from_model = lambda _f: _bpe_from_ranks(enc._mergeable_ranks)
    return conv.converted()


def _bpe_from_ranks(ranks):
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    b2u = bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab, merges = {}, []
    for tok, rank in ranks.items():
        vocab[enc(tok)] = rank
        if len(tok) == 1:
            continue
        local = []
        for i in range(1, len(tok)):
            a, b = tok[:i], tok[i:]
            if a in ranks and b in ranks and (a + b) in ranks:
                local.append((a, b, rank))
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    return vocab, [(enc(a), enc(b)) for a, b, _ in merges]


# ----------------------------------------------------------------------------
# goldens

def write_family(name, tok, corpus, out_root, tok_json_path=None, golden_from=None):
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    if tok_json_path is None:
        tok_json_path = os.path.join(d, "tokenizer.json")
        tok.save(tok_json_path, pretty=False)
    tok = Tokenizer.from_file(tok_json_path)  # test what we wrote, as the C code reads it
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    entry = {"name": name, "tokenizer": rel(tok_json_path),
             "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
    if golden_from:
        entry.update({k: golden_from[k] for k in ("ids", "decoded", "prefix", "suffix")})
    prefix = suffix = None
    ids_lines, dec_lines = [], []
    for line in corpus:
        plain = tok.encode(line, add_special_tokens=False).ids
        full = tok.encode(line).ids
        if prefix is None and plain:
            n = len(full) - len(plain)
            i = next((k for k in range(len(full) + 1) if full[k:k + len(plain)] == plain), 0)
            prefix, suffix = full[:i], full[i + len(plain):]
            assert len(prefix) + len(suffix) == n
        if prefix is not None:
            assert full == prefix + plain + suffix, (name, line)
        d_full = tok.decode(full, skip_special_tokens=False)
        d_skip = tok.decode(full, skip_special_tokens=True)
        ids_lines.append(" ".join(map(str, plain)))
        dec_lines.append(json.dumps([0 if d_full == line else d_full,
                                     0 if d_skip == line else d_skip], ensure_ascii=False))
    for line in corpus:  # lines seen before prefix/suffix were known
        assert tok.encode(line).ids == prefix + tok.encode(line, add_special_tokens=False).ids + suffix
    if golden_from:
        got = open(os.path.join(ROOT, golden_from["ids"]), encoding="utf-8").read().split("\n")
        assert got[:len(ids_lines)] == ids_lines, name + ": goldens differ from " + golden_from["name"]
        return entry
    with open(os.path.join(d, "ids.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(ids_lines) + "\n")
    with open(os.path.join(d, "decoded.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(dec_lines) + "\n")
    entry.update({"ids": rel(os.path.join(d, "ids.txt")),
                  "decoded": rel(os.path.join(d, "decoded.jsonl")),
                  "prefix": prefix, "suffix": suffix})
    return entry


def main():
    corpus = make_corpus()
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for line in corpus:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    train = corpus[::2]
    fams = []
    gpt2_dir = os.path.join(HERE, "gpt2")
    os.makedirs(gpt2_dir, exist_ok=True)
    shutil.copyfile(DEMO, os.path.join(gpt2_dir, "tokenizer.json"))
    gpt2 = write_family("gpt2", None, corpus, HERE, os.path.join(gpt2_dir, "tokenizer.json"))
    fams.append(gpt2)
    fams.append(write_family("gpt2_string_merges", gpt2_string_merges(), corpus, HERE,
                             golden_from=gpt2))
    fams.append(write_family("llama3", fam_llama3(train), corpus, HERE))
    fams.append(write_family("qwen2", fam_qwen2(train), corpus, HERE))
    fams.append(write_family("o200k_style", fam_o200k_style(train), corpus, HERE))
    sp = train_sentencepiece_bpe(train)
    fams.append(write_family("llama2", sp_finish(json.loads(json.dumps(sp)), False), corpus, HERE))
    fams.append(write_family("sp_metaspace", sp_finish(sp, True), corpus, HERE))
    # OPTIONAL O200K: the real o200k_base (large, ~25 MB: written to tests/tokenizer/o200k/,
    # not committed; the C test runs it only when the directory exists).
    o2 = o200k_real()
    if o2 is not None:
        fams.append(write_family("o200k", o2, corpus, HERE))
    with open(os.path.join(HERE, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"corpus": "tests/tokenizer/corpus.jsonl", "lines": len(corpus),
                   "families": fams}, f, indent=1)
    print("wrote", len(fams), "families,", len(corpus), "lines")


if __name__ == "__main__":
    main()
