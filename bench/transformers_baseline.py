#!/usr/bin/env python3
"""transformers on a checkpoint made by xd-synth-model: the baseline bench-engine is compared with.

Usage: python3 bench/transformers_baseline.py --model DIR [--device cuda] [--prompt-len 512]
       [--ctx 128] [--steps 64] [--repeats 3]

Loads the model with AutoModelForCausalLM (bf16, sdpa attention) and measures, timing with
torch.cuda.synchronize around wall-clock reads, one warm-up run before each figure, the median
over --repeats runs:
  prefill  one forward of --prompt-len tokens per sequence at batch 1 and 8 (logits of the
           last position only, as generate() asks for them);
  decode   after a prefill of --ctx tokens per sequence (not timed), --steps greedy decode steps
           of one token per sequence through past_key_values, at batch 1, 8 and 64.
It also measures the device's copy bandwidth (a device-to-device copy of 1 GiB, bytes read +
written over the time, best of 5, as bench-engine's baseline does) and reports batch-1 decode as
a fraction of it: bytes of weights one decode token reads (every non-expert weight, top_k /
num_experts of the expert weights, one row of the embedding table; bf16) times tokens/s.
Prints one JSON object.
"""
import argparse
import json
import math
import os
import platform
import statistics
import struct
import time

GIB = 1 << 30


# Checkpoint arithmetic (no torch needed)

def checkpoint_tensors(model_dir):
    """{name: shape} of every tensor of model.safetensors or of the shards its index names."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    shapes = {}
    for name in files:
        with open(os.path.join(model_dir, name), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        shapes.update({k: v["shape"] for k, v in header.items()})
    return shapes


def is_expert_weight(name):
    """Routed-expert weights, per-expert (mlp.experts.E.gate_proj.weight) or fused
    (mlp.experts.gate_up_proj); not the router (mlp.gate) nor a shared expert."""
    return ".mlp.experts." in name


def decode_bytes_per_token(config, shapes, elem_bytes=2):
    """Bytes of weights a batch-1 decode step reads per token: every non-expert weight,
    top_k / num_experts of the routed-expert weights, one embedding row (plus the whole table
    when it doubles as the output head)."""
    n_experts = config.get("num_experts", config.get("num_local_experts"))
    top_k = config["num_experts_per_tok"]
    dense = expert = 0
    for name, shape in shapes.items():
        n = math.prod(shape) * elem_bytes
        if name.endswith("embed_tokens.weight"):
            dense += shape[-1] * elem_bytes
            if config.get("tie_word_embeddings") and "lm_head.weight" not in shapes:
                dense += n
        elif is_expert_weight(name):
            expert += n
        else:
            dense += n
    return dense + expert * top_k // n_experts


def prompt_ids(batch, length, vocab):
    """The same deterministic token ids bench-engine uses: (i * 7919 + 13) % vocab."""
    return [[((s * length + i) * 7919 + 13) % vocab for i in range(length)] for s in range(batch)]


def int_list(text):
    return [int(x) for x in text.split(",") if x]


# Timing (torch from here on)

def make_sync(device):
    import torch
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def forward_kwargs(model):
    """Ask for the last position's logits only, under whichever name this version uses."""
    import inspect
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def time_prefill(model, ids, sync, extra):
    import torch
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=True, **extra)
        sync()
        return time.perf_counter() - t0


def time_decode(model, ids, steps, sync, extra):
    """Prefills ids (not timed), then times steps greedy decode steps through the cache."""
    import torch
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, **extra)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        sync()
        return time.perf_counter() - t0


def copy_gbps(device, nbytes, repeats):
    """Best device-to-device copy rate, bytes read + written per second / 1e9. On CUDA timed
    with events around one copy, the way gpu/gpu_probe.cu times bench-engine's baseline."""
    import torch
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    best = 0.0
    for _ in range(repeats):
        if device.startswith("cuda"):
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            dst.copy_(src)
            t1.record()
            t1.synchronize()
            dt = t0.elapsed_time(t1) * 1e-3
        else:
            t = time.perf_counter()
            dst.copy_(src)
            dt = time.perf_counter() - t
        best = max(best, 2 * nbytes / dt / 1e9)
    del src, dst
    return best


def load_model(path, device, attn, experts):
    import torch
    import transformers
    kwargs = {"attn_implementation": attn}
    if experts:
        kwargs["experts_implementation"] = experts
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    # transformers 4.56 renamed torch_dtype to dtype
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = torch.bfloat16
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (xd-synth-model)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cuda)")
    ap.add_argument("--prompt-len", type=int, default=512, help="prefill tokens per sequence (512)")
    ap.add_argument("--prefill-batches", type=int_list, default=[1, 8], help="(1,8)")
    ap.add_argument("--ctx", type=int, default=128, help="tokens prefilled before decode (128)")
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed (64)")
    ap.add_argument("--decode-batches", type=int_list, default=[1, 8, 64], help="(1,8,64)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure, median kept (3)")
    ap.add_argument("--copy-bytes", type=int, default=GIB, help="bandwidth probe size (1 GiB)")
    ap.add_argument("--attn-implementation", default="sdpa", help="(sdpa)")
    ap.add_argument("--experts-implementation", default=None,
                    help="transformers >= 5: eager, batched_mm or grouped_mm (its default)")
    args = ap.parse_args(argv)

    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    shapes = checkpoint_tensors(args.model)
    per_token = decode_bytes_per_token(config, shapes)
    vocab = config["vocab_size"]

    import torch
    import transformers
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("transformers_baseline: no CUDA device (use --device cpu to smoke-test)")
    sync = make_sync(device)
    t0 = time.perf_counter()
    model = load_model(args.model, device, args.attn_implementation, args.experts_implementation)
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_ckpt = sum(math.prod(s) for s in shapes.values())
    extra = forward_kwargs(model)

    def ids_for(batch, length):
        return torch.tensor(prompt_ids(batch, length, vocab), dtype=torch.long, device=device)

    prefill = []
    for batch in args.prefill_batches:
        ids = ids_for(batch, args.prompt_len)
        time_prefill(model, ids, sync, extra)  # warm-up
        s = statistics.median(time_prefill(model, ids, sync, extra) for _ in range(args.repeats))
        prefill.append({"batch": batch, "prompt_len": args.prompt_len,
                        "tokens_per_s": round(batch * args.prompt_len / s, 1),
                        "ms": round(1e3 * s, 2)})
    decode = []
    for batch in args.decode_batches:
        ids = ids_for(batch, args.ctx)
        time_decode(model, ids, args.steps, sync, extra)  # warm-up
        s = statistics.median(time_decode(model, ids, args.steps, sync, extra)
                              for _ in range(args.repeats))
        decode.append({"batch": batch, "ctx": args.ctx, "steps": args.steps,
                       "tokens_per_s": round(batch * args.steps / s, 2),
                       "step_ms": round(1e3 * s / args.steps, 3)})

    gbps = copy_gbps(device, args.copy_bytes, 5)
    b1 = next((d for d in decode if d["batch"] == 1), None)
    fraction = per_token * b1["tokens_per_s"] / (gbps * 1e9) if b1 else None
    print(json.dumps({
        "engine": "transformers",
        "device": (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
                   else platform.processor() or platform.machine()),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": args.model, "model_type": config.get("model_type"), "dtype": "bf16",
        "attn_implementation": args.attn_implementation,
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "params": n_params, "checkpoint_elements": n_ckpt, "load_s": round(load_s, 1),
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "repeats": args.repeats,
        "prefill": prefill,
        "decode": decode,
        "copy_bytes": args.copy_bytes,
        "copy_gbps": round(gbps, 1),
        "decode_bytes_per_token": per_token,
        "decode_bytes_per_token_mib": round(per_token / (1 << 20), 1),
        "decode_b1_fraction_of_copy_bandwidth": round(fraction, 4) if fraction is not None else None,
    }, indent=1))


if __name__ == "__main__":
    main()
