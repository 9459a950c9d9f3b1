"""An OpenAI-compatible HTTP endpoint on the standard library's `http.server`.

llama-cpp-python ships a server too, but it needs fastapi, uvicorn, sse-starlette,
starlette-context and pydantic-settings, and it serves GGUF only. The three routes local
applications use are small enough to write here, and this way LitGPT checkpoints are served
the same way:

- GET  /v1/models
- POST /v1/chat/completions   (the model's own chat template; "stream": true sends SSE chunks)
- POST /v1/completions        (raw text continuation; streams too)

One engine generates one reply at a time: requests queue on a lock. A client that disconnects
mid-stream stops its generation at the next token.

A web page the user opens can send requests to 127.0.0.1 too, so every request passes the same
gate before it is routed: its body is read whole (or refused, and the connection closed, when it
cannot be), its Host must name this server (DNS rebinding), its Origin, if any, must be one the
user allowed, its key must match, and a POST body must be declared JSON (a cross-site form or
text/plain post cannot be).

Every request is recorded (see `workbench_chat.monitor`): the handler fills a record as it goes
and hands it over when the reply is sent; a writer thread stores it.
"""

from __future__ import annotations

import faulthandler
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from workbench.errors import UserError
from workbench.prompts import TemplateFailed, TemplateRefused
from workbench_chat.engine import Engine, Sampling, Stats
from workbench_chat.monitor import Record, Recorder
from workbench_chat.respcache import ResponseCache, cache_key

MAX_BODY_BYTES = 16 * 1024 * 1024
LINGER_SECONDS = 5.0  # how long a refused body is drained so the client can read the refusal
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")
HEADER_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An error reply. `close`: the request body could not be read, so the connection must end."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 *, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.close = close

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def normalize_origin(value: str) -> str:
    """`scheme://host[:port]` the way browsers send it in Origin; ValueError if it is not one."""
    value = value.strip()
    if value in ("*", "null"):
        return value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in origin '{value}'") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username is not None \
            or parts.password is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"'{value}' is not an origin such as http://localhost:3000")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def parse_origins(values: list[str]) -> frozenset[str]:
    """--allow-origin values (repeated or comma-separated) as normalized origins."""
    out = set()
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                out.add(normalize_origin(item))
            except ValueError as exc:
                raise UserError(f"--allow-origin: {exc}") from None
    return frozenset(out)


def check_api_key(key: str | None, host: str) -> None:
    """An empty or unsendable key is a mistake; without a key only loopback may be bound."""
    if key is not None and not re.fullmatch(r"[\x21-\x7e]+", key):
        raise UserError("the API key must be non-empty printable ASCII without spaces (it is sent in a header)")
    if key is None and not is_loopback(host):
        raise UserError(f"--host {host} lets other machines reach the model: set a key with --api-key KEY "
                        "or the WORKBENCH_API_KEY environment variable")


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine | None, *, model_name: str,
                 api_key: str | None = None, allow_origins: frozenset[str] = frozenset(),
                 response_cache: ResponseCache | None = None, recorder: Recorder | None = None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.engine: Engine = engine  # type: ignore[assignment]  # set by serve() once loaded
        self.model_name = model_name
        # Only a digest is compared, so the comparison time says nothing about the key's length.
        self.key_digest = hashlib.sha256(f"Bearer {api_key}".encode()).digest() if api_key else None
        self.allow_origins = allow_origins
        self.bound_host = address[0].strip("[]").lower()
        self.cache = response_cache
        self.recorder = recorder
        self.lock = threading.Lock()
        self.created = int(time.time())

    def host_allowed(self, header: str) -> bool:
        """Whether a Host header names this server: a name a DNS-rebinding page cannot use."""
        found = HOST_HEADER.fullmatch(header.strip())
        if not found:
            return False
        name, port = found.group(1).strip("[]").lower(), int(found.group(2) or 80)
        if port != self.server_port:
            return False
        if name in LOOPBACK_NAMES or name == self.bound_host:
            return True
        if self.bound_host in WILDCARD_HOSTS:  # any of this machine's addresses, or its own name
            return _is_ip(name) or name == socket.gethostname().lower()
        return False

    def origin_allowed(self, origin: str) -> bool:
        if "*" in self.allow_origins:
            return True
        try:
            return normalize_origin(origin) in self.allow_origins
        except ValueError:
            return False


def parse_messages(raw: Any) -> list[dict[str, str]]:
    """OpenAI message objects to plain {role, content} dicts; text content only."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(raw):
        role = ROLES.get(str(m.get("role"))) if isinstance(m, dict) else None
        if role is None:
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text can be read by these models
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported", param="messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        out.append({"role": role, "content": content})
    return out


def parse_sampling(body: dict[str, Any]) -> Sampling:
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    values = {k: body[k] for k in ("temperature", "top_p", "top_k", "repeat_penalty", "seed")
              if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    values["stop"] = [stop] if isinstance(stop, str) else (stop or [])
    try:
        # Like OpenAI, a reply may run to the end of the context unless max_tokens says otherwise.
        return Sampling(max_tokens=None).updated({**values, "max_tokens": max_tokens})
    except UserError as exc:
        raise ApiError(400, str(exc)) from None


class Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"
    server_version = "workbench-serve"
    cors_origin: str | None = None  # the allowed Origin of the current request, echoed back
    body = b""
    rec: Record | None = None  # what the monitor learns about the current request

    # routing --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route({"/v1/models": self._models, "/models": self._models, "/health": self._health})

    def do_POST(self) -> None:
        self._route({"/v1/chat/completions": self._chat, "/chat/completions": self._chat,
                     "/v1/completions": self._completions, "/completions": self._completions})

    def do_OPTIONS(self) -> None:
        self._route({})

    def _no_method(self) -> None:  # still routed, so the body is read and the connection stays in sync
        self._route({})

    do_PUT = do_DELETE = do_PATCH = _no_method

    def _route(self, routes: dict[str, Any]) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        recorder = self.server.recorder
        self.rec = rec = recorder.begin(self.command, path[:200]) if recorder else None
        try:
            self.body = self._read_body()
            self._check_host()
            self._check_origin()
            if self.command == "OPTIONS":
                self._options()
                return
            self._check_key()
            if self.command == "POST" and self.headers.get_content_type() != "application/json":
                raise ApiError(415, "the body must be JSON, sent with 'Content-Type: application/json'",
                               code="unsupported_media_type")
            if path.startswith("/v1/models/") and self.command == "GET":
                self._model(path.removeprefix("/v1/models/"))
                return
            handler = routes.get(path)
            if handler is None:
                raise ApiError(404, f"no route {self.command} {path}", code="not_found")
            handler()
        except ApiError as exc:
            if rec:
                rec.error = exc.code or exc.body()["error"]["type"]
            self._send_json(exc.status, exc.body(), close=exc.close)
            if exc.close:
                self._linger()
        except (BrokenPipeError, ConnectionResetError):
            if rec:
                rec.error = "client_gone"
            self.close_connection = True
        except Exception as exc:  # one failed request must not take the server down
            if rec:
                rec.error = type(exc).__name__
            self.log_error("failed: %s: %s", type(exc).__name__, exc)
            self._send_json(500, ApiError(500, f"{type(exc).__name__}: {exc}").body())
        finally:
            if rec and recorder:
                recorder.finish(rec)

    # the gate -------------------------------------------------------------------------------

    def _body_length(self) -> int:
        """The declared body length; an ApiError (closing the connection) when it cannot be read."""
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "send the body with a Content-Length header, not chunked", close=True)
        declared = self.headers.get_all("Content-Length") or []
        if not declared:
            if self.command == "POST":
                raise ApiError(411, "the request needs a Content-Length header")
            return 0
        value = declared[0].strip()
        if len(set(declared)) != 1 or not re.fullmatch(r"[0-9]+", value):
            raise ApiError(400, "bad Content-Length header", close=True)
        if len(value) > 12 or int(value) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over the limit of {MAX_BODY_BYTES} bytes",
                           code="request_too_large", close=True)
        return int(value)

    def _read_body(self) -> bytes:
        """The whole body, read before any reply, so a kept-open connection stays in sync."""
        length = self._body_length()
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise ApiError(400, "the body ended before its Content-Length", close=True)
        return raw

    def handle_expect_100(self) -> bool:
        # A body that will be refused unread is not asked for.
        try:
            self._body_length()
        except ApiError:
            return True
        return super().handle_expect_100()

    def _linger(self) -> None:
        """Close after a refusal without resetting it away: end our side, drain what is in flight."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            deadline = time.monotonic() + LINGER_SECONDS
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def _check_host(self) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            raise ApiError(400, "the request needs exactly one Host header")
        host = hosts[0]
        if not self.server.host_allowed(host):
            raise ApiError(421, f"Host '{host}' does not name this server; use "
                           f"http://127.0.0.1:{self.server.server_port}", code="misdirected_request")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is None:  # not sent by a browser page: nothing cross-site to guard against
            return
        if not self.server.origin_allowed(origin):
            raise ApiError(403, f"requests from origin '{origin}' are not allowed; start the server "
                           "with --allow-origin ORIGIN to allow them", code="origin_not_allowed")
        self.cors_origin = origin

    def _check_key(self) -> None:
        want = self.server.key_digest
        if want is None:
            return
        given = hashlib.sha256(self.headers.get("Authorization", "").encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, want):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    def _options(self) -> None:
        """CORS preflight for an allowed origin (others got a 403 at the gate); Allow otherwise."""
        self.send_response(204)
        self.send_header("Allow", "GET, POST, OPTIONS")
        if self.cors_origin and "Access-Control-Request-Method" in self.headers:
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            asked = self.headers.get("Access-Control-Request-Headers", "").strip()
            # The origin is trusted, so any header it asks for (the OpenAI SDKs send several) is fine.
            allowed = asked if HEADER_NAMES.fullmatch(asked) else "Authorization, Content-Type"
            self.send_header("Access-Control-Allow-Headers", allowed)
            self.send_header("Access-Control-Max-Age", "600")
            if self.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
                # Chrome asks before a page on a public address may call one on this machine.
                self.send_header("Access-Control-Allow-Private-Network", "true")
        self.send_header("Content-Length", "0")
        self.end_headers()
        if self.rec:
            self.rec.answered()

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.rec and self.rec.status is None:
            self.rec.status = code
        super().send_response(code, message)

    def parse_request(self) -> bool:
        self.cors_origin = None  # a kept-open connection must not carry one request's origin to the next
        return super().parse_request()

    def end_headers(self) -> None:
        if self.cors_origin:
            self.send_header("Access-Control-Allow-Origin", self.cors_origin)
        if self.server.allow_origins:  # the reply depends on the Origin, so caches must keep them apart
            self.send_header("Vary", "Origin")
        super().end_headers()

    # plain routes ---------------------------------------------------------------------------

    def _card(self) -> dict[str, Any]:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created,
                "owned_by": "workbench"}

    def _models(self) -> None:
        self._send_json(200, {"object": "list", "data": [self._card()]})

    def _model(self, model_id: str) -> None:
        if model_id != self.server.model_name:
            raise ApiError(404, f"no model '{model_id}'; this server has '{self.server.model_name}'",
                           code="model_not_found")
        self._send_json(200, self._card())

    def _health(self) -> None:
        self._send_json(200, {"status": "ok"})

    # generation -----------------------------------------------------------------------------

    def _chat(self) -> None:
        body = self._read_json()
        messages = parse_messages(body.get("messages"))
        if self.rec:
            self.rec.text = "\n".join(m["content"] for m in messages)
        engine = self.server.engine
        sampling = parse_sampling(body)
        try:
            prompt = engine.render(messages)
        except TemplateRefused as exc:  # the model's template left the sandbox: the server's fault
            raise ApiError(500, str(exc), code="chat_template_refused") from None
        except TemplateFailed as exc:  # the template rejects this conversation (roles, order)
            raise ApiError(400, str(exc), param="messages") from None
        self._generate(body, prompt, sampling, [*engine.chat_stop, *sampling.stop], chat=True)

    def _completions(self) -> None:
        body = self._read_json()
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string", param="prompt")
        if self.rec:
            self.rec.text = prompt
        sampling = parse_sampling(body)
        self._generate(body, prompt, sampling, sampling.stop, chat=False)

    def _generate(self, body: dict[str, Any], prompt: str, sampling: Sampling, stop: list[str], *, chat: bool) -> None:
        server, engine, rec = self.server, self.server.engine, self.rec
        stream = bool(body.get("stream"))
        if rec:
            rec.stream = stream
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        ident = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", "created": int(time.time()),
                 "model": server.model_name}
        with server.lock:
            n_prompt = len(engine.tokenize(prompt))
            if n_prompt >= engine.n_ctx:
                raise ApiError(400, f"the prompt is {n_prompt} tokens but the context window holds "
                               f"{engine.n_ctx}; shorten it", code="context_length_exceeded", param="messages")
            key = cache_key(engine.model.identity(), prompt, sampling.to_json(), stop) \
                if server.cache is not None and sampling.temperature == 0 else None
            hit = server.cache.get(key) if key and server.cache is not None else None
            gone = threading.Event()
            if hit is not None:
                pieces: Iterator[str] = iter([hit[0]])
            else:
                pieces = engine.stream_text(prompt, sampling, stop, should_stop=gone.is_set)
            if rec:
                pieces = _timed(pieces, rec)
            text = self._stream(ident, pieces, chat=chat, gone=gone) if stream else "".join(pieces)
            stats = Stats(**{**hit[1], "from_cache": True}) if hit is not None else engine.last_stats
            if key and hit is None and server.cache is not None and stats.finish_reason != "interrupted":
                server.cache.put(key, text, stats.to_json())
        if rec:
            rec.tokens_in, rec.tokens_out = stats.prompt_tokens, stats.tokens
            rec.finish, rec.cached = stats.finish_reason, stats.from_cache
            if hit is None and stats.tokens and rec.began_s is not None:
                # From the first sampled token, which may show no text (an end token at once).
                rec.ttft_s = rec.began_s + stats.ttft_s
        finish = "length" if stats.finish_reason == "length" else "stop"
        usage = {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.tokens,
                 "total_tokens": stats.prompt_tokens + stats.tokens}
        if stream:
            obj = "chat.completion.chunk" if chat else "text_completion"
            last: dict[str, Any] = {"index": 0, "finish_reason": finish, **({"delta": {}} if chat else {"text": "", "logprobs": None})}
            self._sse({**ident, "object": obj, "choices": [last]}, gone)
            if include_usage:
                self._sse({**ident, "object": obj, "choices": [], "usage": usage}, gone)
            self._sse_raw(b"data: [DONE]\n\n", gone)
            if rec:
                rec.answered()
            if rec and gone.is_set():
                rec.error = "client_gone"
            return
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        self._send_json(200, {**ident, "object": "chat.completion" if chat else "text_completion",
                              "choices": [choice], "usage": usage, "stats": stats.to_json()})

    def _stream(self, ident: dict[str, Any], pieces: Iterator[str], *, chat: bool, gone: threading.Event) -> str:
        """Send the reply as server-sent events; returns the whole text."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the end of the stream is the end of the body
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            self._sse({**ident, "object": obj, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}, gone)
        parts = []
        for piece in pieces:  # keep draining after a disconnect: the engine stops at the next token
            parts.append(piece)
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece, "logprobs": None}
            self._sse({**ident, "object": obj, "choices": [{**choice, "finish_reason": None}]}, gone)
        return "".join(parts)

    # wire helpers ---------------------------------------------------------------------------

    def _read_json(self) -> dict[str, Any]:
        if not self.body:
            raise ApiError(400, "the request needs a JSON body")
        try:
            body = json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _send_json(self, status: int, data: dict[str, Any], *, close: bool = False) -> None:
        payload = json.dumps(data, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        if self.rec:
            self.rec.answered()

    def _sse(self, data: dict[str, Any], gone: threading.Event) -> None:
        self._sse_raw(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode(), gone)

    def _sse_raw(self, payload: bytes, gone: threading.Event) -> None:
        if gone.is_set():
            return
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            gone.set()


def _timed(pieces: Iterator[str], rec: Record) -> Iterator[str]:
    """The pieces, noting when generation began (the engine runs the prompt when the first is
    asked for) and when the first one came."""
    rec.began_s = time.perf_counter() - rec.start
    for piece in pieces:
        rec.first_token()
        yield piece


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, *, api_key: str | None = None, allow_origins: frozenset[str] = frozenset(),
         response_cache: ResponseCache | None = None, recorder: Recorder | None = None) -> ChatServer:
    """Listen before the model loads, so a busy port fails fast."""
    check_api_key(api_key, host)
    try:
        return ChatServer((host, port), None, model_name="", api_key=api_key, allow_origins=allow_origins,
                          response_cache=response_cache, recorder=recorder)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None


class Stopped(BaseException):
    """SIGTERM: leave the serving loop the way Ctrl-C does, so the request log is flushed.

    A BaseException, as KeyboardInterrupt is: socketserver catches `Exception` around a request
    it is accepting, and would log a SIGTERM that lands there and go on serving.
    """


#: Once told to stop, the process ends within this many seconds, with every thread's stack on
#: stderr if something held it up (a stop that hangs is worse than one that loses a log line).
STOP_DEADLINE_S = 20


def _stop(signum: int, frame: Any) -> None:
    raise Stopped


def serve(server: ChatServer, engine: Engine, model_name: str | None = None) -> int:
    """Answer requests until Ctrl-C or SIGTERM."""
    server.engine = engine
    server.model_name = model_name or engine.model.name.split(" (")[0]
    host = str(server.server_address[0])
    shown = f"[{host}]" if ":" in host else host
    for note in engine.notes:
        sys.stderr.write(f"note: {note}\n")
    if not is_loopback(host):
        sys.stderr.write(f"note: listening on {host}: other machines can reach this model with the API key\n")
    if "*" in server.allow_origins:
        sys.stderr.write("note: --allow-origin '*': any web page may send requests"
                         f"{' that carry the API key' if server.key_digest else ''}\n")
    url = f"http://{shown}:{server.server_port}/v1"
    if server.recorder:
        server.recorder.start(url, server.model_name, engine.model.ref)
    main = threading.current_thread() is threading.main_thread()  # only it can take signals
    previous = signal.signal(signal.SIGTERM, _stop) if main else None
    sys.stdout.write(f"serving {server.model_name} ({engine.backend}, context {engine.n_ctx} tokens) at {url}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except (KeyboardInterrupt, Stopped):
        sys.stderr.write("stopped\n")
        if main:
            faulthandler.dump_traceback_later(STOP_DEADLINE_S, exit=True)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
        if server.recorder:
            server.recorder.close()
    return 0
