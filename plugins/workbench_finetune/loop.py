"""What the LoRA and classification loops share: device and precision through Lightning Fabric, a
seeded batch order that resumes mid-epoch, the learning-rate schedule, and checkpoint files.

Heavy module (torch, lightning): import it inside a stage's `run()`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from workbench.context import Context
from workbench.errors import UserError
from workbench.ml.trainstate import save_train_state

DTYPES = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "32-true": torch.float32}


def make_fabric(device: str, precision: str, quantize: str | None = None) -> L.Fabric:
    """One-device Fabric; `quantize='nf4'` loads Linear weights in 4 bits through bitsandbytes."""
    if not quantize:
        return L.Fabric(accelerator=device, devices=1, precision=precision)  # type: ignore[arg-type]
    if device != "cuda":
        raise UserError(f"--quantize {quantize} (QLoRA) needs a CUDA GPU, but this run is on {device}; drop --quantize")
    if precision not in DTYPES:
        raise UserError(f"--quantize works with bf16-true, 16-true or 32-true, not {precision}")
    from lightning.fabric.plugins import BitsandbytesPrecision

    plugin = BitsandbytesPrecision(mode=quantize, dtype=DTYPES[precision])  # type: ignore[arg-type]
    return L.Fabric(accelerator=device, devices=1, plugins=plugin)


def training_precision(device: str, precision: str | None, quantize: str | None) -> str:
    from workbench.hardware import choose_precision

    chosen = precision or choose_precision(device, training=True)
    # 4-bit weights compute in one dtype; Lightning refuses mixed precision with them.
    return chosen.replace("-mixed", "-true") if quantize and precision is None else chosen


class BatchOrder:
    """Micro-batch `m` of a run is a fixed function of (seed, m): epoch `m // per_epoch` is a
    permutation seeded by (seed, epoch), so a checkpoint only needs `m` to resume the data."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch = -1
        self._perm: list[int] = []

    def epoch(self, m: int) -> int:
        return m // self.per_epoch

    def batch(self, m: int) -> list[int]:
        epoch, pos = divmod(m, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = torch.randperm(self.n, generator=gen).tolist()
            self._epoch = epoch
        return self._perm[pos * self.batch_size: (pos + 1) * self.batch_size]


def total_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None) -> int:
    if max_steps:
        return max_steps
    return max(1, math.ceil(epochs * math.ceil(n_examples / batch_size) / grad_accum))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to `floor` of the peak at the last step."""
    warmup = min(warmup, max(0, total - 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def write_checkpoint(
    ctx: Context, step: int, *, model_state: dict[str, torch.Tensor], optimizer: Any, scheduler: Any,
    micro_batch: int, extra: dict[str, Any] | None = None, keep: int = 2,
) -> Path:
    """Write a resumable train state atomically, record it, and keep only the newest `keep`."""
    path = ctx.checkpoints_dir / f"step-{step:07d}.pt"
    save_train_state(path, model_state=model_state, optimizer=optimizer, step=step, scheduler=scheduler,
                     data_state={"micro_batch": micro_batch}, extra=extra)
    ctx.checkpoint(path, step)
    for old in sorted(ctx.checkpoints_dir.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path
