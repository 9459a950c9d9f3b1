"""`workbench distill`: knowledge distillation from a teacher model into a LitGPT student.

Light module: options and input checks only (no torch). The teacher pass is in
`workbench_distill.teacher`, the loss in `workbench_distill.loss`, the loop in
`workbench_distill.train`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml
from workbench_pretrain.presets import PRESETS, describe

from workbench.datasets import read_card, require_type
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

if TYPE_CHECKING:
    from workbench.context import Context
    from workbench.store import Artifact


#: --init choices: where a fresh student's weights come from.
INITS = ("auto", "teacher", "random")


@dataclass
class Options(EpochOptions):
    teacher: str = artifact("model", positional=True, help="Model whose next-token distributions the student learns")
    dataset: str = artifact("dataset", positional=True, help="Pretrain dataset (text) to distill on")
    student: str = option(
        None, required=True, group="student",
        help="A preset (tiny, small, 125M, 350M) or a YAML file of litgpt.Config fields for a fresh "
             "student with the teacher's tokenizer, or a model in the workspace to start from",
    )
    init: str = option(
        "auto", choices=INITS, group="student",
        help="How a preset or YAML student starts: teacher (the teacher's embeddings, attention, norms and "
             "head, its most important blocks and MLP channels, as prune ranks them), random (as pretraining "
             "does), or auto: teacher when the student is the teacher's shape with fewer blocks or a narrower "
             "MLP, else random",
    )
    temperature: float = option(2.0, min=0.05, group="distillation",
                                help="Softmax temperature of teacher and student in the KL term")
    kd_weight: float = option(0.5, min=0.0, max=1.0, group="distillation",
                              help="Weight of the KL term; the hard-label cross-entropy gets 1 - kd_weight")
    top_k: int = option(32, min=1, group="distillation",
                        help="Teacher logits kept per token (the KL runs over these, renormalised)")
    max_seq_length: int | None = option(None, min=8, group="training",
                                        help="Tokens per training sequence; default: the shorter context of the two models")
    eval_batches: int = option(8, min=1, group="training", help="Micro-batches of validation data per pass", advanced=True)
    speed: bool = option(False, group="measure",
                         help="Also export teacher and student to Q4_K_M GGUF and time llama.cpp decoding (slower)")
    name: str | None = option(None, help="Name of the student model; default: <teacher>-distilled")
    batch_size: int = redefault(TrainingOptions, "batch_size", 16)
    max_steps: int | None = redefault(
        TrainingOptions, "max_steps", None,
        help="Stop after this many optimizer steps; the teacher then scores only the sequences these steps use",
    )
    lr: float | None = redefault(
        TrainingOptions, "lr", None,
        help="Peak learning rate (AdamW); default: the preset's, 1e-4 for a model in the workspace",
    )
    warmup_steps: int | None = redefault(TrainingOptions, "warmup_steps", None,
                                         help="Linear warmup steps; default: 5% of the steps")
    weight_decay: float = redefault(TrainingOptions, "weight_decay", 0.1)
    grad_clip: float | None = redefault(TrainingOptions, "grad_clip", 1.0)
    seed: int = redefault(TrainingOptions, "seed", 42,
                          help="Seed for the student's weights, the sequences used and their order")


class DistillStage(Stage):
    name = "distill"
    summary = "Distill a teacher into a smaller LitGPT student (top-k KL plus hard labels)"
    description = (
        "The teacher scores the dataset once, keeping its top-k logits per token on disk; then the\n"
        "student trains on T²·KL to the teacher's renormalised top-k distribution mixed with\n"
        "cross-entropy on the text itself, with the teacher no longer in memory.\n\n"
        + describe()
        + "\n\nexamples:\n"
        "  workbench distill my-model my-corpus --student tiny --max-steps 500\n"
        "  workbench distill my-model my-corpus --student my-small-model --kd-weight 0.7 --temperature 2"
    )
    consumes = ("model", "dataset")
    produces = ("model",)
    Options: TypeAlias = Options
    supports_resume = True
    supports_cancel = True

    def validate(self, options: Options, ctx: Context) -> None:
        check_batches(options)
        teacher = ctx.artifact(options.teacher, "model")
        check_model_dir(teacher.path)
        data = ctx.artifact(options.dataset, "dataset")
        require_type(read_card(data.path, options.dataset), "pretrain", options.dataset, "distill")
        kind, value = resolve_student(options.student, ctx)
        options.student = value  # recorded resolved, so the run is reproducible and resumable
        t_vocab = _model_config(teacher.path).get("vocab_size")
        if isinstance(t_vocab, int) and options.top_k > t_vocab:
            raise UserError(f"--top-k {options.top_k} is more than the teacher's vocabulary of {t_vocab} tokens")
        blocks = [model_block_size(teacher.path)]
        if kind == "model" and options.init == "teacher":
            raise UserError(f"--init teacher needs a preset or YAML student; model {value} starts from its own weights")
        if kind == "model":
            student = ctx.artifact(value, "model")
            check_model_dir(student.path)
            check_same_tokenizer(teacher, student)
            blocks.append(model_block_size(student.path))
        if options.max_seq_length is not None and options.max_seq_length > min(blocks):
            raise UserError(
                f"--max-seq-length {options.max_seq_length} is longer than the context of the "
                f"{'teacher' if blocks[0] == min(blocks) else 'student'} ({min(blocks)} tokens)"
            )

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_distill.train import distill

        return distill(options, ctx)


def resolve_student(spec: str | None, ctx: Context) -> tuple[str, str]:
    """("preset", name), ("config", absolute YAML path) or ("model", artifact id)."""
    if not spec:
        raise UserError("--student is required: a preset (tiny, small, 125M, 350M), a YAML config or a model")
    if spec in PRESETS:
        return "preset", spec
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"student config file {spec} does not exist")
        return "config", str(path.resolve())
    try:
        return "model", ctx.artifact(spec, "model").id
    except UserError:
        raise UserError(
            f"--student {spec} is neither a preset ({', '.join(PRESETS)}), a .yaml config file, "
            "nor a model in the workspace (`workbench models ls`)"
        ) from None


def student_kind(spec: str) -> str:
    """What a resolved --student names: preset, config or model."""
    if spec in PRESETS:
        return "preset"
    return "config" if spec.endswith((".yaml", ".yml")) else "model"


def model_block_size(model_dir: Path) -> int:
    return int(_model_config(model_dir).get("block_size", 4096))


def _model_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "model_config.yaml"
    if not path.exists():
        raise UserError(f"{model_dir} is not a LitGPT model directory: model_config.yaml is missing")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def tokenizer_digest(model_dir: Path) -> tuple[str, str]:
    """(file name, sha256) of the model's tokenizer file."""
    for name in ("tokenizer.json", "tokenizer.model"):
        path = model_dir / name
        if path.exists():
            return name, hashlib.sha256(path.read_bytes()).hexdigest()
    raise UserError(f"{model_dir} holds no tokenizer (tokenizer.json or tokenizer.model)")


def check_same_tokenizer(teacher: Artifact, student: Artifact) -> None:
    """A student learns the teacher's distribution over token ids: both must mean the same ids."""
    names = f"teacher '{teacher.name}' ({teacher.id}) and student '{student.name}' ({student.id})"
    t_vocab = _model_config(teacher.path).get("vocab_size")
    s_vocab = _model_config(student.path).get("vocab_size")
    if t_vocab != s_vocab:
        raise UserError(
            f"{names} have different vocabularies ({t_vocab} and {s_vocab} tokens); "
            "distillation needs one tokenizer for both"
        )
    t_file, t_hash = tokenizer_digest(teacher.path)
    s_file, s_hash = tokenizer_digest(student.path)
    if (t_file, t_hash) != (s_file, s_hash):
        raise UserError(
            f"{names} have different tokenizers ({t_file} and {s_file} differ); "
            "distillation needs one tokenizer for both"
        )
