"""`workbench finetune classify`: a classification head on a LitGPT model's last token.

Light module: options and input checks only; the model and its training loop are in `classifier`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml

from workbench.errors import UserError
from workbench.options import (
    EpochOptions,
    TrainingOptions,
    artifact,
    check_batches,
    option,
    redefault,
)
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir
from workbench_finetune.datasets import (
    LABELLED_SUFFIXES,
    Labelled,
    check_labels,
    classification_data,
    read_labelled_file,
    stratified_split,
)

if TYPE_CHECKING:
    from workbench.context import Context


@dataclass
class Options(EpochOptions):
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


def resolve_data(options: Options, ctx: Context) -> LabelledData:
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
    Options: TypeAlias = Options
    supports_resume = True

    def validate(self, options: Options, ctx: Context) -> None:
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

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_finetune.classifier import train

        return train(options, ctx)
