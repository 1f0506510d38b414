#!/usr/bin/env python3
"""transformers on the same checkpoint as bench-engine, side by side: prefill and decode tokens/s.

Usage: python3 bench/transformers_baseline.py --model DIR [--prompt-len 128] [--decode-steps 32]
       [--batches 1,8,64] [--repeats 3]
Same protocol as bench/bench_engine.c: every sequence gets a prompt of --prompt-len tokens
(prefilled in one call for the whole batch), then --decode-steps decode steps of one token per
sequence with the KV cache; the median over --repeats runs is printed as JSON.
"""
import argparse
import json
import statistics
import time

import torch
import transformers


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_once(model, batch, prompt_len, steps, vocab, device):
    ids = (torch.arange(batch * prompt_len, device=device) * 7919 + 13) % vocab
    ids = ids.view(batch, prompt_len)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        sync()
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        sync()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16, attn_implementation="sdpa").to(args.device).eval()
    vocab = model.config.vocab_size
    run_once(model, 1, 16, 2, vocab, args.device)  # warm-up
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        pre, dec = [], []
        for _ in range(args.repeats):
            p, d = run_once(model, batch, args.prompt_len, args.decode_steps, vocab, args.device)
            pre.append(p)
            dec.append(d)
        p, d = statistics.median(pre), statistics.median(dec)
        results.append({"batch": batch,
                        "prefill_tokens_per_s": round(batch * args.prompt_len / p, 1),
                        "decode_tokens_per_s": round(batch * args.decode_steps / d, 2),
                        "decode_step_ms": round(1e3 * d / args.decode_steps, 2)})
    print(json.dumps({
        "engine": "transformers",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": args.model, "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
        "repeats": args.repeats, "results": results}))


if __name__ == "__main__":
    main()
