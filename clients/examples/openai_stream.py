#!/usr/bin/env python3
"""Stream a completion or a chat answer from expertd with the official openai Python SDK.

    pip install openai
    EXPERTD_API_KEY=... python3 openai_stream.py --url http://127.0.0.1:8000 --prompt "Hello"
    python3 openai_stream.py --chat --prompt "Name three rivers." --max-tokens 64

expertd speaks the OpenAI API, so the only change from talking to OpenAI is base_url.
"""
import argparse
import os
import sys

from openai import OpenAI


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("EXPERTD_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--model", help="default: the first model the server lists")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()

    # The key comes from the environment, never from the command line (ps shows that).
    client = OpenAI(base_url=args.url.rstrip("/") + "/v1",
                    api_key=os.environ.get("EXPERTD_API_KEY") or "no-key")
    model = args.model or client.models.list().data[0].id

    if args.chat:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": args.prompt}],
            max_tokens=args.max_tokens, seed=args.seed, stream=True,
            stream_options={"include_usage": True})
    else:
        stream = client.completions.create(
            model=model, prompt=args.prompt, max_tokens=args.max_tokens, seed=args.seed,
            stream=True, stream_options={"include_usage": True})

    finish, usage = None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text = choice.delta.content if args.chat else choice.text
        if text:
            print(text, end="", flush=True)  # each token as it arrives
        finish = choice.finish_reason or finish
    print()
    tokens = usage.completion_tokens if usage else "?"
    print(f"finish_reason={finish} completion_tokens={tokens}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
