"""Runs for real: a third-party plugin installed with pip, worker subprocesses, cancel, resume,
kill -9, and bad input that leaves the workspace untouched."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for

pytestmark = pytest.mark.usefixtures("with_plugin")


def events(home: Path, run_id: str) -> list[dict]:
    path = home / "runs" / run_id / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_detached(*args: str) -> str:
    out = run_cli(*args, "--detach", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["run_id"]


def test_third_party_plugin_is_listed_and_a_broken_one_is_skipped():
    out = run_cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    by_name = {p["name"]: p for p in json.loads(out.stdout)}
    assert by_name["counter"]["status"] == "ok"
    assert (by_name["counter"]["package"], by_name["counter"]["version"]) == ("workbench-counter", "1.2.0")
    assert by_name["broken"]["status"] == "error" and "on purpose" in by_name["broken"]["error"]
    assert run_cli("--help").returncode == 0  # one broken plugin never takes the host down


def test_stage_runs_in_a_worker_and_registers_its_artifact(workspace):
    out = run_cli("counter", "--steps", "8", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "done"
    art = result["artifacts"][0]
    assert art["kind"] == "counter" and Path(art["path"]).is_dir()
    run_dir = workspace / "runs" / result["run_id"]
    spec = json.loads((run_dir / "run.json").read_text())
    assert spec["plugin"] == "workbench-counter" and spec["options"]["steps"] == 8
    kinds = [e["type"] for e in events(workspace, result["run_id"])]
    assert kinds[0] == "started" and kinds[-1] == "done" and "progress" in kinds and "metric" in kinds
    shown = json.loads(run_cli("runs", "show", result["run_id"], "--json").stdout)
    assert shown["status"] == "done" and shown["last_metrics"]["total"] == pytest.approx(result["result"]["total"])
    lineage = json.loads(run_cli("models", "show", art["id"], "--json").stdout)["lineage"]
    assert lineage[0]["run"]["stage"] == "counter"


def test_cancelled_run_resumes_to_the_same_result_as_an_uninterrupted_one(workspace):
    straight = json.loads(run_cli("counter", "--steps", "30", "--seed", "7", "--json").stdout)["result"]["total"]

    run_id = start_detached("counter", "--steps", "30", "--seed", "7", "--sleep", "0.1", "--checkpoint-every", "4")
    wait_for(lambda: any(e["type"] == "checkpoint" for e in events(workspace, run_id)), what="a checkpoint")
    assert run_cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: events(workspace, run_id)[-1]["type"] == "cancelled", what="cancelled")
    shown = json.loads(run_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "cancelled"
    stopped_at = max(e["step"] for e in events(workspace, run_id) if e["type"] == "progress")
    assert stopped_at < 30

    resumed = run_cli("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["status"] == "done"
    assert final["result"]["total"] == pytest.approx(straight, abs=1e-12)
    attempt2 = [e for e in events(workspace, run_id) if e["type"] == "started"][-1]
    assert attempt2["attempt"] == 2 and attempt2["resume_from"].endswith(".json")


def test_a_killed_worker_is_marked_failed_with_a_reason(workspace):
    run_id = start_detached("counter", "--steps", "1000", "--sleep", "0.05")
    wait_for(lambda: any(e["type"] == "progress" for e in events(workspace, run_id)), what="progress")
    pid = json.loads(run_cli("runs", "show", run_id, "--json").stdout)["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    shown = json.loads(run_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "failed"
    assert "exited without finishing" in shown["exit_reason"]
    listed = json.loads(run_cli("runs", "ls", "--json").stdout)
    assert [r["status"] for r in listed if r["id"] == run_id] == ["failed"]


def test_attach_follows_a_detached_run_to_its_end(workspace):
    run_id = start_detached("counter", "--steps", "15", "--sleep", "0.05")
    out = run_cli("runs", "attach", run_id, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "done"


def test_a_crashing_stage_ends_failed_with_exit_1_and_its_error(workspace):
    out = run_cli("counter", "--steps", "5", "--fail-at", "2")
    assert out.returncode == 1
    assert "asked to fail at step 2" in out.stderr
    run = json.loads(run_cli("runs", "ls", "--json").stdout)[0]
    assert run["status"] == "failed" and "asked to fail" in run["exit_reason"]
    logs = run_cli("runs", "logs", run["id"], "--stderr").stdout
    assert "Traceback" in logs


def test_config_file_options_with_flags_winning(workspace, tmp_path):
    cfg = tmp_path / "counter.toml"
    cfg.write_text("steps = 3\nseed = 5\nlabel = 'from-config'\n")
    out = run_cli("counter", "--config", str(cfg), "--steps", "4", "--json")
    assert out.returncode == 0, out.stderr
    spec = json.loads(run_cli("runs", "show", json.loads(out.stdout)["run_id"], "--json").stdout)["options"]
    assert (spec["steps"], spec["seed"], spec["label"]) == (4, 5, "from-config")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchstage"], "invalid choice"),
        (["counter", "--steps", "many"], "option --steps expects integer, got 'many'"),
        (["counter", "--stepz", "3"], "unrecognized arguments: --stepz"),
        (["counter", "--label", " "], "--label must not be empty"),
        (["counter", "--config", "/nonexistent/c.yaml"], "cannot read config file"),
        (["counter", "--config", "CFG"], "unknown option 'bogus' for stage 'counter'; valid options:"),
        (["models", "show", "nothing-here"], "no artifact 'nothing-here'"),
        (["runs", "show", "run-nope"], "no run 'run-nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workspace, tmp_path, args, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bogus: 1\n")
    args = [str(cfg) if a == "CFG" else a for a in args]
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr
    assert list(workspace.iterdir()) == []  # no database, no run directory, nothing


def test_debug_shows_the_traceback(workspace):
    out = run_cli("--debug", "counter", "--steps", "many")
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_schema_flag_prints_the_options_schema():
    out = run_cli("counter", "--schema")
    schema = json.loads(out.stdout)
    assert schema["properties"]["steps"]["minimum"] == 1 and schema["additionalProperties"] is False
