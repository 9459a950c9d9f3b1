"""What the screens compute from the core, checked without a terminal: lifecycle order, stage
state per model, the lineage forest, comparisons and the run state folded from events."""

from __future__ import annotations

from pathlib import Path

from tests.tui.helpers import add_artifact, add_finished_run, lineage_workspace
from workbench.store import Store
from workbench.tui import data
from workbench.tui.runstate import RunState


def test_catalog_lists_the_lifecycle_in_order_then_third_party_stages(with_plugin: Path) -> None:
    entries = data.catalog()
    names = [e.name for e in entries]
    lifecycle = [name for name, _ in data.LIFECYCLE]
    assert names[: len(lifecycle)] == lifecycle
    assert {"counter", "broken"} <= set(names[len(lifecycle):])
    data.load_catalog(entries)
    by_name = {e.name: e for e in entries}
    assert by_name["counter"].loaded and not by_name["counter"].lifecycle
    assert by_name["counter"].summary.startswith("Count with a seeded random walk")
    # A plugin that fails to import is shown with its error, not raised.
    assert not by_name["broken"].loaded and by_name["broken"].summary


def test_stage_states_follow_the_selected_models_lineage(with_plugin: Path) -> None:
    store = lineage_workspace()
    add_finished_run(store, "run-260101-0cnt01", "counter", "cancelled", [],
                     options={"label": "adapter-260101-cccccc"}, t=7)
    entries = data.catalog()
    data.load_catalog(entries)

    dpo = data.pipeline_states(store, entries, "model-260101-dddddd")
    # Made its ancestors: data prepared and LoRA finetuned; nothing ran on the gguf yet.
    assert dpo["data.prepare"].state == "done"
    assert dpo["finetune.lora"] == data.StageState("done", "adapter-260101-cccccc")
    assert dpo["counter"].state == "ready"  # that run referenced the adapter, not this branch

    adapter = data.pipeline_states(store, entries, "adapter-260101-cccccc")
    assert adapter["counter"] == data.StageState("cancelled", "run-260101-0cnt01")

    other = data.pipeline_states(store, entries, "dataset-260101-aaaaaa")
    assert other["finetune.lora"].state == "done"  # the dataset's descendants count too
    assert data.pipeline_states(store, entries, None)["broken"].state == "unavailable"


def test_forest_puts_each_artifact_under_its_model_parent() -> None:
    store = lineage_workspace()
    roots = data.forest(store.list_artifacts())
    assert [r.artifact.name for r in roots] == ["alpaca-mini", "tiny-base"]
    chain = []
    node = roots[1]
    while node.children:
        chain.append(node.artifact.name)
        node = node.children[0]
    chain.append(node.artifact.name)
    assert chain == ["tiny-base", "tiny-lora", "tiny-dpo", "tiny-dpo-q4_k_m"]
    # The report compares three models; it hangs under one of them and nowhere else.
    def walk(nodes: list[data.Node]) -> list[str]:
        return [node.artifact.id for node in nodes] + [i for node in nodes for i in walk(node.children)]

    ids = walk(roots)
    assert sorted(ids) == sorted(a.id for a in store.list_artifacts())
    assert ids.count("eval-report-260101-ffffff") == 1


def test_comparison_is_found_from_any_model_it_compares() -> None:
    store = lineage_workspace()
    arts = store.list_artifacts()
    by_id = {a.id: a for a in arts}
    comp = data.comparison_for(by_id["adapter-260101-cccccc"], arts)
    assert comp is not None and comp.report.id == "eval-report-260101-ffffff"
    assert comp.labels["model-260101-dddddd"] == "tiny-dpo"
    assert comp.values("accuracy") == [0.25, 0.5, 0.75]
    assert data.comparison_for(by_id["gguf-260101-eeeeee"], arts) is None
    add_artifact(store, "eval-report-260101-000bad", "eval-report", "no-table", metadata={"comparison": "x"})
    assert data.comparison_for(store.find_artifact("eval-report-260101-000bad"), store.list_artifacts()) is None


def test_empty_workspace_is_read_without_creating_it(workspace: Path) -> None:
    with data.open_store() as store:
        assert store is None
    assert not (workspace / "workbench.db").exists()
    entries = data.catalog()
    states = data.pipeline_states(None, entries, None)
    assert set(states) == {e.name for e in entries}


def test_run_state_replays_a_cancelled_then_resumed_run() -> None:
    events = [
        {"type": "started", "time": 0, "attempt": 1},
        *({"type": "metric", "time": 1, "step": s, "values": {"loss": 5.0 - s}} for s in (1, 2, 3)),
        {"type": "progress", "time": 1, "step": 3, "total": 6, "unit": "step", "rate": 2.0, "eta_s": 1.5,
         "elapsed_s": 1.5},
        {"type": "checkpoint", "time": 1, "step": 2, "path": "/ckpt/2"},
        {"type": "cancelled", "time": 2},
        {"type": "started", "time": 3, "attempt": 2, "resume_from": "/ckpt/2"},
        *({"type": "metric", "time": 4, "step": s, "values": {"loss": 4.5 - s}} for s in (3, 4)),
        {"type": "progress", "time": 4, "step": 4, "total": 6, "unit": "step", "rate": 4.0, "eta_s": 0.5,
         "elapsed_s": 0.5},
    ]
    state = RunState()
    state.extend(events)
    assert state.status == "running" and state.attempt == 2
    # Step 3 was run twice; the curve keeps the resumed value once.
    assert state.series["loss"] == [(1.0, 4.0), (2.0, 3.0), (3.0, 1.5), (4.0, 0.5)]
    assert state.fraction == 4 / 6
    assert state.progress_text() == "4/6 step · 4 step/s · ETA 0s · 0s elapsed"
    assert state.curves() == {"loss": state.series["loss"]}
    assert state.new_logs(0)[-1].endswith("resuming from /ckpt/2")
    state.apply({"type": "failed", "time": 5, "error": "boom"})
    assert state.status == "failed" and state.error == "boom" and "ETA" not in state.progress_text()


def test_run_state_plots_other_metrics_when_there_is_no_loss() -> None:
    state = RunState()
    state.extend([{"type": "metric", "time": 0, "step": 1, "values": {"total": 0.5, "b": 1, "c": 2, "d": 3}}])
    assert list(state.curves()) == ["total", "b", "c"]


def test_formats() -> None:
    assert data.fmt_duration(5) == "5s"
    assert data.fmt_duration(62) == "1m02s"
    assert data.fmt_duration(3720) == "1h02m"
    assert data.fmt_num(0.000123) == "0.000123"
    assert data.fmt_num(123456.0) == "1.23e+05"
    assert data.fmt_num(12) == "12"


def test_store_is_closed_after_use(workspace: Path) -> None:
    Store().close()
    with data.open_store() as store:
        assert store is not None
        assert store.list_runs() == []
