"""The demo report's HTML page, built from a workspace of real run directories, events and
artifacts in a real SQLite store (no demo run): what a user opening `report.html` sees."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from workbench.context import Context
from workbench.demo_report import Report, _num, build_report
from workbench.events import EventWriter
from workbench.store import Store, new_id

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str, cls: str | None = None) -> list[Node]:
        found = [self] if self.tag == tag and (cls is None or cls in self.attrs.get("class", "").split()) else []
        return found + [n for child in self.children for n in child.all(tag, cls)]

    @property
    def content(self) -> str:
        return self.text + "".join(child.content for child in self.children)


class Tree(HTMLParser):
    """The page as a tree; an end tag that closes anything but the open element fails the test."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.open = [self.root]
        self.feed(page)
        self.close()
        assert [n.tag for n in self.open] == ["#document"], f"unclosed: {[n.tag for n in self.open[1:]]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.open[-1].children.append(node)
        if tag not in VOID:
            self.open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.open[-1].tag == tag, f"</{tag}> closes <{self.open[-1].tag}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(Node("#text", {}, text=data))


# --- a workspace as the demo leaves it -------------------------------------------------------------


def curve(steps: int, start: float, end: float) -> list[tuple[int, float]]:
    """A loss that falls from `start` towards `end`, with a little noise, as training logs it."""
    return [(s, end + (start - end) * math.exp(-4 * s / steps) + 0.03 * math.sin(7 * s)) for s in range(1, steps + 1)]


def training_run(store: Store, stage: str, series: list[list[tuple[int, dict[str, float]]]]) -> str:
    """A finished run whose events carry `series`: one list of (step, metric values) per attempt."""
    from workbench import locations

    run_id = new_id("run")
    run_dir = locations.run_dir(run_id)
    run_dir.mkdir(parents=True)
    store.add_run(run_id, stage, "workbench", "0.1.0", {}, run_dir)
    store.update_run(run_id, status="done", started_at=1000.0, ended_at=1000.0 + 20 * len(series))
    events = EventWriter(run_dir / "events.jsonl")
    ctx = Context(store, run_id=run_id, run_dir=run_dir, events=events)
    for attempt in series:
        for step, values in attempt:
            ctx.metric(step, **values)
        ctx.log("worker exited")  # a resumed run starts again after other events
    events.close()
    return run_id


def artifact(store: Store, run_id: str, kind: str, name: str, size: int = 64, **fields: Any) -> str:
    ctx = Context(store, run_id=run_id)
    staged = ctx.staging_dir(kind)
    (staged / "data.bin").write_bytes(b"\0" * size)
    art = ctx.register(kind, staged, name=name, **fields)
    if size != 64:
        store.db.execute("UPDATE artifacts SET size_bytes = ? WHERE id = ?", (size, art.id))
    return art.id


def losses(train: list[tuple[int, float]], held_out: dict[int, float], **more: dict[int, float]) -> list[
        tuple[int, dict[str, float]]]:
    """Events in a training loop's order: the held-out figures at step 0, then each step's loss,
    with the held-out figures after the steps they were measured at."""
    events: list[tuple[int, dict[str, float]]] = []

    def evaluated(step: int) -> None:
        if step in held_out:
            events.append((step, {"val_loss": held_out[step], **{k: v[step] for k, v in more.items()}}))

    evaluated(0)
    for step, loss in train:
        events.append((step, {"loss": loss, "lr": 3e-4}))
        evaluated(step)
    return events


EVIL_REPLY = '<script>alert("pwned")</script> & <b>bold</b>'
PRETRAIN_VAL = {0: 7.142, 40: 4.41, 80: 3.52, 120: 3.05, 160: 2.83, 200: 2.726}
BUILDS = {"f16": (5_767_168, 95.37), "q8_0": (3_145_728, 95.44), "q4_k_m": (1_782_579, 95.03)}


@pytest.fixture
def demo(workspace: Path) -> dict[str, Any]:
    """The runs and artifacts of a finished quick demo, figures as a real one gives them."""
    store = Store()
    state: dict[str, Any] = {}
    outputs: dict[str, dict[str, str]] = {}
    series = {
        "pretrain": [losses(curve(200, 7.2, 2.6), PRETRAIN_VAL, val_ppl={s: math.exp(v) for s, v in PRETRAIN_VAL.items()})],
        # resumed at step 6 from its step-4 checkpoint: steps 5 and 6 are logged twice
        "lora": [losses(curve(6, 3.4, 1.9), {0: 3.3}), losses([(s, v - 0.2) for s, v in curve(10, 3.4, 1.9)[4:]],
                                                                {10: 2.1})],
        "dpo": [losses(curve(80, 0.693, 0.41), {0: 0.693, 26: 0.62, 52: 0.58, 78: 0.57, 80: 0.566})],
        "classify": [losses(curve(50, 0.69, 0.02), {0: 0.71, 25: 0.08, 50: 0.03})],
    }
    runs = {key: training_run(store, {"lora": "finetune.lora", "classify": "finetune.classify"}.get(key, key), s)
            for key, s in series.items()}
    for key in ("pretrain", "lora", "dpo"):
        outputs[key] = {"model": artifact(store, runs[key], "model", f"demo-{key}")}
    outputs["classify"] = {"classifier": artifact(store, runs["classify"], "classifier", "demo-spam",
                                                  metadata={"confusion_matrix": [[52, 0], [0, 45]]},
                                                  metrics={"accuracy": 1.0})}
    base, sft, dpo = (outputs[k]["model"] for k in ("pretrain", "lora", "dpo"))
    runs["eval"] = training_run(store, "eval", [])
    store.update_run(runs["eval"], result={"metrics": {
        base: {"exact_match": 0.0, "perplexity": 21.89},
        sft: {"exact_match": 0.0, "perplexity": 33.76, "preference_accuracy": 0.427},
        dpo: {"preference_accuracy": 0.5169, "perplexity": 47.2}}})
    runs["export"] = training_run(store, "export", [])
    outputs["export"] = {}
    for quant, (size, ppl) in BUILDS.items():
        outputs["export"][quant] = artifact(store, runs["export"], "gguf", f"demo-{quant}", size=size,
                                            metadata={"quant": quant}, metrics={"perplexity": ppl})
    state = {key: {"run_id": run_id, "outputs": outputs.get(key, {})} for key, run_id in runs.items()}
    transcript = [
        {"prompt": "What is the capital of Italy?", "expected": "Rome", "reply": "Rome", "correct": True},
        {"prompt": "What is the opposite of hot?", "expected": "cold", "reply": EVIL_REPLY, "correct": False},
        {"prompt": "Repeat after me: green apple river", "expected": "green apple river",
         "reply": "green apple river", "correct": True},
    ]
    return {"store": store, "state": state, "outputs": outputs, "transcript": transcript, "series": series}


def page_of(demo: dict[str, Any], **kwargs: Any) -> tuple[Report, str, Tree]:
    report = build_report(demo["outputs"], demo["state"], demo["store"], demo["transcript"], minutes=0.2, **kwargs)
    assert report.html is not None
    page = report.html.read_text(encoding="utf-8")
    return report, page, Tree(page)


def points(polyline: Node) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in polyline.attrs["points"].split())]


def charts(tree: Tree, kind: str) -> list[Node]:
    return [f for f in tree.root.all("figure", "chart") if kind in f.attrs["class"].split()]


# --- the page ------------------------------------------------------------------------------------


def test_the_page_is_written_beside_the_markdown_and_named_in_the_summary(demo: dict[str, Any]) -> None:
    report, page, _ = page_of(demo)
    assert report.path is not None and report.html == report.path.with_name("report.html")
    assert report.html.is_file() and report.path.is_file()
    assert sorted(p.name for p in report.path.parent.iterdir()) == ["report.html", "report.json", "report.md"]
    assert not list(report.path.parent.parent.glob(".staging-*"))  # built aside, moved into place whole
    assert report.summary["html"] == str(report.html) and report.summary["report"] == str(report.path)
    on_disk = json.loads(report.path.with_name("report.json").read_text(encoding="utf-8"))
    assert on_disk["report"] == "report.md" and on_disk["html"] == "report.html"
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page


def test_the_headline_table_shows_the_markdown_figures_and_marks_each_verdict(demo: dict[str, Any]) -> None:
    report, _, tree = page_of(demo)
    table = next(s for s in tree.root.all("section") if s.attrs.get("id") == "headline").all("table")[0]
    shown = [[" ".join(td.content.split()) for td in tr.all("td")] for tr in table.all("tbody")[0].all("tr")]
    assert report.path is not None
    markdown = [[cell.strip() for cell in line.strip("|").split("|")]
                for line in report.path.read_text(encoding="utf-8").splitlines()
                if line.startswith("| ")][1:len(report.rows) + 1]
    assert [row[:4] for row in shown] == [row[:4] for row in markdown]
    assert [row[4] for row in shown] == [("✓ " if r.ok else "✗ ") + r.verdict for r in report.rows]
    marks = [tr.all("td")[-1].attrs["class"] for tr in table.all("tbody")[0].all("tr")]
    assert marks == [f"verdict {'ok' if r.ok else 'bad'}" for r in report.rows]
    assert "verdict bad" in marks  # the LoRA exact match row, 0 → 0, is shown as a miss


def test_each_training_stage_has_its_loss_curve_with_every_logged_step(demo: dict[str, Any]) -> None:
    _, _, tree = page_of(demo)
    curves = charts(tree, "curve")
    by_stage: dict[str, list[Node]] = {}
    for figure in curves:
        by_stage.setdefault(figure.attrs["data-stage"], []).append(figure)
    assert list(by_stage) == ["pretraining", "LoRA", "DPO", "classification"]
    for key, stage in (("pretrain", "pretraining"), ("lora", "LoRA"), ("dpo", "DPO"), ("classify", "classification")):
        logged = [values for attempt in demo["series"][key] for values in attempt]
        train = dict((s, v["loss"]) for s, v in logged if "loss" in v)  # a later attempt's step wins
        held_out = dict((s, v["val_loss"]) for s, v in logged if "val_loss" in v)
        lines = {p.attrs["data-series"]: p for p in by_stage[stage][0].all("polyline")}
        assert set(lines) == {"train loss", "held-out loss"}
        for name, values in (("train loss", train), ("held-out loss", held_out)):
            drawn = points(lines[name])
            assert len(drawn) == len(values), (stage, name)
            xs = [x for x, _ in drawn]
            assert xs == sorted(xs) and len(set(xs)) == len(xs)  # one point per step, left to right
            ordered = [values[s] for s in sorted(values)]
            # higher loss is drawn higher up (smaller y), so the picture falls as the loss does
            assert drawn[ordered.index(max(ordered))][1] == min(y for _, y in drawn)
            assert drawn[ordered.index(min(ordered))][1] == max(y for _, y in drawn)
        svg_text = by_stage[stage][0].content
        assert "optimizer step" in svg_text and "loss (nats)" in svg_text
    # pretraining's validation perplexity falls from ~1264 to ~15: a chart of its own, on a log axis
    ppl = by_stage["pretraining"][1]
    assert [p.attrs["data-series"] for p in ppl.all("polyline")] == ["validation perplexity"]
    assert len(points(ppl.all("polyline")[0])) == len(PRETRAIN_VAL)
    assert "log scale" in ppl.content


def test_each_metric_has_its_before_and_after_bars_with_the_report_figures(demo: dict[str, Any]) -> None:
    report, _, tree = page_of(demo)
    bars = charts(tree, "bars")
    assert [f.attrs["data-metric"] for f in bars] == [f"{r.stage}: {r.metric}" for r in report.rows]
    for figure, row in zip(bars, report.rows, strict=True):
        rects = figure.all("rect", "bar")
        assert [float(r.attrs["data-value"]) for r in rects] == [row.before, row.after]
        assert rects[1].attrs["class"] == f"bar {'ok' if row.ok else 'bad'}"
        assert [float(r.attrs["height"]) > 0 for r in rects] == [row.before > 0, row.after > 0]  # type: ignore[operator]
        values = [t.content for t in figure.all("text", "value")]
        assert values == [_num(row.before), _num(row.after)]
        # bars start at zero: heights in proportion to the values, to the 0.1 unit they are written in
        heights = [float(r.attrs["height"]) for r in rects]
        scale = max(heights) / (max(row.before, row.after) or 1)  # type: ignore[type-var]
        assert heights == pytest.approx([row.before * scale, row.after * scale], abs=0.15)  # type: ignore[operator]
    forgetting = bars[-1]
    assert report.rows[-1].better == "bounded" and forgetting.all("line", "limit")
    assert f"limit 2× = {_num(2 * 21.89)}" in forgetting.content


def test_the_gguf_builds_are_one_labelled_point_each_size_against_perplexity(demo: dict[str, Any]) -> None:
    report, _, tree = page_of(demo)
    (scatter,) = charts(tree, "scatter")
    dots = scatter.all("circle", "pt")
    assert [d.attrs["data-build"] for d in dots] == list(BUILDS)
    labels = [t.content for t in scatter.all("text", "point")]
    assert labels == list(BUILDS)
    # further right is bigger, higher up is a worse (larger) perplexity
    xs = {d.attrs["data-build"]: float(d.attrs["cx"]) for d in dots}
    ys = {d.attrs["data-build"]: float(d.attrs["cy"]) for d in dots}
    assert xs["q4_k_m"] < xs["q8_0"] < xs["f16"]
    assert ys["q8_0"] < ys["f16"] < ys["q4_k_m"]
    assert "file size (MiB)" in scatter.content and "perplexity" in scatter.content
    table = next(s for s in tree.root.all("section") if s.attrs.get("id") == "gguf").all("tbody")[0]
    cells = [[td.content for td in tr.all("td")] for tr in table.all("tr")]
    assert cells[2] == ["q4_k_m", "1.7 MiB", "0.31×", "95.03", "-0.4%"]
    assert len(cells) == len(report.builds)


def test_the_chat_shows_each_answer_marked_and_escapes_what_the_model_said(demo: dict[str, Any]) -> None:
    _, page, tree = page_of(demo)
    chat = next(s for s in tree.root.all("section") if s.attrs.get("id") == "chat")
    assert "answered 2 of 3 held-out questions correctly" in chat.content
    turns = chat.all("li")
    assert [t.attrs["class"] for t in turns] == ["ok", "bad", "ok"]
    assert "✗ wrong" in turns[1].content and EVIL_REPLY in turns[1].content  # shown as the text it is
    assert not tree.root.all("script") and "<script" not in page.lower() and "<b>bold" not in page
    assert "&lt;script&gt;" in page


def test_the_page_needs_nothing_from_outside_the_file(demo: dict[str, Any]) -> None:
    _, page, tree = page_of(demo)
    assert not re.search(r"https?:|//[a-z]", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(", page)
    for tag in ("script", "link", "img", "iframe", "object", "embed", "image", "use"):
        assert not tree.root.all(tag), tag
    assert all("src" not in n.attrs and "href" not in n.attrs for n in tree.root.all("a") + tree.root.all("svg"))
    style = tree.root.all("style")[0].content
    assert "prefers-color-scheme: dark" in style and "@media print" in style
    nxt = next(s for s in tree.root.all("section") if s.attrs.get("id") == "next")
    commands = [c.content for c in nxt.all("code")]
    assert f"workbench chat {demo['outputs']['export']['q4_k_m']}" in commands


def test_distill_and_prune_curves_appear_only_when_the_demo_ran_them(demo: dict[str, Any]) -> None:
    store = demo["store"]
    for key, stage in (("distill", "distill"), ("prune", "prune")):
        demo["state"][key] = {"run_id": training_run(store, stage, [losses(curve(40, 5.0, 3.1), {0: 4.9, 40: 3.3})]),
                              "outputs": {}}
    # steps left in the state by an earlier `--with-optimize`: not this report's business
    _, _, tree = page_of(demo)
    assert {f.attrs["data-stage"] for f in charts(tree, "curve")} == {"pretraining", "LoRA", "DPO", "classification"}
    assert not [s for s in tree.root.all("section") if s.attrs.get("id") == "optimize"]

    optimized = [{"stage": "distill", "method": "distilled", "model": "m1", "params": 1_800_000,
                  "source_params": 2_800_000, "size_bytes": 7_200_000, "source_size_bytes": 11_200_000,
                  "perplexity": 52.3, "source_perplexity": 47.2,
                  "perplexity_on": "Perplexity of the source and both smaller models from one eval run (run-1)."}]
    _, _, tree = page_of(demo, optimized=optimized)
    stages = [f.attrs["data-stage"] for f in charts(tree, "curve")]
    assert stages[-2:] == ["distillation", "pruning (LoRA heal)"]
    for figure in charts(tree, "curve")[-2:]:
        assert [len(points(p)) for p in figure.all("polyline")] == [40, 2]
    table = next(s for s in tree.root.all("section") if s.attrs.get("id") == "optimize")
    assert "1,800,000 (source 2,800,000, 0.64×)" in table.content
    (note,) = table.all("p", "note")
    assert note.content == "Perplexity of the source and both smaller models from one eval run (run-1)."


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 1.0), (2.6, 7.2), (0.41, 0.693), (95.03, 95.44), (0.0, 1264.0),
                                        (3.0, 3.0), (0.0, 0.0), (1e-5, 3e-5)])
def test_linear_axes_cover_the_data_with_round_evenly_spaced_ticks(lo: float, hi: float) -> None:
    from workbench.demo_html import _axis, _tick

    start, end, ticks = _axis(lo, hi)
    assert start <= lo and end >= hi and start < end and (start, end) == (ticks[0], ticks[-1])
    steps = {round(b - a, 12) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1 and 3 <= len(ticks) <= 12
    step = steps.pop()
    mantissa = round(step / 10 ** math.floor(math.log10(step) + 1e-9), 6)
    assert mantissa in (1, 2, 2.5, 5)
    labels = [_tick(t, ticks) for t in ticks]
    assert len(set(labels)) == len(labels)  # no two ticks read the same


def test_log_axes_run_from_a_round_value_below_to_one_above() -> None:
    from workbench.demo_html import _log_axis

    start, end, ticks = _log_axis(15.28, 1264.0)
    assert (start, end) == (10, 2000) and ticks[0] == 10 and ticks[-1] == 2000 and 100 in ticks and 1000 in ticks


def test_a_diverged_figure_or_a_negative_one_still_draws_a_readable_page() -> None:
    from workbench.demo_html import render
    from workbench.demo_report import Row

    rows = [Row("pretrain", "validation perplexity", 1264.0, float("nan"), "lower", "untrained", "pretrained"),
            Row("DPO", "reward margin (held-out)", -0.4, 0.8, "higher", "LoRA", "DPO")]
    curves = {"pretraining": {"train loss": [(1, 7.0), (2, float("inf")), (3, 6.1)], "held-out loss": [],
                              "validation perplexity": [(0, 1264.0), (3, float("nan"))]}}
    report = Report(rows=rows, builds=[{"quant": "f16", "id": "g", "size_bytes": 1000, "size_ratio": 1.0,
                                        "perplexity": None, "ppl_change": None}], transcript=[], minutes=0.5,
                    curves=curves)
    page = render(report, [], "2026-12-04 10:00")
    tree = Tree(page)
    assert not re.search(r"\b(nan|inf)\b", " ".join(
        " ".join(n.attrs.values()) for n in tree.root.all("polyline") + tree.root.all("rect") + tree.root.all("circle")))
    assert [f.attrs["data-metric"] for f in charts(tree, "bars")] == ["DPO: reward margin (held-out)"]
    below, above = charts(tree, "bars")[0].all("rect", "bar")
    assert float(below.attrs["height"]) > 0 and float(above.attrs["height"]) > 0
    zero = float(above.attrs["y"]) + float(above.attrs["height"])  # both bars grow from the zero line
    assert float(below.attrs["y"]) == pytest.approx(zero, abs=0.15)
    assert float(below.attrs["height"]) / float(above.attrs["height"]) == pytest.approx(0.4 / 0.8, rel=0.05)
    (loss,) = [f for f in charts(tree, "curve") if "loss" in f.all("polyline")[0].attrs["data-series"]]
    assert len(points(loss.all("polyline")[0])) == 2
    assert "nothing to plot" in page and "NOT improved" in page  # the table still names the diverged row


def test_a_replayed_run_plots_its_task_loss_beside_the_replay_loss(workspace: Path) -> None:
    from workbench.demo_report import training_curves

    store = Store()
    steps = [(s, {"loss": 3.0 - 0.1 * s, "task_loss": 1.0 - 0.1 * s, "replay_loss": 2.0, "lr": 1e-3})
             for s in range(1, 6)]
    run = training_run(store, "finetune.lora", [[(0, {"val_loss": 1.2}), *steps, (5, {"val_loss": 0.6})]])
    curves = training_curves({"lora": {"run_id": run}}, store, optimized=False)["LoRA"]
    # the task's own loss is the train curve, comparable with the held-out one; not the sum
    assert curves["train loss"] == [(s, pytest.approx(1.0 - 0.1 * s)) for s in range(1, 6)]
    assert curves["replay loss"] == [(s, 2.0) for s in range(1, 6)]
    assert curves["held-out loss"] == [(0, 1.2), (5, 0.6)]
