"""The Monitor view: what `workbench serve` recorded, shown and kept current.

The request log is written by the server's own recorder (its writer thread and real SQLite);
the served model's lineage is a real workspace index. No model runs: the view only reads.
"""

from __future__ import annotations

import json
import random

from workbench_chat.monitor import Recorder

from tests.tui.helpers import SIZE, screen_text, shows, wait_for
from workbench.context import Context
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.monitor import MonitorScreen

WORDS = ["soup", "bread", "rice", "salad", "cook", "bake", "people", "long", "serve"]


def question(rng: random.Random) -> str:
    return "how long to " + " ".join(rng.choice(WORDS) for _ in range(8)) + " ?"


def served_model() -> str:
    """dataset → model → GGUF in the workspace; the GGUF's id."""
    rng = random.Random(0)
    ctx = Context(Store())
    data = ctx.staging_dir("dataset")
    (data / "card.json").write_text(json.dumps({"type": "pretrain"}))
    (data / "train.jsonl").write_text("".join(json.dumps({"text": question(rng)}) + "\n" for _ in range(200)))
    dataset = ctx.register("dataset", data, name="kitchen-text")
    model = ctx.register("model", ctx.staging_dir("model"), name="tiny-kitchen", parents=[dataset.id])
    return ctx.register("gguf", ctx.staging_dir("gguf"), name="tiny-kitchen-q8", parents=[model.id]).id


def record(recorder: Recorder, n: int, *, latency: float, text: str | None, status: int = 200) -> None:
    for _ in range(n):
        rec = recorder.begin("POST", "/v1/chat/completions")
        rec.status, rec.text = status, text
        rec.latency_s, rec.ttft_s = latency, latency / 4
        if status == 200:
            rec.tokens_in, rec.tokens_out = 20, 10
        else:
            rec.error = "context_length_exceeded"
        recorder.finish(rec)


async def test_the_monitor_view_shows_the_figures_and_follows_new_requests() -> None:
    gguf = served_model()
    recorder = Recorder()
    recorder.start("http://127.0.0.1:8080/v1", "tiny-kitchen-q8", gguf)
    rng = random.Random(1)
    for _ in range(18):
        record(recorder, 1, latency=0.2, text=question(rng))
    record(recorder, 2, latency=0.05, text=question(rng) * 50, status=400)

    app = WorkbenchApp()
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("7")
            # The view reads the log on a worker thread; wait for the whole first reading.
            await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen)
                           and shows(app, "n-gram PSI", f"tiny-kitchen-q8 ({gguf})", "kitchen-text (200 rows)"),
                           what="the monitor's figures")
            text = screen_text(app)
            assert "serving tiny-kitchen-q8 at http://127.0.0.1:8080/v1" in text
            assert f"tiny-kitchen-q8 ({gguf})" in text
            assert "20 (18 generations, 0 streamed); 20 in the last minute" in text
            assert "p50 200 ms · p95 200 ms" in text  # latency
            assert "p50 50 ms · p95 50 ms" in text  # first token
            assert "10.0% (2): 400 context_length_exceeded ×2" in text
            assert "360 in · 180 out · 50.0 tokens/s" in text
            assert "kitchen-text (200 rows)" in text
            ngram = next(line for line in text.splitlines() if "n-gram PSI" in line)
            assert "stable" in ngram

            # The server answers more, unlike its training data: the view catches up by itself.
            for _ in range(30):
                record(recorder, 1, latency=0.1, text="SELECT id FROM orders WHERE total > 100;")
            await wait_for(pilot, lambda: shows(app, "50 (48 generations"), timeout=10, what="a refresh")
            ngram = next(line for line in screen_text(app).splitlines() if "n-gram PSI" in line)
            assert "large shift" in ngram

            await pilot.press("w")
            await wait_for(pilot, lambda: shows(app, "figures: last 24 hours"), what="the next window")
    finally:
        recorder.close()


async def test_the_monitor_view_before_anything_was_served() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        await wait_for(pilot, lambda: shows(app, "no requests recorded yet"), what="the empty state")
