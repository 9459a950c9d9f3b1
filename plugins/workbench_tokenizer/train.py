"""Training a byte-level BPE tokenizer with Hugging Face `tokenizers`, and adopting one.

The saved layout is what LitGPT, the token cache and the GGUF export read:

- `tokenizer.json`: byte-level BPE with `ByteLevel(add_prefix_space=False)` (llama.cpp's
  "gpt2" tokenizer with the "gpt-2" pre-tokenizer encodes exactly the same way),
- `tokenizer_config.json`: `tokenizer_class`, bos/eos/pad tokens and the chatml `chat_template`,
- `generation_config.json`: bos/eos ids.

Special tokens come first (ids 0-3: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|pad|>`).
The vocabulary is padded to a multiple of 64 with reserved special tokens (`<|reserved_N|>`)
that never occur in encoded text, so `vocab_size` is already the model's `padded_vocab_size`
and an exported GGUF's token list matches the embedding rows one to one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.errors import UserError
from workbench.prompts import CHATML
from workbench_tokenizer.stage import Options

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
EOS, PAD = "<|endoftext|>", "<|pad|>"
MULTIPLE = 64
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json",
)


def train(options: Options, ctx: Context) -> dict[str, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    assert options.dataset is not None
    data = ctx.artifact(options.dataset, "dataset")
    data_dir = Path(data.path)
    card = _card(data_dir)
    n_rows = _count_lines(data_dir / "train.jsonl")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=options.vocab_size, min_frequency=options.min_frequency,
        special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    ctx.log(f"training a byte-level BPE tokenizer ({options.vocab_size} tokens) on {data.name}")
    texts = _texts(data_dir / "train.jsonl", options.max_train_chars, n_rows, ctx)
    tok.train_from_iterator(texts, trainer=trainer, length=n_rows)
    trained = tok.get_vocab_size(with_added_tokens=True)
    reserved = _pad_vocab(tok)
    if trained < options.vocab_size:
        ctx.log(f"the data supports only {trained} tokens (asked for {options.vocab_size}); "
                "more text or a smaller --vocab-size gives a fuller vocabulary", level="warning")

    staged = ctx.staging_dir("tokenizer")
    tok.save(str(staged / "tokenizer.json"))
    write_configs(staged, tok)
    report = compression(staged / "tokenizer.json", data_dir / "val.jsonl", ctx)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    metadata = {
        "vocab_size": vocab, "padded_vocab_size": vocab, "trained_vocab_size": trained,
        "reserved_tokens": reserved, "special_tokens": list(SPECIALS),
        "eos_token": EOS, "pad_token": PAD, "dataset_type": card.get("type"),
        "chat_template": "chatml",
    }
    metrics = {k: v for k, v in report.items() if isinstance(v, float)}
    name = options.name or f"{data.name}-bpe{vocab}"
    art = ctx.register("tokenizer", staged, name=name, parents=[data.id], metadata=metadata, metrics=metrics)
    return {"tables": [_table(name, metadata, report)], "tokenizer": art.id, "vocab_size": vocab}


def adopt(options: Options, ctx: Context) -> dict[str, Any]:
    """Copy a model artifact's tokenizer files into a tokenizer artifact of their own."""
    assert options.from_model is not None
    model = ctx.artifact(options.from_model, "model")
    src = Path(model.path)
    staged = ctx.staging_dir("tokenizer")
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not any(n in copied for n in ("tokenizer.json", "tokenizer.model")):
        shutil.rmtree(staged, ignore_errors=True)
        raise UserError(f"model {model.id} ({src}) holds no tokenizer.json or tokenizer.model to adopt")
    for n in copied:
        shutil.copy2(src / n, staged / n)
    cfg_path = staged / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if "tokenizer_class" not in cfg:  # LitGPT's Tokenizer raises KeyError without it
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2))
    metadata: dict[str, Any] = {"adopted_from": model.id, "files": copied}
    report: dict[str, Any] = {}
    if (staged / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        metadata["vocab_size"] = Tokenizer.from_file(str(staged / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        if options.dataset:
            data = ctx.artifact(options.dataset, "dataset")
            report = compression(staged / "tokenizer.json", Path(data.path) / "val.jsonl", ctx)
    elif options.dataset:
        ctx.log("this tokenizer is a SentencePiece model; compression is measured only for tokenizer.json",
                level="warning")
    metrics = {k: v for k, v in report.items() if isinstance(v, float)}
    name = options.name or f"{model.name}-tokenizer"
    art = ctx.register("tokenizer", staged, name=name, parents=[model.id], metadata=metadata, metrics=metrics)
    return {"tables": [_table(name, metadata, report)], "tokenizer": art.id}


# ---------------------------------------------------------------------------------------------


def _card(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "card.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def row_texts(row: dict[str, Any]) -> list[str]:
    """The free text of a normalised dataset row, whatever its type."""
    if "messages" in row:
        out = [m["content"] for m in row["messages"]]
        return out + [row[k] for k in ("chosen", "rejected") if k in row]
    return [row["text"]]


def _texts(path: Path, max_chars: int | None, n_rows: int, ctx: Context) -> Iterator[str]:
    """One string per row (a conversation's turns joined by newlines), up to `max_chars`."""
    total = 0
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            text = "\n".join(row_texts(json.loads(line)))
            yield text
            total += len(text)
            if i % 1000 == 0:
                ctx.check_cancelled()  # raised through train_from_iterator; nothing is staged yet
                ctx.progress(i, n_rows, unit="row", desc="counting pairs")
            if max_chars is not None and total >= max_chars:
                break
    ctx.progress(n_rows, n_rows, unit="row", desc="merging")


def _pad_vocab(tok: Any) -> list[str]:
    """Reserved special tokens up to the next multiple of 64; returns their names."""
    from tokenizers import AddedToken

    size = tok.get_vocab_size(with_added_tokens=True)
    target = -(-size // MULTIPLE) * MULTIPLE
    names = [f"<|reserved_{i}|>" for i in range(target - size)]
    if names:
        tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    return names


def write_configs(out: Path, tok: Any) -> None:
    eos_id, pad_id = tok.token_to_id(EOS), tok.token_to_id(PAD)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": CHATML,
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": EOS, "eos_token": EOS, "pad_token": PAD,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}, indent=2))


def compression(tokenizer_json: Path, val_path: Path, ctx: Context) -> dict[str, Any]:
    """Characters and UTF-8 bytes per token over a dataset's validation split."""
    from tokenizers import Tokenizer

    if not val_path.exists() or val_path.stat().st_size == 0:
        ctx.log("the dataset has no validation rows; compression is not measured", level="warning")
        return {}
    tok = Tokenizer.from_file(str(tokenizer_json))
    with open(val_path, encoding="utf-8") as fh:
        texts = ["\n".join(row_texts(json.loads(line))) for line in fh if line.strip()]
    tokens = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))
    chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    report = {
        "val_rows": len(texts), "val_tokens": tokens,
        "chars_per_token": round(chars / tokens, 4) if tokens else 0.0,
        "bytes_per_token": round(n_bytes / tokens, 4) if tokens else 0.0,
    }
    ctx.metric(None, chars_per_token=report["chars_per_token"], bytes_per_token=report["bytes_per_token"])
    return report


def _table(name: str, metadata: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    rows: list[list[Any]] = [["name", name]]
    for key in ("vocab_size", "trained_vocab_size", "adopted_from"):
        if key in metadata:
            rows.append([key.replace("_", " "), metadata[key]])
    if "reserved_tokens" in metadata:
        rows.append(["reserved tokens (padding to 64)", len(metadata["reserved_tokens"])])
    for key in ("val_rows", "val_tokens", "chars_per_token", "bytes_per_token"):
        if key in report:
            rows.append([key.replace("_", " ") + (" (validation)" if "per" in key else ""), report[key]])
    return {"title": "Tokenizer", "columns": ["", "value"], "rows": rows}
