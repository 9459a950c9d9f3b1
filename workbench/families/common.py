"""The config.json fields every Llama-like family shares, read the way transformers reads them."""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from workbench.families.hfconfig import HFConfig, Rope


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def rope_fields(rope: Rope, cfg: HFConfig, *, yarn: bool = False) -> dict[str, Any]:
    """LitGPT rope fields for the scaling types whose LitGPT math equals transformers'.

    `yarn`: the family converts YaRN (computed by `workbench.ml.rope`, not by LitGPT).
    """
    fields: dict[str, Any] = {"rope_base": _number(rope.theta)}
    s = rope.scaling
    if yarn and rope.kind == "yarn":
        fields["rope_adjustments"] = yarn_adjustments(s, cfg)
    elif rope.kind == "default":
        if s:
            raise cfg.refuse(f"rope type 'default' sets {', '.join(sorted(s))}")
    elif rope.kind == "llama3":
        fields["rope_adjustments"] = {
            "factor": float(s["factor"]), "low_freq_factor": float(s["low_freq_factor"]),
            "high_freq_factor": float(s["high_freq_factor"]),
            "original_max_seq_len": int(s["original_max_position_embeddings"]),
        }
    elif rope.kind == "linear" and float(s.get("factor", 0)).is_integer() and s["factor"] >= 1:
        # transformers divides the frequencies by the factor, LitGPT the positions: the same angles.
        fields["rope_condense_ratio"] = int(s["factor"])
    else:
        raise cfg.refuse(f"rope scaling '{rope.kind}' {s}")
    return fields


def llama_like(cfg: HFConfig, *, head_dim: int | None = None, norm_eps: float = 1e-6,
               block_size: int = 2048, yarn: bool = False) -> dict[str, Any]:
    """LitGPT fields of a pre-norm RMSNorm/SwiGLU decoder with full rotary and no biases.

    The keyword arguments are the family's transformers defaults for fields config.json leaves out.
    """
    n_embd, n_head, n_layer, vocab, inter = cfg.require(
        "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")
    cfg.expect("hidden_act", "silu", "silu")
    rope = cfg.rope()
    if rope.partial_rotary_factor != 1.0:
        raise cfg.refuse(f"partial_rotary_factor={rope.partial_rotary_factor}")
    return dict(
        block_size=cfg.get("max_position_embeddings") or block_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=cfg.get("num_key_value_heads") or n_head,
        head_size=cfg.get("head_dim") or head_dim or n_embd // n_head,
        vocab_size=vocab,
        padded_vocab_size=vocab,  # the embedding's rows, which is what HF's vocab_size counts
        intermediate_size=inter,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=cfg.get("rms_norm_eps") or norm_eps,
        mlp_class_name="LLaMAMLP",
        **rope_fields(rope, cfg, yarn=yarn),
    )


def no_sliding_window(cfg: HFConfig) -> None:
    """Qwen-style configs: a window applies only where `layer_types` (or use_sliding_window) says."""
    window = cfg.get("sliding_window")
    use = cfg.get("use_sliding_window", False)
    cfg.get("max_window_layers")
    types = cfg.get("layer_types") or []
    if (use and window) or any(t != "full_attention" for t in types):
        raise cfg.refuse("sliding-window attention on some layers (use_sliding_window/layer_types)")


# LitGPT `rope_adjustments` of a LongRoPE model (Phi-3-*-128k, Phi-3.5, Phi-4-mini). LitGPT has no
# LongRoPE: `workbench.ml.rope` computes it, and plain LitGPT would ignore these keys.
LONGROPE_KEYS = frozenset({"long_factor", "short_factor", "original_max_seq_len", "attention_factor"})


def is_longrope(adjustments: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(adjustments, dict) and set(adjustments) == LONGROPE_KEYS


# LitGPT `rope_adjustments` of YaRN as transformers computes it. LitGPT 0.5.13's own YaRN (keys
# beta_fast/beta_slow) blends the frequencies the other way round and has no attention factor,
# so these keys are named so that LitGPT does not take them for its own.
YARN_KEYS = frozenset({"yarn_factor", "yarn_original_max_seq_len", "yarn_beta_fast", "yarn_beta_slow",
                       "yarn_truncate", "attention_factor"})


def is_yarn(adjustments: Any) -> bool:
    return isinstance(adjustments, dict) and set(adjustments) == YARN_KEYS


def yarn_adjustments(s: dict[str, Any], cfg: HFConfig) -> dict[str, Any]:
    """YaRN's parameters with transformers' defaults (`_compute_yarn_parameters`)."""
    longest = cfg.get("max_position_embeddings")
    original = s.get("original_max_position_embeddings") or longest
    factor = s.get("factor")
    if factor is None and original and longest:
        factor = longest / original
    numbers = {"factor": factor, "original_max_position_embeddings": original}
    for key in ("attention_factor", "mscale", "mscale_all_dim", "beta_fast", "beta_slow"):
        numbers[key] = s.get(key)
    for key, value in numbers.items():
        if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
            raise cfg.refuse(f"YaRN {key} {value!r}")
    if not factor or not original:
        raise cfg.refuse("YaRN without factor or original_max_position_embeddings")

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    return {"yarn_factor": float(factor), "yarn_original_max_seq_len": int(original),
            "yarn_beta_fast": float(s.get("beta_fast") or 32), "yarn_beta_slow": float(s.get("beta_slow") or 1),
            "yarn_truncate": s.get("truncate", True) is not False, "attention_factor": float(attention)}


def llama_cpp_yarn(adjustments: Any) -> bool:
    """YaRN as llama.cpp computes it: its default betas (it reads no others) and truncated ranges."""
    return (is_yarn(adjustments) and adjustments["yarn_beta_fast"] == 32 and adjustments["yarn_beta_slow"] == 1
            and adjustments["yarn_truncate"])
