"""Mistral: Llama with sliding-window attention on every layer (v0.1; later versions set none).

llama.cpp runs Mistral as `llama`, whose attention has no window: over a context no longer than
the window the two are the same, so the GGUF's context length is capped at the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.families import Family, llama3_rope_only
from workbench.families.common import llama_like
from workbench.families.hfconfig import HFConfig


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    fields = llama_like(cfg, norm_eps=1e-6, block_size=4096 * 32)
    window = cfg.get("sliding_window", 4096)  # transformers' default; null means none
    if window:
        fields["sliding_window_size"] = int(window)
    return fields


def context_limit(config: Mapping[str, Any]) -> int | None:
    return config.get("sliding_window_size")


FAMILY = Family(
    name="mistral",
    label="Mistral",
    architectures=("MistralForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_hf_llama",
    # Every layer slides (LitGPT's default indices when a size is set).
    structure={"sliding_window_size": lambda v: isinstance(v, int) and v > 0,
               "sliding_window_indices": lambda v: v is None or all(v)},
    gguf_arch="llama",
    rope_neox=False,
    rope_ok=llama3_rope_only,
    context_limit=context_limit,
)
