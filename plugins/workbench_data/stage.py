"""`workbench data prepare`: import, clean, filter, de-duplicate and split a dataset.

This module is what the entry point names, so it stays light: the pipeline lives in
`workbench_data.prepare` and is imported inside `run()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from workbench.context import Context
from workbench.errors import UserError
from workbench.options import artifact, option
from workbench.stages import Stage
from workbench_data.columns import column_option

TYPES = ("pretrain", "instruction", "preference", "classification")
QUALITY_FILTERS = ("symbols", "repeated-lines", "short")


@dataclass
class Options:
    sources: list[str] = option(
        [], positional=True,
        help="Files or folders to import (.txt, .md, .jsonl, .json, .csv, .parquet); several separated by commas",
    )
    demo: str | None = option(
        None, choices=TYPES,
        help="Build an embedded demo dataset of this type instead of reading files (no download)",
    )
    type: str = option("auto", choices=("auto", *TYPES), help="Dataset type; auto tells it from the first row")
    name: str | None = option(None, help="Name of the dataset artifact (default: the first source's name, or demo-TYPE)")
    val_sources: list[str] = option(
        [], help="Files or folders to use as the validation split instead of a random one", group="split",
    )
    val_fraction: float = option(0.05, min=0.0, max=0.5, help="Share of rows held out for validation", group="split")
    seed: int = option(0, help="Seed of the train/validation split (and of the demo corpus)", group="split")
    text_field: str = option("text", help="Field or column holding the text in JSON, JSONL, CSV and Parquet", group="input")
    label_field: str = option("label", help="Field or column holding the class label", group="input")
    instruction_field: str = column_option("instruction")
    input_field: str = column_option("input")
    output_field: str = column_option("output")
    system_field: str = column_option("system")
    messages_field: str = column_option("messages")
    prompt_field: str = column_option("prompt")
    chosen_field: str = column_option("chosen")
    rejected_field: str = column_option("rejected")
    txt_unit: str = option("file", choices=("file", "paragraph", "line"), help="What one document is in a .txt file", group="input")
    skip_invalid: bool = option(False, help="Drop bad rows and count them in the card instead of stopping", group="input")
    unicode: str = option("NFC", choices=("NFC", "NFKC", "none"), help="Unicode normalisation form", group="cleaning")
    strip_control: bool = option(True, help="Remove control and invisible format characters", group="cleaning")
    clean_whitespace: bool = option(True, help="Trim ends and trailing spaces, shrink runs of blank lines", group="cleaning")
    min_chars: int = option(1, min=0, help="Drop rows shorter than this many characters", group="cleaning")
    max_chars: int | None = option(None, min=1, help="Drop rows longer than this many characters", group="cleaning")
    dedup: bool = option(True, help="Remove exact duplicates", group="filters")
    near_dedup: bool | None = option(
        None, help="Remove near duplicates with MinHash (default: on for pretrain data, off otherwise)", group="filters",
    )
    near_dedup_threshold: float = option(
        0.8, min=0.3, max=1.0, help="Jaccard similarity of word 5-grams above which rows are near duplicates",
        group="filters", advanced=True,
    )
    quality: list[str] | None = option(
        None, choices=(*QUALITY_FILTERS, "none"),
        help="Quality filters to apply, comma-separated, or none (default: all for pretrain data, none otherwise)", group="filters",
    )
    max_symbol_ratio: float = option(0.3, min=0.0, max=1.0, help="'symbols' filter: most non-alphanumeric share of characters", group="filters", advanced=True)
    min_letter_words: float = option(0.6, min=0.0, max=1.0, help="'symbols' filter: least share of words containing a letter", group="filters", advanced=True)
    max_repeated_lines: float = option(0.3, min=0.0, max=1.0, help="'repeated-lines' filter: most share of repeated lines", group="filters", advanced=True)
    min_words: int = option(5, min=0, help="'short' filter: fewest words a document may have", group="filters", advanced=True)
    tokenizer: str | None = artifact(
        ("tokenizer", "model"), required=False,
        help="Count tokens with this tokenizer (and build the token cache of a pretrain dataset)",
    )
    demo_chars: int = option(
        2_500_000, min=10_000, help="Size of the demo pretraining corpus in characters", group="input", advanced=True,
    )


class PrepareStage(Stage):
    name = "data.prepare"
    summary = "Import, clean, de-duplicate and split a dataset (or build a demo one)"
    description = (
        "Examples:\n"
        "  workbench data prepare corpus/            # .txt/.jsonl/.csv/.parquet → pretrain dataset\n"
        "  workbench data prepare alpaca.json        # instruction/input/output → chat messages\n"
        "  workbench data prepare qa.parquet --instruction-field question --output-field answer\n"
        "  workbench data prepare --demo pretrain    # offline demo data, no download\n"
        "  workbench data prepare data.jsonl --skip-invalid --quality symbols,short"
    )
    consumes = ("tokenizer", "model")
    produces = ("dataset",)
    Options: TypeAlias = Options

    def validate(self, options: Options, ctx: Context) -> None:
        from workbench_data.readers import RecordError, check_file, expand, require_parquet_support

        if bool(options.sources) == bool(options.demo):
            raise UserError("pass either files or folders to import, or --demo TYPE (one of them)")
        if options.demo and options.type not in ("auto", options.demo):
            raise UserError(f"--demo {options.demo} makes a {options.demo} dataset; drop --type {options.type}")
        if options.demo and options.val_sources:
            raise UserError("--val-sources cannot be used with --demo (the demo data has its own held-out split)")
        if options.max_chars is not None and options.max_chars < options.min_chars:
            raise UserError(f"--max-chars ({options.max_chars}) is below --min-chars ({options.min_chars})")
        if options.quality and "none" in options.quality and len(options.quality) > 1:
            raise UserError("--quality none cannot be combined with other filters")
        for path in expand(options.sources) + expand(options.val_sources):
            if path.suffix.lower() == ".parquet":
                require_parquet_support()
            if not options.skip_invalid:
                try:
                    check_file(path)
                except RecordError as err:
                    raise UserError(str(err)) from None

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_data.prepare import prepare

        return prepare(options, ctx)
