"""Classification finetuning on a tiny model and the demo spam/ham set: clearly better than
chance, scored with precision/recall/F1 and a confusion matrix, usable through `workbench
predict`, and a labelled file with the wrong columns is refused before a run exists."""

from __future__ import annotations

import csv
import json
from itertools import islice

import pytest

from tests.conftest import ROOT, run_cli
from tests.stages.resume import assert_resumes_exactly
from workbench.context import Context
from workbench.errors import UserError
from workbench.store import Store
from workbench.testing import run_inline

DEMO = ROOT / "assets" / "data"


def demo_rows(split: str, n: int) -> list[dict]:
    with open(DEMO / f"classification.{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in islice(fh, n)]


def register_classification(train: list[dict], val: list[dict], name: str = "spam") -> str:
    """A `classification` dataset artifact as `workbench data prepare` writes it."""
    ctx = Context(Store())
    staged = ctx.staging_dir("dataset")
    labels = sorted({r["label"] for r in train + val})
    (staged / "card.json").write_text(json.dumps({"type": "classification", "labels": labels,
                                                  "train_rows": len(train), "val_rows": len(val)}))
    for split, rows in (("train", train), ("val", val)):
        with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return ctx.register("dataset", staged, name=name, metadata={"type": "classification"}).id


def options(model: str, data: str, **extra) -> dict:
    return {"model": model, "data": data, "device": "cpu", "precision": "32-true", "batch_size": 16,
            "lr": 3e-3, "warmup_steps": 5, "seed": 1, **extra}


@pytest.mark.slow
def test_classifier_beats_chance_on_the_demo_set_and_predicts_through_the_cli(registered_tiny_model):
    train, val = demo_rows("train", 320), demo_rows("val", 120)
    data = register_classification(train, val)
    run = run_inline("finetune.classify", options(registered_tiny_model, data, epochs=3, train_blocks=1,
                                                  eval_every=20, name="spam-filter"))
    majority = max(sum(r["label"] == label for r in val) for label in ("spam", "ham")) / len(val)
    assert run.result["accuracy"] >= max(0.85, majority + 0.2), run.result
    assert run.result["f1"] >= 0.8

    scores, confusion = run.result["tables"]
    assert scores["columns"] == ["label", "precision", "recall", "f1", "support"]
    assert [row[0] for row in scores["rows"]] == ["ham", "spam", "macro"]
    assert sum(sum(row[1:]) for row in confusion["rows"]) == len(val)
    correct = sum(row[1 + i] for i, row in enumerate(confusion["rows"]))
    assert correct / len(val) == pytest.approx(run.result["accuracy"])

    store = Store()
    art = store.find_artifact("spam-filter", ("classifier",))
    assert set(art.parents) == {registered_tiny_model, data}
    assert art.metrics["accuracy"] == pytest.approx(run.result["accuracy"])
    assert {"precision", "recall", "f1", "f1_spam", "f1_ham"} <= set(art.metrics)
    assert art.metadata["confusion_matrix"] == [row[1:] for row in confusion["rows"]]
    spec = json.loads((art.path / "classifier.json").read_text())
    assert spec["labels"] == ["ham", "spam"] and spec["base_model"] == registered_tiny_model
    assert {"accuracy", "val_loss"} <= {k for e in run.events if e["type"] == "metric" for k in e["values"]}

    # `predict` loads exactly the trained classifier: over the held-out texts it scores what the stage scored.
    result = run_cli("predict", "spam-filter", *(r["text"] for r in val), "--json")
    assert result.returncode == 0, result.stderr
    predicted = json.loads(result.stdout)
    hits = sum(p["label"] == r["label"] for p, r in zip(predicted, val, strict=True))
    assert hits / len(val) == pytest.approx(run.result["accuracy"])
    assert all(0.5 <= p["probability"] <= 1 for p in predicted)
    assert sum(predicted[0]["probabilities"].values()) == pytest.approx(1)
    spam = next(p for p, r in zip(predicted, val, strict=True) if r["label"] == p["label"] == "spam")
    plain = run_cli("predict", art.id, spam["text"])
    assert plain.returncode == 0, plain.stderr
    label, probability = plain.stdout.strip().split("\t")
    assert label == "spam" and float(probability) == pytest.approx(spam["probability"], abs=1e-4)


def test_a_labelled_csv_trains_the_head_only(registered_tiny_model, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "messages.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "message", "kind"])
        for i, row in enumerate(demo_rows("train", 80)):
            writer.writerow([i, row["text"], row["label"]])
    run = run_inline("finetune.classify", options(registered_tiny_model, str(path), text_column="message",
                                                  label_column="kind", max_steps=3))
    art = Store().find_artifact(run.result["classifier"])
    assert set(load_file(str(art.path / "classifier.safetensors"))) == {"lm_head.weight", "lm_head.bias"}
    assert art.parents == [registered_tiny_model]
    assert sum(row[-1] for row in run.result["tables"][0]["rows"][:-1]) == 16  # 20% of 80 held out


def test_missing_label_column_names_the_columns_found(registered_tiny_model, tmp_path):
    path = tmp_path / "messages.csv"
    path.write_text("message,category\nhello there,ham\nWIN CASH NOW,spam\n")
    result = run_cli("finetune", "classify", registered_tiny_model, str(path), "--text-column", "message")
    assert result.returncode == 2
    assert "no column 'label'" in result.stderr and "columns found: message, category" in result.stderr
    assert "--label-column" in result.stderr
    assert Store().list_runs() == []


def test_bad_rows_and_wrong_dataset_kinds_are_refused(registered_tiny_model, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "hi", "label": "ham"}\n{"text": "WIN", "label": "spam"}\n{"text": "", "label": "ham"}\n')
    with pytest.raises(UserError, match=r"rows\.jsonl:3: column 'text' is empty"):
        run_inline("finetune.classify", options(registered_tiny_model, str(path)))
    one_label = register_classification([{"text": "a", "label": "x"}] * 3, [{"text": "b", "label": "x"}])
    with pytest.raises(UserError, match="at least two"):
        run_inline("finetune.classify", options(registered_tiny_model, one_label))
    with pytest.raises(UserError, match="neither a labelled file nor a dataset"):
        run_inline("finetune.classify", options(registered_tiny_model, "no-such-data"))
    with pytest.raises(UserError, match="more than the model's 2 blocks"):
        run_inline("finetune.classify", options(registered_tiny_model, str(path), train_blocks=3))


def test_a_bf16_mixed_run_resumed_from_its_checkpoint_ends_at_the_uninterrupted_loss(registered_tiny_model):
    # 16-mixed (with its loss scaler) needs CUDA; on a CPU bf16-mixed is the mixed mode there is.
    data = register_classification(demo_rows("train", 48), demo_rows("val", 16))
    assert_resumes_exactly("finetune.classify", options(
        registered_tiny_model, data, precision="bf16-mixed", batch_size=8, micro_batch_size=4, max_steps=4,
        checkpoint_every=2, eval_every=4, train_blocks=1, grad_clip=0.5))


def test_max_length_is_read_as_max_seq_length():
    from workbench_finetune.stage import ClassifyOptions

    from workbench.options import parse_options

    assert parse_options(ClassifyOptions, {"model": "m", "data": "d", "max_length": 32}).max_seq_length == 32
