"""`workbench dpo`: direct preference optimization with a LoRA adapter.

Light module: torch and litgpt are imported inside `run()` (see `workbench_dpo.train`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from workbench.datasets import check_replay
from workbench.errors import UserError
from workbench.options import (
    EpochOptions,
    ReplayOptions,
    TrainingOptions,
    artifact,
    check_batches,
    option,
    redefault,
)
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir
from workbench_dpo.rows import check_preference_dataset, read_rows

if TYPE_CHECKING:
    from workbench.context import Context

LORA_TARGETS = ("query", "key", "value", "projection", "mlp", "head")


@dataclass
class Options(EpochOptions, ReplayOptions):
    model: str = artifact("model", help="Model to align, typically an instruction-tuned one", positional=True)
    dataset: str = artifact("dataset", positional=True, help="Preference dataset (rows with messages, chosen and rejected)")
    reference: str | None = artifact(
        "model", required=False,
        help="Separate reference model (same tokenizer); default: the model itself with the adapter switched off, "
             "which holds no second copy in memory",
    )
    loss: str = option("sigmoid", help="Preference loss: sigmoid DPO, IPO, or label-smoothed conservative DPO",
                       choices=["sigmoid", "ipo", "cdpo"], group="dpo")
    beta: float = option(0.1, help="β: how far the policy may move from the reference (higher keeps it closer)",
                         min=1e-6, group="dpo")
    sft_weight: float = option(
        0.0, min=0.0, group="dpo",
        help="Weight of the chosen answers' own loss (mean negative log-likelihood per token) added to the "
             "preference loss (RPO): keeps the chosen answers, their end-of-turn token included, likely",
    )
    label_smoothing: float | None = option(
        None, help="cdpo only: the probability that a preference label is wrong (default 0.1)",
        min=0.0, max=0.5, group="dpo",
    )
    rank: int = option(8, help="LoRA rank", min=1, group="lora")
    alpha: int = option(16, help="LoRA alpha (the adapter's output is scaled by alpha/r)", min=1, group="lora")
    dropout: float = option(0.05, help="Dropout on the adapter's input", min=0.0, max=0.9, group="lora")
    targets: list[str] = option(["query", "value"], help="Layers that get an adapter",
                                     choices=list(LORA_TARGETS), group="lora")
    max_seq_length: int | None = option(None, help="Longest prompt + answer in tokens; default: the model's context",
                                        min=8, group="training")
    eval_pairs: int = option(256, help="Held-out pairs scored per evaluation (the first N of the split)", min=1,
                             group="training")
    name: str | None = option(None, help="Name of the aligned model; default: <model>-dpo")
    lr: float = redefault(TrainingOptions, "lr", 5e-5)
    batch_size: int = redefault(TrainingOptions, "batch_size", 8)
    warmup_steps: int = redefault(TrainingOptions, "warmup_steps", 0)
    grad_clip: float | None = redefault(TrainingOptions, "grad_clip", 1.0)


class DPOStage(Stage):
    name = "dpo"
    summary = "Align a model to preference pairs (DPO, IPO, cDPO) with a LoRA adapter"
    description = (
        "The policy is the model plus a new LoRA adapter; the reference is the same weights with the adapter "
        "switched off, so DPO needs about the memory of LoRA finetuning, on CPU, MPS or CUDA.\n\n"
        "example: workbench dpo my-chat-model my-preferences --beta 0.1 --loss sigmoid"
    )
    consumes = ("model", "dataset")
    produces = ("adapter", "model")
    Options: TypeAlias = Options
    supports_resume = True
    supports_cancel = True

    def validate(self, options: Options, ctx: Context) -> None:
        if options.label_smoothing is not None and options.loss != "cdpo":
            raise UserError("--label-smoothing applies to --loss cdpo only; drop it or pass --loss cdpo")
        check_batches(options)
        if not options.targets:
            raise UserError("--targets must name at least one layer")
        model_dir = ctx.artifact(options.model, "model").path
        check_model_dir(model_dir)
        context = _block_size(model_dir)
        if options.max_seq_length is not None and context and options.max_seq_length > context:
            raise UserError(f"--max-seq-length {options.max_seq_length} is longer than the model's context of {context}")
        data = ctx.artifact(options.dataset, "dataset")
        check_preference_dataset(data.path, options.dataset)
        check_replay(ctx, options.replay, options.replay_length, context)
        # Reading the rows is cheap next to training and names the first bad one by file and line.
        if not read_rows(data.path / "train.jsonl"):
            raise UserError(f"dataset '{options.dataset}' has no training pairs in {data.path / 'train.jsonl'}")
        read_rows(data.path / "val.jsonl")
        if options.reference:
            ref_dir = ctx.artifact(options.reference, "model").path
            check_model_dir(ref_dir)
            if _tokenizer_digest(ref_dir) != _tokenizer_digest(model_dir):
                raise UserError(
                    f"reference model '{options.reference}' has a different tokenizer from '{options.model}'; "
                    "a reference must score the same token ids"
                )

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_dpo.train import train

        return train(options, ctx)


def _block_size(model_dir: Path) -> int | None:
    import yaml

    path = model_dir / "model_config.yaml"
    config = yaml.safe_load(path.read_text()) if path.exists() else None
    return config.get("block_size") if isinstance(config, dict) else None


def _tokenizer_digest(model_dir: Path) -> str:
    for name in ("tokenizer.json", "tokenizer.model"):
        path = model_dir / name
        if path.exists():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    raise UserError(f"{model_dir} holds no tokenizer (tokenizer.json or tokenizer.model)")
