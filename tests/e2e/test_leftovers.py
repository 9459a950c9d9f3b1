"""What a killed run leaves behind is removed by the next run and by `workbench doctor --clean`,
and a live run's temporary files are never touched. Real workers, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_TEXT, run_cli, wait_for
from tests.stages.test_pretrain import register_dataset, register_tokenizer
from workbench import runs
from workbench.store import Store


def start_detached(*args: str) -> str:
    out = run_cli(*args, "--detach", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["run_id"]


def kill_when(run_id: str, pattern: Path, what: str) -> list[Path]:
    """Stop the run's worker as soon as `pattern` (a glob) holds bytes, check them, kill -9."""
    pid = wait_for(lambda: Store().get_run(run_id).pid, what="the worker's pid")
    wait_for(lambda: [p for p in pattern.parent.glob(pattern.name) if size(p)], timeout=180, what=what)
    os.kill(pid, signal.SIGSTOP)  # frozen, so it cannot finish and tidy up before the kill
    found = sorted(pattern.parent.glob(pattern.name))
    assert found, f"the run finished before {what} could be caught"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not runs.is_alive(Store().get_run(run_id)), what="the worker to die")
    assert all(p.exists() for p in found), "the kill left the temporary files in place"
    return found


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


@pytest.mark.usefixtures("with_plugin")
def test_an_export_killed_mid_write_leaves_nothing_after_the_next_run(registered_tiny_model: str,
                                                                       workspace: Path) -> None:
    run_id = start_detached("export", registered_tiny_model, "--quant", "f32,q8_0")
    (staging,) = kill_when(run_id, workspace / "exports" / f".staging-{run_id}-*", "the export's staging directory")

    nxt = run_cli("counter", "--steps", "2", "--json")
    assert nxt.returncode == 0, nxt.stderr
    assert not list((workspace / "exports").glob(".staging-*"))
    shown = json.loads(run_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "failed" and "killed or crashed" in shown["exit_reason"]
    logs = run_cli("runs", "logs", json.loads(nxt.stdout)["run_id"]).stdout
    # The staging directory, and the disk reserve the killed worker held in its run directory.
    assert f"removed 2 leftover(s) of stopped runs (exports/{staging.name}, runs/{run_id}/disk-reserve.tmp)" in logs


def test_pretraining_killed_while_tokenizing_is_cleaned_by_doctor(workspace: Path) -> None:
    words = SAMPLE_TEXT.split()
    docs = [" ".join(words[(i + j) % len(words)] for j in range(60)) + f" {i}" for i in range(40_000)]
    dataset = register_dataset(docs, docs[:10])
    tokenizer = register_tokenizer(" ".join(docs[:200]), vocab_size=300)
    run_id = start_detached("pretrain", dataset, "--tokenizer", tokenizer, "--max-steps", "1",
                            "--max-seq-length", "16", "--batch-size", "1")
    (tmp,) = kill_when(run_id, workspace / "cache" / "tokens" / f".tmp-*-{run_id}-*", "the token cache being built")
    reserve = workspace / "runs" / run_id / "disk-reserve.tmp"  # the worker's room for its last words
    leftover = size(tmp) + size(reserve)

    out = run_cli("doctor", "--clean", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["clean"]
    assert report == {"removed": [str(tmp), str(reserve)], "freed_bytes": leftover}
    assert not tmp.exists() and not reserve.exists() and not list((workspace / "cache" / "tokens").glob(".tmp-*"))
    again = json.loads(run_cli("doctor", "--clean", "--json").stdout)["clean"]
    assert again == {"removed": [], "freed_bytes": 0}


@pytest.mark.usefixtures("with_plugin")
def test_a_live_runs_temporary_files_survive_other_runs_and_doctor(workspace: Path) -> None:
    live = start_detached("counter", "--steps", "100000", "--sleep", "0.05")
    dead = start_detached("counter", "--steps", "100000", "--sleep", "0.05")
    for run_id in (live, dead):
        wait_for(lambda r=run_id: Store().get_run(r).status == "running", what=f"run {run_id} to start")
    os.kill(Store().get_run(dead).pid, signal.SIGKILL)
    wait_for(lambda: not runs.is_alive(Store().get_run(dead)), what="the killed worker to die")

    def temporary_files(run_id: str) -> list[Path]:
        """Made the way a stage makes them: named for the run that owns them."""
        paths = [workspace / "artifacts" / f".staging-{run_id}-counter-1",
                 workspace / "runs" / run_id / "checkpoints" / "step-000009.json.tmp",
                 workspace / "cache" / "tokens" / f".tmp-{'ab' * 16}-{run_id}-1"]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".tmp":
                path.write_bytes(b"x" * 1000)
            else:
                path.mkdir()
                (path / "part").write_bytes(b"x" * 1000)
        return paths

    live_files, dead_files = temporary_files(live), temporary_files(dead)
    assert run_cli("counter", "--steps", "1").returncode == 0
    assert all(p.exists() for p in live_files), "a live run's files were removed"
    assert not any(p.exists() for p in dead_files)
    assert json.loads(run_cli("doctor", "--clean", "--json").stdout)["clean"]["removed"] == []
    assert all(p.exists() for p in live_files)

    assert run_cli("runs", "cancel", live).returncode == 0
    wait_for(lambda: Store().get_run(live).status == "cancelled", what="the live run to stop")
    assert not any(p.exists() for p in live_files), "a run that ends removes its own temporary files"


@pytest.mark.usefixtures("with_plugin")
def test_a_resumed_run_first_removes_what_its_killed_attempt_left(workspace: Path) -> None:
    run_id = start_detached("counter", "--steps", "400", "--sleep", "0.05", "--checkpoint-every", "10")
    wait_for(lambda: Store().get_run(run_id).checkpoint, what="a first checkpoint")
    staging = workspace / "artifacts" / f".staging-{run_id}-counter-1"
    staging.mkdir(parents=True)  # as the killed attempt's stage would have left it
    (staging / "part").write_bytes(b"x" * 1000)
    os.kill(Store().get_run(run_id).pid, signal.SIGKILL)
    wait_for(lambda: not runs.is_alive(Store().get_run(run_id)), what="the worker to die")

    resumed = run_cli("runs", "resume", run_id, "--detach")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: Store().get_run(run_id).attempts == 2 and Store().get_run(run_id).status == "running",
             what="the second attempt to start")
    wait_for(lambda: not staging.exists(), timeout=10, what="the old attempt's staging directory to go")
    assert Store().get_run(run_id).status == "running", "removed at the start, not at the end"
    assert f"artifacts/{staging.name}" in run_cli("runs", "logs", run_id).stdout
    assert run_cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: Store().get_run(run_id).status == "cancelled", what="the run to stop")
