"""OLMo 2: no pre-norms; RMSNorm after attention and after the MLP, and over the whole Q and K
projections (all heads at once) before RoPE.

llama.cpp `olmo2`: NEOX rope, Q/K rows unpermuted; norms `attn_q_norm`, `attn_k_norm`,
`post_attention_norm`, `post_ffw_norm`.
"""

from __future__ import annotations

from typing import Any

from workbench.families import Family
from workbench.families.common import llama_like
from workbench.families.hfconfig import HFConfig


def litgpt_fields(cfg: HFConfig) -> dict[str, Any]:
    fields = llama_like(cfg, norm_eps=1e-5, block_size=2048)
    cfg.expect("attention_bias", False, False)
    # OLMo 3 reuses the config with sliding windows on most layers; OLMo 2 has none.
    if cfg.get("sliding_window") or any(t != "full_attention" for t in cfg.get("layer_types") or []):
        raise cfg.refuse("sliding-window attention (OLMo 3)")
    return {**fields, "norm_qk": True, "norm_qk_type": "olmo2", "post_attention_norm": True,
            "post_mlp_norm": True, "norm_1": False, "norm_2": False}


FAMILY = Family(
    name="olmo2",
    label="OLMo 2",
    architectures=("Olmo2ForCausalLM",),
    litgpt_fields=litgpt_fields,
    copy_weights="copy_weights_olmo2",
    structure={"norm_qk": True, "norm_qk_type": "olmo2", "post_attention_norm": True, "post_mlp_norm": True,
               "norm_1": False, "norm_2": False},
    gguf_arch="olmo2",
    rope_neox=True,
    layer_tensors={
        "transformer.h.{i}.attn.norm_q.weight": "blk.{i}.attn_q_norm.weight",
        "transformer.h.{i}.attn.norm_k.weight": "blk.{i}.attn_k_norm.weight",
        "transformer.h.{i}.attn.proj.weight": "blk.{i}.attn_output.weight",
        "transformer.h.{i}.post_attention_norm.weight": "blk.{i}.post_attention_norm.weight",
        "transformer.h.{i}.mlp.fc_1.weight": "blk.{i}.ffn_gate.weight",
        "transformer.h.{i}.mlp.fc_2.weight": "blk.{i}.ffn_up.weight",
        "transformer.h.{i}.mlp.proj.weight": "blk.{i}.ffn_down.weight",
        "transformer.h.{i}.post_mlp_norm.weight": "blk.{i}.post_ffw_norm.weight",
    },
)
