"""The demo report as one HTML page that opens offline: inline CSS and inline SVG charts.

The page holds the same figures as `report.md` (the headline table, the GGUF builds, the smaller
models, the chat, what to try next) and draws what the Markdown can only hint at: each stage's
loss curve, the before/after bars of every metric, and GGUF file size against perplexity.
Nothing on it is fetched: no script, font, stylesheet or image outside the file. Every string
(model replies most of all) is escaped. Light module: no torch, only the standard library.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workbench.demo_report import _num, _optimized_cells, _optimized_note
from workbench.hardware import fmt_bytes

if TYPE_CHECKING:
    from workbench.demo_report import Report, Row

Points = Sequence[tuple[float, float]]

#: Series drawn on a stage's loss chart, in this order; any other series of a stage (pretraining's
#: validation perplexity) gets a chart of its own, since its unit differs.
LOSS_SERIES = ("train loss", "replay loss", "held-out loss")


def render(report: Report, steps: list[tuple[str, str]], when: str) -> str:
    """The whole page; `steps` are `next_steps`' (command, why) pairs, `when` the report's date."""
    sections = [_headline(report), _bars(report.rows), _curves(report.curves), _builds(report.builds)]
    if report.optimized:
        sections.append(_optimized(report.optimized))
    if report.transcript:
        sections.append(_chat(report))
    sections.append(_next(steps))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        f"<title>Workbench demo report ({_e(when)})</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>Workbench demo report</h1>",
        f'<p class="meta">{_e(when)} · the whole lifecycle ran offline; its runs took '
        f"{report.minutes:.1f} minutes.</p>",
        _status(report),
        "</header>",
        "<main>",
        *sections,
        "</main>",
        "<footer><p>Written by <code>workbench demo</code>. The same figures are in <code>report.md</code> and "
        "<code>report.json</code> beside this page.</p></footer>",
        "</body>",
        "</html>",
        "",
    ])


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _status(report: Report) -> str:
    missed = [r.warning for r in report.rows if not r.ok]
    if report.builds and not report.builds_ok:
        missed.append("not every quantized GGUF build is smaller than F16")
    if not missed:
        return '<p class="status ok">✓ Every stage met its target.</p>'
    items = "".join(f"<li>{_e(m)}</li>" for m in missed)
    count = "1 target" if len(missed) == 1 else f"{len(missed)} targets"
    return f'<div class="status bad"><p>✗ {count} missed:</p><ul>{items}</ul></div>'


# --- sections -----------------------------------------------------------------------------------


def _headline(report: Report) -> str:
    rows = []
    for r in report.rows:
        mark = "✓" if r.ok else "✗"
        rows.append(f'<tr><td>{_e(r.stage)}</td><td>{_e(r.metric)}</td>'
                    f'<td class="num">{_e(_num(r.before))} <span class="muted">({_e(r.before_label)})</span></td>'
                    f'<td class="num">{_e(_num(r.after))} <span class="muted">({_e(r.after_label)})</span></td>'
                    f'<td class="verdict {"ok" if r.ok else "bad"}">{mark} {_e(r.verdict)}</td></tr>')
    return _section("headline", "What each stage achieved",
                    _table(["stage", "metric", "before", "after", "result"], rows))


def _bars(rows: list[Row]) -> str:
    charts = [bar_chart(r) for r in rows if _finite(r.before) and _finite(r.after)]
    if not charts:
        return ""
    return _section("bars", "Before and after, per metric", f'<div class="grid">{"".join(charts)}</div>')


def _curves(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    charts = []
    for stage, logged in curves.items():
        # a diverged evaluation (inf, NaN) has no place on an axis; the table still shows it
        series = {name: [(x, y) for x, y in points if _finite(y)] for name, points in logged.items()}
        losses = {name: series[name] for name in LOSS_SERIES if series.get(name)}
        if losses:
            charts.append(line_chart(f"{stage}: loss", losses, "optimizer step", "loss (nats)", stage=stage))
        for name, points in series.items():
            if name not in LOSS_SERIES and points:
                values = [v for _, v in points]
                wide = min(values) > 0 and max(values) / min(values) > 20
                charts.append(line_chart(f"{stage}: {name}", {name: points}, "optimizer step",
                                         name + (" (log scale)" if wide else ""), stage=stage, log_y=wide))
    if not charts:
        return ""
    return _section("curves", "Training curves",
                    '<p class="note">Loss per optimizer step on the training batches, and on held-out data at '
                    f'each evaluation.</p><div class="grid wide">{"".join(charts)}</div>')


def _builds(builds: list[dict[str, Any]]) -> str:
    if not builds:
        return ""
    rows = [f"<tr><td>{_e(b['quant'])}</td><td class=\"num\">{_e(fmt_bytes(b['size_bytes']))}</td>"
            f"<td class=\"num\">{b['size_ratio']:.2f}×</td><td class=\"num\">{_e(_num(b['perplexity']))}</td>"
            f"<td class=\"num\">{_e(_change(b['ppl_change']))}</td></tr>" for b in builds]
    return _section("gguf", "GGUF builds against F16",
                    scatter_chart(builds) + _table(["build", "size", "size vs F16", "perplexity", "ppl vs F16"], rows))


def _optimized(optimized: list[dict[str, Any]]) -> str:
    rows = ["<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in cells) + "</tr>"
            for cells in _optimized_cells(optimized)]
    return _section("optimize", "Smaller models against their source",
                    _table(["step", "parameters", "weights file", "held-out perplexity"], rows)
                    + f'<p class="note">{_e(_optimized_note(optimized))}</p>')


def _chat(report: Report) -> str:
    turns = []
    for turn in report.transcript:
        right = bool(turn.get("correct"))
        reply = str(turn.get("reply", ""))
        shown = (f'<span class="reply">{_e(reply)}</span>' if reply.strip()
                 else '<span class="muted">(an empty reply)</span>')
        turns.append(f'<li class="{"ok" if right else "bad"}"><p><b>you</b> {_e(turn["prompt"])}</p>'
                     f"<p><b>model</b> {shown}</p>"
                     f'<p class="mark">{"✓ right" if right else "✗ wrong"} · expected '
                     f'<span class="reply">{_e(turn["expected"])}</span></p></li>')
    return _section("chat", "Chat with the Q4_K_M build",
                    f'<p class="lead">{_e(report.chat_line)}</p><ol class="chat">{"".join(turns)}</ol>')


def _next(steps: list[tuple[str, str]]) -> str:
    items = "".join(f"<li><code>{_e(cmd)}</code><br>{_inline_code(why)}</li>" for cmd, why in steps)
    return _section("next", "What to try next", f'<ul class="next">{items}</ul>')


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


def _table(head: list[str], rows: list[str]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<div class="table"><table><thead><tr>{cells}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _inline_code(text: str) -> str:
    """Escaped text with its `backticked` spans shown as code, as in the Markdown."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _change(change: float | None) -> str:
    return "-" if change is None else f"{change:+.1%}"


# --- charts -------------------------------------------------------------------------------------
# Coordinates are SVG user units in a fixed viewBox; the page's CSS scales the picture to its
# column and colours it (so light, dark and print all follow the stylesheet).


class _Frame:
    """A plot area inside a `width` × `height` picture, and the value → position mappings."""

    def __init__(self, width: int, height: int, x: tuple[float, float], y: tuple[float, float],
                 log_y: bool = False, left: int = 64, bottom: int = 44, top: int = 14, right: int = 18) -> None:
        self.width, self.height, self.log_y = width, height, log_y
        self.x0, self.x1, self.y0, self.y1 = left, width - right, height - bottom, top
        self.xr, self.yr = x, y

    def px(self, v: float) -> float:
        lo, hi = self.xr
        return self.x0 + (v - lo) / (hi - lo) * (self.x1 - self.x0)

    def py(self, v: float) -> float:
        lo, hi = self.yr
        if self.log_y:
            v, lo, hi = math.log10(v), math.log10(lo), math.log10(hi)
        return self.y0 - (v - lo) / (hi - lo) * (self.y0 - self.y1)

    def axes(self, xticks: list[float], yticks: list[float], x_label: str, y_label: str) -> str:
        out = ['<g class="grid">']
        out += [f'<line x1="{self.x0}" x2="{self.x1}" y1="{self.py(t):.1f}" y2="{self.py(t):.1f}"/>' for t in yticks]
        out.append("</g>")
        out.append(f'<g class="axis"><line x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}"/>'
                   f'<line x1="{self.x0}" x2="{self.x0}" y1="{self.y0}" y2="{self.y1}"/></g>')
        out += [f'<text class="tick" x="{self.x0 - 6}" y="{self.py(t) + 4:.1f}" text-anchor="end">{_tick(t, yticks)}</text>'
                for t in yticks]
        out += [f'<text class="tick" x="{self.px(t):.1f}" y="{self.y0 + 16}" text-anchor="middle">{_tick(t, xticks)}</text>'
                for t in xticks]
        if x_label:
            out.append(f'<text class="label" x="{(self.x0 + self.x1) / 2:.1f}" y="{self.height - 6}" '
                       f'text-anchor="middle">{_e(x_label)}</text>')
        out.append(f'<text class="label" transform="translate(14 {(self.y0 + self.y1) / 2:.1f}) rotate(-90)" '
                   f'text-anchor="middle">{_e(y_label)}</text>')
        return "".join(out)

    def svg(self, title: str, body: str) -> str:
        return (f'<svg viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{_e(title)}">'
                f"<title>{_e(title)}</title>{body}</svg>")


def line_chart(title: str, series: Mapping[str, Points], x_label: str, y_label: str, *, stage: str = "",
               log_y: bool = False) -> str:
    """One polyline per series (points marked when there are few), with a legend underneath."""
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    xlo, xhi, xticks = _axis(min(xs), max(xs))
    ylo, yhi, yticks = _log_axis(min(ys), max(ys)) if log_y else _axis(min(ys), max(ys))
    frame = _Frame(520, 280, (xlo, xhi), (ylo, yhi), log_y=log_y)
    body = [frame.axes(xticks, yticks, x_label, y_label)]
    legend = []
    for i, (name, points) in enumerate(series.items()):
        coords = [(frame.px(x), frame.py(y)) for x, y in points]
        dense = " dense" if len(points) > 30 else ""  # a noisy per-step loss reads better thin
        body.append(f'<polyline class="series s{i}{dense}" data-series="{_e(name)}" '
                    f'points="{" ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)}"/>')
        if len(points) <= 30:
            body += [f'<circle class="dot s{i}" cx="{cx:.1f}" cy="{cy:.1f}" r="3">'
                     f"<title>{_e(name)} at step {x:g}: {_e(_num(y))}</title></circle>"
                     for (cx, cy), (x, y) in zip(coords, points, strict=True)]
        last = points[-1][1]
        legend.append(f'<span class="key s{i}"></span>{_e(name)} <span class="muted">(last {_e(_num(last))})</span>')
    caption = f'<figcaption><b>{_e(title)}</b><br>{" ".join(legend)}</figcaption>'
    return (f'<figure class="chart curve" data-stage="{_e(stage)}">{frame.svg(title, "".join(body))}'
            f"{caption}</figure>")


def bar_chart(row: Row) -> str:
    """Before and after side by side, the after bar marked by the row's verdict; a bounded row
    also shows the bound as a dashed line."""
    assert row.before is not None and row.after is not None
    limit = (row.bound or 1.0) * row.before if row.better == "bounded" else None
    values = [row.before, row.after] + ([limit] if limit is not None else [])
    lo, hi = min(0.0, *values) * 1.12, max(0.0, *values) * 1.12  # bars grow from zero, either way
    ylo, yhi, yticks = _axis(lo, hi if hi > lo else 1.0)
    frame = _Frame(320, 240, (0.0, 2.0), (ylo, yhi), left=56, bottom=40)
    body = [frame.axes([], yticks, "", _quantity(row))]
    width = (frame.x1 - frame.x0) / 2 * 0.55
    zero = frame.py(0.0)
    for i, (value, label, cls) in enumerate(((row.before, row.before_label, "before"),
                                             (row.after, row.after_label, "ok" if row.ok else "bad"))):
        cx, y = frame.px(i + 0.5), frame.py(value)
        body.append(f'<rect class="bar {cls}" data-value="{value!r}" x="{cx - width / 2:.1f}" y="{min(y, zero):.1f}" '
                    f'width="{width:.1f}" height="{abs(zero - y):.1f}"><title>{_e(label)}: {_e(_num(value))}</title></rect>')
        label_y = y - 5 if value >= 0 else y + 14
        body.append(f'<text class="value" x="{cx:.1f}" y="{label_y:.1f}" text-anchor="middle">{_e(_num(value))}</text>')
        body.append(f'<text class="tick" x="{cx:.1f}" y="{frame.y0 + 16}" text-anchor="middle">{_e(label)}</text>')
    if limit is not None:
        y = frame.py(limit)
        body.append(f'<line class="limit" x1="{frame.x0}" x2="{frame.x1}" y1="{y:.1f}" y2="{y:.1f}"/>'
                    # over the before bar, which a bound of 2× or more keeps at half the height or less
                    f'<text class="tick" x="{frame.x0 + 4}" y="{y - 4:.1f}">limit {row.bound:g}× = {_e(_num(limit))}</text>')
    title = f"{row.stage}: {row.metric}"
    verdict = f'<span class="verdict {"ok" if row.ok else "bad"}">{"✓" if row.ok else "✗"} {_e(row.verdict)}</span>'
    return (f'<figure class="chart bars" data-metric="{_e(title)}">{frame.svg(title, "".join(body))}'
            f"<figcaption><b>{_e(row.stage)}</b>: {_e(row.metric)}<br>{verdict} "
            f'<span class="muted">({_e(_direction(row))})</span></figcaption></figure>')


def scatter_chart(builds: list[dict[str, Any]]) -> str:
    """One labelled point per GGUF build that has a perplexity: file size across, perplexity up."""
    points = [b for b in builds if _finite(b.get("perplexity"))]
    if not points:
        return '<p class="note">No build has a measured perplexity, so there is nothing to plot.</p>'
    biggest = max(b["size_bytes"] for b in points)
    power = next(p for p in range(4, -1, -1) if biggest >= 1024 ** p or p == 0)
    unit = ("B", "KiB", "MiB", "GiB", "TiB")[power]
    sizes = [b["size_bytes"] / 1024 ** power for b in points]
    ppls = [b["perplexity"] for b in points]
    _, xhi, xticks = _axis(0.0, max(sizes) * 1.15)
    ylo, yhi, yticks = _axis(min(ppls), max(ppls), pad=0.25)
    frame = _Frame(640, 300, (0.0, xhi), (ylo, yhi))
    body = [frame.axes(xticks, yticks, f"file size ({unit})", "perplexity on held-out text")]
    for b, size, ppl in zip(points, sizes, ppls, strict=True):
        cx, cy = frame.px(size), frame.py(ppl)
        anchor, dx = ("end", -8) if cx > frame.x1 - 90 else ("start", 8)
        body.append(f'<circle class="pt" data-build="{_e(b["quant"])}" cx="{cx:.1f}" cy="{cy:.1f}" r="5">'
                    f"<title>{_e(b['quant'])}: {_e(fmt_bytes(b['size_bytes']))}, perplexity {_e(_num(ppl))}</title></circle>"
                    f'<text class="point" x="{cx + dx:.1f}" y="{cy - 8:.1f}" text-anchor="{anchor}">{_e(b["quant"])}</text>')
    title = "GGUF file size against perplexity"
    return (f'<figure class="chart scatter">{frame.svg(title, "".join(body))}'
            f"<figcaption><b>{title}</b>: one point per build; further left is smaller, lower is better.</figcaption>"
            "</figure>")


def _quantity(row: Row) -> str:
    """The y axis label of a row's bars: the quantity, with its range where it is a share."""
    metric = row.metric.split(" (")[0]
    if "perplexity" in metric:
        return "perplexity"
    return "share right (0–1)" if re.search(r"accuracy|exact match", metric) else metric


def _direction(row: Row) -> str:
    if row.better == "bounded":
        return f"lower is better; up to {row.bound:g}× before is allowed"
    return f"{row.better} is better"


def _axis(lo: float, hi: float, pad: float = 0.0, count: int = 5) -> tuple[float, float, list[float]]:
    """A linear axis over [lo, hi] (widened by `pad` of its span) that starts and ends on round ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.1 or 1.0
        lo, hi = lo - span / 2, hi + span / 2
    lo, hi = lo - span * pad, hi + span * pad
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [round(i * step, 12) for i in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def _log_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """A log axis from the 1-2-5 value at or below `lo` to the one at or above `hi`."""
    marks = [m * 10 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    start = max(m for m in marks if m <= lo * (1 + 1e-9))
    end = min(m for m in marks if m >= hi * (1 - 1e-9))
    ticks = [m for m in marks if start <= m <= end]
    if len(ticks) > 7:  # only the powers of ten, and the ends
        ticks = [t for t in ticks if t in (start, end) or math.log10(t).is_integer()]
    return start, end, ticks


def _tick(value: float, ticks: list[float]) -> str:
    step = min((b - a for a, b in itertools.pairwise(ticks)), default=1.0)
    decimals = max(0, -math.floor(math.log10(step))) if 0 < step < 1 else 0
    if decimals == 0 and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.{decimals + (1 if round(step * 10 ** decimals, 9) % 1 else 0)}f}"


CSS = """
:root { --bg: #ffffff; --fg: #1d2330; --muted: #5d6778; --grid: #e3e6ec; --axis: #8a93a3; --card: #f6f7f9;
  --c0: #2f6fd6; --c1: #d9771f; --c2: #7b4fc9; --ok: #1f8a4c; --bad: #c8372d; --before: #9aa3b2; --code: #eef0f4; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15181e; --fg: #e4e7ee; --muted: #9aa3b2; --grid: #2b313b; --axis: #6c7584; --card: #1c2028;
    --c0: #6aa1ff; --c1: #f0a350; --c2: #b493ff; --ok: #4cc37c; --bad: #f0675c; --before: #6c7584; --code: #262b35; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1080px; padding: 1.5rem 1.25rem 3rem; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 1.7rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .75rem; padding-bottom: .3rem; border-bottom: 1px solid var(--grid); }
.meta, .muted, .note { color: var(--muted); }
.status { border-radius: 6px; padding: .5rem .9rem; background: var(--card); border-left: 4px solid; }
.status p { margin: 0; }
.status.ok { border-color: var(--ok); } .status.bad { border-color: var(--bad); }
.table { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
th, td { text-align: left; padding: .35rem .7rem; border-bottom: 1px solid var(--grid); vertical-align: top; }
th { font-weight: 600; color: var(--muted); }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { font-weight: 600; white-space: nowrap; }
.verdict.ok, li.ok .mark { color: var(--ok); } .verdict.bad, li.bad .mark { color: var(--bad); }
code, .reply { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
  background: var(--code); border-radius: 4px; padding: .05rem .3rem; white-space: pre-wrap; word-break: break-word; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(250px, 100%), 1fr)); gap: 1rem; }
.grid.wide { grid-template-columns: repeat(auto-fill, minmax(min(420px, 100%), 1fr)); }
figure { margin: 0; padding: .6rem; background: var(--card); border-radius: 6px; break-inside: avoid; }
figure.scatter { max-width: 720px; }
figcaption { font-size: .88rem; margin-top: .2rem; }
svg { display: block; width: 100%; height: auto; font-size: 12px; fill: var(--fg); }
svg .grid line { stroke: var(--grid); stroke-width: 1; }
svg .axis line { stroke: var(--axis); stroke-width: 1; }
svg .tick { fill: var(--muted); font-size: 11px; }
svg .label { fill: var(--fg); font-size: 12px; }
svg .value, svg .point { font-size: 12px; font-weight: 600; }
.series { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
.series.dense { stroke-width: 1.25; }
.series.s0 { stroke: var(--c0); } .series.s1 { stroke: var(--c1); } .series.s2 { stroke: var(--c2); }
.dot.s0, .key.s0 { fill: var(--c0); background: var(--c0); } .dot.s1, .key.s1 { fill: var(--c1); background: var(--c1); }
.dot.s2, .key.s2 { fill: var(--c2); background: var(--c2); }
.key { display: inline-block; width: .9em; height: .25em; vertical-align: middle; margin: 0 .3em 0 .8em; border-radius: 2px; }
.key:first-child { margin-left: 0; }
.bar.before { fill: var(--before); } .bar.ok { fill: var(--ok); } .bar.bad { fill: var(--bad); }
.limit { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 5 4; }
.pt { fill: var(--c0); stroke: var(--bg); stroke-width: 1.5; }
.lead { font-size: 1.05rem; font-weight: 600; }
ol.chat { padding-left: 1.4rem; } ol.chat li { margin-bottom: .8rem; } ol.chat p { margin: .1rem 0; }
ol.chat b { display: inline-block; min-width: 3.6em; color: var(--muted); font-weight: 600; }
ul.next li { margin-bottom: .6rem; }
footer { margin-top: 3rem; font-size: .85rem; color: var(--muted); }
@media print {
  :root { --bg: #fff; --fg: #000; --muted: #444; --card: #fff; --grid: #ddd; --code: #f2f2f2; }
  body { max-width: none; padding: 0; font-size: 10pt; }
  .grid { grid-template-columns: repeat(3, 1fr); gap: .5rem; } .grid.wide { grid-template-columns: repeat(2, 1fr); }
  h2 { break-after: avoid; }
  figure { border: 1px solid #ccc; }
  tr, li { break-inside: avoid; }
}
"""
