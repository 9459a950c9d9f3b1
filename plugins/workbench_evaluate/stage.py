"""`workbench eval`: measure models (LitGPT checkpoints and GGUF files) and compare them.

Light module: the measuring code (torch, llama.cpp) lives in `workbench_evaluate.runner` and is
imported inside `run()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from workbench.errors import UserError
from workbench.options import artifact, option
from workbench.stages import Stage
from workbench.weightfiles import check_model_dir, check_weights
from workbench_evaluate.biasfile import read_bias_pairs
from workbench_evaluate.mcfile import FORMATS, read_questions
from workbench_evaluate.plan import TASKS, make_plan, task_limits

if TYPE_CHECKING:
    from workbench.context import Context

PRECISIONS = ("32-true", "bf16-true", "16-true", "64-true")


@dataclass
class Options:
    models: list[str] = artifact(
        ("model", "gguf"), positional=True, required=False, default=[],  # type: ignore[arg-type]
        help="Models to measure: model (LitGPT checkpoint) or gguf artifacts; several are compared side by side",
    )
    compare: list[str] = artifact(
        ("model", "gguf"), required=False, default=[],  # type: ignore[arg-type]
        help="Models to compare side by side; `--compare A B C` reads like `eval A B C` (these come first)",
    )
    lineage: bool = option(False, help="Also measure every model the given ones were made from, oldest first")
    tasks: list[str] | None = option(
        None, choices=TASKS,
        help="Tasks to run, comma-separated (default: every task whose data is given or found in the lineage)",
    )
    dataset: str | None = artifact(
        "dataset", required=False,
        help="Pretrain dataset whose validation split measures perplexity (default: the one in the lineage)",
    )
    instructions: str | None = artifact(
        "dataset", required=False,
        help="Instruction dataset whose validation split is answered (default: the one in the lineage)",
    )
    preferences: str | None = artifact(
        "dataset", required=False,
        help="Preference dataset whose validation pairs are scored (default: the one in the lineage)",
    )
    mc: str | None = option(
        None, group="data",
        help="Multiple-choice questions in MMLU format: a .jsonl or .csv file or a folder of them "
             "(default: the suite in assets/mc)",
    )
    mc_format: str = option(
        "letter", choices=FORMATS, group="data",
        help="letter: MMLU's prompt, the answer letters are scored; cloze: each choice's text is scored "
             "(length-normalised), which small models handle better",
    )
    bias_pairs: str | None = option(
        None, group="data",
        help="Bias probes: a .jsonl file of sentence pairs that swap one group word "
             "(default: the pairs in assets/bias; docs/eval.md gives the format)",
    )
    judge: str | None = artifact(
        "gguf", required=False,
        help="GGUF model that judges each model's answers against the first model's (LLM-as-judge win rate)",
    )
    limit: int | None = option(
        None, min=1, help="At most this many examples per task, in file order (for perplexity: documents)",
    )
    limits: list[str] = option(
        [], advanced=True,
        help="Per-task limits that override --limit, as TASK=N (generation=50,preference=200); "
             "scoring tasks are cheap, generating answers is not",
    )
    context: int | None = option(
        None, min=8, advanced=True,
        help="Longest sequence scored at once: the perplexity window (default: the model's context, at most 1024)",
    )
    stride: int | None = option(
        None, min=1, advanced=True,
        help="Step between perplexity windows; the overlap gives later tokens context (default: half the window)",
    )
    max_new_tokens: int = option(64, min=1, help="Longest generated answer, in tokens")
    batch_size: int = option(8, min=1, advanced=True, help="Sequences per torch forward pass")
    device: str = option("auto", choices=["auto", "cpu", "cuda", "mps"], help="Where to run the models")
    precision: str | None = option(
        None, choices=PRECISIONS, advanced=True,
        help="Torch precision; default: what `workbench doctor` picks (32-true on CPU)",
    )
    threads: int | None = option(
        None, min=1, advanced=True,
        help="CPU threads for torch and llama.cpp (default: the physical cores other processes leave free)",
    )
    name: str | None = option(None, help="Name of the eval-report artifact (default: eval-<model names>)")


class EvalStage(Stage):
    name = "eval"
    summary = "Measure models (checkpoints and GGUF) and compare them side by side"
    description = (
        "Tasks: perplexity (held-out text, the same token ids for torch and llama.cpp), mc (multiple choice "
        "in MMLU format, accuracy with a 95% Wilson interval), generation (held-out instructions: exact match, "
        "BLEU, ROUGE-L), preference (chosen vs rejected log-probability), judge (a GGUF judges answers, "
        "both orders), bias (sentence pairs that swap a gender, name, nationality or religion: the "
        "log-probability gap per attribute with bootstrap intervals). Decoding is greedy, so a re-run gives the same numbers.\n\n"
        "examples:\n"
        "  workbench eval my-model                        # every task whose data is in its lineage\n"
        "  workbench eval base sft dpo --limit 100        # one table, one column per model\n"
        "  workbench eval my-dpo --lineage                # the model and the models it came from\n"
        "  workbench eval a b --judge judge-q8 --tasks generation,judge\n"
        "  workbench eval my-model --mc ~/data/mmlu/test --tasks mc\n"
        "  workbench eval base tuned --tasks bias         # bias gaps and their change"
    )
    consumes = ("model", "gguf", "dataset")
    produces = ("eval-report",)
    Options: TypeAlias = Options
    supports_cancel = True

    def validate(self, options: Options, ctx: Context) -> None:
        if options.stride is not None and options.context is not None and options.stride > options.context:
            raise UserError(f"--stride {options.stride} is longer than --context {options.context}; "
                            "windows would skip tokens")
        task_limits(options)
        plan = make_plan(ctx.store, options)
        for model in plan.targets:
            if model.gguf_path is not None:
                check_weights(model.gguf_path)
            elif model.model_dir is not None:
                check_model_dir(model.model_dir)
        if "mc" in plan.tasks and plan.mc_path is not None:
            read_questions(plan.mc_path)  # names the first bad row by file and line
        if "bias" in plan.tasks and plan.bias_path is not None:
            read_bias_pairs(plan.bias_path)

    def run(self, options: Options, ctx: Context) -> dict[str, Any]:
        from workbench_evaluate.runner import evaluate

        return evaluate(options, ctx)
