"""`workbench demo --with-optimize`: its optional steps, run as real distill, prune and eval runs on
a tiny model standing in for the demo's DPO model (the whole demo takes minutes), and the rows the
demo report gives them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_tiny_model, run_cli
from tests.stages.test_distill import documents, register_dataset, register_model
from workbench.store import Store
from workbench.testing import run_inline


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stored_params(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as fh:
        return sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118 (not iterable)


def test_the_optimize_steps_distill_and_prune_the_model_and_report_what_each_bought(tmp_path: Path,
                                                                                     workspace: Path) -> None:
    from rich.console import Console

    from workbench.demo_optimize import PRUNE_TARGET, optimize_rows, optimize_steps
    from workbench.demo_report import Report, _optimized_cells

    model = register_model(make_tiny_model(tmp_path / "model", intermediate_size=192), "demo-dpo")
    corpus = register_dataset(documents(40, seed=1), documents(10, seed=2), "demo-corpus")
    # The main steps the eval step takes its settings from; only the corpus matters to it.
    outputs: dict[str, dict[str, str]] = {"dpo": {"model": model}, "corpus": {"dataset": corpus}, **{
        key: {"model": model} for key in ("pretrain", "lora")}, **{
        key: {"dataset": corpus} for key in ("instructions", "preferences")}}
    store = Store()
    state: dict[str, Any] = {}
    plan = optimize_steps("quick", store, seq_len=32)
    assert [(s.key, s.stage) for s in plan] == [("distill", "distill"), ("prune", "prune"), ("smaller", "eval")]
    for step in plan:
        run = run_inline(step.stage, step.options(outputs))
        outputs[step.key] = {"eval-report": run.result["report"]} if step.stage == "eval" else {"model": run.result["model"]}
        state[step.key] = {"run_id": run.id, "outputs": outputs[step.key]}

    source = store.find_artifact(model)
    teacher_shape = yaml.safe_load((source.path / "model_config.yaml").read_text())
    distilled = store.find_artifact(state["distill"]["outputs"]["model"])
    pruned = store.find_artifact(state["prune"]["outputs"]["model"])
    student_shape = yaml.safe_load((distilled.path / "model_config.yaml").read_text())
    assert student_shape["n_layer"] == teacher_shape["n_layer"] - 1
    assert student_shape["intermediate_size"] < teacher_shape["intermediate_size"]
    assert student_shape["block_size"] == teacher_shape["block_size"]  # measured with the teacher's windows
    assert pruned.metadata["prune"]["heal"] == "lora"
    assert distilled.metadata["distill"]["init"] == "teacher"

    rows = {r["stage"]: r for r in optimize_rows(state, store)}
    assert list(rows) == ["distill", "prune"]
    for row, art in ((rows["distill"], distilled), (rows["prune"], pruned)):
        assert row["model"] == art.id
        assert row["source_params"] == stored_params(source.path)
        assert row["params"] == stored_params(art.path) < row["source_params"]
        assert row["size_bytes"] == (art.path / "model.safetensors").stat().st_size < row["source_size_bytes"]
        assert math.isfinite(row["perplexity"]) and math.isfinite(row["source_perplexity"])
    assert abs(rows["prune"]["params"] / rows["prune"]["source_params"] - PRUNE_TARGET) < 0.05
    # One source perplexity: the one `workbench eval` gives the source alone on the same text.
    assert rows["distill"]["source_perplexity"] == rows["prune"]["source_perplexity"]
    alone = run_inline("eval", {"models": [model], "tasks": ["perplexity"], "dataset": corpus})
    assert alone.result["metrics"][model]["perplexity"] == pytest.approx(rows["prune"]["source_perplexity"], rel=1e-6)

    cells = _optimized_cells(list(rows.values()))
    p = rows["prune"]
    assert cells[1][0] == "pruned to 75%"
    assert cells[1][1] == f"{p['params']:,} (source {p['source_params']:,}, {p['params'] / p['source_params']:.2f}×)"

    # The demo's terminal report and its JSON summary carry the rows.
    report = Report(rows=[], builds=[], transcript=[], minutes=1.0, optimized=list(rows.values()))
    console = Console(record=True, width=200)
    report.print(console)
    text = console.export_text()
    assert "Smaller models against their source" in text and cells[1][1] in text and cells[0][3] in text
    assert f"from one eval run ({state['smaller']['run_id']})" in " ".join(text.split())
    assert report.summary["optimize"] == list(rows.values())


def test_demo_offers_the_optional_steps() -> None:
    out = run_cli("demo", "--help")
    assert out.returncode == 0 and "--with-optimize" in out.stdout
