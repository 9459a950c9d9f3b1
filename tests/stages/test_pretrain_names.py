"""`--model` names are checked in the caller's process, before a run exists, and without
importing litgpt there: our presets, LitGPT's config names (listed once by a child process and
cached by litgpt version) and YAML files pass; anything else is one line naming the valid ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tokenizer
from workbench.context import Context
from workbench.store import Store

PROBE = """
import json, sys
from workbench.cli import main
try:
    code = main({args!r})
except SystemExit as exc:
    code = exc.code
sys.stderr.write("RESULT=" + json.dumps({{"code": code, "heavy": [m for m in ("torch", "litgpt") if m in sys.modules]}}) + "\\n")
"""


def register_inputs() -> tuple[str, str]:
    """A pretrain dataset and a tokenizer in the workspace."""
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    (staged / "card.json").write_text(json.dumps({"type": "pretrain", "counts": {"train": 1, "val": 1}}))
    for split in ("train", "val"):
        (staged / f"{split}.jsonl").write_text(json.dumps({"text": "some words to train on"}) + "\n")
    dataset = ctx.register("dataset", staged, name="corpus").id
    staged = ctx.staging_dir("tokenizer")
    make_tokenizer(staged)
    return dataset, ctx.register("tokenizer", staged, name="bpe").id


@pytest.fixture
def inputs() -> tuple[str, str]:
    return register_inputs()


def pretrain(args: list[str], cache: Path) -> tuple[int, list[str], str]:
    """`workbench pretrain ARGS` in a fresh process: exit code, heavy modules it imported, stderr."""
    import os

    out = subprocess.run([sys.executable, "-c", PROBE.format(args=["pretrain", *args])], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    lines = out.stderr.splitlines()
    result = json.loads(next(ln for ln in lines if ln.startswith("RESULT="))[7:])
    return result["code"], result["heavy"], "\n".join(ln for ln in lines if not ln.startswith("RESULT="))


def test_an_unknown_model_is_refused_before_a_run_exists_naming_the_valid_ones(
        inputs: tuple[str, str], workspace: Path, tmp_path: Path) -> None:
    dataset, tokenizer = inputs
    cache = tmp_path / "cache"
    code, heavy, stderr = pretrain([dataset, "--tokenizer", tokenizer, "--model", "huge", "--detach"], cache)
    assert code == 2 and heavy == [], stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "unknown model 'huge'" in stderr and "tiny, small, 125M, 350M" in stderr
    assert "pythia-14m" in stderr and "Llama-3.2-1B" in stderr and ".yaml" in stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
    # LitGPT's names were listed once, by a child process, and kept for this litgpt version.
    from importlib import metadata

    assert (cache / "workbench" / f"litgpt-{metadata.version('litgpt')}-configs.json").is_file()

    code, heavy, stderr = pretrain([dataset, "--tokenizer", tokenizer, "--model", "pythia-14n", "--detach"], cache)
    assert code == 2 and heavy == [] and "did you mean pythia-14m" in stderr, stderr


def test_presets_litgpt_names_and_yaml_files_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench_pretrain.names import check_model_name, litgpt_config_names

    from workbench.errors import UserError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in ("tiny", "350M", "pythia-14m", "Qwen3-0.6B", "Qwen/Qwen3-0.6B", "micro.yaml"):
        check_model_name(name)
    with pytest.raises(UserError, match="unknown model 'gpt-17'"):
        check_model_name("gpt-17")

    # The cached list is LitGPT's own table.
    from litgpt.config import name_to_config

    listed = litgpt_config_names()
    assert listed is not None and listed[0] == list(name_to_config)
