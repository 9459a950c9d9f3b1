"""`workbench serve` records every request, and `workbench monitor` reads the figures back.

The tiny model is exported to GGUF and served by a real `workbench serve` subprocess; clients on
threads talk to it over real sockets; the server is stopped with a real SIGTERM; the log is read
with sqlite3 and through the real `workbench monitor` command.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_model

MARKER = "zebracornish"  # a word no other text here contains: where it shows up, prompt text was kept


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workbench_export.gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("monitor-models")
    out = root / "tiny-f16.gguf"
    write_gguf(make_tiny_model(root / "tiny"), out, "f16")
    return out


class Served:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", *args, "--port", "0",
                                      "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=os.environ.copy())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/v1$", line.strip())
        assert found, f"no address in {line!r}; stderr: {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.port = int(found.group(1))

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, "/v1" + path, body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        return self.call("POST", path, json.dumps(body).encode())

    def terminate(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"the server did not stop within 60 s of SIGTERM; stderr:\n{err[-3000:]}") from None
        assert self.proc.returncode == 0, err
        return err


def log_rows() -> list[dict[str, Any]]:
    from workbench import monitoring

    db = sqlite3.connect(monitoring.db_path())
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        db.close()


def log_bytes(workspace: Path) -> bytes:
    return b"".join(p.read_bytes() for p in workspace.glob("monitor.db*"))


def monitor(cli: Any, *args: str) -> dict[str, Any]:
    done = cli("monitor", *args, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 4, **extra}


def test_every_request_under_load_is_recorded_and_survives_sigterm(gguf_file, workspace, cli):
    server = Served(str(gguf_file))
    # (what to send, the status the client expects)
    jobs: list[tuple[str, str, bytes | None, int]] = []
    for i in range(12):
        jobs.append(("POST", "/chat/completions", json.dumps(chat(f"{MARKER} hello number {i}")).encode(), 200))
    for i in range(8):
        jobs.append(("POST", "/chat/completions",
                     json.dumps(chat(f"{MARKER} stream {i}", stream=True)).encode(), 200))
    for i in range(6):
        jobs.append(("POST", "/completions", json.dumps({"prompt": f"{MARKER} the quick {i}", "max_tokens": 3,
                                                         "stream": i % 2 == 0}).encode(), 200))
    jobs += [("POST", "/chat/completions", b"{not json", 400),
             ("POST", "/chat/completions", json.dumps({"messages": []}).encode(), 400),
             ("POST", "/chat/completions", json.dumps(chat(f"{MARKER} " * 400)).encode(), 400),
             ("GET", "/nowhere", None, 404),
             ("GET", "/models", None, 200)]
    random.Random(0).shuffle(jobs)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda j: server.call(j[0], j[1], j[2]), jobs))
    err = server.terminate()  # right after the last response
    assert "stopped" in err

    assert [status for status, _ in results] == [want for *_, want in jobs]
    rows = log_rows()
    assert len(rows) == len(jobs)
    assert sorted(r["status"] for r in rows) == sorted(want for *_, want in jobs)
    assert sorted(r["endpoint"] for r in rows) == sorted("/v1" + path for _, path, _, _ in jobs)
    assert {r["model"] for r in rows} == {"tiny-f16.gguf"}
    assert all(r["latency_s"] > 0 for r in rows)
    generations = [r for r in rows if r["tokens_out"] is not None]
    assert len(generations) == 26
    assert sum(r["stream"] for r in generations) == 8 + 3
    for r in generations:
        assert r["status"] == 200 and r["error"] is None
        assert 1 <= r["tokens_out"] <= 4 and r["tokens_in"] > 3
        assert 0 < r["ttft_s"] <= r["latency_s"]
        assert r["words"] >= 2 and r["ngrams"]
    errors = {r["error"] for r in rows if r["status"] >= 400}
    assert errors == {"invalid_request_error", "context_length_exceeded", "not_found"}
    # Prompts were not asked for: no column and no byte of the log holds their text.
    assert all(r["prompt"] is None for r in rows)
    assert MARKER.encode() not in log_bytes(workspace)

    rep = monitor(cli)
    [m] = rep["models"]
    assert m["requests"] == len(jobs) and m["errors"] == 4 and m["generations"] == 26
    assert m["error_rate"] == pytest.approx(4 / len(jobs))
    assert 0 < m["latency_p50_s"] <= m["latency_p95_s"] and 0 < m["ttft_p50_s"] <= m["ttft_p95_s"]
    assert m["tokens_per_s"] > 0
    assert m["drift"]["reference"] is None and "no reference data" in m["drift"]["reason"]
    assert rep["servers"] == []  # it stopped
    text = cli("monitor", timeout=60)
    assert "no server is running" in text.stdout and "no reference data" in text.stdout


TOPICS = ["soup", "bread", "rice", "salad", "pasta", "curry", "cake", "stew"]
VERBS = ["cook", "bake", "season", "serve", "store", "prepare"]


def kitchen_question(rng: random.Random) -> str:
    return (f"How long should I {rng.choice(VERBS)} the {rng.choice(TOPICS)} for {rng.randint(2, 9)} people, "
            f"and what goes well with {rng.choice(TOPICS)}?")


def shifted_question(rng: random.Random) -> str:
    return (f"SELECT id, total FROM orders_{rng.randint(1, 99)} WHERE region = 'north' "
            f"AND amount > {rng.randint(10, 999)} ORDER BY total DESC;")


def register_lineage(gguf_file: Path) -> str:
    """web text → base model; LoRA on kitchen questions → merged model → GGUF, with the parents the
    stages give them; the GGUF's id."""
    from workbench.context import Context
    from workbench.store import Store

    def dataset(name: str, kind: str, rows: list[dict[str, Any]]) -> str:
        staged = ctx.staging_dir("dataset")
        (staged / "card.json").write_text(json.dumps({"type": kind}))
        (staged / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return ctx.register("dataset", staged, name=name).id

    def model(name: str, parents: list[str]) -> str:
        staged = ctx.staging_dir("model")
        (staged / "model_config.yaml").write_text("name: tiny\n")
        return ctx.register("model", staged, name=name, parents=parents).id

    rng = random.Random(1)
    ctx = Context(Store())
    web = dataset("web-text", "pretrain", [{"text": shifted_question(rng)} for _ in range(100)])
    base = model("tiny-base", [web])
    data = dataset("kitchen-questions", "instruction", [{"messages": [
        {"role": "user", "content": kitchen_question(rng)},
        {"role": "assistant", "content": "About an hour, with bread."}]} for _ in range(300)])
    adapter = ctx.register("adapter", ctx.staging_dir("adapter"), name="tiny-kitchen-adapter",
                           parents=[base, data]).id
    merged = model("tiny-kitchen", [base, adapter, data])
    export = ctx.staging_dir("gguf")
    shutil.copy(gguf_file, export / "tiny-kitchen-f16.gguf")
    return ctx.register("gguf", export, name="tiny-kitchen-f16", parents=[merged]).id


def test_drift_rises_when_requests_move_away_from_the_training_data(gguf_file, cli):
    gguf_id = register_lineage(gguf_file)
    server = Served(gguf_id)
    rng = random.Random(2)
    try:
        start = datetime.now().isoformat()
        for _ in range(24):
            assert server.post("/chat/completions", {**chat(kitchen_question(rng)), "max_tokens": 1})[0] == 200
        alike = monitor(cli, gguf_id, "--since", start)
        time.sleep(0.05)
        shift = datetime.now().isoformat()
        for _ in range(24):
            assert server.post("/completions", {"prompt": shifted_question(rng), "max_tokens": 1})[0] == 200
        shifted = monitor(cli, "tiny-kitchen-f16", "--since", shift)
        live = monitor(cli)
    finally:
        server.terminate()

    [a] = alike["models"]
    assert a["model_ref"] == gguf_id and a["requests"] == 24
    d = a["drift"]
    assert [s["name"] for s in d["reference"]["datasets"]] == ["kitchen-questions"]
    assert d["reference"]["datasets"][0]["rows"] == 300
    assert d["ngram_psi"] < 0.1 and d["ngram_level"] == "stable"
    assert d["length_level"] == "stable"

    [s] = shifted["models"]
    assert s["requests"] == 24
    assert s["drift"]["ngram_psi"] > 1.0 and s["drift"]["ngram_level"] == "large shift"
    assert s["drift"]["ngram_psi"] > 10 * d["ngram_psi"]
    assert s["drift"]["length_level"] == "large shift"  # longer than any training question

    assert [sv["model"] for sv in live["servers"]] == ["tiny-kitchen-f16"]  # still serving then


def test_the_size_cap_drops_the_oldest_requests(gguf_file, workspace):
    from workbench import monitoring

    cap_mb = 0.02  # about 20 KiB: a few dozen of these requests
    server = Served(str(gguf_file), "--log-prompts", "--monitor-max-mb", str(cap_mb))
    try:
        for i in range(60):
            text = f"request {i:03d} " + "padding words " * 40
            assert server.post("/completions", {"prompt": text, "max_tokens": 1})[0] in (200, 400)
    finally:
        server.terminate()
    rows = log_rows()
    db = sqlite3.connect(monitoring.db_path())
    total = db.execute("SELECT v FROM totals").fetchone()[0]
    db.close()
    assert total == sum(r["size"] for r in rows) <= cap_mb * 2**20
    assert 10 < len(rows) < 60
    kept = [int(r["prompt"].split()[1]) for r in rows]  # prompts are stored with --log-prompts
    # The newest (a request is logged when its reply is sent, so neighbours may swap places).
    assert sorted(kept) == list(range(60 - len(rows), 60))


def test_bad_monitor_options_are_one_line(cli, gguf_file, workspace):
    done = cli("monitor", "--since", "last tuesday")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--since 'last tuesday'" in done.stderr
    done = cli("serve", str(gguf_file), "--monitor-max-mb", "0", "--port", "0")
    assert done.returncode == 2 and "--monitor-max-mb 0" in done.stderr
    assert not (workspace / "monitor.db").exists()

    (workspace / "monitor.db").write_text("not a database")
    done = cli("monitor")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"the request log {workspace / 'monitor.db'} cannot be read" in done.stderr
    done = cli("serve", str(gguf_file), "--port", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"cannot open the request log {workspace / 'monitor.db'}" in done.stderr
    assert (workspace / "monitor.db").read_text() == "not a database"  # nothing overwritten


def test_follow_reports_new_requests_as_they_are_recorded(workspace):
    """`monitor --follow --json` prints a report per refresh; the server's own recorder writes
    in between (no model needed: only the log is read)."""
    from workbench_chat.monitor import Recorder

    recorder = Recorder()
    recorder.start("http://127.0.0.1:9/v1", "tiny", "/models/tiny.gguf")

    def answered(n: int) -> None:
        for _ in range(n):
            rec = recorder.begin("POST", "/v1/completions")
            rec.status, rec.text, rec.tokens_in, rec.tokens_out = 200, "once upon a time", 5, 3
            recorder.finish(rec)

    answered(3)
    follow = subprocess.Popen([sys.executable, "-m", "workbench.cli", "monitor", "--follow", "--json",
                               "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        seen = [json.loads(follow.stdout.readline())["models"][0]["requests"]]
        assert seen[0] == 3
        answered(4)
        deadline = time.monotonic() + 30
        while seen[-1] != 7 and time.monotonic() < deadline:
            seen.append(json.loads(follow.stdout.readline())["models"][0]["requests"])
        assert seen[-1] == 7
        follow.send_signal(signal.SIGINT)
        # Read what it printed meanwhile: a follower blocked on a full pipe cannot exit.
        follow.communicate(timeout=30)
        assert follow.returncode == 0
    finally:
        follow.kill()
        recorder.close()


def test_a_request_still_coming_in_at_sigterm_is_recorded_as_stopped(gguf_file):
    import socket

    server = Served(str(gguf_file))
    body = json.dumps(chat("hello")).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        # Half a body: the server is still reading this request when it is told to stop.
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (server.port, len(body))
                     + body[:10])
        assert server.post("/chat/completions", chat("a whole one"))[0] == 200
        time.sleep(0.2)
        err = server.terminate()
    assert "stopped" in err
    rows = log_rows()
    assert [(r["endpoint"], r["status"], r["error"]) for r in rows] == [
        ("/v1/chat/completions", 200, None), ("/v1/chat/completions", None, "server_stopped")]
    assert rows[1]["latency_s"] > 2.0  # it was given the grace period to finish


def test_time_to_first_token_counts_a_token_that_shows_no_text(gguf_file):
    server = Served(str(gguf_file))
    ask = {"prompt": "The quick brown", "max_tokens": 1, "temperature": 0}
    try:
        status, raw = server.post("/completions", ask)
        first = json.loads(raw)["choices"][0]["text"]
        assert status == 200 and first
        # The same greedy token again, cut by a stop string: the reply is empty.
        status, raw = server.post("/completions", {**ask, "stop": [first]})
        assert status == 200 and json.loads(raw)["choices"][0]["text"] == ""
    finally:
        server.terminate()
    rows = log_rows()
    assert [r["tokens_out"] for r in rows] == [1, 1]
    assert all(0 < r["ttft_s"] <= r["latency_s"] for r in rows)
