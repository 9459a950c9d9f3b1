"""The healing pass: next-token training of the pruned model on pretrain text, LoRA or full.

Sequences come from the token cache through the pretraining stage's `TokenWindows` (sequence p
of the run is a fixed function of (seed, p)), the schedule and checkpoints from the shared
training skeleton (`workbench.ml.training`), so a cancelled run resumes exactly: weights (or the adapter), optimizer,
scheduler, data position and RNG are all in the checkpoint.

Heavy module (torch, litgpt, lightning): imported by the stage's `run()`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from workbench_pretrain.data import TokenWindows

from workbench.context import Context
from workbench.errors import Cancelled
from workbench.hardware import estimate_training_memory, fmt_bytes, preflight
from workbench.ml.checkpoint import load_config, load_model
from workbench.ml.lora import (
    LoRASettings,
    adapter_state_dict,
    count_parameters,
    load_adapter,
    load_lora_model,
    merged_state_dict,
)
from workbench.ml.training import (
    grad_scaler,
    make_fabric,
    restore_optim,
    save_checkpoint,
    training_precision,
    warmup_cosine,
)
from workbench.ml.trainstate import load_train_state, restore_rng


@dataclass
class HealSettings:
    mode: str  # "lora" or "full"
    steps: int
    lr: float
    batch_size: int
    micro_batch_size: int
    warmup_steps: int
    weight_decay: float
    grad_clip: float | None
    eval_every: int
    eval_batches: int
    checkpoint_every: int
    seed: int
    device: str
    precision: str | None
    force: bool
    lora: LoRASettings


def lm_loss(model: torch.nn.Module, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1), reduction=reduction)


@torch.no_grad()
def val_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size].to(device)
        total += float(lm_loss(model, batch, reduction="sum"))
        count += batch[:, 1:].numel()
    model.train()
    return total / max(count, 1)


def heal(model_dir: Path, train: TokenWindows, val: torch.Tensor, s: HealSettings,
         ctx: Context) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the model in `model_dir`; returns its healed state dict and the run's figures."""
    from workbench.hardware import choose_device

    device = choose_device(s.device)
    precision = training_precision(device, s.precision, None)
    config = load_config(model_dir)
    torch.manual_seed(s.seed)
    if s.mode == "lora":
        raw = load_lora_model(model_dir, s.lora, seed=s.seed)
    else:
        raw = load_model(model_dir, dtype=torch.float32).train()
    n_params, n_trainable = count_parameters(raw)
    estimate = estimate_training_memory(
        n_params=n_params, trainable_params=n_trainable, batch_size=s.micro_batch_size, seq_len=train.seq_len,
        n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head, vocab_size=config.padded_vocab_size,
        precision=precision)
    preflight(estimate, device, force=s.force, what="this healing pass")
    ctx.log(f"healing ({s.mode}): {n_trainable:,} trainable of {n_params:,} parameters, {s.steps} steps of "
            f"{s.batch_size}×{train.seq_len} tokens; {device}, {precision}; memory estimate {fmt_bytes(estimate.total)}")

    fabric = make_fabric(device, precision)
    model = fabric.setup_module(raw)
    trainable = [p for p in raw.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
    scheduler = warmup_cosine(inner, warmup=s.warmup_steps, total=s.steps)
    optimizer = fabric.setup_optimizers(inner)
    scaler = grad_scaler(fabric)
    run_device = fabric.device
    accumulation = s.batch_size // s.micro_batch_size

    def weights() -> dict[str, torch.Tensor]:
        return adapter_state_dict(raw) if s.mode == "lora" else raw.state_dict()

    step = 0
    first_val: float | None = None
    if ctx.resume_from:
        state = load_train_state(Path(ctx.resume_from))
        if s.mode == "lora":
            load_adapter(raw, state["model"])
        else:
            raw.load_state_dict(state["model"])
        restore_optim(state, optimizer, scheduler, scaler)
        step = int(state["step"])
        first_val = state["extra"].get("first_val_loss")
        restore_rng(state["rng"])
        ctx.log(f"resumed at step {step} of {s.steps}")
    elif len(val):
        first_val = val_loss(model, val, s.micro_batch_size, run_device)
        ctx.metric(0, val_loss=first_val, val_ppl=math.exp(min(first_val, 50)))

    def checkpoint() -> Path:
        return save_checkpoint(ctx, ctx.checkpoints_dir, step, model_state=weights(), optimizer=optimizer,
                               scheduler=scheduler, scaler=scaler, position=step * s.batch_size, seed=s.seed,
                               extra={"first_val_loss": first_val})

    model.train()
    loss_value, last_val = float("nan"), first_val
    while step < s.steps:
        if ctx.cancel_requested:
            checkpoint()
            raise Cancelled()
        t0 = time.perf_counter()
        losses = []
        for micro in range(accumulation):
            batch = train.batch(step * s.batch_size + micro * s.micro_batch_size, s.micro_batch_size)
            loss = lm_loss(model, batch.to(run_device))
            fabric.backward(loss / accumulation)
            losses.append(loss.detach())
        if s.grad_clip:
            fabric.clip_gradients(model, optimizer, max_norm=s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - t0
        loss_value = float(torch.stack(losses).mean())
        ctx.metric(step, loss=loss_value, lr=lr, tokens_per_s=s.batch_size * train.seq_len / elapsed)
        ctx.progress(step, s.steps, unit="step", desc=f"healing ({s.mode})")
        if len(val) and (step % s.eval_every == 0 or step == s.steps):
            last_val = val_loss(model, val, s.micro_batch_size, run_device)
            ctx.metric(step, val_loss=last_val, val_ppl=math.exp(min(last_val, 50)))
        if step % s.checkpoint_every == 0 and step < s.steps:
            checkpoint()

    state = merged_state_dict(raw) if s.mode == "lora" else {k: v.detach() for k, v in raw.state_dict().items()}
    figures = {"steps": step, "loss": loss_value, "first_val_loss": first_val, "val_loss": last_val,
               "trainable_params": n_trainable}
    return {k: v.float().cpu() for k, v in state.items()}, figures
