"""Generate the shipped multiple-choice suite (MMLU format) from the demo data's tables.

    python assets/mc/generate.py            # rewrite workbench-mc.jsonl next to this script
    python assets/mc/generate.py --check    # fail if the committed file differs from a fresh run

Every question has four choices, one correct, and the correct letter is drawn with a fixed
seed, so the file is identical on every run and platform. The facts come from the tables in
`assets/generate.py` (capitals, opposites, animal sounds, colours, words), the same ones the demo
pretraining corpus states in prose, so a model pretrained on that corpus can show progress here.
Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

SEED = 2024
PER_SUBJECT = 40
HERE = Path(__file__).resolve().parent
OUT = HERE / "workbench-mc.jsonl"
LETTERS = "ABCD"


def _tables() -> ModuleType:
    """`assets/generate.py`, loaded from its file (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("workbench_demo_tables", HERE.parent / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Item = tuple[str, str, list[str]]  # question, correct answer, wrong answers to draw from


def _from_table(table: dict[str, str], question: str) -> Iterator[Item]:
    values = sorted(set(table.values()))
    for key, value in sorted(table.items()):
        yield question.format(key), value, [v for v in values if v != value]


def _arithmetic(rng: random.Random) -> Iterator[Item]:
    while True:
        a, b = rng.randrange(2, 21), rng.randrange(2, 21)
        if rng.random() < 0.5:
            right, q = a + b, f"What is {a} + {b}?"
        else:
            a, b = max(a, b), min(a, b)
            right, q = a - b, f"What is {a} - {b}?"
        near = [right + d for d in (-2, -1, 1, 2, 10) if right + d >= 0]
        yield q, str(right), [str(n) for n in near]


def _spelling(t: ModuleType, rng: random.Random) -> Iterator[Item]:
    words = sorted(set(t.WORDS))
    while True:
        w = rng.choice(words)
        kind = rng.randrange(3)
        if kind == 0:
            yield f"How many letters are in the word {w}?", str(len(w)), [str(n) for n in range(2, 9) if n != len(w)]
        elif kind == 1:
            others = sorted({x[0] for x in words} - {w[0]})
            yield f"What is the first letter of {w}?", w[0], others
        elif w[::-1] != w:
            yield f"What is {w} spelled backwards?", w[::-1], [w, w[1:] + w[0], w[-1] + w[:-1]]


def subjects(t: ModuleType, rng: random.Random) -> dict[str, Callable[[], Iterator[Item]]]:
    return {
        "geography": lambda: _from_table(t.CAPITALS, "What is the capital of {}?"),
        "vocabulary": lambda: _from_table(t.OPPOSITES, "What is the opposite of {}?"),
        "animal_sounds": lambda: _from_table(t.SOUNDS, "What sound does a {} make?"),
        "colors": lambda: _from_table(t.COLORS, "What color is {}?"),
        "arithmetic": lambda: _arithmetic(rng),
        "spelling": lambda: _spelling(t, rng),
    }


def build() -> list[dict[str, object]]:
    rng = random.Random(SEED)
    t = _tables()
    rows: list[dict[str, object]] = []
    for subject, make in subjects(t, rng).items():
        seen: set[str] = set()
        for question, right, wrong in make():
            if len(seen) >= PER_SUBJECT:
                break
            if question in seen or len(set(wrong) - {right}) < 3:
                continue
            seen.add(question)
            choices = rng.sample(sorted(set(wrong) - {right}), 3)
            slot = rng.randrange(4)
            choices.insert(slot, right)
            rows.append({"subject": subject, "question": question, "choices": choices, "answer": LETTERS[slot]})
    rng.shuffle(rows)  # subjects interleaved, so `--limit` keeps a mix
    return rows


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=OUT, help="output file")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        if not args.out.exists() or args.out.read_text(encoding="utf-8") != text:
            print(f"{args.out} is out of date (run python assets/mc/generate.py)", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.out}: {text.count(chr(10))} questions, {len(text.encode()):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
