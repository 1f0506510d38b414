#!/usr/bin/env python3
"""Fair admission under a flood: a light client's latency alone and while a heavy client loops
big requests, for each admission policy of `expertd serve` (fair, fcfs).

Two clients on loopback are told apart by their source address (127.0.0.1 and 127.0.0.2: all
of 127/8 is loopback on Linux), which is how expertd identifies clients. The heavy client runs
THREADS loops of POST /v1/completions with PROMPTS prompts x n=N; the light one sends one small
request at a time. Prints one line per policy and, with --json, the figures as JSON.

Usage: fair_admission.py EXPERTD MODEL_DIR [--policies fair,fcfs,old:OLD_EXPERTD] [--light 40]
       [--json FILE] [-- extra serve flags]
A policy old:PATH runs the expertd at PATH without --admission (the code before it);
LABEL=POLICY@PATH runs the expertd at PATH with --admission POLICY (another build of this
code, e.g. prev=fair@/tmp/base/build/daemon/expertd), reported as LABEL; a policy may end in
+FLAG=VALUE serve flags of its own (e.g. cap=fair-split+max-step-ms=0.5).
Besides latency it reports the steps each light request was in flight and what a step cost
(expertd_step_seconds_total / expertd_steps_total) in each phase."""
import argparse
import http.client
import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time


def start(expertd, model, policy, extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("EXPERTD_API_KEY", None)
    spec, *more = policy.split("+")  # POLICY+FLAG=VALUE...: serve flags of this policy's own
    more_flags = [a for m in more for a in ("--" + m.split("=", 1)[0], *m.split("=", 1)[1:])]
    if "=" in spec and not spec.startswith("old:"):
        spec = spec.split("=", 1)[1]  # LABEL=...: the label is only for the report
    if spec.startswith("old:"):  # an expertd from before fair admission: no --admission
        expertd, flags = spec[4:], []
    elif "@" in spec:  # POLICY@PATH: another build, with --admission POLICY
        pol, expertd = spec.split("@", 1)
        flags = ["--admission", pol]
    else:
        flags = ["--admission", spec]
    flags += more_flags
    proc = subprocess.Popen([expertd, "serve", "--model", model, "--port", "0", "--threads", "1",
                             *flags, "--log-level", "warn", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    port = None
    for line in proc.stderr:
        m = re.search(r"listening on http://[^ ]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        raise RuntimeError("expertd did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("expertd never became ready")


def post(port, src, body, timeout=120):
    """One POST /v1/completions from source address src: (status, seconds)."""
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(src, 0))
    try:
        data = json.dumps(body)
        c.request("POST", "/v1/completions", data, {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status, time.time() - t0
    finally:
        c.close()


STEP_METRICS = ("expertd_steps_total", "expertd_step_seconds_total", "expertd_step_tokens_total")


def step_metrics(port):
    """The step counters from /metrics: {name: value} for STEP_METRICS (nan when missing)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    got = {k: float("nan") for k in STEP_METRICS}
    try:
        c.request("GET", "/metrics")
        for line in c.getresponse().read().decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in got:
                got[parts[0]] = float(parts[1])
    finally:
        c.close()
    return got


def steps_total(port):
    """expertd_steps_total from /metrics: engine steps run so far."""
    return step_metrics(port)["expertd_steps_total"]


def step_cost(m0, m1):
    """(ms per step, tokens per step) between two step_metrics snapshots."""
    n = m1["expertd_steps_total"] - m0["expertd_steps_total"]
    if not n > 0:
        return float("nan"), float("nan")
    return ((m1["expertd_step_seconds_total"] - m0["expertd_step_seconds_total"]) / n * 1e3,
            (m1["expertd_step_tokens_total"] - m0["expertd_step_tokens_total"]) / n)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def light_run(port, n, body):
    """n requests one after the other: (seconds of each 200, engine steps each took, 429s).
    The steps are the server's whole step count across the request (the heavy client's steps
    included): the latency in the scheduler's own unit, which an engine's batch cost does not
    change."""
    lat, steps, rejected = [], [], 0
    for _ in range(n):
        s0 = steps_total(port)
        st, dt = post(port, "127.0.0.1", body)
        if st == 200:
            lat.append(dt)
            steps.append(steps_total(port) - s0)
        else:
            rejected += 1
    return lat, steps, rejected


def flood_loop(port, heavy, stop, counts):
    """The heavy client: POSTs heavy until stop is set, retrying 10 ms after a refusal;
    counts[0] += 200s, counts[1] += others (a list in a thread, a shared array in a process)."""
    lock = counts.get_lock() if hasattr(counts, "get_lock") else FLOOD_LOCK
    while not stop.is_set():
        st, _ = post(port, "127.0.0.2", heavy)
        with lock:
            counts[0 if st == 200 else 1] += 1
        if st != 200:
            time.sleep(0.01)


FLOOD_LOCK = threading.Lock()


def measure(expertd, model, policy, args, extra):
    proc, port = start(expertd, model, policy, extra)
    try:
        light = {"prompt": [[1, 2, 3, 4]], "max_tokens": args.light_tokens, "temperature": 0,
                 "ignore_eos": True}
        heavy = {"prompt": [[5 + i, 6, 7, 8] for i in range(args.prompts)], "n": args.n,
                 "max_tokens": args.heavy_tokens, "temperature": 0, "ignore_eos": True}
        light_run(port, 3, light)  # warm up
        m0 = step_metrics(port)
        alone, alone_steps, _ = light_run(port, args.light, light)
        alone_cost = step_cost(m0, step_metrics(port))
        if args.processes:  # the flood out of this interpreter: no GIL shared with the light client
            stop = multiprocessing.Event()
            counts = multiprocessing.Array("q", 2)  # ok, rejected
            workers = [multiprocessing.Process(target=flood_loop,
                                               args=(port, heavy, stop, counts), daemon=True)
                       for _ in range(args.threads)]
        else:
            stop = threading.Event()
            counts = [0, 0]
            workers = [threading.Thread(target=flood_loop, args=(port, heavy, stop, counts),
                                        daemon=True) for _ in range(args.threads)]
        t_flood = time.time()
        for t in workers:
            t.start()
        time.sleep(args.settle)
        t0 = time.time()
        m0 = step_metrics(port)
        loaded, loaded_steps, rejected = light_run(port, args.light, light)
        loaded_cost = step_cost(m0, step_metrics(port))
        span = time.time() - t0
        time.sleep(max(0.0, t_flood + args.min_flood - time.time()))  # throughput over a span
        stop.set()
        for t in workers:
            t.join(120)
        heavy_stats = {"ok": counts[0], "rejected": counts[1],
                       "sequences": counts[0] * args.prompts * args.n}
        flood_s = time.time() - t_flood
        return {
            "policy": policy,
            "alone_p50": pct(alone, 50), "alone_p99": pct(alone, 99),
            "loaded_p50": pct(loaded, 50), "loaded_p99": pct(loaded, 99),
            "ratio_p99": pct(loaded, 99) / pct(alone, 99) if alone and loaded else float("inf"),
            "alone_steps_p99": pct(alone_steps, 99), "loaded_steps_p99": pct(loaded_steps, 99),
            "alone_steps_p50": pct(alone_steps, 50), "loaded_steps_p50": pct(loaded_steps, 50),
            "loaded_steps_max": max(loaded_steps) if loaded_steps else float("nan"),
            "steps_ratio_p99": pct(loaded_steps, 99) / pct(alone_steps, 99)
            if alone_steps and loaded_steps else float("inf"),
            "alone_step_ms": alone_cost[0], "alone_step_tokens": alone_cost[1],
            "loaded_step_ms": loaded_cost[0], "loaded_step_tokens": loaded_cost[1],
            "light_ok": len(loaded), "light_rejected": rejected,
            "heavy_ok": heavy_stats["ok"], "heavy_rejected": heavy_stats["rejected"],
            "heavy_sequences_per_s": heavy_stats["sequences"] / flood_s,
            "light_phase_s": span,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("expertd")
    ap.add_argument("model")
    ap.add_argument("--policies", default="fair,fcfs")
    ap.add_argument("--light", type=int, default=40, help="light requests per phase")
    ap.add_argument("--light-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="heavy client's concurrent loops")
    ap.add_argument("--processes", action="store_true",
                    help="run the heavy loops as processes, not threads of this interpreter "
                         "(the light client's latency then does not include waiting for the GIL)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--heavy-tokens", type=int, default=8)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of flood before measuring")
    ap.add_argument("--min-flood", type=float, default=6.0,
                    help="seconds the flood lasts at least (the heavy client's throughput)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    out = []
    for policy in args.policies.split(","):
        r = measure(args.expertd, args.model, policy, args, extra)
        out.append(r)
        label = (policy.split("=", 1)[0] if "=" in policy.split("+")[0] else
                 "old" if policy.startswith("old:") else policy)
        print(f"{label:10s} light p50/p99 alone {r['alone_p50'] * 1e3:7.1f}/{r['alone_p99'] * 1e3:7.1f} ms"
              f"  flooded {r['loaded_p50'] * 1e3:7.1f}/{r['loaded_p99'] * 1e3:7.1f} ms"
              f"  p99 x{r['ratio_p99']:.2f}  steps p50 {r['alone_steps_p50']:.0f} -> "
              f"{r['loaded_steps_p50']:.0f}, p99 {r['alone_steps_p99']:.0f} -> "
              f"{r['loaded_steps_p99']:.0f} (x{r['steps_ratio_p99']:.2f})"
              f"  step {r['alone_step_ms']:.3f} ms/{r['alone_step_tokens']:.1f} tok -> "
              f"{r['loaded_step_ms']:.3f} ms/{r['loaded_step_tokens']:.1f} tok  light 429s {r['light_rejected']}/{args.light}"
              f"  heavy {r['heavy_ok']} ok, {r['heavy_rejected']} 429,"
              f" {r['heavy_sequences_per_s']:.0f} seq/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
