"""Each format on disk → an artifact in the workspace. Heavy module: imported inside `run()`.

Hugging Face directories go through exactly the functions `workbench download` converts a Hub
repository with (`workbench_download.convert`). Weights are read from safetensors, or from
pickles only with `torch.load(weights_only=True)`; nothing the user hands us is unpickled or run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UserError
from workbench_import.detect import GGUF, HF, LITGPT, LITGPT_LORA, PEFT, Source

if TYPE_CHECKING:
    import torch
    from litgpt import Config

    from workbench.context import Context
    from workbench.store import Artifact
    from workbench_import.stage import Options

_CHUNK = 8 << 20


def import_source(source: Source, options: Options, ctx: Context) -> Artifact:
    handler = {HF: import_hf, LITGPT: import_litgpt, GGUF: import_gguf, PEFT: import_peft,
               LITGPT_LORA: import_litgpt_lora}[source.format]
    ctx.log(f"importing {source.path} as a {source.label}")
    return handler(source, options, ctx)


# provenance -----------------------------------------------------------------------------------


def fingerprint(root: Path, names: list[str], ctx: Context) -> list[dict[str, Any]]:
    """Size and SHA-256 of each source file, so the origin can be checked later."""
    paths = [root / n for n in names]
    total = sum(p.stat().st_size for p in paths)
    done, out = 0, []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                ctx.check_cancelled()
                digest.update(chunk)
                done += len(chunk)
                ctx.progress(done, total, unit="byte", desc=f"hashing {path.name}")
        out.append({"name": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()})
    return out


def _origin(source: Source, files: list[dict[str, Any]], transfer: str) -> dict[str, Any]:
    return {"source": {"path": str(source.path), "format": source.format, "transfer": transfer, "files": files}}


def _register_dir(ctx: Context, staged: Path, kind: str, **kwargs: Any) -> Artifact:
    try:
        return ctx.register(kind, staged, **kwargs)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


# Hugging Face directory -----------------------------------------------------------------------


def import_hf(source: Source, options: Options, ctx: Context) -> Artifact:
    from workbench_download import convert as hf

    root = source.path
    local = {p.name: p for p in root.iterdir() if p.is_file()}
    label = str(root)
    config_json = _read_json(local["config.json"])
    hf.config_kwargs(config_json, label)  # an unsupported architecture is refused before torch loads
    fmt, shards = hf.weight_files(local)
    if not shards:
        raise UserError(f"{root} has config.json but no weights (*.safetensors or pytorch_model*.bin)")
    small = [n for n in hf.CONFIG_FILES if n in local]
    files = fingerprint(root, small + shards, ctx)

    config, family, arch = hf.litgpt_config(config_json, label)
    ctx.log(f"converting {len(shards)} {fmt} file(s) of a {arch} to a LitGPT checkpoint")
    sd = hf.convert_weights(config, family, arch, [local[s] for s in shards], None, ctx)
    n_params = hf.check_fits(config, sd, label)
    style, eos = hf.prompt_style(local, ctx)
    meta = {"prompt_style": style.to_json(), "family": family, "eos_token": eos, "architecture": arch,
            "imported_from": str(root)}
    stored = str(config_json.get("torch_dtype") or config_json.get("dtype") or "float32")
    staged = _write_model(ctx, sd, config, root, meta, label)
    for name, path in local.items():  # the licence travels with the weights
        if any(fnmatch.fnmatchcase(name, p) for p in hf.DOC_PATTERNS):
            shutil.copyfile(path, staged / name)
    return _register_dir(
        ctx, staged, "model", name=options.name or root.name,
        metadata={**_origin(source, files, "converted"), "family": family, "architecture": arch,
                  "weights_format": fmt, "dtype": stored, "params": n_params, "prompt_style": style.name},
        metrics={"params": n_params},
    )


def _write_model(ctx: Context, sd: dict[str, torch.Tensor], config: Config, tokenizer_dir: Path,
                 meta: dict[str, Any], label: str) -> Path:
    """A complete model directory in a staging path; removed again if anything fails."""
    from litgpt import Tokenizer

    from workbench.ml.checkpoint import save_model_dir

    staged = ctx.staging_dir("model")
    try:
        ctx.progress(0, 1, unit="step", desc="writing the model directory")
        save_model_dir(staged, sd, config, tokenizer_dir=tokenizer_dir, meta=meta)
        try:
            Tokenizer(staged)
        except Exception as exc:  # LitGPT raises several kinds for unusable tokenizers
            raise UserError(f"the tokenizer in {label} cannot be loaded by LitGPT: {type(exc).__name__}: {exc}") from None
        ctx.progress(1, 1, unit="step", desc="writing the model directory")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


# LitGPT checkpoint ------------------------------------------------------------------------------


def _lit_config(root: Path) -> tuple[Config, dict[str, Any]]:
    """The LitGPT Config of `model_config.yaml` and the raw mapping (LoRA fields included)."""
    import dataclasses

    import yaml
    from litgpt import Config

    path = root / "model_config.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a LitGPT config")
    known = {f.name for f in dataclasses.fields(Config)}
    try:
        # `litgpt finetune lora` writes its lora_* fields into the same file.
        return Config(**{k: v for k, v in raw.items() if k in known}), raw
    except (AssertionError, ValueError, TypeError) as exc:
        raise UserError(f"{path} describes no valid LitGPT model: {exc or type(exc).__name__}") from None


def load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth`, through torch's weights-only unpickler alone."""
    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds pickled Python objects besides tensors (a LitGPT pretraining checkpoint keeps its "
            "optimizer and data loader there), and workbench never unpickles them; if you trust the file, "
            "run `litgpt convert_pretrained_checkpoint` on its directory and import the result"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]  # pretraining checkpoints that hold only plain data besides it
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path} is not a plain state dict of tensors")
    return data


def import_litgpt(source: Source, options: Options, ctx: Context) -> Artifact:
    from workbench_download import convert as hf

    root = source.path
    config, _ = _lit_config(root)
    weights = "model.safetensors" if (root / "model.safetensors").exists() else "lit_model.pth"
    small = [n for n in ("model_config.yaml", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                         "generation_config.json", "workbench.json") if (root / n).exists()]
    files = fingerprint(root, [*small, weights], ctx)
    if weights == "model.safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(root / weights))
    else:
        sd = load_pickled_tensors(root / weights)
    ctx.check_cancelled()
    n_params = hf.check_fits(config, sd, str(root / weights))
    meta = _read_json(root / "workbench.json") if (root / "workbench.json").exists() else {}
    if "prompt_style" not in meta:
        local = {p.name: p for p in root.iterdir() if p.is_file()}
        style, eos = hf.prompt_style(local, ctx)
        meta.update(prompt_style=style.to_json(), eos_token=eos)
    meta["imported_from"] = str(root)
    staged = _write_model(ctx, sd, config, root, meta, str(root))
    return _register_dir(
        ctx, staged, "model", name=options.name or root.name,
        metadata={**_origin(source, files, "converted"), "family": meta.get("family"), "params": n_params,
                  "weights_format": "safetensors" if weights.endswith(".safetensors") else "pth",
                  "prompt_style": meta["prompt_style"].get("name") if isinstance(meta["prompt_style"], dict) else None},
        metrics={"params": n_params},
    )


# GGUF file ------------------------------------------------------------------------------------


def import_gguf(source: Source, options: Options, ctx: Context) -> Artifact:
    from workbench_download.ggufs import inspect_gguf

    path = source.path
    info = inspect_gguf(path, str(path))
    files = fingerprint(path.parent, [path.name], ctx)
    ctx.log(f"{path.name}: {info['architecture']} {info['file_type'] or ''}, context {info['context_length']}")
    staged = ctx.staging_dir("gguf")
    try:
        # A hard link is a second name for the same bytes: deleting the original leaves ours intact.
        try:
            os.link(path, staged / path.name)
            transfer = "hard-linked"
        except OSError:
            shutil.copyfile(path, staged / path.name)
            transfer = "copied"
        art = ctx.register("gguf", staged / path.name, name=options.name or path.stem, filename=path.name,
                           metadata={**_origin(source, files, transfer), "gguf": info})
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # empty once the file is registered
    return art


# LoRA adapters ----------------------------------------------------------------------------------

_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?:layers\.(\d+)\.(?:self_attn|mlp)\.)?"
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|lm_head)\.lora_([AB])(?:\.default)?\.weight$"
)
#: PEFT module → (LitGPT weight, which rows of it: q, k, v of the fused qkv or all)
_PEFT_TARGETS = {
    "q_proj": ("attn.qkv.weight", "q"), "k_proj": ("attn.qkv.weight", "k"), "v_proj": ("attn.qkv.weight", "v"),
    "o_proj": ("attn.proj.weight", None), "gate_proj": ("mlp.fc_1.weight", None),
    "up_proj": ("mlp.fc_2.weight", None), "down_proj": ("mlp.proj.weight", None),
}


def _base(options: Options, ctx: Context) -> Artifact:
    from workbench.context import require_kind

    assert options.base is not None
    base = ctx.artifact(options.base)
    require_kind(base, "model")
    return base


def import_peft(source: Source, options: Options, ctx: Context) -> Artifact:
    """A PEFT LoRA adapter merged into its base: W + (alpha / r) · B·A per targeted weight."""

    from workbench_download.convert import load_weights

    from workbench.ml.checkpoint import load_config, load_state_dict, read_meta

    root = source.path
    cfg = _read_json(root / "adapter_config.json")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise UserError(f"{root / 'adapter_config.json'}: peft_type {cfg.get('peft_type')} is not LORA, "
                        "the only adapter type workbench merges")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise UserError(f"{root / 'adapter_config.json'}: {flag} adapters are not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError(f"{root / 'adapter_config.json'}: per-layer rank_pattern/alpha_pattern is not supported")
    try:
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{root / 'adapter_config.json'} lacks a numeric r and lora_alpha") from None
    scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)

    weights = "adapter_model.safetensors" if (root / "adapter_model.safetensors").exists() else "adapter_model.bin"
    files = fingerprint(root, ["adapter_config.json", weights], ctx)
    adapter = load_weights(root / weights)
    base = _base(options, ctx)
    config = load_config(base.path)
    sd = dict(load_state_dict(base.path))

    pairs: dict[tuple[int | None, str], dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise UserError(f"{root / weights}: tensor {key} is not a LoRA weight of a Llama-style attention, "
                            "MLP or lm_head layer, which is what workbench merges")
        layer = int(m[1]) if m[1] is not None else None
        pairs.setdefault((layer, m[2]), {})[m[3]] = tensor
    q_rows = config.n_head * config.head_size
    kv_rows = config.n_query_groups * config.head_size
    rows = {"q": slice(0, q_rows), "k": slice(q_rows, q_rows + kv_rows), "v": slice(q_rows + kv_rows, None)}
    for i, ((layer, module), ab) in enumerate(sorted(pairs.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0], kv[0][1]))):
        ctx.check_cancelled()
        if set(ab) != {"A", "B"}:
            raise UserError(f"{root / weights}: {module} of layer {layer} has lora_{next(iter(ab))} without its partner")
        if module == "lm_head":
            target, part = "lm_head.weight", None
        else:
            if layer is None or layer >= config.n_layer:
                raise UserError(f"{root / weights}: layer {layer} of {module} does not exist in the base model "
                                f"{base.id}, which has {config.n_layer} layers")
            name, part = _PEFT_TARGETS[module]
            target = f"transformer.h.{layer}.{name}"
        weight = sd[target]
        region = weight[rows[part]] if part else weight
        a, b = ab["A"].float(), ab["B"].float()
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r \
                or (b.shape[0], a.shape[1]) != tuple(region.shape):
            raise UserError(
                f"the adapter does not fit base model {base.id}: {module} of layer {layer} would change a "
                f"{tuple(b.shape[:1]) + tuple(a.shape[1:])} weight, the base has {tuple(region.shape)} there"
            )
        merged = weight.clone()  # never in place: tied embeddings share one tensor
        merged_region = merged[rows[part]] if part else merged
        merged_region += (scale * (b @ a)).to(weight.dtype)
        sd[target] = merged
        ctx.progress(i + 1, len(pairs), unit="weight", desc="merging the adapter")

    meta = {**read_meta(base.path), "base_model": base.id, "imported_from": str(root),
            "adapter": {"format": "peft", "r": r, "alpha": alpha, "targets": sorted({m for _, m in pairs})}}
    staged = _write_model(ctx, sd, config, base.path, meta, str(root))
    return _register_dir(
        ctx, staged, "model", name=options.name or f"{base.name}+{root.name}", parents=[base.id],
        metadata={**_origin(source, files, "merged"), "base_model": base.id, "family": meta.get("family"),
                  "adapter": meta["adapter"]},
    )


def import_litgpt_lora(source: Source, options: Options, ctx: Context) -> Artifact:
    """`litgpt finetune lora`'s lit_model.pth.lora merged into its base with LitGPT's own merge."""
    from workbench.ml.checkpoint import read_meta
    from workbench.ml.lora import LoRASettings, load_adapter, load_lora_model, merged_state_dict

    root = source.path
    _, raw = _lit_config(root)
    targets = tuple(t for t in ("query", "key", "value", "projection", "mlp", "head") if raw.get(f"lora_{t}"))
    if not targets or not raw.get("lora_r"):
        raise UserError(f"{root / 'model_config.yaml'} names no LoRA rank and targets (lora_r, lora_query, …)")
    settings = LoRASettings(r=int(raw["lora_r"]), alpha=int(raw.get("lora_alpha", 1)), dropout=0.0, targets=targets)
    files = fingerprint(root, ["model_config.yaml", "lit_model.pth.lora"], ctx)
    adapter = load_pickled_tensors(root / "lit_model.pth.lora")
    base = _base(options, ctx)
    model = load_lora_model(base.path, settings)
    try:
        load_adapter(model, {k: v.float() for k, v in adapter.items()})
    except RuntimeError as exc:  # size mismatches
        raise UserError(f"the adapter does not fit base model {base.id}: {str(exc).splitlines()[-1].strip()}") from None
    sd = merged_state_dict(model)
    from workbench.ml.checkpoint import load_config

    meta = {**read_meta(base.path), "base_model": base.id, "imported_from": str(root),
            "adapter": {"format": "litgpt", **settings.to_json()}}
    staged = _write_model(ctx, sd, load_config(base.path), base.path, meta, str(root))
    return _register_dir(
        ctx, staged, "model", name=options.name or f"{base.name}+{root.name}", parents=[base.id],
        metadata={**_origin(source, files, "merged"), "base_model": base.id, "family": meta.get("family"),
                  "adapter": meta["adapter"]},
    )
