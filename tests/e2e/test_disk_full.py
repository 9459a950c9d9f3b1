"""A disk that fills up during a run: the run ends `failed` saying "disk full" and what was being
written, its partial files are gone, the CLI exits 2 with one line, and the store and the run's
events record it all. The workspace is a real, small tmpfs (tests run as root)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for
from tests.stages.test_pretrain import demo_corpus, register_dataset, register_tokenizer  # noqa: F401
from workbench.events import read_events
from workbench.store import Store

#: Wide enough that one training checkpoint (weights and AdamW state, ~6 MB) cannot fit.
MODEL = """\
n_layer: 2
n_embd: 128
n_head: 4
n_query_groups: 2
intermediate_size: 384
block_size: 64
rotary_percentage: 1.0
parallel_residual: false
bias: false
norm_class_name: RMSNorm
mlp_class_name: LLaMAMLP
"""


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 4 MiB tmpfs as the workspace."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    monkeypatch.setenv("WORKBENCH_HOME", str(mount))
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def leftovers(home: Path) -> list[Path]:
    patterns = ("*/.staging-*", "cache/tokens/.tmp-*", "runs/*/checkpoints/*.tmp", "runs/*/*.tmp")
    return [p for pattern in patterns for p in home.glob(pattern)]


def the_error(stderr: str) -> str:
    """The one error line, last after the progress lines, and no traceback."""
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert "Traceback" not in stderr
    return errors[0]


def fill(path: Path) -> None:
    """Write zeros into `path` until the disk is full (the test's own file, not the run's)."""
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def test_a_checkpoint_that_fills_the_disk_fails_the_run_cleanly(small_disk: Path, demo_corpus: list[str],  # noqa: F811
                                                                tmp_path: Path) -> None:
    dataset = register_dataset(demo_corpus[:60], demo_corpus[60:70])
    tokenizer = register_tokenizer(" ".join(demo_corpus[:100]), vocab_size=300)
    config = tmp_path / "model.yaml"
    config.write_text(MODEL)
    out = run_cli("pretrain", dataset, "--tokenizer", tokenizer, "--model", str(config), "--max-seq-length", "64",
                  "--batch-size", "2", "--micro-batch-size", "2", "--max-steps", "3", "--checkpoint-every", "1",
                  "--eval-every", "100", env={"OMP_NUM_THREADS": "1"})

    assert out.returncode == 2, out.stderr
    line = the_error(out.stderr)
    run = Store().list_runs()[0]
    assert line.startswith(f"error: run {run.id} failed: disk full while writing "
                           f"runs/{run.id}/checkpoints/step-000001.pt.tmp (")
    assert run.status == "failed" and run.exit_reason == line.split(" failed: ", 1)[1]
    last = read_events(run.run_dir / "events.jsonl")[-1]
    assert last["type"] == "failed" and last["error"] == run.exit_reason and last["user_error"]
    assert leftovers(small_disk) == [], "the partial checkpoint and the model staging dir are removed"
    assert not list((run.run_dir / "checkpoints").iterdir())


@pytest.mark.usefixtures("with_plugin")
def test_a_disk_filled_by_someone_else_still_records_why_the_run_failed(small_disk: Path) -> None:
    started = run_cli("counter", "--steps", "100000", "--sleep", "0.02", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    wait_for(lambda: Store().get_run(run_id).status == "running", what="the run to start")
    fill(small_disk / "ballast.bin")  # now the run's next event cannot be written

    attach = run_cli("runs", "attach", run_id)
    assert attach.returncode == 2, attach.stderr
    line = the_error(attach.stderr)
    # Whichever write hit the full disk first (the stage's own checkpoint or an event), it is named.
    assert line.startswith(f"error: run {run_id} failed: disk full ")
    run = Store().get_run(run_id)
    assert run.status == "failed" and run.exit_reason == line.split(" failed: ", 1)[1]
    events = read_events(run.run_dir / "events.jsonl")
    assert events[-1]["type"] == "failed" and events[-1]["error"] == run.exit_reason
    assert leftovers(small_disk) == []
    assert (small_disk / "ballast.bin").stat().st_size > 0, "what is not the run's is not touched"


def test_commands_on_a_full_disk_say_so_in_one_line(small_disk: Path) -> None:
    assert run_cli("runs", "ls").returncode == 0
    Store().close()  # the workspace database exists; SQLite still needs room to open it
    fill(small_disk / "ballast.bin")
    for args in (("data", "prepare", "--demo", "pretrain"), ("runs", "ls")):
        out = run_cli(*args)
        assert out.returncode == 2, out.stderr
        assert out.stderr.splitlines() == [
            f"error: disk full while writing the workspace database {small_disk / 'workbench.db'}"]
    assert not (small_disk / "runs").exists() or not list((small_disk / "runs").iterdir())
