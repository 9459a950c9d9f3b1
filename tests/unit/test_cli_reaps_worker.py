"""A CLI that follows the run it started reaps its worker: no zombie, and the worker's resource
usage counts as the caller's child usage (what `/usr/bin/time` and benchmarks read)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, os, resource
from workbench.cli import main
code = main(["data", "prepare", "--demo", "instruction"])
try:
    left = os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    left = None
print(json.dumps({"code": code, "left": left,
                  "child_cpu": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime}))
"""


def test_following_a_run_reaps_its_worker(workspace):
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["left"] is None, f"an unreaped child is left: {result['left']}"
    assert result["child_cpu"] > 0
