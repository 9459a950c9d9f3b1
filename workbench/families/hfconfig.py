"""A Hugging Face `config.json` read field by field, so that nothing which changes the math is missed.

`HFConfig.get` records each key a family reads; `unread_math()` lists the keys of `MATH_KEYS`
present in the file that no one read, and the converter refuses those by name. RoPE is read by
`rope()` from either layout transformers has written: top-level `rope_theta` + `rope_scaling`
(transformers 4), or `rope_parameters` holding both (transformers 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.errors import UserError

# Fields that change a model's output in some family. Present in config.json, each must be read
# by the family (and its value honoured or refused) or the conversion is refused.
MATH_KEYS = frozenset({
    "hidden_act", "hidden_activation", "attention_bias", "mlp_bias", "bias", "tie_word_embeddings",
    "head_dim", "rms_norm_eps", "layer_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "partial_rotary_factor", "rotary_pct", "rope_local_base_freq", "sliding_window", "use_sliding_window",
    "max_window_layers", "layer_types", "sliding_window_pattern", "attn_logit_softcapping",
    "final_logit_softcapping", "query_pre_attn_scalar", "attention_multiplier", "embedding_multiplier",
    "residual_multiplier", "logits_scaling", "clip_qkv", "qk_layernorm", "use_qk_norm", "num_experts",
    "num_local_experts", "quantization_config", "no_rope_layers", "use_parallel_residual",
    "use_bidirectional_attention", "embedding_scale", "scale_embeddings", "normalization_type",
})
# Keys of a rope_parameters / rope_scaling mapping that `rope()` understands.
_ROPE_KEYS = frozenset({
    "rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings", "partial_rotary_factor", "long_factor", "short_factor", "attention_factor",
    "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate",
})


@dataclass(frozen=True)
class Rope:
    theta: float
    kind: str  # "default", "llama3", "linear", ...
    scaling: dict[str, Any]
    partial_rotary_factor: float


class HFConfig:
    """config.json of one repository, with a record of the fields read."""

    def __init__(self, data: dict[str, Any], source: str):
        self.data = data
        self.source = source
        self.read: set[str] = {"architectures", "model_type"}

    @property
    def architecture(self) -> str:
        return str((self.data.get("architectures") or [self.data.get("model_type", "unknown")])[0])

    def get(self, key: str, default: Any = None) -> Any:
        """The value (None included), or transformers' default for the family when the key is absent."""
        self.read.add(key)
        return self.data.get(key, default)

    def require(self, *keys: str) -> list[Any]:
        missing = [k for k in keys if self.data.get(k) is None]
        if missing:
            raise UserError(f"config.json of {self.source} lacks {', '.join(missing)}, "
                            f"which a {self.architecture} needs")
        return [self.get(k) for k in keys]

    def refuse(self, what: str) -> UserError:
        return UserError(f"{self.source}: {what}; workbench does not convert it to a LitGPT {self.architecture} "
                         "with the same outputs")

    def expect(self, key: str, wanted: Any, default: Any) -> None:
        """Refuse unless `key` (or its default) has the one value this family converts."""
        value = self.get(key, default)
        if value != wanted and not (value is None and default == wanted):
            raise self.refuse(f"{key} {value!r}")

    def rope(self, default_theta: float = 10000.0) -> Rope:
        """RoPE base and scaling from either config layout."""
        params = self.data.get("rope_parameters")
        self.read.update({"rope_parameters", "rope_theta", "rope_scaling", "partial_rotary_factor"})
        if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
            # Per layer type ({"full_attention": {...}, "sliding_attention": {...}}).
            raise self.refuse(f"rope_parameters per layer type ({', '.join(params)})")
        if isinstance(params, dict) and params:
            scaling = dict(params)
        else:
            scaling = dict(self.data.get("rope_scaling") or {})
            if "rope_theta" in self.data:
                scaling.setdefault("rope_theta", self.data["rope_theta"])
        unknown = sorted(set(scaling) - _ROPE_KEYS)
        kind = str(scaling.get("rope_type") or scaling.get("type") or "default")
        if unknown:
            raise self.refuse(f"rope scaling '{kind}' sets {', '.join(unknown)}")
        theta = float(scaling.pop("rope_theta", None) or self.data.get("rope_theta") or default_theta)
        partial = float(scaling.pop("partial_rotary_factor", None) or self.data.get("partial_rotary_factor") or 1.0)
        for k in ("rope_type", "type"):
            scaling.pop(k, None)
        return Rope(theta=theta, kind=kind, scaling=scaling, partial_rotary_factor=partial)

    def unread_math(self) -> list[str]:
        return sorted(k for k in MATH_KEYS if k in self.data and k not in self.read)
