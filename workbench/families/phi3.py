"""Phi-3, Phi-3.5 and Phi-4-mini: Llama with fused qkv and gate/up projections, partial rotary
(Phi-4-mini rotates 3/4 of each head), LongRoPE on the long-context checkpoints and, on some, a
sliding window on every layer.

LitGPT's `copy_weights_phi` splits the fused tensors when the config's name starts with "Phi-3".
LongRoPE (`rope_type` longrope, or its old name su: Phi-3-*-128k, Phi-3.5, Phi-4-mini) has no
LitGPT equivalent in 0.5.13: its factors are kept in `rope_adjustments` (`common.LONGROPE_KEYS`)
and `workbench.ml.rope` computes it as transformers does. llama.cpp `phi3`: NEOX rope over
`rope.dimension_count` dimensions, the factors as `rope_factors_long`/`rope_factors_short` with
`rope.scaling.original_context_length` and `rope.scaling.attn_factor`, gate and up fused in
`ffn_up`, and no sliding window (llama.cpp turns it off), so the GGUF's context is capped at the
window, over which the two are the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from workbench.families import Family
from workbench.families.common import is_longrope, rope_fields
from workbench.families.hfconfig import HFConfig, Rope


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    n_embd, n_head, n_layer, vocab, inter = cfg.require(
        "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")
    cfg.expect("hidden_act", "silu", "silu")
    rope = cfg.rope()
    head_size = cfg.get("head_dim") or n_embd // n_head
    rotary = int(head_size * rope.partial_rotary_factor)
    if rotary % 2 or rotary <= 0:
        raise cfg.refuse(f"partial_rotary_factor={rope.partial_rotary_factor} ({rotary} of {head_size} dimensions)")
    block_size = cfg.get("max_position_embeddings") or 4096
    # transformers' Phi3 reads it (default 4096) in place of the one in the rope parameters.
    original = cfg.get("original_max_position_embeddings", 4096)
    if rope.kind in ("longrope", "su"):
        plain = dataclasses.replace(rope, kind="default", scaling={})
        rope_part = {**rope_fields(plain, cfg), "rope_adjustments": longrope(rope, cfg, rotary, block_size, original)}
    else:
        rope_part = rope_fields(rope, cfg)
    fields: dict[str, Any] = dict(
        block_size=block_size,
        n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_query_groups=cfg.get("num_key_value_heads") or n_head,
        head_size=head_size,
        vocab_size=vocab, padded_vocab_size=vocab,
        intermediate_size=inter,
        rotary_percentage=rotary / head_size,
        parallel_residual=False, bias=False,
        norm_class_name="RMSNorm", norm_eps=cfg.get("rms_norm_eps") or 1e-5,
        mlp_class_name="LLaMAMLP",
        **rope_part,
    )
    window = cfg.get("sliding_window")  # null: none (transformers' default for Phi3)
    if window:
        fields["sliding_window_size"] = int(window)
    return fields


def longrope(rope: Rope, cfg: HFConfig, rotary: int, block_size: int, original: Any) -> dict[str, Any]:
    """LitGPT `rope_adjustments` for LongRoPE, read as transformers' `_compute_longrope_parameters` reads it."""
    s = rope.scaling
    if not isinstance(original, int) or original < 2:
        raise cfg.refuse(f"LongRoPE with original_max_position_embeddings {original!r}")
    factors = {}
    for name in ("long_factor", "short_factor"):
        values = s.get(name)
        if not (isinstance(values, list) and len(values) == rotary // 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)):
            raise cfg.refuse(f"LongRoPE {name} is not {rotary // 2} positive numbers (one per rotated pair)")
        factors[name] = [float(v) for v in values]
    factor, attention = s.get("factor"), s.get("attention_factor")
    for name, value in (("factor", factor), ("attention_factor", attention)):
        if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
            raise cfg.refuse(f"LongRoPE {name} {value!r}")
    if factor is None:  # Phi-3 states the stretch as the ratio of the two lengths
        factor = block_size / original
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {**factors, "original_max_seq_len": original, "attention_factor": float(attention)}


def context_limit(config: Mapping[str, Any]) -> int | None:
    return config.get("sliding_window_size")


def export_check(config: Mapping[str, Any]) -> list[str]:
    head = int(config.get("head_size") or int(config["n_embd"]) // int(config["n_head"]))
    # llama.cpp's phi3 sizes Q and the output projection as n_embd.
    bad = [] if head * int(config["n_head"]) == int(config["n_embd"]) else ["head_size"]
    adj = config.get("rope_adjustments")
    pairs = int(float(config.get("rotary_percentage", 1.0)) * head) // 2
    if is_longrope(adj) and not len(adj["long_factor"]) == len(adj["short_factor"]) == pairs:
        bad.append("rope_adjustments")  # llama.cpp wants one factor per rotated pair
    return bad


def gguf_metadata(writer: Any, config: Mapping[str, Any]) -> None:
    adj = config.get("rope_adjustments")
    if is_longrope(adj):  # the factors themselves are tensors (gguf_writer)
        writer.add_rope_scaling_orig_ctx_len(int(adj["original_max_seq_len"]))
        writer.add_rope_scaling_attn_factors(float(adj["attention_factor"]))


FAMILY = Family(
    name="phi3",
    label="Phi-3 / Phi-3.5 / Phi-4-mini",
    architectures=("Phi3ForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_phi",
    structure={"rotary_percentage": lambda v: 0 < float(v) <= 1,
               "sliding_window_size": lambda v: v is None or (isinstance(v, int) and v > 0),
               "sliding_window_indices": lambda v: v is None or all(v)},
    gguf_arch="phi3",
    rope_neox=True,
    layer_tensors={
        "transformer.h.{i}.norm_1.weight": "blk.{i}.attn_norm.weight",
        "transformer.h.{i}.attn.proj.weight": "blk.{i}.attn_output.weight",
        "transformer.h.{i}.norm_2.weight": "blk.{i}.ffn_norm.weight",
        "transformer.h.{i}.mlp.proj.weight": "blk.{i}.ffn_down.weight",
    },
    # llama.cpp's phi3 takes gate and up as one tensor, gate first (as in the Hugging Face file).
    fused_tensors={"blk.{i}.ffn_up.weight": ("transformer.h.{i}.mlp.fc_1.weight", "transformer.h.{i}.mlp.fc_2.weight")},
    context_limit=context_limit,
    name_prefix="Phi-3-",
    export_check=export_check,
    gguf_metadata=gguf_metadata,
    rope_ok=lambda adj: not adj or is_longrope(adj),
)
