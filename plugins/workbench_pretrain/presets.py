"""Model presets for `workbench pretrain`: Llama-style LitGPT configs, from tiny to 350M.

Every preset uses RMSNorm, full rotary RoPE, a SwiGLU MLP (`LLaMAMLP`) and grouped-query
attention, and every weight's input width (embedding width, attention output width, MLP hidden
width) is a multiple of 256, so llama.cpp's K-quants apply to every tensor after GGUF export.

The vocabulary is not part of a preset: it always comes from the tokenizer the model is trained
with. Parameter counts are computed by formula here (no torch), for the `--help` listing.
This module stays light: the stage's help imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Vocabulary size used for the parameter counts in the help listing.
REFERENCE_VOCAB = 32_000
#: Vocabulary rows are padded to a multiple of this (full tiles on GPUs, cheap on CPUs).
PADDING_MULTIPLE = 64

#: What every preset shares: a Llama block.
LLAMA_STYLE: dict[str, Any] = {
    "rotary_percentage": 1.0,
    "parallel_residual": False,
    "bias": False,
    "norm_class_name": "RMSNorm",
    "norm_eps": 1e-5,
    "mlp_class_name": "LLaMAMLP",
    "rope_base": 10_000,
}


#: Weight initialisations for a model trained from scratch.
INIT_SCHEMES = {
    # LitGPT's `initialize_weights` (what `litgpt pretrain` does): every weight N(0, sqrt(2/5/d)),
    # output projections shrunk by the depth. Suits deep, wide models.
    "neox": "GPT-NeoX (LitGPT's pretraining default): small normal weights, depth-scaled output projections",
    # Each module's own `reset_parameters`: embeddings N(0, 1), linear layers Kaiming-uniform.
    # On the tiny preset the unit-variance embeddings are what lets the model learn to copy a
    # phrase from its prompt: after the same pretraining and LoRA run, held-out exact match 0.96
    # against 0.18 with the NeoX scheme (0.95 with NeoX's scheme but unit-variance embeddings).
    "torch": "PyTorch's module defaults: unit-variance embeddings, Kaiming-uniform linear layers",
}


@dataclass(frozen=True)
class Preset:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_query_groups: int
    intermediate_size: int
    block_size: int
    #: Training defaults sized for the preset (sequences per optimizer step, per forward pass).
    batch_size: int
    micro_batch_size: int
    learning_rate: float
    #: Default training budget in tokens.
    max_tokens: int
    #: Weight initialisation from scratch (`--init auto`); see `INIT_SCHEMES`.
    init: str = "neox"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def config(self, vocab_size: int) -> dict[str, Any]:
        """Keyword arguments for `litgpt.Config` with the tokenizer's vocabulary."""
        return {
            "name": f"workbench-{self.name}",
            "block_size": self.block_size,
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "head_size": self.head_size,
            "n_query_groups": self.n_query_groups,
            "intermediate_size": self.intermediate_size,
            "vocab_size": vocab_size,
            "padding_multiple": PADDING_MULTIPLE,
            "padded_vocab_size": padded_vocab(vocab_size),
            **LLAMA_STYLE,
            **self.extra,
        }

    def non_embedding_params(self) -> int:
        return llama_params(self.n_layer, self.n_embd, self.n_head, self.n_query_groups,
                            self.head_size, self.intermediate_size, padded_vocab=0)

    def params(self, vocab_size: int = REFERENCE_VOCAB) -> int:
        return llama_params(self.n_layer, self.n_embd, self.n_head, self.n_query_groups,
                            self.head_size, self.intermediate_size, padded_vocab(vocab_size))


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // PADDING_MULTIPLE) * PADDING_MULTIPLE


def llama_params(
    n_layer: int, n_embd: int, n_head: int, n_query_groups: int, head_size: int,
    intermediate_size: int, padded_vocab: int,
) -> int:
    """Parameters of a LitGPT Llama-style GPT (no biases, untied embedding and output head)."""
    qkv = n_embd * (n_head + 2 * n_query_groups) * head_size
    attn_out = n_head * head_size * n_embd
    mlp = 3 * n_embd * intermediate_size  # fc_1 (gate), fc_2 (up), proj (down)
    norms = 2 * n_embd
    per_layer = qkv + attn_out + mlp + norms
    return n_layer * per_layer + n_embd + 2 * padded_vocab * n_embd


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", n_layer=3, n_embd=256, n_head=4, n_query_groups=2, intermediate_size=768,
               block_size=256, batch_size=16, micro_batch_size=16, learning_rate=3e-3,
               max_tokens=240_000, init="torch", note="about a minute on a 2-core CPU"),
        Preset("small", n_layer=6, n_embd=512, n_head=8, n_query_groups=2, intermediate_size=1536,
               block_size=512, batch_size=32, micro_batch_size=8, learning_rate=1e-3,
               max_tokens=20_000_000, note="hours on a CPU, minutes on a GPU"),
        Preset("125M", n_layer=12, n_embd=768, n_head=12, n_query_groups=4, intermediate_size=2048,
               block_size=1024, batch_size=256, micro_batch_size=16, learning_rate=6e-4,
               max_tokens=2_500_000_000, note="a GPU"),
        Preset("350M", n_layer=24, n_embd=1024, n_head=16, n_query_groups=4, intermediate_size=3072,
               block_size=2048, batch_size=256, micro_batch_size=8, learning_rate=3e-4,
               max_tokens=7_000_000_000, note="a large GPU"),
    )
}


def fmt_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def describe() -> str:
    """The preset table for `workbench pretrain --help`."""
    lines = [
        f"presets (--model), Llama-style; params with a {REFERENCE_VOCAB:,}-token vocabulary "
        "(the tokenizer sets the real one):",
        f"  {'name':<6} {'layers':>6} {'width':>6} {'heads/kv':>8} {'mlp':>5} {'ctx':>5} "
        f"{'params':>7} {'non-emb':>7}  default budget",
    ]
    for p in PRESETS.values():
        lines.append(
            f"  {p.name:<6} {p.n_layer:>6} {p.n_embd:>6} {f'{p.n_head}/{p.n_query_groups}':>8} "
            f"{p.intermediate_size:>5} {p.block_size:>5} {fmt_count(p.params()):>7} "
            f"{fmt_count(p.non_embedding_params()):>7}  {fmt_count(p.max_tokens)} tokens ({p.note})"
        )
    return "\n".join(lines)
