"""Temporary paths made outside a run are tagged with their process: kept while it lives,
removed once it is gone, including token-cache builds named before owners were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workbench import scratch
from workbench.context import Context
from workbench.store import Store


def test_paths_of_a_process_are_removed_only_once_it_has_exited(workspace: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tokens = workspace / "cache" / "tokens"
    tokens.mkdir(parents=True)
    made = [workspace / "models" / f".staging-pid{proc.pid}-model-1",
            tokens / f".tmp-{'c' * 32}-pid{proc.pid}-7",
            tokens / f".tmp-{'d' * 32}-{proc.pid}-7"]  # the name token-cache builds used to have
    for path in made:
        path.mkdir(parents=True)
        (path / "part").write_bytes(b"x" * 100)
    mine = Context(Store()).staging_dir("model")
    assert mine.name.startswith(f".staging-{scratch.owner()}-")
    try:
        assert scratch.clean(Store()) == ([], 0)
        assert all(p.exists() for p in made)
    finally:
        proc.kill()
        proc.wait()
    found, freed = scratch.clean(Store())
    assert sorted(f.path for f in found) == sorted(made) and freed == 300
    assert not any(p.exists() for p in made) and mine.exists(), "this live process's staging stays"
