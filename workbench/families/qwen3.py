"""Qwen3 (dense): Llama with an RMSNorm over each head of Q and of K, before RoPE.

llama.cpp `qwen3`: NEOX rope, Q/K rows unpermuted; the norms are `attn_q_norm`/`attn_k_norm`.
"""

from __future__ import annotations

from typing import Any

from workbench.families import LLAMA_TENSORS, Family
from workbench.families.common import llama_cpp_yarn, llama_like, no_sliding_window
from workbench.families.hfconfig import HFConfig


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    # transformers' Qwen3Config defaults head_dim to 128, not hidden_size / heads.
    fields = llama_like(cfg, head_dim=128, norm_eps=1e-6, block_size=32768, yarn=True)
    cfg.expect("attention_bias", False, False)
    no_sliding_window(cfg)
    return {**fields, "norm_qk": True}


FAMILY = Family(
    name="qwen3",
    label="Qwen3 (dense)",
    architectures=("Qwen3ForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_qwen_3",
    structure={"norm_qk": True},
    gguf_arch="qwen3",
    rope_neox=True,
    rope_ok=lambda adj: not adj or llama_cpp_yarn(adj),
    layer_tensors={
        **LLAMA_TENSORS,
        "transformer.h.{i}.attn.norm_q.weight": "blk.{i}.attn_q_norm.weight",
        "transformer.h.{i}.attn.norm_k.weight": "blk.{i}.attn_k_norm.weight",
    },
)
