#!/usr/bin/env python3
"""The tokenizers library on the same tokenizer.json and text as bench-tokenizer: one encode per
line, single-threaded, median of repeats, MB/s as JSON. Also checks that both give the same ids.
Usage: tokenizers_baseline.py TOKENIZER_DIR TEXT_FILE [REPEATS]"""
import json
import os
import statistics
import sys
import time

import tokenizers

tok = tokenizers.Tokenizer.from_file(os.path.join(sys.argv[1], "tokenizer.json"))
data = open(sys.argv[2], "rb").read()
text = data.decode("utf-8")
# split on "\n" only, keeping it, exactly as bench-tokenizer does (splitlines also splits on \r)
lines = [line + "\n" for line in text.split("\n")]
lines[-1] = lines[-1][:-1]
if not lines[-1]:
    lines.pop()
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
times, n_ids = [], 0
for _ in range(repeats):
    t0 = time.perf_counter()
    n_ids = sum(len(tok.encode(line, add_special_tokens=False).ids) for line in lines)
    times.append(time.perf_counter() - t0)
t = statistics.median(times)
# encode_batch: one call for all lines, in Rust threads (as many as cores), no per-call Python cost
batch_times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    n_batch = sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
    batch_times.append(time.perf_counter() - t0)
tb = statistics.median(batch_times)
print(json.dumps({"engine": "tokenizers " + tokenizers.__version__, "bytes": len(data),
                  "ids": n_ids, "median_s": round(t, 4), "mb_per_s": round(len(data) / t / 1e6, 2),
                  "encode_batch_ids": n_batch, "encode_batch_mb_per_s": round(len(data) / tb / 1e6, 2),
                  "threads": os.cpu_count()}))
