"""Recording what `workbench serve` answers, off the request path.

A request handler fills a `Record` and hands it to `Recorder.finish`, which only puts it on a
queue. One writer thread owns the database connection: it profiles the input text (length and
hashed n-grams, see `workbench.monitoring`), inserts whatever has queued up in one transaction,
and drops the oldest rows past the size cap. A request never waits for SQLite.

Stopping (Ctrl-C or SIGTERM) calls `close()`: it waits a moment for requests still being
answered, records those that did not finish as `server_stopped`, then lets the writer drain the
queue before the process ends.
"""

from __future__ import annotations

import os
import queue
import secrets
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import monitoring
from workbench.errors import UserError

#: How long stopping waits for requests still being answered.
GRACE_SECONDS = 2.0
#: Rows inserted per transaction at most.
BATCH = 512


@dataclass
class Record:
    """One request, as the handler learns about it."""

    method: str
    endpoint: str
    t: float = field(default_factory=time.time)
    start: float = field(default_factory=time.perf_counter)
    status: int | None = None
    error: str | None = None
    stream: bool = False
    latency_s: float | None = None
    ttft_s: float | None = None
    began_s: float | None = None  # when generation began, after any wait for the engine
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish: str | None = None
    cached: bool = False
    text: str | None = None  # the input; profiled by the writer, stored only with --log-prompts

    def first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.start

    def answered(self) -> None:
        """The reply's last byte is written: the latency ends here, whenever the handler hands
        the record over."""
        if self.latency_s is None:
            self.latency_s = time.perf_counter() - self.start


class Recorder:
    def __init__(self, *, model: str = "", model_ref: str = "", log_prompts: bool = False,
                 max_mb: float = monitoring.DEFAULT_MAX_MB, path: Path | None = None):
        self.path = path or monitoring.db_path()
        self.model, self.model_ref = model, model_ref
        self.log_prompts = log_prompts
        self.max_bytes = max(1, int(max_mb * 2**20))
        self.server_id = f"serve-{os.getpid()}-{secrets.token_hex(3)}"
        self.queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.pending: dict[int, Record] = {}  # being answered, by id()
        self.closed = False
        self.failed: str | None = None
        # Opened here, so a workspace that cannot hold the log fails before the model loads.
        try:
            self.db = monitoring.connect(self.path)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open the request log {self.path}: {exc}; "
                            "--no-monitor serves without recording") from None
        self.thread = threading.Thread(target=self._write_loop, name="monitor-writer", daemon=True)

    def start(self, url: str, model: str, model_ref: str) -> None:
        self.model, self.model_ref = model, model_ref
        try:
            self.db.execute("INSERT INTO servers VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                            (self.server_id, model, model_ref, url, os.getpid(), time.time(),
                             int(self.log_prompts), self.max_bytes))
        except sqlite3.Error as exc:
            raise UserError(f"cannot write the request log {self.path}: {exc}; "
                            "--no-monitor serves without recording") from None
        self.thread.start()

    # the request side: no I/O -------------------------------------------------------------------

    def begin(self, method: str, endpoint: str) -> Record:
        rec = Record(method, endpoint)
        with self.lock:
            self.pending[id(rec)] = rec
        return rec

    def finish(self, rec: Record) -> None:
        if rec.latency_s is None:
            rec.latency_s = time.perf_counter() - rec.start
        with self.lock:
            if self.pending.pop(id(rec), None) is None:
                return  # already recorded as stopped by close()
            self.queue.put(rec)

    # stopping -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Record everything, then stop the writer. Safe to call twice."""
        deadline = time.monotonic() + GRACE_SECONDS
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            if self.closed:
                return
            self.closed = True
            left = list(self.pending.values())
            self.pending.clear()
        for rec in left:
            if rec.latency_s is None:  # still being answered; one that was answered is kept as it is
                rec.error = rec.error or "server_stopped"
                rec.latency_s = time.perf_counter() - rec.start
            self.queue.put(rec)
        self.queue.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        else:  # never started (the model failed to load): write what was queued from here
            self._write_loop()
        try:
            self.db.execute("UPDATE servers SET stopped_at = ? WHERE id = ?", (time.time(), self.server_id))
        except sqlite3.Error:
            pass
        self.db.close()
        if self.failed:
            sys.stderr.write(f"warning: the request log could not be written: {self.failed}\n")

    # the writer thread --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        done = False
        while not done:
            batch: list[Record] = []
            item = self.queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= BATCH:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            done = item is None
            if batch:
                self._write(batch)

    def _write(self, batch: list[Record]) -> None:
        rows = [self._row(r) for r in batch]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                f"INSERT INTO requests ({', '.join(monitoring.COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(monitoring.COLUMNS))})",
                [tuple(row[c] for c in monitoring.COLUMNS) for row in rows])
            self._trim()
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:  # a full disk must not take the server down; say so at the end
            self.failed = f"{exc} ({len(batch)} requests not recorded)"
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _trim(self) -> None:
        """Drop the oldest rows until the payload is under the cap."""
        total = self.db.execute("SELECT v FROM totals WHERE k = 'bytes'").fetchone()[0]
        excess = total - self.max_bytes
        if excess <= 0:
            return
        while excess > 0:
            rows = self.db.execute("SELECT id, size FROM requests ORDER BY id LIMIT 4096").fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for row_id, size in rows:
                excess -= size
                if excess <= 0:
                    last = row_id
                    break
            self.db.execute("DELETE FROM requests WHERE id <= ?", (last,))

    def _row(self, r: Record) -> dict[str, Any]:
        words, ngrams, prompt = None, None, None
        if r.text is not None:
            words, ngrams = monitoring.profile_text(r.text)
            if self.log_prompts:
                prompt = r.text[:monitoring.MAX_PROMPT_CHARS]
        row = {"server": self.server_id, "t": r.t, "model": self.model, "model_ref": self.model_ref,
               "method": r.method, "endpoint": r.endpoint, "status": r.status, "error": r.error,
               "stream": int(r.stream), "latency_s": r.latency_s, "ttft_s": r.ttft_s,
               "tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "finish": r.finish,
               "cached": int(r.cached), "words": words, "ngrams": ngrams, "prompt": prompt}
        row["size"] = monitoring.row_size(row)
        return row
