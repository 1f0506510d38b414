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

Scale (raw HTTP/1.1 on asyncio sockets, no SDK, so one client process can hold thousands):
  --streams N            N streaming requests started at once (time to first token, [DONE])
  --hold-connections K   K connections that each get one /health answer and then stay open,
                         kept alive and idle, for the whole run (--hold-seconds more after)
  --slow-sockets M       M connections that trickle a request header a byte per second (one
                         the server cuts is opened again at once)
  --source-addresses A   spread every connection over 127.0.0.2 ... 127.0.0.(A+1), so a
                         server's per-address cap sees A clients (loopback only)
  --server-pid PID       sample the server's RSS and thread count (/proc/PID) every 0.5 s
/health is polled on a new connection every 0.5 s meanwhile; the JSON says how each ended.

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
import re
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


# ---- scale: raw sockets -------------------------------------------------------------------

def proc_sample(pid):
    """(RSS MiB, threads, open fds, CPU seconds used) of process pid, or None."""
    try:
        rss = threads = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024.0
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, threads, len(os.listdir(f"/proc/{pid}/fd")), cpu
    except OSError:
        return None


async def read_response(reader):
    """One HTTP/1.1 response: (status, headers, body chunks as a list of (t, bytes)); chunked
    or Content-Length bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    parts = []
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append((time.perf_counter(), data[:-2]))
    elif "content-length" in headers:
        parts.append((time.perf_counter(), await reader.readexactly(int(headers["content-length"]))))
    else:
        parts.append((time.perf_counter(), await reader.read()))
    return status, headers, parts


class Conns:
    """Opens connections to host:port, from 127.0.0.2.. when sources > 0."""

    def __init__(self, host, port, sources):
        self.host, self.port, self.sources, self.n = host, port, sources, 0

    async def open(self):
        src = None
        if self.sources:
            src = (f"127.0.0.{2 + self.n % self.sources}", 0)
        self.n += 1
        return await asyncio.open_connection(self.host, self.port, local_addr=src, limit=1 << 20)


async def scale_stream(conns, args, i, rec):
    body = {"model": args.model, "prompt": f"stream {i} " + " ".join(WORDS[(i + k) % len(WORDS)]
                                                               for k in range(8)),
            "max_tokens": args.output_tokens_n, "stream": True, "temperature": args.temperature}
    if args.ignore_eos:
        body["ignore_eos"] = True
    data = json.dumps(body)
    t0 = time.perf_counter()
    try:
        reader, writer = await conns.open()
    except OSError as e:
        rec.update(ok=False, error=f"connect: {e}")
        return
    try:
        writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      f"\r\nContent-Length: {len(data)}\r\n\r\n{data}").encode())
        await writer.drain()
        status, headers, parts = await asyncio.wait_for(read_response(reader), args.request_timeout)
        payload = b"".join(p for _, p in parts)
        events = re.findall(rb"data: (.*?)\n\n", payload)
        first = next((t for t, p in parts if b'"text"' in p), None)
        done = bool(events) and events[-1] == b"[DONE]"
        rec.update(status=status, ok=status == 200 and done, ttft=first - t0 if first else None,
                   e2e=time.perf_counter() - t0, chunks=max(0, len(events) - 1))
        if not rec["ok"]:
            rec["error"] = f"status {status}" + ("" if done else ", no [DONE]") + ": " + \
                payload[:160].decode(errors="replace")
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
        rec.update(ok=False, error=f"{type(e).__name__}: {e}")
    finally:
        writer.close()


async def hold_one(conns, held, failed):
    try:
        reader, writer = await conns.open()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status, _, _ = await read_response(reader)
        if status != 200:
            failed.append(f"status {status}")
            writer.close()
            return
        held.append(writer)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        failed.append(f"{type(e).__name__}: {e}")


async def slow_one(conns, stop, stats):
    """Trickles a header a byte a second; when the server cuts it (its header timeout), opens
    a new one and starts again: a slowloris client that keeps its sockets coming."""
    line = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000
    while not stop.is_set():
        try:
            reader, writer = await conns.open()
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(1.0)
            continue
        k, cut = 0, False
        try:
            while not stop.is_set() and not cut:
                writer.write(line[k:k + 1])
                await writer.drain()
                k += 1
                try:
                    cut = not await asyncio.wait_for(reader.read(4096), 1.0)
                except asyncio.TimeoutError:
                    pass
        except OSError:
            cut = True
        finally:
            writer.close()
        if cut:
            stats["cut"] += 1
        else:
            stats["open_at_end"] += 1


async def run_scale(args):
    from urllib.parse import urlparse
    u = urlparse(args.base_url)
    conns = Conns(u.hostname, u.port or 80, args.source_addresses)
    samples, health = [], []
    stop = asyncio.Event()

    async def sampler():
        while not stop.is_set():
            if args.server_pid:
                smp = proc_sample(args.server_pid)
                if smp:
                    samples.append((round(time.perf_counter() - t_start, 2),) + smp)
            await asyncio.sleep(0.5)

    async def health_poller():
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r, w = await asyncio.open_connection(u.hostname, u.port or 80)
                w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                st, _, _ = await asyncio.wait_for(read_response(r), 10)
                w.close()
                health.append((st, time.perf_counter() - t))
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                health.append((type(e).__name__, time.perf_counter() - t))
            await asyncio.sleep(0.5)

    t_start = time.perf_counter()
    cpu0 = proc_sample(args.server_pid) if args.server_pid else None
    bg = [asyncio.create_task(sampler()), asyncio.create_task(health_poller())]
    held, hold_failed = [], []
    for i in range(0, args.hold_connections, 500):
        await asyncio.gather(*(hold_one(conns, held, hold_failed)
                               for _ in range(min(500, args.hold_connections - i))))
    t_held = time.perf_counter() - t_start
    cpu_held = proc_sample(args.server_pid) if args.server_pid else None
    slow_stats = {"connect_failed": 0, "cut": 0, "open_at_end": 0}
    slow_stop = asyncio.Event()
    slow = [asyncio.create_task(slow_one(conns, slow_stop, slow_stats))
            for _ in range(args.slow_sockets)]
    await asyncio.sleep(1.0 if args.slow_sockets else 0)
    recs = [{"index": i} for i in range(args.streams)]
    t0 = time.perf_counter()
    await asyncio.gather(*(scale_stream(conns, args, i, recs[i]) for i in range(args.streams)))
    wall = time.perf_counter() - t0
    if args.hold_seconds:
        await asyncio.sleep(args.hold_seconds)
    peak = proc_sample(args.server_pid) if args.server_pid else None
    slow_stop.set()
    await asyncio.gather(*slow)
    stop.set()
    await asyncio.gather(*bg)
    for w in held:
        w.close()
    ok = [r for r in recs if r.get("ok")]
    errors = {}
    for r in recs:
        if not r.get("ok"):
            k = r.get("error", "?").split(":", 1)[0]
            errors[k] = errors.get(k, 0) + 1
    health_ok = sum(1 for st, _ in health if st == 200)
    config = {k: v for k, v in vars(args).items() if k not in ("api_key", "out", "per_request")}
    config["mode"] = "scale"
    summary = {
        "streams": args.streams, "completed": len(ok), "errors": len(recs) - len(ok),
        "error_kinds": errors,
        "error_examples": [r["error"] for r in recs if not r.get("ok")][:5],
        "streams_wall_s": round(wall, 3),
        "ttft_ms": stats_ms([r["ttft"] for r in ok if r.get("ttft") is not None]),
        "e2e_ms": stats_ms([r["e2e"] for r in ok]),
        "held_connections": len(held), "hold_failed": len(hold_failed),
        "hold_failed_examples": hold_failed[:5], "hold_open_s": round(t_held, 3),
        "slow_sockets": slow_stats,
        "health_polls": len(health), "health_ok": health_ok,
        "health_ms": stats_ms([t for st, t in health if st == 200]),
    }
    if samples:
        summary["server_rss_mib_max"] = round(max(s_[1] for s_ in samples), 1)
        summary["server_threads_max"] = max(s_[2] for s_ in samples)
        summary["server_fds_max"] = max(s_[3] for s_ in samples)
    if peak:
        summary["server_at_end"] = {"rss_mib": round(peak[0], 1), "threads": peak[1],
                                    "fds": peak[2]}
    if peak and cpu0:
        summary["server_cpu_s"] = round(peak[3] - cpu0[3], 2)
        if args.hold_connections:
            summary["server_cpu_s_opening_held"] = round(cpu_held[3] - cpu0[3], 2)
    result = {"tool": "expertd bench/loadgen.py", "config": config, "summary": summary}
    if args.per_request:
        result["samples"] = samples
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
    mode.add_argument("--streams", type=int, help="scale: N raw streams at once (see above)")
    p.add_argument("--hold-connections", type=int, default=0, help="scale: idle kept-alive connections")
    p.add_argument("--slow-sockets", type=int, default=0, help="scale: header-trickling sockets")
    p.add_argument("--source-addresses", type=int, default=0,
                   help="scale: spread connections over this many loopback addresses")
    p.add_argument("--hold-seconds", type=float, default=0, help="scale: hold this long after")
    p.add_argument("--server-pid", type=int, default=None, help="scale: sample /proc/PID")
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
    if args.streams is not None:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        lo, hi = parse_range(args.output_tokens, "output-tokens")
        args.output_tokens_n = hi
        result = asyncio.run(run_scale(args))
        text = json.dumps(result, indent=2)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        else:
            print(text)
        s = result["summary"]
        print(f"loadgen scale: {s['completed']}/{s['streams']} streams ok, {s['errors']} errors, "
              f"TTFT p50 {s['ttft_ms'].get('p50')} p99 {s['ttft_ms'].get('p99')} ms; held "
              f"{s['held_connections']} (failed {s['hold_failed']}); /health "
              f"{s['health_ok']}/{s['health_polls']}; server RSS max "
              f"{s.get('server_rss_mib_max')} MiB, threads max {s.get('server_threads_max')}",
              file=sys.stderr)
        return 0 if s["errors"] == 0 and s["hold_failed"] == 0 else 1
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
