"""Which LitGPT models llama.cpp can run, and how their tensors are named there.

Light module (yaml only): the stage's `validate()` uses it before anything heavy is imported,
so an unsupported model is refused without writing to the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import UserError

SUPPORTED = "Llama (Llama 2/3, TinyLlama, SmolLM, Mistral without sliding window) and Qwen2/Qwen2.5"

# LitGPT `Config` defaults for the fields checked below (GPT-NeoX-like), so a sparse
# model_config.yaml is judged the way LitGPT itself would read it.
_DEFAULTS: dict[str, Any] = {
    "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "parallel_residual": True,
    "rotary_percentage": 0.25, "bias": True, "attn_bias": False, "shared_attention_norm": False,
    "norm_qk": False, "post_attention_norm": False, "post_mlp_norm": False, "scale_embeddings": False,
    "lm_head_bias": False, "n_expert": 0, "sliding_window_size": None, "latent_attention": None,
    "attention_logit_softcapping": None, "final_logit_softcapping": None,
    "attention_scores_scalar": None, "rope_local_base_freq": None, "rope_interleave": False,
    "norm_1": True, "norm_2": True, "rope_adjustments": None, "rope_condense_ratio": 1,
    "rope_base": 10000, "norm_eps": 1e-5, "n_query_groups": None, "head_size": None,
    "padded_vocab_size": None, "padding_multiple": 512, "intermediate_size": None,
}


@dataclass(frozen=True)
class Family:
    """How one LitGPT family maps onto a llama.cpp architecture."""

    name: str
    arch: str
    #: llama.cpp's `llama` architecture rotates adjacent pairs, LitGPT rotates halves: Q and K
    #: rows are permuted per head. NEOX-rope architectures (qwen2) take them as they are.
    permute_qk: bool
    qkv_bias: bool


LLAMA = Family("llama", "llama", permute_qk=True, qkv_bias=False)
QWEN2 = Family("qwen2", "qwen2", permute_qk=False, qkv_bias=True)


@dataclass(frozen=True)
class Shape:
    """The numbers GGUF metadata and the tensor layout need, read from model_config.yaml."""

    n_layer: int
    n_embd: int
    n_head: int
    n_query_groups: int
    head_size: int
    intermediate_size: int
    block_size: int
    padded_vocab_size: int
    norm_eps: float
    rope_base: float
    rope_condense_ratio: int
    rope_adjustments: dict[str, Any] | None


def read_config(model_dir: Path) -> dict[str, Any]:
    import yaml

    path = model_dir / "model_config.yaml"
    if not path.exists():
        raise UserError(f"{model_dir} is not a LitGPT checkpoint: model_config.yaml is missing")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a LitGPT config mapping")
    return {**_DEFAULTS, **data}


def family_for(config: dict[str, Any], where: Path | str = "model_config.yaml") -> Family:
    """The family of a LitGPT config, or a UserError that says what is unsupported and what is."""
    name = config.get("name") or "this"
    if config["mlp_class_name"] != "LLaMAMLP" or config["norm_class_name"] != "RMSNorm":
        kind = "GPT-NeoX/Pythia-style" if config["mlp_class_name"] == "GptNeoxMLP" else config["mlp_class_name"]
        raise UserError(
            f"{where}: '{name}' is a {kind} model ({config['mlp_class_name']}, {config['norm_class_name']}); "
            f"GGUF export supports {SUPPORTED}"
        )
    unsupported = {
        "parallel_residual": config["parallel_residual"],
        "shared_attention_norm": config["shared_attention_norm"],
        "bias": config["bias"],
        "lm_head_bias": config["lm_head_bias"],
        "norm_qk": config["norm_qk"],
        "post_attention_norm": config["post_attention_norm"],
        "post_mlp_norm": config["post_mlp_norm"],
        "scale_embeddings": config["scale_embeddings"],
        "n_expert": config["n_expert"],
        "sliding_window_size": config["sliding_window_size"],
        "latent_attention": config["latent_attention"],
        "attention_logit_softcapping": config["attention_logit_softcapping"],
        "final_logit_softcapping": config["final_logit_softcapping"],
        "attention_scores_scalar": config["attention_scores_scalar"],
        "rope_local_base_freq": config["rope_local_base_freq"],
        "rope_interleave": config["rope_interleave"],
        "norm_1": not config["norm_1"],
        "norm_2": not config["norm_2"],
        "rotary_percentage": config["rotary_percentage"] != 1.0,
    }
    bad = [key for key, value in unsupported.items() if value]
    family = QWEN2 if config["attn_bias"] else LLAMA
    adjustments = config["rope_adjustments"]
    llama3_style = bool(adjustments) and "original_max_seq_len" in adjustments and "beta_fast" not in adjustments
    if adjustments and not (llama3_style and family is LLAMA):
        bad.append("rope_adjustments (only Llama 3 style scaling on Llama models is supported)")
    if bad:
        raise UserError(
            f"{where}: '{name}' uses {', '.join(bad)}, which llama.cpp's {family.arch} architecture does "
            f"not run the same way; GGUF export supports {SUPPORTED}"
        )
    return family


def shape_of(config: dict[str, Any]) -> Shape:
    n_head = int(config["n_head"])
    n_embd = int(config["n_embd"])
    vocab = int(config["vocab_size"])
    padded = config["padded_vocab_size"]
    if padded is None:
        multiple = int(config["padding_multiple"])
        padded = -(-vocab // multiple) * multiple
    return Shape(
        n_layer=int(config["n_layer"]), n_embd=n_embd, n_head=n_head,
        n_query_groups=int(config["n_query_groups"] or n_head),
        head_size=int(config["head_size"] or n_embd // n_head),
        intermediate_size=int(config["intermediate_size"] or 4 * n_embd),
        block_size=int(config["block_size"]), padded_vocab_size=int(padded),
        norm_eps=float(config["norm_eps"]), rope_base=float(config["rope_base"]),
        rope_condense_ratio=int(config["rope_condense_ratio"]),
        rope_adjustments=config["rope_adjustments"] or None,
    )


# LitGPT parameter name (with {i} for the block) -> GGUF tensor name. The fused qkv weight is
# split into attn_q/attn_k/attn_v by the writer.
TENSOR_NAMES: dict[str, str] = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.h.{i}.norm_1.weight": "blk.{i}.attn_norm.weight",
    "transformer.h.{i}.attn.proj.weight": "blk.{i}.attn_output.weight",
    "transformer.h.{i}.norm_2.weight": "blk.{i}.ffn_norm.weight",
    "transformer.h.{i}.mlp.fc_1.weight": "blk.{i}.ffn_gate.weight",
    "transformer.h.{i}.mlp.fc_2.weight": "blk.{i}.ffn_up.weight",
    "transformer.h.{i}.mlp.proj.weight": "blk.{i}.ffn_down.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
