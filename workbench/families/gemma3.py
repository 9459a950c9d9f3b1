"""Gemma 3 text models: Gemma 2's block without attention soft-capping, with an RMSNorm over each
head of Q and of K, and local (sliding-window) and global layers with their own rope bases.

transformers 5 writes the two ropes as `rope_parameters` per layer type; transformers 4 wrote
`rope_theta` and `rope_scaling` for the global layers and `rope_local_base_freq` for the local
ones, which never scale. LitGPT: `rope_local_base_freq` with `rope_indices` (1 = local), linear
scaling of the global layers as `rope_adjustments={"factor": f}`. llama.cpp `gemma3`: the local
base is `rope.freq_base_swa` and linear scaling applies to global layers only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.families import Family
from workbench.families.common import _number
from workbench.families.gemma2 import (
    GELU_TABLE_TOLERANCE,
    GEMMA_STRUCTURE,
    GEMMA_TENSORS,
    _number_or_none,
    gemma_common,
    gemma_export_check,
    sliding_metadata,
)
from workbench.families.hfconfig import HFConfig, Rope


def _ropes(cfg: HFConfig) -> tuple[Rope, Rope]:
    """(global, local) rope from either config layout."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        unknown = sorted(set(params) - {"full_attention", "sliding_attention"})
        if unknown:
            raise cfg.refuse(f"rope_parameters for {', '.join(unknown)}")
        cfg.get("rope_theta")
        cfg.get("rope_scaling")
        cfg.get("partial_rotary_factor")
        cfg.get("rope_local_base_freq")
        full = HFConfig({"rope_parameters": params.get("full_attention") or {}}, cfg.source).rope(1_000_000.0)
        local = HFConfig({"rope_parameters": params.get("sliding_attention") or {}}, cfg.source).rope(10_000.0)
        return full, local
    full = cfg.rope(default_theta=1_000_000.0)
    local_theta = cfg.get("rope_local_base_freq", 10_000.0)
    return full, Rope(theta=float(local_theta), kind="default", scaling={}, partial_rotary_factor=1.0)


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    sliding_pattern = cfg.get("sliding_window_pattern", 6)  # before layer_types, an int
    fields = gemma_common(cfg, head_dim=256, block_size=131072, window_every=int(sliding_pattern or 6))
    full, local = _ropes(cfg)
    for which, rope in (("full_attention", full), ("sliding_attention", local)):
        if rope.partial_rotary_factor != 1.0:
            raise cfg.refuse(f"partial_rotary_factor={rope.partial_rotary_factor} ({which})")
    if local.kind != "default" or local.scaling:
        raise cfg.refuse(f"rope scaling '{local.kind}' on sliding-window layers")
    fields.update(rope_base=_number(full.theta), rope_local_base_freq=_number(local.theta))
    if full.kind == "linear" and float(full.scaling.get("factor", 0)) >= 1 and set(full.scaling) == {"factor"}:
        # transformers divides the global layers' frequencies by the factor; LitGPT too.
        fields["rope_adjustments"] = {"factor": float(full.scaling["factor"])}
    elif full.kind != "default" or full.scaling:
        raise cfg.refuse(f"rope scaling '{full.kind}' {full.scaling}")
    # Local layers take the local rope; LitGPT names a layer's rope by index (1 = local).
    fields["rope_indices"] = list(fields.get("sliding_window_indices") or [0] * fields["n_layer"])
    fields["norm_qk"] = True
    fields["attention_logit_softcapping"] = cfg.get("attn_logit_softcapping", None)
    fields["final_logit_softcapping"] = cfg.get("final_logit_softcapping", None)
    return fields


def linear_only(adjustments: Mapping[str, Any] | None) -> bool:
    return not adjustments or set(adjustments) == {"factor"}


def export_check(config: Mapping[str, Any]) -> list[str]:
    bad = gemma_export_check(config, "gemma3")
    if config.get("attention_logit_softcapping") is not None:
        bad.append("attention_logit_softcapping")  # llama.cpp's gemma3 does not cap attention
    if config.get("rope_condense_ratio", 1) != 1:
        bad.append("rope_condense_ratio")  # would scale the local layers too
    n_layer = int(config["n_layer"])
    windows = [bool(x) for x in (config.get("sliding_window_indices") or [1] * n_layer)][:n_layer]
    if not config.get("sliding_window_size"):
        windows = [False] * n_layer
    ropes = [bool(x) for x in (config.get("rope_indices") or [0] * n_layer)][:n_layer]
    if windows != ropes:
        bad.append("rope_indices")  # llama.cpp gives the local rope to exactly the sliding layers
    return bad


def gguf_metadata(writer: Any, config: Mapping[str, Any]) -> None:
    import gguf

    if config.get("final_logit_softcapping") is not None:
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    writer.add_rope_freq_base_swa(float(config.get("rope_local_base_freq") or config["rope_base"]))
    factor = (config.get("rope_adjustments") or {}).get("factor")
    if factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    sliding_metadata(writer, config)


FAMILY = Family(
    name="gemma3",
    label="Gemma 3 (text)",
    architectures=("Gemma3ForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_gemma_3",
    structure={**GEMMA_STRUCTURE, "norm_qk": True, "final_logit_softcapping": _number_or_none,
               "attention_logit_softcapping": _number_or_none,
               "rope_local_base_freq": _number_or_none,
               "rope_indices": lambda v: v is None or isinstance(v, list)},
    gguf_arch="gemma3",
    rope_neox=True,
    rope_ok=linear_only,
    layer_tensors={
        **GEMMA_TENSORS,
        "transformer.h.{i}.attn.norm_q.weight": "blk.{i}.attn_q_norm.weight",
        "transformer.h.{i}.attn.norm_k.weight": "blk.{i}.attn_k_norm.weight",
    },
    name_prefix="Gemma-",
    export_check=export_check,
    gguf_metadata=gguf_metadata,
    f32_tolerance=GELU_TABLE_TOLERANCE,
    tie_default=True,
)
