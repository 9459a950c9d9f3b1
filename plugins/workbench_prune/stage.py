"""`workbench prune MODEL --target 0.75`: structured pruning, then an optional healing pass.

Light module: options, the removal plan and the input checks. Calibration, surgery, healing and
the measurements (torch, litgpt, llama.cpp) are imported inside `run()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from workbench.datasets import read_card, require_type
from workbench.errors import UserError
from workbench.options import TrainingOptions, artifact, option, redefault
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir
from workbench_prune.plan import METHODS, make_plan

if TYPE_CHECKING:
    from workbench.context import Context
    from workbench.store import Artifact

LORA_TARGETS = ("query", "key", "value", "projection", "mlp", "head")


@dataclass
class Options(TrainingOptions):
    model: str = artifact("model", positional=True, help="Model to prune")
    target: float = option(0.75, help="Share of the model's parameters to keep (above 0, at most 1)", min=0, max=1)
    method: list[str] = option(
        ["channels", "heads"], choices=METHODS,
        help="Units to remove: blocks (whole layers), channels (MLP), heads (whole KV groups); comma-separated",
    )
    calibration: str | None = artifact(
        "dataset", required=False,
        help="Pretrain dataset whose train split ranks the units; default: the pretrain dataset the model was trained on",
    )
    calibration_samples: int = option(32, min=1, group="calibration",
                                      help="Sequences of calibration text run through the model")
    max_seq_length: int | None = option(None, min=8, group="calibration",
                                        help="Tokens per calibration and healing sequence; default: min(context, 256)")
    heal: str = option("lora", choices=["lora", "full", "none"], group="healing",
                       help="Train the pruned model to recover: a LoRA adapter merged in, all weights, or not at all")
    heal_data: str | None = artifact("dataset", required=False,
                                     help="Pretrain dataset to heal on; default: the calibration dataset")
    eval_batches: int = option(8, min=1, group="training", help="Validation sequences per pass", advanced=True)
    rank: int = option(16, min=1, group="lora", help="LoRA rank (--heal lora)")
    alpha: int = option(32, min=1, group="lora", help="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = option(0.0, min=0, max=1, group="lora", help="Dropout on the LoRA path")
    targets: list[str] = option(["query", "key", "value", "projection", "mlp"], choices=LORA_TARGETS, group="lora",
                                help="Layers that get an adapter")
    speed: bool = option(False, group="measure",
                         help="Also export both models to Q4_K_M GGUF and time llama.cpp decoding (slower)")
    ppl_tokens: int = option(4096, min=16, group="measure", advanced=True,
                             help="Held-out tokens the perplexity comparison reads")
    name: str | None = option(None, help="Name of the pruned model; default: <model>-pruned<percent>")
    max_steps: int = redefault(TrainingOptions, "max_steps", 100, help="Optimizer steps of healing",
                               aliases=("heal_steps",))
    lr: float | None = redefault(TrainingOptions, "lr", None,
                                 help="Peak learning rate of healing; default: 1e-3 for lora, 3e-4 for full")
    batch_size: int = redefault(TrainingOptions, "batch_size", 8)
    warmup_steps: int = redefault(TrainingOptions, "warmup_steps", 10)
    grad_clip: float | None = redefault(TrainingOptions, "grad_clip", 1.0)
    checkpoint_every: int = redefault(TrainingOptions, "checkpoint_every", 50)
    seed: int = redefault(TrainingOptions, "seed", 42,
                          help="Seed for calibration order, healing data order and adapter init")


def pretrain_dataset(ctx: Context, ref: str, flag: str) -> Artifact:
    art = ctx.artifact(ref, "dataset")
    require_type(read_card(art.path, art.id), "pretrain", art.id, f"prune {flag}")
    return art


def calibration_dataset(ctx: Context, options: Options, model: Artifact) -> Artifact:
    """--calibration, else the nearest pretrain dataset in the model's lineage."""
    if options.calibration:
        return pretrain_dataset(ctx, options.calibration, "--calibration")
    for _depth, art, _run in ctx.store.lineage(model.id):
        if art.kind == "dataset" and read_card(art.path, art.id).get("type") == "pretrain":
            return art
    raise UserError(
        f"model {model.id} was not trained on a pretrain dataset in this workspace; "
        "give one with --calibration DATASET (`workbench data prepare --type pretrain`)"
    )


class PruneStage(Stage):
    name = "prune"
    summary = "Structured pruning: drop blocks, MLP channels or KV groups, then heal"
    description = (
        "Ranks units by their measured effect on calibration text (a block by 1 - cosine of its\n"
        "input and output, an MLP channel by activation x weight magnitude, a KV group by the size of\n"
        "its heads' output), removes the least important until --target of the parameters is left,\n"
        "and writes an ordinary LitGPT model with a smaller model_config.yaml (it exports to GGUF).\n"
        "An optional healing pass trains it on --heal-data. The result table compares parameters,\n"
        "size and held-out perplexity with the source model (and Q4_K_M decode speed with --speed).\n\n"
        "examples:\n"
        "  workbench prune my-model --target 0.75\n"
        "  workbench prune my-model --target 0.6 --method blocks,channels --heal full --heal-steps 300\n"
        "  workbench prune my-model --target 0.8 --calibration my-text --heal none --speed"
    )
    consumes = ("model", "dataset")
    produces = ("model",)
    Options: TypeAlias = Options
    supports_resume = True

    def validate(self, options: Options, ctx: Context) -> None:
        from workbench_export.families import read_config

        model = ctx.artifact(options.model, "model")
        check_model_dir(model.path)
        make_plan(read_config(model.path), options.target, options.method)
        calibration_dataset(ctx, options, model)
        if options.heal_data:
            pretrain_dataset(ctx, options.heal_data, "--heal-data")
        if options.micro_batch_size is not None and options.batch_size % options.micro_batch_size:
            raise UserError(f"--batch-size {options.batch_size} is not a multiple of "
                            f"--micro-batch-size {options.micro_batch_size}")

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_prune.run import prune

        return prune(options, ctx)
