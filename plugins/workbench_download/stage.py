"""The `download` stage: a Hugging Face repository becomes a `model` or `gguf` artifact, or,
with --dataset, a prepared `dataset` artifact.

Light module: the Hub client, torch and LitGPT are imported inside `run()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from workbench_data.columns import column_option

from workbench.errors import Cancelled, UserError
from workbench.options import option
from workbench.stages import Finder, Stage
from workbench_download import hub

if TYPE_CHECKING:
    from workbench.context import Context

# The Hub's own rule (huggingface_hub.utils.validate_repo_id), checked here without importing it.
_REPO_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]{1,96}$")
DATASET_TYPES = ("pretrain", "instruction", "preference", "classification")


@dataclass
class Options:
    repo_id: str = option(None, help="Hugging Face repository id, owner/name as in its URL", positional=True)
    revision: str = option("main", help="Branch, tag or commit hash to download")
    gguf_file: str | None = option(
        None, help="Keep one GGUF file of the repository as a `gguf` artifact instead of converting: "
        "a glob or a part of the name (Q4_K_M, *q8_0.gguf)")
    include: list[str] = option(
        [], help="Download only files matching these globs (comma-separated); "
        "default: the config, tokenizer and preferred weights", advanced=True)
    exclude: list[str] = option([], help="Never download files matching these globs (comma-separated)",
                                advanced=True)
    name: str | None = option(None, help="Name of the artifact (default: the repository id)")
    dtype: str | None = option(None, help="Store converted weights in this dtype (default: as published)",
                               choices=["float32", "bfloat16", "float16"])
    retries: int = option(3, help="How often an interrupted transfer is resumed within the run", min=0,
                          max=50, advanced=True)
    dataset: bool = option(False, help="The repository is a dataset: download its data files and prepare "
                           "them as a dataset artifact for finetune lora, dpo or pretrain", group="dataset")
    # The Hub's viewer calls a config a subset; `--config` is taken by the options file.
    subset: str | None = option(None, help="Dataset config (subset) to take (default: the card's default, "
                                "or the only one)", group="dataset")
    split: str | None = option(None, help="Dataset split to take (default: train, or the only one)",
                               group="dataset")
    type: str = option("auto", choices=("auto", *DATASET_TYPES),
                       help="Dataset type; auto tells it from the first row", group="dataset")
    text_field: str = option("text", help="Column holding the text of pretrain and classification rows",
                             group="columns")
    label_field: str = option("label", help="Column holding the class label", group="columns", advanced=True)
    instruction_field: str = column_option("instruction")
    input_field: str = column_option("input")
    output_field: str = column_option("output")
    system_field: str = column_option("system")
    messages_field: str = column_option("messages")
    prompt_field: str = column_option("prompt")
    chosen_field: str = column_option("chosen")
    rejected_field: str = column_option("rejected")


_DATASET_ONLY = ("subset", "split", "type", "text_field", "label_field", "instruction_field", "input_field",
                 "output_field", "system_field", "messages_field", "prompt_field", "chosen_field", "rejected_field")


class DownloadStage(Stage):
    name = "download"
    summary = "Download a model or a dataset from the Hugging Face Hub into the workspace"
    description = """\
Files go to the standard Hugging Face cache (HF_HOME), shared with other tools; an interrupted
transfer continues where it stopped. Models whose architecture LitGPT supports (Llama, Mistral,
Qwen2, Qwen3) are converted to a LitGPT checkpoint; with --gguf-file a GGUF file is kept as is,
ready for chat. Safetensors are preferred; .bin weights are read with weights_only=True; repository
code is never run.

With --dataset, the repository's data files (Parquet, JSONL, JSON, CSV) for one config and split
(--subset picks the config) are prepared as by `workbench data prepare`; --X-field options map
differently named columns. Loading scripts are never run.

Gated models: accept the licence on the model's Hub page, then set HF_TOKEN to a read token.
Offline: HF_HUB_OFFLINE=1 resolves from the cache alone.

examples:
  workbench download HuggingFaceTB/SmolLM2-135M-Instruct
  workbench download Qwen/Qwen2.5-0.5B-Instruct-GGUF --gguf-file Q4_K_M
  workbench download meta-llama/Llama-3.2-1B --revision main --dtype bfloat16
  workbench download --dataset tatsu-lab/alpaca
  workbench download --dataset HuggingFaceH4/ultrafeedback_binarized --split train_prefs"""
    produces = ("model", "gguf", "dataset")
    Options: TypeAlias = Options
    supports_resume = True
    supports_cancel = True
    finders = (Finder("repo_id", "Search the Hugging Face Hub", hub.search, hub.COLUMNS),)

    def validate(self, options: Options, ctx: Context) -> None:
        repo = options.repo_id
        if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
            raise UserError(
                f"REPO_ID '{options.repo_id}' is not a Hugging Face repository id; write it as owner/name, "
                "as in https://huggingface.co/owner/name"
            )
        if not options.revision.strip():
            raise UserError("--revision must name a branch, tag or commit hash")
        if options.gguf_file is not None and not options.gguf_file.strip():
            raise UserError("--gguf-file must name a file or pattern, for example Q4_K_M")
        if options.gguf_file and options.dtype:
            raise UserError("--dtype applies to converted checkpoints; a GGUF file is kept exactly as published")
        if options.gguf_file and options.include:
            raise UserError("--include selects files to convert; with --gguf-file, name the one file to keep")
        if options.dataset:
            for flag, value in (("--gguf-file", options.gguf_file), ("--dtype", options.dtype),
                                ("--include", options.include)):
                if value:
                    raise UserError(f"{flag} applies to models; for a dataset, choose the data with "
                                    "--subset and --split")
        else:
            defaults = Options()
            for name in _DATASET_ONLY:
                if getattr(options, name) != getattr(defaults, name):
                    flag = "--" + name.replace("_", "-")
                    raise UserError(f"{flag} applies to datasets; add --dataset to download {repo} as one")

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        if options.dataset:
            from workbench_download.datasets import download_dataset

            return download_dataset(options, ctx)
        from workbench_download.fetch import Downloader, DownloadInterrupted

        downloader = Downloader(options, ctx)
        try:
            if options.gguf_file:
                from workbench_download.ggufs import keep_gguf

                art = keep_gguf(downloader, options, ctx)
            else:
                from workbench_download.convert import convert_repository

                art = convert_repository(downloader, options, ctx)
        except (Cancelled, DownloadInterrupted):
            downloader.checkpoint()  # `workbench runs resume` finishes the same commit
            raise
        meta = art.metadata
        return {
            "artifact": art.id, "kind": art.kind, "name": art.name, "repo": meta["hf_repo_id"],
            "revision": meta["hf_revision"], "path": str(art.path), "size_bytes": art.size_bytes,
        }
