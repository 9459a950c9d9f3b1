"""Llama 2 and 3.x (llama3 rope scaling, tied embeddings), SmolLM/SmolLM2, TinyLlama.

llama.cpp `llama`: NORM rope (adjacent pairs), so Q/K rows are permuted per head; Llama 3
scaling is written as the `rope_freqs` tensor.
"""

from __future__ import annotations

from typing import Any

from workbench.families import Family, llama3_rope_only
from workbench.families.common import llama_like
from workbench.families.hfconfig import HFConfig


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    fields = llama_like(cfg, norm_eps=1e-6, block_size=2048)
    cfg.expect("attention_bias", False, False)
    cfg.expect("mlp_bias", False, False)
    cfg.get("pretraining_tp")  # a tensor-parallel split of the same matmuls: no change in the math
    return fields


FAMILY = Family(
    name="llama",
    label="Llama (Llama 2/3.x, SmolLM2, TinyLlama)",
    architectures=("LlamaForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_hf_llama",
    gguf_arch="llama",
    rope_neox=False,
    rope_ok=llama3_rope_only,
)
