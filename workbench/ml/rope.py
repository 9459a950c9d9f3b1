"""RoPE variants LitGPT 0.5.13 does not compute as transformers does, as model classes of our own.

YaRN (Qwen2.5, Qwen3 long-context configs) blends interpolated and original frequencies over a
ramp of rotary dimensions and scales cos and sin by an attention factor; LitGPT's own YaRN blends
the other way round and leaves the factor out, so `YaRN` builds the cache as transformers does.

LongRoPE (Phi-3-*-128k, Phi-3.5, Phi-4-mini) divides each rotary frequency by a factor from one
of two lists and scales cos and sin by an attention factor. transformers picks the list per
forward pass: the short factors while the sequence (its last position + 1) is within
`original_max_position_embeddings`, the long ones for every position once it is longer. LitGPT
builds one cos/sin table for the model's `max_seq_length`, so `LongRoPE` rebuilds the table when
a forward pass crosses that line. With a KV cache (generation) it picks by the context the cache
holds, `max_seq_length`, as llama.cpp picks by its context size, so cached keys never mix lists.

Every place that builds a model for compute takes its class from `model_class(config)`:
`checkpoint.load_model`, `lora.load_lora_model` and export's reference model. LitGPT's own
scripts do not know the factors (kept in `rope_adjustments`) and would compute plain RoPE.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from litgpt import GPT, Config

from workbench.families.common import is_longrope, is_yarn


def longrope_cache(config: Config, seq_len: int, *, long: bool, device: torch.device | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of LongRoPE for positions 0..seq_len-1, shaped (seq_len, rope_n_elem) like LitGPT's."""
    adj = config.rope_adjustments or {}
    n_elem = config.rope_n_elem
    factors = torch.tensor(adj["long_factor" if long else "short_factor"], dtype=torch.float32, device=device)
    theta = 1.0 / (factors * config.rope_base ** (torch.arange(0, n_elem, 2, device=device).float() / n_elem))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), theta).repeat(1, 2)
    scale = float(adj["attention_factor"])
    return torch.cos(angles) * scale, torch.sin(angles) * scale


def yarn_cache(config: Config, seq_len: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of YaRN (transformers' `_compute_yarn_parameters`), shaped like LitGPT's."""
    adj = config.rope_adjustments or {}
    dim, base, factor = config.rope_n_elem, config.rope_base, adj["yarn_factor"]

    def correction_dim(rotations: float) -> float:
        return dim * math.log(adj["yarn_original_max_seq_len"] / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(adj["yarn_beta_fast"]), correction_dim(adj["yarn_beta_slow"])
    if adj["yarn_truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low if high != low else 0.001)
            ).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device=device).float() / dim)
    keep = 1 - ramp  # the share of each original frequency; the rest is interpolated
    theta = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    angles = torch.outer(torch.arange(seq_len, device=device).float(), theta).repeat(1, 2)
    scale = float(adj["attention_factor"])
    return torch.cos(angles) * scale, torch.sin(angles) * scale


class YaRN:
    """Mixed in before a LitGPT GPT class: YaRN as transformers computes it, for every length."""

    config: Config
    max_seq_length: int

    def rope_cache(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return yarn_cache(self.config, self.max_seq_length, device=device)


class LongRoPE:
    """Mixed in before a LitGPT GPT class (plain or LoRA): LongRoPE in place of its rope cache."""

    config: Config
    max_seq_length: int
    cos: torch.Tensor
    sin: torch.Tensor
    _long_factors = False

    def rope_cache(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return longrope_cache(self.config, self.max_seq_length, long=self._long_factors, device=device)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, input_pos_maxp1: int | None = None,
                lm_head_chunk_size: int = 0) -> Any:
        span = idx.size(1) if input_pos is None else self.max_seq_length
        long = span > int((self.config.rope_adjustments or {})["original_max_seq_len"])
        if long != self._long_factors:
            self._long_factors = long
            cos, sin = self.rope_cache(device=self.cos.device)
            self.cos, self.sin = cos.to(self.cos.dtype), sin.to(self.sin.dtype)
        return super().forward(idx, input_pos, input_pos_maxp1, lm_head_chunk_size)  # type: ignore[misc]


_classes: dict[tuple[type, type], type] = {}


def model_class(config: Config, base: type[GPT] = GPT) -> type[GPT]:
    """The class that computes `config`'s model: `base` itself unless its RoPE needs ours."""
    mixin = LongRoPE if is_longrope(config.rope_adjustments) else YaRN if is_yarn(config.rope_adjustments) else None
    if mixin is None:
        return base
    if (mixin, base) not in _classes:
        _classes[mixin, base] = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"__module__": __name__})
    return _classes[mixin, base]
