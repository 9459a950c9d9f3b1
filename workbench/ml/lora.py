"""LoRA on LitGPT models: build, save the adapter alone, merge, and switch the adapter off.

Switching the adapter off gives the base model's outputs from the same weights in memory, which
is how DPO gets its reference model without holding a second copy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from litgpt.lora import GPT as LoRAGPT
from litgpt.lora import Config as LoRAConfig
from litgpt.lora import LoRALayer, lora_filter, mark_only_lora_as_trainable, merge_lora_weights

from workbench.errors import UserError
from workbench.ml.checkpoint import config_to_dict, load_config, load_state_dict
from workbench.ml.rope import model_class

TARGETS = ("query", "key", "value", "projection", "mlp", "head")


@dataclass
class LoRASettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("query", "value")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}


def lora_config(model_dir: Path, settings: LoRASettings) -> LoRAConfig:
    unknown = set(settings.targets) - set(TARGETS)
    if unknown:
        raise UserError(f"unknown LoRA target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    if settings.r < 1:
        raise UserError("LoRA rank must be at least 1")
    base = config_to_dict(load_config(model_dir))
    flags = {f"lora_{t}": t in settings.targets for t in TARGETS}
    return LoRAConfig(**base, lora_r=settings.r, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout, **flags)


def load_lora_model(model_dir: Path, settings: LoRASettings, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, seed: int = 0) -> LoRAGPT:
    """Base weights from `model_dir`, fresh adapter (seeded), only adapter parameters trainable."""
    config = lora_config(model_dir, settings)
    torch.manual_seed(seed)
    model = model_class(config, LoRAGPT)(config)
    missing, unexpected = model.load_state_dict(load_state_dict(model_dir), strict=False)
    bad = [k for k in missing if "lora_" not in k]
    if bad or unexpected:
        raise UserError(f"weights in {model_dir} do not fit the model config ({(bad or unexpected)[0]})")
    mark_only_lora_as_trainable(model)
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if lora_filter(k, v)}


def load_adapter(model: torch.nn.Module, adapter: Mapping[str, torch.Tensor]) -> None:
    missing = set(adapter) - set(model.state_dict())
    if missing:
        raise UserError(f"adapter does not fit this model (e.g. {sorted(missing)[0]})")
    model.load_state_dict(adapter, strict=False)


def save_adapter(out_dir: Path, model: torch.nn.Module, settings: LoRASettings, base_model_id: str | None,
                 extra: dict[str, Any] | None = None) -> Path:
    """The adapter alone: `adapter.safetensors` + `adapter_config.json`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(out_dir / "adapter.safetensors"))
    cfg = {"lora": settings.to_json(), "base_model": base_model_id, **(extra or {})}
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out_dir


def read_adapter(adapter_dir: Path) -> tuple[LoRASettings, dict[str, torch.Tensor], dict[str, Any]]:
    from workbench.ml.checkpoint import load_safetensors

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    lora = cfg["lora"]
    settings = LoRASettings(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], targets=tuple(lora["targets"]))
    return settings, load_safetensors(adapter_dir / "adapter.safetensors"), cfg


def merged_state_dict(model: LoRAGPT) -> dict[str, torch.Tensor]:
    """Base-model weights with the adapter folded in, named like a plain LitGPT GPT."""
    merge_lora_weights(model)
    out = {}
    for k, v in model.state_dict().items():
        if lora_filter(k, v):
            continue
        out[k.replace(".linear.weight", ".weight").replace(".linear.bias", ".bias")] = v.detach().cpu()
    return out


def _lora_layers(model: torch.nn.Module) -> Iterator[LoRALayer]:
    for module in model.modules():
        if isinstance(module, LoRALayer):
            yield module


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run the model as its base: LoRA layers skip their low-rank path while inside."""
    layers = list(_lora_layers(model))
    previous = [layer.merged for layer in layers]
    if any(previous):
        raise RuntimeError("cannot switch off an adapter that is already merged into the weights")
    for layer in layers:
        layer.merged = True  # forward() returns the pretrained path only when `merged`
    try:
        yield
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.merged = was


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
