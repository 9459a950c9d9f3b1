"""`workbench serve`: the tiny model, exported to GGUF in the test, behind the OpenAI HTTP API.

The server runs as a real subprocess; requests go over real sockets with the standard
library's HTTP client, the way a local application would talk to it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workbench_export.gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("serve-models")
    out = root / "tiny-f16.gguf"
    write_gguf(make_tiny_model(root / "tiny"), out, "f16")
    return out


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"at (http://\S+/v1)$", line.strip())
        assert found, f"no address in {line!r}; stderr: {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.url = found.group(1)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def connect(self) -> http.client.HTTPConnection:
        """A connection of its own, kept open across requests unless the server closes it."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, Any]:
        """One request on a fresh connection: status, headers, and the JSON body (None if empty)."""
        conn = self.connect()
        try:
            conn.request(method, "/v1" + path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw) if raw else None
        finally:
            conn.close()

    def request(self, path: str, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers={
            "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw, status, kind = resp.read(), resp.status, resp.headers.get("Content-Type")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        if kind == "text/event-stream":
            return status, [line[len("data: "):] for line in raw.decode().split("\n\n") if line]
        return status, json.loads(raw)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def server(gguf_model: Path):
    s = Server(str(gguf_model), "--port", "0", "--threads", "1")
    yield s
    s.stop()


def test_openai_chat_completions_plain_and_streaming(server):
    assert server.url.startswith("http://127.0.0.1:")  # only this machine can reach it by default
    status, models = server.request("/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny-f16.gguf"]

    ask = {"model": "tiny-f16.gguf", "messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Say hello."}],
           "temperature": 0, "max_tokens": 8}
    status, plain = server.request("/chat/completions", ask)
    assert status == 200 and plain["object"] == "chat.completion"
    [choice] = plain["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = plain["usage"]
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    status, events = server.request("/chat/completions", {**ask, "stream": True,
                                                          "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == choice["message"]["content"]  # greedy: the same reply, piece by piece
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage


def test_openai_completions_and_errors(server):
    status, done = server.request("/completions", {"prompt": "The quick brown", "max_tokens": 5,
                                                   "temperature": 0})
    assert status == 200 and done["object"] == "text_completion"
    assert isinstance(done["choices"][0]["text"], str) and done["usage"]["completion_tokens"] == 5

    status, events = server.request("/completions", {"prompt": "The quick brown", "max_tokens": 5,
                                                     "temperature": 0, "stream": True})
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert "".join(pieces) == done["choices"][0]["text"]

    status, err = server.request("/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]})
    assert status == 400 and "messages[0].role" in err["error"]["message"]
    status, err = server.request("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                       "top_p": 7})
    assert status == 400 and "top_p" in err["error"]["message"]
    status, err = server.request("/chat/completions", {"messages": [
        {"role": "user", "content": "the quick brown fox " * 100}]})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"
    status, err = server.request("/nowhere", {})
    assert status == 404 and err["error"]["type"] == "invalid_request_error"
    # After all that, the server still answers.
    status, _ = server.request("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 2})
    assert status == 200


def test_api_key_is_enforced_when_set(gguf_model):
    s = Server(str(gguf_model), "--port", "0", "--threads", "1", "--api-key", "sesame")
    try:
        status, err = s.request("/models")
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        status, models = s.request("/models", headers={"Authorization": "Bearer sesame"})
        assert status == 200 and models["data"]
    finally:
        s.stop()


def test_serving_a_checkpoint_and_a_busy_port(tmp_path, cli):
    model = make_tiny_model(tmp_path / "tiny")
    s = Server(str(model), "--port", "0", "--threads", "1", "--model-name", "tiny-torch")
    try:
        status, plain = s.request("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                        "max_tokens": 4, "seed": 1})
        assert status == 200 and plain["model"] == "tiny-torch" and plain["usage"]["completion_tokens"] <= 4
        port = s.url.rsplit(":", 1)[1].split("/")[0]
        busy = cli("serve", str(model), "--port", port)
        assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    finally:
        s.stop()


# ----------------------------------------------------------------------------------------------
# the wire: bodies, kept-open connections, limits

ASK = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}).encode()
JSON = {"Content-Type": "application/json"}


def test_a_kept_open_connection_stays_in_sync_after_errors(server):
    conn = server.connect()
    try:
        # Each error body below, left unread, would be parsed as the start of the next request.
        smuggled = b"GET /v1/nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        conn.request("POST", "/v1/no/such/route", body=smuggled, headers=JSON)
        first = conn.getresponse()
        assert first.status == 404 and json.loads(first.read())["error"]["code"] == "not_found"
        sock = conn.sock
        conn.request("PUT", "/v1/models", body=ASK, headers=JSON)
        second = conn.getresponse()
        assert second.status == 404 and json.loads(second.read())["error"]
        conn.request("POST", "/v1/chat/completions", body=ASK, headers={"Content-Type": "text/plain"})
        third = conn.getresponse()
        assert third.status == 415 and json.loads(third.read())["error"]
        conn.request("POST", "/v1/chat/completions", body=ASK, headers={**JSON, "Host": "evil.example"})
        fourth = conn.getresponse()
        assert fourth.status == 421 and json.loads(fourth.read())["error"]
        conn.request("POST", "/v1/chat/completions", body=ASK, headers=JSON)
        valid = conn.getresponse()
        assert valid.status == 200 and json.loads(valid.read())["object"] == "chat.completion"
        assert conn.sock is sock  # all on the one connection
    finally:
        conn.close()


def test_an_oversized_body_gets_413_and_the_server_goes_on(server):
    conn = server.connect()
    try:
        conn.request("POST", "/v1/chat/completions", body=b"x" * (50 * 1024 * 1024), headers=JSON)
        resp = conn.getresponse()  # not a broken pipe: the refusal arrives whole
        assert resp.status == 413 and resp.headers["Connection"] == "close"
        assert json.loads(resp.read())["error"]["code"] == "request_too_large"
    finally:
        conn.close()
    host = f"127.0.0.1:{server.port}".encode()
    # Declared but never sent: refused from the headers alone, without waiting for the body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\nExpect: 100-continue\r\n\r\n" % host)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))  # until the server closes
        assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply
    # A chunked body is refused too, and that connection closed, since its end was never found.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"prompt\": \"hi\"}\r\n0\r\n\r\n" % host)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.1 411 ") and b"Connection: close" in reply
    status, _, models = server.call("GET", "/models")
    assert status == 200 and models["data"]

# ----------------------------------------------------------------------------------------------
# who can reach it: web pages, DNS-rebinding names, other machines

def test_only_json_bodies_are_accepted(server):
    # text/plain and form posts are what a web page can send cross-site without asking first.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, _, err = server.call("POST", "/chat/completions", ASK, {"Content-Type": kind})
        assert status == 415, kind
        assert err["error"]["type"] == "invalid_request_error" and "application/json" in err["error"]["message"]
    status, _, err = server.call("POST", "/completions", b'{"prompt": "hi"}', {})  # no Content-Type at all
    assert status == 415
    status, _, done = server.call("POST", "/chat/completions", ASK, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and done["object"] == "chat.completion"


def test_host_must_name_this_server(server):
    port = server.port
    for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}",  # DNS rebinding
                 f"127.0.0.1:{port + 1}", "127.0.0.1", f"user@127.0.0.1:{port}"):
        status, _, err = server.call("GET", "/models", headers={"Host": host})
        assert status == 421, host
        assert err["error"]["code"] == "misdirected_request" and host in err["error"]["message"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        status, _, models = server.call("GET", "/models", headers={"Host": host})
        assert status == 200 and models["data"], host
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # which of two would count?
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example:{port}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")


def test_a_wildcard_bind_accepts_this_machines_names_only():
    from workbench_chat.server import bind

    s = bind("0.0.0.0", 0, api_key="k")  # bound, never served: only its Host rule is looked at
    try:
        port = s.server_port
        for host in (f"192.168.1.20:{port}", f"10.0.0.5:{port}", f"localhost:{port}", f"{socket.gethostname()}:{port}"):
            assert s.host_allowed(host), host
        for host in (f"evil.example:{port}", f"192.168.1.20:{port + 1}", "192.168.1.20"):
            assert not s.host_allowed(host), host
    finally:
        s.server_close()


def test_origins_and_cors_preflight(gguf_model):
    s = Server(str(gguf_model), "--port", "0", "--threads", "1",
               "--allow-origin", "http://localhost:3000, https://App.Example:443", "--allow-origin", "http://[::1]:8000")
    try:
        # A page from anywhere else is refused, and gets no CORS header to read the refusal with.
        for origin in ("https://evil.example", "http://localhost:3001", "null", "http://localhost:3000.evil.example"):
            status, headers, err = s.call("POST", "/chat/completions", ASK, {**JSON, "Origin": origin})
            assert status == 403 and err["error"]["code"] == "origin_not_allowed", origin
            assert headers["Access-Control-Allow-Origin"] is None
            status, headers, _ = s.call("OPTIONS", "/chat/completions", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})
            assert status == 403 and headers["Access-Control-Allow-Origin"] is None
        # An allowed page is served, with the headers its browser needs to hand it the reply.
        for origin in ("http://localhost:3000", "https://app.example", "http://[::1]:8000"):
            status, headers, done = s.call("POST", "/chat/completions", ASK, {**JSON, "Origin": origin})
            assert status == 200 and done["choices"], origin
            assert headers["Access-Control-Allow-Origin"] == origin and "Origin" in headers["Vary"]
        status, headers, body = s.call("OPTIONS", "/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
        assert status == 204 and body is None
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert {"GET", "POST"} <= {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
        assert headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-stainless-os"
        assert headers["Access-Control-Allow-Private-Network"] is None  # only when asked for
        status, headers, _ = s.call("OPTIONS", "/models", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Private-Network": "true"})
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert headers["Access-Control-Allow-Private-Network"] == "true"
        # Errors reach the allowed page too, so it can show them.
        status, headers, err = s.call("POST", "/chat/completions", b"{}", {**JSON, "Origin": "http://localhost:3000"})
        assert status == 400 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    finally:
        s.stop()


def test_a_bad_allowed_origin_is_refused_at_start(gguf_model, cli):
    done = cli("serve", str(gguf_model), "--port", "0", "--allow-origin", "localhost:3000", timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: --allow-origin: 'localhost:3000' is not an origin such as http://localhost:3000"]


def test_api_key_from_the_environment_is_checked(gguf_model):
    s = Server(str(gguf_model), "--port", "0", "--threads", "1", env={"WORKBENCH_API_KEY": "s3cret-key"})
    try:
        assert "s3cret-key" not in " ".join(s.proc.args)  # not in the process list
        for auth in (None, "Bearer s3cret-keY", "Bearer s3cret-key2", "Bearer s3cret", "s3cret-key", "Basic s3cret-key"):
            status, headers, err = s.call("POST", "/chat/completions", ASK, {**JSON, **({"Authorization": auth} if auth else {})})
            assert status == 401 and err["error"]["code"] == "invalid_api_key", auth
            assert headers["WWW-Authenticate"] == "Bearer"
        status, _, done = s.call("POST", "/chat/completions", ASK, {**JSON, "Authorization": "Bearer s3cret-key"})
        assert status == 200 and done["choices"]
    finally:
        s.stop()


def test_other_hosts_need_a_key(gguf_model, cli):
    for host in ("0.0.0.0", "::"):
        done = cli("serve", str(gguf_model), "--host", host, "--port", "0", timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        [line] = done.stderr.strip().splitlines()
        assert f"--host {host}" in line and "--api-key" in line and "WORKBENCH_API_KEY" in line
    done = cli("serve", str(gguf_model), "--port", "0", "--api-key", "", timeout=60)
    assert done.returncode == 2 and "API key" in done.stderr
