"""What an evaluation will measure: the models, the data and the tasks, decided from the store.

Light module (SQLite and JSON only), so `EvalStage.validate` can refuse bad input before a run is
created. Every model in one evaluation is measured on the same data: a dataset given as an
option wins; otherwise the first dataset of each type found in the models' lineages is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import locations
from workbench.errors import UserError
from workbench.store import Artifact, Store

TASKS = ("perplexity", "mc", "generation", "preference", "judge", "bias")


def task_limits(options: Any) -> dict[str, int | None]:
    """How many examples each task takes: --limit, overridden per task by --limits TASK=N."""
    out: dict[str, int | None] = dict.fromkeys(TASKS, options.limit)
    for item in options.limits:
        task, sep, count = item.partition("=")
        task = task.strip().lower()
        if not sep or task not in TASKS or not count.strip().isdigit() or int(count) < 1:
            raise UserError(f"--limits takes TASK=N with TASK one of {', '.join(TASKS)} and N at least 1, "
                            f"not '{item}'")
        out[task] = int(count)
    return out
#: The task each dataset type feeds.
DATA_TASK = {"pretrain": "perplexity", "instruction": "generation", "preference": "preference"}
MC_SUITE = locations.asset("mc", "workbench-mc.jsonl")
BIAS_PAIRS = locations.asset("bias", "pairs.jsonl")


@dataclass
class Target:
    """One model to measure: a LitGPT checkpoint, or a GGUF file with its source checkpoint."""

    art: Artifact
    #: The checkpoint whose tokenizer (and, for a `model`, weights) are used; for a GGUF, the
    #: nearest `model` in its lineage, or None for a GGUF that came from elsewhere.
    model_dir: Path | None
    gguf_path: Path | None = None

    @property
    def id(self) -> str:
        return self.art.id

    @property
    def name(self) -> str:
        return self.art.name

    @property
    def backend(self) -> str:
        return "llama.cpp" if self.gguf_path is not None else "torch"


@dataclass
class Plan:
    targets: list[Target]
    tasks: list[str]
    #: Dataset artifacts by type (pretrain, instruction, preference), where one is used.
    data: dict[str, Artifact] = field(default_factory=dict)
    mc_path: Path | None = None
    bias_path: Path | None = None
    judge: Artifact | None = None
    notes: list[str] = field(default_factory=list)


def read_card(art: Artifact) -> dict[str, Any]:
    path = art.path / "card.json"
    if not path.exists():
        raise UserError(f"dataset {art.id} has no card.json at {path}; prepare it with `workbench data prepare`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return card if isinstance(card, dict) else {}


def gguf_file(art: Artifact) -> Path:
    path = art.path
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise UserError(f"gguf artifact {art.id} holds {len(found)} .gguf files in {path}, expected exactly one")
    return found[0]


def _nearest_model(store: Store, art: Artifact) -> Path | None:
    """The closest `model` ancestor holding a tokenizer.json: the GGUF's source checkpoint."""
    for _depth, anc, _run in sorted(store.lineage(art.id), key=lambda t: t[0]):
        if anc.kind == "model" and (anc.path / "tokenizer.json").exists():
            return anc.path
    return None


def target_for(store: Store, art: Artifact) -> Target:
    if art.kind == "gguf":
        return Target(art, _nearest_model(store, art), gguf_file(art))
    if art.kind != "model":
        raise UserError(f"{art.id} is a {art.kind}; eval measures model and gguf artifacts")
    if not (art.path / "model_config.yaml").exists():
        raise UserError(f"model {art.id} at {art.path} is not a LitGPT checkpoint (model_config.yaml is missing)")
    return Target(art, art.path)


def resolve_targets(store: Store, refs: list[str], lineage: bool) -> list[Target]:
    """The models to measure, without repeats; with `lineage`, each one's model ancestors too,
    oldest first, so the table reads left to right in the order the models were made."""
    if not refs:
        raise UserError("name at least one model or gguf to evaluate (workbench eval MODEL [MODEL ...])")
    arts: list[Artifact] = []
    seen: set[str] = set()
    for ref in refs:
        art = store.find_artifact(ref, ("model", "gguf"))
        family = [art]
        if lineage:
            ancestors = [a for d, a, _ in store.lineage(art.id) if d > 0 and a.kind == "model"]
            family = [*sorted(ancestors, key=lambda a: a.created_at), art]
        for a in family:
            if a.id not in seen:
                seen.add(a.id)
                arts.append(a)
    return [target_for(store, a) for a in arts]


def _lineage_dataset(store: Store, targets: list[Target], kind: str) -> Artifact | None:
    for target in targets:
        for _depth, anc, _run in sorted(store.lineage(target.id), key=lambda t: t[0]):
            if anc.kind == "dataset" and read_card(anc).get("type") == kind:
                return anc
    return None


def _given_dataset(store: Store, ref: str | None, kind: str, flag: str) -> Artifact | None:
    if not ref:
        return None
    art = store.find_artifact(ref, ("dataset",))
    found = read_card(art).get("type")
    if found != kind:
        raise UserError(
            f"{flag} {art.name} ({art.id}) holds '{found}' data, but {flag} needs a '{kind}' dataset; "
            f"prepare one with `workbench data prepare --type {kind}`"
        )
    if not (art.path / "val.jsonl").exists():
        raise UserError(f"dataset {art.name} ({art.id}) has no validation split ({art.path / 'val.jsonl'} is missing)")
    return art


def make_plan(store: Store, options: Any) -> Plan:
    """Models, data and tasks for `options`; a task asked for but impossible is a UserError."""
    # `--compare A B C` parses as compare=[A] and models=[B, C]: the compared ones come first.
    targets = resolve_targets(store, [*options.compare, *options.models], options.lineage)
    plan = Plan(targets=targets, tasks=[])
    given = {
        "pretrain": _given_dataset(store, options.dataset, "pretrain", "--dataset"),
        "instruction": _given_dataset(store, options.instructions, "instruction", "--instructions"),
        "preference": _given_dataset(store, options.preferences, "preference", "--preferences"),
    }
    for kind, art in given.items():
        art = art or _lineage_dataset(store, targets, kind)
        if art is not None and (art.path / "val.jsonl").exists():
            plan.data[kind] = art
    if options.mc:
        plan.mc_path = Path(options.mc).expanduser()
        if not plan.mc_path.exists():
            raise UserError(f"--mc {options.mc}: no such file or folder")
    elif MC_SUITE.exists():
        plan.mc_path = MC_SUITE
    if options.bias_pairs:
        plan.bias_path = Path(options.bias_pairs).expanduser()
        if not plan.bias_path.exists():
            raise UserError(f"--bias-pairs {options.bias_pairs}: no such file")
    elif BIAS_PAIRS.exists():
        plan.bias_path = BIAS_PAIRS
    if options.judge:
        plan.judge = store.find_artifact(options.judge, ("gguf",))

    available = {DATA_TASK[k] for k in plan.data}
    if plan.mc_path is not None:
        available.add("mc")
    if plan.bias_path is not None:
        available.add("bias")
    if plan.judge is not None and len(targets) >= 2 and "instruction" in plan.data:
        available.add("judge")
    if options.tasks:
        for task in options.tasks:
            if task not in available:
                raise UserError(f"task '{task}' cannot run: {_why_not(task, plan, len(targets))}")
        plan.tasks = [t for t in TASKS if t in options.tasks]
    else:
        plan.tasks = [t for t in TASKS if t in available]
        if not plan.tasks:
            raise UserError("there is nothing to evaluate: pass --dataset, --instructions, --preferences or --mc")
    if plan.judge is not None and "judge" not in plan.tasks:
        plan.notes.append(f"--judge is not used: {_why_not('judge', plan, len(targets))}")
    # Keep only the data the chosen tasks read (the judge reads the instruction prompts).
    wanted = {kind for kind, task in DATA_TASK.items() if task in plan.tasks}
    if "judge" in plan.tasks:
        wanted.add("instruction")
    plan.data = {kind: art for kind, art in plan.data.items() if kind in wanted}
    return plan


def _why_not(task: str, plan: Plan, n_models: int) -> str:
    if task == "perplexity":
        return "no pretrain dataset was given (--dataset) or found in the models' lineage"
    if task == "generation":
        return "no instruction dataset was given (--instructions) or found in the models' lineage"
    if task == "preference":
        return "no preference dataset was given (--preferences) or found in the models' lineage"
    if task == "mc":
        return f"no multiple-choice file: pass --mc FILE (the shipped suite {MC_SUITE} is missing)"
    if task == "bias":
        return f"no sentence pairs: pass --bias-pairs FILE (the shipped pairs {BIAS_PAIRS} are missing)"
    if plan.judge is None:
        return "it needs a judge model: pass --judge GGUF"
    if n_models < 2:
        return "it compares two or more models; name several models or use --lineage"
    return "it needs instruction prompts: pass --instructions DATASET"
