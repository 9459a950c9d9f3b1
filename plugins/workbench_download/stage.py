"""The `download` stage: a Hugging Face repository becomes a `model` or `gguf` artifact.

Light module: the Hub client, torch and LitGPT are imported inside `run()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.errors import Cancelled, UserError
from workbench.options import option
from workbench.stages import Finder, Stage
from workbench_download import hub

if TYPE_CHECKING:
    from workbench.context import Context

# The Hub's own rule (huggingface_hub.utils.validate_repo_id), checked here without importing it.
_REPO_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]{1,96}$")


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


class DownloadStage(Stage):
    name = "download"
    summary = "Download a model from the Hugging Face Hub into the workspace"
    description = """\
Files go to the standard Hugging Face cache (HF_HOME), shared with other tools; an interrupted
transfer continues where it stopped. Models whose architecture LitGPT supports (Llama, Mistral,
Qwen2, Qwen3) are converted to a LitGPT checkpoint; with --gguf-file a GGUF file is kept as is,
ready for chat. Safetensors are preferred; .bin weights are read with weights_only=True; repository
code is never run.

Gated models: accept the licence on the model's Hub page, then set HF_TOKEN to a read token.
Offline: HF_HUB_OFFLINE=1 resolves from the cache alone.

examples:
  workbench download HuggingFaceTB/SmolLM2-135M-Instruct
  workbench download Qwen/Qwen2.5-0.5B-Instruct-GGUF --gguf-file Q4_K_M
  workbench download meta-llama/Llama-3.2-1B --revision main --dtype bfloat16"""
    produces = ("model", "gguf")
    Options = Options
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

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
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
