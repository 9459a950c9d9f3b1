"""A response cache for deterministic requests: same model file, same prompt, temperature 0.

Greedy decoding of the same prompt by the same weights gives the same reply, so it can be
served from disk. The cache is SQLite under the workspace's cache directory (derived data that
can be deleted at any time).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from workbench import locations


def cache_key(model_identity: str, prompt: str, sampling: dict[str, Any], stop: list[str]) -> str:
    # The seed does not change a greedy reply, so it is not part of the key.
    relevant = {k: v for k, v in sampling.items() if k not in ("seed", "stop", "temperature")}
    blob = json.dumps({"model": model_identity, "prompt": prompt, "sampling": relevant, "stop": stop},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: Path | None = None):
        self.path = path or locations.cache_dir() / "chat-responses.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS responses"
            " (key TEXT PRIMARY KEY, text TEXT NOT NULL, stats TEXT NOT NULL, created_at REAL NOT NULL)"
        )

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        row = self.db.execute("SELECT text, stats FROM responses WHERE key = ?", (key,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def put(self, key: str, text: str, stats: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                        (key, text, json.dumps(stats), time.time()))

    def close(self) -> None:
        self.db.close()
