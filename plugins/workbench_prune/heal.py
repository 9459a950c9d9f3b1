"""The healing pass: next-token training of the pruned model on pretrain text, LoRA or full.

Sequences come from the token cache through the pretraining stage's `TokenWindows` (sequence p
of the run is a fixed function of (seed, p)); the loop, schedule and checkpoints are the shared
training skeleton's (`workbench.ml.training.TrainLoop`), so a cancelled run resumes exactly:
weights (or the adapter), optimizer, scheduler, loss scaler, data position and RNG are all in the
checkpoint.

Heavy module (torch, litgpt, lightning): imported by the stage's `run()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from workbench_pretrain.data import TokenWindows

from workbench.context import Context
from workbench.hardware import estimate_training_memory, fmt_bytes, mlp_shape, preflight
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
    Batches,
    Micro,
    SeededOrder,
    TrainLoop,
    make_fabric,
    training_precision,
    warmup_cosine,
)


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


class Positions(SeededOrder):
    """Sequence positions as they are: `TokenWindows.batch` maps a position to its window in the
    shared seeded order (and to its epoch's offset), so the loop hands the positions on."""

    def index(self, position: int) -> int:
        return position


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
        precision=precision, **mlp_shape(config))
    preflight(estimate, device, force=s.force, what="this healing pass")
    ctx.log(f"healing ({s.mode}): {n_trainable:,} trainable of {n_params:,} parameters, {s.steps} steps of "
            f"{s.batch_size}×{train.seq_len} tokens; {device}, {precision}; memory estimate {fmt_bytes(estimate.total)}")

    fabric = make_fabric(device, precision)
    model = fabric.setup_module(raw)
    trainable = [p for p in raw.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
    scheduler = warmup_cosine(inner, warmup=s.warmup_steps, total=s.steps)
    optimizer = fabric.setup_optimizers(inner)
    run_device = fabric.device
    loop = TrainLoop(
        ctx, fabric, model, optimizer, scheduler, order=Positions(train.n, s.seed),
        batches=Batches(s.batch_size, s.micro_batch_size, s.steps), grad_clip=s.grad_clip, eval_every=s.eval_every,
        checkpoint_every=s.checkpoint_every, seed=s.seed,
        state=(lambda: adapter_state_dict(raw)) if s.mode == "lora" else raw.state_dict,
        load=(lambda weights: load_adapter(raw, weights)) if s.mode == "lora" else raw.load_state_dict,
        desc=f"healing ({s.mode})",
    )
    loop.resume()
    first_val: float | None = loop.extra.get("first_val_loss")  # the loss of the unhealed cut

    def micro_step(positions: list[int]) -> Micro:
        batch = train.batch(positions[0], len(positions))
        return Micro(lm_loss(model, batch.to(run_device)), tokens=batch[:, 1:].numel())

    def evaluate() -> dict[str, float]:
        nonlocal first_val
        loss = val_loss(model, val, s.micro_batch_size, run_device)
        if first_val is None:
            first_val = loop.extra["first_val_loss"] = loss
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50))}

    last_val = loop.run(micro_step, evaluate if len(val) else None).get("val_loss", first_val)
    state = merged_state_dict(raw) if s.mode == "lora" else {k: v.detach() for k, v in raw.state_dict().items()}
    figures = {"steps": loop.step, "loss": loop.last.get("loss", float("nan")), "first_val_loss": first_val,
               "val_loss": last_val, "trainable_params": n_trainable}
    return {k: v.float().cpu() for k, v in state.items()}, figures
