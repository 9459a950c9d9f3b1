"""Replay: windows of pretraining text mixed into finetuning batches.

A finetune on short task rows moves the weights wherever the task pulls them, and the model's
language model degrades with it (its perplexity on ordinary text rises). Adding the
language-model loss on a few windows of pretraining text to every micro-batch anchors it.
The windows are drawn from the micro-batch's own sample indices, so a resumed run draws the
very windows the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.errors import UserError


class Replay:
    def __init__(self, tokens: np.ndarray, *, windows: int, length: int, seed: int, what: str):
        if len(tokens) < length + 1:
            raise UserError(
                f"{what} has {len(tokens)} tokens, fewer than one replay window of {length + 1}; "
                "lower --replay-length or replay a larger dataset"
            )
        self.tokens = tokens
        self.windows = windows
        self.length = length
        self.seed = seed

    @property
    def tokens_per_batch(self) -> int:
        return self.windows * self.length

    def batch(self, key: Sequence[int]) -> torch.Tensor:
        """`windows` rows of `length + 1` tokens (inputs and their next tokens) for this key."""
        rng = np.random.default_rng([self.seed, *(int(k) for k in key)])
        starts = rng.integers(0, len(self.tokens) - self.length, size=self.windows)
        return torch.from_numpy(np.stack([self.tokens[s:s + self.length + 1] for s in starts]).astype(np.int64))

    def loss(self, model: torch.nn.Module, key: Sequence[int], device: torch.device) -> torch.Tensor:
        """Mean next-token cross-entropy of `model` on this key's windows."""
        rows = self.batch(key).to(device)
        logits = model(rows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), rows[:, 1:].reshape(-1))
