"""The tokenized cache: a `pretrain` dataset split encoded once into a memory-mapped token file.

Pretraining and evaluation read token ids, not text. `token_array` encodes a split's documents
with a tokenizer, appends the tokenizer's end-of-text id after every document, and keeps the
result under `cache_dir()/tokens/<key>/`, where the key hashes the split file's bytes and the
tokenizer.json bytes. The same inputs therefore reuse the same file; a changed dataset or
tokenizer gets a new one. Ids are stored as uint16 when the vocabulary fits, else uint32.

A cache entry is a directory holding `tokens.bin` (the shard: raw little-endian ids) and
`meta.json`. It is built under a temporary name and renamed into place, so a reader never
sees a half-written entry, and two builders racing each other both end with the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from workbench import locations, scratch
from workbench.errors import UserError, writing

#: Bumped when the file layout changes, so old entries are never misread.
CACHE_VERSION = 1
#: Documents per `encode_batch_fast` call: large enough to keep every core busy.
BATCH_DOCS = 2048
#: Characters per batch, so a split of a few huge documents still reports progress.
BATCH_CHARS = 4_000_000

ProgressFn = Callable[[int, int], None]


def token_array(
    dataset_dir: Path,
    tokenizer_dir: Path,
    split: str = "train",
    *,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Token ids of one split of a `pretrain` dataset, as a read-only memory map.

    Built on first use (and `progress(done_docs, total_docs)` is called while building),
    reused afterwards. A split with no tokens gives an empty read-only array.
    """
    entry = ensure_cache(Path(dataset_dir), Path(tokenizer_dir), split, progress=progress)
    meta = json.loads((entry / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    if meta["n_tokens"] == 0:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(entry / "tokens.bin", dtype=dtype, mode="r", shape=(meta["n_tokens"],))


def count_tokens(
    dataset_dir: Path,
    tokenizer_dir: Path,
    split: str = "train",
    *,
    progress: ProgressFn | None = None,
) -> int:
    """How many tokens (end-of-text ids included) a split holds; builds the cache if needed."""
    entry = ensure_cache(Path(dataset_dir), Path(tokenizer_dir), split, progress=progress)
    return int(json.loads((entry / "meta.json").read_text())["n_tokens"])


def cache_meta(dataset_dir: Path, tokenizer_dir: Path, split: str = "train") -> dict[str, Any] | None:
    """The metadata of an existing cache entry (docs, tokens, dtype, eos id), or None."""
    split_path = _split_path(Path(dataset_dir), split)
    entry = _entry_dir(_key(split_path, Path(tokenizer_dir) / "tokenizer.json")[0])
    meta = entry / "meta.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def ensure_cache(
    dataset_dir: Path,
    tokenizer_dir: Path,
    split: str = "train",
    *,
    progress: ProgressFn | None = None,
) -> Path:
    """The cache entry directory for (split, tokenizer), built if it does not exist yet."""
    split_path = _split_path(dataset_dir, split)
    tok_json = tokenizer_dir / "tokenizer.json"
    if not tok_json.exists():
        raise UserError(
            f"{tokenizer_dir} has no tokenizer.json; pass a tokenizer or model trained or "
            "downloaded by workbench"
        )
    key, n_docs = _key(split_path, tok_json)
    entry = _entry_dir(key)
    if (entry / "meta.json").exists():
        return entry
    _build(entry, split_path, tokenizer_dir, n_docs, progress)
    return entry


# ---------------------------------------------------------------------------------------------


def _split_path(dataset_dir: Path, split: str) -> Path:
    card_path = dataset_dir / "card.json"
    if card_path.exists():
        kind = json.loads(card_path.read_text(encoding="utf-8")).get("type")
        if kind != "pretrain":
            raise UserError(
                f"dataset {dataset_dir} is a {kind} dataset; token arrays are made from "
                "pretrain datasets (prepare one with `workbench data prepare --type pretrain`)"
            )
    path = dataset_dir / f"{split}.jsonl"
    if not path.exists():
        raise UserError(f"dataset {dataset_dir} has no '{split}' split ({path.name} is missing)")
    return path


def _entry_dir(key: str) -> Path:
    return locations.cache_dir() / "tokens" / key


def _key(split_path: Path, tok_json: Path) -> tuple[str, int]:
    """sha256 over the split's bytes and tokenizer.json; also counts the split's lines."""
    h = hashlib.sha256(f"workbench-tokens-v{CACHE_VERSION}\0".encode())
    h.update(tok_json.read_bytes())
    h.update(b"\0")
    lines, last = 0, b"\n"
    with open(split_path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without its newline is still a document
    return h.hexdigest()[:32], lines


def eos_id(tokenizer_dir: Path, tokenizer: Any) -> int:
    """The end-of-text id: generation_config.json, then tokenizer_config.json, then convention."""
    gen = tokenizer_dir / "generation_config.json"
    if gen.exists():
        value = json.loads(gen.read_text()).get("eos_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    cfg_path = tokenizer_dir / "tokenizer_config.json"
    names: list[str] = []
    if cfg_path.exists():
        eos = json.loads(cfg_path.read_text()).get("eos_token")
        if isinstance(eos, dict):  # Hugging Face's AddedToken form
            eos = eos.get("content")
        if isinstance(eos, str):
            names.append(eos)
    names += ["<|endoftext|>", "</s>", "<eos>"]
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    raise UserError(
        f"tokenizer in {tokenizer_dir} has no end-of-text token; set eos_token in its "
        "tokenizer_config.json"
    )


def _batches(split_path: Path) -> Iterator[list[str]]:
    """Documents' text in batches, read line by line (a split may not fit in memory twice)."""
    batch: list[str] = []
    chars = 0
    with open(split_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{split_path}:{lineno} is not a pretrain row ({{\"text\": ...}}); "
                    "prepare the dataset again with `workbench data prepare`"
                ) from None
            batch.append(text)
            chars += len(text)
            if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def _build(entry: Path, split_path: Path, tokenizer_dir: Path, n_docs: int, progress: ProgressFn | None) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = eos_id(tokenizer_dir, tokenizer)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16) if max(vocab, eos + 1) <= 1 << 16 else np.dtype(np.uint32)

    entry.parent.mkdir(parents=True, exist_ok=True)
    # Named for its owner, so what a killed run left is found and removed (workbench.scratch).
    tmp = entry.parent / f".tmp-{entry.name}-{scratch.owner()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n_tokens, done_docs = 0, 0
        if progress is not None:
            progress(0, n_docs)
        with writing(tmp / "tokens.bin"), open(tmp / "tokens.bin", "wb") as out:
            for ids, docs in _encode_pipeline(tokenizer, _batches(split_path), eos):
                ids.astype(dtype, copy=False).tofile(out)
                n_tokens += int(ids.size)
                done_docs += docs
                if progress is not None:
                    progress(done_docs, max(n_docs, done_docs))
        meta = {
            "version": CACHE_VERSION, "split": split_path.stem, "n_docs": done_docs,
            "n_tokens": n_tokens, "dtype": dtype.name, "eos_id": eos, "vocab_size": vocab,
            "source": str(split_path), "tokenizer": str(tokenizer_dir),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, entry)
        except OSError:
            # Another process finished the same entry first; its file is identical to ours.
            if not (entry / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_pipeline(
    tokenizer: Any, batches: Iterator[list[str]], eos: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(ids with `eos` after each document, number of documents) per batch.

    The next batch's JSON is parsed in a thread while this one is encoded: `encode_batch_fast`
    runs in Rust on all cores with the GIL released, so the two overlap.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(next, batches, None)
        while (texts := upcoming.result()) is not None:
            upcoming = pool.submit(next, batches, None)
            encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            ids = np.fromiter(
                chain.from_iterable(chain(e.ids, (eos,)) for e in encodings), dtype=np.uint32
            )
            yield ids, len(encodings)
