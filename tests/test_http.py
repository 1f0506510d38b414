"""Integration tests of `expertd serve`: the official openai SDK, raw HTTP for SSE framing,
prometheus_client's parser for /metrics, every error status, disconnect-cancels, SIGTERM drain
and 64 concurrent streams. Usage: test_http.py EXPERTD MODEL_DIR ODD_TEMPLATE_MODEL_DIR"""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import openai
import requests
from prometheus_client.parser import text_string_to_metric_families

EXPERTD, MODEL, ODD_MODEL = sys.argv[1:4]
passed, failed = 0, 0


def poll(fn, timeout, what):
    """Calls fn every 10 ms until it returns a true value, and returns that value; fails after
    timeout seconds, saying what was awaited (what: a string, or a callable for a message made
    at that moment). Deadlines are generous: the suite also runs under ThreadSanitizer."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout} s: " + (what() if callable(what) else what))
        time.sleep(0.01)


def poll_metrics(s, cond, timeout, what):
    """Polls s's /metrics until cond(metrics) holds; returns those metrics. The failure names
    what was awaited and shows the last scrape."""
    last = [None]

    def scrape():
        last[0] = s.metrics()
        return last[0] if cond(last[0]) else None
    def shown():  # the last scrape without histograms
        return " ".join(f"{k[0]}{dict(k[1]) if k[1] else ''}={v:g}"
                        for k, v in last[0].items() if not re.search(r"_(bucket|sum|count)$", k[0]))
    return poll(scrape, timeout, lambda: f"{what}; last /metrics: {shown()}")


class Server:
    """expertd serve on an ephemeral port; stderr collected in self.log."""

    def __init__(self, *args, model=MODEL, env=None):
        e = dict(os.environ, OMP_NUM_THREADS="1")
        e.pop("EXPERTD_API_KEY", None)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [EXPERTD, "serve", "--model", model, "--port", "0", "--threads", "1", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e, text=True)
        self.log, self.port = [], None
        got_port = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                m = re.search(r"listening on http://[^ ]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    got_port.set()
            got_port.set()

        threading.Thread(target=drain, daemon=True).start()
        if not got_port.wait(60) or not self.port:
            raise RuntimeError("expertd did not start: " + "\n".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("expertd exited before ready: " + "\n".join(self.log))
            return requests.get(self.url + "/health").status_code == 200
        poll(ready, 120, lambda: "expertd never became ready: " + "\n".join(self.log))
        self.name = os.path.basename(model.rstrip("/"))

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def metrics(self, headers=None):
        text = requests.get(self.url + "/metrics").text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def metric(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test(fn):
    global passed, failed
    only = os.environ.get("XD_HTTP_ONLY")  # comma-separated test names: run just those
    if only and fn.__name__ not in only.split(","):
        return fn
    t0 = time.time()
    try:
        fn()
        passed += 1
        print(f"ok   {fn.__name__} ({time.time() - t0:.1f} s)", flush=True)
    except Exception:
        failed += 1
        print(f"FAIL {fn.__name__}", flush=True)
        traceback.print_exc()
        sys.stdout.flush()


def post(url, body, headers=None, raw=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return requests.post(url, data=raw if raw is not None else json.dumps(body), headers=h,
                         timeout=60)


def expect_error(r, status, param=None, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"], err
    if param:
        assert err["param"] == param, err
        assert param in err["message"], err
    if code:
        assert err["code"] == code, err
    return err


S = Server("--max-running", "64")
C = S.client()
GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})


@test
def completions_object():
    r = C.completions.create(model=S.name, prompt="Hello world", max_tokens=8, **GREEDY)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == S.name
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].finish_reason == "length" and isinstance(r.choices[0].text, str)
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


@test
def completions_prompt_forms_and_n():
    r = C.completions.create(model=S.name, prompt=[[1, 2, 3], [4, 5]], max_tokens=3, n=2,
                             **GREEDY)
    assert [c.index for c in r.choices] == [0, 1, 2, 3], r.choices
    assert r.choices[0].text == r.choices[1].text  # greedy: n copies agree
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 12, r.usage
    r2 = C.completions.create(model=S.name, prompt=["Hello", "world"], max_tokens=2, **GREEDY)
    assert len(r2.choices) == 2
    r3 = C.completions.create(model=S.name, prompt=[4, 5], max_tokens=3, **GREEDY)
    assert r3.choices[0].text == r.choices[2].text


@test
def streamed_text_equals_whole_text():
    for kw in (dict(temperature=0), dict(temperature=1.0, seed=11, top_p=0.9)):
        kw = dict(kw, extra_body={"ignore_eos": True})
        whole = C.completions.create(model=S.name, prompt="The sky", max_tokens=24, **kw)
        chunks = list(C.completions.create(model=S.name, prompt="The sky", max_tokens=24,
                                           stream=True, stream_options={"include_usage": True},
                                           **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == whole.choices[0].text, (text, whole.choices[0].text)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
        assert chunks[-2].choices[0].finish_reason == "length"
        # one chunk per token as produced, plus the finish chunk
        assert len([c for c in chunks if c.choices]) == 25, len(chunks)


@test
def chat_streamed_and_not():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = C.chat.completions.create(model=S.name, messages=msgs, max_completion_tokens=16,
                                      **GREEDY)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    m = whole.choices[0].message
    assert m.role == "assistant" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 16
    chunks = list(C.chat.completions.create(model=S.name, messages=msgs, max_tokens=16,
                                            stream=True, stream_options={"include_usage": True},
                                            **GREEDY))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == m.content, (text, m.content)
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


@test
def chat_logprobs():
    r = C.chat.completions.create(model=S.name, messages=[{"role": "user", "content": "x"}],
                                  max_tokens=4, logprobs=True, top_logprobs=3, **GREEDY)
    lp = r.choices[0].logprobs.content
    assert len(lp) == 4 and all(len(t.top_logprobs) == 3 for t in lp)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob == t.logprob for t in lp)


@test
def completions_logprobs_and_echo():
    r = C.completions.create(model=S.name, prompt="abc", max_tokens=3, logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.token_logprobs) == 3 and len(lp.top_logprobs) == 3
    assert lp.text_offset[0] == 0
    e = C.completions.create(model=S.name, prompt="abc", max_tokens=3, echo=True, **GREEDY)
    assert e.choices[0].text == "abc" + r.choices[0].text


@test
def stop_sequences():
    base = C.completions.create(model=S.name, prompt="Once", max_tokens=40, **GREEDY)
    text = base.choices[0].text
    stop = None
    for k in range(4, len(text) - 3):
        cand = text[k:k + 2]
        if text.find(cand) == k and cand.strip():
            stop = cand
            break
    assert stop, text
    for stream in (False, True):
        if stream:
            chunks = list(C.completions.create(model=S.name, prompt="Once", max_tokens=40,
                                               stop=[stop, "\x01never"], stream=True, **GREEDY))
            got = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            r = C.completions.create(model=S.name, prompt="Once", max_tokens=40, stop=stop,
                                     **GREEDY)
            got, reason = r.choices[0].text, r.choices[0].finish_reason
        assert got == text[:text.find(stop)], (got, text, stop)
        assert reason == "stop"


@test
def seed_reproducibility():
    kw = dict(model=S.name, prompt="Seeds", max_tokens=20, temperature=1.0,
              extra_body={"ignore_eos": True})
    a = C.completions.create(seed=1234, **kw).choices[0].text
    b = C.completions.create(seed=1234, **kw).choices[0].text
    assert a == b
    # Another seed gives another text. Drawn at temperature 1 with no other filter, seed 1234
    # reproduces c's 20 tokens with probability exp(sum of c's token logprobs): the test model's
    # random weights spread each step over its 602 tokens (about -6 a token, near -120 over the
    # 20 at the time of writing), so a chance collision is practically impossible; the bound is
    # asserted (under e^-40), so a peakier test model fails here instead of flaking below.
    c = C.completions.create(seed=4321, logprobs=1, **kw).choices[0]
    logp_same = sum(c.logprobs.token_logprobs)
    assert len(c.logprobs.token_logprobs) == 20 and logp_same < -40, c.logprobs.token_logprobs
    assert c.text != a, (a, c.text)


@test
def greedy_equals_generate():
    out = subprocess.run([EXPERTD, "generate", "--model", MODEL, "--prompt", "Hello world",
                          "--max-tokens", "12", "--ignore-eos", "--threads", "1"],
                         capture_output=True, text=True, check=True).stdout
    r = C.completions.create(model=S.name, prompt="Hello world", max_tokens=12, **GREEDY)
    assert "Hello world" + r.choices[0].text + "\n" == out, (r.choices[0].text, out)


@test
def sse_framing_raw():
    with socket.create_connection(("127.0.0.1", S.port)) as sock:
        body = json.dumps({"prompt": "raw", "max_tokens": 5, "stream": True, "temperature": 0,
                           "ignore_eos": True, "stream_options": {"include_usage": True}})
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close"
                      f"\r\n\r\n{body}").encode())
        raw = b""
        while True:
            b = sock.recv(65536)
            if not b:
                break
            raw += b
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0] and b"text/event-stream" in head.lower(), head
    assert b"transfer-encoding: chunked" in head.lower(), head
    # undo the chunked transfer encoding
    payload = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        payload += rest[:size]
        rest = rest[size + 2:]
    events = payload.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]", events[-3:]
    datas = [e for e in events[:-2] if not e.startswith(":")]
    assert all(e.startswith("data: {") and "\n" not in e for e in datas), datas
    objs = [json.loads(e[6:]) for e in datas]
    assert len(objs) == 7  # 5 tokens, the finish chunk, the usage chunk
    assert objs[5]["choices"][0]["finish_reason"] == "length"
    assert objs[6]["usage"]["completion_tokens"] == 5 and objs[6]["choices"] == []


@test
def models_and_health():
    ms = C.models.list()
    assert [m.id for m in ms.data] == [S.name]
    h = requests.get(S.url + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


@test
def metrics_exposition():
    m = S.metrics()
    assert metric(m, "expertd_requests_total", endpoint="/v1/completions", status="200") > 0
    assert metric(m, "expertd_time_to_first_token_seconds_count") > 0
    assert metric(m, "expertd_inter_token_latency_seconds_count") > 0
    assert metric(m, "expertd_e2e_request_latency_seconds_count") > 0
    assert metric(m, "expertd_queue_time_seconds_count") > 0
    assert metric(m, "expertd_generation_tokens_total") > 0
    assert metric(m, "expertd_prompt_tokens_total") > 0
    assert metric(m, "expertd_kv_cache_blocks") > 0
    assert metric(m, "expertd_tokens_per_step") > 0
    assert metric(m, "expertd_distinct_experts_per_layer_step") > 0
    for name in ("expertd_requests_running", "expertd_requests_waiting",
                 "expertd_kv_cache_usage_ratio", "expertd_preemptions_total",
                 "expertd_prefix_cache_hits_total"):
        assert any(k[0] == name for k in m), name
    assert any(k[0] == "expertd_build_info" and dict(k[1]).get("backend") == "cpu" for k in m)


@test
def error_statuses():
    u = S.url + "/v1/completions"
    expect_error(post(u, None, raw="{\"prompt\": "), 400, code="invalid_json")
    expect_error(post(u, {"prompt": "x", "temperature": "hot"}), 400, "temperature")
    expect_error(post(u, {"prompt": "x", "top_p": 7}), 400, "top_p")
    expect_error(post(u, {"prompt": [1, 999999]}), 400, "prompt")
    expect_error(post(u, {"prompt": "x", "model": "gpt-4"}), 404, "model", "model_not_found")
    expect_error(post(u, {"prompt": "x", "max_tokens": 9000}), 400, "max_tokens",
                 "context_length_exceeded")
    expect_error(post(S.url + "/v1/chat/completions",
                      {"messages": [{"role": "user", "content": "x"}],
                       "max_completion_tokens": 9000}), 400, "max_completion_tokens")
    expect_error(post(S.url + "/v1/chat/completions", {"messages": "hi"}), 400, "messages")
    try:
        C.completions.create(model=S.name, prompt="x", temperature=5)
        raise AssertionError("accepted temperature 5")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "temperature" in str(e)
    assert requests.get(S.url + "/nope").status_code == 404


@test
def disconnect_cancels():
    before = S.metrics()
    with socket.create_connection(("127.0.0.1", S.port)) as sock:
        body = json.dumps({"prompt": "long", "max_tokens": 8000, "stream": True,
                           "ignore_eos": True})
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      f"{len(body)}\r\n\r\n{body}").encode())
        got = b""
        while got.count(b"data: ") < 3:
            got += sock.recv(4096)
        m = S.metrics()
        assert metric(m, "expertd_requests_running") == 1, m
        assert metric(m, "expertd_kv_cache_blocks_used") > 0
    m = poll_metrics(S, lambda m: metric(m, "expertd_requests_running") == 0 and
                     metric(m, "expertd_kv_cache_blocks_used") == 0, 2.0,
                     "request still running after the client left")
    gen = metric(m, "expertd_generation_tokens_total") - \
        metric(before, "expertd_generation_tokens_total")
    assert gen < 8000, gen
    # counted by the completion callback, which may run just after the cancel took effect
    poll_metrics(S, lambda m: metric(m, "expertd_client_disconnects_total") >
                 metric(before, "expertd_client_disconnects_total"), 30,
                 "the disconnect was not counted")
    # the non-streaming kind too: a client that gives up on a whole response and leaves while
    # it is generated. Only the token count and the disconnect counter show that the request
    # was cancelled (a client-side timeout alone passes on a machine that finishes the 8000
    # tokens in it), so the client leaves as soon as the request is seen generating.
    before = S.metrics()
    with socket.create_connection(("127.0.0.1", S.port)) as sock:
        body = json.dumps({"prompt": "x", "max_tokens": 8000, "ignore_eos": True})
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      f"{len(body)}\r\n\r\n{body}").encode())
        poll_metrics(S, lambda m: metric(m, "expertd_requests_running") == 1 and
                     metric(m, "expertd_generation_tokens_total") >
                     metric(before, "expertd_generation_tokens_total"), 60,
                     "the non-streaming request never started generating")
    m = poll_metrics(S, lambda m: metric(m, "expertd_requests_running") == 0, 2.0,
                     "non-streaming request still running")
    gen = metric(m, "expertd_generation_tokens_total") - \
        metric(before, "expertd_generation_tokens_total")
    assert 0 < gen < 8000, gen
    poll_metrics(S, lambda m: metric(m, "expertd_client_disconnects_total") >
                 metric(before, "expertd_client_disconnects_total"), 30,
                 "the non-streaming disconnect was not counted")


@test
def concurrent_streams_64():
    """64 streams at once, each with its own prompt: every stream's text is the one it gets run
    alone (batching changes no result, and no stream gets another's tokens), and the scheduler
    really batched them."""
    def params(i):
        # even streams greedy; odd ones sampled under their own seed, whose draws must not
        # depend on what else is in the batch either
        if i % 2:
            return dict(temperature=0.8, seed=i, extra_body={"ignore_eos": True})
        return GREEDY

    solo = [C.completions.create(model=S.name, prompt=f"client {i}", max_tokens=8,
                                 **params(i)).choices[0].text for i in range(64)]
    # most prompts lead the test model to texts of their own, so a stream handed another
    # stream's tokens shows (59 distinct of 64 at the time of writing)
    assert len(set(solo)) >= 32, solo
    results = [None] * 64
    start = threading.Barrier(64)  # all at once: the server faster than 64 threads starting

    def one(i):
        try:
            start.wait(60)
            chunks = list(C.completions.create(
                model=S.name, prompt=f"client {i}", max_tokens=8, stream=True,
                stream_options={"include_usage": True}, **params(i)))
            results[i] = (chunks[-2].choices[0].finish_reason, chunks[-1].usage.completion_tokens,
                          "".join(c.choices[0].text for c in chunks if c.choices))
        except Exception as e:  # noqa: BLE001
            results[i] = repr(e)

    # The scheduler counts a step's generated tokens after its sinks ran, so the last solo
    # run's last token may not be counted yet; it is once the running gauge, published after
    # that count, says 0.
    before = poll_metrics(S, lambda m: metric(m, "expertd_requests_running") == 0, 30,
                          "the solo runs still running")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = [(i, r, solo[i]) for i, r in enumerate(results) if r != ("length", 8, solo[i])]
    assert not bad, bad
    # Batched: one at a time, a request of 8 tokens takes 8 steps (the prompt's step samples the
    # first), so generated tokens per step would be exactly 1; more means steps served several
    # streams. (Step tokens would count prompt tokens too, over 1 even without batching.)
    def delta(m, name):
        return metric(m, name) - metric(before, name)
    m = poll_metrics(S, lambda m: metric(m, "expertd_requests_running") == 0 and
                     delta(m, "expertd_generation_tokens_total") >= 64 * 8, 30,
                     "the 64 streams' tokens were not all counted")
    gen, steps = delta(m, "expertd_generation_tokens_total"), delta(m, "expertd_steps_total")
    assert gen == 64 * 8 and gen / steps > 1, (gen, steps)


@test
def one_log_line_per_request_without_prompt_text():
    secret = "pineapple-secret-prompt"
    def posts():
        return [l for l in S.log if "POST /v1/completions" in l]
    n_before = len(posts())
    # ignore_eos: an early EOS from the random weights would make the line's count 1
    C.completions.create(model=S.name, prompt=secret, max_tokens=2,
                         extra_body={"ignore_eos": True})
    # written by the completion callback, which may run after the client has its answer (and
    # so may the lines of the requests before it)
    poll(lambda: [l for l in posts()[n_before:] if "status=200" in l and
                  "completion_tokens=2" in l], 30,
         lambda: f"no status=200 completion_tokens=2 line among {posts()[n_before:]}")
    assert not any(secret in l for l in S.log)


# ---- limits, auth, templates: a second server ----

@test
def auth_limits_and_queue():
    key = "k3y-for-tests"
    s = Server("--max-body-bytes", "2048", "--max-running", "1", "--max-waiting", "1",
               "--keepalive-interval", "0.05", model=ODD_MODEL, env={"EXPERTD_API_KEY": key})
    try:
        u = s.url + "/v1/completions"
        expect_error(post(u, {"prompt": "x"}), 401, code="invalid_api_key")
        expect_error(post(u, {"prompt": "x"}, {"Authorization": "Bearer wrong"}), 401)
        expect_error(post(u, {"prompt": "x"}, {"Authorization": "Bearer " + key + "x"}), 401)
        try:
            s.client("wrong").models.list()
            raise AssertionError("wrong key accepted")
        except openai.AuthenticationError:
            pass
        c = s.client(key)
        assert c.completions.create(model=s.name, prompt="x", max_tokens=2).usage
        assert requests.get(s.url + "/health").status_code == 200  # no key needed
        auth = {"Authorization": "Bearer " + key}
        expect_error(post(u, {"prompt": "x" * 4096}, auth), 413)
        # a huge Content-Length is refused from the headers alone, before the body is sent
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sk:
            sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       key.encode() + b"\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 1000000000\r\n\r\n{")
            head = sk.recv(4096).decode(errors="replace")
            assert head.startswith("HTTP/1.1 413"), head
        # a chat template that does not parse: chat says where and how to override, completions
        # work
        err = expect_error(post(s.url + "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "x"}]}, auth), 400,
                           code="chat_template_unsupported")
        assert "chat-template" in err["message"] and "line 1" in err["message"], err
        # queue full: one running, one waiting, the third is refused with Retry-After
        socks = []
        body = json.dumps({"prompt": "q", "max_tokens": 8000, "stream": True,
                           "ignore_eos": True})
        for want_running, want_waiting in ((1, 0), (1, 1)):
            sk = socket.create_connection(("127.0.0.1", s.port))
            sk.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                        f"{key}\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
            socks.append(sk)
            poll_metrics(s, lambda m: metric(m, "expertd_requests_running") == want_running and
                         metric(m, "expertd_requests_waiting") == want_waiting, 60,
                         f"not {want_running} running and {want_waiting} waiting")
        r = post(u, {"prompt": "x", "max_tokens": 2}, auth)
        expect_error(r, 429)
        assert r.headers.get("Retry-After"), r.headers
        # the waiting stream gets keep-alive comments while the first one runs
        socks[1].settimeout(5)
        seen = b""
        while b": keep-alive" not in seen:
            seen += socks[1].recv(65536)
        assert b"data: {" not in seen, seen[:300]
        for sk in socks:
            sk.close()
    finally:
        assert s.stop() == 0


@test
def sigterm_drains_in_flight_stream():
    s = Server("--chat-template", "chatml", "--drain-timeout", "30", model=ODD_MODEL)
    try:
        c = s.client()
        # the override makes chat work on a model whose template does not parse
        assert c.chat.completions.create(model=s.name, messages=[{"role": "user", "content":
                                                                  "x"}], max_tokens=2).usage
        stream = c.completions.create(model=s.name, prompt="drain", max_tokens=300,
                                      stream=True, extra_body={"ignore_eos": True})
        it = iter(stream)
        first = next(it)
        s.proc.send_signal(signal.SIGTERM)
        poll(lambda: requests.get(s.url + "/health").status_code == 503, 30,
             "/health never said 503 while draining")
        expect_error(post(s.url + "/v1/completions", {"prompt": "x"}), 503)
        rest = list(it)
        assert rest[-1].choices[0].finish_reason == "length"
        assert 1 + len(rest) == 301, len(rest)
        assert s.proc.wait(30) == 0
        assert first.choices
    finally:
        s.stop()


@test
def chat_template_file_errors_are_400():
    """--chat-template FILE: the template's raise_exception and a runaway loop are the request's
    400 naming the cause; tools and chat_template_kwargs reach the template; the server lives."""
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "t.jinja")
    with open(path, "w") as f:
        f.write("{% if messages[0].content == 'boom' %}{{ raise_exception('no boom here') }}"
                "{% elif messages[0].content == 'loop' %}{% for i in range(100000) %}"
                "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
                "{{ m.content }}<|im_end|>\n{% endfor %}{% if tools %}{{ tools | tojson }}"
                "{% endif %}{% if shout is defined and shout %}LOUD{% endif %}"
                "{% for d in documents or [] %}<doc>{{ d.text }}</doc>{% endfor %}"
                "{% for m in messages %}{% for c in m.tool_calls or [] %}"
                "{% if c.function.arguments is not mapping %}"
                "{{ raise_exception('arguments not decoded') }}{% endif %}"
                "<call>{{ c.function.arguments.city }}</call>{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    # the template shows no tool-call syntax: the parser is named, as vLLM's --tool-call-parser
    s = Server("--chat-template", path, "--tool-call-parser", "hermes")
    try:
        u = s.url + "/v1/chat/completions"
        def chat(content, **extra):
            return post(u, {"messages": [{"role": "user", "content": content}],
                            "max_tokens": 1, **extra})
        err = expect_error(chat("boom"), 400, param="messages", code="chat_template_error")
        assert "no boom here" in err["message"], err
        err = expect_error(chat("loop"), 400, param="messages", code="chat_template_error")
        assert any(w in err["message"] for w in ("limit", "steps", "exceeded")), err
        plain = chat("hello")
        assert plain.status_code == 200, plain.text
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]
        with_tools = chat("hello", tools=tools)
        assert with_tools.status_code == 200, with_tools.text
        loud = chat("hello", chat_template_kwargs={"shout": True})
        docs = chat("hello", documents=[{"title": "t", "text": "some document text"}])
        n = [r.json()["usage"]["prompt_tokens"] for r in (plain, with_tools, loud, docs)]
        assert n[1] > n[0] + 5 and n[2] > n[0] and n[3] > n[0] + 3, n  # all were rendered
        expect_error(chat("hello", tools=[{"type": "function", "function": {}}]), 400,
                     param="tools")
        # a tool round trip: the assistant's tool_calls (arguments as OpenAI sends them, JSON
        # text, decoded for the template as vLLM does) and the tool message are accepted
        def round_trip(arguments):
            return post(u, {"max_tokens": 1, "tools": tools, "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]})
        r = round_trip("{\"city\": \"Paris\"}")
        assert r.status_code == 200, r.text
        assert round_trip({"city": "Paris"}).status_code == 200
        err = expect_error(round_trip("{city: Paris"), 400, param="messages")
        assert "tool_calls[0].function.arguments" in err["message"], err
    finally:
        assert s.stop() == 0
    # an override that does not parse stops the load, naming the option and the line
    with open(path, "w") as f:
        f.write("{% for m in messages %}{{ m.content }}\n{% endfor")
    r = subprocess.run([EXPERTD, "serve", "--model", MODEL, "--port", "0", "--threads", "1",
                        "--chat-template", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode != 0, r.stderr
    assert "--chat-template" in r.stderr and "line 2" in r.stderr, r.stderr


@test
def request_timeout_cuts_generation():
    s = Server("--request-timeout", "0.3")
    try:
        t0 = time.time()
        r = s.client().completions.create(model=s.name, prompt="slow", max_tokens=8000,
                                          extra_body={"ignore_eos": True})
        assert time.time() - t0 < 3
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens < 8000
    finally:
        assert s.stop() == 0


@test
def record_routing_and_expert_metrics():
    """--record-routing writes the served tokens' routing; expertd plan replays it: one trace
    token per token the engine ran (prompt plus every generated token but the last)."""
    import tempfile
    trace = os.path.join(tempfile.mkdtemp(), "serve.xdtrace")
    s = Server("--record-routing", trace)
    try:
        usage = []
        for p in ["one two three", "four five"]:
            r = s.client().completions.create(model=s.name, prompt=p, max_tokens=6, **GREEDY)
            usage.append(r.usage)
        m = s.metrics()
        assert metric(m, "expertd_expert_offloading") == 0  # CPU: every expert resident
        assert ("expertd_expert_cache_hits_total", ()) in m
        assert ("expertd_expert_stall_seconds_total", ()) in m
        assert metric(m, "expertd_expert_stall_seconds_total") == 0
    finally:
        assert s.stop() == 0
    out = subprocess.run([EXPERTD, "plan", "--trace", trace, "--cache-slots", "4", "--json"],
                         capture_output=True, text=True, check=True)
    plan = json.loads(out.stdout)
    want = sum(u.prompt_tokens + u.completion_tokens - 1 for u in usage)
    assert plan["tokens"] == want, (plan["tokens"], want)
    assert 0 < plan["prediction_recall"] <= 1, plan


@test
def sd_notify_ready_watchdog_stopping():
    """Under systemd (Type=notify, WatchdogSec): READY=1 once loaded, WATCHDOG=1 while the
    scheduler loop turns, STOPPING=1 at SIGTERM."""
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    s = Server(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    got = []
    try:
        while not any("WATCHDOG=1" in g for g in got):
            got.append(sock.recv(4096).decode())
    finally:
        assert s.stop() == 0
    try:
        while not any("STOPPING=1" in g for g in got):
            got.append(sock.recv(4096).decode())
    finally:
        sock.close()
    text = "\n".join(got)
    assert "READY=1" in text and "STATUS=serving" in text, text
    assert text.index("READY=1") < text.index("WATCHDOG=1") < text.index("STOPPING=1"), text


def read_head(sk, deadline_s=5.0):
    """Reads from sk until the end of an HTTP response head; returns the head as text."""
    sk.settimeout(deadline_s)
    got = b""
    while b"\r\n\r\n" not in got:
        b = sk.recv(4096)
        if not b:
            break
        got += b
    return got.decode(errors="replace")


def closes_soon(sk, deadline_s=5.0):
    """True when the server closes sk (EOF or reset) within deadline_s, whatever it sent."""
    sk.settimeout(0.2)
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        try:
            if not sk.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


@test
def wrong_key_refused_before_the_body():
    """The API key is checked from the headers: a wrong key gets 401 before any byte of the
    body is sent (the server buffers none of it), also with a body over max-body-bytes (401,
    not 413) and with a chunked body of unknown size; the connection is closed after."""
    key = "k3y-early"
    s = Server("--max-body-bytes", "2048", env={"EXPERTD_API_KEY": key})
    try:
        heads = {
            "short body, never sent": b"Content-Length: 1000\r\n",
            "over max-body-bytes": b"Content-Length: 1000000000\r\n",
            "chunked": b"Transfer-Encoding: chunked\r\n",
        }
        for what, framing in heads.items():
            for auth in (b"", b"Authorization: Bearer wrong\r\n"):
                with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sk:
                    t0 = time.time()
                    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + auth +
                               b"Content-Type: application/json\r\n" + framing + b"\r\n")
                    try:
                        head = read_head(sk)
                    except socket.timeout:
                        raise AssertionError(f"{what}: no answer before the body was sent")
                    assert head.startswith("HTTP/1.1 401"), (what, head)
                    assert "www-authenticate: bearer" in head.lower(), (what, head)
                    assert "connection: close" in head.lower(), (what, head)
                    assert time.time() - t0 < 3, (what, time.time() - t0)
                    # the body that follows is not read as a request: the server hangs up
                    try:
                        sk.sendall(b"x" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    assert closes_soon(sk), what
        # the right key still works, and a right key with an oversized body is still 413
        auth = {"Authorization": "Bearer " + key}
        r = post(s.url + "/v1/completions", {"prompt": "x", "max_tokens": 2}, auth)
        assert r.status_code == 200, r.text
        expect_error(post(s.url + "/v1/completions", {"prompt": "x" * 4096}, auth), 413)
        expect_error(post(s.url + "/v1/completions", {"prompt": "x" * 4096},
                          {"Authorization": "Bearer wrong"}), 401)
        assert requests.get(s.url + "/health").status_code == 200
    finally:
        assert s.stop() == 0


@test
def stalled_stream_reader_is_cancelled():
    """A client that keeps its socket open but stops reading has at most
    max-queued-bytes-per-request queued for it: past that every choice of its request is
    cancelled (long before max_tokens), the backpressure counter counts it, and other requests,
    including a stream read at the normal pace under the same small bound, are served."""
    s = Server("--max-queued-bytes-per-request", "65536", "--max-running", "8")
    name = "expertd_requests_cancelled_backpressure_total"
    try:
        c = s.client()
        # a reader under the same bound: nothing is cancelled
        chunks = list(c.completions.create(model=s.name, prompt="steady", max_tokens=200,
                                           n=2, logprobs=5, stream=True, **GREEDY))
        assert sum(1 for ch in chunks if ch.choices[0].finish_reason == "length") == 2
        assert metric(s.metrics(), name) == 0
        n, max_tokens = 8, 3500  # within the KV cache's four contexts: no preemption
        body = json.dumps({"prompt": "stall", "max_tokens": max_tokens, "n": n, "logprobs": 5,
                           "stream": True, "ignore_eos": True})
        sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sk.connect(("127.0.0.1", s.port))
        try:
            sk.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                        f"{len(body)}\r\n\r\n{body}").encode())
            t0 = time.time()
            while metric(s.metrics(), name) < 1:  # never reading the socket
                assert time.time() - t0 < 300, "a stalled stream was never cancelled"
                time.sleep(0.05)
            while True:
                m = s.metrics()
                if metric(m, "expertd_requests_running") == 0 and \
                        metric(m, "expertd_requests_waiting") == 0:
                    break
                assert time.time() - t0 < 300, m
                time.sleep(0.05)
            gen = metric(m, "expertd_generation_tokens_total")
            assert gen < n * max_tokens / 2, gen
            assert metric(m, name) == 1, metric(m, name)
            assert any("max-queued-bytes-per-request" in l for l in s.log), s.log[-5:]
            # the server goes on serving while the stalled connection stays open
            r = c.completions.create(model=s.name, prompt="after", max_tokens=5, **GREEDY)
            assert r.usage.completion_tokens == 5
            assert metric(s.metrics(), name) == 1
        finally:
            sk.close()
    finally:
        assert s.stop() == 0


# ---- admission: a request's sequences all or none, fair across client addresses ----

def post_from(port, src, body, timeout=120):
    """POST /v1/completions from source address src (any of 127/8 reaches the loopback
    listener; expertd tells clients apart by address): (status, seconds, JSON body)."""
    import http.client
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(src, 0))
    try:
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        return r.status, time.time() - t0, json.loads(data) if data else None
    finally:
        c.close()


@test
def admission_64_prompts_x_16_on_an_idle_server():
    # the API's largest request (64 prompts x n=16 = 1024 sequences) fits the default queue
    # whole; before, its sequences went in one by one and the 257th was a 429
    r = post(S.url + "/v1/completions",
             {"prompt": [[1 + i, 2] for i in range(64)], "n": 16, "max_tokens": 1,
              "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    ch = r.json()["choices"]
    assert len(ch) == 1024 and sorted(c["index"] for c in ch) == list(range(1024)), len(ch)
    assert r.json()["usage"]["completion_tokens"] == 1024, r.json()["usage"]


@test
def admission_never_fit_is_400_and_a_flood_does_not_starve_a_light_client():
    # one heavy client (127.0.0.2) loops requests of 2 prompts x n=8; a light one (127.0.0.1)
    # sends small requests one at a time, first alone, then under the flood; the same with
    # --admission fair-split (light clients' steps of their own) and fcfs, the order before
    # fair admission
    light = {"prompt": [[3, 4, 5]], "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    heavy = {"prompt": [[6, 7, 8], [9, 10, 11]], "n": 8, "max_tokens": 16, "temperature": 0,
             "ignore_eos": True}
    figures = {}
    for policy in ("fair", "fair-split", "fcfs"):
        s = Server("--max-running", "4", "--max-waiting", "32", "--admission", policy,
                   "--log-level", "warn")
        try:
            if policy == "fair":
                # more sequences than the queue could ever hold: 400 naming the limit, not 429
                st, _, body = post_from(s.port, "127.0.0.1",
                                        {"prompt": [[1], [2], [3]], "n": 16, "max_tokens": 1})
                assert st == 400, (st, body)
                err = body["error"]
                assert err["param"] == "n" and "48 sequences" in err["message"] and \
                    "at most 32 (max-waiting)" in err["message"], err
            alone = [post_from(s.port, "127.0.0.1", light) for _ in range(8)]
            assert all(a[0] == 200 for a in alone), alone
            stop = threading.Event()
            heavy_status = []

            def flood():
                while not stop.is_set():
                    heavy_status.append(post_from(s.port, "127.0.0.2", heavy)[0])

            threads = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
            for t in threads:
                t.start()
            poll_metrics(s, lambda m: metric(m, "expertd_requests_waiting") >= 8, 30,
                         "the flood never queued")
            loaded, steps = [], []
            for _ in range(10):  # and the engine steps each one spanned
                s0 = metric(s.metrics(), "expertd_steps_total")
                loaded.append(post_from(s.port, "127.0.0.1", light))
                steps.append(metric(s.metrics(), "expertd_steps_total") - s0)
            stop.set()
            for t in threads:
                t.join(60)
            assert all(a[0] == 200 for a in loaded), [a[0] for a in loaded]  # no 429 for it
            assert heavy_status.count(200) > 0, heavy_status
            lat = sorted(a[1] for a in loaded)
            figures[policy] = (sorted(a[1] for a in alone)[len(alone) // 2], lat[len(lat) // 2],
                               lat[-1], sorted(steps)[len(steps) // 2])
        finally:
            assert s.stop() == 0
    print("  light p50 alone / p50, max flooded (ms); engine steps a light request spans, "
          "median: " + ", ".join(f"{k} {a * 1e3:.1f} / {b * 1e3:.1f}, {c * 1e3:.1f}; {d:.0f}"
                                 for k, (a, b, c, d) in figures.items()))
    # fair: a light request shares the next steps with the heavy sequences instead of waiting
    # behind the ones queued before it, so it spans few steps (its 4 tokens and a few steps
    # while its HTTP request and the metrics reads are served). A count of the server's steps,
    # not a time: a loaded machine's stalls do not decide it. (Counting heavy responses finished
    # during it, as before, counted 429s and still-progressing heavy work alike: noise.) On a
    # fast idle machine the engine runs ~100 steps during the light client's own HTTP round
    # trips and metrics reads, which hides the queue's wait in the count (fair 106, fcfs 185
    # once); its p50 latency then shows it (4.3 ms against 23.3): either measure at half.
    for k in ("fair", "fair-split"):
        assert (figures[k][3] * 2 < figures["fcfs"][3] or
                figures[k][1] * 2 < figures["fcfs"][1]), (k, figures)


# ---- the front door (issue 20): methods, framing, slow clients, per-client cap, /metrics ----

def raw_request(port, data, deadline_s=10.0):
    """Sends data on a new connection and reads until the server closes it or deadline_s
    passes; returns (status, headers dict with lower-case names, body bytes, closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sk:
        got, closed = b"", False
        try:
            sk.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            closed = True  # closed at once; whatever it answered is still read below
        t0 = time.time()
        while time.time() - t0 < deadline_s:
            try:
                b = sk.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            got += b
            head, _, body = got.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            if m and len(body) >= int(m.group(1)):
                break
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                   (l.partition(":") for l in lines[1:]))
    return status, headers, body, closed


def expect_raw_error(resp, status, code):
    st, h, body, _ = resp
    assert st == status, (st, h, body[:300])
    assert h.get("content-type") == "application/json", h
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["code"] == code, err
    return h, err


@test
def methods_outside_the_table_are_405_with_allow():
    """Each path answers its methods only: POST /health and POST /metrics used to fall through
    to a chat completion. HEAD stays answered where GET is."""
    before = S.metrics()
    chat = json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    for path in ("/health", "/metrics"):
        r = requests.post(S.url + path, data=chat, headers={"Content-Type": "application/json"})
        expect_error(r, 405, code="method_not_allowed")
        assert r.headers.get("Allow") == "GET, HEAD", r.headers
        r = requests.delete(S.url + path)
        expect_error(r, 405, code="method_not_allowed")
        assert r.headers.get("Allow") == "GET, HEAD", r.headers
        assert requests.head(S.url + path).status_code == 200
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = requests.get(S.url + path)
        expect_error(r, 405, code="method_not_allowed")
        assert r.headers.get("Allow") == "POST", r.headers
    r = requests.put(S.url + "/v1/models", data=b"{}")
    expect_error(r, 405, code="method_not_allowed")
    assert r.headers.get("Allow") == "GET, HEAD", r.headers
    m = S.metrics()
    for ep in ("/v1/chat/completions", "/v1/completions"):
        assert metric(m, "expertd_requests_total", endpoint=ep, status="200") == \
            metric(before, "expertd_requests_total", endpoint=ep, status="200"), ep
    assert metric(m, "expertd_generation_tokens_total") == \
        metric(before, "expertd_generation_tokens_total")


@test
def ambiguous_framing_is_400_before_the_body():
    """Duplicate or conflicting Content-Length, Transfer-Encoding with Content-Length, two
    Transfer-Encodings: 400 with a JSON error and Connection: close, the body never run (MHD
    0.9.75 took the first Content-Length, or chunked over Content-Length). A coding other than
    chunked is 501 (MHD would read the body until the client closes). MHD's own check of a
    malformed Content-Length still answers 400."""
    before = S.metrics()
    body = b'{"prompt": "x", "max_tokens": 2, "ignore_eos": true}'
    start = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    n = str(len(body)).encode()
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    cases = [
        (b"Content-Length: " + n + b"\r\nContent-Length: " + n + b"\r\n\r\n" + body,
         400, "duplicate_content_length"),
        (b"Content-Length: " + n + b"\r\nContent-Length: 5\r\n\r\n" + body,
         400, "conflicting_content_length"),
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
         400, "transfer_encoding_with_content_length"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked,
         400, "transfer_encoding_with_content_length"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
         400, "duplicate_transfer_encoding"),
        (b"Transfer-Encoding: gzip\r\n\r\n" + body, 501, "unsupported_transfer_encoding"),
    ]
    for framing, status, code in cases:
        resp = raw_request(S.port, start + framing, deadline_s=5)
        h, _ = expect_raw_error(resp, status, code)
        assert h.get("connection", "").lower() == "close", (code, h)
    st, _, _, _ = raw_request(S.port, start + b"Content-Length: -1\r\n\r\n" + body, 5)
    assert st == 400, st  # MHD's own answer (its head comes twice: MHD 0.9.75's bug)
    m = S.metrics()
    assert metric(m, "expertd_requests_total", endpoint="/v1/completions", status="200") == \
        metric(before, "expertd_requests_total", endpoint="/v1/completions", status="200")
    # one request framed plainly still works
    st, _, got, _ = raw_request(S.port, start + b"Content-Length: " + n + b"\r\n\r\n" + body, 60)
    assert st == 200 and json.loads(got)["usage"]["completion_tokens"] == 2, (st, got[:200])


@test
def slow_headers_and_body_are_cut_while_health_answers():
    """Clients trickling their headers (or body) a byte at a time, each byte well within MHD's
    idle timeout, are cut at header-timeout (body-timeout) from the connection's start, not
    held for ever; meanwhile /health answers every poll. The closes are counted."""
    s = Server("--header-timeout", "2", "--body-timeout", "2")
    try:
        n = 8
        socks = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(n)]
        body_sk = socket.create_connection(("127.0.0.1", s.port))
        body_sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                        b"\r\n{")
        t0 = time.time()
        closed = [None] * (n + 1)
        line = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
        i, health = 0, []
        while None in closed and time.time() - t0 < 12:
            for k, sk in enumerate(socks + [body_sk]):
                if closed[k] is not None:
                    continue
                try:
                    sk.send(line[i:i + 1] if k < n else b" ")
                    sk.setblocking(False)
                    try:
                        if sk.recv(1024) == b"":
                            closed[k] = time.time() - t0
                    except BlockingIOError:
                        pass
                    finally:
                        sk.setblocking(True)
                except (BrokenPipeError, ConnectionResetError):
                    closed[k] = time.time() - t0
            i += 1
            health.append(requests.get(s.url + "/health", timeout=5).status_code)
            time.sleep(0.2)
        for sk in socks + [body_sk]:
            sk.close()
        assert None not in closed, ("trickling connections still open after 12 s", closed)
        assert all(1.5 < c < 8 for c in closed), closed
        assert set(health) == {200} and len(health) >= 5, health
        m = poll_metrics(s, lambda m: metric(m, "expertd_connections_closed_total",
                                             reason="header_timeout") == n and
                         metric(m, "expertd_connections_closed_total",
                                reason="body_timeout") == 1, 10, "the cuts were not counted")
        assert metric(m, "expertd_requests_total", endpoint="/v1/completions",
                      status="408") == 1, m
        # a request sent at once is not affected
        assert s.client().completions.create(model=s.name, prompt="x", max_tokens=2).usage
    finally:
        assert s.stop() == 0


@test
def connections_over_the_per_client_cap_are_503():
    """With max-connections-per-client 3, a fourth connection from the same address is
    answered 503 + Retry-After (JSON) and closed, except /health, which is answered (then
    closed); one that sends nothing is closed within about a second; with eight such waiting,
    the next is closed at accept; once the three go, a request is served again."""
    s = Server("--max-connections-per-client", "3")
    try:
        # the readiness polls' connections gone (the scrape counts itself)
        poll_metrics(s, lambda m: metric(m, "expertd_connections_open") == 1, 10,
                     "connections still open")
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(3)]
        for sk in held:
            sk.sendall(b"GET /health HTTP/1.1\r\n")  # headers unfinished: the slot is kept
        poll_metrics(s, lambda m: metric(m, "expertd_connections_open") == 4, 10,
                     "the three held connections not open")
        body = json.dumps({"prompt": "x", "max_tokens": 2}).encode()
        resp = raw_request(s.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body, 5)
        h, err = expect_raw_error(resp, 503, "too_many_connections")
        assert h.get("retry-after") and h.get("connection", "").lower() == "close", h
        assert "max-connections-per-client" in err["message"], err
        st, h, got, _ = raw_request(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 5)
        assert st == 200 and h.get("connection", "").lower() == "close", (st, h, got)
        with socket.create_connection(("127.0.0.1", s.port)) as sk:
            t0 = time.time()
            assert closes_soon(sk, 5), "a silent connection over the cap was kept"
            assert time.time() - t0 < 4, time.time() - t0
        # eight more may wait for their headers at once; past them a connection is closed at
        # accept, unanswered even with its request sent
        waiting = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(8)]
        # connect() returns once the kernel queued them; the polling threads accept them in
        # their own time (a scrape cannot tell: it would be the twelfth and closed at accept),
        # and the eight are cut after the 1 s grace: let them be accepted, well inside it
        time.sleep(0.3)
        st, h, got, closed = raw_request(s.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 5)
        assert st is None and got == b"" and closed, (st, h, got)
        for sk in waiting:
            sk.close()
        for sk in held:
            sk.close()
        def served():  # until the server has seen them go, a new one is still over the cap
            try:
                return post(s.url + "/v1/completions", {"prompt": "x", "max_tokens": 2}) \
                    .status_code == 200
            except requests.exceptions.ConnectionError:
                return False
        poll(served, 10, "no request served after the held connections left")
        m = s.metrics()
        assert metric(m, "expertd_connections_closed_total", reason="per_client_limit") >= 1, m
    finally:
        assert s.stop() == 0


@test
def metrics_behind_the_api_key():
    """metrics-require-key: /metrics is 401 without the key (or with a wrong one), 200 with
    it; /health still needs none."""
    key = "k3y-metrics"
    s = Server("--metrics-require-key", env={"EXPERTD_API_KEY": key})
    try:
        expect_error(requests.get(s.url + "/metrics"), 401, code="invalid_api_key")
        expect_error(requests.get(s.url + "/metrics", headers={"Authorization": "Bearer no"}),
                     401, code="invalid_api_key")
        r = requests.get(s.url + "/metrics", headers={"Authorization": "Bearer " + key})
        assert r.status_code == 200 and "expertd_requests_total" in r.text, r.text[:200]
        assert list(text_string_to_metric_families(r.text))
        assert requests.get(s.url + "/health").status_code == 200
    finally:
        assert s.stop() == 0


@test
def metrics_on_their_own_listener():
    """--metrics-listen: a second listener serves /metrics and /health only (404 for the API
    there), the main one no /metrics; the metrics listener answers while every connection of
    the main one is taken."""
    s = Server("--metrics-listen", "127.0.0.1:0", "--max-connections", "4")
    try:
        ports = [int(m.group(1)) for l in s.log
                 for m in [re.search(r"metrics on http://127\.0\.0\.1:(\d+)", l)] if m]
        assert len(ports) == 1, s.log
        mu = f"http://127.0.0.1:{ports[0]}"
        r = requests.get(mu + "/metrics")
        assert r.status_code == 200 and list(text_string_to_metric_families(r.text))
        assert requests.get(mu + "/health").status_code == 200
        expect_error(requests.get(mu + "/v1/models"), 404)
        expect_error(post(mu + "/v1/completions", {"prompt": "x"}), 404)
        expect_error(requests.get(s.url + "/metrics"), 404)
        assert requests.get(s.url + "/health").status_code == 200
        assert s.client().completions.create(model=s.name, prompt="x", max_tokens=2).usage
        # the main listener full (headers never finished): a new request there is a JSON 503,
        # and the metrics listener still answers
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
        for sk in held:
            sk.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.3)
        expect_raw_error(raw_request(s.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 5),
                         503, "server_busy")
        assert requests.get(mu + "/health", timeout=5).status_code == 200
        assert requests.get(mu + "/metrics", timeout=5).status_code == 200
        for sk in held:
            sk.close()
    finally:
        assert s.stop() == 0


@test
def generations_leave_connections_for_health():
    """A generation holds its connection: past max-connections less a reserve
    (min(16, a quarter)), new ones are 503 server_busy with Retry-After, so /health and
    /metrics are still answered while streams take every other connection (before, the
    streams took them all and /health got no connection)."""
    s = Server("--max-connections", "8", "--max-running", "8")
    socks = []
    try:
        body = json.dumps({"prompt": "busy", "max_tokens": 8000, "stream": True,
                           "ignore_eos": True})
        req = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
               f"\r\n\r\n{body}").encode()
        heads = []
        for _ in range(8):
            sk = socket.create_connection(("127.0.0.1", s.port))
            sk.sendall(req)
            head = read_head(sk, 30)
            if head.startswith("HTTP/1.1 503"):
                sk.settimeout(5)
                rest = head.encode()
                while True:
                    b = sk.recv(65536)
                    if not b:
                        break
                    rest += b
                head = rest.decode(errors="replace")
                sk.close()
            else:
                socks.append(sk)
            heads.append(head)
        ok = [h for h in heads if h.startswith("HTTP/1.1 200")]
        busy = [h for h in heads if h.startswith("HTTP/1.1 503")]
        assert len(ok) == 6 and len(busy) == 2, [h.split("\r\n")[0] for h in heads]
        for h in busy:
            assert "retry-after:" in h.lower() and '"server_busy"' in h, h
        def answered(path):  # the refused two's connections may take a moment to go
            try:
                return requests.get(s.url + path, timeout=5).status_code == 200
            except requests.exceptions.RequestException:
                return False
        poll(lambda: answered("/health"), 10, "/health not answered while the streams run")
        poll(lambda: answered("/metrics"), 10, "/metrics not answered while the streams run")
        poll_metrics(s, lambda m: metric(m, "expertd_requests_running") == 6, 30,
                     "the six streams not running")
    finally:
        for sk in socks:
            sk.close()
        assert s.stop() == 0


# --- issue 20: errors name the parameter at fault (logit_bias, prompt, messages) -------------
@test
def logit_bias_outside_vocabulary_names_logit_bias():
    """A logit_bias key past the vocabulary (602) is a 400 whose param is logit_bias (it said
    max_tokens / max_completion_tokens: the sampler's refusal came back from submission)."""
    expect_error(post(S.url + "/v1/completions",
                      {"prompt": "x", "max_tokens": 2, "logit_bias": {"5": 1, "700": 5}}),
                 400, "logit_bias", "invalid_value")
    expect_error(post(S.url + "/v1/chat/completions",
                      {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                       "logit_bias": {"602": -100}}), 400, "logit_bias", "invalid_value")
    # a key inside the vocabulary is still accepted
    r = post(S.url + "/v1/completions", {"prompt": "x", "max_tokens": 2,
                                         "logit_bias": {"601": 1}})
    assert r.status_code == 200, r.text


@test
def prompt_over_the_context_names_prompt():
    """A prompt longer than the context (8192) is a 400 naming prompt, or messages for chat,
    even when max_tokens is given (it named max_tokens / max_completion_tokens then)."""
    over = [1] * 8200
    for extra in ({"max_tokens": 5}, {}):
        expect_error(post(S.url + "/v1/completions", {"prompt": over, **extra}), 400,
                     "prompt", "context_length_exceeded")
    long_text = "9" * 9000  # the qwen2 pre-tokenizer splits digits: 9000 tokens
    for extra in ({"max_completion_tokens": 5}, {"max_tokens": 5}, {}):
        expect_error(post(S.url + "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": long_text}], **extra}),
                     400, "messages", "context_length_exceeded")
    # a prompt that fits with a max_tokens that does not still names max_tokens
    expect_error(post(S.url + "/v1/completions", {"prompt": [1] * 8000, "max_tokens": 500}),
                 400, "max_tokens", "context_length_exceeded")


@test
def load_progress_in_health_and_status():
    """While the checkpoint is read, /health says loading with bytes done of total and STATUS=
    lines carry the same figures: the first at 0, the last at the whole size, before READY=1."""
    import shutil
    import tempfile
    work = tempfile.mkdtemp()
    model = os.path.join(work, "big")
    # ~100 MB: reading it takes long enough for /health polls to see the load
    subprocess.run([os.environ["XD_SYNTH_MODEL"], "--out", model, "--vocab", "512", "--hidden",
                    "256", "--layers", "4", "--experts", "32", "--ffn", "512"], check=True,
                   stdout=subprocess.DEVNULL)
    size = os.path.getsize(os.path.join(model, "model.safetensors"))

    def attempt(n):
        """Serves the model once, polling /health from the moment it listens; returns its exit
        status, the STATUS= messages and the /health bodies seen while it loaded."""
        # the file out of the page cache, so the read takes disk time and polls can see it
        fd = os.open(os.path.join(model, "model.safetensors"), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        path = os.path.join(work, f"notify{n}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.005)
        e = dict(os.environ, OMP_NUM_THREADS="1", NOTIFY_SOCKET=path)
        e.pop("EXPERTD_API_KEY", None)
        proc = subprocess.Popen([EXPERTD, "serve", "--model", model, "--port", "0",
                                 "--threads", "1"],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e, text=True)
        msgs, loading = [], []
        try:
            port = None
            for line in proc.stderr:
                m = re.search(r"listening on http://[^ ]+:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    break
            assert port, "expertd did not start"
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            deadline = time.time() + 60
            with requests.Session() as http:
                while time.time() < deadline:
                    r = http.get(f"http://127.0.0.1:{port}/health")
                    if r.status_code == 200:
                        break
                    assert r.status_code == 503, r.status_code
                    loading.append(r.json())
                try:
                    while True:
                        msgs.append(sock.recv(4096).decode())
                except socket.timeout:
                    pass
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            sock.close()
        return rc, msgs, loading

    # a load is over in tens of milliseconds: a busy machine may miss it once; not three times
    try:
        for n in range(3):
            rc, msgs, loading = attempt(n)
            if rc != 0 or loading:
                break
    finally:
        shutil.rmtree(work)
    assert rc == 0, rc
    assert loading, "no /health answer while loading"
    for b in loading:
        assert b["status"] == "loading", b
        p = b["progress"]
        assert p["bytes_total"] in (0, size), (p, size)
        assert 0 <= p["bytes_done"] <= p["bytes_total"], p
        # the engine starts after the whole read
        assert p["phase"] in ("mapping", "reading", "engine"), p
        assert p["phase"] != "engine" or p["bytes_done"] == size, p
    mib = f"{size / 2**20:.1f} MiB"
    status = [m for m in msgs if m.startswith("STATUS=loading big: read")]
    assert status and status[0].startswith(f"STATUS=loading big: read 0.0 MiB of {mib} (0%"), msgs
    assert status[-1].startswith(f"STATUS=loading big: read {mib} of {mib} (100%"), msgs
    text = "\n".join(msgs)
    engine = "STATUS=loading big: starting the cpu backend"
    assert text.index(status[-1]) < text.index(engine) < text.index("READY=1"), msgs


@test
def grafana_dashboard_names_exported_metrics():
    """Every expression of systemd/expertd-dashboard.json names only metrics a live expertd
    exports (sample names of a /metrics scrape, histogram buckets included), so the two cannot
    drift apart; every panel has a query and the expressions' parentheses balance."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "systemd",
                        "expertd-dashboard.json")
    dash = json.load(open(path))
    scrape = requests.get(S.url + "/metrics").text
    exported = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
                for line in scrape.splitlines() if line and not line.startswith("#")}
    exprs = []
    for p in dash["panels"]:
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        exprs += [(p["title"], t["expr"]) for t in p["targets"]]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append((v["name"], v["definition"]))
    named = set()
    for title, e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), (title, e)
        names = set(re.findall(r"\bexpertd_[a-z0-9_]+", e))
        assert names, f"{title!r}: {e} names no expertd metric"
        missing = names - exported
        assert not missing, f"{title!r}: {sorted(missing)} not in /metrics"
        named |= names
    # the issue's list: each of these is on the dashboard
    for want in ["expertd_requests_total", "expertd_time_to_first_token_seconds_bucket",
                 "expertd_inter_token_latency_seconds_bucket",
                 "expertd_e2e_request_latency_seconds_bucket", "expertd_requests_waiting",
                 "expertd_requests_running", "expertd_kv_cache_usage_ratio",
                 "expertd_step_tokens_total", "expertd_distinct_experts_total",
                 "expertd_expert_cache_hits_total", "expertd_expert_prefetches_used_total",
                 "expertd_expert_h2d_bytes_total", "expertd_expert_stall_seconds_total"]:
        assert want in named, f"the dashboard does not show {want}"



@test
def kv_cache_too_small_names_prompt_or_max_tokens():
    """With a KV cache smaller than the model's context (4 blocks of 16 tokens), the served
    context is the cache's 64 tokens: a request that cannot fit is a 400 over the context naming
    max_tokens when the client set it, prompt (messages for chat) when not; chat without
    max_tokens fits (its default is the rest of the context). It was the scheduler's refusal,
    which named max_tokens in every case, and every chat request without max_tokens failed."""
    small = Server("--kv-blocks", "4", "--block-size", "16")
    try:
        assert any("serving a context of 64 tokens" in l for l in small.log), small.log
        expect_error(post(small.url + "/v1/completions", {"prompt": [1] * 40, "max_tokens": 30}),
                     400, "max_tokens", "context_length_exceeded")
        expect_error(post(small.url + "/v1/completions", {"prompt": [1] * 70}),
                     400, "prompt", "context_length_exceeded")
        expect_error(post(small.url + "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "9" * 80}]}),
                     400, "messages", "context_length_exceeded")
        r = post(small.url + "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        r = post(small.url + "/v1/completions", {"prompt": [1] * 40, "max_tokens": 20})
        assert r.status_code == 200, r.text
    finally:
        small.stop()


TOKENIZE_FIXTURE = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "fixtures", "tokenize", "qwen2_moe.json"),
                                  encoding="utf-8"))


@test
def tokenize_matches_transformers():
    """/tokenize and /detokenize (vLLM's endpoints) against transformers' tokenizer(...),
    convert_ids_to_tokens, decode and apply_chat_template(tokenize=True) on the same files
    (tests/fixtures/tokenize/qwen2_moe.json, made by tools/golden/make_tokenize_fixture.py)."""
    for c in TOKENIZE_FIXTURE["prompts"]:
        r = post(S.url + "/tokenize", {"model": S.name, "prompt": c["prompt"],
                                       "add_special_tokens": c["add_special_tokens"],
                                       "return_token_strs": True})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["tokens"] == c["ids"], (c["prompt"], got["tokens"], c["ids"])
        assert got["count"] == len(c["ids"]) and got["max_model_len"] == 8192, got
        assert got["token_strs"] == c["token_strs"], (got["token_strs"], c["token_strs"])
        r = post(S.url + "/detokenize", {"model": S.name, "tokens": c["ids"]})
        assert r.status_code == 200 and r.json() == {"prompt": c["decoded"]}, (r.text, c)
    for c in TOKENIZE_FIXTURE["chats"]:
        body = {k: v for k, v in c.items() if k not in ("name", "ids")}
        r = post(S.url + "/tokenize", body)
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == c["ids"], (c["name"], r.json()["tokens"], c["ids"])
        assert r.json()["token_strs"] is None
    # the chat endpoint's prompt is the same ids: usage counts them
    chat = TOKENIZE_FIXTURE["chats"][0]
    r = C.chat.completions.create(model=S.name, messages=chat["messages"], max_tokens=1,
                                  **GREEDY)
    assert r.usage.prompt_tokens == len(chat["ids"]), r.usage


@test
def tokenize_errors_name_the_parameter():
    u = S.url + "/tokenize"
    expect_error(post(S.url + "/detokenize", {"tokens": [1, 602]}), 400, "tokens")
    expect_error(post(S.url + "/detokenize", {"tokens": [1, -1]}), 400, "tokens")
    expect_error(post(S.url + "/detokenize", {"tokens": "abc"}), 400, "tokens")
    expect_error(post(S.url + "/detokenize", {}), 400, "tokens")
    expect_error(post(u, {}), 400, "prompt")
    expect_error(post(u, {"prompt": 5}), 400, "prompt")
    expect_error(post(u, {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
                 400, "messages")
    expect_error(post(u, {"prompt": "x", "add_special_tokens": "yes"}), 400,
                 "add_special_tokens")
    expect_error(post(u, {"messages": [{"role": "user", "content": "x"}],
                          "continue_final_message": True}), 400, "continue_final_message")
    expect_error(post(u, {"messages": [{"role": "user", "content": "x"}],
                          "add_generation_prompt": False, "continue_final_message": True}),
                 400, "continue_final_message")
    expect_error(post(u, {"messages": [{"role": "wizard", "content": "x"}]}), 400, "messages")
    expect_error(post(u, {"model": "nope", "prompt": "x"}), 404, "model")
    expect_error(post(u, None, raw="{"), 400)
    r = requests.get(u)
    assert r.status_code == 405 and r.headers["Allow"] == "POST", r.status_code
    assert post(S.url + "/detokenize", {"tokens": []}).json() == {"prompt": ""}



ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def log_softmax_at(row, ids):
    """transformers' logits row -> {id: log_softmax(row)[id]} for ids (Python floats, f64)."""
    mx = max(row)
    lse = mx + math.log(sum(math.exp(x - mx) for x in row))
    return {i: row[i] - lse for i in ids}


@test
def prompt_logprobs_match_transformers():
    """echo + logprobs on /v1/completions (lm-eval's loglikelihood request): each prompt
    token's logprob given the tokens before it, null for the first, against log_softmax of
    transformers' prompt_logits in tests/fixtures/golden/olmoe-f32 (ids, no tokenizer);
    tolerance 1e-4, test-golden's for f32. max_tokens 0 returns the prompt alone; with
    max_tokens the completion's tokens follow; n=2, a batch of prompts and streaming change
    nothing."""
    fx = os.path.join(ROOT, "tests", "fixtures", "golden", "olmoe-f32")
    g = json.load(open(os.path.join(fx, "golden.json")))
    srv = Server("--max-running", "8", "--prefill-chunk", "3", model=fx)
    try:
        c = srv.client()
        worst = 0.0
        for ids, logits in zip(g["prompts"], g["prompt_logits"]):
            r = c.completions.create(model=srv.name, prompt=ids, max_tokens=0, echo=True,
                                     logprobs=5, temperature=0)
            lp = r.choices[0].logprobs
            assert lp.tokens == [f"token_id:{t}" for t in ids], lp.tokens
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
            assert r.usage.completion_tokens == 0 and r.choices[0].finish_reason == "length"
            for p in range(1, len(ids)):
                row = logits[p - 1]
                best = sorted(range(len(row)), key=lambda i: -row[i])[:5]
                want = log_softmax_at(row, best + [ids[p]])
                worst = max(worst, abs(lp.token_logprobs[p] - want[ids[p]]))
                top = lp.top_logprobs[p]
                assert list(top) == [f"token_id:{i}" for i in best], (p, top, best)
                for i in best:
                    worst = max(worst, abs(top[f"token_id:{i}"] - want[i]))
        assert worst <= 1e-4, f"max |logprob - transformers| {worst:g} > 1e-4"
        # with a completion, n=2, several prompts in one request: the same prompt numbers
        ids = g["prompts"][1]
        alone = c.completions.create(model=srv.name, prompt=ids, max_tokens=0, echo=True,
                                     logprobs=1, temperature=0).choices[0].logprobs
        r = c.completions.create(model=srv.name, prompt=[ids, g["prompts"][0]], max_tokens=3,
                                 n=2, echo=True, logprobs=1, temperature=0,
                                 extra_body={"ignore_eos": True})
        assert len(r.choices) == 4, r.choices
        for ch in r.choices[:2]:
            assert len(ch.logprobs.tokens) == len(ids) + 3, ch.logprobs.tokens
            assert ch.logprobs.token_logprobs[:len(ids)] == alone.token_logprobs
            assert ch.logprobs.top_logprobs[:len(ids)] == alone.top_logprobs
        gen = c.completions.create(model=srv.name, prompt=ids, max_tokens=3, logprobs=1,
                                   temperature=0, extra_body={"ignore_eos": True})
        assert r.choices[0].logprobs.token_logprobs[len(ids):] == \
            gen.choices[0].logprobs.token_logprobs
        # streamed: the prompt's chunk carries its logprobs, then one chunk per token
        chunks = [ch for ch in c.completions.create(
            model=srv.name, prompt=ids, max_tokens=3, echo=True, logprobs=1, temperature=0,
            stream=True, extra_body={"ignore_eos": True}) if ch.choices]
        lp = chunks[0].choices[0].logprobs
        assert lp.token_logprobs == alone.token_logprobs and lp.tokens == alone.tokens, lp
        streamed = [x for ch in chunks[1:] if ch.choices[0].logprobs
                    for x in ch.choices[0].logprobs.token_logprobs]
        assert streamed == gen.choices[0].logprobs.token_logprobs, streamed
    finally:
        srv.stop()


@test
def prompt_logprobs_text_offsets_on_the_demo_model():
    """The demo model (a real tokenizer): the echoed text, each prompt token's text at its
    text_offset, and the last prompt token's logprob against transformers' last_logits in
    tests/fixtures/demo-moe/golden.json (the prompt extended by its greedy token)."""
    g = json.load(open(os.path.join(ROOT, "tests", "fixtures", "demo-moe", "golden.json")))
    srv = Server(model=os.path.join(ROOT, "models", "demo-moe"))
    try:
        c = srv.client()
        for case in g["cases"]:
            ids = case["prompt_ids"] + case["greedy_ids"][:1]
            r = c.completions.create(model=srv.name, prompt=ids, max_tokens=0, echo=True,
                                     logprobs=1, temperature=0)
            lp = r.choices[0].logprobs
            want = log_softmax_at(case["last_logits"], [ids[-1]])[ids[-1]]
            assert abs(lp.token_logprobs[-1] - want) <= 1e-4, (lp.token_logprobs[-1], want)
            text = r.choices[0].text
            assert text.startswith(case["text"]), (text, case["text"])
            offs = lp.text_offset + [len(text.encode())]
            b = text.encode()
            for k, tok in enumerate(lp.tokens):
                assert b[offs[k]:offs[k + 1]].decode() == tok, (k, tok, offs)
            r = c.completions.create(model=srv.name, prompt=case["text"], max_tokens=2,
                                     echo=True, logprobs=1, temperature=0,
                                     extra_body={"ignore_eos": True})
            ch = r.choices[0]
            n_prompt = r.usage.prompt_tokens
            assert ch.text.startswith(case["text"]) and len(ch.logprobs.tokens) == n_prompt + 2
            assert ch.logprobs.text_offset[n_prompt] == len(case["text"].encode()), ch.logprobs
    finally:
        srv.stop()



def hooked_model():
    """The test model with <|im_end|> as its EOS (the synthetic config says 601, which is
    </think> in this tokenizer), in a temporary directory beside nothing else: for servers
    whose output a test forces through the test hook (EXPERTD_TEST_HOOKS=1)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="expertd-hooked-")
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        os.symlink(os.path.join(os.path.abspath(MODEL), f), os.path.join(d, f))
    cfg = json.load(open(os.path.join(MODEL, "config.json")))
    cfg["eos_token_id"] = 2
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return d


HOOKED = None


def hooked_server(*args):
    global HOOKED
    HOOKED = HOOKED or hooked_model()
    return Server(*args, model=HOOKED, env={"EXPERTD_TEST_HOOKS": "1"})


@test
def reasoning_content_split_whole_and_streamed():
    """A thinking model's <think> block goes to reasoning_content, the rest to content, whole
    and streamed (reasoning deltas first, then content; the tag is cut across tokens here, one
    token per chunk), with --reasoning-parser qwen3; the output is forced through the test hook
    since the test model emits noise. Without the parser (this ChatML template has no </think>:
    auto is none) the text stays content."""
    forced = "<think>\nI think.\n</think>\n\nThe answer.<|im_end|>"
    msgs = [{"role": "user", "content": "Hi"}]
    srv = hooked_server("--reasoning-parser", "qwen3")
    try:
        c = srv.client()
        r = c.chat.completions.create(model=srv.name, messages=msgs, temperature=0,
                                      extra_body={"x_test_force_output": forced})
        m = r.choices[0].message
        assert m.content == "\n\nThe answer." and r.choices[0].finish_reason == "stop", r
        assert m.model_extra["reasoning_content"] == "\nI think.\n", m
        chunks = list(c.chat.completions.create(model=srv.name, messages=msgs, temperature=0,
                                                stream=True,
                                                extra_body={"x_test_force_output": forced}))
        parts = [(k, v) for ch in chunks if ch.choices
                 for k, v in (("reasoning", (ch.choices[0].delta.model_extra or {}).get(
                     "reasoning_content")), ("content", ch.choices[0].delta.content)) if v]
        kinds = [k for k, _ in parts]
        assert kinds == sorted(kinds, key=lambda k: k != "reasoning"), kinds  # reasoning first
        assert "".join(v for k, v in parts if k == "reasoning") == "\nI think.\n", parts
        assert "".join(v for k, v in parts if k == "content") == "\n\nThe answer.", parts
        assert chunks[-1].choices[0].finish_reason == "stop"
        # enable_thinking false: the template closes the block; what follows is all content
        r = c.chat.completions.create(model=srv.name, messages=msgs, temperature=0,
                                      extra_body={"x_test_force_output": "Plain.<|im_end|>"})
        assert r.choices[0].message.content == "Plain."
        assert r.choices[0].message.model_extra["reasoning_content"] is None
    finally:
        srv.stop()
    srv = hooked_server()
    try:
        r = srv.client().chat.completions.create(
            model=srv.name, messages=msgs, temperature=0,
            extra_body={"x_test_force_output": forced})
        assert r.choices[0].message.content == forced.replace("<|im_end|>", ""), r
        assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
    finally:
        srv.stop()
    # the hook is off without EXPERTD_TEST_HOOKS=1
    expect_error(post(S.url + "/v1/chat/completions",
                      {"messages": msgs, "x_test_force_output": "x"}), 400,
                 "x_test_force_output")



WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


@test
def tool_calls_with_the_openai_sdk():
    """tools with a Hermes-style model (--tool-call-parser hermes; the output forced through the
    test hook, since the test model emits noise): message.tool_calls and finish_reason
    "tool_calls" whole; streamed, the SDK's chunks carry index, id and name, then the
    arguments, and reassemble to the same calls; text before a call stays content; a
    malformed call is content; tool_choice none leaves the text alone."""
    forced = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": '
              '{"city": "Paris", "days": 2}}\n</tool_call>\n<tool_call>\n'
              '{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>')
    want = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    srv = hooked_server("--tool-call-parser", "hermes")
    try:
        c = srv.client()
        r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS,
                                      temperature=0, extra_body={"x_test_force_output": forced})
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch
        got = [(t.function.name, json.loads(t.function.arguments)) for t in ch.message.tool_calls]
        assert got == want, got
        assert all(t.type == "function" and t.id for t in ch.message.tool_calls)
        assert len({t.id for t in ch.message.tool_calls}) == 2
        assert ch.message.content == "Checking.\n\n", repr(ch.message.content)

        calls, content, finish = {}, "", None
        for chunk in c.chat.completions.create(model=srv.name, messages=msgs,
                                               tools=WEATHER_TOOLS, tool_choice="auto",
                                               temperature=0, stream=True,
                                               extra_body={"x_test_force_output": forced}):
            d = chunk.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert slot["id"] is None and tc.function.name, tc  # id and name first
                    slot["id"], slot["name"] = tc.id, tc.function.name
                slot["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and content == "Checking.\n\n", (finish, content)
        got = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
        assert got == want and all(calls[i]["id"] for i in calls), calls

        # not well-formed: content, finish stop
        bad = '<tool_call>\n{"name": "get_weather", "arguments": {oops}}\n</tool_call><|im_end|>'
        r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS,
                                      temperature=0, extra_body={"x_test_force_output": bad})
        assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
        assert r.choices[0].message.content == bad.replace("<|im_end|>", "")
        r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS,
                                      tool_choice="none", temperature=0,
                                      extra_body={"x_test_force_output": forced})
        assert not r.choices[0].message.tool_calls and "<tool_call>" in r.choices[0].message.content
        # a named function constrains the output to its arguments (forced here as valid ones)
        r = c.chat.completions.create(
            model=srv.name, messages=msgs, tools=WEATHER_TOOLS, temperature=0,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            extra_body={"x_test_force_output": '{"city": "Paris", "days": 2}<|im_end|>'})
        assert r.choices[0].finish_reason == "tool_calls", r
        assert [(t.function.name, json.loads(t.function.arguments))
                for t in r.choices[0].message.tool_calls] == [want[0]], r
        r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS,
                                      parallel_tool_calls=False, temperature=0,
                                      extra_body={"x_test_force_output": forced})
        assert [t.function.name for t in r.choices[0].message.tool_calls] == ["get_weather"]
    finally:
        srv.stop()


@test
def tool_schemas_and_choices_validated():
    """Bad tools and tool_choice are 400 naming the parameter; tools on a model whose template
    shows no tool-call syntax are 400 naming tools (unless tool_choice is none)."""
    u = S.url + "/v1/chat/completions"
    m = [{"role": "user", "content": "x"}]
    fn = {"name": "f", "parameters": {"type": "object"}}
    for tools in ([{"type": "function"}], [{"type": "retrieval", "function": fn}],
                  [{"type": "function", "function": {"name": "bad name!"}}],
                  [{"type": "function", "function": {"name": "f" * 65}}],
                  [{"type": "function", "function": {"name": "f", "parameters": []}}],
                  [{"type": "function", "function": {"name": "f",
                                                     "parameters": {"type": "string"}}}],
                  [{"type": "function", "function": {"name": "f", "parameters":
                                                     {"type": "object", "required": [1]}}}],
                  [{"type": "function", "function": fn}, {"type": "function", "function": fn}],
                  {"f": fn}):
        expect_error(post(u, {"messages": m, "tools": tools}), 400, "tools")
    tools = [{"type": "function", "function": fn}]
    for choice in ("sometimes", {"type": "function", "function": {"name": "g"}}, 3,
                   {"type": "function"}):
        expect_error(post(u, {"messages": m, "tools": tools, "tool_choice": choice}), 400,
                     "tool_choice")
    expect_error(post(u, {"messages": m, "tool_choice": "required"}), 400, "tool_choice")
    expect_error(post(u, {"messages": m, "tools": tools}), 400, "tools")  # no syntax known
    r = post(u, {"messages": m, "tools": tools, "tool_choice": "none", "max_tokens": 2})
    assert r.status_code == 200, r.text
    expect_error(post(S.url + "/v1/completions", {"prompt": "x", "tools": tools}), 400, "tools")



# Schemas whose every valid text is short, so the random-weight model's constrained output ends
# well before max_tokens whatever it samples (strings have a maxLength, arrays a maxItems).
PERSON_SCHEMA = {
    "$defs": {"pet": {"type": "object", "properties": {
        "kind": {"enum": ["cat", "dog", 7, None]}, "age": {"type": "integer"}},
        "required": ["kind"], "additionalProperties": False}},
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "pet": {"$ref": "#/$defs/pet"},
        "note": {"anyOf": [{"type": "null"}, {"const": "none"}, {"type": "integer"}]},
        "id": {"type": ["integer", "null"]},
    },
    "required": ["name", "score", "ok", "pet"],
    "additionalProperties": False,
}
BOUNDED_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "days": {"type": "integer"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
        "required": ["tz"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ping"}},
]


def tool_params(name):
    fn = next(t["function"] for t in BOUNDED_TOOLS if t["function"]["name"] == name)
    return fn.get("parameters", {"type": "object", "properties": {},
                                 "additionalProperties": False})


def streamed_calls(stream):
    """The tool calls of a streamed chat response (index -> name, arguments) and its finish."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                assert slot["id"] is None and tc.function.name, tc  # id and name first
                slot["id"], slot["name"] = tc.id, tc.function.name
            slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)], content, finish


@test
def response_format_json_schema_whole_and_streamed():
    """response_format json_schema: the random-weight model's output (garbage unconstrained)
    parses and validates against the schema (jsonschema), for several seeds and n=4; the
    stream's deltas join to the same text as the whole response of the same seed; the
    properties come in the schema's order."""
    import jsonschema
    c = S.client()
    msgs = [{"role": "user", "content": "Describe a person."}]
    rf = {"type": "json_schema",
          "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}
    for seed in (1, 2, 3):
        r = c.chat.completions.create(model=S.name, messages=msgs, response_format=rf,
                                      max_tokens=400, seed=seed, n=4)
        for ch in r.choices:
            assert ch.finish_reason == "stop", (seed, ch)
            v = json.loads(ch.message.content)
            jsonschema.validate(v, PERSON_SCHEMA)
            order = [k for k in PERSON_SCHEMA["properties"] if k in v]
            assert list(v) == order, (list(v), order)
        text = "".join(chunk.choices[0].delta.content or ""
                       for chunk in c.chat.completions.create(
                           model=S.name, messages=msgs, response_format=rf, max_tokens=400,
                           seed=seed, stream=True) if chunk.choices)
        assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
    # /v1/completions takes it too, and vLLM's guided_json
    for extra in ({"response_format": rf}, {"guided_json": PERSON_SCHEMA},
                  {"guided_json": json.dumps(PERSON_SCHEMA)}):
        r = post(S.url + "/v1/completions", {"prompt": "A person:", "max_tokens": 400, "seed": 5,
                                             **extra})
        assert r.status_code == 200, r.text
        jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), PERSON_SCHEMA)


FORMATS_SCHEMA = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[a-z]{2}\\d{2}$"},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "day": {"type": "string", "format": "date"},
        "id": {"type": "string", "format": "uuid"},
        "level": {"allOf": [{"$ref": "#/$defs/level"}], "description": "pydantic's wrapper"},
    },
    "required": ["code", "age", "ratio", "day", "id", "level"],
    "additionalProperties": False,
    "$defs": {"level": {"type": "integer", "exclusiveMinimum": -3, "maximum": 3}},
}


@test
def response_format_json_schema_bounds_formats_patterns():
    """minimum/maximum (integer and number), format (date, uuid), pattern and pydantic's
    allOf around a $ref: the random-weight model's output validates against the schema with
    the pinned jsonschema's format checker, for several seeds and n=4; a schema with a keyword
    it cannot enforce is a 400 naming it."""
    import jsonschema
    c = S.client()
    msgs = [{"role": "user", "content": "A record."}]
    rf = {"type": "json_schema",
          "json_schema": {"name": "record", "schema": FORMATS_SCHEMA, "strict": True}}
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for seed in (1, 2):
        r = c.chat.completions.create(model=S.name, messages=msgs, response_format=rf,
                                      max_tokens=400, seed=seed, n=4)
        for ch in r.choices:
            assert ch.finish_reason == "stop", (seed, ch)
            try:
                v = json.loads(ch.message.content)
            except ValueError:
                raise AssertionError((seed, ch.message.content))
            jsonschema.validate(v, FORMATS_SCHEMA, format_checker=checker)
    bad = dict(FORMATS_SCHEMA, properties=dict(FORMATS_SCHEMA["properties"],
                                               code={"type": "string", "pattern": "(?=x)"}))
    r = post(S.url + "/v1/completions", {"prompt": "x", "max_tokens": 4, "guided_json": bad})
    assert r.status_code == 400 and "'pattern' at /properties/code" in r.text, r.text


@test
def response_format_json_object():
    """response_format json_object: the output is one JSON object. Unbounded strings end when
    the model picks a quote, which the random model seldom does, so the quote token's logit
    is raised (logit_bias, applied before the mask) to make every choice end; without it,
    every choice that ends is an object. Streamed: the same text as whole."""
    c = S.client()
    quote = post(S.url + "/tokenize", {"prompt": '"'}).json()["tokens"]
    assert len(quote) == 1, quote
    kw = dict(model=S.name, messages=[{"role": "user", "content": "JSON"}],
              response_format={"type": "json_object"}, max_tokens=300, seed=11)
    r = c.chat.completions.create(**kw, n=8, logit_bias={str(quote[0]): 5})
    for ch in r.choices:
        assert ch.finish_reason == "stop", ch
        assert isinstance(json.loads(ch.message.content), dict), ch.message.content
    assert any(len(json.loads(ch.message.content)) > 0 for ch in r.choices)
    r = c.chat.completions.create(**kw, n=4)
    for ch in r.choices:
        if ch.finish_reason == "stop":
            assert isinstance(json.loads(ch.message.content), dict), ch.message.content
        else:
            assert ch.message.content.startswith("{"), ch.message.content
    text = "".join(chunk.choices[0].delta.content or ""
                   for chunk in c.chat.completions.create(**kw, stream=True) if chunk.choices)
    assert text == r.choices[0].message.content


@test
def tool_choice_required_and_named_are_enforced():
    """tool_choice "required": the output is forced into calls of the given tools whose
    arguments validate against each tool's parameters (the test model has no tool-call syntax
    and emits noise, and still calls); parallel_tool_calls false: exactly one; a named function:
    one call of it. Streamed: the same calls as whole, as name then arguments deltas."""
    import jsonschema
    c = S.client()
    msgs = [{"role": "user", "content": "Weather?"}]
    names = {t["function"]["name"] for t in BOUNDED_TOOLS}
    for seed in (1, 2, 3, 4):
        for parallel in (True, False):
            kw = dict(model=S.name, messages=msgs, tools=BOUNDED_TOOLS, tool_choice="required",
                      parallel_tool_calls=parallel, max_tokens=300, seed=seed)
            r = c.chat.completions.create(**kw)
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls" and ch.message.content is None, ch
            calls = [(t.function.name, t.function.arguments) for t in ch.message.tool_calls]
            assert calls and (parallel or len(calls) == 1), calls
            assert len({t.id for t in ch.message.tool_calls}) == len(calls)
            for name, args in calls:
                assert name in names, name
                jsonschema.validate(json.loads(args), tool_params(name))
            got, content, finish = streamed_calls(c.chat.completions.create(**kw, stream=True))
            assert got == calls and finish == "tool_calls" and content == "", (got, calls)
    for name in names:
        kw = dict(model=S.name, messages=msgs, tools=BOUNDED_TOOLS, max_tokens=300, seed=7,
                  tool_choice={"type": "function", "function": {"name": name}})
        r = c.chat.completions.create(**kw)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch
        assert [t.function.name for t in ch.message.tool_calls] == [name]
        jsonschema.validate(json.loads(ch.message.tool_calls[0].function.arguments),
                            tool_params(name))
        got, _, finish = streamed_calls(c.chat.completions.create(**kw, stream=True))
        assert got == [(name, ch.message.tool_calls[0].function.arguments)], got
        assert finish == "tool_calls"


@test
def constraints_refuse_what_they_cannot_enforce():
    """A schema keyword the matcher cannot enforce is a 400 naming the parameter and the
    keyword, never ignored; so are malformed response_format objects."""
    u = S.url + "/v1/chat/completions"
    m = [{"role": "user", "content": "x"}]
    for schema, word in (({"type": "string", "pattern": "(?<=a)b"}, "'pattern'"),
                         ({"type": "object", "properties": {"d": {"type": "string",
                                                                  "format": "color"}}},
                          "/properties/d"),
                         ({"type": "integer", "multipleOf": 2}, "'multipleOf'"),
                         ({"type": "number", "maximum": 0.5}, "'maximum'"),
                         ({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]},
                          "'oneOf'")):
        r = post(u, {"messages": m, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": schema}}})
        expect_error(r, 400, "response_format")
        assert word in r.json()["error"]["message"], r.text
    for rf in ({"type": "regex"}, {"type": "json_schema"}, "json", {"type": "json_schema",
                                                                    "json_schema": {"name": "x"}}):
        expect_error(post(u, {"messages": m, "response_format": rf}), 400, "response_format")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "format": "color"}}}}}]
    r = post(u, {"messages": m, "tools": tools, "tool_choice": "required"})
    expect_error(r, 400, "tools")
    assert "'format'" in r.json()["error"]["message"], r.text
    r = post(u, {"messages": m, "tools": tools, "tool_choice": "required",
                 "response_format": {"type": "json_object"}})
    expect_error(r, 400, "response_format")
    # text is no constraint
    r = post(u, {"messages": m, "max_tokens": 2, "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text


@test
def reasoning_then_tool_call():
    """Qwen3's shape: a think block, then a call. reasoning_content, no content, the call;
    streamed, the reasoning deltas come before the call's."""
    forced = ('<think>\nI need the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
              '"arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>')
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    srv = hooked_server("--tool-call-parser", "hermes", "--reasoning-parser", "qwen3")
    try:
        c = srv.client()
        r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS,
                                      temperature=0, extra_body={"x_test_force_output": forced})
        m = r.choices[0].message
        assert m.model_extra["reasoning_content"] == "\nI need the weather.\n", m
        assert m.content is None and r.choices[0].finish_reason == "tool_calls", m
        assert [(t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls] == \
            [("get_weather", {"city": "Oslo"})]
        order = []
        for chunk in c.chat.completions.create(model=srv.name, messages=msgs,
                                               tools=WEATHER_TOOLS, temperature=0, stream=True,
                                               extra_body={"x_test_force_output": forced}):
            d = chunk.choices[0].delta
            if (d.model_extra or {}).get("reasoning_content"):
                order.append("reasoning")
            if d.tool_calls:
                order.append("call")
        assert order and order.index("call") > max(i for i, k in enumerate(order)
                                                   if k == "reasoning"), order
    finally:
        srv.stop()



@test
def tool_calls_of_every_family():
    """The same call in each family's syntax (--tool-call-parser mistral, deepseek_v3, glm45,
    qwen3_coder;
    the markers are ordinary text in this tokenizer), whole and streamed, through the SDK."""
    ds = lambda name: "<\uff5ctool\u2581" + name + "\uff5c>"
    outputs = {
        "mistral": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome", "days": 1}}]',
        "deepseek_v3": (ds("calls\u2581begin") + ds("call\u2581begin") + "function" + ds("sep") +
                        'get_weather\n```json\n{"city": "Rome", "days": 1}\n```' +
                        ds("call\u2581end") + ds("calls\u2581end")),
        "glm45": ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n"
                  "<arg_key>days</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"),
        "qwen3_coder": ("<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n"
                        "</parameter>\n<parameter=days>\n1\n</parameter>\n</function>\n"
                        "</tool_call>"),
    }
    msgs = [{"role": "user", "content": "Weather in Rome?"}]
    for parser, out in outputs.items():
        srv = hooked_server("--tool-call-parser", parser)
        try:
            c = srv.client()
            body = {"x_test_force_output": out + "<|im_end|>"}
            r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS,
                                          temperature=0, extra_body=body)
            calls = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls" and calls, (parser, r)
            assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == \
                [("get_weather", {"city": "Rome", "days": 1})], (parser, calls)
            args, name = "", None
            for chunk in c.chat.completions.create(model=srv.name, messages=msgs,
                                                   tools=WEATHER_TOOLS, temperature=0,
                                                   stream=True, extra_body=body):
                for tc in chunk.choices[0].delta.tool_calls or []:
                    name = tc.function.name or name
                    args += tc.function.arguments or ""
            assert name == "get_weather" and json.loads(args) == {"city": "Rome", "days": 1}, \
                (parser, name, args)
        finally:
            srv.stop()



def harmony_model():
    """The test model's weights with gpt-oss's chat template (tests/fixtures/chat_templates/
    gpt-oss) and the o200k fixture tokenizer, whose <|channel|>, <|message|>, <|call|> ... are
    special tokens (ids 0-9, as single tokens as in o200k_harmony); eos <|return|> only: the
    harmony parsers add <|call|> to the stop ids themselves."""
    import tempfile
    d = tempfile.mkdtemp(prefix="expertd-harmony-")
    os.symlink(os.path.join(os.path.abspath(MODEL), "model.safetensors"),
               os.path.join(d, "model.safetensors"))
    fix = os.path.join(ROOT, "tests", "fixtures")
    os.symlink(os.path.abspath(os.path.join(fix, "tokenizers", "o200k", "tokenizer.json")),
               os.path.join(d, "tokenizer.json"))
    template = open(os.path.join(fix, "chat_templates", "gpt-oss", "template.jinja")).read()
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
               "eos_token": "<|return|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
               "chat_template": template}, open(os.path.join(d, "tokenizer_config.json"), "w"))
    cfg = json.load(open(os.path.join(MODEL, "config.json")))
    cfg["eos_token_id"] = 2  # <|return|>
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return d


@test
def harmony_reasoning_and_tool_calls():
    """gpt-oss's harmony output (forced through the test hook): both parsers detected from the
    template; the analysis channel is reasoning_content, the final channel content, a message
    to functions.NAME a tool call with finish_reason "tool_calls", whole and streamed;
    <|call|> stops generation though the config lists only <|return|>; output that is not
    harmony stays content; a previous turn's reasoning_content and tool_calls render back as
    gpt-oss's analysis message and call."""
    analysis = "<|channel|>analysis<|message|>Need the weather.<|end|>"
    answer = analysis + "<|start|>assistant<|channel|>final<|message|>It is 18 C.<|return|>"
    call = (analysis + "<|start|>assistant<|channel|>commentary to=functions.get_weather "
            '<|constrain|>json<|message|>{"city": "Paris", "days": 2}<|call|>'
            "<|start|>assistant<|channel|>final<|message|>Not generated.")
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    # (the template writes every tool's description: get_time has none; this tokenizer's pieces
    # are short, hence max_tokens 300)
    srv = Server(model=harmony_model(), env={"EXPERTD_TEST_HOOKS": "1"})
    try:
        assert any("reasoning parser harmony, tool calls harmony" in l for l in srv.log), srv.log
        c = srv.client()
        r = c.chat.completions.create(model=srv.name, messages=msgs, temperature=0, max_tokens=300,
                                      extra_body={"x_test_force_output": answer})
        m = r.choices[0].message
        assert m.content == "It is 18 C." and r.choices[0].finish_reason == "stop", r
        assert m.model_extra["reasoning_content"] == "Need the weather.", m
        parts = []
        for ch in c.chat.completions.create(model=srv.name, messages=msgs, temperature=0,
                                            max_tokens=300, stream=True,
                                            extra_body={"x_test_force_output": answer}):
            d = ch.choices[0].delta
            r_ = (d.model_extra or {}).get("reasoning_content")
            parts += [("reasoning", r_)] if r_ else []
            parts += [("content", d.content)] if d.content else []
        assert [k for k, _ in parts] == sorted([k for k, _ in parts], key=lambda k: k != "reasoning")
        assert "".join(v for k, v in parts if k == "reasoning") == "Need the weather.", parts
        assert "".join(v for k, v in parts if k == "content") == "It is 18 C.", parts

        r = c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS[:1],
                                      temperature=0, max_tokens=300,
                                      extra_body={"x_test_force_output": call})
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and not ch.message.content, ch
        assert [(t.function.name, json.loads(t.function.arguments))
                for t in ch.message.tool_calls] == [("get_weather", {"city": "Paris", "days": 2})]
        assert ch.message.model_extra["reasoning_content"] == "Need the weather."
        n_call = post(srv.url + "/tokenize", {"prompt": call.split("<|call|>")[0] + "<|call|>",
                                              "add_special_tokens": False}).json()["count"]
        assert r.usage.completion_tokens == n_call, (r.usage, n_call)  # stopped at <|call|>
        name, args, reasoning, finish = None, "", "", None
        for chunk in c.chat.completions.create(model=srv.name, messages=msgs, tools=WEATHER_TOOLS[:1],
                                               temperature=0, max_tokens=300, stream=True,
                                               extra_body={"x_test_force_output": call}):
            d = chunk.choices[0].delta
            reasoning += (d.model_extra or {}).get("reasoning_content") or ""
            assert not d.content, d
            for tc in d.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert (name, json.loads(args), finish) == ("get_weather", {"city": "Paris", "days": 2},
                                                    "tool_calls"), (name, args, finish)
        assert reasoning == "Need the weather."

        # not harmony: content as it came
        r = c.chat.completions.create(model=srv.name, messages=msgs, temperature=0, max_tokens=300,
                                      extra_body={"x_test_force_output": "Plain text.<|return|>"})
        assert r.choices[0].message.content == "Plain text.", r
        assert r.choices[0].message.model_extra["reasoning_content"] is None

        # the next turn: the call and its reasoning go back through the template
        turn = msgs + [{"role": "assistant", "content": None,
                        "reasoning_content": "Need the weather.",
                        "tool_calls": [{"id": ch.message.tool_calls[0].id, "type": "function",
                                        "function": {"name": "get_weather",
                                                     "arguments": '{"city": "Paris"}'}}]},
                       {"role": "tool", "tool_call_id": ch.message.tool_calls[0].id,
                        "content": "18 C"}]
        ids = post(srv.url + "/tokenize", {"messages": turn, "tools": WEATHER_TOOLS[:1]}).json()["tokens"]
        text = post(srv.url + "/detokenize", {"tokens": ids}).json()["prompt"]
        want = ("<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
                "<|start|>assistant to=functions.get_weather<|channel|>commentary json"
                '<|message|>{"city": "Paris"}<|call|><|start|>functions.get_weather to=assistant'
                '<|channel|>commentary<|message|>"18 C"<|end|><|start|>assistant')
        assert text.endswith(want), text[-400:]
    finally:
        srv.stop()


ANSWER_SCHEMA = {"type": "object",
                 "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
                 "required": ["ok", "n"], "additionalProperties": False}


def split_stream(stream):
    """A streamed chat response's (kind, text) deltas in order, and its finish reason."""
    parts, finish = [], None
    for ch in stream:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        r_ = (d.model_extra or {}).get("reasoning_content")
        parts += [("reasoning", r_)] if r_ else []
        parts += [("content", d.content)] if d.content else []
        finish = ch.choices[0].finish_reason or finish
    return parts, finish


@test
def response_format_after_reasoning_whole_and_streamed():
    """A thinking model (--reasoning-parser qwen3) reasons freely and the schema holds from the
    first byte after </think>: the reasoning is forced through the test hook (free text the
    schema would refuse), then the random-weight model's answer validates, whole and streamed
    (reasoning deltas first, the same text); max_tokens inside the reasoning ends with no
    content (finish_reason length); enable_thinking false constrains from the first token;
    tool_choice required and named after the reasoning are calls."""
    import jsonschema
    msgs = [{"role": "user", "content": "Answer."}]
    rf = {"type": "json_schema",
          "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    think = "<think>\nNot JSON: <b> {oops\n</think>\n\n"
    srv = hooked_server("--reasoning-parser", "qwen3")
    try:
        c = srv.client()
        kw = dict(model=srv.name, messages=msgs, response_format=rf, max_tokens=200, seed=3)
        r = c.chat.completions.create(**kw, extra_body={"x_test_force_output": think})
        ch = r.choices[0]
        assert ch.finish_reason == "stop", ch
        assert ch.message.model_extra["reasoning_content"] == "\nNot JSON: <b> {oops\n", ch
        jsonschema.validate(json.loads(ch.message.content), ANSWER_SCHEMA)
        assert ch.message.content.startswith("{"), ch.message.content  # the gap dropped
        n_think = post(srv.url + "/tokenize", {"prompt": think,
                                               "add_special_tokens": False}).json()["count"]
        assert r.usage.completion_tokens > n_think, r.usage  # reasoning counts toward usage
        parts, finish = split_stream(c.chat.completions.create(
            **kw, stream=True, extra_body={"x_test_force_output": think}))
        kinds = [k for k, _ in parts]
        assert kinds == sorted(kinds, key=lambda k: k != "reasoning"), kinds
        assert "".join(v for k, v in parts if k == "reasoning") == "\nNot JSON: <b> {oops\n"
        assert "".join(v for k, v in parts if k == "content") == ch.message.content, parts
        assert finish == "stop"
        # cut by max_tokens in the reasoning: no content, never unvalidated text
        long = "<think>\nstill thinking about it at some length"
        r = c.chat.completions.create(**dict(kw, max_tokens=4),
                                      extra_body={"x_test_force_output": long})
        ch = r.choices[0]
        assert ch.finish_reason == "length" and ch.message.content is None, ch
        assert r.usage.completion_tokens == 4, r.usage  # max_tokens counts reasoning tokens
        assert long.startswith("<think>" + ch.message.model_extra["reasoning_content"]), ch
        parts, finish = split_stream(c.chat.completions.create(
            **dict(kw, max_tokens=4), stream=True, extra_body={"x_test_force_output": long}))
        assert finish == "length" and parts and all(k == "reasoning" for k, _ in parts), parts
        # enable_thinking false: answer mode, constrained from the first token, no split
        r = c.chat.completions.create(**kw, extra_body={
            "chat_template_kwargs": {"enable_thinking": False}})
        ch = r.choices[0]
        jsonschema.validate(json.loads(ch.message.content), ANSWER_SCHEMA)
        assert "reasoning_content" not in (ch.message.model_extra or {}) or \
            ch.message.model_extra["reasoning_content"] is None, ch
        # tool_choice required and named after the reasoning
        tools = [t for t in BOUNDED_TOOLS if t["function"]["name"] in ("get_time", "ping")]
        for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
            r = c.chat.completions.create(model=srv.name, messages=msgs, tools=tools,
                                          tool_choice=choice, max_tokens=300, seed=4,
                                          parallel_tool_calls=False, extra_body={"x_test_force_output": think})
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls", (choice, ch)
            assert ch.message.model_extra["reasoning_content"] == "\nNot JSON: <b> {oops\n"
            for t in ch.message.tool_calls:
                jsonschema.validate(json.loads(t.function.arguments), tool_params(t.function.name))
            if choice != "required":
                assert [t.function.name for t in ch.message.tool_calls] == ["get_time"]
            stream = c.chat.completions.create(model=srv.name, messages=msgs, tools=tools,
                                               tool_choice=choice, max_tokens=300, seed=4,
                                               parallel_tool_calls=False, stream=True,
                                               extra_body={"x_test_force_output": think})
            reasoning = []

            def tee(s):
                for chunk in s:
                    if chunk.choices:
                        reasoning.append((chunk.choices[0].delta.model_extra or {}).get(
                            "reasoning_content") or "")
                    yield chunk
            calls, content, finish = streamed_calls(tee(stream))
            assert "".join(reasoning) == "\nNot JSON: <b> {oops\n", reasoning
            assert finish == "tool_calls" and not content, (calls, content, finish)
            assert calls == [(t.function.name, t.function.arguments)
                             for t in ch.message.tool_calls], (calls, ch.message.tool_calls)
    finally:
        srv.stop()


@test
def response_format_after_harmony_analysis():
    """gpt-oss (harmony): the analysis channel is free, the schema holds from the final
    channel's first byte; whole and streamed; enable_thinking false changes nothing here."""
    import jsonschema
    msgs = [{"role": "user", "content": "Answer."}]
    rf = {"type": "json_schema",
          "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    forced = ("<|channel|>analysis<|message|>Free {text.<|end|>"
              "<|start|>assistant<|channel|>final<|message|>")
    srv = Server(model=harmony_model(), env={"EXPERTD_TEST_HOOKS": "1"})
    try:
        c = srv.client()
        kw = dict(model=srv.name, messages=msgs, response_format=rf, max_tokens=300, seed=5)
        r = c.chat.completions.create(**kw, extra_body={"x_test_force_output": forced})
        ch = r.choices[0]
        assert ch.finish_reason == "stop", ch
        assert ch.message.model_extra["reasoning_content"] == "Free {text.", ch
        jsonschema.validate(json.loads(ch.message.content), ANSWER_SCHEMA)
        parts, finish = split_stream(c.chat.completions.create(
            **kw, stream=True, extra_body={"x_test_force_output": forced}))
        assert "".join(v for k, v in parts if k == "reasoning") == "Free {text.", parts
        assert "".join(v for k, v in parts if k == "content") == ch.message.content, parts
        assert finish == "stop"
        # enable_thinking is not harmony's: still gated
        r = c.chat.completions.create(**kw, extra_body={
            "x_test_force_output": forced, "chat_template_kwargs": {"enable_thinking": False}})
        assert r.choices[0].message.model_extra["reasoning_content"] == "Free {text.", r
        jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER_SCHEMA)
    finally:
        srv.stop()



@test
def demo_model_chats():
    """The bundled demo model has a chat template (tokenizer_config.json): /tokenize of each
    conversation equals transformers' apply_chat_template(tokenize=True) ids
    (tests/fixtures/demo-moe/chat.json, made by tools/demo_model/make_chat_golden.py); the
    official SDK's chat.completions.create answers with transformers' greedy answer (the model
    is chat-tuned: tools/demo_model/finetune.py), equals a completion of the rendered prompt,
    streamed equals whole; a role the template refuses is its 400."""
    g = json.load(open(os.path.join(ROOT, "tests", "fixtures", "demo-moe", "chat.json")))
    srv = Server(model=os.path.join(ROOT, "models", "demo-moe"))
    try:
        for case in g["cases"]:
            r = post(srv.url + "/tokenize", {"messages": case["messages"],
                                             "add_generation_prompt": case["add_generation_prompt"]})
            assert r.status_code == 200, r.text
            assert r.json()["tokens"] == case["ids"], (case["text"], r.json()["tokens"])
        c = srv.client()
        for case in g["cases"]:
            if not case["add_generation_prompt"]:
                continue
            chat = c.chat.completions.create(model=srv.name, messages=case["messages"],
                                             max_tokens=12, temperature=0)
            ch = chat.choices[0]
            assert ch.message.role == "assistant" and ch.message.content, chat
            assert ch.message.content == case["answer"], (ch.message.content, case["answer"])
            assert ch.finish_reason == case["finish_reason"], (ch.finish_reason, case)
            assert chat.usage.prompt_tokens == len(case["ids"]), chat.usage
            comp = c.completions.create(model=srv.name, prompt=case["ids"], max_tokens=12,
                                        temperature=0)
            assert comp.choices[0].text == ch.message.content, (comp.choices[0].text, ch)
            parts = c.chat.completions.create(model=srv.name, messages=case["messages"],
                                              max_tokens=12, temperature=0, stream=True)
            text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
            assert text == ch.message.content, (text, ch.message.content)
        err = expect_error(post(srv.url + "/v1/chat/completions",
                                {"messages": [{"role": "tool", "content": "x",
                                               "tool_call_id": "1"}], "max_tokens": 2}),
                           400, param="messages", code="chat_template_error")
        assert "the demo model has no tool role" in err["message"], err
    finally:
        srv.stop()

# --- issue 20: thousands of connections on a few polling threads --------------------------

def raise_nofile():
    """The soft open-files limit up to the hard one (the tests hold a socket per stream)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def daemon_threads(s):
    return len(os.listdir(f"/proc/{s.proc.pid}/task"))


def stream_request(prompt, max_tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "stream": True,
                       "temperature": 0, "ignore_eos": True})
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def dechunk(body):
    """The payload of a chunked HTTP body (as far as it is complete)."""
    out, i = b"", 0
    while True:
        j = body.find(b"\r\n", i)
        if j < 0:
            return out
        size = int(body[i:j].split(b";")[0] or b"0", 16)
        if size == 0:
            return out
        out += body[j + 2:j + 2 + size]
        i = j + 2 + size + 2


def sse_text(raw):
    """(status, text of the stream's chunks, whether it ended with [DONE]) of one raw chunked
    SSE response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None
    datas = re.findall(rb"data: (.*?)\n\n", dechunk(body))
    done = bool(datas) and datas[-1] == b"[DONE]"
    events = [json.loads(d) for d in datas if d != b"[DONE]"]
    text = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
    return status, text, done


def many_streams(port, reqs, until, timeout, src=None):
    """Opens one connection per request in reqs (from source address src), sends each, and
    reads them all on one selector until until(raw bytes so far) holds for every one or
    timeout seconds pass; returns (the sockets, still open, and each one's bytes)."""
    import selectors
    sel = selectors.DefaultSelector()
    socks, got = [], [b""] * len(reqs)
    for i, r in enumerate(reqs):
        sk = socket.create_connection(("127.0.0.1", port), timeout=30,
                                      source_address=(src, 0) if src else None)
        sk.sendall(r)
        sk.setblocking(False)
        sel.register(sk, selectors.EVENT_READ, i)
        socks.append(sk)
    left = set(range(len(reqs)))
    deadline = time.time() + timeout
    while left and time.time() < deadline:
        for key, _ in sel.select(1.0):
            i = key.data
            try:
                b = key.fileobj.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                b = b""
            if b:
                got[i] += b
            if not b or until(got[i]):
                sel.unregister(key.fileobj)
                left.discard(i)
    sel.close()
    return socks, got


@test
def thousand_concurrent_streams_complete_on_a_few_threads():
    """1,000 streaming requests at once from one client, all held open: every one is a 200
    that ends with [DONE] and the text it gets alone (no stream gets another's tokens), the
    server holds the 1,000 connections at once, and it does so on a few polling threads (with
    a thread per connection it held 256: 745 of the 1,000 got an empty reply)."""
    n, prompts, max_tokens = 1000, [f"crowd {k}" for k in range(8)], 8
    assert raise_nofile() >= n + 200, "the open-files hard limit is too low for this test"
    s = Server("--max-connections-per-client", "0", "--max-waiting", "2048",
               "--max-running", "64")
    socks = []
    try:
        c = s.client()
        solo = [c.completions.create(model=s.name, prompt=p, max_tokens=max_tokens,
                                     **GREEDY).choices[0].text for p in prompts]
        threads_idle = daemon_threads(s)
        reqs = [stream_request(prompts[i % len(prompts)], max_tokens) for i in range(n)]
        socks, got = many_streams(s.port, reqs, lambda b: b.endswith(b"\r\n0\r\n\r\n"), 180)
        # every connection still held by the client: the server has them all open at once
        m = poll_metrics(s, lambda m: metric(m, "expertd_connections_open") >= n + 1, 30,
                         f"the {n} connections not open at once")
        threads = daemon_threads(s)
        bad = []
        for i, raw in enumerate(got):
            st, text, done = sse_text(raw)
            if (st, text, done) != (200, solo[i % len(prompts)], True):
                bad.append((i, st, done, text, raw[:200]))
        assert not bad, (len(bad), bad[:3])
        # the streams ran on MHD's few polling threads (2-4), not one each
        assert threads <= threads_idle + 4, (threads_idle, threads)
        assert metric(m, "expertd_requests_total", endpoint="/v1/completions",
                      status="200") >= n, m
    finally:
        for sk in socks:
            sk.close()
        assert s.stop() == 0


@test
def six_hundred_slow_sockets_do_not_stop_requests_or_health():
    """600 sockets trickling their headers a byte every half second (from six addresses, each
    under max-connections-per-client) are held on the polling threads without stopping
    anything: /health answers every poll and a whole and a streamed completion are served
    while they hang on (with a thread per connection, every request and poll failed)."""
    n = 600
    assert raise_nofile() >= n + 200, "the open-files hard limit is too low for this test"
    s = Server("--header-timeout", "60")
    slow = []
    try:
        for i in range(n):
            sk = socket.create_connection(("127.0.0.1", s.port), timeout=30,
                                          source_address=(f"127.0.0.{2 + i % 6}", 0))
            slow.append(sk)
        line = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        c = s.client()
        health, served = [], 0
        t0, k = time.time(), 0
        while time.time() - t0 < 6:
            for sk in slow:
                sk.send(line[k:k + 1])
            k += 1
            health.append(requests.get(s.url + "/health", timeout=10).status_code)
            if k % 4 == 0:
                assert c.completions.create(model=s.name, prompt="x", max_tokens=3,
                                            **GREEDY).usage.completion_tokens == 3
                chunks = list(c.completions.create(model=s.name, prompt="y", max_tokens=3,
                                                   stream=True, **GREEDY))
                assert chunks[-1].choices[0].finish_reason == "length", chunks[-1]
                served += 1
            time.sleep(0.5)
        assert set(health) == {200} and len(health) >= 8, health
        assert served >= 2, served
        # the trickling sockets were all held open meanwhile, none cut
        m = s.metrics()
        assert metric(m, "expertd_connections_open") >= n, metric(m, "expertd_connections_open")
        assert metric(m, "expertd_connections_closed_total", reason="header_timeout") == 0, m
    finally:
        for sk in slow:
            sk.close()
        assert s.stop() == 0


@test
def streams_and_whole_responses_whose_clients_leave_are_cancelled():
    """200 generations at once, half streamed, half whole responses, each of whose clients
    closes its socket while it runs: every sequence is cancelled promptly (nothing running or
    waiting, the KV cache empty, far fewer tokens than asked for) and each disconnect is
    counted. A whole response's connection is parked (suspended in MHD) with nothing to write,
    so only the park's hangup watcher sees its client go."""
    n, max_tokens = 200, 4000
    assert raise_nofile() >= n + 200, "the open-files hard limit is too low for this test"
    s = Server("--max-connections-per-client", "0", "--max-running", "256",
               "--kv-blocks", "8192")
    socks = []
    try:
        before = s.metrics()
        whole = []
        for i in range(n // 2):
            body = json.dumps({"prompt": f"whole {i}", "max_tokens": max_tokens,
                               "ignore_eos": True})
            sk = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            sk.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                        f"{len(body)}\r\n\r\n{body}").encode())
            whole.append(sk)
        reqs = [stream_request(f"leave {i}", max_tokens) for i in range(n // 2)]
        socks, got = many_streams(s.port, reqs, lambda b: b.count(b"data: ") >= 1, 120)
        socks += whole
        assert all(g.count(b"data: ") >= 1 for g in got), sum(1 for g in got if b"data: " in g)
        poll_metrics(s, lambda m: metric(m, "expertd_requests_running") == n, 60,
                     f"the {n} requests not all running")
        for sk in socks:
            sk.close()
        socks = []
        m = poll_metrics(s, lambda m: metric(m, "expertd_requests_running") == 0 and
                         metric(m, "expertd_requests_waiting") == 0 and
                         metric(m, "expertd_kv_cache_blocks_used") == 0, 30,
                         "sequences still running after their clients left")
        gen = metric(m, "expertd_generation_tokens_total") - \
            metric(before, "expertd_generation_tokens_total")
        assert gen < n * max_tokens / 4, gen
        poll_metrics(s, lambda m: metric(m, "expertd_client_disconnects_total") -
                     metric(before, "expertd_client_disconnects_total") == n, 30,
                     f"not all {n} disconnects counted")
        # and the server goes on serving
        assert s.client().completions.create(model=s.name, prompt="x", max_tokens=2).usage
    finally:
        for sk in socks:
            sk.close()
        assert s.stop() == 0


@test
def connections_over_max_connections_are_503_not_closed():
    """With max-connections 8 held (kept alive after one answer each), a ninth connection's
    request is a JSON 503 server_busy with Retry-After and Connection: close (before, MHD closed
    it unanswered); /health there is answered; once two held ones leave, requests are served."""
    s = Server("--max-connections", "8", "--max-connections-per-client", "0")
    held = []
    try:
        for _ in range(8):
            sk = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            sk.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_head(sk, 10).startswith("HTTP/1.1 200"), "a held one not answered"
            held.append(sk)
        h, err = expect_raw_error(raw_request(s.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
                                              b"\r\n", 5), 503, "server_busy")
        assert h.get("retry-after") and h.get("connection", "").lower() == "close", h
        assert "max-connections" in err["message"], err
        st, h, _, _ = raw_request(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 5)
        assert st == 200 and h.get("connection", "").lower() == "close", (st, h)
        for sk in held[:2]:
            sk.close()
        def served():  # once the server has seen them go
            try:
                return requests.get(s.url + "/v1/models", timeout=5).status_code == 200
            except requests.exceptions.ConnectionError:
                return False
        poll(served, 10, "no request served after two held connections left")
    finally:
        for sk in held:
            sk.close()
        assert s.stop() == 0


t_stop = time.time()
exit_status = S.stop()
if time.time() - t_stop > 5:
    failed += 1
    print(f"FAIL main server took {time.time() - t_stop:.1f} s to drain:\n" +
          "\n".join(S.log[-5:]))
if exit_status != 0:
    failed += 1
    print(f"FAIL main server exited {exit_status}\n" + "\n".join(S.log[-20:]))
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
