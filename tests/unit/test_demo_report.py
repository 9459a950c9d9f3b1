"""The demo report's verdicts: improvement rows, the forgetting bound, and the chat's count."""

from __future__ import annotations

import json

from workbench.demo_report import FORGETTING_BOUND, Report, Row


def forgetting(before: float, after: float) -> Row:
    return Row("LoRA", "corpus perplexity (forgetting)", before, after, "bounded", "pretrained", "LoRA",
               bound=FORGETTING_BOUND)


def test_corpus_perplexity_may_rise_up_to_the_bound_and_no_further() -> None:
    assert forgetting(20.0, 39.9).ok and forgetting(20.0, 39.9).verdict == "within 2×"
    assert forgetting(20.0, 12.0).ok
    over = forgetting(20.0, 64.0)
    assert not over.ok and over.verdict == "OVER 2×"
    assert "rose more than 2×" in over.warning
    assert not forgetting(20.0, None).ok  # type: ignore[arg-type]


def test_improvement_rows_need_a_change_in_the_right_direction() -> None:
    em = Row("LoRA", "instruction exact match (held-out)", 0.0, 0.4, "higher", "pretrained", "LoRA")
    ppl = Row("pretrain", "validation perplexity", 1200.0, 1200.0, "lower", "untrained", "pretrained")
    assert em.ok and em.verdict == "improved"
    assert not ppl.ok and ppl.verdict == "NOT improved"


def test_the_chat_count_is_the_number_of_right_answers() -> None:
    turns = [{"prompt": "q", "expected": "a", "reply": "a", "correct": True},
             {"prompt": "q", "expected": "b", "reply": "c", "correct": False},
             {"prompt": "q", "expected": "d", "reply": "d", "correct": True}]
    report = Report(rows=[], builds=[], transcript=turns, minutes=1.0)
    assert report.chat_correct == 2 and report.summary["chat_correct"] == 2
    assert report.chat_line == "The Q4_K_M build answered 2 of 3 held-out questions correctly."


def test_the_report_goes_on_to_the_arena_and_the_monitored_server() -> None:
    from workbench.demo_report import next_steps

    outputs = {"lora": {"model": "model-sft"}, "dpo": {"model": "model-dpo"}}
    builds = [{"quant": "f16", "id": "gguf-f16"}, {"quant": "q4_k_m", "id": "gguf-q4"}]
    commands = [cmd for cmd, _ in next_steps(outputs, builds)]
    assert commands == ["workbench arena model-sft model-dpo", "workbench chat gguf-q4", "workbench serve gguf-q4"]
    assert "workbench monitor gguf-q4 --follow" in next_steps(outputs, builds)[2][1]


def test_the_tui_is_told_both_report_paths_or_the_error_from_the_demo_log(workspace) -> None:
    from workbench import demo

    log = demo.log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("step 1\nwarning: LoRA did not improve\nreport: /w/report.md\nreport page: /w/report.html\n")
    assert demo.outcome() == "report: /w/report.md\nreport page: /w/report.html"
    log.write_text("step 1\nreport: /w/report.md\n")  # a demo from before the HTML page
    assert demo.outcome() == "report: /w/report.md"
    log.write_text("step 1\nerror: demo step 'lora' (finetune.lora) ended with exit code 1\n")
    assert demo.outcome() == "error: demo step 'lora' (finetune.lora) ended with exit code 1"


def test_both_smaller_models_are_set_against_one_perplexity_of_their_source(workspace, tmp_path) -> None:
    """Distill and prune each measure their source their own way (other windows, other lengths);
    the report's rows take every perplexity from the demo's one eval run over all three models,
    with the main eval step's settings, and say what it was measured on."""
    import shutil

    from tests.conftest import SAMPLE_TEXT, make_tiny_model
    from workbench.context import Context
    from workbench.demo_optimize import optimize_rows, optimize_steps
    from workbench.demo_report import _optimized_cells, _optimized_note
    from workbench.store import Store, new_id
    from workbench.testing import run_inline

    store = Store()

    def register(kind: str, fill, name: str, run_id: str | None = None, **fields) -> str:
        ctx = Context(store, run_id=run_id)
        staged = ctx.staging_dir(kind)
        fill(staged)
        return ctx.register(kind, staged, name=name, **fields).id

    def model(name: str, seed: int, **shape) -> str:
        made = make_tiny_model(tmp_path / name, seed=seed, **shape)
        return register("model", lambda d: (shutil.rmtree(d), shutil.copytree(made, d)), name,
                        metadata={"family": "llama"})

    def corpus(d) -> None:
        lines = [s.strip() for s in SAMPLE_TEXT.split(".") if s.strip()]
        (d / "card.json").write_text(json.dumps({"type": "pretrain"}))
        for split, part in (("train", lines[::2]), ("val", lines[1::2])):
            (d / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))

    def stage_run(stage: str, out: str, source_ppl: float) -> dict:
        """A finished run whose own table set `out` against a source perplexity of its own."""
        run_id = new_id("run")
        store.add_run(run_id, stage, "workbench", "0.1.0", {}, workspace / "runs" / run_id)
        store.update_run(run_id, status="done", result={"model": out, "measured": [
            {"name": "source", "params": 1, "size_bytes": 1, "ppl": source_ppl},
            {"name": "smaller", "params": 1, "size_bytes": 1, "ppl": 2 * source_ppl}]})
        return {"run_id": run_id, "outputs": {"model": out}}

    source, student, pruned = model("dpo", 0), model("student", 1, n_layer=1), model("pruned", 2, intermediate_size=96)
    data = register("dataset", corpus, "demo-corpus")
    state = {"distill": stage_run("distill", student, 22.23), "prune": stage_run("prune", pruned, 24.1)}
    outputs = {"corpus": {"dataset": data}, "pretrain": {"model": source}, "lora": {"model": source},
               "dpo": {"model": source}, "distill": {"model": student}, "prune": {"model": pruned},
               "instructions": {"dataset": data}, "preferences": {"dataset": data}}

    step = optimize_steps("quick", store)[-1]
    options = step.options(outputs)
    assert options["models"] == [source, student, pruned] and options["tasks"] == ["perplexity"]
    assert options["dataset"] == data and options["limits"] == ["perplexity=48"]  # the main eval step's
    evaluated = run_inline(step.stage, options)
    state["smaller"] = {"run_id": evaluated.id, "outputs": {"eval-report": evaluated.result["report"]}}

    rows = optimize_rows(state, store)
    figures = evaluated.result["metrics"]
    assert [r["stage"] for r in rows] == ["distill", "prune"]
    assert rows[0]["source_perplexity"] == rows[1]["source_perplexity"] == figures[source]["perplexity"]
    assert [r["perplexity"] for r in rows] == [figures[student]["perplexity"], figures[pruned]["perplexity"]]
    shown = f"source {figures[source]['perplexity']:.4g}, "
    assert [shown in cells[3] for cells in _optimized_cells(rows)] == [True, True]
    note = _optimized_note(rows)
    assert note.startswith(f"Perplexity of the source and both smaller models from one eval run ({evaluated.id}), "
                           "on the same ") and "of demo-corpus's validation split:" in note
    assert "windows of 128 tokens, 64 apart." in note  # the tiny models' context, half a window of stride
