"""The model directory every stage reads and writes.

A `model` artifact is a directory that LitGPT loads as a checkpoint:

- `model.safetensors`   the weights, for everything we read ourselves
- `lit_model.pth`       the same weights as a plain state dict, for LitGPT's own scripts (they read
                        nothing else); loads with `torch.load(weights_only=True)`
- `model_config.yaml`   LitGPT `Config`
- `tokenizer.json` (or `tokenizer.model`) and `tokenizer_config.json` (with `tokenizer_class`)
- `generation_config.json`  bos/eos ids, so LitGPT and llama.cpp agree on them
- `workbench.json`      our metadata: prompt style with its chat template, family, lineage notes

Never unpickle what we did not write: weights load from safetensors first, and `.pth` files
only with `weights_only=True`.

The two weight files cannot be one: safetensors is a JSON header and raw bytes, a `.pth` is a
zip of pickles, so neither a hard link nor a rename serves both readers (docs/download.md).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from litgpt import GPT, Config

from workbench.errors import UserError, writing
from workbench.ml.rope import model_class
from workbench.weightfiles import check_model_dir, check_safetensors, where

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json",
)


def load_config(model_dir: Path) -> Config:
    path = model_dir / "model_config.yaml"
    if not path.exists():
        raise UserError(f"{model_dir} is not a LitGPT checkpoint: model_config.yaml is missing")
    data = yaml.safe_load(path.read_text())
    return Config(**data)


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    path = check_model_dir(model_dir)  # again at load: the file may have changed since validate()
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise UserError(
            f"{where(path)} cannot be loaded safely ({type(exc).__name__}); it is damaged or holds "
            "pickled objects, which workbench never unpickles"
        ) from None
    sd = sd.get("model", sd) if isinstance(sd, dict) and "model" in sd else sd
    # Tied weights are stored once in lit_model.pth; parameters loaded with assign=True must not
    # share memory, or training one would change the other.
    seen: set[int] = set()
    for k, v in sd.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            sd[k] = v.clone()
        seen.add(ptr)
    return sd


def load_safetensors(path: Path, shown: str | None = None) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors, its header checked first; damage the checks cannot see
    (a file changed while it loads) is still one line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path, shown)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{shown or where(path)} cannot be read: {str(exc).splitlines()[0]}") from None


def load_model(model_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> GPT:
    """The GPT with its weights, in eval mode."""
    config = load_config(model_dir)
    with torch.device("meta"):
        model = model_class(config)(config)  # GPT, or ours where LitGPT lacks the model's RoPE
    sd = load_state_dict(model_dir)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(f"weights in {model_dir} do not match its model_config.yaml: {str(exc).splitlines()[0]}") from None
    # Rotary caches are non-persistent buffers built on the meta device; rebuild them for real.
    model.cos, model.sin = model.rope_cache(device=torch.device("cpu"))
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval()


def read_meta(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "workbench.json"
    return json.loads(path.read_text()) if path.exists() else {}


def config_to_dict(config: Config) -> dict[str, Any]:
    data = asdict(config)
    data.pop("hf_config", None) if not data.get("hf_config") else None
    return data


def save_model_dir(
    out_dir: Path,
    state_dict: dict[str, torch.Tensor],
    config: Config,
    *,
    tokenizer_dir: Path,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a complete model directory into `out_dir` (a staging dir; register it afterwards)."""
    with writing(out_dir):
        return _save_model_dir(out_dir, state_dict, config, tokenizer_dir=tokenizer_dir, meta=meta)


def _save_model_dir(
    out_dir: Path,
    state_dict: dict[str, torch.Tensor],
    config: Config,
    *,
    tokenizer_dir: Path,
    meta: dict[str, Any] | None,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    owned = {k: _owning(v) for k, v in state_dict.items()}
    # safetensors refuses tensors that share memory (tied embeddings): those get a copy of their
    # own, in this file only; lit_model.pth keeps them shared, so tied weights are stored once.
    seen: set[int] = set()
    untied: dict[str, torch.Tensor] = {}
    for k, v in owned.items():
        ptr = v.untyped_storage().data_ptr()
        untied[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    save_file(untied, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del untied
    torch.save(owned, out_dir / "lit_model.pth")
    with open(out_dir / "model_config.yaml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(config_to_dict(config), fh)
    copy_tokenizer(tokenizer_dir, out_dir)
    (out_dir / "workbench.json").write_text(json.dumps(meta or {}, indent=2))
    return out_dir


def _owning(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the CPU, copied only when it is a view: a saved view would drag its whole
    storage along. Whole tensors are written as they are, so saving never holds a second model."""
    t = tensor.detach().to("cpu")
    whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    return t if whole else t.contiguous().clone()


def copy_tokenizer(src: Path, dst: Path) -> None:
    found = False
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
            found = found or name in ("tokenizer.json", "tokenizer.model")
    if not found:
        raise UserError(f"{src} holds no tokenizer (tokenizer.json or tokenizer.model)")
    tc = dst / "tokenizer_config.json"
    cfg = json.loads(tc.read_text()) if tc.exists() else {}
    if "tokenizer_class" not in cfg:  # LitGPT's Tokenizer raises KeyError without it
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        tc.write_text(json.dumps(cfg, indent=2))


def load_tokenizer(model_dir: Path) -> Any:
    from litgpt import Tokenizer

    return Tokenizer(model_dir)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save to `<name>.tmp`, then rename; a failed save (a full disk) removes its partial file.

    Written through our own file object, so an out-of-space error surfaces as ENOSPC naming the
    file rather than as torch's bare "file write failed".
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(tmp), open(tmp, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
