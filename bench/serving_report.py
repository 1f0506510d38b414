#!/usr/bin/env python3
"""Writes the markdown of bench/run-serving-bench.sh from its run directory.

The directory holds meta.json (machine, versions, command, settings), loadgen JSONs named
SERVER-cN.json (SERVER: expertd, llamacpp) and greedy.json (compare_greedy.py), any of which
may be missing (a server that could not run). Usage: serving_report.py RUN_DIR OUT.md
"""
import json
import os
import sys


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def ratio(a, b, nd=2):
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.{nd}f}"


def main():
    run, out = sys.argv[1], sys.argv[2]
    meta = load(os.path.join(run, "meta.json")) or {}
    conc = meta.get("concurrency", [1, 8, 32])
    L = []
    L.append(f"# Serving on the CPU: expertd against llama.cpp (llama-cpp-python's server)\n")
    L.append(meta.get("intro", "").strip() + "\n" if meta.get("intro") else "")
    L.append("## Setup\n")
    for k in ("date", "machine", "load", "model", "gguf", "workload", "threads", "expertd",
              "llama_cpp_python", "llama_cpp", "openai_sdk", "command"):
        if k in meta:
            v = meta[k]
            L.append(f"- {k.replace('_', '-')}: {'`' + v + '`' if k == 'command' else v}")
    L.append("")
    L.append("## Throughput and latency\n")
    L.append("Each row: the same requests (same prompts, max_tokens, temperature 0, EOS banned by "
             "logit_bias so every request generates max_tokens) sent by `bench/loadgen.py` in "
             "closed loop at that concurrency, one server at a time. Ratios are expertd / "
             "llama.cpp: above 1 is better for expertd in throughput, below 1 is better for "
             "expertd in latency. TPOT (time per output token: per request, time after the "
             "first token / (output tokens - 1)) is the per-token figure to compare: ITL is "
             "measured between streamed chunks, and llama-cpp-python's stream holds back and "
             "splits text (more chunks than tokens, several in a burst), so its ITL p50 is not "
             "a per-token time.\n")
    L.append("| concurrency | server | requests ok / errors | req/s | output tok/s | TTFT p50 ms | "
             "TTFT p99 ms | ITL p50 ms | ITL p99 ms | TPOT p50 ms | e2e p50 ms | e2e p99 ms |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios = []
    for c in conc:
        got = {}
        for srv, label in (("expertd", "expertd"), ("llamacpp", "llama.cpp")):
            d = load(os.path.join(run, f"{srv}-c{c}.json"))
            if d is None:
                L.append(f"| {c} | {label} | did not run | - | - | - | - | - | - | - | - | - |")
                continue
            s = d["summary"]
            got[srv] = s
            L.append(f"| {c} | {label} | {s['completed']} / {s['errors']} | "
                     f"{fmt(s['request_throughput_rps'], 2)} | {fmt(s['output_throughput_tps'])} | "
                     f"{fmt(s['ttft_ms'].get('p50'))} | {fmt(s['ttft_ms'].get('p99'))} | "
                     f"{fmt(s['itl_ms'].get('p50'), 2)} | {fmt(s['itl_ms'].get('p99'), 2)} | "
                     f"{fmt(s['tpot_ms'].get('p50'), 2)} | "
                     f"{fmt(s['e2e_ms'].get('p50'))} | {fmt(s['e2e_ms'].get('p99'))} |")
        if "expertd" in got and "llamacpp" in got:
            e, l = got["expertd"], got["llamacpp"]
            ratios.append(
                f"| {c} | {ratio(e['output_throughput_tps'], l['output_throughput_tps'])} | "
                f"{ratio(e['request_throughput_rps'], l['request_throughput_rps'])} | "
                f"{ratio(e['ttft_ms'].get('p50'), l['ttft_ms'].get('p50'))} | "
                f"{ratio(e['ttft_ms'].get('p99'), l['ttft_ms'].get('p99'))} | "
                f"{ratio(e['tpot_ms'].get('p50'), l['tpot_ms'].get('p50'))} | "
                f"{ratio(e['e2e_ms'].get('p50'), l['e2e_ms'].get('p50'))} | "
                f"{ratio(e['e2e_ms'].get('p99'), l['e2e_ms'].get('p99'))} |")
    if ratios:
        L.append("\nRatios expertd / llama.cpp:\n")
        L.append("| concurrency | output tok/s | req/s | TTFT p50 | TTFT p99 | TPOT p50 | e2e p50 | e2e p99 |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        L.extend(ratios)
    g = load(os.path.join(run, "greedy.json"))
    L.append("\n## Greedy agreement\n")
    if g is None:
        L.append(meta.get("greedy_note", "Not measured (one server did not run)."))
    else:
        L.append(f"temperature 0, {g['max_tokens']} tokens per prompt, EOS banned, streamed; "
                 f"streamed chunks compared one by one (a chunk is a token in expertd; llama-cpp-python's "
                 f"stream mostly sends one per token but holds back and splits some). "
                 f"**{g['identical']} of {g['prompts']} continuations identical as streamed, "
                 f"{g.get('identical_without_fffd', '-')} of {g['prompts']} identical once U+FFFD is "
                 f"removed; {g['leading_tokens_agree_total']} of {g['tokens_compared_total']} "
                 f"streamed chunks agree before the first difference.** Bytes that do not form a "
                 f"character (a token holding part of a UTF-8 character) stream as U+FFFD from "
                 f"expertd (lossy decoding, as transformers) and as nothing from llama-cpp-python "
                 f"(it decodes with errors=ignore), so the token-by-token count stops at the first "
                 f"such token even where both chose the same tokens; the comparison without U+FFFD "
                 f"shows whether the text is the same.\n")
        L.append("| prompt | leading tokens agree | same text without U+FFFD | leading chars agree (without U+FFFD) | expertd | llama.cpp |")
        L.append("| --- | --- | --- | --- | --- | --- |")
        for r in g["rows"]:
            def cell(t):
                return json.dumps(t, ensure_ascii=False)[1:-1].replace("|", "\\|")[:160]
            L.append(f"| {cell(r['prompt'])} | {r['leading_tokens_agree']} / "
                     f"{min(r['a_tokens'], r['b_tokens'])} | {'yes' if r.get('identical_without_fffd') else 'no'} | "
                     f"{r.get('leading_chars_agree_without_fffd', '-')} / {min(r.get('chars_without_fffd', [0, 0]))} | "
                     f"{cell(r['a_text'])} | {cell(r['b_text'])} |")
    for note in meta.get("notes", []):
        L.append("\n" + note.strip())
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(x for x in L if x is not None) + "\n")


if __name__ == "__main__":
    main()
