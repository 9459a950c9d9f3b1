"""Start-up stays instant: the light commands never import torch, litgpt or llama_cpp."""

from __future__ import annotations

import json
import os
import shutil
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
     ["data", "prepare", "--help"], ["export", "--help"], ["chat", "--help"], ["tui", "--help"], ["monitor"]],
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


HELP_PROBE = """
import contextlib, io, json, sys
from workbench.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main({args!r})
    except SystemExit:
        pass
plugins = sorted(m for m in sys.modules if m.startswith("workbench_") or m == "importlib.metadata")
print(json.dumps({{"help": out.getvalue(), "imported": plugins}}))
"""


def help_probe(*args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", HELP_PROBE.format(args=list(args))], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def index_cache(tmp_path, monkeypatch):
    """A private plugin index, so these tests see a cold one and share it with nobody."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def test_top_level_help_imports_no_plugin_and_shows_every_summary(index_cache):
    cold = help_probe("--help")
    warm = help_probe("--help")
    assert warm["imported"] == [], "workbench --help imported plugin modules (or importlib.metadata)"
    assert warm["help"] == cold["help"]
    text = " ".join(warm["help"].split())  # argparse wraps lines
    for summary in ("Pretrain a Llama-style model", "Import, clean, de-duplicate and split a dataset",
                    "LoRA instruction finetuning", "Classification finetuning",
                    "Measure models (checkpoints and GGUF)", "Chat with a GGUF build",
                    "Serve a model over an OpenAI-compatible HTTP API"):
        assert summary in text


def test_stage_help_imports_only_its_own_plugin(index_cache):
    help_probe("--help")
    out = help_probe("export", "--help")
    assert out["imported"] == ["workbench_export", "workbench_export.stage"]
    assert out["help"].startswith("usage: workbench export")
    lora = help_probe("finetune", "lora", "--help")
    assert "workbench_finetune.stage" in lora["imported"]
    assert "workbench_finetune.lora" not in lora["imported"] and "workbench_finetune.classifier" not in lora["imported"]
    assert lora["help"].startswith("usage: workbench finetune lora")
    group = help_probe("finetune", "--help")
    assert group["imported"] == []
    assert "LoRA instruction finetuning" in group["help"] and "Classification finetuning" in group["help"]


def test_plugin_installed_after_the_index_was_written_is_listed(index_cache, plugin_site, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    assert "counter" not in help_probe("--help", env=env)["help"]
    shutil.copytree(plugin_site, site, dirs_exist_ok=True)  # what `pip install --target` leaves
    text = help_probe("--help", env=env)["help"]
    assert "Count with a seeded random walk" in text
    assert "(unavailable: ImportError: this plugin needs a package" in " ".join(text.split())


def test_edited_plugin_summary_is_shown_at_once(index_cache, plugin_site, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(plugin_site, site)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    assert "Count with a seeded random walk" in help_probe("--help", env=env)["help"]
    source = site / "workbench_counter" / "__init__.py"
    source.write_text(source.read_text().replace("Count with a seeded random walk", "Count upwards"))
    text = help_probe("--help", env=env)["help"]
    assert "Count upwards" in text and "seeded random walk" not in text


FIRST_FRAME_PROBE = """
import json, sys
from workbench.tui.app import WorkbenchApp

class FirstFrame(WorkbenchApp):
    def on_mount(self) -> None:
        self.call_after_refresh(self.first_frame)

    def first_frame(self) -> None:
        self.loaded = sorted(m for m in {watch!r} if m in sys.modules)
        self.exit()

app = FirstFrame()
app.run(headless=True, size=(80, 24))
print(json.dumps(app.loaded))
"""


def test_tui_first_frame_defers_what_it_does_not_show(workspace):
    """The first frame draws the pipeline's frame; the store, the chat client, argparse and
    Rich's emoji table come later, when a view or a worker needs them."""
    watch = ("workbench.store", "sqlite3", "workbench.tui.chat_client", "argparse", "rich._emoji_codes",
             "importlib.metadata", *HEAVY)
    out = subprocess.run([sys.executable, "-c", FIRST_FRAME_PROBE.format(watch=watch)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
