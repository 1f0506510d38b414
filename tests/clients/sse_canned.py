#!/usr/bin/env python3
"""expertd-client against a canned SSE server (no model needed): the awkward framings (CRLF,
events split across writes, keep-alive comments, data split over two lines, a last event without
a blank line after [DONE]), error bodies, and that each token is printed as it arrives: the
server holds the rest of the stream until the client has printed the first token.

Usage: sse_canned.py EXPERTD_CLIENT
"""
import http.server
import json
import subprocess
import sys
import threading
import time

client = sys.argv[1]
first_printed = threading.Event()
passed = failed = 0


def ok(name):
    global passed
    passed += 1
    print(f"ok   {name}", flush=True)


def fail(name, why):
    global failed
    failed += 1
    print(f"FAIL {name}: {why}", flush=True)


def chunk(text, finish=None, chat=False):
    choice = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": text} if text else {}
    else:
        choice["text"] = text
    return json.dumps({"id": "x", "object": "chunk", "choices": [choice]})


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_body(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send_body(200, {"object": "list", "data": [{"id": "canned", "object": "model"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), req))
        if req["model"] == "missing":
            self.send_body(404, {"error": {"message": "no such model", "type":
                                           "invalid_request_error", "param": "model",
                                           "code": "model_not_found"}})
            return
        chat = self.path.endswith("/chat/completions")
        if not req.get("stream"):
            key = "message" if chat else "text"
            val = {"role": "assistant", "content": "whole answer"} if chat else "whole answer"
            self.send_body(200, {"choices": [{"index": 0, key: val, "finish_reason": "stop"}],
                                 "usage": {"completion_tokens": 2}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        w = self.wfile
        w.write(b": keep-alive\r\n\r\n")
        w.write(f"data: {chunk('Hel', chat=chat)}\r\n\r\n".encode())
        w.flush()
        # the rest only once the client has shown the first token: a client that buffers
        # until the end of the stream never gets there
        if not first_printed.wait(5):
            self.server.held_too_long = True
        ev = f"data: {chunk('lo', chat=chat)}\n\n".encode()
        w.write(ev[:7]); w.flush(); time.sleep(0.05); w.write(ev[7:]); w.flush()
        # one event whose JSON is split over two data lines (joined with "\n")
        w.write(b'data: {"choices": [{"index": 0,\ndata: ' +
                (b'"delta": {"content": " world"}' if chat else b'"text": " world"') +
                b', "finish_reason": null}]}\n\n')
        w.write(f"data: {chunk('', 'length', chat=chat)}\n\n".encode())
        w.write(b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n')
        w.write(b"data: [DONE]")
        w.flush()


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.requests = []
server.held_too_long = False
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}"


def run_streaming(name, extra, want_path):
    first_printed.clear()
    server.held_too_long = False
    p = subprocess.Popen([client, "--url", url, "--prompt", "Hi", "--stream", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={"EXPERTD_API_KEY": "sk-canned", "PATH": "/usr/bin:/bin"})
    got = b""
    while b"Hel" not in got:
        b = p.stdout.read1(64) if hasattr(p.stdout, "read1") else p.stdout.read(1)
        if not b:
            break
        got += b
    streamed = b"Hel" in got and not server.held_too_long
    first_printed.set()
    rest, err = p.communicate(timeout=20)
    out = (got + rest).decode()
    if not streamed:
        fail(name, "the first token was not printed before the stream ended")
    elif p.returncode != 0 or out != "Hello world\n":
        fail(name, f"exit {p.returncode}, out {out!r}, err {err.decode()!r}")
    elif "finish_reason=length completion_tokens=3" not in err.decode():
        fail(name, f"stderr {err.decode()!r}")
    else:
        path, headers, req = server.requests[-1]
        if path != want_path or headers.get("Authorization") != "Bearer sk-canned":
            fail(name, f"path {path}, headers {headers}")
        elif not req.get("stream") or req["max_tokens"] != 64 or req["model"] != "canned":
            fail(name, f"request {req}")
        else:
            ok(name)


run_streaming("client_streams_completion", [], "/v1/completions")
run_streaming("client_streams_chat", ["--chat", "--max-tokens", "64"], "/v1/chat/completions")
path, _, req = server.requests[-1]
if req.get("messages") == [{"role": "user", "content": "Hi"}]:
    ok("client_chat_sends_messages")
else:
    fail("client_chat_sends_messages", str(req))

for name, extra in [("client_whole_completion", []), ("client_whole_chat", ["--chat"])]:
    r = subprocess.run([client, "--url", url, "--prompt", "Hi", "--model", "m", *extra],
                       capture_output=True, timeout=20)
    if r.returncode == 0 and r.stdout == b"whole answer\n":
        ok(name)
    else:
        fail(name, f"exit {r.returncode}: {r.stdout!r} {r.stderr!r}")

for name, extra in [("client_error_object", []), ("client_error_object_streaming", ["--stream"])]:
    r = subprocess.run([client, "--url", url, "--prompt", "Hi", "--model", "missing", *extra],
                       capture_output=True, timeout=20)
    if r.returncode == 1 and b"no such model" in r.stderr:
        ok(name)
    else:
        fail(name, f"exit {r.returncode}: {r.stderr!r}")

r = subprocess.run([client, "--url", "http://127.0.0.1:1", "--prompt", "Hi", "--model", "m"],
                   capture_output=True, timeout=20)
if r.returncode == 1 and b"127.0.0.1:1" in r.stderr:
    ok("client_connection_refused")
else:
    fail("client_connection_refused", f"exit {r.returncode}: {r.stderr!r}")

server.shutdown()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
