"""`data.prepare`: every input format, each cleaning step and filter, the seeded split, the card."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from workbench_data.minhash import jaccard, near_duplicates
from workbench_data.tokencache import token_array

from tests.conftest import make_tokenizer, run_cli
from workbench import locations
from workbench.context import Context
from workbench.errors import Cancelled
from workbench.options import parse_options
from workbench.stages import get_stage
from workbench.store import Store
from workbench.testing import run_inline

STORY = (
    "Mira kept a small notebook in which she wrote down every bird she saw on the walk to "
    "school. In spring there were swallows over the river, blackbirds on the fences and once "
    "a heron standing perfectly still in the reeds. Her brother laughed at the notebook until "
    "the day he wanted to know what the heron was called."
)
OTHER = (
    "The workshop smelled of sawdust and linseed oil. Tomas planed the oak board slowly, "
    "checking it against the light after every pass, because a table top that rocks is worse "
    "than no table at all. By evening the surface was flat enough to hold a glass of water."
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset(run: Any) -> tuple[Path, dict[str, Any]]:
    [art] = run.artifacts("dataset")
    return Path(art.path), json.loads((Path(art.path) / "card.json").read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def corpus(tmp_path: Path) -> Path:
    """A folder mixing .txt, .jsonl and .csv, with one planted case for each filter."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "story.txt").write_text(STORY + "\n", encoding="utf-8")
    (root / "workshop.txt").write_text(OTHER, encoding="utf-8")
    near = STORY.replace("swallows", "martins")  # one word changed: a near duplicate
    assert jaccard(STORY, near) > 0.8
    rows = [
        {"text": STORY},  # exact duplicate of story.txt
        {"text": near},
        {"text": "Too short."},  # short
        {"text": "#### $$$ %%% ^^^ &&& *** ((( ))) {{{ }}} ||| ~~~ +++ === <<< >>> ;;;"},  # symbols
        {"text": "buy now\nbuy now\nbuy now\nbuy now\nbuy now\nlast line here"},  # repeated lines
        {"text": "Eleven quiet lanterns swayed above the harbour while fishermen mended nets."},
    ]
    write_jsonl(root / "more.jsonl", rows)
    with open(root / "table.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerow([1, "A comma, a quote \"inside\", and\na newline all live in this one csv cell."])
        w.writerow([2, "The second csv row talks about gardens, tomatoes and the summer rain."])
    return root


def test_pretrain_corpus_from_a_folder_with_every_filter_counted(tmp_path: Path) -> None:
    run = run_inline("data.prepare", {"sources": [str(corpus(tmp_path))], "val_fraction": 0.25, "seed": 3})
    path, card = dataset(run)
    steps = {s["step"]: s for s in card["filters"]}
    assert card["type"] == "pretrain" and card["counts"]["read"] == 10
    assert steps["quality: symbols"]["removed"] == 1
    assert steps["quality: repeated-lines"]["removed"] == 1
    assert steps["quality: short"]["removed"] == 1
    assert steps["exact duplicates"]["removed"] == 1 and card["duplicates"]["exact"] == 1
    assert card["duplicates"]["near"] == 1
    texts = [r["text"] for split in ("train", "val") for r in read_jsonl(path / f"{split}.jsonl")]
    assert sorted(texts) == sorted([
        STORY, OTHER, "Eleven quiet lanterns swayed above the harbour while fishermen mended nets.",
        "A comma, a quote \"inside\", and\na newline all live in this one csv cell.",
        "The second csv row talks about gardens, tomatoes and the summer rain.",
    ])
    assert card["counts"]["kept"] == 5 and card["counts"]["val"] == 1
    assert sum(card["length_histogram"]["counts"]) == 5
    assert card["lengths"]["max"] == len(STORY)
    titles = [t["title"] for t in run.result["tables"]]
    assert titles[:2] == ["Dataset card: corpus", "Filters"]
    assert run.store.find_artifact(run.result["dataset"]).metrics["train_rows"] == 4


def test_filters_switch_off(tmp_path: Path) -> None:
    src = str(corpus(tmp_path))
    run = run_inline("data.prepare", {"sources": [src], "quality": ["none"], "dedup": False, "near_dedup": False})
    _, card = dataset(run)
    assert card["counts"]["kept"] == 10
    assert [s["step"] for s in card["filters"]] == ["valid rows", "empty after cleaning", "length bounds [1, ∞] chars"]
    run = run_inline("data.prepare", {"sources": [src], "quality": ["short"], "near_dedup": False})
    _, card = dataset(run)
    assert card["counts"]["kept"] == 8  # only the short row and the exact duplicate go


def test_split_is_seeded_and_keeps_the_fraction(tmp_path: Path) -> None:
    docs = [{"text": f"Document number {i} talks about topic {i * 7 % 13} in several plain words."} for i in range(200)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)

    def val_of(seed: int) -> list[str]:
        path, card = dataset(run_inline("data.prepare", {"sources": [str(src)], "seed": seed,
                                                          "val_fraction": 0.1, "near_dedup": False}))
        assert card["counts"]["train"] + card["counts"]["val"] == 200
        return [r["text"] for r in read_jsonl(path / "val.jsonl")]

    a, b, c = val_of(1), val_of(1), val_of(2)
    assert len(a) == 20 and a == b and a != c


def test_cleaning_normalises_unicode_controls_and_whitespace(tmp_path: Path) -> None:
    decomposed = "Cafe\u0301 au lait"  # e + combining acute
    src = write_jsonl(tmp_path / "c.jsonl", [
        {"text": f"{decomposed} is served with\x07 bread\u200b and butter.   \n\n\n\n  Then tea.  "},
        {"text": "ﬁne ｆｕｌｌ width letters and a ligature in one longer sentence here."},
    ])
    path, _ = dataset(run_inline("data.prepare", {"sources": [str(src)], "val_fraction": 0, "unicode": "NFKC"}))
    texts = [r["text"] for r in read_jsonl(path / "train.jsonl")]
    assert texts[0] == "Café au lait is served with bread and butter.\n\n  Then tea."
    assert texts[1] == "fine full width letters and a ligature in one longer sentence here."
    path, _ = dataset(run_inline("data.prepare", {"sources": [str(src)], "val_fraction": 0, "unicode": "none",
                                                  "strip_control": False, "clean_whitespace": False}))
    assert read_jsonl(path / "train.jsonl")[0]["text"].startswith(decomposed)


def test_supervised_formats_become_normalised_rows(tmp_path: Path) -> None:
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hello.", "input": "", "output": "Hello!", "system": "Be brief."},
    ]))
    path, card = dataset(run_inline("data.prepare", {"sources": [str(alpaca)], "val_fraction": 0}))
    assert card["type"] == "instruction"
    assert read_jsonl(path / "train.jsonl") == [
        {"messages": [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                      {"role": "assistant", "content": "5"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."},
                      {"role": "assistant", "content": "Hello!"}]},
    ]

    chat = [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"}]
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "Capital of Peru?", "chosen": "Lima", "rejected": "Cusco"},
        {"prompt": [{"role": "system", "content": "Short answers."}, {"role": "user", "content": "2+2?"}],
         "chosen": "4", "rejected": "5"},
        {"chosen": [*chat[:1], {"role": "assistant", "content": "Lima."}],
         "rejected": [*chat[:1], {"role": "assistant", "content": "Quito."}]},
    ])
    path, card = dataset(run_inline("data.prepare", {"sources": [str(prefs)], "val_fraction": 0}))
    rows = read_jsonl(path / "train.jsonl")
    assert card["type"] == "preference"
    assert rows[0] == {"messages": [chat[0]], "chosen": "Lima", "rejected": "Cusco"}
    assert rows[1]["messages"][0]["role"] == "system" and rows[1]["chosen"] == "4"
    assert rows[2] == {"messages": [chat[0]], "chosen": "Lima.", "rejected": "Quito."}

    labelled = tmp_path / "sms.csv"
    labelled.write_text("message,category\nWin a free cruise now,spam\nSee you at lunch,ham\nCall me later,ham\n")
    path, card = dataset(run_inline("data.prepare", {"sources": [str(labelled)], "text_field": "message",
                                                     "label_field": "category", "val_fraction": 0}))
    assert card["type"] == "classification" and card["labels"] == ["ham", "spam"]
    assert card["label_counts"] == {"ham": {"train": 2, "val": 0}, "spam": {"train": 1, "val": 0}}
    assert read_jsonl(path / "train.jsonl")[0] == {"text": "Win a free cruise now", "label": "spam"}


def test_explicit_validation_sources_drop_rows_seen_in_train(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": STORY}, {"text": OTHER}])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": OTHER}, {"text": "A held-out note about kites, wind and a long afternoon on the hill."}])
    path, card = dataset(run_inline("data.prepare", {"sources": [str(train)], "val_sources": [str(val)]}))
    assert [r["text"] for r in read_jsonl(path / "train.jsonl")] == [STORY, OTHER]
    assert [r["text"] for r in read_jsonl(path / "val.jsonl")] == [
        "A held-out note about kites, wind and a long afternoon on the hill."]
    assert card["duplicates"]["val_overlap"] == 1 and card["settings"]["split"].startswith("fixed")


def test_card_counts_tokens_and_fills_the_token_cache(tmp_path: Path) -> None:
    tok_dir = make_tokenizer(tmp_path / "tok")
    ctx = Context(Store())
    staged = ctx.staging_dir("tokenizer")
    for f in tok_dir.iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    tok = ctx.register("tokenizer", staged, name="tok")
    run = run_inline("data.prepare", {"sources": [str(corpus(tmp_path))], "tokenizer": tok.id})
    path, card = dataset(run)
    assert card["tokens"]["train"] == len(token_array(path, Path(tok.path), "train")) > 0
    assert card["tokens"]["chars_per_token"] > 1
    assert run.store.find_artifact(run.result["dataset"]).parents == [tok.id]


def test_cli_prints_the_card(tmp_path: Path) -> None:
    proc = run_cli("data", "prepare", str(corpus(tmp_path)), "--name", "mixed")
    assert proc.returncode == 0, proc.stderr
    for text in ("Dataset card: mixed", "Filters", "near duplicates", "Relevance, quality, diversity"):
        assert text in proc.stdout


def test_minhash_finds_near_duplicates_and_spares_different_texts() -> None:
    endings = ["rivers", "mountains", "forests", "deserts"]
    texts = [STORY, OTHER, *[f"{STORY} It ends with {w}." for w in endings], STORY.upper(), "",
             OTHER + " Nobody complained."]
    mask = near_duplicates(texts, threshold=0.8).tolist()
    best = [max((jaccard(t, e) for e in texts[:i] if e), default=0.0) if t else 0.0 for i, t in enumerate(texts)]
    assert all(b >= 0.85 for b in best[2:7]) and best[8] >= 0.85  # what the planted copies really are
    assert mask == [False, False, True, True, True, True, True, False, True]


@pytest.mark.parametrize("unit,expected", [("file", 1), ("paragraph", 3), ("line", 4)])
def test_txt_units(tmp_path: Path, unit: str, expected: int) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("first paragraph line one\nline two of the first paragraph\n\nsecond paragraph here ok\n\n"
                   "third paragraph is this one\n")
    _, card = dataset(run_inline("data.prepare", {"sources": [str(src)], "txt_unit": unit, "quality": ["none"],
                                                  "near_dedup": False, "val_fraction": 0}))
    assert card["counts"]["kept"] == expected


def test_cancel_leaves_no_half_dataset_or_cache_entry(tmp_path: Path) -> None:
    class CancelWhileTokenizing(Context):
        def progress(self, step: int, total: int | None = None, *, unit: str = "step", desc: str | None = None) -> None:
            if desc and desc.startswith("tokenizing") and step > 0:
                self.cancel_requested = True  # what the worker's SIGINT handler does
            super().progress(step, total, unit=unit, desc=desc)

    tok_ctx = Context(Store())
    staged = tok_ctx.staging_dir("tokenizer")
    for f in make_tokenizer(tmp_path / "tok").iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    tok = tok_ctx.register("tokenizer", staged, name="tok")
    docs = [{"text": f"Row {i} has words about {i % 17} lanterns and {i % 5} harbours."} for i in range(5000)]
    src = write_jsonl(tmp_path / "many.jsonl", docs)
    stage = get_stage("data.prepare")
    options = parse_options(stage.Options, {"sources": [str(src)], "tokenizer": tok.id, "near_dedup": False})
    with pytest.raises(Cancelled):
        stage().run(options, CancelWhileTokenizing(Store()))
    assert Store().list_artifacts("dataset") == []
    assert list(locations.kind_dir("dataset").iterdir()) == []
    tokens = locations.cache_dir() / "tokens"
    assert not tokens.exists() or list(tokens.iterdir()) == []
