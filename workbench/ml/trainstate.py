"""Training checkpoints that resume exactly: weights, optimizer, scheduler, AMP grad scaler, data
position, RNG.

Everything is stored as tensors and plain Python values, so `torch.load(weights_only=True)`
reads it back; nothing is unpickled.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.ml.checkpoint import atomic_torch_save


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _listify(v: Any) -> Any:
    return [_listify(x) for x in v] if isinstance(v, tuple) else v


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def save_train_state(
    path: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    step: int,
    scheduler: Any = None,
    scaler: Any = None,
    data_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temp file, then rename); a killed save leaves the last good one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        # 16-mixed training scales the loss; without the scale a resumed run takes other steps.
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "data": data_state or {},
        "rng": capture_rng(),
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    return path


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
