#!/usr/bin/env python3
"""Greedy token ids of expertd and llama.cpp on the same checkpoint, fed the same prompt ids.

Checks a GGUF made by bench/hf_to_gguf_*.py: for each of --prompts random prompts (ids below
--id-limit, seeded), runs `expertd generate --prompt-ids --json --logprobs 1 --ignore-eos` on the
safetensors checkpoint, and llama-server's /completion on the GGUF with the prompt as a token
array (no BOS: the converters write add_bos_token false), temperature 0 with top-k 1,
ignore_eos, n_probs 1; then compares the ids token by token and the chosen tokens' logprobs.
A synthetic model's random weights leave small margins between the best tokens, so equal ids
over many steps are a strict check of the conversion (different layouts or scales diverge at
the first token). Prints JSON: per prompt both id lists, the agreeing prefix, the largest
logprob difference over that prefix; and the totals. Exit status 1 when any prompt disagrees.

Usage: compare_llama_greedy_ids.py --model DIR --gguf FILE [--llama-server BIN]
           [--expertd BIN] [--prompts 4] [--prompt-len 16] [--id-limit 50000]
           [--prompt-ids 1,2,3 ...] [--max-tokens 16] [--threads 2]
"""
import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def expertd_ids(args, prompt):
    out = subprocess.run([args.expertd, "generate", "--model", args.model, "--prompt-ids",
                          ",".join(map(str, prompt)), "--max-tokens", str(args.max_tokens),
                          "--ignore-eos", "--json", "--logprobs", "1", "--threads",
                          str(args.threads)], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["ids"], r["logprobs"]


def llama_ids(url, args, prompt):
    r = post(url + "/completion", {"prompt": prompt, "n_predict": args.max_tokens,
                                   "temperature": 0.0, "top_k": 1, "ignore_eos": True,
                                   "n_probs": 1, "return_tokens": True, "cache_prompt": False,
                                   "samplers": ["top_k"]}, timeout=1800)
    probs = r.get("completion_probabilities", [])
    return r["tokens"], [p.get("logprob") for p in probs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the safetensors checkpoint (expertd)")
    ap.add_argument("--gguf", required=True, help="its conversion (llama.cpp)")
    ap.add_argument("--llama-server", default="/work/llama-cpp/build/bin/llama-server")
    ap.add_argument("--expertd", default="build/daemon/expertd")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--id-limit", type=int, default=50000,
                    help="prompt ids below this (and below the model's vocab_size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompt-ids", action="append", default=[],
                    help="a prompt as comma-separated ids (repeatable; instead of random ones)")
    args = ap.parse_args()

    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
    args.id_limit = min(args.id_limit, vocab)  # a small model's vocabulary is below the tokenizer's
    rng = random.Random(args.seed)
    prompts = [[int(x) for x in p.split(",")] for p in args.prompt_ids] or \
        [[rng.randrange(args.id_limit) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(os.path.dirname(os.path.abspath(args.gguf)),
                            os.path.basename(args.gguf) + ".server.log"), "w")
    srv = subprocess.Popen([args.llama_server, "-m", args.gguf, "--port", str(port), "--host",
                            "127.0.0.1", "-t", str(args.threads), "-c", "1024", "-np", "1",
                            "--no-warmup"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if srv.poll() is not None or time.time() > deadline:
                raise SystemExit(f"compare_llama_greedy_ids: llama-server did not start (see {log.name})")
            time.sleep(1)
        rows = []
        for p in prompts:
            xi, xl = expertd_ids(args, p)
            li, ll = llama_ids(url, args, p)
            agree = 0
            for a, b in zip(xi, li):
                if a != b:
                    break
                agree += 1
            dl = [abs(a - b) for a, b in zip(xl[:agree], ll[:agree]) if a is not None and b is not None]
            rows.append({"prompt": p, "expertd": xi, "llama_cpp": li, "agree": agree,
                         "equal": xi == li, "max_logprob_diff": max(dl) if dl else None,
                         "expertd_logprobs": xl, "llama_cpp_logprobs": ll})
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    total = {"prompts": len(rows), "equal": sum(r["equal"] for r in rows),
             "tokens_agreeing": sum(r["agree"] for r in rows),
             "tokens": sum(len(r["expertd"]) for r in rows)}
    print(json.dumps({"rows": rows, "total": total}, indent=1))
    return 0 if total["equal"] == total["prompts"] else 1


if __name__ == "__main__":
    sys.exit(main())
