#!/usr/bin/env python3
"""Tokenizer fixtures: small byte-level BPE tokenizers trained with the tokenizers library in the
configurations of GPT-2, Qwen2/Qwen3, Llama-3, GPT-NeoX/OLMoE and gpt-oss (o200k), saved as tokenizer.json with
golden.json holding the ids and decoded text tokenizers produces for a corpus of test strings.

Usage: python3 tools/golden/make_tokenizer_fixtures.py [--out tests/fixtures/tokenizers] [--only NAME...]
"""
import argparse
import json
import os
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# tiktoken's o200k_base split (tiktoken_ext/openai_public.py), which gpt-oss's tokenizer.json
# carries as its Split pre-tokenizer: case-aware words, contractions after either case,
# \p{M} inside words, digits in threes, punctuation runs that take trailing newlines and '/'.
O200K = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
# gpt-oss's special tokens (its tokenizer_config.json's added_tokens_decoder, 199998-200018,
# without the reserved ones)
GPT_OSS_SPECIAL = ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>",
                   "<|channel|>", "<|start|>", "<|end|>", "<|message|>", "<|call|>",
                   "<|endofprompt|>"]

TRAIN = """The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it? We'll see.
Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus Köln und München!
Le renard brun rapide saute par-dessus le chien paresseux. Où est la bibliothèque ? Très bien.
快速的棕色狐狸跳过了懒狗。我们明天见。这是一个测试句子。
素早い茶色の狐が怠け者の犬を飛び越えます。今日はいい天気ですね。
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!
الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
int main(void) { printf("%d\\n", 42); return 0; }
for (int i = 0; i < 100; i++) { sum += a[i] * b[i]; }
Numbers: 0 1 12 123 1234 12345 3.14159 2,718 1e-10 100000000 and 2026-11-22.
Emoji time 😀 👍🏽 ❤️ 👨‍👩‍👧‍👦 🇩🇪 🇯🇵 done.
They're here, you've seen it, I'm sure, he'd know, she'll come, don't worry.
THE END? NO, IT'S NOT! WE'LL BE BACK.
Tabs\tand\tspaces    and
newlines

and more text at the end of the training corpus.
""".splitlines()

CASES = [
    "", " ", "   ", "\t", "\n", "\r\n", "\n\n\n", "  leading", "trailing  ", " \t mixed \n whitespace \r\n ",
    "Hello world", "Hello, world!", "hello   world", "The quick brown fox jumps over the lazy dog.",
    "don't", "I'M HERE", "we'll", "they'VE", "it's it'S IT'S", "o'clock",
    "Grüße aus Köln", "Gru\u0308ße (NFD)", "caf\u00e9 vs cafe\u0301", "Ελληνικά κείμενα", "Привет, мир!",
    "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "快速的棕色狐狸", "素早い茶色の狐", "한국어 텍스트",
    "😀", "👍🏽👍🏿", "👨‍👩‍👧‍👦 family", "🇩🇪🇯🇵🇺🇸", "❤️ heart", "a\u0301e\u0300i\u0302",
    "0", "1234567890123", "3.14159265358979", "1,000,000 and 1e-10", "year 2026-11-22",
    "def f(x):\n    return x * 2\n", "int main(void) {\n\tprintf(\"hi\\n\");\n}\n",
    "if (a && b || !c) { x += 1; }", "    indented\n        more\n",
    "hello<|endoftext|>world", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|>Hello<|end_of_text|>", "text <think> inner </think> more", "a  <think>b", "<think>",
    "word<think>word", "x <sep> y", "<sep>", "a<sep>b",
    "mixed 日本語 and English and emoji 🎉 together",
]


# More strings for the fixtures added later (the first six keep CASES alone, so their goldens
# stay as they were): prefix spaces, normalized added tokens matched in NFC text.
EXTRA_CASES = {
    "prefix": ["hello world", " already spaced", "\nnewline first", "a<think>b c", "<think>x",
               "x<think>", "x <think> y", "caf\u00e9", "cafe\u0301", "xcafe\u0301y",
               "cafe\u0301<think>cafe\u0301", "Cafe\u0301 CAF\u00c9 cafe\u0301s",
               "<think>cafe\u0301</think>", "e\u0301<think>", "<|im_start|>user\nhi<|im_end|>",
               "\u00c5ngstr\u00f6m A\u030angstro\u0308m", "mid<|endoftext|>text"],
    # what o200k's split does differently: case changes inside words, contractions after
    # capitals, combining marks, '/' and newlines after punctuation, harmony's chat format
    "o200k": ["HelloWorld", "CamelCaseWord XMLHttpRequest iPhone", "DON'T He's THEY'RE we'Ll",
              "path/to/file.txt", "a//b", "end.\n\nnext", "x = y;\n", "http://example.com/a?b=c",
              "na\u0308ive Cafe\u0301 \u0938\u094d\u0924\u0947", "1234567 12,345.678",
              "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>analysis"
              "<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
              "<|startoftext|>hi<|call|>", "\u01c5ungla \u01c8ubljana \u02b0aspirated",
              "ABCdef abcDEF ABC def"],
}


def train(pre, normalizer, special, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAIN * 3, trainer)
    return tok


def split_pre(pattern):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def fixtures():
    out = {}
    t = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None, ["<|endoftext|>"])
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.add_tokens([AddedToken("<sep>", single_word=True, normalized=False)])
    out["gpt2"] = t

    t = train(split_pre(QWEN2), normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    t.add_tokens([AddedToken("<think>", special=False, normalized=False),
                  AddedToken("</think>", special=False, normalized=False)])
    out["qwen2"] = t

    t = train(split_pre(LLAMA3), None, ["<|begin_of_text|>", "<|end_of_text|>"], ignore_merges=True)
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    t.add_tokens([AddedToken("<sep>", rstrip=True, normalized=False)])
    out["llama3"] = t

    t = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None,
              ["<|endoftext|>", "<|padding|>"])
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.add_tokens([AddedToken("<think>", special=False, lstrip=True, normalized=False)])
    out["olmoe"] = t

    # add_prefix_space on the ByteLevel after a Split (every Split piece gets the space) and
    # normalized added tokens under NFC (matched by their NFC form in the NFC text, after the
    # tokens that are not normalized)
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    t = train(pre, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    t.add_tokens([AddedToken("<think>", special=False, normalized=False),
                  AddedToken("cafe\u0301", special=False, normalized=True),
                  AddedToken("A\u030angstr", special=False, normalized=True, lstrip=True),
                  AddedToken("</think>", special=False, normalized=True, rstrip=True)])
    out["qwen2_prefix"] = t
    # add_prefix_space on a lone ByteLevel with its regex (every text between added tokens gets
    # the space), no normalizer: normalized tokens matched as written, after the others
    t = train(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), None,
              ["<|endoftext|>"])
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.add_tokens([AddedToken("<think>", special=False, normalized=True),
                  AddedToken("nk>", special=False, normalized=False),
                  AddedToken("caf\u00e9", special=False, normalized=True, single_word=True)])
    out["gpt2_prefix"] = t
    # gpt-oss: o200k's split then byte-level, no normalizer, harmony's special tokens (a small
    # vocabulary trained here: the published tokenizer.json is ~27 MB)
    t = train(split_pre(O200K), None, GPT_OSS_SPECIAL)
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    out["o200k"] = t
    # SentencePiece-style BPE with byte fallback, as Mixtral's tokenizer.json (legacy normalizer
    # form) and as newer Llama/Mistral files (Metaspace pre-tokenizer and decoder)
    for name, legacy in (("mixtral", True), ("metaspace", False)):
        t = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
        if legacy:
            t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                 normalizers.Replace(" ", "\u2581")])
            t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        else:
            t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                       split=False)
            t.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(
                replacement="\u2581", prepend_scheme="first", split=False)])
        trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, show_progress=False,
                                      special_tokens=["<unk>", "<s>", "</s>"])
        # train on Latin text only, so other scripts and emoji take the byte fallback
        t.train_from_iterator([l for l in TRAIN if l.isascii() or "ü" in l] * 3, trainer)
        spec = json.loads(t.to_str())
        vocab = spec["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        t = Tokenizer.from_str(json.dumps(spec))
        bos = t.token_to_id("<s>")
        t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                         special_tokens=[("<s>", bos)])
        out[name] = t
    return out


# tokenizer_config.json per fixture (expertd does not read it; it makes each directory loadable by
# transformers the way a model's files are): bos/eos and whether BOS is prepended
CONFIGS = {
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", add_bos_token=False),
    "qwen2": dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                  add_bos_token=False),
    "llama3": dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
    "olmoe": dict(bos_token=None, eos_token="<|endoftext|>", pad_token="<|padding|>",
                  add_bos_token=False),
    "mixtral": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True),
    "metaspace": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True),
    "qwen2_prefix": dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         add_bos_token=False),
    "gpt2_prefix": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", add_bos_token=False),
    "o200k": dict(bos_token="<|startoftext|>", eos_token="<|return|>", pad_token="<|endoftext|>",
                  add_bos_token=False),
}
EXTRA = {"qwen2_prefix": "prefix", "gpt2_prefix": "prefix", "o200k": "o200k"}


def added_tokens(path):
    """Every added token with its flags, as tokenizer.json on disk has them."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    return [{k: t[k] for k in ("id", "content", "special", "lstrip", "rstrip", "single_word",
                               "normalized")} for t in spec["added_tokens"]]


def check_transformers(d, golden):
    """Load the directory back with transformers and compare with the tokenizers goldens."""
    try:
        import transformers
    except ImportError:
        return "transformers not installed, not checked"
    tok = transformers.AutoTokenizer.from_pretrained(d)
    bad = 0
    for c in golden["cases"]:
        if (tok.encode(c["text"], add_special_tokens=False) != c["ids"]
                or tok.encode(c["text"], add_special_tokens=True) != c["ids_with_special"]
                or tok.decode(c["ids"], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False) != c["decoded"]):
            bad += 1
    return f"transformers {transformers.__version__}: {len(golden['cases']) - bad}/" \
           f"{len(golden['cases'])} cases agree"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests",
                                                  "fixtures", "tokenizers"))
    ap.add_argument("--no-check", action="store_true", help="skip the transformers load-back check")
    ap.add_argument("--only", nargs="*", help="write only these fixtures")
    args = ap.parse_args()
    for name, tok in fixtures().items():
        if args.only and name not in args.only:
            continue
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        tok.save(path)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", **CONFIGS[name]}, f, indent=2)
            f.write("\n")
        tok = Tokenizer.from_file(path)  # the goldens come from what is on disk
        cases = []
        for s in CASES + EXTRA_CASES.get(EXTRA.get(name), []):
            ids = tok.encode(s, add_special_tokens=False).ids
            cases.append({"text": s, "ids": ids,
                          "ids_with_special": tok.encode(s, add_special_tokens=True).ids,
                          "decoded": tok.decode(ids, skip_special_tokens=False),
                          "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
        golden = {"fixture": name, "versions": {"tokenizers": tokenizers.__version__,
                                                "python": sys.version.split()[0]},
                  "added_tokens": added_tokens(path), "cases": cases}
        with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, indent=0)
        size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
        check = "" if args.no_check else "; " + check_transformers(d, golden)
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(cases)} cases, "
              f"tokenizer.json {os.path.getsize(path)} bytes, directory {size} bytes{check}")


if __name__ == "__main__":
    main()
