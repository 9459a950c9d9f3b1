"""Every path the workbench uses, in one place.

`WORKBENCH_HOME` overrides the workspace root; otherwise platformdirs' user data dir is used.
"""

from __future__ import annotations

import os
from pathlib import Path

# Where each artifact kind lives inside the workspace.
KIND_DIRS: dict[str, str] = {
    "model": "models",
    "adapter": "models",
    "classifier": "models",
    "dataset": "datasets",
    "tokenizer": "tokenizers",
    "gguf": "exports",
    "eval-report": "reports",
}


def home() -> Path:
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_path("workbench", appauthor=False))


def db_path() -> Path:
    return home() / "workbench.db"


def runs_dir() -> Path:
    return home() / "runs"


def run_dir(run_id: str) -> Path:
    return runs_dir() / run_id


def kind_dir(kind: str) -> Path:
    return home() / KIND_DIRS.get(kind, "artifacts")


def cache_dir() -> Path:
    """Derived data that can be rebuilt (tokenized shards, response cache)."""
    return home() / "cache"


def ensure_home() -> Path:
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    return root
