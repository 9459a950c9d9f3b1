"""Start-up stays instant: the light commands never import torch, litgpt or llama_cpp."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "litgpt", "llama_cpp", "lightning", "transformers")

PROBE = """
import json, sys
from workbench.cli import main
try:
    main({args!r})
except SystemExit:
    pass
sys.stderr.write("HEAVY=" + json.dumps([m for m in {heavy!r} if m in sys.modules]) + "\\n")
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["plugins"], ["runs", "ls"], ["models", "ls"], ["pretrain", "--help"],
     ["data", "prepare", "--help"], ["export", "--help"], ["chat", "--help"], ["tui", "--help"]],
)
def test_light_commands_import_no_heavy_module(args, workspace):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                         capture_output=True, text=True, timeout=60)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert line, out.stderr
    assert json.loads(line[0][6:]) == [], f"workbench {' '.join(args)} imported heavy modules"


def test_tui_module_imports_light(workspace):
    code = ("import sys, workbench.cli, workbench.tui.app; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
