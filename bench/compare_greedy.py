#!/usr/bin/env python3
"""Greedy agreement between two OpenAI-compatible servers serving the same model.

For each prompt, streams a temperature-0 completion of --max-tokens from both servers (the
openai SDK) and compares the streamed chunks one by one (one per token in expertd; mostly one
per token in llama-cpp-python), and the whole texts with and without U+FFFD. Prints JSON: per prompt both texts, the number of leading tokens that
agree, whether the whole continuations are equal; and the totals.

Usage: compare_greedy.py --a-url URL --a-model NAME --b-url URL --b-model NAME
                         [--prompt TEXT ...] [--max-tokens 32] [--ban-token ID ...]
"""
import argparse
import asyncio
import json
import sys

DEFAULT_PROMPTS = [
    "In the beginning God created the heaven and the earth.",
    "And the LORD spake unto Moses, saying,",
    "En el principio creó Dios los cielos y la tierra.",
    "Blessed are the poor in spirit: for",
    "The quick brown fox jumps over the lazy dog, and then",
    "Once upon a time",
]


async def tokens_of(client, model, prompt, max_tokens, ban, extra):
    kw = dict(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
              extra_body=extra or None)
    if ban:
        kw["logit_bias"] = {str(t): -100 for t in ban}
    toks, finish = [], None
    stream = await client.completions.create(**kw)
    async for chunk in stream:
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        if c.finish_reason:
            finish = c.finish_reason
        if c.text is None or (c.text == "" and c.finish_reason):
            continue
        toks.append(c.text)
    return toks, finish


async def main_async(args):
    import openai
    a = openai.AsyncOpenAI(base_url=args.a_url, api_key="none", max_retries=0, timeout=300)
    b = openai.AsyncOpenAI(base_url=args.b_url, api_key="none", max_retries=0, timeout=300)
    prompts = args.prompt or DEFAULT_PROMPTS
    rows = []
    for p in prompts:
        ta, fa = await tokens_of(a, args.a_model, p, args.max_tokens, args.ban_token, args.a_extra_body)
        tb, fb = await tokens_of(b, args.b_model, p, args.max_tokens, args.ban_token, args.b_extra_body)
        agree = 0
        for x, y in zip(ta, tb):
            if x != y:
                break
            agree += 1
        # Bytes that do not form a character (a token holding part of one, frequent from a
        # random model) stream as U+FFFD from expertd (lossy UTF-8, as transformers' decode)
        # and as nothing from llama-cpp-python (errors="ignore"): compare without them too.
        sa, sb = "".join(ta).replace("\ufffd", ""), "".join(tb).replace("\ufffd", "")
        chars = 0
        for x, y in zip(sa, sb):
            if x != y:
                break
            chars += 1
        rows.append({"prompt": p, "a_text": "".join(ta), "b_text": "".join(tb),
                     "identical_without_fffd": sa == sb, "leading_chars_agree_without_fffd": chars,
                     "chars_without_fffd": [len(sa), len(sb)],
                     "a_tokens": len(ta), "b_tokens": len(tb), "a_finish": fa, "b_finish": fb,
                     "leading_tokens_agree": agree,
                     "identical": "".join(ta) == "".join(tb)})
    await a.close()
    await b.close()
    return {"a": args.a_label, "b": args.b_label, "max_tokens": args.max_tokens,
            "prompts": len(rows), "identical": sum(r["identical"] for r in rows),
            "identical_without_fffd": sum(r["identical_without_fffd"] for r in rows),
            "leading_tokens_agree_total": sum(r["leading_tokens_agree"] for r in rows),
            "tokens_compared_total": sum(min(r["a_tokens"], r["b_tokens"]) for r in rows),
            "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a-url", required=True)
    ap.add_argument("--a-model", required=True)
    ap.add_argument("--a-label", default="a")
    ap.add_argument("--b-url", required=True)
    ap.add_argument("--b-model", required=True)
    ap.add_argument("--b-label", default="b")
    ap.add_argument("--a-extra-body", type=json.loads, default=None, help="JSON merged into a's requests")
    ap.add_argument("--b-extra-body", type=json.loads, default=None, help="JSON merged into b's requests")
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--ban-token", type=int, action="append", default=[])
    ap.add_argument("--out")
    args = ap.parse_args()
    res = asyncio.run(main_async(args))
    text = json.dumps(res, indent=2, ensure_ascii=False)
    if args.out:
        open(args.out, "w", encoding="utf-8").write(text + "\n")
    else:
        print(text)
    print(f"compare_greedy: {res['identical']}/{res['prompts']} identical "
          f"({res['identical_without_fffd']} without U+FFFD), "
          f"{res['leading_tokens_agree_total']}/{res['tokens_compared_total']} leading tokens agree",
          file=sys.stderr)


if __name__ == "__main__":
    main()
