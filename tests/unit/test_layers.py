"""The import contracts of .importlinter hold for every package under plugins/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "lint-imports")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 0 broken." in done.stdout


def test_entry_points_name_stage_and_commands_modules() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    expected = {"workbench.stages": "stage", "workbench.commands": "commands"}
    wrong = [f"{group}: {name} = {ref}"
             for group, module in expected.items()
             for name, ref in project["entry-points"][group].items()
             if ref.split(":")[0].split(".")[-1] != module]
    assert not wrong, f"entry points outside the plugin layout (docs/architecture.md): {wrong}"
