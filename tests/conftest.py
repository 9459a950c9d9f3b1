"""Shared fixtures: an isolated workspace per test, the CLI as a real subprocess, the third-party
test plugin installed for real, and tiny models made on the spot (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# A shell starts a background job with Ctrl-C ignored, and every child inherits that: the tests
# that press Ctrl-C in a CLI they started would see it ignored. Children of a Python handler
# start with the default disposition, in which Python raises KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. 12345 + 678 = 13023.\n"
    "  Indented line with    spaces\tand a tab.\n"
    "Don't stop; it's fine, isn't it? Numbers: 3.14159, 2024, 1_000_000.\n"
    "Unicode: café, naïve, Zürich, 東京, emoji 🙂.\n"
    "def add(a, b):\n    return a + b\n"
)


@pytest.fixture(autouse=True)
def workspace(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own WORKBENCH_HOME; nothing touches the user's real workspace."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    return home


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third-party fixture plugin, installed with pip into its own site directory."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(FIXTURES / "workbench-counter")],
        check=True, capture_output=True,
    )
    return target


@pytest.fixture
def with_plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the installed test plugin visible to this process and to subprocesses."""
    monkeypatch.syspath_prepend(str(plugin_site))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(plugin_site), old) if p))
    return plugin_site


def run_cli(*args: str, timeout: float = 300, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`workbench ARGS` in a real subprocess with the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
        timeout=timeout, input=input, env={**os.environ, **(env or {})},
    )


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (and return that), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def cli():
    return run_cli


def make_tokenizer(out_dir: Path, vocab_size: int = 320, text: str = SAMPLE_TEXT) -> Path:
    """A byte-level BPE tokenizer (the kind the tokenizer stage trains), saved LitGPT-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([text] * 20, trainer=trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "add_bos_token": False,
    }))
    eos = tok.token_to_id("<|endoftext|>")
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": eos, "eos_token_id": eos}))
    return out_dir


def tiny_llama_config(vocab_size: int, **overrides):
    from litgpt import Config

    cfg = dict(
        name="tiny-llama", block_size=128, n_layer=2, n_embd=64, n_head=4, n_query_groups=2,
        vocab_size=vocab_size, padded_vocab_size=((vocab_size + 63) // 64) * 64,
        rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
        mlp_class_name="LLaMAMLP", intermediate_size=128, norm_eps=1e-5,
    )
    cfg.update(overrides)
    return Config(**cfg)


def make_tiny_model(out_dir: Path, seed: int = 0, **config_overrides) -> Path:
    """A random tiny Llama-style LitGPT model directory with a real tokenizer."""
    import torch
    from litgpt import GPT

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    tok_dir = make_tokenizer(out_dir.parent / f"{out_dir.name}-tokenizer")
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    n_vocab = len(vocab) + 4  # specials are added tokens, not always in the BPE vocab
    config = tiny_llama_config(n_vocab, **config_overrides)
    torch.manual_seed(seed)
    model = GPT(config)
    style = get_style("chatml")
    save_model_dir(out_dir, model.state_dict(), config, tokenizer_dir=tok_dir,
                   meta={"prompt_style": style.to_json(), "family": "llama", "eos_token": "<|endoftext|>"})
    return out_dir


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny-model")


@pytest.fixture
def registered_tiny_model(tiny_model: Path) -> str:
    """The tiny model registered in the test's workspace as a `model` artifact; returns its id."""
    import shutil

    from workbench.context import Context
    from workbench.store import Store

    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(tiny_model, staged)
    art = ctx.register("model", staged, name="tiny-random", metadata={"family": "llama"})
    return art.id
