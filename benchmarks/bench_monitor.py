"""What recording requests costs `workbench serve`: the chat benchmark's requests answered with
the request log on and off, side by side.

The chat benchmark's model (random Llama-style weights, width 512, 4 layers, vocabulary 8192,
built by `bench_chat.build_model`) is exported to a Q4_K_M GGUF and served twice by real
`workbench serve` processes on 127.0.0.1: one records (the default), one runs with
`--no-monitor`. A client sends the same requests to both in turn (chat completions, greedy, half
of them streamed), one at a time, so both servers meet the same machine load; each request is
timed from sending to the last byte, and each server's own CPU time is read from /proc (the
figure a busy shared machine disturbs least). Both servers get the same fixed thread count.

Two finer figures separate the recorder's own cost from the noise of a shared machine: the time a
request handler spends handing a record over (`begin` + `finish`, the only work it adds to a
request), and how many records per second the writer thread profiles and stores.

    python benchmarks/bench_monitor.py [--requests 150 --tokens 32 --threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULTS = {"requests": 150, "tokens": 32, "threads": 1}


def serve(model: Path, home: Path, threads: int, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", str(model), "--port", "0",
                             "--threads", str(threads), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WORKBENCH_HOME": str(home)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r":(\d+)/v1$", line.strip())
    if not found:
        raise RuntimeError(f"the server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, int(found.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(port: int, body: dict[str, Any]) -> float:
    """One request on a fresh connection; seconds to the last byte."""
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    finally:
        conn.close()
    return time.perf_counter() - t0


def handoff_us(n: int = 20_000) -> float:
    """Microseconds a handler spends on a record: begin, fill, finish (the queue put)."""
    from workbench_chat.monitor import Recorder

    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(path=Path(tmp) / "monitor.db")
        rec.start("http://127.0.0.1:0/v1", "bench", "bench")
        t0 = time.perf_counter()
        for _ in range(n):
            r = rec.begin("POST", "/v1/chat/completions")
            r.status, r.text, r.tokens_in, r.tokens_out = 200, "a question", 20, 32
            rec.finish(r)
        spent = time.perf_counter() - t0
        rec.close()
    return spent / n * 1e6


def writer_rate(n: int = 5_000) -> float:
    """Records per second the writer profiles and stores (the chat benchmark's question as input)."""
    from bench_chat import QUESTION
    from workbench_chat.monitor import Recorder

    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(path=Path(tmp) / "monitor.db")
        for _ in range(n):  # queued before the writer starts: it drains them as fast as it can
            r = rec.begin("POST", "/v1/chat/completions")
            r.status, r.text = 200, QUESTION
            rec.finish(r)
        t0 = time.perf_counter()
        rec.start("http://127.0.0.1:0/v1", "bench", "bench")
        rec.close()
        return n / (time.perf_counter() - t0)


def measure(requests: int, tokens: int, threads: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from bench_chat import QUESTION, build_model
    from workbench_export.gguf_writer import write_gguf
    from workbench_export.quantize import quantize

    out: dict[str, Any] = {"threads": threads, "requests": requests}
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        root = Path(tmp)
        model_dir = build_model(root, 512, 4, 8192)
        f16 = root / "model-f16.gguf"
        write_gguf(model_dir, f16, "f16")
        q4 = root / "model-q4_k_m.gguf"
        quantize(f16, q4, "q4_k_m")
        (root / "on").mkdir()
        (root / "off").mkdir()
        servers = {"on": serve(q4, root / "on", threads), "off": serve(q4, root / "off", threads, "--no-monitor")}
        times: dict[str, list[float]] = {"on": [], "off": []}
        try:
            for _, port in servers.values():  # warm-up, not counted
                ask(port, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4})
            cpu0 = {name: cpu_seconds(proc.pid) for name, (proc, _) in servers.items()}
            for i in range(requests):
                body = {"messages": [{"role": "user", "content": f"{QUESTION} ({i})"}], "temperature": 0,
                        "max_tokens": tokens, "stream": i % 2 == 1}
                order = ("on", "off") if i % 2 == 0 else ("off", "on")  # neither always goes first
                for name in order:
                    times[name].append(ask(servers[name][1], body))
            out["cpu"] = {name: cpu_seconds(proc.pid) - cpu0[name] for name, (proc, _) in servers.items()}
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        import sqlite3

        db = sqlite3.connect(root / "on" / "monitor.db")
        out["recorded"] = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        db.close()
        out["unrecorded_log"] = (root / "off" / "monitor.db").exists()
    for name, values in times.items():
        out[name] = (statistics.median(values), statistics.mean(values))
    out["paired"] = statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True))
    out["handoff_us"] = handoff_us()
    out["writer_rate"] = writer_rate()
    return out


def table(m: dict[str, Any]) -> list[dict[str, Any]]:
    (on_med, on_mean), (off_med, off_mean) = m["on"], m["off"]
    n = m["requests"]
    return [
        {"figure": f"request ms, median: recorded vs --no-monitor ({m['requests']} each, "
                   f"{m['threads']} thread)", "ours": on_med * 1e3, "peer": off_med * 1e3,
         "ratio": on_med / off_med, "target": "< 1.02×"},
        {"figure": "request ms, mean: recorded vs --no-monitor", "ours": on_mean * 1e3, "peer": off_mean * 1e3,
         "ratio": on_mean / off_mean, "target": "< 1.02×"},
        {"figure": "request time, median of each request's recorded/unrecorded ratio", "ours": None,
         "peer": None, "ratio": m["paired"], "target": "< 1.02×"},
        {"figure": "server CPU ms per request: recorded vs --no-monitor", "ours": m["cpu"]["on"] / n * 1e3,
         "peer": m["cpu"]["off"] / n * 1e3, "ratio": m["cpu"]["on"] / m["cpu"]["off"], "target": "< 1.02×"},
        {"figure": f"requests in the log after SIGTERM (of {m['requests'] + 1} sent)", "ours": m["recorded"],
         "peer": m["requests"] + 1, "ratio": m["recorded"] / (m["requests"] + 1), "target": "1×"},
        {"figure": "µs a handler spends handing over its record, vs the median request",
         "ours": m["handoff_us"], "peer": on_med * 1e6, "ratio": m["handoff_us"] / (on_med * 1e6),
         "target": "< 0.02×"},
        {"figure": "records/s the writer thread profiles and stores", "ours": m["writer_rate"], "peer": None,
         "ratio": None, "target": None},
    ]


def rows(**overrides: int) -> list[dict[str, Any]]:
    return table(measure(**{**DEFAULTS, **overrides}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", type=int, default=value)
    args = vars(p.parse_args())
    m = measure(**args)
    print(f"\nrequest log cost ({args['tokens']} new tokens per request, Q4_K_M, chat benchmark model)")
    print(f"{'figure':72} {'ours':>10} {'peer':>10} {'ratio':>8}  target")
    for r in table(m):
        ours, peer, ratio = (("-" if r[k] is None else f"{r[k]:.{d}f}") for k, d in
                             (("ours", 1), ("peer", 1), ("ratio", 4)))
        print(f"{r['figure']:72} {ours:>10} {peer:>10} {ratio:>8}  {r['target'] or ''}")


if __name__ == "__main__":
    main()
