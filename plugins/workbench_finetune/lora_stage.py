"""`workbench finetune lora`: LoRA instruction finetuning of a LitGPT model.

Light module: options and input checks only; the training loop is in `lora_train`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import yaml

from workbench.errors import UserError
from workbench.options import (
    EpochOptions,
    Retired,
    TrainingOptions,
    artifact,
    check_batches,
    option,
    redefault,
)
from workbench.prompts import STYLES, style_for_model
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir
from workbench_finetune.datasets import instruction_data

if TYPE_CHECKING:
    from workbench.context import Context

# Same names as workbench.ml.lora.TARGETS, which cannot be imported here without torch.
TARGETS = ("query", "key", "value", "projection", "mlp", "head")


def _grad_accum(accum: int, given: dict[str, Any]) -> str:
    """Before the shared vocabulary, --batch-size counted one forward pass and --grad-accum the
    passes per optimizer step; the same run now reads batch = both multiplied, micro-batch = the
    old batch."""
    if "micro_batch_size" in given:
        raise UserError("--grad-accum and --micro-batch-size were both given; drop --grad-accum "
                        "(--batch-size now counts the examples of a whole optimizer step)")
    micro = given.get("batch_size", BATCH_SIZE)
    given["batch_size"], given["micro_batch_size"] = micro * accum, micro
    return (f"--grad-accum is retired: --batch-size {micro} --grad-accum {accum} now reads "
            f"--batch-size {micro * accum} --micro-batch-size {micro}")


BATCH_SIZE = 8


@dataclass
class Options(EpochOptions):
    model: str = artifact("model", help="Base model to adapt", positional=True)
    dataset: str = artifact("dataset", help="Instruction dataset (rows of chat messages)", positional=True)
    rank: int = option(8, help="LoRA rank r", min=1, group="LoRA")
    alpha: int = option(16, help="LoRA alpha; the update is scaled by alpha / rank", min=1, group="LoRA")
    dropout: float = option(0.05, help="Dropout on the LoRA path", min=0, max=1, group="LoRA")
    targets: list[str] = option(["query", "value"], help="Layers that get an adapter", choices=TARGETS, group="LoRA")
    prompt_style: str | None = option(
        None, help="Prompt template: chatml, alpaca, or base (the model's own); default: the model's stored style, else chatml",
        choices=STYLES, group="data",
    )
    mask_prompt: bool = option(True, help="Take the loss on the answer tokens only", group="data")
    max_seq_length: int | None = option(
        None, help="Longest example in tokens; default: the model's context", min=8, group="data",
    )
    eval_batches: int = option(50, help="Most validation micro-batches per pass", min=1, group="training",
                               advanced=True)
    quantize: str | None = option(
        None, help="Load the base in 4 bits (QLoRA); needs CUDA and bitsandbytes", choices=["nf4"], group="hardware",
    )
    name: str | None = option(None, help="Name of the merged model; default: <base>-lora")
    lr: float = redefault(TrainingOptions, "lr", 2e-4)
    batch_size: int = redefault(TrainingOptions, "batch_size", BATCH_SIZE)
    warmup_steps: int = redefault(TrainingOptions, "warmup_steps", 10)
    epochs: int = redefault(EpochOptions, "epochs", 3)

    retired: ClassVar[dict[str, Retired]] = {
        "grad_accum": Retired(int, "Micro-batches per optimizer step", _grad_accum, min=1),
    }


def read_block_size(model_dir: Path) -> int:
    path = model_dir / "model_config.yaml"
    if not path.exists():
        raise UserError(f"{model_dir} is not a LitGPT model directory: model_config.yaml is missing")
    return int((yaml.safe_load(path.read_text()) or {}).get("block_size", 4096))


def check_quantize(quantize: str | None, device: str) -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; both are known before any model is loaded."""
    if not quantize:
        return
    if device in ("cpu", "mps"):
        raise UserError(f"--quantize {quantize} (QLoRA) needs a CUDA GPU, but --device is {device}; drop --quantize")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"--quantize {quantize} (QLoRA) needs the bitsandbytes package and a CUDA GPU; "
            "install bitsandbytes on a CUDA machine or drop --quantize"
        )


class LoraStage(Stage):
    name = "finetune.lora"
    summary = "LoRA instruction finetuning: an adapter and a merged model"
    description = (
        "Trains low-rank adapters on the chosen layers of a LitGPT model with the loss on the\n"
        "answers only, then writes the adapter (small safetensors) and the merged model. The prompt\n"
        "style used for training is stored with both, so chat and export apply the same template.\n\n"
        "example: workbench finetune lora tiny-chat my-instructions --rank 16 --targets query,value,mlp"
    )
    consumes = ("model", "dataset")
    produces = ("adapter", "model")
    Options: TypeAlias = Options
    supports_resume = True

    def validate(self, options: Options, ctx: Context) -> None:
        check_batches(options)
        check_quantize(options.quantize, options.device)
        if options.quantize and options.precision and "mixed" in options.precision:
            raise UserError("--quantize works with a '-true' precision (bf16-true, 16-true, 32-true), not mixed")
        base = ctx.artifact(options.model, "model")
        check_model_dir(base.path)
        block_size = read_block_size(base.path)
        if options.max_seq_length is not None and options.max_seq_length > block_size:
            raise UserError(
                f"--max-seq-length {options.max_seq_length} is longer than the model's context of {block_size} tokens"
            )
        if options.prompt_style == "base" and style_for_model(base.path) is None:
            raise UserError(
                f"model {base.id} has no prompt style or chat template of its own; use --prompt-style chatml or alpaca"
            )
        data = ctx.artifact(options.dataset, "dataset")
        instruction_data(data.path, data.id, "finetune lora")

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_finetune.lora_train import train

        return train(options, ctx)
