"""The LoRA finetuning loop: setup → encode → train (with validation, checkpoints, cancel and
exact resume) → adapter and merged model.

Heavy module: imported by `LoraStage.run()` only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workbench.context import Context
from workbench.errors import UserError
from workbench.hardware import (
    choose_device,
    estimate_training_memory,
    fmt_bytes,
    mlp_shape,
    preflight,
)
from workbench.ml.checkpoint import load_config, load_tokenizer, read_meta, save_model_dir
from workbench.ml.examples import IGNORE, Encoded, collate, encode_messages, pad_id
from workbench.ml.lora import (
    LoRASettings,
    adapter_state_dict,
    count_parameters,
    load_adapter,
    load_lora_model,
    merged_state_dict,
    save_adapter,
)
from workbench.ml.training import (
    Batches,
    Micro,
    SeededOrder,
    TrainLoop,
    make_fabric,
    training_precision,
    warmup_cosine,
)
from workbench.prompts import PromptStyle, get_style, style_for_model
from workbench_finetune.datasets import Chat, instruction_data
from workbench_finetune.stage import LoraOptions, check_quantize


def eos_token(model_dir: Path) -> str:
    meta = read_meta(model_dir)
    if meta.get("eos_token"):
        return str(meta["eos_token"])
    tc = model_dir / "tokenizer_config.json"
    eos = json.loads(tc.read_text()).get("eos_token") if tc.exists() else None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return eos or "<|endoftext|>"


def resolve_style(name: str | None, model_dir: Path) -> PromptStyle:
    """`None`: the model's stored style, else chatml. `base`: the model's own, whatever it is."""
    eos = eos_token(model_dir)
    own = style_for_model(model_dir)
    if own is not None and not own.eos_token:
        own.eos_token = eos
    if name is None:
        return own or get_style("chatml", eos_token=eos)
    if name == "base":
        if own is None:
            raise UserError(f"{model_dir} has no prompt style or chat template of its own; use --prompt-style chatml or alpaca")
        return own
    return get_style(name, eos_token=eos)


def encode_all(ctx: Context, tokenizer: Any, style: PromptStyle, chats: list[Chat], *, mask_prompt: bool,
               max_length: int, desc: str) -> list[Encoded]:
    out = []
    for i, chat in enumerate(chats, 1):
        out.append(encode_messages(tokenizer, style, chat.messages, mask_prompt=mask_prompt,
                                   max_length=max_length, where=chat.where))
        if i % 256 == 0 or i == len(chats):
            ctx.progress(i, len(chats), unit="example", desc=desc)
    return out


def batch_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy on the labelled positions (prompt and padding are IGNORE)."""
    logits = model(ids)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction=reduction,
    )


@torch.no_grad()
def validate(model: torch.nn.Module, val: list[Encoded], *, batch_size: int, max_batches: int, pad: int,
             device: torch.device) -> float:
    """Mean loss per answer token over the first `max_batches` validation batches."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, min(len(val), batch_size * max_batches), batch_size):
        ids, labels = collate(val[start:start + batch_size], pad)
        ids, labels = ids.to(device), labels.to(device)
        total += float(batch_loss(model, ids, labels, reduction="sum"))
        count += int((labels[:, 1:] != IGNORE).sum())
    model.train()
    return total / max(1, count)


def _stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype the base weights were saved in, so the merged model keeps it."""
    st = model_dir / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        from workbench.weightfiles import check_safetensors

        check_safetensors(st)
        with safe_open(str(st), "pt") as fh:
            key = next(iter(fh.keys()), None)
            if key is not None:
                return fh.get_tensor(key).dtype
    return torch.float32


def train(options: LoraOptions, ctx: Context) -> dict[str, Any]:
    check_quantize(options.quantize, options.device)
    device = choose_device(options.device)
    if options.quantize and device != "cuda":
        raise UserError(f"--quantize {options.quantize} (QLoRA) needs a CUDA GPU, but this machine trains on {device}; drop --quantize")
    base = ctx.artifact(options.model, "model")
    data = ctx.artifact(options.dataset, "dataset")
    train_chats, val_chats = instruction_data(data.path, data.id, "finetune lora")
    precision = training_precision(device, options.precision, options.quantize)

    config = load_config(base.path)
    max_length = options.max_seq_length if options.max_seq_length is not None else config.block_size
    if max_length > config.block_size:
        raise UserError(f"--max-seq-length {max_length} is longer than the model's context of {config.block_size} tokens")
    tokenizer = load_tokenizer(base.path)
    style = resolve_style(options.prompt_style, base.path)
    train_set = encode_all(ctx, tokenizer, style, train_chats, mask_prompt=options.mask_prompt,
                           max_length=max_length, desc="tokenizing train")
    val_set = encode_all(ctx, tokenizer, style, val_chats, mask_prompt=options.mask_prompt,
                         max_length=max_length, desc="tokenizing validation")
    longest = max(len(e.input_ids) for e in train_set + val_set)
    pad = pad_id(tokenizer)
    from workbench_data.replay import replay_source

    replay, replay_data = replay_source(options, ctx, base.path, options.seed)

    settings = LoRASettings(r=options.rank, alpha=options.alpha, dropout=options.dropout, targets=tuple(options.targets))
    raw = load_lora_model(base.path, settings, seed=options.seed)
    n_params, n_trainable = count_parameters(raw)
    batches = Batches.plan(len(train_set), options.batch_size, options.micro_batch_size, epochs=options.epochs,
                           max_steps=options.max_steps)
    estimate = estimate_training_memory(
        n_params=n_params, trainable_params=n_trainable,
        batch_size=batches.micro_batch_size + (replay.windows if replay else 0),
        seq_len=max(longest, replay.length if replay else 0),
        n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head, vocab_size=config.padded_vocab_size,
        precision=precision, quantized_base=bool(options.quantize), **mlp_shape(config),
    )
    preflight(estimate, device, force=options.force, what="this LoRA finetune")
    ctx.log(f"LoRA r={settings.r} alpha={settings.alpha} on {', '.join(settings.targets)}: "
            f"{n_trainable:,} trainable of {n_params:,} parameters; {device}, {precision}"
            f"{', nf4 base' if options.quantize else ''}; memory estimate {fmt_bytes(estimate.total)}; "
            f"prompt style {style.name}; {len(train_set)} train / {len(val_set)} validation examples, longest {longest} tokens; "
            f"{batches.describe('examples')}")

    fabric = make_fabric(device, precision, options.quantize)
    model = fabric.setup_module(raw)
    trainable = [p for p in raw.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay, betas=(0.9, 0.95))
    scheduler = warmup_cosine(inner, warmup=options.warmup_steps, total=batches.steps)
    optimizer = fabric.setup_optimizers(inner)
    run_device = fabric.device
    loop = TrainLoop(
        ctx, fabric, model, optimizer, scheduler, order=SeededOrder(len(train_set), options.seed), batches=batches,
        grad_clip=options.grad_clip, eval_every=options.eval_every, checkpoint_every=options.checkpoint_every,
        seed=options.seed, state=lambda: adapter_state_dict(raw), load=lambda weights: load_adapter(raw, weights),
        desc="LoRA finetune",
    )
    loop.resume()
    first_val: float | None = loop.extra.get("first_val_loss")  # the loss before training, for the table

    def micro_step(idx: list[int]) -> Micro:
        ids, labels = collate([train_set[i] for i in idx], pad)
        loss = batch_loss(model, ids.to(run_device), labels.to(run_device))
        tokens = int((ids != pad).sum())
        if replay is None:
            return Micro(loss, tokens=tokens)
        replayed = replay.loss(model, idx, run_device)
        return Micro(loss + replayed, {"task_loss": loss.detach(), "replay_loss": replayed.detach()},
                     tokens=tokens + replay.tokens_per_batch)

    def evaluate() -> dict[str, float]:
        nonlocal first_val
        loss = validate(model, val_set, batch_size=batches.micro_batch_size, max_batches=options.eval_batches,
                        pad=pad, device=run_device)
        if first_val is None:
            first_val = loop.extra["first_val_loss"] = loss
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50))}

    val_loss = loop.run(micro_step, evaluate)["val_loss"]
    step, loss_value, tokens_seen = loop.step, loop.last.get("loss", float("nan")), loop.tokens

    # In fp32 the trained module still holds the exact base weights: merge from it, so the output
    # shows whatever training did. Otherwise merge onto a fresh full-precision copy of the base.
    in_memory = precision == "32-true" and not options.quantize
    return _write_outputs(ctx, options, base, data, raw, settings, style, in_memory, {
        "steps": step, "loss": loss_value, "val_loss": val_loss, "first_val_loss": first_val,
        "trainable_params": n_trainable, "total_params": n_params, "tokens": tokens_seen,
    }, replayed=replay_data)


def _write_outputs(ctx: Context, options: LoraOptions, base: Any, data: Any, trained: torch.nn.Module,
                   settings: LoRASettings, style: PromptStyle, merge_in_memory: bool,
                   figures: dict[str, Any], replayed: Any = None) -> dict[str, Any]:
    """The adapter alone, then the merged model, both children of the base model (and of the
    datasets trained on)."""
    datasets = [data.id] + ([replayed.id] if replayed is not None else [])
    base_meta = read_meta(base.path)
    family = base_meta.get("family") or base.metadata.get("family")
    style_json = style.to_json()
    name = options.name or f"{base.name}-lora"
    metrics = {k: figures[k] for k in ("loss", "val_loss", "trainable_params") if figures[k] is not None}

    staged = ctx.staging_dir("adapter")
    save_adapter(staged, trained, settings, base.id, extra={
        "prompt_style": style_json, "dataset": data.id, "mask_prompt": options.mask_prompt,
        "max_seq_length": options.max_seq_length, "quantize": options.quantize,
        **({"replay": replayed.id} if replayed is not None else {}),
    })
    adapter = ctx.register("adapter", staged, name=f"{name}-adapter", parents=[base.id, *datasets], metrics=metrics,
                           metadata={"base_model": base.id, "prompt_style": style.name, "lora": settings.to_json(),
                                     "dataset": data.id})

    if merge_in_memory:
        merged = merged_state_dict(trained)
    else:
        from safetensors.torch import load_file

        fresh = load_lora_model(base.path, settings, seed=options.seed)
        load_adapter(fresh, {k: v.float() for k, v in load_file(str(adapter.path / "adapter.safetensors")).items()})
        merged = merged_state_dict(fresh)
    dtype = _stored_dtype(base.path)
    merged = {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged.items()}
    staged = ctx.staging_dir("model")
    meta = {**base_meta, "prompt_style": style_json, "eos_token": style.eos_token or eos_token(base.path),
            "family": family, "base_model": base.id, "adapter": adapter.id,
            "finetune": {"method": "lora", "dataset": data.id, "lora": settings.to_json(),
                         **({"replay": replayed.id} if replayed is not None else {})}}
    save_model_dir(staged, merged, load_config(base.path), tokenizer_dir=base.path, meta=meta)
    model = ctx.register("model", staged, name=name, parents=[base.id, adapter.id, *datasets], metrics=metrics,
                         metadata={"family": family, "base_model": base.id, "adapter": adapter.id,
                                   "prompt_style": style.name, "finetune": "lora"})

    rows = [
        ["optimizer steps", figures["steps"]],
        ["train loss (last step)", figures["loss"]],
        ["validation loss", f"{figures['first_val_loss']:.4f} → {figures['val_loss']:.4f}"],
        ["trainable parameters", f"{figures['trainable_params']:,} of {figures['total_params']:,}"],
        ["adapter size", fmt_bytes(adapter.size_bytes)],
        ["prompt style", style.name],
    ]
    return {
        "adapter": adapter.id, "model": model.id, "val_loss": figures["val_loss"], "loss": figures["loss"],
        "trainable_params": figures["trainable_params"], "steps": figures["steps"],
        "tables": [{"title": "LoRA finetune", "columns": ["", "value"], "rows": rows}],
    }
