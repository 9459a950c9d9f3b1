"""The demo report's verdicts: improvement rows, the forgetting bound, and the chat's count."""

from __future__ import annotations

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
