"""Every path the workbench uses, in one place.

`WORKBENCH_HOME` overrides the workspace root; otherwise platformdirs' user data dir is used.
"""

from __future__ import annotations

import importlib.util
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


def assets_dir() -> Path:
    """The data that ships with workbench (demo datasets, the multiple-choice suite, bias pairs).

    In a source checkout it is the repository's `assets/`, so code run from a checkout reads that
    checkout's files even when another copy is installed; an installed workbench has it as the
    package `workbench_assets` (setup.py maps assets/ to it).
    """
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "assets").is_dir():
        return checkout / "assets"
    spec = importlib.util.find_spec("workbench_assets")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout / "assets"  # missing: readers name this path in their own error


def asset(*parts: str) -> Path:
    """A file shipped with workbench, e.g. `asset("mc", "workbench-mc.jsonl")`."""
    return assets_dir().joinpath(*parts)
