"""The training skeleton every training stage shares.

- `lr_factor` / `warmup_cosine`: one learning-rate schedule, LitGPT's pretraining one (linear
  warmup, cosine decay to a floor), counted in optimizer steps.
- `SeededOrder`: the data order. Sample position `p` of a run is item `perm_e[p % n]` of epoch
  `e = p // n`, each epoch's permutation drawn from `numpy.random.default_rng([seed, e])`; so a
  step number alone says where the data is, and a resumed run reads what an uninterrupted one would.
- `checkpoint_path` / `save_checkpoint` / `load_checkpoint`: one naming (`step-000100.pt`), one
  file (`trainstate`: weights, optimizer, scheduler, AMP grad scaler, RNG, data position), the
  newest two kept.
- `TrainLoop`: step counting, gradient accumulation over micro-batches, clipping, evaluation
  every N steps, checkpoints every N steps and on cancel, resume, and the progress and metric
  events. A stage brings its model, its loss on a micro-batch and its evaluation.

Pretraining keeps its own loop for Fabric's multi-process strategies, on this schedule, this
order and these checkpoints.

Heavy module (torch, lightning): import it inside a stage's `run()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch

from workbench.errors import Cancelled, UserError
from workbench.ml.trainstate import load_train_state, restore_rng, save_train_state

#: Checkpoints kept per run: a resume needs the newest; the one before stays until it is on record.
KEEP_CHECKPOINTS = 2
#: Where the cosine ends, as a share of the peak learning rate, unless a stage says otherwise.
LR_FLOOR = 0.1

DTYPES = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "32-true": torch.float32}


class Reporter(Protocol):
    """What training reports through: a run's `Context`, or a stand-in for it in another process."""

    @property
    def cancel_requested(self) -> bool: ...
    def progress(self, step: int, total: int | None = None, *, unit: str = "step", desc: str | None = None) -> None: ...
    def metric(self, step: int | None = None, **values: float) -> None: ...
    def log(self, message: str, level: str = "info") -> None: ...
    def checkpoint(self, path: Path, step: int) -> None: ...


# ---------------------------------------------------------------------------------------------
# schedule


def lr_factor(step: int, *, warmup: int, total: int, floor: float = LR_FLOOR) -> float:
    """The learning rate of optimizer step `step` (from 0) as a share of the peak.

    LitGPT's `get_lr` (litgpt/pretrain.py) evaluated at `step + 1`, the steps done once this one
    is: the first step already trains (at peak / warmup), the peak is reached after `warmup`
    steps, and the last step trains at `floor` × peak.
    """
    done = step + 1
    if done < warmup:
        return done / warmup
    if done >= total:
        return floor
    progress = (done - warmup) / (total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup: int, total: int,
                  floor: float = LR_FLOOR) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, total=total, floor=floor))


# ---------------------------------------------------------------------------------------------
# data order


class SeededOrder:
    """Item indices in the order a run reads them; see the module docstring."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("an order needs at least one item")
        self.n, self.seed = n, seed
        self._epoch: int | None = None
        self._perm = np.empty(0, dtype=np.int64)

    def shuffle(self, rng: np.random.Generator) -> np.ndarray:
        """One epoch's permutation; a subclass may draw more from `rng` first."""
        return rng.permutation(self.n)

    def index(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch != self._epoch:
            self._perm = self.shuffle(np.random.default_rng([self.seed, epoch]))
            self._epoch = epoch
        return int(self._perm[i])

    def take(self, start: int, count: int) -> list[int]:
        return [self.index(p) for p in range(start, start + count)]

    def epoch(self, position: int) -> int:
        return position // self.n


@dataclass(frozen=True)
class Batches:
    """How many samples an optimizer step takes and how many go through the model at once."""

    batch_size: int
    micro_batch_size: int
    steps: int

    @classmethod
    def plan(cls, n: int, batch_size: int, micro_batch_size: int | None, *, epochs: int,
             max_steps: int | None) -> Batches:
        """A batch is at most the whole training set; `--max-steps` wins over `--epochs`."""
        batch = min(batch_size, n)
        micro = min(micro_batch_size if micro_batch_size is not None else batch, batch)
        steps = max_steps if max_steps is not None else max(1, math.ceil(epochs * n / batch))
        return cls(batch, micro, steps)

    @property
    def accumulation(self) -> int:
        return math.ceil(self.batch_size / self.micro_batch_size)

    def describe(self, noun: str) -> str:
        """For the run's log: "40 steps of 8 examples (2 micro-batches of 4)"."""
        return (f"{self.steps} step{'s' if self.steps != 1 else ''} of {self.batch_size} {noun} "
                f"({self.accumulation} micro-batch{'es' if self.accumulation > 1 else ''} of {self.micro_batch_size})")


# ---------------------------------------------------------------------------------------------
# device and precision


def training_precision(device: str, precision: str | None, quantize: str | None = None) -> str:
    from workbench.hardware import choose_precision

    chosen = precision or choose_precision(device, training=True)
    # 4-bit weights compute in one dtype; Lightning refuses mixed precision with them.
    return chosen.replace("-mixed", "-true") if quantize and precision is None else chosen


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


def grad_scaler(fabric: L.Fabric) -> Any:
    """The AMP loss scaler of a 16-mixed run (None otherwise); it is part of the exact state."""
    return getattr(fabric.strategy.precision, "scaler", None)


# ---------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:06d}.pt"


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("step-"))
    except ValueError:
        return -1


def prune_checkpoints(folder: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    """Keep the newest `keep` (by step, whatever the digits in older names)."""
    for old in sorted(folder.glob("step-*.pt"), key=_step_of)[:-keep]:
        old.unlink(missing_ok=True)


def save_checkpoint(
    reporter: Reporter, folder: Path, step: int, *, model_state: Mapping[str, torch.Tensor], optimizer: Any,
    scheduler: Any, scaler: Any, position: int, seed: int, extra: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable train state atomically, record it, and drop the older ones."""
    path = checkpoint_path(folder, step)
    save_train_state(path, model_state=dict(model_state), optimizer=optimizer, step=step, scheduler=scheduler,
                     scaler=scaler, data_state={"position": position, "seed": seed}, extra=extra)
    reporter.checkpoint(path, step)
    prune_checkpoints(folder)
    return path


def check_fingerprint(state: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """A checkpoint resumes only the run that wrote it. One written before fingerprints passes, and
    one from a release that recorded fewer inputs is checked on those it recorded."""
    found = state.get("extra", {}).get("fingerprint")
    if found is not None and any(key not in expected or expected[key] != value for key, value in found.items()):
        raise UserError(
            f"checkpoint {path} was written by a run with another model, sequence length, batch, seed, "
            "length or data; start a new run instead of resuming"
        )


def restore_optim(state: dict[str, Any], optimizer: Any, scheduler: Any, scaler: Any) -> None:
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # Checkpoints from before the scaler had its own place kept it among the extras.
    scaler_state = state.get("scaler") or state.get("extra", {}).get("scaler")
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class Micro:
    """What a stage's loss function returns for one micro-batch: the mean loss over its samples
    (what gets the gradient), the step metrics it measured (means over its samples; tensors are
    fine, they are read once per step) and the tokens it processed."""

    loss: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0


class TrainLoop:
    """Step counting, accumulation, clipping, evaluation, checkpoints, cancel and resume.

    `state()` gives the trained weights to checkpoint and `load(weights)` puts them back;
    `extra` holds what a stage wants to keep across a resume (plain values); `inputs` names what
    else a checkpoint must have been written with to resume this run (model, data, sizes).
    """

    def __init__(
        self, ctx: Any, fabric: L.Fabric, model: torch.nn.Module, optimizer: Any, scheduler: Any, *,
        order: SeededOrder, batches: Batches, grad_clip: float | None, eval_every: int, checkpoint_every: int,
        seed: int, state: Callable[[], Mapping[str, torch.Tensor]],
        load: Callable[[Mapping[str, torch.Tensor]], None], desc: str, inputs: Mapping[str, Any] | None = None,
    ):
        self.ctx, self.fabric, self.model, self.optimizer, self.scheduler = ctx, fabric, model, optimizer, scheduler
        self.order, self.batches, self.grad_clip = order, batches, grad_clip
        self.eval_every, self.checkpoint_every, self.seed = eval_every, checkpoint_every, seed
        self.state, self.load, self.desc = state, load, desc
        self.inputs = dict(inputs or {})
        self.scaler = grad_scaler(fabric)
        self.step, self.tokens = 0, 0
        self.seconds = 0.0  # time spent in training steps, over every attempt of the run
        self.extra: dict[str, Any] = {}
        self.last: dict[str, float] = {}  # the last step's metrics

    @property
    def total(self) -> int:
        return self.batches.steps

    def fingerprint(self) -> dict[str, Any]:
        return {"batch_size": self.batches.batch_size, "seed": self.seed, "steps": self.total,
                "examples": self.order.n, **self.inputs}

    def resume(self) -> bool:
        """Load `ctx.resume_from` if there is one: weights, optimizer, scheduler, scaler, RNG."""
        if not self.ctx.resume_from:
            return False
        path = Path(self.ctx.resume_from)
        state = load_train_state(path)
        check_fingerprint(state, self.fingerprint(), path)
        self.load(state["model"])
        restore_optim(state, self.optimizer, self.scheduler, self.scaler)
        self.step = int(state["step"])
        extra = state.get("extra", {})
        self.tokens = int(extra.get("tokens", 0))
        self.seconds = float(extra.get("seconds", 0.0))
        self.extra = dict(extra.get("stage", extra))  # older checkpoints kept a stage's values at the top
        restore_rng(state["rng"])  # last: loading the model may have drawn from the generators
        epoch = self.order.epoch(self.step * self.batches.batch_size) + 1
        self.ctx.log(f"resumed at step {self.step} of {self.total} (epoch {epoch})")
        return True

    def checkpoint(self) -> Path:
        return save_checkpoint(
            self.ctx, self.ctx.checkpoints_dir, self.step, model_state=self.state(), optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, position=self.step * self.batches.batch_size,
            seed=self.seed,
            extra={"tokens": self.tokens, "seconds": self.seconds, "stage": self.extra,
                   "fingerprint": self.fingerprint()},
        )

    def run(self, micro_step: Callable[[list[int]], Micro],
            evaluate: Callable[[], dict[str, float]] | None = None) -> dict[str, float]:
        """Train to the last step; return the last evaluation's metrics.

        Raises `Cancelled` after writing a checkpoint when the run is cancelled.
        """
        ctx, batch_size = self.ctx, self.batches.batch_size
        evaluated: dict[str, float] = {}
        if evaluate is not None and self.step == 0:
            evaluated = evaluate()
            ctx.metric(0, **evaluated)
        self.model.train()
        ctx.progress(self.step, self.total, unit="step", desc=self.desc)
        while self.step < self.total:
            if ctx.cancel_requested:
                self.checkpoint()
                raise Cancelled()
            t0 = time.perf_counter()
            start = self.step * batch_size
            batch = self.order.take(start, batch_size)
            sums: dict[str, Any] = {}
            tokens = 0
            for i in range(0, batch_size, self.batches.micro_batch_size):
                idx = batch[i : i + self.batches.micro_batch_size]
                out = micro_step(idx)
                share = len(idx) / batch_size  # the step's gradient is the mean over its samples
                self.fabric.backward(out.loss * share)
                for name, value in {"loss": out.loss.detach(), **out.metrics}.items():
                    sums[name] = sums.get(name, 0.0) + value * share
                tokens += out.tokens
            if self.grad_clip:
                self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.grad_clip)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            self.tokens += tokens
            metrics = {name: float(value) for name, value in sums.items()}  # waits for the device once
            if not math.isfinite(metrics["loss"]):
                raise RuntimeError(f"the loss became {metrics['loss']} at step {self.step}; lower --lr")
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            metrics.update(lr=lr, step_time=seconds, epoch=self.order.epoch(start + batch_size - 1) + 1)
            if tokens:
                metrics["tokens_per_s"] = tokens / seconds
            ctx.metric(self.step, **metrics)
            self.last = metrics
            ctx.progress(self.step, self.total, unit="step", desc=self.desc)
            if evaluate is not None and (self.step % self.eval_every == 0 or self.step == self.total):
                evaluated = evaluate()
                ctx.metric(self.step, **evaluated)
            if self.step % self.checkpoint_every == 0 and self.step < self.total:
                self.checkpoint()
        return evaluated
