"""Each format on disk → an artifact in the workspace. Heavy module: imported inside `run()`.

Hugging Face directories go through exactly the functions `workbench download` converts a Hub
repository with (`workbench_download.convert`). Weights are read from safetensors, or from
pickles only with `torch.load(weights_only=True)`; nothing the user hands us is unpickled or run.
"""

from __future__ import annotations

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
    """The same conversion as a download (`workbench_download.convert`), from files on disk."""
    from workbench_download import convert as hf

    root = source.path
    local = {p.name: p for p in root.iterdir() if p.is_file()}
    label = str(root)
    hf.config_kwargs(_read_json(local["config.json"]), label)  # refused before torch loads
    _, shards = hf.weight_files(local)
    if not shards:
        raise UserError(f"{root} has config.json but no weights (*.safetensors or pytorch_model*.bin)")
    small = [n for n in hf.CONFIG_FILES if n in local]
    files = fingerprint(root, small + shards, ctx)
    return hf.convert_local(local, ctx, source=label, tokenizer_dir=root, name=options.name or root.name,
                            metadata=_origin(source, files, "converted"), meta={"imported_from": label})


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
        from workbench.ml.checkpoint import load_safetensors

        sd = load_safetensors(root / weights)
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
#
# Both adapter formats become the adapter layout `finetune lora` writes (LitGPT's LoRA tensor
# names, `adapter.safetensors` + `adapter_config.json`), registered as an `adapter` artifact, and
# are then merged by LitGPT's own merge into a `model`: base → adapter → merged model, the same
# lineage a LoRA finetune leaves.

_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?:layers\.(\d+)\.(?:self_attn|mlp)\.)?"
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|lm_head)\.lora_([AB])(?:\.default)?\.weight$"
)
#: PEFT module → (LitGPT LoRA target, the LitGPT module under transformer.h.N)
_PEFT_MODULES = {
    "q_proj": ("query", "attn.qkv"), "k_proj": ("key", "attn.qkv"), "v_proj": ("value", "attn.qkv"),
    "o_proj": ("projection", "attn.proj"), "gate_proj": ("mlp", "mlp.fc_1"), "up_proj": ("mlp", "mlp.fc_2"),
    "down_proj": ("mlp", "mlp.proj"), "lm_head": ("head", "lm_head"),
}
_TARGET_ORDER = ("query", "key", "value", "projection", "mlp", "head")


def _base(options: Options, ctx: Context) -> Artifact:
    from workbench.context import require_kind

    assert options.base is not None
    base = ctx.artifact(options.base)
    require_kind(base, "model")
    return base


def import_peft(source: Source, options: Options, ctx: Context) -> Artifact:
    from workbench_download.convert import load_weights

    from workbench.ml.checkpoint import load_state_dict
    from workbench.ml.lora import LoRASettings

    root = source.path
    cfg = _read_json(root / "adapter_config.json")
    where = root / "adapter_config.json"
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise UserError(f"{where}: peft_type {cfg.get('peft_type')} is not LORA, the only adapter type workbench merges")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise UserError(f"{where}: {flag} adapters are not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError(f"{where}: per-layer rank_pattern/alpha_pattern is not supported")
    try:
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where} lacks a numeric r and lora_alpha") from None
    scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)

    weights = "adapter_model.safetensors" if (root / "adapter_model.safetensors").exists() else "adapter_model.bin"
    files = fingerprint(root, ["adapter_config.json", weights], ctx)
    pairs: dict[tuple[int | None, str], dict[str, torch.Tensor]] = {}
    for key, tensor in load_weights(root / weights).items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise UserError(f"{root / weights}: tensor {key} is not a LoRA weight of a Llama-style attention, "
                            "MLP or lm_head layer, which is what workbench merges")
        pairs.setdefault((int(m[1]) if m[1] is not None else None, m[2]), {})[m[3]] = tensor
    for (layer, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise UserError(f"{root / weights}: {module} of layer {layer} has lora_{next(iter(ab))} without its partner")
    base = _base(options, ctx)
    shapes = {k: tuple(v.shape) for k, v in load_state_dict(base.path).items()}
    adapter = _peft_to_litgpt(pairs, r, scale, shapes, base.id)
    # The PEFT scale is folded into B, so LitGPT's own scale (alpha / r) is 1.
    targets = tuple(t for t in _TARGET_ORDER if any(_PEFT_MODULES[m][0] == t for _, m in pairs))
    settings = LoRASettings(r=r, alpha=r, dropout=0.0, targets=targets)
    return _adapter_and_merge(source, options, ctx, base, settings, adapter, files,
                              {"format": "peft", "r": r, "lora_alpha": alpha, "use_rslora": bool(cfg.get("use_rslora")),
                               "modules": sorted({m for _, m in pairs})})


def _peft_to_litgpt(pairs: dict[tuple[int | None, str], dict[str, torch.Tensor]], r: int, scale: float,
                    shapes: dict[str, tuple[int, ...]], base_id: str) -> dict[str, torch.Tensor]:
    """PEFT's per-module A and B in LitGPT's layout; modules PEFT left out get a zero update.

    LitGPT fuses query, key and value: its A stacks the enabled parts' A matrices, its B their
    B matrices, in q, k, v order.
    """
    import torch

    n_layer = len({k.split(".")[2] for k in shapes if k.startswith("transformer.h.")})
    bad = sorted({layer for layer, _ in pairs if layer is not None and layer >= n_layer})
    if bad:
        raise UserError(f"the adapter does not fit base model {base_id}: it has layer {bad[0]}, the base has "
                        f"{n_layer} layers")
    enabled = {_PEFT_MODULES[m][0] for _, m in pairs}

    def part(layer: int | None, module: str, out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        ab = pairs.get((layer, module))
        if ab is None:
            return torch.zeros(r, in_features), torch.zeros(out_features, r)
        a, b = ab["A"].float(), ab["B"].float()
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r \
                or (b.shape[0], a.shape[1]) != (out_features, in_features):
            got = (b.shape[0], a.shape[1]) if a.dim() == 2 and b.dim() == 2 else "?"
            where = "lm_head" if layer is None else f"{module} of layer {layer}"
            raise UserError(f"the adapter does not fit base model {base_id}: {where} changes a {got} weight, "
                            f"the base has {(out_features, in_features)} there")
        return a, b * scale

    out: dict[str, torch.Tensor] = {}
    for layer in range(n_layer):
        prefix = f"transformer.h.{layer}."
        qkv_out, n_embd = shapes[prefix + "attn.qkv.weight"]
        q_rows = shapes[prefix + "attn.proj.weight"][1]  # the projection's input is n_head * head_size
        kv_rows = (qkv_out - q_rows) // 2
        fused = [part(layer, m, rows, n_embd) for m, t, rows in
                 (("q_proj", "query", q_rows), ("k_proj", "key", kv_rows), ("v_proj", "value", kv_rows))
                 if t in enabled]
        if fused:
            out[prefix + "attn.qkv.lora_A"] = torch.cat([a for a, _ in fused])
            out[prefix + "attn.qkv.lora_B"] = torch.cat([b for _, b in fused])
        for module in ("o_proj", "gate_proj", "up_proj", "down_proj"):
            target, path = _PEFT_MODULES[module]
            if target in enabled:
                out_f, in_f = shapes[f"{prefix}{path}.weight"]
                out[f"{prefix}{path}.lora_A"], out[f"{prefix}{path}.lora_B"] = part(layer, module, out_f, in_f)
    if "head" in enabled:
        out_f, in_f = shapes["lm_head.weight"]
        out["lm_head.lora_A"], out["lm_head.lora_B"] = part(None, "lm_head", out_f, in_f)
    return out


def import_litgpt_lora(source: Source, options: Options, ctx: Context) -> Artifact:
    """`litgpt finetune lora`'s lit_model.pth.lora, with the LoRA settings of its model_config.yaml."""
    from workbench.ml.lora import LoRASettings

    root = source.path
    _, raw = _lit_config(root)
    targets = tuple(t for t in _TARGET_ORDER if raw.get(f"lora_{t}"))
    if not targets or not raw.get("lora_r"):
        raise UserError(f"{root / 'model_config.yaml'} names no LoRA rank and targets (lora_r, lora_query, …)")
    settings = LoRASettings(r=int(raw["lora_r"]), alpha=int(raw.get("lora_alpha", 1)), dropout=0.0, targets=targets)
    files = fingerprint(root, ["model_config.yaml", "lit_model.pth.lora"], ctx)
    adapter = {k: v.float() for k, v in load_pickled_tensors(root / "lit_model.pth.lora").items()}
    base = _base(options, ctx)
    return _adapter_and_merge(source, options, ctx, base, settings, adapter, files,
                              {"format": "litgpt", **settings.to_json()})


def _adapter_and_merge(source: Source, options: Options, ctx: Context, base: Artifact, settings: Any,
                       adapter: dict[str, torch.Tensor], files: list[dict[str, Any]],
                       described: dict[str, Any]) -> Artifact:
    """Register the adapter as `finetune lora` stores one, then the base with it merged in."""
    from workbench.ml.checkpoint import load_config, load_state_dict, read_meta
    from workbench.ml.lora import load_adapter, load_lora_model, merged_state_dict, save_adapter

    model = load_lora_model(base.path, settings)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if "lora_" in k}
    wrong = sorted(k for k in adapter if k in expected and tuple(adapter[k].shape) != expected[k])
    missing = sorted(set(expected) - set(adapter))
    if wrong or missing:
        detail = (f"{wrong[0]} is {tuple(adapter[wrong[0]].shape)}, the base needs {expected[wrong[0]]}" if wrong
                  else f"{missing[0]} is missing")
        raise UserError(f"the adapter does not fit base model {base.id}: {detail}")
    load_adapter(model, adapter)  # names the first tensor the base has no place for
    ctx.check_cancelled()
    name = options.name or f"{base.name}+{source.path.name}"
    base_meta = read_meta(base.path)
    origin = _origin(source, files, "merged")

    staged = ctx.staging_dir("adapter")
    try:
        save_adapter(staged, model, settings, base.id, extra={"prompt_style": base_meta.get("prompt_style"),
                                                               "imported_from": str(source.path)})
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    adapter_art = _register_dir(ctx, staged, "adapter", name=f"{name}-adapter", parents=[base.id],
                                metadata={**origin, "base_model": base.id, "lora": settings.to_json(),
                                          "adapter": described})

    dtype = next(iter(load_state_dict(base.path).values())).dtype
    merged = {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged_state_dict(model).items()}
    del model
    meta = {**base_meta, "base_model": base.id, "adapter": adapter_art.id, "imported_from": str(source.path)}
    staged = _write_model(ctx, merged, load_config(base.path), base.path, meta, str(source.path))
    return _register_dir(
        ctx, staged, "model", name=name, parents=[base.id, adapter_art.id],
        metadata={**origin, "base_model": base.id, "adapter_artifact": adapter_art.id,
                  "family": base_meta.get("family") or base.metadata.get("family"), "adapter": described},
    )
