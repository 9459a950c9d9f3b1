"""Qwen2 and Qwen2.5: Llama with biases on Q, K and V.

llama.cpp `qwen2`: NEOX rope (halves, as LitGPT), so Q/K rows are written as they are.
"""

from __future__ import annotations

from typing import Any

from workbench.families import Family
from workbench.families.common import llama_cpp_yarn, llama_like, no_sliding_window
from workbench.families.hfconfig import HFConfig


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    fields = llama_like(cfg, norm_eps=1e-6, block_size=32768, yarn=True)
    no_sliding_window(cfg)
    cfg.get("attention_bias")  # transformers' Qwen2 has Q/K/V biases whatever this says
    return {**fields, "attn_bias": True}


FAMILY = Family(
    name="qwen2",
    label="Qwen2/Qwen2.5",
    architectures=("Qwen2ForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_qwen_2_5",
    structure={"attn_bias": True},
    gguf_arch="qwen2",
    rope_neox=True,
    rope_ok=lambda adj: not adj or llama_cpp_yarn(adj),
    qkv_bias=True,
)
