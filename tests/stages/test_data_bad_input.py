"""Bad input through the real CLI: one clear error naming file and line, exit code 2, nothing
registered; `--skip-invalid` drops the bad rows instead and counts them in the card."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from workbench import locations
from workbench.store import Store
from workbench.testing import run_inline

GOOD = json.dumps({"text": "A perfectly ordinary document with enough words to pass the filters."})
GOOD2 = json.dumps({"text": "Another ordinary document, different from the first one in every way."})

CASES = {
    "malformed JSON": ("bad.jsonl", f"{GOOD}\n{GOOD2}\n{{\"text\": \"no closing brace\"\n".encode(),
                       ["bad.jsonl:3", "malformed JSON"]),
    "missing field": ("chat.jsonl",
                      b'{"instruction": "Say hi", "output": "hi"}\n{"instruction": "Say bye"}\n',
                      ["chat.jsonl:2", 'missing field "output"']),
    "wrong type": ("typed.jsonl", f'{GOOD}\n{{"text": 42}}\n'.encode(),
                   ["typed.jsonl:2", 'field "text" must be a string, got a number']),
    "not UTF-8": ("latin1.jsonl", GOOD.encode() + b'\n{"text": "caf\xe9 cr\xe8me"}\n',
                  ["latin1.jsonl:2", "not valid UTF-8 (byte 0xe9"]),
    "empty file": ("empty.jsonl", b"", ["empty.jsonl", "is empty"]),
    "binary file": ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
                    ["image.txt:3", "binary file"]),
    "CSV field count": ("rows.csv", b"text,label\nfine text,ham\nbroken,row,extra\n",
                        ["rows.csv:3", "has 3 fields but the header has 2"]),
    "not an object": ("list.jsonl", f'{GOOD}\n["a", "list"]\n'.encode(),
                      ["list.jsonl:2", "expected a JSON object, got an array"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_and_line_and_registers_nothing(tmp_path: Path, case: str) -> None:
    name, data, expected = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    proc = run_cli("data", "prepare", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    for text in expected:
        assert text in message, message
    assert "Traceback" not in proc.stderr
    assert Store().list_artifacts("dataset") == []
    datasets = locations.kind_dir("dataset")
    assert not datasets.exists() or not any(datasets.iterdir())


def test_skip_invalid_drops_bad_rows_and_counts_them(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "rows.jsonl").write_bytes(
        f'{GOOD}\n{{"text": 42}}\nnot json\n{GOOD2}\n{{"text": "caf\xe9"}}\n'.encode("latin-1"))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    run = run_inline("data.prepare", {"sources": [str(folder)], "skip_invalid": True, "val_fraction": 0})
    [art] = run.artifacts("dataset")
    card = json.loads((Path(art.path) / "card.json").read_text())
    assert card["counts"]["kept"] == 2
    assert card["invalid"]["total"] == 5
    assert card["invalid"]["reasons"] == {"wrong type": 1, "malformed JSON": 1, "not UTF-8": 1,
                                          "empty file": 1, "binary file": 1}
    assert any("rows.jsonl:3" in e for e in card["invalid"]["examples"])
    assert ["invalid rows dropped", 5] in run.result["tables"][0]["rows"]


def test_stage_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = run_cli("data", "prepare")
    assert proc.returncode == 2 and "--demo" in proc.stderr
    proc = run_cli("data", "prepare", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and "missing.jsonl does not exist" in proc.stderr
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    proc = run_cli("data", "prepare", str(tmp_path / "notes.docx"))
    assert proc.returncode == 2 and "unsupported type '.docx'" in proc.stderr
    assert not locations.runs_dir().exists() or not any(locations.runs_dir().iterdir())


def test_parquet_is_read_with_pyarrow_or_asks_for_it(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
        proc = run_cli("data", "prepare", str(path))
        assert proc.returncode == 2 and "pip install pyarrow" in proc.stderr
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [json.loads(GOOD)["text"], json.loads(GOOD2)["text"]]}), path)
    run = run_inline("data.prepare", {"sources": [str(path)], "val_fraction": 0})
    assert run.result["train_rows"] == 2
