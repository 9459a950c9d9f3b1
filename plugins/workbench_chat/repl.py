"""The two faces of `workbench chat`: a line REPL for people and a JSON-lines loop for the TUI.

Ctrl-C (SIGINT) while a reply streams stops that reply and keeps the session; the partial reply
is kept and marked `interrupted`. The TUI stops a reply the same way: it sends SIGINT to the
`workbench chat --jsonl` process.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from workbench.errors import UserError
from workbench_chat import history
from workbench_chat.session import ChatSession

HELP = """commands:
  /help               this list
  /exit, /quit        leave (Ctrl-D does too)
  /reset              start a new conversation (same model, system prompt and settings)
  /system [TEXT]      show or set the system prompt
  /set [KEY VALUE]    show or change sampling: temperature, top_p, top_k, repeat_penalty,
                      seed, max_tokens, stop (e.g. /set temperature 0, /set stop ["###"])
  /save [FILE]        export this conversation (.json or .md; default CONVERSATION_ID.md)
  /info               model, context window and conversation id
  \"\"\"                 start or end a multi-line message; //text sends a line starting with /
Ctrl-C stops a reply without leaving."""


class Interrupt:
    """While active, SIGINT sets a flag instead of raising KeyboardInterrupt.

    The engines check the flag between tokens, so a reply stops cleanly and the KV cache and
    database are never left half-updated.
    """

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.flag = True

    def __enter__(self) -> Interrupt:
        self.flag = False
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.flag


def snapshot(session: ChatSession) -> dict[str, Any]:
    """The conversation in the store's shape, also when it is not being saved."""
    if session.store is not None and session.conversation_id:
        return session.store.get_conversation(session.conversation_id)
    now = time.time()
    first = next((m["content"] for m in session.messages if m["role"] == "user"), "untitled")
    return {"id": session.conversation_id or "unsaved", "title": " ".join(first.split())[:60],
            "model": session.model_ref, "system_prompt": session.system,
            "settings": {"sampling": session.sampling.to_json()}, "created_at": now, "updated_at": now,
            "messages": [{**m, "created_at": now, "stats": {}} for m in session.messages]}


# ----------------------------------------------------------------------------------------------
# the terminal REPL


class Repl:
    def __init__(self, session: ChatSession, *, inp: IO[str] | None = None, out: IO[str] | None = None,
                 err: IO[str] | None = None):
        self.session = session
        self.inp = inp or sys.stdin
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = self.inp.isatty() and self.out.isatty()
        if self.interactive:
            import readline  # noqa: F401 - line editing and history for input()

    def say(self, text: str) -> None:
        """Everything that is not the model's reply goes to stderr, so stdout is the transcript."""
        self.err.write(text + "\n")
        self.err.flush()

    def read_message(self) -> str:
        line = self._read_line("you> ")
        if line.strip() != '"""':
            return line
        block: list[str] = []
        while (line := self._read_line("...  ")).strip() != '"""':
            block.append(line)
        return "\n".join(block)

    def _read_line(self, prompt: str) -> str:
        if self.interactive:
            return input(prompt)
        line = self.inp.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def run(self) -> int:
        engine = self.session.engine
        self.say(f"chatting with {engine.name} ({engine.backend}, context {engine.n_ctx} tokens); "
                 "/help for commands, /exit to leave")
        for note in engine.notes:
            self.say(f"note: {note}")
        if self.session.conversation_id:
            self.say(f"resumed {self.session.conversation_id} ({len(self.session.messages)} messages)")
        while True:
            try:
                text = self.read_message()
            except EOFError:
                break
            except KeyboardInterrupt:
                self.say("\n(/exit or Ctrl-D to leave)")
                continue
            if not text.strip():
                continue
            if text.startswith("/") and not text.startswith("//"):
                if self.command(text) == "exit":
                    break
                continue
            self.reply(text[1:] if text.startswith("//") else text)
        if self.session.conversation_id:
            self.say(f"saved as {self.session.conversation_id}; "
                     f"`workbench chat --resume {self.session.conversation_id}` continues it")
        return 0

    def reply(self, text: str) -> None:
        try:
            self._reply(text)
        except UserError as exc:  # one failed reply does not end the session
            self.say(f"error: {exc}")

    def _reply(self, text: str) -> None:
        wrote_newline = True
        with Interrupt() as stop:
            for event in self.session.send(text, should_stop=stop):
                kind = event["type"]
                if kind == "token":
                    self.out.write(event["text"])
                    self.out.flush()
                    wrote_newline = event["text"].endswith("\n")
                elif kind == "notice":
                    self.say(f"note: {event['message']}")
                elif kind == "error":
                    self.say(f"error: {event['message']}")
                elif kind == "done":
                    if not wrote_newline:
                        self.out.write("\n")
                        self.out.flush()
                    self.say(f"[{history.stats_line(event['stats'])}]")

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        session = self.session
        if name in ("/exit", "/quit"):
            return "exit"
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            session.reset()
            self.say("new conversation")
        elif name == "/system":
            if arg:
                session.set_system(arg)
                self.say("system prompt set")
            else:
                self.say(f"system prompt: {session.system or '(none)'}")
        elif name == "/set":
            self._set(arg)
        elif name == "/save":
            if not session.messages:
                self.say("nothing to save yet")
                return None
            conv = snapshot(session)
            path = Path(arg or f"{conv['id']}.md").expanduser()
            path.write_text(history.export(conv, history.format_for(str(path))), encoding="utf-8")
            self.say(f"saved {path}")
        elif name == "/info":
            engine = session.engine
            self.say(f"model {engine.name} ({engine.backend}), context {engine.n_ctx} tokens, "
                     f"conversation {session.conversation_id or '(not started)'}, "
                     f"{len(session.messages) - session.window_start} of {len(session.messages)} messages in view")
        else:
            self.say(f"unknown command {name}; /help lists them")
        return None

    def _set(self, arg: str) -> None:
        if not arg:
            self.say(json.dumps(self.session.sampling.to_json()))
            return
        key, _, raw = arg.partition(" ")
        raw = raw.strip()
        value: Any
        try:
            value = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            value = raw
        if key == "stop" and isinstance(value, str):
            value = [value]
        try:
            self.session.sampling = self.session.sampling.updated({key: value})
        except UserError as exc:
            self.say(f"error: {exc}")
            return
        self.say(f"{key} = {json.dumps(getattr(self.session.sampling, key))}")


# ----------------------------------------------------------------------------------------------
# the JSON-lines protocol


def run_jsonl(session: ChatSession, inp: IO[str] | None = None, out: IO[str] | None = None) -> int:
    """Read requests from `inp`, one JSON object per line; write events to `out`, one per line.

    In: {"type": "user", "content": str, "system"?: str, sampling keys?} | {"type": "reset"}
    Out: ready, then per request notice* token* (done | error).
    """
    inp, out = inp or sys.stdin, out or sys.stdout

    def write(event: dict[str, Any]) -> None:
        out.write(json.dumps(event, ensure_ascii=False) + "\n")
        out.flush()

    engine = session.engine
    write({"type": "ready", "model": engine.name, "n_ctx": engine.n_ctx, "backend": engine.backend,
           "conversation_id": session.conversation_id, "system": session.system,
           "messages": session.messages})
    for note in engine.notes:
        write({"type": "notice", "message": note})
    with Interrupt() as stop:
        for n, line in enumerate(iter(inp.readline, ""), start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                write({"type": "error", "message": f"input line {n} is not JSON: {exc.msg} (column {exc.colno})"})
                continue
            kind = request.get("type") if isinstance(request, dict) else None
            if kind == "reset":
                session.reset()
                write({"type": "notice", "message": "new conversation"})
            elif kind == "user":
                _jsonl_user(session, request, n, stop, write)
            else:
                write({"type": "error", "message": f"input line {n}: type must be 'user' or 'reset', got {kind!r}"})
    return 0


def _jsonl_user(session: ChatSession, request: dict[str, Any], n: int, stop: Interrupt,
                write: Any) -> None:
    content = request.get("content")
    if not isinstance(content, str) or not content.strip():
        write({"type": "error", "message": f"input line {n}: 'content' must be a non-empty string"})
        return
    system = request.get("system")
    try:
        if system is not None and not isinstance(system, str):
            raise UserError("'system' must be a string")
        overrides = {k: v for k, v in request.items() if k not in ("type", "content", "system")}
        sampling = session.sampling.updated(overrides)
    except UserError as exc:
        write({"type": "error", "message": f"input line {n}: {exc}"})
        return
    if system is not None and system != session.system:
        session.set_system(system)
    stop.flag = False  # a Ctrl-C that arrived while idle does not stop the next reply
    try:
        for event in session.send(content, sampling=sampling, should_stop=stop):
            write(event)
    except UserError as exc:
        write({"type": "error", "message": str(exc)})
    except Exception as exc:  # the session outlives one failed reply
        write({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
