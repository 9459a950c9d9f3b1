"""The `import` stage: a model on the user's disk becomes a `model` or `gguf` artifact.

Light module: format detection and file checks only; conversion (torch, LitGPT, gguf) lives in
`workbench_import.formats`, imported inside `run()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from workbench.errors import UserError
from workbench.options import artifact, option
from workbench.stages import Stage
from workbench_import.detect import HF, LITGPT, check_files, detect

if TYPE_CHECKING:
    from workbench.context import Context


#: What each way of bringing files in means for the source the user keeps.
TRANSFER_NOTES = {
    "converted": "written anew into the workspace; the source is no longer needed",
    "merged": "the adapter merged into a new model in the workspace; the source is no longer needed",
    "hard-linked": "one copy on disk shared with the source; deleting the source is safe, editing it in place is not",
    "copied": "copied into the workspace; the source is no longer needed",
}


@dataclass
class Options:
    path: str = option(None, help="Model directory (Hugging Face, LitGPT, PEFT adapter) or .gguf file",
                       positional=True)
    name: str | None = option(None, help="Name of the artifact (default: the directory or file name)")
    base: str | None = artifact("model", required=False,
                                help="Base model in the workspace that a LoRA adapter applies to")


def check_hf_config(root: Path) -> None:
    """An architecture the converter cannot take is refused before a run starts (plain Python)."""
    import json

    from workbench_download.convert import SAFETENSORS_INDEX, config_kwargs

    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{root / 'config.json'} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{root / 'config.json'} does not hold a JSON object")
    config_kwargs(config, str(root))
    index = root / SAFETENSORS_INDEX
    if index.exists():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid safetensors index (no weight_map)") from None
        missing = sorted(s for s in shards if not (root / s).exists())
        if missing:
            raise UserError(f"{index} lists {', '.join(missing[:3])}, which {root} does not have")


class ImportStage(Stage):
    name = "import"
    summary = "Import a model from disk into the workspace"
    description = """\
Accepts a Hugging Face model directory (config.json, safetensors or .bin weights, tokenizer), a
LitGPT checkpoint directory (lit_model.pth, model_config.yaml, tokenizer), a .gguf file, or a LoRA
adapter (PEFT's adapter_config.json + adapter_model.safetensors, or LitGPT's lit_model.pth.lora)
with --base naming the model it adapts; the adapter is merged into a new model.

Weights are converted into the workspace (nothing is linked to the source folder, so deleting it
later is safe); a GGUF file is hard-linked when it is on the same filesystem, else copied.
Pickled files load only with torch's weights-only loader; repository code is never run.

examples:
  workbench models import ~/models/SmolLM2-135M-Instruct
  workbench models import ./out/finetune/lora/final --base smollm2 --name smollm2-tuned
  workbench models import ~/Downloads/qwen2.5-0.5b-instruct-q4_k_m.gguf"""
    consumes = ("model",)
    produces = ("model", "gguf")
    Options: TypeAlias = Options
    supports_cancel = True

    def validate(self, options: Options, ctx: Context) -> None:
        # The worker runs elsewhere, and run.json should say exactly what was imported.
        options.path = str(Path(options.path).expanduser().resolve())
        source = detect(Path(options.path), base_given=bool(options.base))
        if source.is_adapter and not options.base:
            raise UserError(f"{source.path} is a {source.label}; name the model it adapts with --base MODEL")
        if options.base and not source.is_adapter:
            raise UserError(f"--base applies to LoRA adapters, but {source.path} is a {source.label}")
        check_files(source)
        if source.format == HF:
            check_hf_config(source.path)
        if source.format in (HF, LITGPT):
            from workbench.prompts import style_for_model

            style_for_model(source.path)  # a hostile chat template is refused before a run exists

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_import.formats import import_source

        path = Path(options.path).expanduser().resolve()
        source = detect(path, base_given=bool(options.base))
        check_files(source)
        art = import_source(source, options, ctx)
        transfer = art.metadata["source"]["transfer"]
        adapter = {"adapter": art.metadata["adapter_artifact"]} if "adapter_artifact" in art.metadata else {}
        return {**adapter, "artifact": art.id, "kind": art.kind, "name": art.name, "format": source.label,
                "files": f"{transfer} ({TRANSFER_NOTES[transfer]})", "path": str(art.path),
                "size_bytes": art.size_bytes}
