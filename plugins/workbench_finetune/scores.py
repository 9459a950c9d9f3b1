"""Classification scores from label indices: accuracy, per-class and macro precision, recall and
F1, and the confusion matrix. Plain Python; a class with no predictions scores 0 precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Scores:
    labels: list[str]
    accuracy: float
    per_class: list[ClassScore]
    confusion: list[list[int]]  # rows: true label, columns: predicted label

    @property
    def macro_precision(self) -> float:
        return sum(c.precision for c in self.per_class) / len(self.per_class)

    @property
    def macro_recall(self) -> float:
        return sum(c.recall for c in self.per_class) / len(self.per_class)

    @property
    def macro_f1(self) -> float:
        return sum(c.f1 for c in self.per_class) / len(self.per_class)

    def metrics(self) -> dict[str, float]:
        out = {"accuracy": self.accuracy, "precision": self.macro_precision,
               "recall": self.macro_recall, "f1": self.macro_f1}
        for c in self.per_class:
            out.update({f"precision_{c.label}": c.precision, f"recall_{c.label}": c.recall, f"f1_{c.label}": c.f1})
        return out

    def tables(self) -> list[dict[str, Any]]:
        rows: list[list[Any]] = [[c.label, c.precision, c.recall, c.f1, c.support] for c in self.per_class]
        rows.append(["macro", self.macro_precision, self.macro_recall, self.macro_f1, sum(c.support for c in self.per_class)])
        scores = {"title": f"Held-out scores (accuracy {self.accuracy:.4f})",
                  "columns": ["label", "precision", "recall", "f1", "support"], "rows": rows}
        confusion = {"title": "Confusion matrix (rows: true, columns: predicted)",
                     "columns": ["true \\ predicted", *self.labels],
                     "rows": [[label, *row] for label, row in zip(self.labels, self.confusion, strict=True)]}
        return [scores, confusion]


def score(labels: list[str], truth: list[int], predicted: list[int]) -> Scores:
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(truth, predicted, strict=True):
        confusion[t][p] += 1
    per_class = []
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted_i = sum(confusion[r][i] for r in range(k))
        support = sum(confusion[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassScore(label, precision, recall, f1, support))
    accuracy = sum(confusion[i][i] for i in range(k)) / max(1, len(truth))
    return Scores(labels, accuracy, per_class, confusion)
