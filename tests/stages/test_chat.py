"""`workbench chat`: a tiny model, exported to GGUF in the test, chatted with through the real CLI.

Every run is a real subprocess with scripted stdin (the REPL) or JSON lines (the protocol the
TUI speaks), real llama.cpp and torch, and the workspace's real SQLite database.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_model

STATS_LINE = re.compile(r"\[(\d+) tokens · [\d.]+ tokens/s · first token [\d.]+ s")
FAST = ("--threads", "1", "--temperature", "0")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random tiny Llama as a LitGPT checkpoint and as an F16 and an F32 GGUF."""
    from workbench_export.gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("chat-models")
    model = make_tiny_model(root / "tiny")
    f16, f32 = root / "tiny-f16.gguf", root / "tiny-f32.gguf"
    write_gguf(model, f16, "f16")
    write_gguf(model, f32, "f32")
    return {"model": model, "gguf": f16, "gguf-f32": f32}


def register(kind: str, path: Path, name: str) -> str:
    """Put a file or directory into the test's workspace as an artifact; returns its id."""
    import shutil

    from workbench.context import Context
    from workbench.store import Store

    ctx = Context(Store())
    staged = ctx.staging_dir(kind)
    if path.is_dir():
        shutil.rmtree(staged)
        shutil.copytree(path, staged)
    else:
        shutil.copy2(path, staged / path.name)
    return ctx.register(kind, staged, name=name).id


def jsonl(cli: Any, model: Path | None, requests: list[Any], *args: str) -> list[dict[str, Any]]:
    """Run `workbench chat [MODEL] --jsonl` with `requests` on stdin; the events it wrote."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    where = [str(model)] if model else []
    r = cli("chat", *where, "--jsonl", "--threads", "1", *args, input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def replies(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group the events after `ready` by request: {text, notices, end} per done or error."""
    out, text, notices = [], "", []
    for e in events[1:]:
        if e["type"] == "token":
            text += e["text"]
        elif e["type"] == "notice":
            notices.append(e["message"])
        else:
            out.append({"text": text, "notices": notices, "end": e})
            text, notices = "", []
    return out


def conversations(cli: Any) -> list[dict[str, Any]]:
    r = cli("chat", "--list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ----------------------------------------------------------------------------------------------
# the REPL


@pytest.mark.parametrize("how", ["gguf-file", "gguf-artifact", "checkpoint-dir", "model-artifact"])
def test_scripted_repl_streams_a_reply_shows_speed_and_stores_it(cli, models, how):
    ref = {
        "gguf-file": lambda: str(models["gguf"]),
        "gguf-artifact": lambda: register("gguf", models["gguf"], "tiny-q"),
        "checkpoint-dir": lambda: str(models["model"]),
        "model-artifact": lambda: register("model", models["model"], "tiny-random"),
    }[how]()
    r = cli("chat", ref, *FAST, "--max-tokens", "12", input="hello there\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert ("llama.cpp" if "gguf" in how else "torch") in r.stderr
    speed = STATS_LINE.search(r.stderr)
    assert speed and 1 <= int(speed.group(1)) <= 12, r.stderr

    [conv] = conversations(cli)
    assert conv["n"] == 2 and conv["title"] == "hello there"
    stored = json.loads(cli("chat", "--export", conv["id"], "--format", "json").stdout)
    user, assistant = stored["messages"]
    assert user["content"] == "hello there"
    assert r.stdout == assistant["content"] + ("" if assistant["content"].endswith("\n") else "\n")
    assert assistant["stats"]["tokens"] == int(speed.group(1))


def test_history_persists_across_restarts_and_exports(cli, models, tmp_path):
    first = cli("chat", str(models["gguf"]), *FAST, "--max-tokens", "6", "--system", "Be brief.",
                input="my name is Ada\n")
    assert first.returncode == 0, first.stderr
    [conv] = conversations(cli)

    # A new process picks the conversation up: the model sees the earlier turn again.
    events = jsonl(cli, None, [{"type": "user", "content": "what is my name?", "max_tokens": 6}],
                   "--resume", conv["id"], "--temperature", "0")
    ready = events[0]
    assert ready["conversation_id"] == conv["id"] and ready["system"] == "Be brief."
    assert [m["role"] for m in ready["messages"]] == ["user", "assistant"]
    assert ready["messages"][0]["content"] == "my name is Ada"
    [turn] = replies(events)
    assert turn["end"]["type"] == "done" and turn["end"]["conversation_id"] == conv["id"]

    stored = json.loads(cli("chat", "--export", conv["id"], "--format", "json").stdout)
    roles = [m["role"] for m in stored["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert stored["system_prompt"] == "Be brief."
    first_stats = stored["messages"][1]["stats"]
    # The resumed prompt holds the system prompt, both earlier messages and the new question.
    assert turn["end"]["stats"]["prompt_tokens"] > first_stats["prompt_tokens"] + first_stats["tokens"] - 1
    assert stored["messages"][3]["content"] == turn["text"]

    md = tmp_path / "chat.md"
    r = cli("chat", "--export", conv["id"], "-o", str(md))
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    assert text.startswith(f"# {conv['title']}")
    assert "## System\n\nBe brief." in text and "## User\n\nwhat is my name?" in text
    assert text.count("## Assistant") == 2 and "tokens/s" in text

    assert cli("chat", "--delete", conv["id"]).returncode == 0
    assert conversations(cli) == []
    gone = cli("chat", "--export", conv["id"])
    assert gone.returncode == 2 and f"no conversation '{conv['id']}'" in gone.stderr


def test_repl_slash_commands(cli, models, tmp_path):
    saved = tmp_path / "saved.json"
    script = "\n".join([
        "/system You answer in one word.", "/set temperature 0", "/set top_k many", "/set max_tokens 4",
        "first question", "/save " + str(saved), "/reset", "second question", "/nope", "/exit",
        "never sent",
    ]) + "\n"
    r = cli("chat", str(models["gguf"]), "--threads", "1", input=script)
    assert r.returncode == 0, r.stderr
    assert "top_k must be an integer" in r.stderr and "unknown command /nope" in r.stderr
    assert len(STATS_LINE.findall(r.stderr)) == 2
    exported = json.loads(saved.read_text())
    assert exported["system_prompt"] == "You answer in one word."
    assert exported["settings"]["sampling"]["temperature"] == 0
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == ["first question"]
    # /reset started a second conversation; the line after /exit was never read.
    convs = conversations(cli)
    assert sorted(c["title"] for c in convs) == ["first question", "second question"]


# ----------------------------------------------------------------------------------------------
# the JSON-lines protocol


def test_jsonl_protocol_streams_reuses_the_kv_cache_and_reports_bad_lines(cli, models):
    events = jsonl(cli, models["gguf"], [
        {"type": "user", "content": "hi", "temperature": 0, "max_tokens": 6},
        "this is not json",
        {"type": "user", "content": "and again", "temperature": 0, "max_tokens": 6},
        {"type": "bogus"},
        {"type": "user", "content": "typo", "temprature": 0},
        {"type": "reset"},
        {"type": "user", "content": "hi", "system": "You are terse.", "temperature": 0, "max_tokens": 6},
    ])
    ready = events[0]
    assert ready["type"] == "ready" and ready["model"] == "tiny-f16.gguf"
    assert ready["n_ctx"] == 128  # the context length the model was trained with
    first, bad_json, second, bad_type, typo, third = replies(events)

    assert first["end"]["type"] == "done" and first["text"]
    assert set(first["end"]["stats"]) >= {"tokens", "tokens_per_s", "ttft_s"}
    assert "input line 2 is not JSON" in bad_json["end"]["message"]
    assert second["end"]["conversation_id"] == first["end"]["conversation_id"]
    # The follow-up turn only fed its new tokens: the first turn's prompt stayed in the KV cache.
    assert second["end"]["stats"]["cached_prompt_tokens"] >= first["end"]["stats"]["prompt_tokens"]
    assert "type must be 'user' or 'reset'" in bad_type["end"]["message"]
    assert "unknown sampling option(s) temprature" in typo["end"]["message"]
    assert third["notices"] == ["new conversation"]  # the reset's answer
    assert third["end"]["type"] == "done"
    assert third["end"]["conversation_id"] not in (None, first["end"]["conversation_id"])
    # Same question, same greedy sampling, but a system prompt: the prompt changed.
    assert third["end"]["stats"]["prompt_tokens"] > first["end"]["stats"]["prompt_tokens"]


@pytest.mark.parametrize("model", ["gguf", "model"])
def test_oversized_conversation_is_trimmed_not_crashed(cli, models, model):
    question = {"type": "user", "content": "tell me about the quick brown fox and the lazy dog",
                "temperature": 0, "max_tokens": 4}
    too_long = {"type": "user", "content": "the quick brown fox " * 40, "max_tokens": 4}
    events = jsonl(cli, models[model], [question] * 5 + [too_long, question],
                   "--n-ctx", "96", "--system", "Answer.")
    assert events[0]["n_ctx"] == 96
    turns = replies(events)
    assert [t["end"]["type"] for t in turns] == ["done"] * 5 + ["error", "done"]
    notices = [n for t in turns for n in t["notices"]]
    assert notices and all("oldest" in n and "system prompt is kept" in n for n in notices)
    assert all(t["end"]["stats"]["prompt_tokens"] + 4 <= 96 for t in turns if t["end"]["type"] == "done")
    assert "context window holds 96" in turns[5]["end"]["message"]

    # The model stopped seeing the oldest turns, but the stored conversation keeps them all.
    [conv] = conversations(cli)
    stored = json.loads(cli("chat", "--export", conv["id"], "--format", "json").stdout)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"] * 6


def test_response_cache_serves_repeated_greedy_requests(cli, models):
    ask = {"type": "user", "content": "hello", "temperature": 0, "max_tokens": 8}
    events = jsonl(cli, models["gguf"], [ask, {"type": "reset"}, ask,
                                         {**ask, "temperature": 0.7}], "--response-cache")
    fresh, cached, sampled = replies(events)
    assert fresh["end"]["stats"]["from_cache"] is False
    assert cached["end"]["stats"]["from_cache"] is True and cached["text"] == fresh["text"]
    assert sampled["end"]["stats"]["from_cache"] is False
    # The cache is on disk: a new process serves it too, and without the flag nothing is cached.
    again = replies(jsonl(cli, models["gguf"], [ask], "--response-cache"))[0]
    assert again["end"]["stats"]["from_cache"] is True and again["text"] == fresh["text"]
    plain = replies(jsonl(cli, models["gguf"], [ask]))[0]
    assert plain["end"]["stats"]["from_cache"] is False and plain["text"] == fresh["text"]


# ----------------------------------------------------------------------------------------------
# Ctrl-C


class Chat:
    """A `workbench chat` process we can talk to line by line and send signals to."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "chat", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buffer = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read(self, until: bytes, timeout: float = 60) -> bytes:
        """Bytes from stdout up to and including `until` (b"": whatever comes first)."""
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while until not in self.buffer or not self.buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {until!r} on stdout within {timeout} s; got {self.buffer[-200:]!r}"
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed; stderr: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
            self.buffer += chunk
        if not until:
            out, self.buffer = self.buffer, b""
            return out
        out, _, self.buffer = self.buffer.partition(until)
        return out + until

    def event(self) -> dict[str, Any]:
        return json.loads(self.read(b"\n"))

    def finish(self) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=60)
        return rc, self.proc.stderr.read().decode()


# A greedy reply from the random model runs to max_tokens: long enough to interrupt.
LONG = ("--n-ctx", "4096", "--threads", "1")


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_jsonl_reply_and_the_session_goes_on(models):
    chat = Chat(str(models["gguf"]), "--jsonl", *LONG)
    assert chat.event()["type"] == "ready"
    assert "exceeds the 128 tokens this model was trained on" in chat.event()["message"]
    chat.send(json.dumps({"type": "user", "content": "hi", "temperature": 0, "max_tokens": 4000}))
    assert chat.event()["type"] == "token"
    chat.proc.send_signal(signal.SIGINT)
    while (event := chat.event())["type"] == "token":
        pass
    assert event["type"] == "done"
    assert event["stats"]["finish_reason"] == "interrupted" and event["stats"]["tokens"] < 4000
    chat.send(json.dumps({"type": "user", "content": "still there?", "temperature": 0, "max_tokens": 3}))
    while (event := chat.event())["type"] == "token":
        pass
    assert event["type"] == "done" and event["stats"]["finish_reason"] == "length"
    rc, stderr = chat.finish()
    assert rc == 0, stderr


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_repl_reply_without_leaving(cli, models):
    chat = Chat(str(models["gguf"]), *LONG, "--temperature", "0", "--max-tokens", "4000")
    chat.send("hi")
    chat.read(b"")  # the reply is streaming
    chat.proc.send_signal(signal.SIGINT)
    chat.send("/exit")
    rc, stderr = chat.finish()
    assert rc == 0, stderr
    assert "· stopped]" in stderr and "saved as chat-" in stderr
    [conv] = conversations(cli)
    stored = json.loads(cli("chat", "--export", conv["id"], "--format", "json").stdout)
    partial = stored["messages"][1]
    assert partial["stats"]["finish_reason"] == "interrupted" and 0 < partial["stats"]["tokens"] < 4000


@pytest.mark.timeout(120)
def test_a_reply_leaves_the_cores_a_busy_process_uses_and_says_so(models):
    from workbench.hardware import physical_cores

    cores = physical_cores()
    if cores < 2:
        pytest.skip("needs 2 cores: one for the busy process, one for the reply")
    # Busy enough to be seen on a starved CI host too.
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(min(cores, 4))]
    try:
        chat = Chat(str(models["gguf"]), "--jsonl")
        assert chat.event()["type"] == "ready"
        time.sleep(1.0)  # the user types while the other process computes
        chat.send(json.dumps({"type": "user", "content": "hi", "temperature": 0, "max_tokens": 8}))
        while (event := chat.event())["type"] == "token":
            pass
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert event["type"] == "done", event
    stats = event["stats"]
    # Spinning worker threads on a core the other process holds would stall every step.
    assert stats["cores"] == cores and stats["threads"] < cores, stats
    from workbench_chat.history import stats_line

    assert f"{stats['threads']} of {cores} cores (others are busy)" in stats_line(stats)
    rc, stderr = chat.finish()
    assert rc == 0, stderr


# ----------------------------------------------------------------------------------------------
# the engines themselves


def test_gguf_and_checkpoint_render_the_same_prompt_and_reply_alike(models):
    """The template from the GGUF metadata and the stored prompt style give the same tokens, and
    llama.cpp (F32 weights and KV cache) and torch pick the same greedy reply."""
    from workbench_chat.engine import Sampling, resolve_model
    from workbench_chat.llama_engine import LlamaEngine
    from workbench_chat.torch_engine import TorchEngine

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Don't stop; 12345?"}]
    llama = LlamaEngine(resolve_model(str(models["gguf-f32"])), n_ctx=None, threads=1, f32_kv_cache=True)
    torch_ = TorchEngine(resolve_model(str(models["model"])), n_ctx=None)
    assert llama.render(messages) == torch_.render(messages)
    assert llama.tokenize(llama.render(messages)) == torch_.tokenize(torch_.render(messages))
    greedy = Sampling(temperature=0, max_tokens=10)
    assert "".join(llama.stream(messages, greedy)) == "".join(torch_.stream(messages, greedy))
    assert llama.last_stats.tokens == torch_.last_stats.tokens == 10
    llama.close()


def test_kv_cache_reuse_leaves_replies_unchanged(models):
    """Turn 3 of a conversation: with the cache only the new tokens run, and the reply is the one
    a cold start gives (same seed)."""
    from workbench_chat.engine import Sampling, open_engine

    engine = open_engine(str(models["model"]))
    sampling = Sampling(temperature=0.9, seed=7, max_tokens=8)
    messages: list[dict[str, str]] = []
    for question in ("one", "two", "three"):
        messages.append({"role": "user", "content": question})
        reply = "".join(engine.stream(messages, sampling))
        messages.append({"role": "assistant", "content": reply})
    warm = engine.last_stats
    assert warm.cached_prompt_tokens > warm.prompt_tokens // 2
    engine.forget()
    assert "".join(engine.stream(messages[:-1], sampling)) == messages[-1]["content"]
    assert engine.last_stats.cached_prompt_tokens == 0


# ----------------------------------------------------------------------------------------------
# bad input and start-up


def test_bad_model_references_are_one_line_errors(cli, tmp_path, workspace, models):
    missing = cli("chat", "no-such-model", "--temperature", "0")
    assert missing.returncode == 2 and "no model 'no-such-model'" in missing.stderr
    assert not (workspace / "workbench.db").exists()  # bad input writes nothing
    typo = cli("chat", "no-such-model", "--top-p", "1.5")
    assert typo.returncode == 2 and "top_p must be in (0, 1]" in typo.stderr
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    r = cli("chat", str(fake))
    assert r.returncode == 2 and f"{fake} is not a GGUF file" in r.stderr
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(models["gguf"].read_bytes()[:20_000])
    truncated = cli("chat", str(cut))
    assert truncated.returncode == 2 and f"cut.gguf in {tmp_path} is truncated" in truncated.stderr
    assert cli("chat").returncode == 2
    threads = cli("chat", str(models["gguf"]), "--threads", "0")
    assert threads.returncode == 2 and "--threads 0 is not a thread count" in threads.stderr
    assert "Traceback" not in missing.stderr + r.stderr + truncated.stderr


def test_chat_and_serve_commands_import_no_engine():
    probe = ("import sys\n"
             "from workbench.cli import build_parser\n"
             "build_parser(['chat']); build_parser(['serve'])\n"
             "print(sorted(m for m in ('torch', 'litgpt', 'llama_cpp') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
