"""Importance on calibration text, and the surgery on LitGPT weights.

Scores, all measured in one pass of the unpruned model over the calibration sequences:

- a block: mean over tokens of 1 - cos(its input, its output) (ShortGPT's block influence): a
  block that barely turns the residual stream does little;
- an MLP channel: mean |activation| at the input of `mlp.proj` times the norm of its column of
  `proj` (activation-weighted magnitude, Wanda's score summed over a channel's outputs);
- a KV group: mean norm of what its query heads add to the residual stream (each head's slice
  of the `attn.proj` input through its columns of `proj`), summed over the group's heads.

LitGPT's fused `attn.qkv` holds plain `[Q; K; V]` rows (n_head, n_query_groups and
n_query_groups heads of head_size rows), and query head h reads KV group h // (n_head /
n_query_groups) (its `repeat_interleave`). A KV group therefore goes with all its query heads,
so every remaining group keeps the same number of queries, as the config demands.

Heavy module (torch, litgpt): imported by the stage's `run()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from litgpt import GPT, Config

from workbench.ml.checkpoint import config_to_dict
from workbench_prune.plan import Plan


@dataclass
class Importance:
    blocks: list[float]
    groups: list[torch.Tensor]  # per layer, one score per KV group
    channels: list[torch.Tensor]  # per layer, one score per MLP channel


@dataclass
class Removal:
    """What goes, in the source model's numbering: block indices, and per kept block the KV
    groups and MLP channels removed from it."""

    blocks: list[int]
    groups: dict[int, list[int]]
    channels: dict[int, list[int]]

    def to_json(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "groups": {str(k): v for k, v in self.groups.items()},
                "channels": {str(k): v for k, v in self.channels.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Removal:
        return cls(blocks=list(data["blocks"]), groups={int(k): v for k, v in data["groups"].items()},
                   channels={int(k): v for k, v in data["channels"].items()})


@torch.no_grad()
def measure_importance(model: GPT, batches: Iterable[torch.Tensor],
                       progress: Callable[[int], None] | None = None) -> Importance:
    """Run `batches` (token ids, (B, T)) through `model` and score every unit."""
    cfg = model.config
    n = cfg.n_layer
    block_sum = torch.zeros(n, dtype=torch.float64)
    group_sum = [torch.zeros(cfg.n_query_groups, dtype=torch.float64) for _ in range(n)]
    channel_sum = [torch.zeros(cfg.intermediate_size, dtype=torch.float64) for _ in range(n)]
    tokens = 0
    hooks = []

    def on_block(i: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            cos = F.cosine_similarity(args[0].float(), output.float(), dim=-1)
            block_sum[i] += float((1 - cos).sum())
        return hook

    def on_attn_proj(i: int, proj: torch.nn.Linear) -> Any:
        w = proj.weight.float().view(cfg.n_embd, cfg.n_head, cfg.head_size)

        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            y = args[0].float().view(*args[0].shape[:-1], cfg.n_head, cfg.head_size)
            # What each head adds to the residual stream, per token: (..., n_head, n_embd).
            out = torch.einsum("...hd,ehd->...he", y, w).norm(dim=-1)
            per_head = out.reshape(-1, cfg.n_head).sum(0).double()
            group_sum[i] += per_head.view(cfg.n_query_groups, -1).sum(-1)
        return hook

    def on_mlp_proj(i: int, proj: torch.nn.Linear) -> Any:
        col_norm = proj.weight.float().norm(dim=0).double()

        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            a = args[0].float().abs().reshape(-1, cfg.intermediate_size).sum(0).double()
            channel_sum[i] += a * col_norm
        return hook

    for i, block in enumerate(model.transformer.h):
        hooks.append(block.register_forward_hook(on_block(i)))
        hooks.append(block.attn.proj.register_forward_pre_hook(on_attn_proj(i, block.attn.proj)))
        hooks.append(block.mlp.proj.register_forward_pre_hook(on_mlp_proj(i, block.mlp.proj)))
    try:
        for done, ids in enumerate(batches, 1):
            model(ids)
            tokens += ids.numel()
            if progress:
                progress(done)
    finally:
        for h in hooks:
            h.remove()
    tokens = max(tokens, 1)
    return Importance(blocks=(block_sum / tokens).tolist(), groups=[g / tokens for g in group_sum],
                      channels=[c / tokens for c in channel_sum])


def choose(importance: Importance, plan: Plan) -> Removal:
    """The least important units, as many as the plan says (ties go to the lower index)."""
    order = sorted(range(len(importance.blocks)), key=lambda i: (importance.blocks[i], i))
    blocks = sorted(order[:plan.blocks])
    kept = [i for i in range(len(importance.blocks)) if i not in blocks]

    def lowest(scores: torch.Tensor, k: int) -> list[int]:
        return sorted(torch.argsort(scores, stable=True)[:k].tolist()) if k else []

    return Removal(blocks=blocks, groups={i: lowest(importance.groups[i], plan.groups) for i in kept},
                   channels={i: lowest(importance.channels[i], plan.channels) for i in kept})


def _keep(n: int, removed: list[int]) -> list[int]:
    gone = set(removed)
    return [i for i in range(n) if i not in gone]


def head_rows(config: Config, groups: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `attn.qkv` (and columns of `attn.proj`) that belong to the KV `groups`."""
    hs, q_per_kv = config.head_size, config.n_head // config.n_query_groups
    q_start, v_start = 0, (config.n_head + config.n_query_groups) * hs
    k_start = config.n_head * hs
    heads = [g * q_per_kv + j for g in groups for j in range(q_per_kv)]
    q = torch.tensor([q_start + h * hs + d for h in heads for d in range(hs)], dtype=torch.long)
    kv = [g * hs + d for g in groups for d in range(hs)]
    qkv = torch.cat([q, torch.tensor([k_start + r for r in kv]), torch.tensor([v_start + r for r in kv])])
    proj = q  # proj's input columns are the query heads' outputs, in head order
    return qkv, proj


def prune_state_dict(sd: dict[str, torch.Tensor], config: Config,
                     removal: Removal) -> tuple[dict[str, torch.Tensor], Config]:
    """The state dict and config of the model without the removed units."""
    kept_blocks = _keep(config.n_layer, removal.blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith("transformer.h."):
            out[key] = value
    n_groups = n_channels = None
    for new, old in enumerate(kept_blocks):
        groups = _keep(config.n_query_groups, removal.groups.get(old, []))
        channels = torch.tensor(_keep(config.intermediate_size, removal.channels.get(old, [])), dtype=torch.long)
        if n_groups not in (None, len(groups)) or n_channels not in (None, len(channels)):
            raise ValueError("every block must keep the same number of KV groups and MLP channels")
        n_groups, n_channels = len(groups), len(channels)
        qkv_rows, proj_cols = head_rows(config, groups)
        prefix = f"transformer.h.{old}."
        for key, value in sd.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name.startswith("attn.qkv."):
                value = value.index_select(0, qkv_rows)
            elif name == "attn.proj.weight":
                value = value.index_select(1, proj_cols)
            elif name == "mlp.proj.weight":
                value = value.index_select(1, channels)
            elif name.startswith("mlp.") and not name.startswith("mlp.proj."):
                value = value.index_select(0, channels)  # fc, fc_1, fc_2: weight rows and biases
            out[f"transformer.h.{new}.{name}"] = value.contiguous()
    q_per_kv = config.n_head // config.n_query_groups
    n_groups = n_groups if n_groups is not None else config.n_query_groups
    fields = {**config_to_dict(config), "n_layer": len(kept_blocks), "n_query_groups": n_groups,
              "n_head": n_groups * q_per_kv, "head_size": config.head_size,
              "intermediate_size": n_channels if n_channels is not None else config.intermediate_size}
    return out, Config(**fields)
