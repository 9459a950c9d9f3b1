"""`workbench eval` through the real CLI and worker, its refusals of bad input, and the pieces it
is built from (MMLU files, Wilson intervals, perplexity windows, the shipped suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_TEXT, make_tiny_model
from tests.stages.test_eval import register, write_dataset
from workbench.errors import UserError


def _runs(workspace: Path) -> list[Path]:
    return list((workspace / "runs").glob("*")) if (workspace / "runs").exists() else []


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    lines = [line for line in SAMPLE_TEXT.splitlines() if line.strip()]
    docs = [{"text": f"{a} {b}"} for a, b in zip(lines, lines[1:] + lines[:1], strict=True)]
    return register(write_dataset(tmp_path / "corpus", "pretrain", docs, docs), "dataset", "corpus")


def test_two_models_named_as_words_give_one_table_and_a_report(registered_tiny_model, corpus, tmp_path, cli, workspace):
    other = register(make_tiny_model(tmp_path / "other", seed=1), "model", "tiny-other")
    out = cli("eval", registered_tiny_model, other, "--dataset", "corpus", "--tasks", "perplexity,mc",
              "--limit", "4", "--limits", "mc=3", "--json")
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    result = done["result"]
    assert done["status"] == "done" and list(result["metrics"]) == [registered_tiny_model, other]
    for figures in result["metrics"].values():
        assert figures["perplexity"] > 1 and 0 <= figures["mc_accuracy"] <= 1
        assert figures["mc_ci_low"] <= figures["mc_accuracy"] <= figures["mc_ci_high"]
    # Two random models with different seeds measure differently on the same token ids.
    assert result["metrics"][registered_tiny_model]["perplexity"] != result["metrics"][other]["perplexity"]
    assert [a["kind"] for a in done["artifacts"]] == ["eval-report"] and done["artifacts"][0]["id"] == result["report"]
    saved = json.loads((Path(done["artifacts"][0]["path"]) / "report.json").read_text())
    assert all(d["mc"]["n"] == 3 for d in saved["details"].values())  # --limits overrides --limit per task

    shown = cli("eval", "--compare", registered_tiny_model, other, "--tasks", "perplexity", "--dataset", "corpus",
                "--limit", "2")
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "metric" in line)
    assert header.index("tiny-random") < header.index("tiny-other") and "perplexity" in shown.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "generation"], "task 'generation' cannot run: no instruction dataset was given"),
    (["--dataset", "chats"], "holds 'instruction' data, but --dataset needs a 'pretrain' dataset"),
    (["--tasks", "judge"], "task 'judge' cannot run: it needs a judge model"),
    (["--tasks", "mc", "--mc", "missing.jsonl"], "--mc missing.jsonl: no such file or folder"),
    (["--context", "64", "--stride", "100"], "--stride 100 is longer than --context 64"),
    (["--limits", "speed=3"], "--limits takes TASK=N with TASK one of perplexity, mc"),
])
def test_bad_input_is_refused_before_a_run_exists(registered_tiny_model, workspace, tmp_path, cli, args, message):
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    register(write_dataset(tmp_path / "chats", "instruction", chats, chats), "dataset", "chats")
    out = cli("eval", registered_tiny_model, *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr.replace("\n", " ")
    assert "Traceback" not in out.stderr and _runs(workspace) == []


def test_a_bad_multiple_choice_row_is_named_by_file_and_line(registered_tiny_model, workspace, tmp_path, cli):
    bad = tmp_path / "my-mmlu.jsonl"
    bad.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": "B"}) + "\n"
                   + json.dumps({"question": "3+3?", "choices": ["6", "5"], "answer": "E"}) + "\n")
    out = cli("eval", registered_tiny_model, "--mc", str(bad))
    assert out.returncode == 2
    assert f"{bad}:2: the answer 'E' names no choice" in out.stderr.replace("\n", "")
    assert _runs(workspace) == []


def test_mmlu_files_are_read_as_jsonl_csv_and_folders(tmp_path):
    from workbench_evaluate.mcfile import prompt_and_continuations, read_questions

    folder = tmp_path / "mmlu" / "test"
    folder.mkdir(parents=True)
    # MMLU's own layout: no header, question, four choices, answer letter; subject from the file name.
    (folder / "astronomy_test.csv").write_text('"Which planet is largest?",Mars,Jupiter,Venus,Earth,B\n'
                                               '"A, B or C?",a,b,c,d,C\n')
    (folder / "logic_test.csv").write_text("question,A,B,C,D,answer,subject\nIs it?,yes,no,maybe,never,A,logic\n")
    (tmp_path / "hf.jsonl").write_text(json.dumps({"question": "Q?", "choices": ["w", "x", "y", "z"], "answer": 3}) + "\n"
                                       + json.dumps({"question": "R?", "A": "p", "B": "q", "answer": "a"}) + "\n")
    questions = read_questions(tmp_path / "mmlu")
    assert [(q.subject, q.answer, len(q.choices)) for q in questions] == [("astronomy", 1, 4), ("astronomy", 2, 4),
                                                                          ("logic", 0, 4)]
    assert questions[1].question == "A, B or C?"
    hf = read_questions(tmp_path / "hf.jsonl")
    assert [(q.answer, q.choices) for q in hf] == [(3, ["w", "x", "y", "z"]), (0, ["p", "q"])]
    prompt, conts = prompt_and_continuations(questions[0], "letter")
    assert prompt.startswith("The following are multiple choice questions (with answers) about astronomy.")
    assert prompt.endswith("A. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:") and conts == [" A", " B", " C", " D"]
    prompt, conts = prompt_and_continuations(questions[0], "cloze")
    assert prompt == "Question: Which planet is largest?\nAnswer:" and conts[1] == " Jupiter"

    (folder / "broken_test.csv").write_text("ok?,a,b,c,d,A\nshort,row\n")
    with pytest.raises(UserError, match=r"broken_test\.csv:2: an MMLU row is question, the choices, then the answer"):
        read_questions(tmp_path / "mmlu")


def test_wilson_interval_matches_known_values():
    from workbench_evaluate.scores import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(90, 100)
    assert low == pytest.approx(0.8256, abs=1e-4) and high == pytest.approx(0.9448, abs=1e-4)
    for n in range(1, 60):  # at 0% and 100% the bounds hold the proportion exactly, despite rounding
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


@pytest.mark.parametrize(("n", "context", "stride"), [(1000, 128, 64), (1000, 128, 128), (100, 128, 64), (2, 8, 4),
                                                      (257, 64, 1)])
def test_perplexity_windows_score_every_token_but_the_first_exactly_once(n, context, stride):
    from workbench_evaluate.tasks import windows

    scored = []
    for begin, end, first in windows(n, context, stride):
        assert end - begin <= context and begin < first <= end
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_target_log_probabilities_are_a_float64_log_softmax_whatever_the_row_chunks(monkeypatch):
    import numpy as np
    import torch
    from workbench_evaluate import backends

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 8, size=(37, 1000)).astype(np.float32)
    targets = rng.integers(0, 1000, size=37)
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    want = x[np.arange(37), targets] - top - np.log(np.exp(x - top[:, None]).sum(axis=1))
    for elements in (1 << 22, 5000, 1):  # all rows at once, five at a time, one at a time
        monkeypatch.setattr(backends, "LOGSOFTMAX_ELEMENTS", elements)
        got = backends.target_logprobs(torch.from_numpy(logits), targets.tolist())
        assert got.dtype == np.float64 and got.shape == (37,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_the_shipped_suite_is_what_its_generator_makes():
    from workbench_evaluate.mcfile import read_questions
    from workbench_evaluate.plan import MC_SUITE

    out = subprocess.run([sys.executable, str(ROOT / "assets" / "mc" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    questions = read_questions(MC_SUITE)
    assert len(questions) == 180 and all(len(q.choices) == 4 for q in questions)
    assert {q.subject for q in questions} == {"geography", "vocabulary", "animal_sounds", "colors", "arithmetic",
                                              "spelling"}
    # The correct letter is spread over the four slots, so always answering one letter scores near chance.
    counts = [sum(q.answer == i for q in questions) for i in range(4)]
    assert max(counts) / len(questions) < 0.4
