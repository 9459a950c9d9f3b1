"""`workbench export MODEL --gguf [--quant q4_k_m,q8_0] [--out DIR] [--json]`.

Light module: options and cheap checks only. The work (torch, gguf, llama.cpp) lives in
`workbench_export.pipeline` and is imported inside `run()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from workbench.context import Context
from workbench.errors import UserError
from workbench.options import artifact, option
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir, check_weights

BASE_TYPES = ("f32", "f16", "bf16")
QUANT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")


@dataclass
class Options:
    model: str = artifact(("model", "adapter"), positional=True,
                          help="Model to export; a LoRA adapter is merged into its base model on the fly")
    gguf: bool = option(True, help="Write GGUF files for llama.cpp, Ollama and LM Studio (the only format)")
    quant: list[str] = option(
        ["f16"], choices=BASE_TYPES + QUANT_TYPES,
        help="Comma-separated file types, one GGUF each: unquantized f32/f16/bf16 or llama.cpp quantizations",
    )
    out: str | None = option(None, help="Also copy each GGUF and its Ollama Modelfile into this directory")
    name: str | None = option(None, help="Base name for files and artifacts (default: the model's name)")
    eval_data: str | None = artifact(
        "dataset", required=False,
        help="Held-out text for the perplexity check (its val split); default: the dataset the model "
             "was trained on, else a built-in sample",
    )
    ppl_tokens: int = option(1024, min=16, advanced=True,
                             help="Tokens of held-out text the perplexity check reads")
    tolerance: float = option(1e-4, min=0, advanced=True,
                              help="Largest F32 logit difference from LitGPT, relative to the largest logit")
    max_ppl_increase: float = option(1.0, min=0, advanced=True,
                                     help="Largest relative perplexity rise a file may show (1.0: may double)")


def base_model_of(adapter_dir: Path, ctx: Context) -> Any:
    """The `model` artifact a LoRA adapter was trained on, or a UserError that says what to do."""
    cfg_path = adapter_dir / "adapter_config.json"
    try:
        base_ref = json.loads(cfg_path.read_text(encoding="utf-8")).get("base_model")
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{cfg_path} is missing or unreadable; this adapter cannot be merged for export") from None
    if not base_ref:
        raise UserError(f"{cfg_path} names no base_model; export the merged model the finetune produced instead")
    try:
        return ctx.artifact(base_ref, ("model",))
    except UserError:
        raise UserError(
            f"the adapter's base model {base_ref} is not in this workspace; download or import it again, "
            "or export the merged model instead"
        ) from None


class ExportStage(Stage):
    name = "export"
    summary = "Export a model to GGUF (F32/F16/BF16 or quantized), verified against LitGPT"
    description = (
        "Each file is loaded back in llama.cpp and compared with the LitGPT model: an F32 export\n"
        "must match LitGPT's logits and greedy tokens, every file must keep perplexity on\n"
        "held-out text within --max-ppl-increase. Files that fail are not registered and the\n"
        "command exits non-zero. An Ollama Modelfile is written beside each GGUF.\n\n"
        "examples:\n"
        "  workbench export my-model --gguf\n"
        "  workbench export my-model --gguf --quant q4_k_m,q8_0 --out ./dist --json"
    )
    consumes = ("model", "adapter", "dataset")
    produces = ("gguf",)
    Options: TypeAlias = Options
    supports_cancel = True

    def validate(self, options: Options, ctx: Context) -> None:
        from workbench.prompts import style_for_model
        from workbench_export.families import family_for, read_config
        from workbench_export.tokenizer_meta import check_tokenizer

        if not options.gguf:
            raise UserError("GGUF is the only export format; leave out --no-gguf")
        if not options.quant:
            raise UserError("--quant names no file type; give e.g. --quant f16 or --quant q4_k_m,q8_0")
        if len(set(options.quant)) != len(options.quant):
            raise UserError(f"--quant lists a type twice: {','.join(options.quant)}")
        art = ctx.artifact(options.model, ("model", "adapter"))
        model_dir = base_model_of(art.path, ctx).path if art.kind == "adapter" else art.path
        check_model_dir(model_dir)
        if art.kind == "adapter":
            check_weights(art.path / "adapter.safetensors")
        family_for(read_config(model_dir), model_dir / "model_config.yaml")
        check_tokenizer(model_dir)
        style_for_model(model_dir)  # a chat template that leaves the sandbox is refused before any run
        if options.out and Path(options.out).expanduser().exists() and not Path(options.out).expanduser().is_dir():
            raise UserError(f"--out {options.out} exists and is not a directory")

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_export.pipeline import export

        return export(options, ctx)
