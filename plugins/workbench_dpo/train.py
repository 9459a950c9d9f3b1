"""The DPO loop, top to bottom: data → memory preflight → policy (+ reference) → resume → train
→ adapter and merged model.

The policy is the input model with a fresh LoRA adapter. A fresh adapter's B matrices are zero, so
at step 0 the policy equals the reference and the sigmoid loss is exactly log 2. Unless a separate
reference model is given, the reference is the same module with the adapter switched off
(`adapters_disabled`), run under `torch.no_grad()`: no second copy of the weights, no activations
kept for it.

Lightning Fabric carries the precision (fp32 on CPU, bf16/fp16 mixed on CUDA and MPS), so the
same loop runs on every device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.errors import Cancelled, UserError
from workbench.hardware import (
    choose_device,
    choose_precision,
    estimate_training_memory,
    fmt_bytes,
    preflight,
)
from workbench.ml.checkpoint import (
    load_config,
    load_model,
    load_tokenizer,
    read_meta,
    save_model_dir,
)
from workbench.ml.examples import pad_id
from workbench.ml.lora import (
    LoRASettings,
    adapter_state_dict,
    adapters_disabled,
    count_parameters,
    load_adapter,
    load_lora_model,
    lora_config,
    merged_state_dict,
    save_adapter,
)
from workbench.ml.trainstate import load_train_state, restore_rng, save_train_state
from workbench.prompts import PromptStyle, get_style, style_for_model
from workbench_dpo.loss import PairStats, preference_loss, sequence_logps
from workbench_dpo.pairs import Pair, collate_pairs, encode_rows
from workbench_dpo.rows import check_preference_dataset, read_rows

if TYPE_CHECKING:
    from workbench.context import Context
    from workbench_dpo.stage import Options

KEEP_CHECKPOINTS = 2


def pair_forward(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    kind: str,
    label_smoothing: float = 0.0,
) -> PairStats:
    """Preference loss of a (2B, T) batch from `collate_pairs` (chosen rows, then rejected rows).

    `reference=None` scores the reference with the policy's adapter switched off.
    """
    n = ids.shape[0] // 2
    average = kind == "ipo"  # IPO's margin is defined on per-token log-probabilities
    with torch.no_grad():
        if reference is None:
            with adapters_disabled(policy):
                ref = sequence_logps(policy(ids), labels, average=average)
        else:
            ref = sequence_logps(reference(ids), labels, average=average)
    logps = sequence_logps(policy(ids), labels, average=average)
    return preference_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta=beta, kind=kind,
                           label_smoothing=label_smoothing)


def summarize(stats: Sequence[PairStats], *, reference: bool = False) -> dict[str, float]:
    """Means over every pair in `stats`: loss, rewards, margin, accuracy, log-probabilities."""

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(s, name).detach().float().cpu() for s in stats])

    chosen, rejected = cat("chosen_rewards"), cat("rejected_rewards")
    out = {
        "loss": cat("losses").mean().item(),
        "reward_chosen": chosen.mean().item(),
        "reward_rejected": rejected.mean().item(),
        "reward_margin": (chosen - rejected).mean().item(),
        "reward_accuracy": (chosen > rejected).float().mean().item(),
        "logps_chosen": cat("policy_chosen").mean().item(),
        "logps_rejected": cat("policy_rejected").mean().item(),
    }
    if reference:
        out["ref_logps_chosen"] = cat("reference_chosen").mean().item()
        out["ref_logps_rejected"] = cat("reference_rejected").mean().item()
    return out


def chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def train(options: Options, ctx: Context) -> dict[str, Any]:
    from lightning.fabric import Fabric

    # --- inputs ------------------------------------------------------------------------------
    model_art = ctx.artifact(options.model, "model")
    data_art = ctx.artifact(options.dataset, "dataset")
    ref_art = ctx.artifact(options.reference, "model") if options.reference else None
    model_dir = model_art.path
    check_preference_dataset(data_art.path, options.dataset)
    device = choose_device(options.device)
    precision = options.precision or choose_precision(device, training=True)
    label_smoothing = options.label_smoothing if options.label_smoothing is not None else 0.1
    if options.loss != "cdpo":
        label_smoothing = 0.0

    style = style_for_model(model_dir)
    if style is None:
        style = get_style("chatml")
        ctx.log("the model stores no prompt style; using chatml", level="warning")
    config = load_config(model_dir)
    max_length = options.max_seq_length if options.max_seq_length is not None else config.block_size
    if max_length > config.block_size:
        raise UserError(f"--max-seq-length {max_length} is longer than the model's context of {config.block_size}")

    # --- data: every pair is encoded (and length-checked) before anything heavy happens ----------
    tokenizer = load_tokenizer(model_dir)
    train_pairs = encode_rows(read_rows(data_art.path / "train.jsonl"), tokenizer, style, max_length)
    val_pairs = encode_rows(read_rows(data_art.path / "val.jsonl"), tokenizer, style, max_length)
    val_pairs = val_pairs[: options.eval_pairs]
    if not train_pairs:
        raise UserError(f"dataset '{options.dataset}' has no training pairs")
    pad = pad_id(tokenizer)
    batch_size = min(options.batch_size, len(train_pairs))
    micro = min(options.micro_batch_size if options.micro_batch_size is not None else batch_size, batch_size)
    steps_per_epoch = len(train_pairs) // batch_size
    total = options.max_steps if options.max_steps is not None else options.epochs * steps_per_epoch
    longest = max(p.longest for p in train_pairs + val_pairs)

    # --- memory preflight, on the meta device: nothing is allocated yet -------------------------
    settings = LoRASettings(r=options.rank, alpha=options.alpha, dropout=options.dropout,
                            targets=tuple(options.targets))
    from litgpt.lora import GPT as LoRAGPT
    from litgpt.lora import mark_only_lora_as_trainable

    with torch.device("meta"):
        shape = LoRAGPT(lora_config(model_dir, settings))
    mark_only_lora_as_trainable(shape)
    n_params, n_trainable = count_parameters(shape)
    estimate = estimate_training_memory(
        n_params=n_params, trainable_params=n_trainable, batch_size=2 * micro, seq_len=longest,
        n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
        vocab_size=config.padded_vocab_size, precision=precision,
    )
    if ref_art is not None:
        ref_params = sum(p.numel() for p in _meta_gpt(ref_art.path).parameters())
        estimate = replace(estimate, weights=estimate.weights + ref_params * _weight_bytes(precision))
    figures = preflight(estimate, device, force=options.force, what="this DPO run")
    ctx.log(
        f"{len(train_pairs)} training pairs, {len(val_pairs)} held-out; {total} steps of {batch_size} pairs; "
        f"{device}, {precision}; memory estimate {fmt_bytes(figures['estimate_bytes'])} of "
        f"{fmt_bytes(figures['available_bytes'])} available"
    )

    # --- policy and reference ----------------------------------------------------------------
    fabric = Fabric(accelerator=device, devices=1, precision=precision)  # type: ignore[arg-type]
    raw = load_lora_model(model_dir, settings, seed=options.seed)
    raw.max_seq_length = longest
    stored_dtype = _stored_dtype(model_dir)
    model = fabric.setup_module(raw)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=options.weight_decay,
    ))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(options.warmup_steps, total))
    reference = None
    if ref_art is not None:
        ref_model = load_model(ref_art.path)
        if ref_model.config.padded_vocab_size != config.padded_vocab_size:
            raise UserError(f"reference model '{options.reference}' has a different vocabulary size from the model")
        ref_model.max_seq_length = longest
        ref_model.requires_grad_(False)
        reference = fabric.setup_module(ref_model)
    ctx.log(f"policy: {n_params:,} parameters, {n_trainable:,} in the adapter; reference: "
            + (f"model {ref_art.id}" if ref_art is not None else "the same weights with the adapter off"))
    scaler = getattr(fabric.strategy.precision, "scaler", None)

    def save_checkpoint(step: int) -> Path:
        epoch, position = divmod(step, steps_per_epoch)
        path = ctx.checkpoints_dir / f"step-{step:06d}.pt"
        save_train_state(
            path, model_state=adapter_state_dict(raw), optimizer=optimizer, step=step, scheduler=scheduler,
            data_state={"epoch": epoch, "batch_in_epoch": position, "seed": options.seed},
            extra={"scaler": scaler.state_dict() if scaler is not None else None},
        )
        ctx.checkpoint(path, step)
        for old in sorted(ctx.checkpoints_dir.glob("step-*.pt"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    # --- resume: adapter, optimizer, scheduler, data position and RNG ---------------------------
    step = 0
    if ctx.resume_from:
        state = load_train_state(Path(ctx.resume_from))
        load_adapter(raw, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["extra"].get("scaler"):
            scaler.load_state_dict(state["extra"]["scaler"])
        step = int(state["step"])
        restore_rng(state["rng"])  # last: loading the model above reseeded torch
        ctx.log(f"resumed at step {step} of {total}")

    # The data order of an epoch is a function of (seed, epoch), so a step number is a data position.
    orders: dict[int, list[int]] = {}

    def batch_at(step: int) -> list[int]:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch not in orders:
            gen = torch.Generator().manual_seed(options.seed + epoch)
            orders.clear()
            orders[epoch] = torch.randperm(len(train_pairs), generator=gen).tolist()
        return orders[epoch][position * batch_size : (position + 1) * batch_size]

    def to_device(pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels = collate_pairs(pairs, pad)
        return fabric.to_device(ids), fabric.to_device(labels)

    def evaluate() -> dict[str, float]:
        model.eval()
        stats = []
        with torch.no_grad():
            for idx in chunks(range(len(val_pairs)), micro):
                ids, labels = to_device([val_pairs[i] for i in idx])
                stats.append(pair_forward(model, reference, ids, labels, beta=options.beta, kind=options.loss,
                                          label_smoothing=label_smoothing))
        model.train()
        return {f"val_{k}": v for k, v in summarize(stats, reference=True).items()}

    val_metrics: dict[str, float] = {}
    if not val_pairs:
        ctx.log("the dataset has no held-out pairs (val.jsonl); no held-out metrics", level="warning")
    elif step == 0:
        val_metrics = evaluate()
        ctx.metric(0, **val_metrics)

    # --- train --------------------------------------------------------------------------------
    model.train()
    ctx.progress(step, total, unit="step", desc="dpo")
    while step < total:
        if ctx.cancel_requested:
            save_checkpoint(step)
            raise Cancelled()
        t0 = time.perf_counter()
        batch = batch_at(step)
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)
        stats, tokens = [], 0
        for idx in chunks(batch, micro):
            pairs = [train_pairs[i] for i in idx]
            ids, labels = to_device(pairs)
            out = pair_forward(model, reference, ids, labels, beta=options.beta, kind=options.loss,
                               label_smoothing=label_smoothing)
            fabric.backward(out.losses.sum() / len(batch))
            stats.append(out)
            tokens += sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
        if options.grad_clip is not None and options.grad_clip > 0:
            fabric.clip_gradients(model, optimizer, max_norm=options.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        metrics = summarize(stats)
        if not math.isfinite(metrics["loss"]):
            raise RuntimeError(f"the loss became {metrics['loss']} at step {step}; lower --lr or --beta")
        ctx.metric(step, **metrics, lr=lr, tokens_per_s=tokens / (time.perf_counter() - t0))
        ctx.progress(step, total, unit="step", desc="dpo")
        if val_pairs and (step % options.eval_every == 0 or step == total):
            val_metrics = evaluate()
            ctx.metric(step, **val_metrics)
        if step % options.checkpoint_every == 0 and step < total:
            save_checkpoint(step)

    # --- outputs: the adapter, then the merged model with the prompt style carried over ---------
    name = options.name or f"{model_art.name}-dpo"
    recipe = {"method": "dpo", "loss": options.loss, "beta": options.beta, "label_smoothing": label_smoothing,
              "steps": total, "batch_size": batch_size, "lr": options.lr, "dataset": data_art.id,
              "reference": ref_art.id if ref_art is not None else "adapter-off"}
    parents = [model_art.id, data_art.id] + ([ref_art.id] if ref_art is not None else [])
    final = {k: round(v, 6) for k, v in val_metrics.items()} or {k: round(v, 6) for k, v in ctx.last_metrics.items()}

    staged = ctx.staging_dir("adapter")
    save_adapter(staged, raw, settings, model_art.id, extra={"dpo": recipe, "prompt_style": style.to_json()})
    adapter = ctx.register("adapter", staged, name=f"{name}-adapter", parents=parents,
                           metadata={"base_model": model_art.id, **recipe}, metrics=final)

    merged = {k: v.to(stored_dtype) if v.is_floating_point() else v for k, v in merged_state_dict(raw).items()}
    staged = ctx.staging_dir("model")
    save_model_dir(staged, merged, config, tokenizer_dir=model_dir, meta=_merged_meta(model_dir, style, recipe, adapter.id))
    merged_art = ctx.register(
        "model", staged, name=name, parents=[model_art.id, adapter.id, *parents[1:]],
        metadata={"family": model_art.metadata.get("family"), "prompt_style": style.name, **recipe},
        metrics=final,
    )
    result: dict[str, Any] = {"model": merged_art.id, "adapter": adapter.id, "steps": total}
    if val_metrics:
        rows = [[k.removeprefix("val_"), round(v, 4)] for k, v in val_metrics.items()]
        result["tables"] = [{"title": "held-out pairs", "columns": ["metric", "value"], "rows": rows}]
    return result


def _schedule(warmup: int, total: int) -> Any:
    """Linear warmup, then cosine decay to a tenth of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _weight_bytes(precision: str) -> int:
    return 2 if precision in ("16-true", "bf16-true") else 8 if precision.startswith("64") else 4


def _meta_gpt(model_dir: Path) -> torch.nn.Module:
    from litgpt import GPT

    with torch.device("meta"):
        return GPT(load_config(model_dir))


def _stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype of the weights on disk, so the merged model is saved as its base was."""
    st = model_dir / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        from workbench.weightfiles import check_safetensors

        check_safetensors(st)
        with safe_open(str(st), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.endswith(".weight"):
                    return fh.get_slice(key)[:1].dtype
    return torch.float32


def _merged_meta(model_dir: Path, style: PromptStyle, recipe: dict[str, Any], adapter_id: str) -> dict[str, Any]:
    meta = read_meta(model_dir)
    meta["prompt_style"] = style.to_json()
    if style.eos_token and not meta.get("eos_token"):
        meta["eos_token"] = style.eos_token
    meta["finetune"] = {**recipe, "adapter": adapter_id}
    return meta
