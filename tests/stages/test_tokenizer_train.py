"""`tokenizer.train`: a byte-level BPE that LitGPT loads, padded to 64, with compression measured;
or a model's tokenizer adopted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from workbench_data.tokencache import token_array

from tests.conftest import SAMPLE_TEXT, run_cli
from workbench.prompts import CHATML
from workbench.store import Store
from workbench.testing import run_inline


def demo_dataset(chars: int = 60_000) -> str:
    run = run_inline("data.prepare", {"demo": "pretrain", "demo_chars": chars})
    return run.result["dataset"]


def train(dataset: str, **options: Any) -> tuple[Any, Path]:
    run = run_inline("tokenizer.train", {"dataset": dataset, **options})
    [art] = run.artifacts("tokenizer")
    return run, Path(art.path)


def test_trained_tokenizer_loads_in_litgpt_and_round_trips() -> None:
    from litgpt import Tokenizer as LitTokenizer

    run, path = train(demo_dataset(), vocab_size=500)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    assert vocab == 512 and run.result["vocab_size"] == 512  # padded to a multiple of 64
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")] == [0, 1, 2, 3]
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["chat_template"] == CHATML
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == 0

    lit = LitTokenizer(path)
    assert lit.eos_id == 0
    assert lit.decode(lit.encode(SAMPLE_TEXT)) == SAMPLE_TEXT
    chat = "<|im_start|>user\nHi there<|im_end|>\n"
    ids = tok.encode(chat, add_special_tokens=False).ids
    assert ids[0] == 1 and 2 in ids  # chat markers are single tokens
    reserved = {tok.token_to_id(f"<|reserved_{i}|>") for i in range(12)} - {None}
    assert reserved and not reserved & set(tok.encode(SAMPLE_TEXT * 3).ids)

    art = run.artifacts("tokenizer")[0]
    assert art.metadata["padded_vocab_size"] == 512 and art.metadata["trained_vocab_size"] <= 500
    assert 1.5 < art.metrics["chars_per_token"] <= art.metrics["bytes_per_token"] < 6
    assert run.metrics("chars_per_token") == [art.metrics["chars_per_token"]]


def test_bigger_vocabulary_compresses_better_and_feeds_the_token_cache() -> None:
    dataset = demo_dataset()
    small_run, small = train(dataset, vocab_size=320)
    big_run, big = train(dataset, vocab_size=1500)
    s, b = small_run.artifacts("tokenizer")[0].metrics, big_run.artifacts("tokenizer")[0].metrics
    assert b["bytes_per_token"] > s["bytes_per_token"] * 1.3
    data_dir = Path(Store().find_artifact(dataset).path)
    assert len(token_array(data_dir, big, "val")) < len(token_array(data_dir, small, "val"))


def test_adopting_a_models_tokenizer(registered_tiny_model: str) -> None:
    dataset = demo_dataset(20_000)
    run = run_inline("tokenizer.train", {"from_model": registered_tiny_model, "dataset": dataset})
    [art] = run.artifacts("tokenizer")
    model_dir = Path(Store().find_artifact(registered_tiny_model).path)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (Path(art.path) / name).read_bytes() == (model_dir / name).read_bytes()
    assert art.parents == [registered_tiny_model] and art.metadata["adopted_from"] == registered_tiny_model
    assert art.metrics["bytes_per_token"] > 1
    proc = run_cli("tokenizer", "train", "--from-model", registered_tiny_model, "--name", "adopted")
    assert proc.returncode == 0, proc.stderr
    assert Store().find_artifact("adopted").kind == "tokenizer"


def test_cli_trains_and_rejects_missing_input() -> None:
    dataset = demo_dataset(20_000)
    proc = run_cli("tokenizer", "train", dataset, "--vocab-size", "400", "--name", "tiny-bpe")
    assert proc.returncode == 0, proc.stderr
    assert "tiny-bpe" in proc.stdout and "chars per token" in proc.stdout
    proc = run_cli("tokenizer", "train")
    assert proc.returncode == 2 and "--from-model" in proc.stderr
