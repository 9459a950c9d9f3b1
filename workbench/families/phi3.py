"""Phi-3, Phi-3.5 and Phi-4-mini: Llama with fused qkv and gate/up projections, partial rotary
(Phi-4-mini rotates 3/4 of each head) and, on some checkpoints, a sliding window on every layer.

LitGPT's `copy_weights_phi` splits the fused tensors when the config's name starts with "Phi-3".
LongRoPE (`rope_type` longrope: Phi-3-*-128k, Phi-3.5, Phi-4-mini) has no LitGPT equivalent in
0.5.13 and is refused by name. llama.cpp `phi3`: NEOX rope over `rope.dimension_count`
dimensions, gate and up fused in `ffn_up`, and no sliding window (llama.cpp turns it off), so
the GGUF's context is capped at the window, over which the two are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.families import Family
from workbench.families.common import rope_fields
from workbench.families.hfconfig import HFConfig


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    n_embd, n_head, n_layer, vocab, inter = cfg.require(
        "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")
    cfg.expect("hidden_act", "silu", "silu")
    rope = cfg.rope()
    # transformers' Phi3 keeps it beside the rope parameters; its own rope reads only the type.
    cfg.get("original_max_position_embeddings")
    head_size = cfg.get("head_dim") or n_embd // n_head
    rotary = int(head_size * rope.partial_rotary_factor)
    if rotary % 2 or rotary <= 0:
        raise cfg.refuse(f"partial_rotary_factor={rope.partial_rotary_factor} ({rotary} of {head_size} dimensions)")
    fields: dict[str, Any] = dict(
        block_size=cfg.get("max_position_embeddings") or 4096,
        n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_query_groups=cfg.get("num_key_value_heads") or n_head,
        head_size=head_size,
        vocab_size=vocab, padded_vocab_size=vocab,
        intermediate_size=inter,
        rotary_percentage=rotary / head_size,
        parallel_residual=False, bias=False,
        norm_class_name="RMSNorm", norm_eps=cfg.get("rms_norm_eps") or 1e-5,
        mlp_class_name="LLaMAMLP",
        **rope_fields(rope, cfg),
    )
    window = cfg.get("sliding_window")  # null: none (transformers' default for Phi3)
    if window:
        fields["sliding_window_size"] = int(window)
    return fields


def context_limit(config: Mapping[str, Any]) -> int | None:
    return config.get("sliding_window_size")


def export_check(config: Mapping[str, Any]) -> list[str]:
    head = int(config.get("head_size") or int(config["n_embd"]) // int(config["n_head"]))
    # llama.cpp's phi3 sizes Q and the output projection as n_embd.
    return [] if head * int(config["n_head"]) == int(config["n_embd"]) else ["head_size"]


FAMILY = Family(
    name="phi3",
    label="Phi-3 / Phi-3.5 / Phi-4-mini (without LongRoPE)",
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
)
