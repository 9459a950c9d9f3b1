"""Gemma 2: √d-scaled embeddings, RMSNorm with a unit offset, norms after attention and MLP too,
soft-capped attention scores and logits, sliding-window attention on alternate layers, GELU-tanh.

LitGPT runs it with its own Gemma 2 fields (`copy_weights_gemma_2`); its RMSNorm adds the one
when "Gemma" is in the config's name. llama.cpp `gemma2`: NEOX rope, the one added to the stored
norm weights, the embedding always reused as output layer, and a query scale of 1/√head_dim
(1/√(n_embd/n_head) for its 46-layer 27B), so `query_pre_attn_scalar` must be that number.
Its CPU GELU goes through an FP16 table, so F32 logits agree to about 1e-3, not 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from workbench.families import Family
from workbench.families.common import rope_fields
from workbench.families.hfconfig import HFConfig

GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")
# llama.cpp's CPU GELU looks its input up in an FP16 table (input and output rounded to FP16):
# fp32 rounding noise before the lookup already moves tiny-model logits by ~4e-4 of the largest.
GELU_TABLE_TOLERANCE = 2e-3


def _layer_windows(cfg: HFConfig, n_layer: int, every: int) -> list[int]:
    """1 for each sliding-window layer, from `layer_types` or transformers' default pattern."""
    types = cfg.get("layer_types")
    if types is None:
        return [0 if (i + 1) % every == 0 else 1 for i in range(n_layer)]
    if len(types) != n_layer or set(types) - {"sliding_attention", "full_attention"}:
        raise cfg.refuse(f"layer_types {types}")
    return [int(t == "sliding_attention") for t in types]


def gemma_common(cfg: HFConfig, *, head_dim: int, block_size: int, window_every: int) -> dict[str, Any]:
    """Fields Gemma 2 and Gemma 3 share, with the family's transformers defaults."""
    n_embd, n_head, n_layer, vocab, inter = cfg.require(
        "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")
    act = cfg.get("hidden_activation", "gelu_pytorch_tanh")
    cfg.get("hidden_act")  # read by transformers' Gemma 1 only; Gemma 2 and 3 use hidden_activation
    if act not in GELU_TANH:
        raise cfg.refuse(f"hidden_activation {act!r}")
    cfg.expect("attention_bias", False, False)
    if cfg.get("use_bidirectional_attention"):
        raise cfg.refuse("use_bidirectional_attention")
    head_size = cfg.get("head_dim") or head_dim
    windows = _layer_windows(cfg, n_layer, window_every)
    window = cfg.get("sliding_window", 4096)
    if any(windows) and not window:
        raise cfg.refuse("sliding-window layers without a sliding_window size")
    fields: dict[str, Any] = dict(
        block_size=cfg.get("max_position_embeddings") or block_size,
        n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_query_groups=cfg.get("num_key_value_heads") or n_head,
        head_size=head_size,
        vocab_size=vocab, padded_vocab_size=vocab,
        intermediate_size=inter,
        rotary_percentage=1.0, parallel_residual=False, bias=False,
        norm_class_name="RMSNorm", norm_eps=cfg.get("rms_norm_eps") or 1e-6,
        mlp_class_name="GemmaMLP", gelu_approximate="tanh",
        scale_embeddings=True, post_attention_norm=True, post_mlp_norm=True,
        attention_scores_scalar=cfg.get("query_pre_attn_scalar", 256),
    )
    if any(windows):
        fields.update(sliding_window_size=int(window), sliding_window_indices=windows)
    return fields


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    fields = gemma_common(cfg, head_dim=256, block_size=8192, window_every=2)
    rope = cfg.rope()
    if rope.partial_rotary_factor != 1.0:
        raise cfg.refuse(f"partial_rotary_factor={rope.partial_rotary_factor}")
    fields.update(rope_fields(rope, cfg))
    # A null cap means none in transformers; LitGPT reads None the same way.
    fields["attention_logit_softcapping"] = cfg.get("attn_logit_softcapping", 50.0)
    fields["final_logit_softcapping"] = cfg.get("final_logit_softcapping", 30.0)
    return fields


def gemma_export_check(config: Mapping[str, Any], arch: str) -> list[str]:
    bad = []
    if config.get("gelu_approximate") != "tanh":
        bad.append("gelu_approximate")
    n_layer = int(config["n_layer"])
    head = int(config.get("head_size") or int(config["n_embd"]) // int(config["n_head"]))
    scalar = config.get("attention_scores_scalar") or head
    big = {"gemma2": 46, "gemma3": 62}[arch]
    expected = int(config["n_embd"]) // int(config["n_head"]) if n_layer == big else head
    if not math.isclose(float(scalar), float(expected)):
        bad.append(f"attention_scores_scalar {scalar} (llama.cpp uses {expected})")
    return bad


def export_check(config: Mapping[str, Any]) -> list[str]:
    bad = gemma_export_check(config, "gemma2")
    # llama.cpp's gemma2 always caps both (at 50 and 30 unless the file says otherwise).
    for key in ("attention_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is None:
            bad.append(f"{key} None")
    return bad


def sliding_metadata(writer: Any, config: Mapping[str, Any]) -> None:
    """The window and, per layer, whether it slides (so no default pattern is assumed)."""
    size = config.get("sliding_window_size")
    indices = config.get("sliding_window_indices") or [1] * int(config["n_layer"])
    if size:
        writer.add_sliding_window(int(size))
    writer.add_sliding_window_pattern([bool(size) and bool(x) for x in indices[: int(config["n_layer"])]])


def gguf_metadata(writer: Any, config: Mapping[str, Any]) -> None:
    writer.add_attn_logit_softcapping(float(config["attention_logit_softcapping"]))
    writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    sliding_metadata(writer, config)


def _number_or_none(v: Any) -> bool:
    return v is None or isinstance(v, (int, float))


GEMMA_TENSORS: dict[str, str] = {
    "transformer.h.{i}.norm_1.weight": "blk.{i}.attn_norm.weight",
    "transformer.h.{i}.attn.proj.weight": "blk.{i}.attn_output.weight",
    "transformer.h.{i}.post_attention_norm.weight": "blk.{i}.post_attention_norm.weight",
    "transformer.h.{i}.norm_2.weight": "blk.{i}.ffn_norm.weight",
    "transformer.h.{i}.mlp.fc_1.weight": "blk.{i}.ffn_gate.weight",
    "transformer.h.{i}.mlp.fc_2.weight": "blk.{i}.ffn_up.weight",
    "transformer.h.{i}.mlp.proj.weight": "blk.{i}.ffn_down.weight",
    "transformer.h.{i}.post_mlp_norm.weight": "blk.{i}.post_ffw_norm.weight",
}

GEMMA_STRUCTURE: dict[str, Any] = {
    "mlp_class_name": "GemmaMLP", "gelu_approximate": "tanh", "scale_embeddings": True,
    "post_attention_norm": True, "post_mlp_norm": True,
    "sliding_window_size": lambda v: v is None or (isinstance(v, int) and v > 0),
    "sliding_window_indices": lambda v: v is None or isinstance(v, list),
    "attention_scores_scalar": _number_or_none,
}

FAMILY = Family(
    name="gemma2",
    label="Gemma 2",
    architectures=("Gemma2ForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_gemma_2",
    structure={**GEMMA_STRUCTURE, "attention_logit_softcapping": _number_or_none,
               "final_logit_softcapping": _number_or_none},
    gguf_arch="gemma2",
    rope_neox=True,
    layer_tensors=GEMMA_TENSORS,
    name_prefix="Gemma-",
    export_check=export_check,
    gguf_metadata=gguf_metadata,
    untied_output=False,
    f32_tolerance=GELU_TABLE_TOLERANCE,
    tie_default=True,
)
