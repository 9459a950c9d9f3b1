"""The CUDA paths on a real NVIDIA GPU: bf16 mixed-precision training in pretraining, LoRA and DPO,
QLoRA's 4-bit base, evaluation on the GPU against the CPU, and the memory preflight's estimate
against the peak the run really allocated. Skipped where torch sees no CUDA device.

The stages run in this process (`run_inline`), so `torch.cuda.max_memory_allocated()` after a run
is that run's own peak."""

from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ROOT, make_tiny_model, make_tokenizer
from workbench.context import Context
from workbench.store import Store
from workbench.testing import InlineRun, run_inline

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEMO = ROOT / "assets" / "data"
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def register(kind: str, files: dict[str, list[dict[str, Any]]], card: dict[str, Any], name: str) -> str:
    ctx = Context(Store())
    staged = ctx.staging_dir(kind)
    (staged / "card.json").write_text(json.dumps(card))
    for split, rows in files.items():
        with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return ctx.register(kind, staged, name=name, metadata={"type": card["type"]}).id


def demo(kind: str, split: str, n: int) -> list[dict[str, Any]]:
    with open(DEMO / f"{kind}.{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in islice(fh, n)]


def dataset(kind: str, n_train: int, n_val: int) -> str:
    return register("dataset", {"train": demo(kind, "train", n_train), "val": demo(kind, "val", n_val)},
                    {"type": kind, "train_rows": n_train, "val_rows": n_val}, name=f"demo-{kind}")


def logged_estimate(run: InlineRun) -> int:
    """The preflight's memory estimate as the run logged it ("memory estimate 1.2 GiB" / "about 1.20 GiB")."""
    for e in run.events:
        if e["type"] == "log":
            m = re.search(r"(?:memory estimate|about) ([\d.,]+) (B|KiB|MiB|GiB)", e.get("message", ""))
            if m:
                return int(float(m.group(1).replace(",", "")) * UNITS[m.group(2)])
    raise AssertionError("the run logged no memory estimate")


def measured(stage: str, options: dict[str, Any]) -> tuple[InlineRun, int]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run = run_inline(stage, options)
    return run, torch.cuda.max_memory_allocated() - base


def report(what: str, run: InlineRun, peak: int) -> float:
    estimate = logged_estimate(run)
    ratio = peak / estimate
    print(f"\n{what}: estimate {estimate / 2**20:.0f} MiB, measured peak {peak / 2**20:.0f} MiB ({ratio:.2f}×)")
    return ratio


def logged(run: InlineRun, needle: str) -> bool:
    return any(needle in e.get("message", "") for e in run.events if e["type"] == "log")


@pytest.fixture
def model_100m(tmp_path: Path) -> str:
    """A random Llama-shaped model of about 100M parameters, registered in the workspace."""
    import shutil

    path = make_tiny_model(tmp_path / "m100", n_layer=12, n_embd=768, n_head=12, n_query_groups=4,
                           intermediate_size=2048, block_size=512)
    ctx = Context(Store())
    staged = ctx.staging_dir("model")
    shutil.rmtree(staged)
    shutil.copytree(path, staged)
    return ctx.register("model", staged, name="m100", metadata={"family": "llama"}).id


def test_pretraining_in_bf16_learns_and_the_memory_estimate_holds(tmp_path: Path) -> None:
    from workbench_data.demo import pretrain_records

    corpus = [r.value for r in pretrain_records(seed=0, n_chars=400_000)]
    cut = len(corpus) * 9 // 10
    data = register("dataset", {"train": [{"text": t} for t in corpus[:cut]],
                                "val": [{"text": t} for t in corpus[cut:]]},
                    {"type": "pretrain", "counts": {"train": cut, "val": len(corpus) - cut}}, name="corpus")
    ctx = Context(Store())
    staged = ctx.staging_dir("tokenizer")
    make_tokenizer(staged, vocab_size=2048, text=" ".join(corpus[:2000]))
    tokenizer = ctx.register("tokenizer", staged, name="bpe").id

    run, peak = measured("pretrain", {"dataset": data, "tokenizer": tokenizer, "model": "small", "max_steps": 40,
                                      "batch_size": 16, "micro_batch_size": 16, "max_seq_length": 512,
                                      "eval_every": 20, "eval_batches": 2, "device": "cuda", "compile": "off"})
    assert logged(run, "bf16-mixed"), [e.get("message") for e in run.events if e["type"] == "log"]
    val = run.metrics("val_loss")
    assert val[-1] < val[0] - 1.0, val
    assert 0.85 <= report("pretrain small, bf16-mixed, 16×512", run, peak) <= 1.15


def test_lora_qlora_and_dpo_in_bf16_learn_and_fit_their_estimates(model_100m: str) -> None:
    instructions = dataset("instruction", 256, 32)
    opts = {"model": model_100m, "dataset": instructions, "max_steps": 30, "eval_every": 15, "batch_size": 8,
            "lr": 1e-3, "rank": 8, "alpha": 16, "targets": ["query", "value", "mlp"], "device": "cuda"}

    lora, lora_peak = measured("finetune.lora", opts)
    val = lora.metrics("val_loss")
    assert val[-1] < 0.8 * val[0], val
    lora_ratio = report("LoRA 100M, bf16-mixed", lora, lora_peak)

    qlora, qlora_peak = measured("finetune.lora", {**opts, "quantize": "nf4"})
    qval = qlora.metrics("val_loss")
    assert qval[-1] < 0.8 * qval[0], qval
    qlora_ratio = report("QLoRA 100M, nf4 base", qlora, qlora_peak)
    assert qlora_peak < lora_peak

    prefs = dataset("preference", 256, 32)
    dpo, dpo_peak = measured("dpo", {"model": model_100m, "dataset": prefs, "max_steps": 30, "eval_every": 15,
                                     "batch_size": 8, "lr": 1e-3, "rank": 8, "alpha": 16,
                                     "targets": ["query", "value", "mlp"], "device": "cuda"})
    margins = dpo.metrics("val_reward_margin")
    assert margins[-1] > margins[0], margins
    dpo_ratio = report("DPO 100M, bf16-mixed", dpo, dpo_peak)
    print(f"DPO peak / LoRA peak: {dpo_peak / lora_peak:.2f}×")

    # QLoRA's 4-bit base is left out: its peak is not yet modelled (docs/training.md, "Memory preflight").
    assert qlora_ratio > 0
    for ratio in (lora_ratio, dpo_ratio):
        assert 0.85 <= ratio <= 1.15


def test_perplexity_on_the_gpu_matches_the_cpu(registered_tiny_model: str) -> None:
    from workbench_data.demo import pretrain_records

    corpus = [r.value for r in pretrain_records(seed=0, n_chars=40_000)]
    data = register("dataset", {"train": [{"text": t} for t in corpus[:-20]], "val": [{"text": t} for t in corpus[-20:]]},
                    {"type": "pretrain", "counts": {"train": len(corpus) - 20, "val": 20}}, name="corpus")
    figures = {}
    for device in ("cpu", "cuda"):
        run = run_inline("eval", {"models": [registered_tiny_model], "dataset": data, "tasks": ["perplexity"],
                                  "device": device})
        figures[device] = run.result["metrics"][registered_tiny_model]["perplexity"]
    print(f"\nperplexity cpu {figures['cpu']:.4f}, cuda {figures['cuda']:.4f}")
    assert figures["cuda"] == pytest.approx(figures["cpu"], rel=2e-2)
