"""The `data.prepare` pipeline: read → normalise → clean → filter → de-duplicate → split → card.

Every step counts what it removed, and those counts become the card's filter table. Nothing is
written where the dataset will live until everything is done: the files are built in a staging
directory and registered in one step.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.errors import UserError
from workbench_data import card as cards
from workbench_data import columns
from workbench_data import demo as demos
from workbench_data.clean import Cleaner, QualityRules, quality_checks
from workbench_data.minhash import near_duplicates
from workbench_data.readers import Dropped, Record, RecordError, expand, read
from workbench_data.rows import Row, body, detect_type, exact_key, map_strings, normalizer, strings
from workbench_data.stage import QUALITY_FILTERS, Options


@dataclass
class Item:
    row: Row
    split: str  # "train", "val", or "" for rows the seeded split will place


@dataclass
class Prepared:
    """Everything the pipeline found, for the files and the card."""

    kind: str
    source: str
    records: list[Record]
    val_records: list[Record]
    dropped: Dropped | None
    steps: list[dict[str, Any]]
    duplicates: dict[str, int]
    train: list[Row]
    val: list[Row]


def prepare(options: Options, ctx: Context, *, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the dataset artifact. `origin` describes where the sources came from when they are
    not the user's own files (a Hub dataset): its `source` replaces the file list in the card,
    and all of it is kept in the card and the artifact's metadata, for lineage."""
    t0 = time.monotonic()
    dropped = Dropped() if options.skip_invalid else None
    records, val_records, source = _sources(options, ctx, dropped)
    if origin is not None:
        source = origin["source"]
    kind, items = _normalise(options, records, val_records, dropped, ctx)
    steps: list[dict[str, Any]] = []
    items = _clean(options, items, steps)
    items = _filter(options, kind, items, steps)
    items, duplicates = _dedup(options, kind, items, steps, ctx)
    train, val = _split(options, items)
    if not train:
        raise UserError(
            "no rows are left for training after cleaning and filtering; check the card's filter "
            "counts with --quality none, or loosen --min-chars/--max-chars"
        )
    result = Prepared(kind, source, records, val_records, dropped, steps, duplicates, train, val)

    staged = ctx.staging_dir("dataset")
    try:
        art, card = _write_and_register(options, ctx, result, staged, origin or {})
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # a cancelled or failed run leaves no half dataset
        raise
    ctx.log(f"dataset {art.id} ({kind}): {len(train)} train / {len(val)} val rows "
            f"in {time.monotonic() - t0:.1f}s")
    return {"tables": cards.tables(card), "dataset": art.id, "type": kind,
            "train_rows": len(train), "val_rows": len(val)}


def _write_and_register(options: Options, ctx: Context, p: Prepared, staged: Path,
                        origin: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    for split, rows in (("train", p.train), ("val", p.val)):
        with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    name = options.name or (f"demo-{options.demo}" if options.demo else Path(options.sources[0]).stem)
    card = _card(options, p, name)
    if origin:
        card["origin"] = origin
    tok_id = None
    if options.tokenizer:
        tok_art = ctx.artifact(options.tokenizer, ("tokenizer", "model"))
        tok_id = tok_art.id
        card["tokens"] = _token_counts(p.kind, staged, Path(tok_art.path), p.train, p.val, ctx)
        card["tokens"]["tokenizer"] = tok_id
    (staged / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")

    metrics = {"rows": len(p.train) + len(p.val), "train_rows": len(p.train), "val_rows": len(p.val),
               "characters": card["characters"]}
    if card.get("tokens"):
        metrics["tokens"] = card["tokens"]["train"] + card["tokens"]["val"]
    art = ctx.register(
        "dataset", staged, name=name, parents=[tok_id] if tok_id else [],
        metadata={**origin, "type": p.kind, "source": p.source, "train_rows": len(p.train), "val_rows": len(p.val),
                  **({"labels": card["labels"]} if "labels" in card else {})},
        metrics=metrics,
    )
    return art, card


def _tick(ctx: Context, step: int, total: int, *, unit: str, desc: str) -> None:
    """Progress, and the place a cancel request takes effect (nothing here needs a checkpoint:
    preparing again from the start gives the same dataset)."""
    ctx.check_cancelled()
    ctx.progress(step, total, unit=unit, desc=desc)


# --- reading ---------------------------------------------------------------------------------


def _sources(options: Options, ctx: Context, dropped: Dropped | None) -> tuple[list[Record], list[Record], str]:
    if options.demo == "pretrain":
        ctx.log(f"assembling the demo corpus: {demos.describe('pretrain')}")
        records = demos.pretrain_records(
            options.seed, options.demo_chars,
            lambda i, n: _tick(ctx, i, n, unit="file", desc="reading the standard library"),
        )
        return records, [], demos.describe("pretrain")
    if options.demo:
        train_file, val_file = demos.split_files(options.demo)
        return (_read_all([train_file], options, ctx, dropped), _read_all([val_file], options, ctx, dropped),
                demos.describe(options.demo))
    files = expand(options.sources)
    val_files = expand(options.val_sources)
    desc = ", ".join(options.sources + [f"{v} (validation)" for v in options.val_sources])
    return _read_all(files, options, ctx, dropped), _read_all(val_files, options, ctx, dropped), desc


def _read_all(files: list[Path], options: Options, ctx: Context, dropped: Dropped | None) -> list[Record]:
    records: list[Record] = []
    for i, path in enumerate(files):
        _tick(ctx, i, len(files), unit="file", desc=f"reading {path.name}")
        try:
            records.extend(read(path, txt_unit=options.txt_unit, dropped=dropped))
        except RecordError as err:
            raise UserError(_fix_hint(str(err), options)) from None
    if files:
        _tick(ctx, len(files), len(files), unit="file", desc="read")
    return records


def _fix_hint(message: str, options: Options) -> str:
    return message if options.skip_invalid else f"{message} (or pass --skip-invalid to drop bad rows)"


# --- normalising -----------------------------------------------------------------------------


def _normalise(options: Options, records: list[Record], val_records: list[Record],
               dropped: Dropped | None, ctx: Context) -> tuple[str, list[Item]]:
    if not records:
        raise UserError("no rows were read from the sources; check that the files hold data")
    columns.check_named(options, records[0].value, records[0].source)
    roles = columns.mapping(options)
    records = [Record(columns.rename(r.value, roles), r.where, r.source) for r in records]
    val_records = [Record(columns.rename(r.value, roles), r.where, r.source) for r in val_records]
    kind = options.demo or options.type
    if kind == "auto":
        kind = _detect(records, options, dropped)
    normalise = normalizer(kind, options.text_field, options.label_field)
    items: list[Item] = []
    total = len(records) + len(val_records)
    for i, (split, rec) in enumerate(_tagged(records, val_records)):
        try:
            row = normalise(rec)
        except RecordError as err:
            if dropped is None:
                raise UserError(_fix_hint(f"{err} ({kind} rows)", options)) from None
            dropped.add(err)
            continue
        items.append(Item(row, split))
        if i % 5000 == 0:
            _tick(ctx, i, total, unit="row", desc="checking rows")
    ctx.log(f"{len(items)} {kind} rows read" + (f", {dropped.total} invalid dropped" if dropped and dropped.total else ""))
    return kind, items


def _tagged(records: list[Record], val_records: list[Record]) -> Iterator[tuple[str, Record]]:
    fixed = bool(val_records)
    for rec in records:
        yield ("train" if fixed else ""), rec
    for rec in val_records:
        yield "val", rec


def _detect(records: list[Record], options: Options, dropped: Dropped | None) -> str:
    for rec in records:
        try:
            return detect_type(rec, options.text_field, options.label_field)
        except RecordError as err:
            if dropped is None:
                raise UserError(str(err)) from None
    raise UserError("no row shows what type the dataset is; pass --type")


# --- cleaning, filters, duplicates -----------------------------------------------------------


def _step(steps: list[dict[str, Any]], name: str, before: int, after: int) -> None:
    steps.append({"step": name, "before": before, "removed": before - after, "after": after})


def _clean(options: Options, items: list[Item], steps: list[dict[str, Any]]) -> list[Item]:
    # The generator's instruction and preference rows are exact: an answer's leading space is
    # part of it (assets/generate.py, `_answer`), so their whitespace is kept as written.
    keep_spaces = options.demo in ("instruction", "preference")
    cleaner = Cleaner(options.unicode, options.strip_control, options.clean_whitespace and not keep_spaces)
    _step(steps, "valid rows", len(items), len(items))
    out = []
    for it in items:
        row = map_strings(it.row, cleaner)
        # A row needs every part: an empty answer or prompt is as useless as an empty document.
        if all(s.strip() for s in strings(row)) and row.get("label", "x"):
            out.append(Item(row, it.split))
    _step(steps, "empty after cleaning", len(items), len(out))
    lo, hi = options.min_chars, options.max_chars
    kept = [it for it in out if lo <= len(body(it.row)) and (hi is None or len(body(it.row)) <= hi)]
    _step(steps, f"length bounds [{lo}, {hi if hi is not None else '∞'}] chars", len(out), len(kept))
    return kept


def _quality_filters(options: Options, kind: str) -> list[str]:
    """The chosen filters; by default all of them for documents, none for supervised rows
    (a two-word answer is not a bad document)."""
    names = options.quality if options.quality is not None else (list(QUALITY_FILTERS) if kind == "pretrain" else [])
    return [n for n in names if n != "none"]


def _near_dedup_on(options: Options, kind: str) -> bool:
    """Near-dedup by default only for documents: templated supervised rows look alike by design."""
    return options.near_dedup if options.near_dedup is not None else kind == "pretrain"


def _filter(options: Options, kind: str, items: list[Item], steps: list[dict[str, Any]]) -> list[Item]:
    names = _quality_filters(options, kind)
    rules = QualityRules(options.max_symbol_ratio, options.min_letter_words,
                         options.max_repeated_lines, options.min_words)
    checks = quality_checks(rules)
    for name in names:
        fails = checks[name]
        before = len(items)
        items = [it for it in items if not fails(body(it.row))]
        _step(steps, f"quality: {name}", before, len(items))
    return items


def _dedup(options: Options, kind: str, items: list[Item], steps: list[dict[str, Any]],
           ctx: Context) -> tuple[list[Item], dict[str, int]]:
    counts = {"exact": 0, "near": 0, "val_overlap": 0}
    # Fixed training rows go first, so a held-out row that repeats one is what gets dropped.
    items = sorted(items, key=lambda it: it.split == "val")
    if options.dedup:
        seen: set[bytes] = set()
        train_keys: set[bytes] = set()
        kept = []
        for it in items:
            key = hashlib.blake2b(exact_key(it.row).encode(), digest_size=16).digest()
            if key in seen:
                if it.split == "val" and key in train_keys:
                    counts["val_overlap"] += 1
                continue
            seen.add(key)
            if it.split != "val":
                train_keys.add(key)
            kept.append(it)
        counts["exact"] = len(items) - len(kept)
        _step(steps, "exact duplicates", len(items), len(kept))
        items = kept
    if _near_dedup_on(options, kind):
        mask = near_duplicates(
            [body(it.row) for it in items], threshold=options.near_dedup_threshold, seed=options.seed,
            progress=lambda i, n: _tick(ctx, i, n, unit="row", desc="near-duplicate search"),
        )
        kept = [it for it, dup in zip(items, mask.tolist(), strict=True) if not dup]
        counts["near"] = len(items) - len(kept)
        _step(steps, f"near duplicates (Jaccard ≥ {options.near_dedup_threshold:g})", len(items), len(kept))
        items = kept
    return items, counts


def _split(options: Options, items: list[Item]) -> tuple[list[Row], list[Row]]:
    fixed_train = [it.row for it in items if it.split == "train"]
    fixed_val = [it.row for it in items if it.split == "val"]
    loose = [it.row for it in items if it.split == ""]
    if not loose:
        return fixed_train, fixed_val
    order = list(range(len(loose)))
    random.Random(options.seed).shuffle(order)
    n_val = round(len(loose) * options.val_fraction)
    if options.val_fraction > 0 and len(loose) >= 2:
        n_val = min(max(n_val, 1), len(loose) - 1)
    val_idx = set(order[:n_val])
    # Rows keep their source order inside each split; only membership is random.
    train = [r for i, r in enumerate(loose) if i not in val_idx]
    val = [r for i, r in enumerate(loose) if i in val_idx]
    return train, val


# --- card ------------------------------------------------------------------------------------


def _card(options: Options, p: Prepared, name: str) -> dict[str, Any]:
    kind, train, val, dropped = p.kind, p.train, p.val, p.dropped
    rows = train + val
    lengths = [len(body(r)) for r in rows]
    near_on = _near_dedup_on(options, kind)
    n_invalid = dropped.total if dropped else 0
    card: dict[str, Any] = {
        "name": name,
        "type": kind,
        "source": p.source,
        "demo": options.demo,
        "created_at": time.time(),
        "sources": _top_sources(p.records + p.val_records),
        "counts": {
            "read": len(p.records) + len(p.val_records) + n_invalid,
            "invalid": n_invalid,
            "kept": len(rows),
            "train": len(train),
            "val": len(val),
        },
        "invalid": {
            "total": n_invalid,
            "reasons": dict(dropped.reasons) if dropped else {},
            "examples": dropped.examples if dropped else [],
        },
        "filters": p.steps,
        "duplicates": {**p.duplicates, "near_threshold": options.near_dedup_threshold if near_on else None},
        "characters": sum(lengths),
        "lengths": cards.length_stats(lengths),
        "length_histogram": cards.histogram(lengths),
        "settings": {
            "seed": options.seed, "val_fraction": options.val_fraction,
            "split": "fixed (held-out sources)" if p.val_records else "seeded random",
            "unicode": options.unicode, "strip_control": options.strip_control,
            "clean_whitespace": options.clean_whitespace, "min_chars": options.min_chars,
            "max_chars": options.max_chars, "dedup": options.dedup, "near_dedup": near_on,
            "quality_filters": _quality_filters(options, kind), "skip_invalid": options.skip_invalid,
        },
    }
    card.update(cards.measures(rows, p.steps, kind))
    if kind == "classification":
        labels = sorted({r["label"] for r in rows})
        card["labels"] = labels
        tc, vc = Counter(r["label"] for r in train), Counter(r["label"] for r in val)
        card["label_counts"] = {lab: {"train": tc[lab], "val": vc[lab]} for lab in labels}
    if kind in ("instruction", "preference"):
        turns = [len(r["messages"]) for r in rows]
        card["turns"] = {"mean": round(sum(turns) / len(turns), 2) if turns else 0, "max": max(turns, default=0)}
    return card


def _top_sources(records: list[Record], keep: int = 20) -> dict[str, int]:
    """Rows per source file (or origin), the largest `keep` of them, so a folder of thousands of
    files does not swell the card."""
    counts = Counter(r.source for r in records).most_common()
    top = dict(counts[:keep])
    if len(counts) > keep:
        top[f"({len(counts) - keep} more sources)"] = sum(n for _, n in counts[keep:])
    return top


def _token_counts(kind: str, staged: Path, tok_dir: Path, train: list[Row], val: list[Row],
                  ctx: Context) -> dict[str, Any]:
    """Token counts of both splits. A pretrain dataset is tokenized into the shared token cache
    (content-addressed, so pretraining on this dataset reuses it); other types count the tokens
    of their message text, without a chat template."""
    from workbench_data import tokencache

    counts: dict[str, Any] = {}
    chars = 0
    for split, rows in (("train", train), ("val", val)):
        progress: Callable[[int, int], None] = partial(_tick, ctx, unit="doc", desc=f"tokenizing {split}")
        if kind == "pretrain":
            counts[split] = tokencache.count_tokens(staged, tok_dir, split, progress=progress)
        else:
            counts[split] = _count_text_tokens(tok_dir, [body(r) for r in rows])
        chars += sum(len(body(r)) for r in rows)
    total = counts["train"] + counts["val"]
    counts["chars_per_token"] = round(chars / total, 3) if total else None
    counts["note"] = ("end-of-text id after each document included" if kind == "pretrain"
                      else "message text only, without a chat template")
    return counts


def _count_text_tokens(tok_dir: Path, texts: list[str]) -> int:
    from tokenizers import Tokenizer

    path = tok_dir / "tokenizer.json"
    if not path.exists():
        raise UserError(f"{tok_dir} has no tokenizer.json; pick a tokenizer trained or downloaded by workbench")
    tok = Tokenizer.from_file(str(path))
    return sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False)) if texts else 0
