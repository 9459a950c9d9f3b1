"""What the screens show, computed from the core without Textual: the stage catalogue in
lifecycle order, each stage's state for a model, the artifact lineage forest, evaluation
comparisons and the short formats every screen shares.

Everything here is plain Python over `workbench.stages` and `workbench.store`, so it is cheap,
testable on its own and safe to call from a thread worker (open the Store in that thread).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workbench import locations, stages

if TYPE_CHECKING:  # the store (sqlite3) and options (argparse) load after the first frame
    from workbench.options import Field
    from workbench.store import Artifact, Run, Store

#: The lifecycle, in the order a person walks it; third-party stages follow.
LIFECYCLE: tuple[tuple[str, str], ...] = (
    ("download", "Download"),
    ("data.prepare", "Data"),
    ("tokenizer.train", "Tokenizer"),
    ("pretrain", "Pretrain"),
    ("finetune.lora", "Finetune LoRA"),
    ("finetune.classify", "Classifier"),
    ("dpo", "DPO"),
    ("eval", "Evaluate"),
    ("export", "Export"),
    ("chat", "Chat"),
)
#: Kinds that are a model in some form: the pipeline follows one of these.
MODEL_KINDS = ("model", "adapter", "classifier", "gguf")
#: What the chat screen can talk to.
CHAT_KINDS = ("gguf", "model")
ACTIVE = ("queued", "running")
#: The dataset type (its `metadata["type"]`, set by the data stage) a lifecycle option takes.
DATASET_TYPES: dict[tuple[str, str], str] = {
    ("pretrain", "dataset"): "pretrain",
    ("finetune.lora", "dataset"): "instruction",
    ("dpo", "dataset"): "preference",
}
#: What usually comes after a stage that finished: its name, or by the dataset type it made.
NEXT: dict[str, str | dict[str, str]] = {
    "download": "finetune.lora",
    "data.prepare": {"pretrain": "tokenizer.train", "instruction": "finetune.lora", "preference": "dpo",
                     "classification": "finetune.classify"},
    "tokenizer.train": "pretrain",
    "pretrain": "finetune.lora",
    "finetune.lora": "export",
    "finetune.classify": "eval",
    "dpo": "export",
    "eval": "export",
    "export": "chat",
}


@contextmanager
def open_store(create: bool = False) -> Iterator[Store | None]:
    """A Store for this thread, or None when the workspace has no index yet and `create` is off
    (reading an empty workspace must not create one)."""
    if not create and not locations.db_path().exists():
        yield None
        return
    from workbench.store import Store

    store = Store()
    try:
        yield store
    finally:
        store.close()


# ------------------------------------------------------------------------------------------
# the stage catalogue


@dataclass
class Entry:
    """One row of the pipeline: a lifecycle stage, the chat command or a third-party stage."""

    name: str
    label: str
    kind: str  # "stage" or "command"
    info: stages.PluginInfo | None
    lifecycle: bool = True

    @property
    def loaded(self) -> bool:
        return self.info is not None and self.info.ok

    @property
    def summary(self) -> str:
        if self.info is None:
            return "not installed"
        if self.info.status == "error":
            return self.info.error
        return self.info.summary

    @property
    def stage_cls(self) -> Any:
        return self.info.obj if self.info is not None and self.loaded and self.kind == "stage" else None


def catalog() -> list[Entry]:
    """Entry-point metadata only (nothing imported): lifecycle stages, then plugins by name."""
    found = {i.name: i for i in stages.discover(stages.STAGE_GROUP)}
    commands = {i.name: i for i in stages.discover(stages.COMMAND_GROUP)}
    entries = []
    for name, label in LIFECYCLE:
        if name == "chat":
            entries.append(Entry(name, label, "command", commands.get(name)))
        else:
            entries.append(Entry(name, label, "stage", found.pop(name, None)))
    for name in sorted(found):
        entries.append(Entry(name, name, "stage", found[name], lifecycle=False))
    return entries


def load_catalog(entries: Iterable[Entry]) -> None:
    """Import every plugin; a broken one is marked on its entry, never raised."""
    for entry in entries:
        if entry.info is not None:
            stages.load(entry.info)


# ------------------------------------------------------------------------------------------
# pipeline state for a model


@dataclass
class StageState:
    state: str  # done, running, failed, cancelled, ready, blocked, unavailable, missing, loading
    detail: str = ""


def _refs(value: Any) -> set[str]:
    """Every string inside a run's options: artifact references are ids after resolution."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_refs(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_refs(v) for v in value)) if value else set()
    return set()


def related(store: Store, art_id: str) -> tuple[dict[str, Artifact], set[str]]:
    """(ancestors, itself and descendants by id; the ids of itself and its descendants)."""
    family = {art.id: art for _, art, _ in store.lineage(art_id)}
    below = {art_id}
    queue = [art_id]
    while queue:
        for child in store.children(queue.pop()):
            if child.id not in below:
                below.add(child.id)
                family[child.id] = child
                queue.append(child.id)
    return family, below


def fits(stage: str, field: Field, art: Artifact) -> bool:
    """Whether `art` is something `field` of `stage` takes: its kind, and its dataset type where
    the stage needs one (a dataset of unknown type is offered, and the stage decides)."""
    if not field.artifact or art.kind not in field.artifact:
        return False
    wanted = DATASET_TYPES.get((stage, field.name))
    found = art.metadata.get("type") if art.kind == "dataset" else None
    return wanted is None or found is None or found == wanted


def needs(entry: Entry, artifacts: list[Artifact]) -> list[str]:
    """The inputs `entry` cannot run without and the workspace does not have, in words."""
    if entry.kind == "command":
        return [] if any(a.kind in CHAT_KINDS for a in artifacts) else ["a gguf or model"]
    from workbench.options import fields

    missing = []
    for f in fields(entry.stage_cls.Options):
        if f.artifact and f.required and f.default in (None, [], ()) and \
                not any(fits(entry.name, f, a) for a in artifacts):
            what = DATASET_TYPES.get((entry.name, f.name), "")
            missing.append(f"{'an' if what[:1] in 'aeiou' and what else 'a'} {what + ' ' if what else ''}"
                           f"{' or '.join(f.artifact)} ({f.name})")
    return missing


def next_stage(stage: str, result: dict[str, Any] | None) -> tuple[str, str] | None:
    """(name, label) of the stage a person usually runs after `stage` finished with `result`."""
    following = NEXT.get(stage)
    if isinstance(following, dict):
        following = following.get(str((result or {}).get("type")))
    return (following, dict(LIFECYCLE)[following]) if following else None


def pipeline_states(store: Store | None, entries: list[Entry], model_id: str | None) -> dict[str, StageState]:
    """The state of every entry for the selected model (or for the workspace when none).

    A stage is done when an artifact in the model's lineage or among its descendants was made
    by a run of it, or its newest run on the model finished; running while such a run is live.
    """
    runs: list[Run] = store.list_runs(limit=1000) if store else []
    artifacts = store.list_artifacts() if store else []
    family: dict[str, Artifact] = {}
    below: set[str] = set()
    if store and model_id:
        family, below = related(store, model_id)
    made_by = {a.run_id for a in family.values() if a.run_id}
    chatted = set()
    if store:
        names = {a.name for a in family.values()}
        chatted = {c["model"] for c in store.list_conversations()} & (set(family) | names)

    states: dict[str, StageState] = {}
    for entry in entries:
        mine = [r for r in runs if r.stage == entry.name and (
            model_id is None or r.id in made_by or _refs(r.options) & below)]
        produced = [a for a in family.values() if a.run_id in {r.id for r in mine}]
        newest = mine[0] if mine else None
        live = next((r for r in mine if r.status in ACTIVE), None)  # a resumed older run, say
        if entry.info is None:
            states[entry.name] = StageState("missing", "not installed")
        elif live is not None:
            states[entry.name] = StageState("running", live.id)
        elif produced:
            states[entry.name] = StageState("done", produced[-1].id)
        elif entry.name == "chat" and chatted:
            states[entry.name] = StageState("done", "conversations saved")
        elif newest is not None and newest.status in ("done", "failed", "cancelled"):
            states[entry.name] = StageState(newest.status, newest.id)
        elif entry.info.status == "error":
            states[entry.name] = StageState("unavailable", entry.info.error)
        elif entry.info.status == "not loaded":
            states[entry.name] = StageState("loading")
        elif missing := needs(entry, artifacts):
            states[entry.name] = StageState("blocked", "needs " + ", ".join(missing))
        else:
            states[entry.name] = StageState("ready")
    return states


STATE_STYLE = {
    "done": ("✔ done", "$success"),
    "running": ("● running", "$accent"),
    "failed": ("✘ failed", "$error"),
    "cancelled": ("‖ cancelled", "$warning"),
    "ready": ("· ready", "$foreground-muted"),
    "blocked": ("⊘ blocked", "$warning"),
    "loading": ("… loading", "$foreground-muted"),
    "unavailable": ("✘ unavailable", "$error"),
    "missing": ("– not installed", "$foreground-muted"),
}


# ------------------------------------------------------------------------------------------
# artifacts


@dataclass
class Node:
    artifact: Artifact
    children: list[Node] = field(default_factory=list)


def forest(artifacts: list[Artifact]) -> list[Node]:
    """Artifacts as lineage trees: each one hangs under its first model-like parent (base →
    pretrain → LoRA → DPO → GGUF); datasets and tokenizers hang under what they came from."""
    by_id = {a.id: Node(a) for a in artifacts}
    roots = []
    for art in sorted(artifacts, key=lambda a: a.created_at):
        parents = [by_id[p].artifact for p in art.parents if p in by_id]
        model_parents = [p for p in parents if p.kind in MODEL_KINDS]
        if model_parents:
            by_id[model_parents[0].id].children.append(by_id[art.id])
        elif parents and art.kind not in MODEL_KINDS:
            by_id[parents[0].id].children.append(by_id[art.id])
        else:
            roots.append(by_id[art.id])
    return roots


def key_metrics(art: Artifact, n: int = 2) -> str:
    return "  ".join(f"{k}={fmt_num(v)}" for k, v in list(art.metrics.items())[:n])


@dataclass
class Comparison:
    report: Artifact
    models: list[str]
    labels: dict[str, str]
    metrics: dict[str, dict[str, float]]

    def values(self, metric: str) -> list[float | None]:
        row = self.metrics.get(metric, {})
        return [row.get(m) for m in self.models]


def comparison_of(report: Artifact, names: dict[str, str]) -> Comparison | None:
    comp = report.metadata.get("comparison")
    if not isinstance(comp, dict):
        return None
    models = [str(m) for m in comp.get("models") or []]
    metrics = comp.get("metrics") or {}
    if not models or not isinstance(metrics, dict):
        return None
    clean = {str(k): {str(m): float(v) for m, v in row.items() if isinstance(v, (int, float))}
             for k, row in metrics.items() if isinstance(row, dict)}
    return Comparison(report, models, {m: names.get(m, m) for m in models}, clean)


def comparison_for(art: Artifact, artifacts: list[Artifact]) -> Comparison | None:
    """The evaluation comparison to show next to `art`: itself if it is a report, else the
    newest report that compares it or was made from it."""
    names = {a.id: a.name for a in artifacts}
    if art.kind == "eval-report":
        return comparison_of(art, names)
    for report in sorted((a for a in artifacts if a.kind == "eval-report"),
                         key=lambda a: a.created_at, reverse=True):
        comp = comparison_of(report, names)
        if comp and (art.id in comp.models or art.id in report.parents):
            return comp
    return None


# ------------------------------------------------------------------------------------------
# formats


def fmt_num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.4g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def clip(text: str, width: int) -> str:
    """`text` in at most `width` cells, cut at a word where it can, with "…" where it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    cut = text[:width - 1]
    word = cut.rsplit(" ", 1)[0]
    return (word if len(word) > width // 2 else cut).rstrip(" ,;:·-") + "…"


def fmt_time(t: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(t)) if t else "-"

