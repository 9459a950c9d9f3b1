"""`workbench pretrain`: train a Llama-style LitGPT model from scratch, or continue one.

This module is what `workbench --help` and plugin discovery import, so it stays light: the
training loop (torch, litgpt, Lightning Fabric) lives in `workbench_pretrain.train` and is
imported inside `run()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from workbench.context import Context
from workbench.errors import UserError
from workbench.options import TrainingOptions, artifact, option, redefault
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir
from workbench_pretrain.presets import INIT_SCHEMES, PRESETS, Preset, describe

STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class Options(TrainingOptions):
    dataset: str = artifact("dataset", positional=True, help="Pretraining dataset (a dataset of type pretrain)")
    tokenizer: str | None = artifact(
        "tokenizer", required=False,
        help="Tokenizer to train with (from scratch); with --init-from the model's own tokenizer is used",
    )
    init_from: str | None = artifact(
        "model", required=False, help="Continue pretraining this model instead of starting from random weights",
    )
    model: str | None = option(
        None, group="model",
        help="Preset (tiny, small, 125M, 350M), a LitGPT config name, or a YAML config file; default: tiny",
    )
    init: str = option(
        "auto", choices=["auto", *INIT_SCHEMES], group="model", advanced=True,
        help="Weight initialisation from scratch: neox (LitGPT's), torch (PyTorch's module defaults); "
             "auto: the preset's (torch for tiny), else neox",
    )
    name: str | None = option(None, help="Name of the model artifact; default: pretrain-<model>")
    max_tokens: int | None = option(
        None, min=1, group="training", help="Tokens to train on; default: the preset's budget, else 20 per parameter",
    )
    max_seq_length: int | None = option(
        None, min=8, group="training", help="Tokens per training sequence; default: the model's context length",
    )
    min_lr: float | None = option(None, min=0, group="training", help="Learning rate at the end of the cosine decay; default: peak / 10")
    beta1: float = option(0.9, min=0, max=1, group="training", help="AdamW beta1", advanced=True)
    beta2: float = option(0.95, min=0, max=1, group="training", help="AdamW beta2", advanced=True)
    eval_batches: int = option(8, min=1, group="training", aliases=("eval_iters",),
                               help="Micro-batches of validation data per pass (per device)")
    devices: int = option(1, min=1, group="distributed", help="Processes (GPUs, or CPU workers) per node, for Fabric")
    num_nodes: int = option(1, min=1, group="distributed", help="Machines taking part; see docs/pretrain.md")
    strategy: str = option("auto", choices=STRATEGIES, group="distributed",
                           help="Fabric strategy when more than one process trains (auto: ddp)")
    compile: str = option("auto", choices=["auto", "on", "off"], advanced=True,
                          help="torch.compile the model (auto: on CUDA, and on a CPU for runs of 1M tokens or more, where the ~20 s compile pays off)")
    lr: float | None = redefault(TrainingOptions, "lr", None, help="Peak learning rate (AdamW); default: the preset's")
    batch_size: int | None = redefault(
        TrainingOptions, "batch_size", None,
        help="Sequences per optimizer step, across all devices (gradients accumulate over micro-batches); "
             "default: the preset's",
    )
    micro_batch_size: int | None = redefault(
        TrainingOptions, "micro_batch_size", None,
        help="Sequences per forward pass on one device; default: the preset's",
    )
    max_steps: int | None = redefault(TrainingOptions, "max_steps", None,
                                      help="Optimizer steps to train for (wins over --max-tokens)")
    warmup_steps: int | None = redefault(TrainingOptions, "warmup_steps", None,
                                         help="Linear warmup steps before the cosine decay; default: 5% of the steps")
    weight_decay: float = redefault(TrainingOptions, "weight_decay", 0.1)
    grad_clip: float | None = redefault(TrainingOptions, "grad_clip", 1.0)


class PretrainStage(Stage):
    name = "pretrain"
    summary = "Pretrain a Llama-style model with LitGPT and Fabric, from scratch or continued"
    description = (
        describe()
        + "\n\n--model also takes any LitGPT config name (e.g. pythia-14m) or a YAML file of "
        "litgpt.Config fields; trained from scratch, the vocabulary always follows --tokenizer.\n"
        "Continue pretraining a model in the workspace with --init-from MODEL.\n\n"
        "examples:\n"
        "  workbench pretrain DATASET --tokenizer TOKENIZER\n"
        "  workbench pretrain DATASET --tokenizer TOKENIZER --model 125M --max-tokens 2e8\n"
        "  workbench pretrain DATASET --init-from MODEL --max-steps 500 --lr 1e-4\n"
        "  workbench pretrain DATASET --tokenizer TOKENIZER --devices 2 --strategy ddp"
    )
    consumes = ("dataset", "tokenizer", "model")
    produces = ("model",)
    Options: TypeAlias = Options
    supports_resume = True
    supports_cancel = True

    def validate(self, options: Options, ctx: Context) -> None:
        if options.init_from and options.tokenizer:
            raise UserError(
                "--tokenizer and --init-from were both given; continued pretraining uses the "
                "model's own tokenizer, so leave out --tokenizer"
            )
        if not options.init_from and not options.tokenizer:
            raise UserError("pass --tokenizer to train from scratch, or --init-from MODEL to continue a model")
        if options.init_from and options.model:
            raise UserError("--model and --init-from were both given; the model to continue fixes the architecture")
        if options.init_from:
            check_model_dir(ctx.artifact(options.init_from, "model").path)
        if options.model and options.model.endswith((".yaml", ".yml")):
            if not Path(options.model).is_file():
                raise UserError(f"model config file {options.model} does not exist")
            # Recorded absolute, so `workbench runs resume` works from any directory.
            options.model = str(Path(options.model).resolve())
        elif options.model:
            from workbench_pretrain.names import check_model_name

            check_model_name(options.model)
        card_path = ctx.artifact(options.dataset, "dataset").path / "card.json"
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else {}
        if card.get("type") != "pretrain":
            raise UserError(
                f"dataset {options.dataset} is of type {card.get('type', 'unknown')}; pretraining needs a "
                "pretrain dataset (`workbench data prepare --type pretrain`)"
            )
        preset = PRESETS.get(options.model or "tiny") if not options.init_from else None
        if preset is not None or (options.batch_size is not None and options.micro_batch_size is not None):
            batch_plan(options, preset)
        if options.init_from and options.init != "auto":
            raise UserError("--init chooses the weights of a model trained from scratch; with --init-from the model's own weights are used")
        if options.strategy == "fsdp" and options.device == "cpu":
            raise UserError("--strategy fsdp needs CUDA GPUs; on a CPU use --strategy ddp")

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_pretrain.train import pretrain

        return pretrain(options, ctx)


def batch_plan(options: Options, preset: Preset | None) -> tuple[int, int, int]:
    """(global batch, micro-batch, accumulation steps): the global batch must split evenly into
    micro-batches on every process. Defaults come from the preset, else 32 and 4."""
    world = options.devices * options.num_nodes
    batch = options.batch_size if options.batch_size is not None else (preset.batch_size if preset else 32)
    micro = (options.micro_batch_size if options.micro_batch_size is not None
             else min(preset.micro_batch_size if preset else 4, max(1, batch // world)))
    if batch % (micro * world):
        raise UserError(
            f"--batch-size {batch} is not a multiple of --micro-batch-size {micro} × {world} "
            "processes; pick sizes that divide evenly"
        )
    return batch, micro, batch // (micro * world)
