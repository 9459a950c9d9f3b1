"""`workbench tokenizer train`: a byte-level BPE tokenizer trained on a dataset, or a model's
tokenizer adopted as an artifact of its own.

Light module (the entry point names it): `tokenizers` is imported inside `run()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from workbench.context import Context
from workbench.errors import UserError
from workbench.options import artifact, option
from workbench.stages import Stage


@dataclass
class Options:
    # An empty default keeps the positional optional, for --from-model alone.
    dataset: str = artifact(
        "dataset", required=False, positional=True, default="",
        help="Dataset to train on (its train split); its validation split measures compression",
    )
    vocab_size: int = option(
        4096, min=320, max=1 << 20,
        help="Vocabulary size, special tokens included; padded up to a multiple of 64 with reserved tokens",
    )
    min_frequency: int = option(2, min=1, help="Least number of times a pair must occur to be merged")
    from_model: str | None = artifact(
        "model", required=False,
        help="Adopt this model's tokenizer instead of training one (a dataset is then optional)",
    )
    max_train_chars: int | None = option(
        None, min=1000, advanced=True,
        help="Train on at most this many characters of the dataset (default: all of it)",
    )
    name: str | None = option(None, help="Name of the tokenizer artifact (default: from the dataset or model)")


class TrainTokenizerStage(Stage):
    name = "tokenizer.train"
    summary = "Train a byte-level BPE tokenizer on a dataset, or adopt a model's tokenizer"
    description = (
        "Examples:\n"
        "  workbench tokenizer train DATASET --vocab-size 4096\n"
        "  workbench tokenizer train --from-model MODEL [DATASET]   # reuse a downloaded model's tokenizer\n\n"
        "The tokenizer is saved as LitGPT loads it (tokenizer.json, tokenizer_config.json with\n"
        "tokenizer_class and a chatml chat_template, generation_config.json) with the special tokens\n"
        "<|endoftext|>, <|im_start|>, <|im_end|> and <|pad|>."
    )
    consumes = ("dataset", "model")
    produces = ("tokenizer",)
    Options: TypeAlias = Options

    def validate(self, options: Options, ctx: Context) -> None:
        if not options.dataset and not options.from_model:
            raise UserError("pass a DATASET to train on, or --from-model MODEL to adopt a model's tokenizer")

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_tokenizer.train import adopt, train

        return adopt(options, ctx) if options.from_model else train(options, ctx)
