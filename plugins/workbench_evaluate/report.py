"""The comparison as tables, as `report.json` + `report.md`, and as the `eval-report` artifact.

The artifact's `metadata["comparison"]` is what the TUI draws its chart from:
`{"models": [ids], "names": {id: name}, "metrics": {metric: {model_id: value}}}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.hardware import fmt_bytes
from workbench.store import Artifact

#: Metric names in table order, with the direction that is better.
METRICS: dict[str, str] = {
    "perplexity": "lower", "bits_per_byte": "lower",
    "mc_accuracy": "higher", "mc_ci_low": "higher", "mc_ci_high": "higher",
    "exact_match": "higher", "bleu": "higher", "rouge_l": "higher",
    "preference_accuracy": "higher", "preference_accuracy_norm": "higher", "preference_margin": "higher",
    "judge_win_rate": "higher",
}
ARROW = {"lower": "↓", "higher": "↑"}
SAMPLE_ROWS = 5


def column_names(models: list[tuple[str, str]]) -> list[str]:
    """Model names for column headers; a name shared by two models gets its id added."""
    names = [name for _, name in models]
    return [name if names.count(name) == 1 else f"{name} ({mid})" for mid, name in models]


def comparison_table(models: list[tuple[str, str]], metrics: dict[str, dict[str, float]], title: str,
                     footprints: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Metrics by model; with `footprints` ({id: (parameters, file bytes)}), and when there is any
    metric, what each model costs as the last rows, ratios against the first model."""
    present = [m for m in METRICS if any(m in metrics[mid] for mid, _ in models)]
    rows = [[m, ARROW[METRICS[m]], *[metrics[mid].get(m) for mid, _ in models]] for m in present]
    if footprints and rows:
        params, sizes = ([footprints[mid][i] for mid, _ in models] for i in (0, 1))
        rows.append(["parameters", ARROW["lower"], *[_against(p, params[0], f"{p:,}") for p in params]])
        rows.append(["file size", ARROW["lower"], *[_against(b, sizes[0], fmt_bytes(b)) for b in sizes]])
    return {"title": title, "columns": ["metric", "better", *column_names(models)], "rows": rows}


def _against(value: int, base: int, shown: str) -> str:
    return shown if value == base or not base else f"{shown} ({value / base:.2f}×)"


def subjects_table(models: list[tuple[str, str]], details: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    per_model = {mid: details[mid].get("mc", {}).get("subjects", {}) for mid, _ in models}
    subjects = sorted({s for d in per_model.values() for s in d})
    if len(subjects) < 2:
        return None
    rows = [[s, per_model[models[0][0]].get(s, {}).get("n"), *[per_model[mid].get(s, {}).get("accuracy") for mid, _ in models]]
            for s in subjects]
    return {"title": "Multiple choice by subject (accuracy)", "columns": ["subject", "n", *column_names(models)],
            "rows": rows}


def judge_table(models: list[tuple[str, str]], judge: dict[str, Any]) -> dict[str, Any]:
    names = dict(zip([m for m, _ in models], column_names(models), strict=True))
    rows = [[names[mid], r["win_rate"], r["wins"], r["ties"], r["losses"], r["consistent_orders"], r["n"]]
            for mid, r in judge["results"].items()]
    return {"title": f"LLM-as-judge vs {names[judge['baseline']]} (judge: {judge['judge_name']}; each pair asked in both orders)",
            "columns": ["model", "win rate", "wins", "ties", "losses", "orders agree", "prompts"], "rows": rows}


def samples_table(models: list[tuple[str, str]], details: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    samples = {mid: details[mid].get("generation", {}).get("samples", []) for mid, _ in models}
    first = samples[models[0][0]]
    if not first:
        return None
    rows = []
    for i, s in enumerate(first[:SAMPLE_ROWS]):
        rows.append([s["prompt"], s["reference"], *[samples[mid][i]["prediction"] for mid, _ in models]])
    return {"title": f"Generation samples (first {len(rows)} held-out prompts)",
            "columns": ["prompt", "reference", *column_names(models)], "rows": rows}


def _md_cell(v: Any) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)
    return text.replace("|", "\\|").replace("\n", "⏎")


def markdown(tables: list[dict[str, Any]], header: list[str]) -> str:
    lines = [*header, ""]
    for t in tables:
        lines += [f"## {t['title']}", "", "| " + " | ".join(map(str, t["columns"])) + " |",
                  "|" + "---|" * len(t["columns"])]
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t["rows"]]
        lines.append("")
    return "\n".join(lines)


def register(ctx: Context, *, name: str, models: list[tuple[str, str]], metrics: dict[str, dict[str, float]],
             tables: list[dict[str, Any]], report: dict[str, Any], header: list[str],
             extra_metadata: dict[str, Any]) -> Artifact:
    """Write report.json and report.md into a staging directory and register them."""
    staged: Path = ctx.staging_dir("eval-report")
    (staged / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (staged / "report.md").write_text(markdown(tables, header), encoding="utf-8")
    comparison = {
        "models": [mid for mid, _ in models],
        "names": dict(models),
        "metrics": {m: {mid: metrics[mid][m] for mid, _ in models if m in metrics[mid]}
                    for m in METRICS if any(m in metrics[mid] for mid, _ in models)},
    }
    return ctx.register("eval-report", staged, name=name, parents=[mid for mid, _ in models],
                        metadata={"comparison": comparison, **extra_metadata})
