"""`workbench finetune lora` (LoRA instruction finetuning) and `workbench finetune classify` (a
classification head on a LitGPT model's last token).

Light module: options and input checks only; the training is in `lora` and `classifier`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import yaml

from workbench.datasets import check_replay
from workbench.errors import UserError
from workbench.options import (
    EpochOptions,
    ReplayOptions,
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
from workbench_finetune.datasets import (
    LABELLED_SUFFIXES,
    Labelled,
    check_labels,
    classification_data,
    instruction_data,
    read_labelled_file,
    stratified_split,
)

if TYPE_CHECKING:
    from workbench.context import Context

# ---------------------------------------------------------------------------------------------
# finetune lora

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
class LoraOptions(EpochOptions, ReplayOptions):
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
    Options: TypeAlias = LoraOptions
    supports_resume = True

    def validate(self, options: LoraOptions, ctx: Context) -> None:
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
        check_replay(ctx, options.replay, options.replay_length, block_size)

    def run(self, options: LoraOptions, ctx: Context) -> dict[str, Any]:
        from workbench_finetune.lora import train

        return train(options, ctx)


# ---------------------------------------------------------------------------------------------
# finetune classify


@dataclass
class ClassifyOptions(EpochOptions):
    model: str = artifact("model", help="Base model whose last-token state feeds the head", positional=True)
    data: str = option(
        None, help="A classification dataset (id or name) or a labelled .csv/.tsv/.jsonl file", positional=True,
    )
    text_column: str = option("text", help="Column (or JSON field) with the text, for a file", group="data")
    label_column: str = option("label", help="Column (or JSON field) with the label, for a file", group="data")
    val_fraction: float = option(0.2, help="Share of a file's rows held out for scoring", min=0.01, max=0.9, group="data")
    max_seq_length: int | None = option(
        None, help="Tokens kept per text (longer texts are cut); default: the model's context", min=2, group="data",
        aliases=("max_length",),
    )
    train_blocks: int = option(
        0, help="Also train the last N transformer blocks and the final norm (0: the head only)", min=0, group="training",
    )
    name: str | None = option(None, help="Name of the classifier; default: <model>-classifier")
    lr: float = redefault(TrainingOptions, "lr", 1e-3)
    batch_size: int = redefault(TrainingOptions, "batch_size", 8)
    warmup_steps: int = redefault(TrainingOptions, "warmup_steps", 10)
    weight_decay: float = redefault(TrainingOptions, "weight_decay", 0.1)
    epochs: int = redefault(EpochOptions, "epochs", 5)


@dataclass
class LabelledData:
    train: Labelled
    val: Labelled
    labels: list[str]
    dataset_id: str | None  # None when read from a file
    source: str


def _looks_like_file(ref: str) -> bool:
    path = Path(ref).expanduser()
    return path.suffix.lower() in LABELLED_SUFFIXES or "/" in ref or path.is_file()


def resolve_data(options: ClassifyOptions, ctx: Context) -> LabelledData:
    """A dataset artifact's splits, or a file split into train and held-out rows; all rows checked."""
    if _looks_like_file(options.data):
        path = Path(options.data).expanduser().resolve()
        rows = read_labelled_file(path, options.text_column, options.label_column)
        labels = sorted(set(rows.labels))
        train, val = stratified_split(rows, options.val_fraction, options.seed)
        found = LabelledData(train, val, labels, None, str(path))
    else:
        try:
            art = ctx.artifact(options.data, "dataset")
        except UserError:
            raise UserError(
                f"'{options.data}' is neither a labelled file nor a dataset in the workspace; "
                "pass a .csv/.tsv/.jsonl path or a dataset id from `workbench models ls`"
            ) from None
        train, val, labels = classification_data(art.path, art.id, "finetune classify")
        found = LabelledData(train, val, labels, art.id, art.id)
    check_labels(found.train, found.val, found.labels)
    if not len(found.val):
        raise UserError(f"{found.source} leaves no held-out rows to score on; add rows or raise --val-fraction")
    return found


def read_n_layer(model_dir: Path) -> int:
    path = model_dir / "model_config.yaml"
    if not path.exists():
        raise UserError(f"{model_dir} is not a LitGPT model directory: model_config.yaml is missing")
    return int((yaml.safe_load(path.read_text()) or {})["n_layer"])


class ClassifyStage(Stage):
    name = "finetune.classify"
    summary = "Classification finetuning: a head on the last token, scored on held-out rows"
    description = (
        "Replaces the language-model head with a classifier over the last real token's final hidden\n"
        "state and trains it (and optionally the last N blocks). Reports accuracy, precision, recall,\n"
        "F1 and a confusion matrix on the held-out split. `workbench predict CLASSIFIER TEXT` uses it.\n\n"
        "example: workbench finetune classify tiny-chat spam.csv --text-column message --label-column kind"
    )
    consumes = ("model", "dataset")
    produces = ("classifier",)
    Options: TypeAlias = ClassifyOptions
    supports_resume = True

    def validate(self, options: ClassifyOptions, ctx: Context) -> None:
        check_batches(options)
        base = ctx.artifact(options.model, "model")
        check_model_dir(base.path)
        n_layer = read_n_layer(base.path)
        if options.train_blocks > n_layer:
            raise UserError(f"--train-blocks {options.train_blocks} is more than the model's {n_layer} blocks")
        if _looks_like_file(options.data):
            # The worker may start elsewhere; keep the file's absolute path in the run's options.
            options.data = str(Path(options.data).expanduser().resolve())
        resolve_data(options, ctx)

    def run(self, options: ClassifyOptions, ctx: Context) -> dict[str, Any]:
        from workbench_finetune.classifier import train

        return train(options, ctx)
