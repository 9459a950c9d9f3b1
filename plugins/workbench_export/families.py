"""Which LitGPT models llama.cpp can run: the export side of `workbench.families`.

Light module (yaml only): the stage's `validate()` uses it before anything heavy is imported,
so an unsupported model is refused without writing to the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.families import Family, for_litgpt, supported_text

__all__ = ["TENSOR_NAMES", "Family", "Shape", "family_for", "read_config", "shape_of", "supported"]

# LitGPT `Config` defaults for the fields checked below (GPT-NeoX-like), so a sparse
# model_config.yaml is judged the way LitGPT itself would read it.
_DEFAULTS: dict[str, Any] = {
    "norm_class_name": "LayerNorm", "mlp_class_name": "GptNeoxMLP", "parallel_residual": True,
    "rotary_percentage": 0.25, "bias": True, "attn_bias": False, "shared_attention_norm": False,
    "norm_qk": False, "norm_qk_type": "default", "post_attention_norm": False, "post_mlp_norm": False,
    "scale_embeddings": False, "lm_head_bias": False, "n_expert": 0, "sliding_window_size": None,
    "sliding_window_indices": None, "latent_attention": None,
    "attention_logit_softcapping": None, "final_logit_softcapping": None,
    "attention_scores_scalar": None, "rope_local_base_freq": None, "rope_interleave": False,
    "norm_1": True, "norm_2": True, "rope_adjustments": None, "rope_condense_ratio": 1,
    "rope_base": 10000, "norm_eps": 1e-5, "n_query_groups": None, "head_size": None,
    "padded_vocab_size": None, "padding_multiple": 512, "intermediate_size": None,
    "n_layer": 16, "n_head": 32, "n_embd": 4096, "block_size": 4096, "vocab_size": 50254,
}


def supported() -> str:
    return supported_text(exportable=True)


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
    #: dimensions of each head that RoPE rotates (the first ones).
    rope_dims: int
    #: the context llama.cpp may run with LitGPT's math (the block size, or less).
    context_length: int


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
    return for_litgpt(config, str(where))


def shape_of(config: dict[str, Any], family: Family | None = None) -> Shape:
    n_head = int(config["n_head"])
    n_embd = int(config["n_embd"])
    vocab = int(config["vocab_size"])
    padded = config["padded_vocab_size"]
    if padded is None:
        multiple = int(config["padding_multiple"])
        padded = -(-vocab // multiple) * multiple
    block = int(config["block_size"])
    limit = (family or family_for(config)).context_limit(config)
    return Shape(
        n_layer=int(config["n_layer"]), n_embd=n_embd, n_head=n_head,
        n_query_groups=int(config["n_query_groups"] or n_head),
        head_size=int(config["head_size"] or n_embd // n_head),
        intermediate_size=int(config["intermediate_size"] or 4 * n_embd),
        block_size=block, padded_vocab_size=int(padded),
        norm_eps=float(config["norm_eps"]), rope_base=float(config["rope_base"]),
        rope_condense_ratio=int(config["rope_condense_ratio"]),
        rope_adjustments=config["rope_adjustments"] or None,
        rope_dims=int(float(config["rotary_percentage"]) * int(config["head_size"] or n_embd // n_head)),
        context_length=min(block, limit) if limit else block,
    )


# LitGPT parameter name -> GGUF tensor name, outside the blocks (see Family.layer_tensors).
TENSOR_NAMES: dict[str, str] = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
