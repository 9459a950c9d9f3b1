"""`data prepare` column mapping through the real CLI: differently named columns become the row
shapes later stages read; a column that is not there is one line listing those that are."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def prepare(*args: str) -> tuple[int, dict]:
    proc = run_cli("data", "prepare", *args, "--val-fraction", "0", "--json")
    return proc.returncode, json.loads(proc.stdout or "{}")


def train_rows(out: dict) -> list[dict]:
    (art,) = out["artifacts"]
    return [json.loads(line) for line in (Path(art["path"]) / "train.jsonl").read_text().splitlines()]


def test_preference_columns_from_csv(tmp_path: Path):
    src = tmp_path / "pairs.csv"
    src.write_text("query,good,bad\nWhat is a fox?,An animal.,A rock.\nWhat is a lake?,Water.,Sand.\n")
    code, out = prepare(str(src), "--prompt-field", "query", "--chosen-field", "good", "--rejected-field", "bad")
    assert code == 0, out
    assert out["result"]["type"] == "preference"
    assert train_rows(out)[0] == {"messages": [{"role": "user", "content": "What is a fox?"}],
                                  "chosen": "An animal.", "rejected": "A rock."}


def test_sharegpt_dialog_column(tmp_path: Path):
    src = tmp_path / "chats.jsonl"
    rows = [{"dialog": [{"from": "system", "value": "Be short."}, {"from": "human", "value": f"Say {w}."},
                        {"from": "gpt", "value": w}], "id": i} for i, w in enumerate(["yes", "no"])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = prepare(str(src), "--messages-field", "dialog")
    assert code == 0, out
    assert train_rows(out)[1]["messages"] == [{"role": "system", "content": "Be short."},
                                              {"role": "user", "content": "Say no."},
                                              {"role": "assistant", "content": "no"}]


def test_a_column_that_is_not_there_is_named_with_those_that_are(tmp_path: Path, workspace: Path):
    src = tmp_path / "qa.jsonl"
    src.write_text(json.dumps({"question": "Why?", "answer": "Because."}) + "\n")
    proc = run_cli("data", "prepare", str(src), "--instruction-field", "query", "--output-field", "answer")
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert '--instruction-field names column "query"' in error[0] and "its columns are: question, answer" in error[0]
    listed = run_cli("models", "ls", "--kind", "dataset", "--json")
    assert json.loads(listed.stdout) == []  # nothing registered
