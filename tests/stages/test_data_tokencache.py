"""The token cache: built once from a pretrain split, identical to plain encoding, reused after."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from workbench_data.tokencache import cache_meta, count_tokens, token_array

from tests.conftest import SAMPLE_TEXT, make_tokenizer
from workbench import locations
from workbench.errors import UserError

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Unicode: café, naïve, Zürich, 東京, emoji 🙂.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 3.14159, 2024, 1_000_000.",
] * 25


def make_dataset(path: Path, docs: list[str], kind: str = "pretrain") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "card.json").write_text(json.dumps({"type": kind}))
    for split, rows in (("train", docs), ("val", docs[:3])):
        with open(path / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in rows)
    return path


def expected_ids(tok_dir: Path, docs: list[str]) -> list[int]:
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    return [i for d in docs for i in (*tok.encode(d, add_special_tokens=False).ids, eos)]


def test_token_array_equals_plain_encoding_with_eos_after_each_doc(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", DOCS)
    tok = make_tokenizer(tmp_path / "tok")
    calls: list[tuple[int, int]] = []
    arr = token_array(ds, tok, "train", progress=lambda done, total: calls.append((done, total)))
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    assert arr.tolist() == expected_ids(tok, DOCS)
    assert calls[0] == (0, len(DOCS)) and calls[-1] == (len(DOCS), len(DOCS))
    with pytest.raises(ValueError):
        arr[0] = 1  # read-only: a consumer cannot corrupt the shared cache
    assert token_array(ds, tok, "val").tolist() == expected_ids(tok, DOCS[:3])
    assert count_tokens(ds, tok, "train") == len(arr)


def test_cache_is_reused_and_keyed_by_content(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", DOCS)
    tok = make_tokenizer(tmp_path / "tok")
    first = token_array(ds, tok)
    entries = sorted((locations.cache_dir() / "tokens").iterdir())
    mtime = (Path(first.filename)).stat().st_mtime_ns
    calls: list[tuple[int, int]] = []
    again = token_array(ds, tok, progress=lambda d, t: calls.append((d, t)))
    assert calls == [] and again.filename == first.filename  # nothing re-encoded
    assert Path(again.filename).stat().st_mtime_ns == mtime

    # A copy of the same dataset elsewhere hits the same entry: the key is the content.
    copy = make_dataset(tmp_path / "copy", DOCS)
    assert token_array(copy, tok).filename == first.filename

    changed = make_dataset(tmp_path / "changed", [*DOCS, "one more document"])
    other_tok = make_tokenizer(tmp_path / "tok2", vocab_size=300)
    assert token_array(changed, tok).filename != first.filename
    assert token_array(ds, other_tok).tolist() == expected_ids(other_tok, DOCS)
    assert len(list((locations.cache_dir() / "tokens").iterdir())) == len(entries) + 2
    assert cache_meta(ds, tok)["n_docs"] == len(DOCS)


def test_uint32_when_the_vocabulary_does_not_fit_uint16(tmp_path: Path) -> None:
    tok_dir = make_tokenizer(tmp_path / "tok")
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.add_special_tokens([f"<|x{i}|>" for i in range(66_000)])
    tok.save(str(tok_dir / "tokenizer.json"))
    big_id = tok.token_to_id("<|x65999|>")
    assert big_id > 65_535
    ds = make_dataset(tmp_path / "ds", ["before <|x65999|> after", SAMPLE_TEXT])
    arr = token_array(ds, tok_dir)
    assert arr.dtype == np.uint32 and big_id in arr.tolist()
    assert arr.tolist() == expected_ids(tok_dir, ["before <|x65999|> after", SAMPLE_TEXT])


def test_concurrent_builders_agree(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", DOCS * 4)
    tok = make_tokenizer(tmp_path / "tok")
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(token_array(ds, tok).tolist())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and results[0] == results[1] == results[2] == expected_ids(tok, DOCS * 4)
    leftovers = [p.name for p in (locations.cache_dir() / "tokens").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_only_pretrain_datasets_have_token_arrays(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", DOCS, kind="instruction")
    tok = make_tokenizer(tmp_path / "tok")
    with pytest.raises(UserError, match="instruction dataset"):
        token_array(ds, tok)
    good = make_dataset(tmp_path / "good", DOCS)
    with pytest.raises(UserError, match="no 'test' split"):
        token_array(good, tok, "test")
