"""The lifecycle demo's report: per stage, the metric that stage exists to improve.

- pretraining: validation perplexity of the trained model against the untrained one (step 0);
- LoRA: held-out instruction exact match before and after;
- DPO: held-out preference accuracy before and after;
- classification: held-out accuracy of the classifier against always answering the commonest label;
- forgetting: corpus perplexity after LoRA and after DPO, which may rise by at most `FORGETTING_BOUND`
  times the pretrained model's;
- export: size and perplexity of each GGUF build against F16;
- the closing chat: how many of its fixed held-out questions the Q4_K_M build answered right.
- with `--with-optimize`, distillation and pruning: parameters, weights file size and held-out
  perplexity of the smaller model against its source, every perplexity from one eval run over the
  three models (so the source has one figure), with a line saying what it was measured on.

Written as a terminal table, a Markdown file with text plots and an HTML page with charts
(`demo_html.py`), and registered as an `eval-report` artifact so it shows up beside the models it
describes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.events import read_events
from workbench.hardware import fmt_bytes

#: How far corpus perplexity may rise after instruction and preference tuning before the report
#: calls it forgetting rather than the price of a new skill.
FORGETTING_BOUND = 2.0


@dataclass
class Row:
    stage: str
    metric: str
    before: float | None
    after: float | None
    better: str  # "lower", "higher", or "bounded": lower is better, but up to bound × before is ok
    before_label: str
    after_label: str
    bound: float | None = None

    @property
    def ok(self) -> bool:
        if self.before is None or self.after is None:
            return False
        if self.better == "bounded":
            return self.after <= (self.bound or 1.0) * self.before
        return self.after < self.before if self.better == "lower" else self.after > self.before

    @property
    def verdict(self) -> str:
        if self.better == "bounded":
            return f"within {self.bound:g}×" if self.ok else f"OVER {self.bound:g}×"
        return "improved" if self.ok else "NOT improved"

    @property
    def warning(self) -> str:
        if self.better == "bounded":
            return f"{self.metric} after {self.stage} rose more than {self.bound:g}× ({self.before} → {self.after})"
        return f"{self.stage} did not improve {self.metric} ({self.before} → {self.after})"


@dataclass
class Report:
    rows: list[Row]
    builds: list[dict[str, Any]]
    transcript: list[dict[str, Any]]
    minutes: float
    path: Path | None = None  # report.md; report.html beside it
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # stage -> series -> points
    optimized: list[dict[str, Any]] = field(default_factory=list)  # demo_optimize.optimize_rows

    @property
    def builds_ok(self) -> bool:
        f16 = next((b for b in self.builds if b["quant"] == "f16"), None)
        return f16 is not None and all(
            b["size_bytes"] < f16["size_bytes"] for b in self.builds if b["quant"] != "f16")

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.rows) and self.builds_ok

    @property
    def chat_correct(self) -> int:
        return sum(bool(turn.get("correct")) for turn in self.transcript)

    @property
    def chat_line(self) -> str:
        return f"The Q4_K_M build answered {self.chat_correct} of {len(self.transcript)} held-out questions correctly."

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "stages": [{**r.__dict__, "ok": r.ok} for r in self.rows],
            "gguf": self.builds, "optimize": self.optimized, "chat": self.transcript, "chat_correct": self.chat_correct,
            "minutes": round(self.minutes, 2), "all_ok": self.all_ok,
            "report": str(self.path) if self.path else None, "html": str(self.html) if self.html else None,
        }

    @property
    def html(self) -> Path | None:
        return self.path.with_name("report.html") if self.path else None

    def print(self, console: Any) -> None:
        from rich.table import Table

        t = Table(title="What each stage achieved", title_justify="left")
        for col in ("stage", "metric", "before", "after", ""):
            t.add_column(col)
        for r in self.rows:
            mark = f"[green]{r.verdict}[/]" if r.ok else f"[red]{r.verdict}[/]"
            t.add_row(r.stage, r.metric, f"{_num(r.before)} ({r.before_label})", f"{_num(r.after)} ({r.after_label})", mark)
        console.print(t)
        g = Table(title="GGUF builds against F16", title_justify="left")
        for col in ("build", "size", "size vs F16", "perplexity", "ppl vs F16"):
            g.add_column(col)
        for b in self.builds:
            g.add_row(b["quant"], fmt_bytes(b["size_bytes"]), f"{b['size_ratio']:.2f}×", _num(b["perplexity"]),
                      f"{b['ppl_change']:+.1%}" if b["ppl_change"] is not None else "-")
        console.print(g)
        if self.optimized:
            o = Table(title="Smaller models against their source", title_justify="left")
            for col in ("step", "parameters", "weights file", "held-out perplexity"):
                o.add_column(col)
            for row in _optimized_cells(self.optimized):
                o.add_row(*row)
            console.print(o)
            console.print(_optimized_note(self.optimized))
        if self.transcript:
            console.print(self.chat_line)
        console.print(f"demo took {self.minutes:.1f} min")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _optimized_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Per optional step: each figure of the smaller model, then its source's and the ratio."""
    def against(value: float | None, base: float | None, shown: Any) -> str:
        if value is None or base is None:
            return "-"
        return f"{shown(value)} (source {shown(base)}, {value / base:.2f}×)"

    return [[r["method"], against(r["params"], r["source_params"], lambda v: f"{v:,}"),
             against(r["size_bytes"], r["source_size_bytes"], fmt_bytes),
             against(r["perplexity"], r["source_perplexity"], _num)] for r in rows]


def _optimized_note(rows: list[dict[str, Any]]) -> str:
    """What the smaller models' table measured perplexity on (one eval run for all its rows)."""
    return str(rows[0]["perplexity_on"])


def _metric_series(run_dir: Path, name: str) -> list[tuple[int, float]]:
    return [(e.get("step") or 0, e["values"][name]) for e in read_events(run_dir / "events.jsonl")
            if e["type"] == "metric" and name in e["values"]]


#: The demo steps that train, as the report names them; distillation and pruning only when
#: `--with-optimize` ran. Each stage reports its training loss as `loss` (with `--replay`, its
#: own part as `task_loss` or `preference_loss` beside `replay_loss`) and, at each evaluation,
#: its held-out loss as `val_loss`.
CURVE_STAGES = (("pretrain", "pretraining"), ("lora", "LoRA"), ("dpo", "DPO"), ("classify", "classification"),
                ("distill", "distillation"), ("prune", "pruning (LoRA heal)"))


def training_curves(state: dict[str, Any], store: Any, optimized: bool) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per training step of the demo: train and held-out loss by optimizer step (pretraining also
    its validation perplexity). A resumed run repeats the steps after its checkpoint; the later
    value of a step is the one that led to the model, so it is kept."""
    curves = {}
    for key, title in CURVE_STAGES:
        if key not in state or (key in ("distill", "prune") and not optimized):
            continue
        run_dir = store.get_run(state[key]["run_id"]).run_dir
        names = {"train loss": "loss", "held-out loss": "val_loss"}
        # With --replay, `loss` adds the replayed text's loss: plot the task's own beside it.
        task = next((n for n in ("task_loss", "preference_loss") if _metric_series(run_dir, n)), None)
        if task is not None:
            names = {"train loss": task, "replay loss": "replay_loss", "held-out loss": "val_loss"}
        if key == "pretrain":
            names["validation perplexity"] = "val_ppl"
        curves[title] = {label: sorted(dict(_metric_series(run_dir, name)).items()) for label, name in names.items()}
    return curves


def build_report(outputs: dict[str, dict[str, str]], state: dict[str, Any], store: Any,
                 transcript: list[dict[str, Any]], minutes: float,
                 optimized: list[dict[str, Any]] | None = None) -> Report:
    pretrain_run = store.get_run(state["pretrain"]["run_id"])
    val = _metric_series(pretrain_run.run_dir, "val_ppl")
    rows = [Row("pretrain", "validation perplexity", val[0][1] if val else None, val[-1][1] if val else None,
                "lower", "untrained", "pretrained")]
    eval_run = store.get_run(state["eval"]["run_id"])
    figures = (eval_run.result or {}).get("metrics", {})
    base, sft, dpo = outputs["pretrain"]["model"], outputs["lora"]["model"], outputs["dpo"]["model"]

    def figure(model: str, name: str) -> float | None:
        return figures.get(model, {}).get(name)

    rows.append(Row("LoRA", "instruction exact match (held-out)", figure(base, "exact_match"),
                    figure(sft, "exact_match"), "higher", "pretrained", "LoRA"))
    rows.append(Row("DPO", "preference accuracy (held-out)", figure(sft, "preference_accuracy"),
                    figure(dpo, "preference_accuracy"), "higher", "LoRA", "DPO"))
    rows.append(_classification_row(store.find_artifact(outputs["classify"]["classifier"])))
    for stage, model in (("LoRA", sft), ("DPO", dpo)):
        rows.append(Row(stage, "corpus perplexity (forgetting)", figure(base, "perplexity"), figure(model, "perplexity"),
                        "bounded", "pretrained", stage, bound=FORGETTING_BOUND))

    builds = []
    for art in store.list_artifacts("gguf"):
        if art.run_id == state["export"]["run_id"]:
            builds.append({"quant": art.metadata.get("quant"), "id": art.id, "size_bytes": art.size_bytes,
                           "perplexity": art.metrics.get("perplexity")})
    f16 = next((b for b in builds if b["quant"] == "f16"), None)
    for b in builds:
        b["size_ratio"] = b["size_bytes"] / f16["size_bytes"] if f16 else 1.0
        b["ppl_change"] = (b["perplexity"] / f16["perplexity"] - 1) if f16 and b["perplexity"] and f16["perplexity"] else None
    # Time spent in the runs themselves, so a re-run that reuses every step still reports it.
    step_runs = [store.get_run(entry["run_id"]) for entry in state.values()]
    run_minutes = sum((r.ended_at or 0) - (r.started_at or 0) for r in step_runs if r.started_at) / 60
    report = Report(rows, builds, transcript, max(minutes, run_minutes),
                    curves=training_curves(state, store, bool(optimized)), optimized=optimized or [])
    _write(report, outputs, store)
    return report


def _classification_row(classifier: Any) -> Row:
    """Held-out accuracy against the accuracy of always answering the commonest held-out label."""
    confusion = classifier.metadata.get("confusion_matrix") or []
    total = sum(map(sum, confusion))
    majority = max(map(sum, confusion)) / total if total else None
    return Row("classify", "spam/ham accuracy (held-out)", majority, classifier.metrics.get("accuracy"), "higher",
               "commonest label", "classifier")


def _plot(title: str, xs: list[float], ys: list[float], bars: list[str] | None = None) -> str:
    import plotext as plt

    plt.clf()
    plt.theme("clear")
    plt.plotsize(72, 16)
    plt.title(title)
    if bars is not None:
        plt.bar(bars, ys)
    else:
        plt.plot(xs, ys, marker="braille")
    return re.sub(r"\x1b\[[0-9;]*m", "", plt.build())  # a Markdown file has no terminal colours


def next_steps(outputs: dict[str, dict[str, str]], builds: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Commands that go on from the demo's own artifacts: human judgement and a watched server."""
    q4 = next((b["id"] for b in builds if b["quant"] == "q4_k_m"), None)
    steps = [(f"workbench arena {outputs['lora']['model']} {outputs['dpo']['model']}",
              "vote on the LoRA and DPO models' answers side by side, blind; then `workbench arena ratings`")]
    if q4:
        steps += [(f"workbench chat {q4}", "talk to the Q4_K_M build"),
                  (f"workbench serve {q4}", "serve it over an OpenAI-compatible API on 127.0.0.1, and in another "
                   f"terminal `workbench monitor {q4} --follow` to watch latency, errors and input drift")]
    return steps


def _write(report: Report, outputs: dict[str, dict[str, str]], store: Any) -> None:
    from workbench.demo_html import render

    when = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"# Workbench demo report ({when})", "",
             f"The whole lifecycle ran offline; its runs took {report.minutes:.1f} minutes.", "",
             "| stage | metric | before | after | result |", "|---|---|---|---|---|"]
    for r in report.rows:
        lines.append(f"| {r.stage} | {r.metric} | {_num(r.before)} ({r.before_label}) | "
                     f"{_num(r.after)} ({r.after_label}) | {r.verdict} |")
    lines += ["", "## GGUF builds", "", "| build | size | size vs F16 | perplexity | ppl vs F16 |", "|---|---|---|---|---|"]
    for b in report.builds:
        change = f"{b['ppl_change']:+.1%}" if b["ppl_change"] is not None else "-"
        lines.append(f"| {b['quant']} | {fmt_bytes(b['size_bytes'])} | {b['size_ratio']:.2f}× | {_num(b['perplexity'])} | {change} |")
    if report.optimized:
        lines += ["", "## Smaller models against their source", "",
                  "| step | parameters | weights file | held-out perplexity |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in _optimized_cells(report.optimized)]
        lines += ["", _optimized_note(report.optimized)]
    for title, series in report.curves.get("pretraining", {}).items():
        if title != "held-out loss" and len(series) >= 2:
            lines += ["", f"## Pretraining: {title}", "", "```",
                      _plot(title, [s for s, _ in series], [v for _, v in series]), "```"]
    for r in report.rows[1:]:
        if r.before is not None and r.after is not None:
            lines += ["", f"## {r.stage}: {r.metric}", "", "```",
                      _plot(r.metric, [], [r.before, r.after], bars=[r.before_label, r.after_label]), "```"]
    if report.transcript:
        lines += ["", "## Chat with the Q4_K_M build", "", report.chat_line, ""]
        for turn in report.transcript:
            mark = "right" if turn.get("correct") else "wrong"
            lines += [f"- **you**: {turn['prompt']}", f"  **model**: {turn['reply']} ({mark}; expected: {turn['expected']})"]
    steps = next_steps(outputs, report.builds)
    lines += ["", "## What to try next", "", *(f"- `{cmd}`: {why}" for cmd, why in steps)]
    ctx = Context(store)
    staged = ctx.staging_dir("eval-report")
    (staged / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (staged / "report.html").write_text(render(report, steps, when), encoding="utf-8")
    # The artifact's final directory is named at registration; the files sit beside this one.
    summary = {**report.summary, "report": "report.md", "html": "report.html"}
    (staged / "report.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    parents = sorted({i for out in outputs.values() for i in out.values()} | {b["id"] for b in report.builds})
    comparison = {
        "models": [outputs["pretrain"]["model"], outputs["lora"]["model"], outputs["dpo"]["model"]],
        "metrics": {r.metric: {outputs[k]["model"]: v for k, v in (("pretrain", r.before), ("lora", r.after))}
                    for r in report.rows[1:2]},
    }
    art = ctx.register("eval-report", staged, name="demo-report", parents=parents,
                       metadata={"comparison": comparison, "demo": True},
                       metrics={"chat_correct": float(report.chat_correct),
                                **{f"{r.stage}_{r.better}_ok": float(r.ok) for r in report.rows}})
    report.path = art.path / "report.md"
