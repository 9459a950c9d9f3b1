"""Sequence classification on a LitGPT model: the language-model head is replaced by a linear
layer over the labels, read at each text's last real token (the only position that has seen the
whole text under causal attention).

A `classifier` artifact holds only what training changed (`classifier.safetensors`: the head,
plus the final norm and the last N blocks when they were trained) and `classifier.json` (labels,
base model id, max length). The base model's weights are read from the workspace when it loads.

Heavy module: imported inside `run()` and `predict`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from litgpt import GPT

from workbench.context import Context
from workbench.errors import UserError
from workbench.hardware import (
    choose_device,
    estimate_training_memory,
    fmt_bytes,
    mlp_shape,
    preflight,
)
from workbench.ml.checkpoint import load_model, load_tokenizer
from workbench.ml.examples import pad_id
from workbench.ml.training import (
    Batches,
    Micro,
    SeededOrder,
    TrainLoop,
    make_fabric,
    training_precision,
    warmup_cosine,
)
from workbench_finetune.scores import Scores, score
from workbench_finetune.stage import ClassifyOptions, resolve_data

WEIGHTS = "classifier.safetensors"
CONFIG = "classifier.json"


def build(model_dir: Path, n_labels: int, train_blocks: int, seed: int) -> GPT:
    """The base model with a fresh (seeded) head; only the head and the chosen blocks train."""
    model = load_model(model_dir).train()
    torch.manual_seed(seed)
    model.lm_head = torch.nn.Linear(model.config.n_embd, n_labels)
    for name, p in model.named_parameters():
        p.requires_grad = is_trained(name, model.config.n_layer, train_blocks)
    return model


def is_trained(name: str, n_layer: int, train_blocks: int) -> bool:
    if name.startswith("lm_head."):
        return True
    if train_blocks == 0:
        return False
    if name.startswith("transformer.ln_f."):
        return True
    if name.startswith("transformer.h."):
        return int(name.split(".")[2]) >= n_layer - train_blocks
    return False


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().cpu().contiguous() for k, p in model.named_parameters() if p.requires_grad}


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids per text, cut to `max_length`; also how many texts were cut."""
    out, cut = [], 0
    for text in texts:
        ids = tokenizer.encode(text).tolist()
        if len(ids) > max_length:
            ids, cut = ids[:max_length], cut + 1
        out.append(ids or [pad_id(tokenizer)])
    return out, cut


def collate_texts(batch: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and each row's last real position (B,)."""
    longest = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, torch.tensor([len(row) - 1 for row in batch], dtype=torch.long)


def class_logits(model: torch.nn.Module, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, n_labels) logits at each row's last real token; right padding never reaches it."""
    out = model(ids)
    return out[torch.arange(ids.size(0), device=ids.device), last].float()


@torch.no_grad()
def evaluate(model: torch.nn.Module, encoded: list[list[int]], targets: list[int], *, batch_size: int, pad: int,
             device: torch.device) -> tuple[float, list[int], list[list[float]]]:
    """Mean loss, predicted label indices and probabilities over a split."""
    model.eval()
    total, predicted, probs = 0.0, [], []
    for start in range(0, len(encoded), batch_size):
        ids, last = collate_texts(encoded[start:start + batch_size], pad)
        logits = class_logits(model, ids.to(device), last.to(device))
        y = torch.tensor(targets[start:start + batch_size], device=device)
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        predicted += logits.argmax(-1).tolist()
        probs += logits.softmax(-1).tolist()
    model.train()
    return total / max(1, len(encoded)), predicted, probs


def train(options: ClassifyOptions, ctx: Context) -> dict[str, Any]:
    base = ctx.artifact(options.model, "model")
    data = resolve_data(options, ctx)
    device = choose_device(options.device)
    precision = training_precision(device, options.precision, None)
    tokenizer = load_tokenizer(base.path)
    model = build(base.path, len(data.labels), options.train_blocks, options.seed)
    config = model.config
    max_length = min(options.max_seq_length if options.max_seq_length is not None else config.block_size,
                     config.block_size)
    index = {label: i for i, label in enumerate(data.labels)}
    train_ids, cut_train = encode_texts(tokenizer, data.train.texts, max_length)
    val_ids, cut_val = encode_texts(tokenizer, data.val.texts, max_length)
    train_y = [index[label] for label in data.train.labels]
    val_y = [index[label] for label in data.val.labels]
    if cut_train or cut_val:
        ctx.log(f"{cut_train + cut_val} text(s) were longer than {max_length} tokens and were cut", "warning")
    pad = pad_id(tokenizer)
    longest = max(len(ids) for ids in train_ids + val_ids)

    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = Batches.plan(len(train_ids), options.batch_size, options.micro_batch_size, epochs=options.epochs,
                           max_steps=options.max_steps)
    estimate = estimate_training_memory(
        n_params=n_params, trainable_params=n_trainable, batch_size=batches.micro_batch_size, seq_len=longest,
        n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head, vocab_size=len(data.labels),
        precision=precision, **mlp_shape(config),
    )
    preflight(estimate, device, force=options.force, what="this classification finetune")
    ctx.log(f"{len(data.labels)} labels ({', '.join(data.labels)}); {len(train_ids)} train / {len(val_ids)} held-out "
            f"texts; training {n_trainable:,} of {n_params:,} parameters (head"
            f"{f' + last {options.train_blocks} block(s)' if options.train_blocks else ''}); {device}, {precision}; "
            f"memory estimate {fmt_bytes(estimate.total)}; {batches.describe('texts')}")

    fabric = make_fabric(device, precision)
    wrapped = fabric.setup_module(model)
    inner = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr,
                              weight_decay=options.weight_decay)
    scheduler = warmup_cosine(inner, warmup=options.warmup_steps, total=batches.steps)
    optimizer = fabric.setup_optimizers(inner)
    run_device = fabric.device
    loop = TrainLoop(
        ctx, fabric, wrapped, optimizer, scheduler, order=SeededOrder(len(train_ids), options.seed), batches=batches,
        grad_clip=options.grad_clip, eval_every=options.eval_every, checkpoint_every=options.checkpoint_every,
        seed=options.seed, state=lambda: trained_state(model),
        load=lambda weights: model.load_state_dict(weights, strict=False), desc="classification finetune",
    )
    loop.resume()

    def micro_step(idx: list[int]) -> Micro:
        ids, last = collate_texts([train_ids[i] for i in idx], pad)
        y = torch.tensor([train_y[i] for i in idx], device=run_device)
        logits = class_logits(wrapped, ids.to(run_device), last.to(run_device))
        return Micro(F.cross_entropy(logits, y), {"train_accuracy": (logits.argmax(-1) == y).float().mean()})

    predicted: list[int] = []

    def held_out() -> dict[str, float]:
        nonlocal predicted
        val_loss, predicted, _ = evaluate(wrapped, val_ids, val_y, batch_size=batches.micro_batch_size, pad=pad,
                                          device=run_device)
        return {"val_loss": val_loss, "accuracy": score(data.labels, val_y, predicted).accuracy}

    val_loss = loop.run(micro_step, held_out)["val_loss"]
    scores = score(data.labels, val_y, predicted)
    ctx.metric(loop.step, f1=scores.macro_f1)
    return _write_classifier(ctx, options, base, data, model, scores, val_loss, max_length, loop.step)


def _write_classifier(ctx: Context, options: ClassifyOptions, base: Any, data: Any, model: torch.nn.Module, scores: Scores,
                      val_loss: float, max_length: int, steps: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    staged = ctx.staging_dir("classifier")
    save_file(trained_state(model), str(staged / WEIGHTS))
    spec = {"labels": scores.labels, "base_model": base.id, "max_length": max_length,
            "train_blocks": options.train_blocks, "source": data.source}
    (staged / CONFIG).write_text(json.dumps(spec, indent=2))
    metrics = {**scores.metrics(), "val_loss": val_loss}
    art = ctx.register(
        "classifier", staged, name=options.name or f"{base.name}-classifier",
        parents=[base.id] + ([data.dataset_id] if data.dataset_id else []), metrics=metrics,
        metadata={**spec, "confusion_matrix": scores.confusion,
                  "per_class": [vars(c) for c in scores.per_class], "held_out": len(data.val)},
    )
    return {"classifier": art.id, "accuracy": scores.accuracy, "f1": scores.macro_f1, "val_loss": val_loss,
            "steps": steps, "tables": scores.tables()}


# ---------------------------------------------------------------------------------------------
# loading and predicting


@dataclass
class Loaded:
    model: GPT
    tokenizer: Any
    labels: list[str]
    max_length: int
    device: torch.device


def load_classifier(art_dir: Path, base_dir: Path, device: str = "cpu") -> Loaded:
    from workbench.ml.checkpoint import load_safetensors

    spec = json.loads((art_dir / CONFIG).read_text())
    model = build(base_dir, len(spec["labels"]), spec["train_blocks"], seed=0)
    weights = load_safetensors(art_dir / WEIGHTS)
    unknown = set(weights) - set(model.state_dict())
    if unknown:
        raise UserError(f"{art_dir / WEIGHTS} does not fit the base model ({sorted(unknown)[0]})")
    model.load_state_dict(weights, strict=False)
    model = model.to(device).eval()
    return Loaded(model, load_tokenizer(base_dir), spec["labels"], spec["max_length"], torch.device(device))


@torch.no_grad()
def predict(loaded: Loaded, texts: list[str], batch_size: int = 16) -> list[dict[str, Any]]:
    """Per text: the best label, its probability, and every label's probability."""
    encoded, _ = encode_texts(loaded.tokenizer, texts, loaded.max_length)
    pad = pad_id(loaded.tokenizer)
    out = []
    for start in range(0, len(encoded), batch_size):
        ids, last = collate_texts(encoded[start:start + batch_size], pad)
        probs = class_logits(loaded.model, ids.to(loaded.device), last.to(loaded.device)).softmax(-1)
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": loaded.labels[best], "probability": row[best],
                        "probabilities": dict(zip(loaded.labels, row, strict=True))})
    return out
