#!/usr/bin/env python3
"""The demo model's routing on held-out text: records it with expertd and reports on it.

  routing.py record --expertd build/daemon/expertd --model models/demo-moe \
      --heldout DATA/heldout.txt --out bench/traces/demo-heldout.xdroute.zst
      Runs `expertd generate --record-routing` on N held-out passages (greedy, each prompt
      prefilled in one step, then --max-tokens decoded) and merges the traces into one file,
      one request id per passage, steps renumbered in order (engine/experts/routing_trace.h).
  routing.py report --trace FILE --expertd build/daemon/expertd --out bench/routing-demo.md
      Expert popularity per layer, consecutive-token reuse and lookahead recall from the trace
      itself; LRU hit rates from `expertd plan`.

Only the standard library and the zstandard package.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

import zstandard

MAGIC = b"XDROUTE1"


def read_trace(path):
    """Returns (header dict, list of steps); a step is (step, seconds, tokens) and a token is
    (request, position, experts, weights, predicted) with flat per-token tuples."""
    data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
    assert data[:8] == MAGIC, f"{path}: not a routing trace"
    version, L, K, E, expert_bytes, flags = struct.unpack_from("<IIIIQI", data, 8)
    off = 8 + struct.calcsize("<IIIIQI")
    width = K if flags & 1 else 0  # version 1: predictions are top_k wide
    if version >= 2:
        (width,) = struct.unpack_from("<I", data, off)
        off += 4
    hdr = {"version": 2, "layers": L, "top_k": K, "experts": E,
           "expert_bytes": expert_bytes, "pred_width": width}
    n, n_pred = L * K, L * width
    steps = []
    while True:
        tag = data[off]
        off += 1
        if tag == 0:
            break
        step, seconds, n_tok = struct.unpack_from("<QdI", data, off)
        off += 20
        toks = []
        for _ in range(n_tok):
            req, pos = struct.unpack_from("<QI", data, off)
            off += 12
            ex = struct.unpack_from(f"<{n}H", data, off)
            off += 2 * n
            w = struct.unpack_from(f"<{n}f", data, off)
            off += 4 * n
            pr = None
            if width:
                pr = struct.unpack_from(f"<{n_pred}H", data, off)
                off += 2 * n_pred
            toks.append((req, pos, ex, w, pr))
        steps.append((step, seconds, toks))
    return hdr, steps


def write_trace(path, hdr, steps):
    n, n_pred = hdr["layers"] * hdr["top_k"], hdr["layers"] * hdr["pred_width"]
    out = bytearray(MAGIC)
    out += struct.pack("<IIIIQII", 2, hdr["layers"], hdr["top_k"], hdr["experts"],
                       hdr["expert_bytes"], 1 if hdr["pred_width"] else 0, hdr["pred_width"])
    for step, seconds, toks in steps:
        out += struct.pack("<BQdI", 1, step, seconds, len(toks))
        for req, pos, ex, w, pr in toks:
            out += struct.pack("<QI", req, pos) + struct.pack(f"<{n}H", *ex)
            out += struct.pack(f"<{n}f", *w)
            if hdr["pred_width"]:
                out += struct.pack(f"<{n_pred}H", *pr)
    out += b"\0"
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor(level=19).compress(bytes(out)))


def passages(path, n, target_bytes):
    """n passages of consecutive lines (about target_bytes each), spread evenly over the file."""
    lines = open(path, encoding="utf-8").read().splitlines()
    out = []
    for i in range(n):
        j = len(lines) * i // n
        text = ""
        while j < len(lines) and len(text) < target_bytes:
            text += ("\n" if text else "") + lines[j]
            j += 1
        out.append(text)
    return out


def record(args):
    hdr, merged = None, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(passages(args.heldout, args.passages, args.passage_bytes)):
            f = os.path.join(tmp, f"{i}.zst")
            subprocess.run([args.expertd, "generate", "--model", args.model, "--prompt", text,
                            "--max-tokens", str(args.max_tokens), "--threads", "1",
                            "--record-routing", f], check=True, stdout=subprocess.DEVNULL)
            h, steps = read_trace(f)
            hdr = hdr or h
            assert h == hdr
            for _, seconds, toks in steps:
                merged.append((len(merged), seconds,
                               [(i, pos, ex, w, pr) for _, pos, ex, w, pr in toks]))
    write_trace(args.out, hdr, merged)
    print(f"{args.out}: {args.passages} passages, {len(merged)} steps, "
          f"{sum(len(t) for _, _, t in merged)} tokens, {os.path.getsize(args.out)} bytes")


# What-if timing for the planner's simulated timeline: this routing moving experts of
# OLMoE-1B-7B's size (3 x 2048 x 1024 bf16 = 12 MiB) over pinned PCIe 4 (25 GB/s), with 2 ms of
# GPU compute per token. An assumption for comparing predictors, not a measurement.
WHATIF = ["--expert-mib", "12", "--h2d-gbps", "25", "--compute-ms", "2"]


def plan(expertd, trace, slots, predictor, width=None):
    cmd = [expertd, "plan", "--trace", trace, "--cache-slots", str(slots), "--policy", "lru",
           "--predictor", predictor, "--json"] + WHATIF
    if width:
        cmd += ["--predict-width", str(width)]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def report(args):
    hdr, steps = read_trace(args.trace)
    L, K, E = hdr["layers"], hdr["top_k"], hdr["experts"]
    toks = [t for _, _, ts in steps for t in ts]
    n_prefill = sum(len(ts) for _, _, ts in steps if len(ts) > 1)
    requests = sorted({t[0] for t in toks})
    # popularity: share of a layer's routed slots that go to each expert
    counts = [[0] * E for _ in range(L)]
    for _, _, ex, _, _ in toks:
        for l in range(L):
            for k in range(K):
                counts[l][ex[l * K + k]] += 1
    # consecutive-token reuse, per layer: of token t's K experts, the share also chosen by t-1
    by_req = {}
    for req, pos, ex, _, pr in toks:
        by_req.setdefault(req, {})[pos] = (ex, pr)
    reuse = [[0, 0] for _ in range(L)]
    W = hdr["pred_width"]
    recall = [[0, 0] for _ in range(L)]  # top_k wide
    recall_w = {w: [[0, 0] for _ in range(L)] for w in range(1, W + 1)}
    for seq in by_req.values():
        for pos, (ex, pr) in seq.items():
            for l in range(L):
                cur = set(ex[l * K:(l + 1) * K])
                if pos - 1 in seq:
                    prev = set(seq[pos - 1][0][l * K:(l + 1) * K])
                    reuse[l][0] += len(cur & prev)
                    reuse[l][1] += K
                if pr is not None and l > 0:
                    pred = set(p for p in pr[l * W:l * W + K] if p != 0xFFFF)
                    recall[l][0] += len(cur & pred)
                    recall[l][1] += K
                    for width in range(1, W + 1):
                        pred = set(p for p in pr[l * W:l * W + width] if p != 0xFFFF)
                        recall_w[width][l][0] += len(cur & pred)
                        recall_w[width][l][1] += K
    # language of each request (passage), when the held-out file is at hand
    lang = {}
    if args.heldout:
        for i, text in enumerate(passages(args.heldout, args.passages, args.passage_bytes)):
            t = f" {text.lower()} "
            es = t.count(" y ") + t.count(" de ") + t.count(" que ")
            en = t.count(" and ") + t.count(" the ") + t.count(" of ")
            lang[i] = "es" if es > en else "en"
    by_lang = {}
    for req, _, ex, _, _ in toks:
        if req in lang:
            c = by_lang.setdefault(lang[req], [[0] * E for _ in range(L)])
            for l in range(L):
                for k in range(K):
                    c[l][ex[l * K + k]] += 1
    total_slots = L * E
    cache = {}
    for frac in (0.25, 0.5):
        slots = round(total_slots * frac)
        cache[frac] = {p: plan(args.expertd, args.trace, slots, p)
                       for p in ("none", "lookahead", "previous", "lookahead+previous")}
    widths = {}
    for frac in (0.25, 0.5):
        slots = round(total_slots * frac)
        widths[frac] = {w: plan(args.expertd, args.trace, slots, "lookahead", w)
                        for w in range(1, W + 1)}
    lines = []
    w = lines.append
    w("# Routing of the demo model on held-out text")
    w("")
    w(f"The reference routing workload: `models/demo-moe` (OLMoE architecture, {L} MoE layers, "
      f"top-{K} of {E} experts, {hdr['expert_bytes']} bytes per expert in bf16) reading "
      f"{len(requests)} passages of held-out Bible text (the held-out books of corpus.py: "
      "Proverbs, Matthew and 1 Peter of the KJV and the Reina-Valera 1909, Proverbs, Tobit, "
      "1 Corinthians and Revelation of the WEB; Matthew and 1 Peter are in training in the "
      "WEB's wording) and continuing each greedily for up to 32 tokens. "
      f"Trace: `{os.path.relpath(args.trace, os.path.dirname(args.out))}` ({len(steps)} steps, "
      f"{len(toks)} tokens of which {n_prefill} prompt tokens prefilled one passage per step, "
      f"the rest decoded one token a step; passages are run one after another, not "
      f"batched). Regenerate with `tools/demo_model/make.sh` (its last two steps: "
      f"`routing.py record` writes the trace, then `{args.cmd}`).")
    w("")
    w("## Expert popularity per layer")
    w("")
    w(f"Share of the layer's routed slots (tokens x {K}) taken by each expert, most popular first; "
      f"uniform would be {100 / E:.1f}% each; the share of the 4 most popular experts "
      f"({100 * 4 / E:.0f}% under uniform routing) and the experts that take under 1%.")
    w("")
    w("| layer | top 4 experts (share) | top-4 share | experts under 1% |")
    w("|---|---|---|---|")
    for l in range(L):
        tot = sum(counts[l])
        order = sorted(range(E), key=lambda e: -counts[l][e])
        top = ", ".join(f"{e} ({100 * counts[l][e] / tot:.1f}%)" for e in order[:4])
        top4 = 100 * sum(counts[l][e] for e in order[:4]) / tot
        rare = [e for e in range(E) if counts[l][e] < 0.01 * tot]
        w(f"| {l} | {top} | {top4:.1f}% | {len(rare)} ({', '.join(map(str, rare))}) |")
    w("")
    w("Full counts (layer x expert):")
    w("")
    w("```")
    for l in range(L):
        w(f"layer {l}: " + " ".join(f"{c:5d}" for c in counts[l]))
    w("```")
    w("")
    if len(by_lang) == 2:
        en, es = by_lang["en"], by_lang["es"]
        n_en = sum(1 for r in requests if lang.get(r) == "en")
        w("By language (%d English passages, %d Spanish): total variation distance between the "
          "two languages' expert distributions (0: the same experts in the same proportions, "
          "1: disjoint experts) and each language's two favourite experts." % (n_en, len(requests) - n_en))
        w("")
        w("| layer | distance | English: top 2 | Spanish: top 2 |")
        w("|---|---|---|---|")
        for l in range(L):
            te, ts = sum(en[l]), sum(es[l])
            tv = 0.5 * sum(abs(en[l][e] / te - es[l][e] / ts) for e in range(E))
            fe = sorted(range(E), key=lambda e: -en[l][e])[:2]
            fs = sorted(range(E), key=lambda e: -es[l][e])[:2]
            w(f"| {l} | {tv:.2f} | " + ", ".join(f"{e} ({100 * en[l][e] / te:.0f}%)" for e in fe)
              + " | " + ", ".join(f"{e} ({100 * es[l][e] / ts:.0f}%)" for e in fs) + " |")
        w("")
    w("## Consecutive tokens reusing an expert")
    w("")
    w(f"Probability that an expert chosen for token t at a layer was also chosen for token t-1 "
      f"of the same sequence at that layer (random routing: {K}/{E} = {K / E:.3f}).")
    w("")
    w("| layer | reuse |")
    w("|---|---|")
    for l in range(L):
        w(f"| {l} | {reuse[l][0] / reuse[l][1]:.3f} |")
    allr = sum(r[0] for r in reuse) / sum(r[1] for r in reuse)
    w(f"| all | {allr:.3f} |")
    w("")
    w("## Lookahead prediction")
    w("")
    w("Recall of predicting layer l's experts one layer ahead: layer l's router applied to the "
      "residual stream at the input of layer l-1's MoE block (the CPU engine's lookahead, "
      "recorded in the trace by `--record-routing`): the share of the "
      f"{K} experts actually chosen that were among the {K} predicted.")
    w("")
    w("| layer | " + " | ".join(f"recall, {x} predicted" for x in range(1, W + 1)) + " |")
    w("|---|" + "---|" * W)
    for l in range(1, L):
        if recall[l][1]:
            w(f"| {l} | " + " | ".join(f"{recall_w[x][l][0] / recall_w[x][l][1]:.3f}"
                                     for x in range(1, W + 1)) + " |")
    if any(r[1] for r in recall):
        w("| all | " + " | ".join(
            f"{sum(r[0] for r in recall_w[x]) / sum(r[1] for r in recall_w[x]):.3f}"
            for x in range(1, W + 1)) + " |")
    w("")
    rec = cache[0.25]["lookahead"]
    w(f"`expertd plan --predictor lookahead` (over every layer, the first included: nothing "
      f"predicts it) reports prediction precision {rec['prediction_precision']:.3f} and recall "
      f"{rec['prediction_recall']:.3f} at 25% cache.")
    w("")
    w("### How wide to prefetch")
    w("")
    w("Prefetching more of the lookahead's ranking finds more of the experts used and copies "
      "more that are not; copies go through one copy engine in order, so a wasted prefetch "
      "delays the demand copies behind it. `expertd plan` simulates that timeline; here with "
      "what-if sizes: this routing moving experts of OLMoE-1B-7B's size (12 MiB) at 25 GB/s "
      "with 2 ms of compute per token (`" + " ".join(WHATIF) + "`), decode steps only, LRU. "
      "With every expert resident a decode token takes the 2 ms of compute.")
    w("")
    w("| cache | width | precision | recall | hit rate | MiB copied per token | decode ms per token (simulated) | of which waiting for copies |")
    w("|---|---|---|---|---|---|---|---|")
    for frac in (0.25, 0.5):
        for x, r in widths[frac].items():
            w(f"| {int(frac * 100)}% | {x} | {r['prediction_precision']:.3f} | "
              f"{r['prediction_recall']:.3f} | {r['hit_rate']:.3f} | "
              f"{r['bytes_per_token'] / 2**20:.2f} | "
              f"{r['decode_simulated_seconds_per_token'] * 1e3:.2f} | "
              f"{r['decode_stall_seconds_per_token'] * 1e3:.2f} |")
    w("")
    w("## LRU expert cache")
    w("")
    w(f"Hit rate of an LRU cache holding 25% and 50% of all {total_slots} experts "
      f"({L} layers x {E}), from `expertd plan --trace TRACE --cache-slots N --policy lru "
      "--predictor P`: `none` is demand loading only; `lookahead` also prefetches the lookahead "
      f"prediction ({K} wide); `previous` prefetches the experts the previous token used; "
      "`lookahead+previous` both. Copies and decode times with the what-if sizes above.")
    w("")
    w("| cache | slots | predictor | hit rate | precision | recall | MiB copied per token | decode ms per token (simulated) |")
    w("|---|---|---|---|---|---|---|---|")
    for frac in (0.25, 0.5):
        for p, r in cache[frac].items():
            w(f"| {int(frac * 100)}% | {r['cache_slots']} | {p} | {r['hit_rate']:.3f} | "
              f"{r['prediction_precision']:.3f} | {r['prediction_recall']:.3f} | "
              f"{r['bytes_per_token'] / 2**20:.3f} | "
              f"{r['decode_simulated_seconds_per_token'] * 1e3:.2f} |")
    w("")
    w("Per-layer LRU hit rates without prefetch: " + "; ".join(
        f"{int(frac * 100)}%: " + ", ".join(f"{h:.2f}" for h in cache[frac]['none']['layer_hit_rates'])
        for frac in (0.25, 0.5)) + ".")
    w("")
    rare = sum(1 for l in range(L) for e in range(E) if counts[l][e] < 0.01 * sum(counts[l]))
    allrec = sum(r[0] for r in recall) / max(1, sum(r[1] for r in recall))
    summary = [
        "## Summary",
        "",
        f"- Routing is skewed, not uniform: the 4 most popular experts of a layer take "
        f"{min(100 * sum(sorted(c)[-4:]) / sum(c) for c in counts):.0f}-"
        f"{max(100 * sum(sorted(c)[-4:]) / sum(c) for c in counts):.0f}% of its slots and "
        f"{rare} of the {total_slots} experts take under 1% on this text (a small model "
        "trained briefly; a cache can leave those on the host).",
        f"- Consecutive tokens reuse an expert with probability {allr:.2f} "
        f"({K / E:.3f} at random), more in the deeper layers.",
        f"- The one-layer lookahead finds {100 * allrec:.0f}% of the next layer's experts "
        f"({100 * sum(r[0] for r in recall_w[W]) / max(1, sum(r[1] for r in recall_w[W])):.0f}% "
        f"when {W} are predicted), but on a copy-bound timeline predicting more than top-{K} "
        "costs more in wasted copies than it saves.",
        f"- LRU alone hits {cache[0.25]['none']['hit_rate']:.2f} with 25% of the experts "
        f"resident and {cache[0.5]['none']['hit_rate']:.2f} with 50%; prefetching the lookahead "
        f"prediction raises that to {cache[0.25]['lookahead']['hit_rate']:.2f} and "
        f"{cache[0.5]['lookahead']['hit_rate']:.2f}.",
        "",
    ]
    lines[2:2] = [lines[2], ""] + summary
    del lines[2 + len(summary) + 2]
    with open(args.out, "w") as f:
        f.write(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    r = sub.add_parser("record")
    r.add_argument("--expertd", default="build/daemon/expertd")
    r.add_argument("--model", default="models/demo-moe")
    r.add_argument("--heldout", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--passages", type=int, default=24)
    r.add_argument("--passage-bytes", type=int, default=500)
    r.add_argument("--max-tokens", type=int, default=32)
    p = sub.add_parser("report")
    p.add_argument("--expertd", default="build/daemon/expertd")
    p.add_argument("--trace", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", help="the held-out text the trace was recorded on: "
                   "labels each passage's language (same --passages/--passage-bytes)")
    p.add_argument("--passages", type=int, default=24)
    p.add_argument("--passage-bytes", type=int, default=500)
    args = ap.parse_args()
    args.cmd = "python3 tools/demo_model/routing.py " + " ".join(sys.argv[1:])
    (record if args.cmd_name == "record" else report)(args)


if __name__ == "__main__":
    main()
