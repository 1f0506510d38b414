#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers, on the official openai SDK (AsyncOpenAI, streaming).

Two ways to send load:
  closed loop  --concurrency N   N workers, each sends its next request when the last one ends
  open loop    --rate R          requests arrive as a Poisson process of R requests/s, whatever
                                 the server's state (at most --max-inflight in flight)
The run ends after --num-requests requests (after --warmup uncounted ones) or --duration
seconds, whichever comes first.

Prompt lengths: --prompt-tokens 128 (fixed) or 64:256 (uniform integer range), or --prompt-file
FILE (one prompt per line, or a .jsonl file whose lines are {"prompt": ...}; used in order,
cycled). Synthetic prompts are words drawn from a fixed list with a seeded RNG; with
--tokenizer tokenizer.json (needs the `tokenizers` package) they are cut to exactly that many
tokens, otherwise one word counts as one token (the server's usage, when it reports it, gives
the real count). Output lengths: --output-tokens 64 or 32:128, sent as max_tokens; with
--ignore-eos (vLLM's and expertd's ignore_eos) or --ban-token ID (logit_bias -100) a server
generates exactly max_tokens.

Output (JSON on stdout or --out FILE): the configuration, then time to first token (TTFT),
inter-token latency (ITL: every gap between consecutive streamed tokens of a request, pooled),
time per output token (TPOT: per request, (end - first token) / (output tokens - 1)), end-to-end
latency, each as mean/p50/p90/p99/max in milliseconds; request and output-token throughput over
the measured wall time; errors by kind with the first messages (a stream that ends without a
finish_reason is an error). Output tokens: the server's usage with --include-usage, else
max_tokens for a request that finished by length, else the streamed chunks (one per token in
expertd; llama-cpp-python's stream splits and holds back some, so its chunk gaps are not
per-token times: compare TPOT). --per-request adds each request's record.

Example:
  loadgen.py --base-url http://127.0.0.1:8000/v1 --model default --concurrency 8 \\
      --num-requests 64 --prompt-tokens 128 --output-tokens 64 --temperature 0
"""
import argparse
import asyncio
import json
import math
import os
import random
import sys
import time

WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from "
         "at which but have an they you were her she there one all we their been has when who "
         "will more no if out so said what up its about into than them can only other new some "
         "could time these two may then do first any my now such like our over man me even most "
         "made after also did many before must through back years where much your way well down "
         "should because each just those people how too little state good very make world still "
         "own see men work long get here between both life being under never day same another "
         "know while last might us great old year off come since against go came right used take "
         "three river mountain light water story garden letter window morning evening city").split()


def parse_range(text, name):
    """'N' -> (N, N); 'A:B' -> (A, B)."""
    try:
        if ":" in text:
            a, b = (int(x) for x in text.split(":", 1))
        else:
            a = b = int(text)
    except ValueError:
        raise SystemExit(f"loadgen: --{name} wants N or A:B, got {text!r}")
    if a < 0 or b < a:
        raise SystemExit(f"loadgen: --{name} range {text!r} is empty or negative")
    return a, b


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats_ms(values):
    if not values:
        return {"count": 0}
    return {"count": len(values),
            "mean": round(1000 * sum(values) / len(values), 3),
            "p50": round(1000 * percentile(values, 50), 3),
            "p90": round(1000 * percentile(values, 90), 3),
            "p99": round(1000 * percentile(values, 99), 3),
            "max": round(1000 * max(values), 3)}


class Workload:
    """Deterministic sequence of (prompt, max_tokens) for request i."""

    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.out_range = parse_range(args.output_tokens, "output-tokens")
        self.prompts = None
        self.tok = None
        if args.prompt_file:
            self.prompts = []
            with open(args.prompt_file, encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if not line.strip():
                        continue
                    if args.prompt_file.endswith(".jsonl"):
                        line = json.loads(line)["prompt"]
                    self.prompts.append(line)
            if not self.prompts:
                raise SystemExit(f"loadgen: {args.prompt_file} has no prompts")
        else:
            self.in_range = parse_range(args.prompt_tokens, "prompt-tokens")
            if args.tokenizer:
                try:
                    from tokenizers import Tokenizer
                except ImportError:
                    raise SystemExit("loadgen: --tokenizer needs the `tokenizers` package")
                self.tok = Tokenizer.from_file(args.tokenizer)

    def synth_prompt(self, n):
        if n == 0:
            return ""
        words = [self.rng.choice(WORDS) for _ in range(n)]
        text = " ".join(words)
        if self.tok is None:
            return text
        # Grow until at least n tokens, then cut to exactly n by the token offsets.
        while len(self.tok.encode(text, add_special_tokens=False).ids) < n:
            text += " " + " ".join(self.rng.choice(WORDS) for _ in range(n))
        enc = self.tok.encode(text, add_special_tokens=False)
        return text[:enc.offsets[n - 1][1]]

    def make(self, count):
        items = []
        for i in range(count):
            if self.prompts is not None:
                prompt = self.prompts[i % len(self.prompts)]
            else:
                prompt = self.synth_prompt(self.rng.randint(*self.in_range))
            items.append((prompt, self.rng.randint(*self.out_range)))
        return items


async def one_request(client, args, prompt, max_tokens):
    """Sends one streamed request; returns its record."""
    rec = {"prompt_chars": len(prompt), "max_tokens": max_tokens, "ok": False,
           "chunks": 0, "output_tokens": None, "prompt_tokens": None, "ttft": None,
           "e2e": None, "itl": [], "text": "" if args.keep_text else None, "error": None,
           "finish_reason": None}
    extra = dict(args.extra_body or {})
    if args.ignore_eos:
        extra["ignore_eos"] = True
    common = dict(model=args.model, max_tokens=max_tokens, temperature=args.temperature,
                  stream=True, extra_body=extra or None, timeout=args.request_timeout)
    if args.top_p is not None:
        common["top_p"] = args.top_p
    if args.ban_token:
        common["logit_bias"] = {str(t): -100 for t in args.ban_token}
    if args.include_usage:
        common["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    last = None
    try:
        if args.endpoint == "chat":
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = await client.completions.create(prompt=prompt, **common)
        async for chunk in stream:
            now = time.perf_counter()
            if getattr(chunk, "usage", None):
                rec["output_tokens"] = chunk.usage.completion_tokens
                rec["prompt_tokens"] = chunk.usage.prompt_tokens
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            if c.finish_reason:
                rec["finish_reason"] = c.finish_reason
            if args.endpoint == "chat":
                text = c.delta.content
                if getattr(c.delta, "role", None) and not text:
                    continue  # the role chunk that opens a chat stream: no token
            else:
                text = c.text
            if text is None or (text == "" and c.finish_reason):
                continue  # finish-only chunk: no token
            # One streamed chunk is one generated token in expertd and llama.cpp (a token that
            # ends inside a UTF-8 character may stream as an empty string: still a token).
            rec["chunks"] += 1
            if last is None:
                rec["ttft"] = now - t0
            else:
                rec["itl"].append(now - last)
            last = now
            if args.keep_text:
                rec["text"] += text
        rec["e2e"] = time.perf_counter() - t0
        if rec["output_tokens"] is None:
            # No usage from the server: a request that ended by length generated max_tokens;
            # otherwise count streamed chunks (one per token in expertd; llama-cpp-python's
            # stream can split or merge tokens, so prefer --include-usage or finish by length).
            rec["output_tokens"] = max_tokens if rec["finish_reason"] == "length" else rec["chunks"]
        rec["ok"] = rec["chunks"] > 0 or max_tokens == 0
        if not rec["ok"]:
            rec["error"] = "EmptyStream: no token streamed"
        elif rec["finish_reason"] is None:
            # A stream cut short (e.g. llama-cpp-python's server with interrupt_requests, its
            # default, ends a stream when another request arrives) is not a completed request.
            rec["ok"] = False
            rec["error"] = (f"Truncated: stream ended after {rec['chunks']} tokens "
                            "without a finish_reason")
    except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
        rec["e2e"] = time.perf_counter() - t0
        status = getattr(e, "status_code", None)
        rec["error"] = f"{type(e).__name__}{f' {status}' if status else ''}: {str(e)[:300]}"
    return rec


async def run(args):
    try:
        import openai
    except ImportError:
        raise SystemExit("loadgen: needs the openai package (tools/test-venv.sh makes a venv with it)")
    import httpx

    limit = max(args.concurrency or 0, args.max_inflight) + 8
    client = openai.AsyncOpenAI(
        base_url=args.base_url, api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "none",
        max_retries=0, timeout=args.request_timeout,
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=limit,
                                                          max_keepalive_connections=limit),
                                      timeout=args.request_timeout))
    total = args.warmup + args.num_requests
    work = Workload(args).make(total)

    # Warm-up: sequential, not measured (loads pages, JITs nothing, opens connections).
    for prompt, mt in work[:args.warmup]:
        r = await one_request(client, args, prompt, mt)
        if not r["ok"]:
            print(f"loadgen: warm-up request failed: {r['error']}", file=sys.stderr)
    work = work[args.warmup:]

    records = []
    deadline = None
    t_start = time.perf_counter()
    if args.duration:
        deadline = t_start + args.duration

    if args.concurrency:
        next_i = 0

        async def worker():
            nonlocal next_i
            while next_i < len(work) and (deadline is None or time.perf_counter() < deadline):
                i = next_i
                next_i += 1
                rec = await one_request(client, args, *work[i])
                rec["index"] = i
                records.append(rec)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    else:
        arr = random.Random(args.seed + 1)
        sem = asyncio.Semaphore(args.max_inflight)
        tasks = []
        dropped = 0

        async def fire(i):
            async with sem:
                rec = await one_request(client, args, *work[i])
            rec["index"] = i
            records.append(rec)

        t_next = t_start
        for i in range(len(work)):
            t_next += arr.expovariate(args.rate)
            if deadline is not None and t_next >= deadline:
                break
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem.locked() and args.drop_when_full:
                dropped += 1
                continue
            tasks.append(asyncio.create_task(fire(i)))
        await asyncio.gather(*tasks)
        args.dropped = dropped
    wall = time.perf_counter() - t_start
    await client.close()
    return records, wall


def summarize(args, records, wall):
    ok = [r for r in records if r["ok"]]
    errors = {}
    examples = []
    for r in records:
        if not r["ok"]:
            kind = r["error"].split(":", 1)[0]
            errors[kind] = errors.get(kind, 0) + 1
            if len(examples) < 5:
                examples.append(r["error"])
    out_tokens = sum(r["output_tokens"] or 0 for r in ok)
    prompt_tokens = [r["prompt_tokens"] for r in ok if r["prompt_tokens"] is not None]
    tpot = []
    for r in ok:
        n = r["output_tokens"] or 0
        if n > 1 and r["ttft"] is not None:
            tpot.append((r["e2e"] - r["ttft"]) / (n - 1))
    itl = [g for r in ok for g in r["itl"]]
    summary = {
        "requests": len(records),
        "completed": len(ok),
        "errors": len(records) - len(ok),
        "error_kinds": errors,
        "error_examples": examples,
        "wall_s": round(wall, 3),
        "request_throughput_rps": round(len(ok) / wall, 4) if wall > 0 else None,
        "output_tokens": out_tokens,
        "output_throughput_tps": round(out_tokens / wall, 3) if wall > 0 else None,
        "prompt_tokens_total": sum(prompt_tokens) if prompt_tokens else None,
        "prompt_tokens_reported_by_server": len(prompt_tokens),
        "output_tokens_per_request_mean": round(out_tokens / len(ok), 2) if ok else None,
        "streamed_chunks_total": sum(r["chunks"] for r in ok),
        "ttft_ms": stats_ms([r["ttft"] for r in ok if r["ttft"] is not None]),
        "itl_ms": stats_ms(itl),
        "tpot_ms": stats_ms(tpot),
        "e2e_ms": stats_ms([r["e2e"] for r in ok]),
        "finish_reasons": {},
    }
    for r in ok:
        k = r["finish_reason"] or "none"
        summary["finish_reasons"][k] = summary["finish_reasons"].get(k, 0) + 1
    if not args.concurrency:
        summary["dropped_arrivals"] = getattr(args, "dropped", 0)
    config = {k: v for k, v in vars(args).items()
              if k not in ("api_key", "dropped", "out", "per_request")}
    config["mode"] = "closed-loop" if args.concurrency else "open-loop-poisson"
    result = {"tool": "expertd bench/loadgen.py", "config": config, "summary": summary}
    if args.per_request:
        for r in records:
            r["itl"] = [round(g, 6) for g in r["itl"]]
        result["requests"] = sorted(records, key=lambda r: r["index"])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="model name the server expects")
    p.add_argument("--api-key", default=None, help="else $OPENAI_API_KEY, else 'none'")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop: N workers")
    mode.add_argument("--rate", type=float, help="open loop: Poisson arrivals, requests/s")
    p.add_argument("--max-inflight", type=int, default=256,
                   help="open loop: at most this many requests in flight (default 256)")
    p.add_argument("--drop-when-full", action="store_true",
                   help="open loop: drop (and count) arrivals while --max-inflight are in flight "
                        "instead of queueing them in the client")
    p.add_argument("--num-requests", type=int, default=64, help="measured requests (64)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop starting requests after this many seconds")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured sequential requests first (1)")
    p.add_argument("--prompt-tokens", default="128", help="N or A:B (uniform); default 128")
    p.add_argument("--prompt-file", help="prompts, one a line (or .jsonl with 'prompt')")
    p.add_argument("--tokenizer", help="tokenizer.json to cut synthetic prompts to exact tokens")
    p.add_argument("--output-tokens", default="64", help="max_tokens: N or A:B; default 64")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: true (vLLM, expertd)")
    p.add_argument("--ban-token", type=int, action="append", default=[],
                   help="logit_bias -100 on this token id (repeatable; e.g. EOS, portable)")
    p.add_argument("--extra-body", type=json.loads, default=None,
                   help="JSON object merged into every request body, for server-specific "
                        "parameters (e.g. '{\"repeat_penalty\": 1.0}' for llama-cpp-python, "
                        "whose default 1.1 is not OpenAI's)")
    p.add_argument("--include-usage", action="store_true",
                   help="ask for stream_options.include_usage (token counts from the server)")
    p.add_argument("--seed", type=int, default=0, help="workload RNG seed (prompts, lengths, arrivals)")
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--keep-text", action="store_true", help="keep generated text (with --per-request)")
    p.add_argument("--per-request", action="store_true", help="add every request's record")
    p.add_argument("--out", help="write the JSON here instead of stdout")
    args = p.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be > 0")
    records, wall = asyncio.run(run(args))
    result = summarize(args, records, wall)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    s = result["summary"]
    print(f"loadgen: {s['completed']}/{s['requests']} ok, {s['errors']} errors, "
          f"{s['request_throughput_rps']} req/s, {s['output_throughput_tps']} tok/s, "
          f"TTFT p50 {s['ttft_ms'].get('p50')} ms, ITL p50 {s['itl_ms'].get('p50')} ms",
          file=sys.stderr)
    return 0 if s["completed"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
