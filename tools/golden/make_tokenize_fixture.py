#!/usr/bin/env python3
"""Makes tests/fixtures/tokenize/qwen2_moe.json, the reference answers of expertd's /tokenize
and /detokenize on the HTTP tests' model (the qwen2 fixture tokenizer.json with the qwen2_moe
fixture tokenizer_config.json, a ChatML template): transformers' tokenizer(text,
add_special_tokens=...) ids, convert_ids_to_tokens (vLLM's token_strs) and decode, and
apply_chat_template(tokenize=True) ids with add_generation_prompt and continue_final_message.

Usage: python3 tools/golden/make_tokenize_fixture.py [--out tests/fixtures/tokenize]
(in the venv of tools/golden/requirements.txt)"""
import argparse
import json
import os
import shutil
import tempfile

import tokenizers
import transformers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "tests", "fixtures")

PROMPTS = ["Hello world", "", "  two  spaces\nand a newline", "Grüße, 日本語 👍",
           "<|im_start|>user\nspecial text<|im_end|>", "don't stop"]
U, A, S = "user", "assistant", "system"
CHATS = [
    ("user_only", [(U, "Hello!")], dict(add_generation_prompt=True)),
    ("user_only_no_gen", [(U, "Hello!")], dict(add_generation_prompt=False)),
    ("system_multi_turn", [(S, "Be brief."), (U, "Hi"), (A, "Hello."), (U, "Bye")],
     dict(add_generation_prompt=True)),
    ("continue_final", [(U, "Name a colour."), (A, "The colour is")],
     dict(add_generation_prompt=False, continue_final_message=True)),
    ("continue_final_trailing_space", [(U, "Count:"), (A, "one two ")],
     dict(add_generation_prompt=False, continue_final_message=True)),
]


def as_ids(x):
    if hasattr(x, "keys"):
        x = x["input_ids"]
    return list(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(FIX, "tokenize"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(FIX, "tokenizers", "qwen2", "tokenizer.json"), tmp)
        shutil.copy(os.path.join(FIX, "chat", "qwen2_moe", "tokenizer_config.json"), tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        prompts = []
        for text in PROMPTS:
            for special in (True, False):
                ids = tok(text, add_special_tokens=special)["input_ids"]
                prompts.append({"prompt": text, "add_special_tokens": special, "ids": ids,
                                "token_strs": tok.convert_ids_to_tokens(ids),
                                "decoded": tok.decode(ids)})
        chats = []
        for name, conv, kw in CHATS:
            msgs = [{"role": r, "content": c} for r, c in conv]
            ids = as_ids(tok.apply_chat_template(msgs, tokenize=True, **kw))
            chats.append({"name": name, "messages": msgs, **kw, "ids": ids})
    out = {"fixture": "qwen2 tokenizer.json + chat/qwen2_moe tokenizer_config.json",
           "versions": {"transformers": transformers.__version__,
                        "tokenizers": tokenizers.__version__},
           "prompts": prompts, "chats": chats}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "qwen2_moe.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
