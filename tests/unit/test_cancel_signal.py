"""A cancel signal that lands while the run's event file is being written still cancels the run.

The signal is delivered while the events writer is blocked in a write (the file is a pipe that
nobody reads yet), so the handler runs inside that very flush, as it can in a real run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from workbench.context import Context, install_cancel_handler
from workbench.events import EventWriter
from workbench.store import Store


def test_a_cancel_during_an_event_write_is_recorded_after_it(tmp_path: Path, workspace: Path) -> None:
    path = tmp_path / "events.jsonl"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = EventWriter(path)
    ctx = Context(Store(), run_id="run-test", run_dir=tmp_path, events=writer)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    received = bytearray()

    def cancel_then_drain() -> None:
        time.sleep(0.3)  # the main thread is blocked writing into the full pipe by now
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                chunk = b""
            if chunk:
                received.extend(chunk)
            elif received.endswith(b'"step": 2}\n'):
                return
            else:
                time.sleep(0.01)

    drain = threading.Thread(target=cancel_then_drain)
    try:
        install_cancel_handler(ctx, cooperative=True)
        drain.start()
        ctx.log("x" * 300_000)  # larger than a pipe holds: the write blocks until drained
        assert ctx.cancel_requested
        ctx.emit("progress", step=2)
        drain.join(timeout=15)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        writer.close()
        os.close(reader)
    events = [json.loads(line) for line in received.decode().splitlines()]
    assert [e["type"] for e in events] == ["log", "log", "progress"]
    assert events[1]["message"] == "cancel requested; stopping at the next safe point"
