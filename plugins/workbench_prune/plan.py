"""How many units to remove: whole blocks, KV groups per layer, MLP channels per layer.

Light module (no torch): the stage's `validate()` runs it, so a target that the chosen methods
cannot reach is refused before a run exists. Which units go is decided later, by measured
importance (`workbench_prune.prune`); this module only fixes the counts.

LitGPT's config has one `intermediate_size` and one `n_head` for every layer, so width pruning
removes the same number of channels and groups from each layer (each layer picks its own).
Counts are parameter counts of the weights (biases included), computed from the config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from workbench.errors import UserError

METHODS = ("blocks", "channels", "heads")
#: MLP classes whose hidden channels sit between `fc*` layers and `proj` (LitGPT's names).
MLP_MATRICES = {"LLaMAMLP": 3, "GemmaMLP": 3, "GptNeoxMLP": 2}


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    n_query_groups: int
    head_size: int
    intermediate_size: int
    padded_vocab_size: int
    mlp_matrices: int
    bias: bool
    attn_bias: bool
    norm_params: int  # weights (+ biases) of one norm layer

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Shape:
        mlp = cfg["mlp_class_name"]
        if mlp not in MLP_MATRICES:
            raise UserError(f"pruning supports the MLPs {', '.join(MLP_MATRICES)}, not {mlp} "
                            "(mixture-of-experts models are not pruned)")
        for key in ("latent_attention", "sliding_window_indices", "rope_indices"):
            if cfg.get(key):
                raise UserError(f"pruning does not handle models with {key} set in model_config.yaml")
        n_head, n_embd = int(cfg["n_head"]), int(cfg["n_embd"])
        vocab = int(cfg["vocab_size"])
        padded = cfg.get("padded_vocab_size") or -(-vocab // int(cfg["padding_multiple"])) * int(cfg["padding_multiple"])
        return cls(
            n_layer=int(cfg["n_layer"]), n_embd=n_embd, n_head=n_head,
            n_query_groups=int(cfg.get("n_query_groups") or n_head),
            head_size=int(cfg.get("head_size") or n_embd // n_head),
            intermediate_size=int(cfg.get("intermediate_size") or 4 * n_embd),
            padded_vocab_size=int(padded), mlp_matrices=MLP_MATRICES[mlp], bias=bool(cfg["bias"]),
            attn_bias=bool(cfg.get("attn_bias")),
            norm_params=n_embd * (2 if cfg["norm_class_name"] == "LayerNorm" else 1),
        )

    @property
    def q_per_kv(self) -> int:
        return self.n_head // self.n_query_groups

    def group_params(self) -> int:
        """One KV group: its query heads, key and value rows in `qkv`, its columns in `proj`."""
        rows = (self.q_per_kv + 2) * self.head_size
        qkv_bias = rows if (self.bias or self.attn_bias) else 0
        return rows * self.n_embd + qkv_bias + self.q_per_kv * self.head_size * self.n_embd

    def channel_params(self) -> int:
        """One MLP channel: a row of every `fc*` matrix (and its bias) and a column of `proj`."""
        return self.mlp_matrices * self.n_embd + (self.mlp_matrices - 1 if self.bias else 0)

    def block_params(self) -> int:
        fixed = 2 * self.norm_params + (self.n_embd if self.bias else 0) * 2  # norms, proj biases
        return (fixed + self.n_query_groups * self.group_params()
                + self.intermediate_size * self.channel_params())

    def total_params(self) -> int:
        # wte and lm_head are separate parameters in LitGPT, even when their values are equal.
        return 2 * self.padded_vocab_size * self.n_embd + self.norm_params + self.n_layer * self.block_params()


@dataclass(frozen=True)
class Plan:
    """Counts to remove: `blocks` whole blocks, then per remaining layer `groups` KV groups and
    `channels` MLP channels."""

    blocks: int
    groups: int
    channels: int
    params_before: int
    params_after: int

    @property
    def kept(self) -> float:
        return self.params_after / self.params_before

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kept": round(self.kept, 6)}


def channel_step(size: int) -> int:
    """Channels go in steps of 256 where the width is a multiple of 256 with at least eight steps
    (llama.cpp's K-quants need row lengths that are multiples of 256, see docs/export.md), else
    of the largest power of two up to 128 that leaves at least sixteen steps."""
    if size % 256 == 0 and size // 256 >= 8:
        return 256
    for step in (128, 64, 32, 16, 8, 4, 2):
        if size % step == 0 and size // step >= 16:
            return step
    return 1


def make_plan(cfg: dict[str, Any], target: float, methods: list[str] | tuple[str, ...]) -> Plan:
    """The counts that bring the model closest to keeping `target` of its parameters.

    Blocks alone remove the number of blocks closest to the target (at least one). Mixed with width
    methods, blocks take at most half of the parameters to remove (whole blocks only) and the
    width methods the rest. Heads go in whole KV groups, rounded down (attention is the more
    sensitive part and groups are coarse); channels fill the remainder in `channel_step` steps.
    """
    if not math.isfinite(target) or not 0 < target <= 1:
        raise UserError(f"--target must be a share of parameters to keep, above 0 and at most 1; got {target}")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise UserError(f"--method takes {', '.join(METHODS)} (comma-separated); got {','.join(methods) or 'nothing'}")
    shape = Shape.from_config(cfg)
    total = shape.total_params()
    remove = total * (1 - target)
    width = [m for m in methods if m != "blocks"]
    blocks, capped = 0, False
    if "blocks" in methods:
        per_block = shape.block_params()
        alone = max(1, round(remove / per_block)) if remove > 0 else 0
        blocks = alone if not width else math.floor(remove / 2 / per_block)
        capped = blocks > shape.n_layer - 1
        blocks = min(blocks, shape.n_layer - 1)
    layers = shape.n_layer - blocks
    per_layer = (remove - blocks * shape.block_params()) / layers  # what width removes from each layer
    groups = channels = 0
    if "heads" in width and per_layer > 0:
        attention = shape.n_query_groups * shape.group_params()
        share = attention / (attention + shape.intermediate_size * shape.channel_params())
        wanted = per_layer * (share if "channels" in width else 1) / shape.group_params()
        groups = math.floor(wanted) if "channels" in width else round(wanted)
        capped = groups > shape.n_query_groups - 1
        groups = min(groups, shape.n_query_groups - 1)
        per_layer -= groups * shape.group_params()
    if "channels" in width and per_layer > 0:
        step = channel_step(shape.intermediate_size)
        channels = round(per_layer / shape.channel_params() / step) * step
        capped = channels > shape.intermediate_size - step
        channels = min(channels, shape.intermediate_size - step)
    after = total - blocks * shape.block_params() - layers * (
        groups * shape.group_params() + channels * shape.channel_params())
    if capped and after > total * target:
        raise UserError(
            f"--target {target:g} cannot be reached with --method {','.join(methods)}: the most it can remove "
            f"leaves {after / total:.1%} of the parameters (embeddings and the output head are never pruned); "
            "add methods or raise --target"
        )
    return Plan(blocks=blocks, groups=groups, channels=channels, params_before=total, params_after=after)
