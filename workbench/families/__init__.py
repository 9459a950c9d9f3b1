"""Model families: everything workbench knows about one architecture, in one module each.

Download (`plugins/workbench_download/convert.py`, Hugging Face → LitGPT) and export
(`plugins/workbench_export`, LitGPT → GGUF) both read this package, so a family is supported
end to end by adding one file here and one row to `tests/stages/test_families.py`.

A family module defines one `Family` (see its fields below) and is listed in `_MODULES`. It says:

- `architectures`: the Hugging Face `architectures[0]` values it converts;
- `litgpt_fields(cfg)`: LitGPT `Config` fields from the repository's `config.json`, read
  through `HFConfig`, which records what was read. Every field in `hfconfig.MATH_KEYS` that the
  family did not read is refused by name, so nothing that changes the math is left at a default;
  `cfg.rope()` reads RoPE in either config layout (top-level `rope_theta`/`rope_scaling`, or
  `rope_parameters` as transformers 5 writes it);
- `copy_weights`: the weight-copy function in `litgpt.scripts.convert_hf_checkpoint`;
- `tie_default`: transformers' `tie_word_embeddings` default for the family's config class;
- `structure`: the values of LitGPT's structural config fields that identify the family at export
  (fields not named must have their plain Llama value, see `PLAIN`); a callable value is a test;
- `gguf_arch`, `rope_neox`, `qkv_bias`, `layer_tensors`, `rope_ok`, `context_limit`: how
  llama.cpp names and runs it (Q/K rows are permuted per head unless llama.cpp uses NEOX rope for
  the arch; `rope_ok` accepts the LitGPT rope adjustments it reproduces; `context_limit` caps
  the GGUF's context where llama.cpp's math would differ beyond it);
- `export_check`, `gguf_metadata`, `untied_output`, `fused_tensors`: what export must refuse
  beyond `structure`, the arch's own GGUF keys, whether llama.cpp reads a separate output layer,
  and tensors llama.cpp keeps fused;
- `name_prefix`, `f32_tolerance`: see their fields.

Download asks `for_architecture(arch, source)`, export `for_litgpt(model_config)`; both raise a
UserError naming what is unsupported and what is.

Light at import time (no torch, numpy or LitGPT): the CLI refuses unsupported models before any
heavy import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import UserError
from workbench.families.hfconfig import HFConfig

__all__ = ["LLAMA_TENSORS", "PLAIN", "Family", "HFConfig", "all_families", "by_name", "for_architecture",
           "for_litgpt", "llama3_rope_only", "supported_text"]

# LitGPT structural config fields with the value a plain Llama has. Export accepts a field with
# another value only when the family's `structure` names it.
PLAIN: dict[str, Any] = {
    "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm", "parallel_residual": False,
    "shared_attention_norm": False, "bias": False, "attn_bias": False, "lm_head_bias": False,
    "norm_qk": False, "norm_qk_type": "default", "post_attention_norm": False, "post_mlp_norm": False,
    "norm_1": True, "norm_2": True, "scale_embeddings": False, "n_expert": 0,
    "sliding_window_size": None, "sliding_window_indices": None, "latent_attention": None, "attention_logit_softcapping": None,
    "final_logit_softcapping": None, "attention_scores_scalar": None, "rope_local_base_freq": None,
    "rope_interleave": False, "rotary_percentage": 1.0, "gelu_approximate": "none", "rope_indices": None,
}

# LitGPT-side tensors every Llama-like block has (the fused qkv is split by the GGUF writer).
LLAMA_TENSORS: dict[str, str] = {
    "transformer.h.{i}.norm_1.weight": "blk.{i}.attn_norm.weight",
    "transformer.h.{i}.attn.proj.weight": "blk.{i}.attn_output.weight",
    "transformer.h.{i}.norm_2.weight": "blk.{i}.ffn_norm.weight",
    "transformer.h.{i}.mlp.fc_1.weight": "blk.{i}.ffn_gate.weight",
    "transformer.h.{i}.mlp.fc_2.weight": "blk.{i}.ffn_up.weight",
    "transformer.h.{i}.mlp.proj.weight": "blk.{i}.ffn_down.weight",
}


def llama3_rope_only(adjustments: Mapping[str, Any] | None) -> bool:
    """LitGPT `rope_adjustments` of Llama 3 style (llama.cpp applies them as `rope_freqs`)."""
    return not adjustments or ("low_freq_factor" in adjustments and "beta_fast" not in adjustments)


@dataclass(frozen=True)
class Family:
    """One model family: its Hugging Face config mapping, LitGPT weights and llama.cpp layout."""

    name: str
    #: Hugging Face `architectures[0]` values converted by this family.
    architectures: tuple[str, ...]
    #: config.json (through HFConfig) → LitGPT Config fields, all but `name` and `hf_config`.
    litgpt_fields: Callable[[HFConfig], dict[str, Any]]
    #: weight-copy function in litgpt.scripts.convert_hf_checkpoint.
    copy_weights: str
    #: LitGPT structural fields that differ from PLAIN: a value, or a test of the value.
    structure: Mapping[str, Any] = field(default_factory=dict)
    #: llama.cpp architecture; None when the family has no GGUF export.
    gguf_arch: str | None = None
    #: llama.cpp rotates halves (NEOX) for this arch, as LitGPT does: Q/K rows stay as they are.
    rope_neox: bool = False
    qkv_bias: bool = False
    #: per-block LitGPT tensor name → GGUF name, besides the split qkv.
    layer_tensors: Mapping[str, str] = field(default_factory=lambda: LLAMA_TENSORS)
    #: test of LitGPT `rope_adjustments` that llama.cpp's arch reproduces.
    rope_ok: Callable[[Mapping[str, Any] | None], bool] = lambda adj: not adj
    #: the longest context llama.cpp runs with the same math (LitGPT config → positions or None).
    context_limit: Callable[[Mapping[str, Any]], int | None] = lambda config: None
    #: start of the LitGPT config name, for LitGPT code that switches on it: "Gemma" turns on
    #: RMSNorm's unit offset (export then adds the one), "Phi-3" the fused Phi-3 weight names.
    name_prefix: str = ""
    #: GGUF tensors that concatenate LitGPT tensors by rows (per block, like `layer_tensors`).
    fused_tensors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: LitGPT config → names of what llama.cpp's arch computes differently (beyond `structure`).
    export_check: Callable[[Mapping[str, Any]], list[str]] = lambda config: []
    #: writes the arch's own GGUF keys: (gguf.GGUFWriter, LitGPT config).
    gguf_metadata: Callable[[Any, Mapping[str, Any]], None] | None = None
    #: llama.cpp reads `output.weight` when present; False: the arch always reuses the embedding.
    untied_output: bool = True
    #: the closest llama.cpp's F32 logits can come to LitGPT's, relative to the largest logit, when
    #: llama.cpp itself rounds (export verifies with this when it exceeds --tolerance).
    f32_tolerance: float = 0.0
    #: transformers' tie_word_embeddings default for the family's config class.
    tie_default: bool = False
    #: what users read in messages and docs.
    label: str = ""

    def structure_mismatches(self, config: Mapping[str, Any]) -> list[str]:
        """LitGPT fields whose values this family's GGUF export does not reproduce."""
        bad = []
        for key, plain in PLAIN.items():
            want = self.structure.get(key, plain)
            value = config.get(key, plain)
            ok = want(value) if callable(want) else value == want
            if not ok:
                bad.append(key)
        if not self.rope_ok(config.get("rope_adjustments")):
            bad.append("rope_adjustments")
        return bad + self.export_check(config)

    def distinguishing_matches(self, config: Mapping[str, Any]) -> int:
        """How many of the fields where this family differs from a plain Llama the config shares."""
        count = 0
        for key, want in self.structure.items():
            value = config.get(key, PLAIN.get(key))
            if value != PLAIN.get(key) and (want(value) if callable(want) else value == want):
                count += 1
        return count


# Module names under workbench.families, in the order export tries them.
_MODULES = ("llama", "qwen2", "qwen3", "mistral", "olmo2", "gemma2", "gemma3", "phi3")


def all_families() -> list[Family]:
    return [importlib.import_module(f"workbench.families.{m}").FAMILY for m in _MODULES]


def by_name(name: str) -> Family:
    for fam in all_families():
        if fam.name == name:
            return fam
    raise KeyError(name)


def supported_text(exportable: bool = False) -> str:
    return ", ".join(f.label or f.name for f in all_families() if f.gguf_arch or not exportable)


def for_architecture(arch: str, source: str) -> Family:
    """The family that converts a Hugging Face architecture, or a UserError naming the supported ones."""
    for fam in all_families():
        if arch in fam.architectures:
            return fam
    supported = ", ".join(a for f in all_families() for a in f.architectures)
    raise UserError(
        f"{source} is a {arch} model, which workbench cannot convert to a LitGPT checkpoint "
        f"(supported: {supported}); code in the repository is never run. For chat, look for a GGUF "
        "version of the model and download it with --gguf-file"
    )


def for_litgpt(config: Mapping[str, Any], where: str = "model_config.yaml") -> Family:
    """The exportable family whose structure a LitGPT config has, or a UserError naming what differs."""
    name = config.get("name") or "this"
    exportable = [f for f in all_families() if f.gguf_arch]
    supported = supported_text(exportable=True)
    if config.get("mlp_class_name") not in ("LLaMAMLP", "GemmaMLP") or config.get("norm_class_name") != "RMSNorm":
        kind = "GPT-NeoX/Pythia-style" if config.get("mlp_class_name") == "GptNeoxMLP" else config.get("mlp_class_name")
        raise UserError(
            f"{where}: '{name}' is a {kind} model ({config.get('mlp_class_name')}, {config.get('norm_class_name')}); "
            f"GGUF export supports {supported}"
        )
    # The closest family: fewest differences, then most of its own distinguishing fields present.
    scored = sorted(((f.structure_mismatches(config), -f.distinguishing_matches(config), i, f)
                     for i, f in enumerate(exportable)), key=lambda t: (len(t[0]), t[1], t[2]))
    bad, _, _, closest = scored[0]
    if not bad:
        return closest
    raise UserError(
        f"{where}: '{name}' uses {', '.join(bad)}, which llama.cpp's {closest.gguf_arch} architecture does "
        f"not run the same way; GGUF export supports {supported}"
    )
