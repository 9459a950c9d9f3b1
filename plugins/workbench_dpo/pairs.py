"""Preference rows as token ids: both answers encoded after the same chat-time prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.ml.examples import Encoded, collate, encode_pair
from workbench.prompts import PromptStyle
from workbench_dpo.rows import PreferenceRow


@dataclass
class Pair:
    chosen: Encoded
    rejected: Encoded

    @property
    def longest(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def encode_rows(rows: list[PreferenceRow], tokenizer: Any, style: PromptStyle, max_length: int) -> list[Pair]:
    """Encode every row; one longer than `max_length` is refused with its file and line."""
    return [
        Pair(
            encode_pair(tokenizer, style, row.prompt, row.chosen, max_length=max_length, where=row.where),
            encode_pair(tokenizer, style, row.prompt, row.rejected, max_length=max_length, where=row.where),
        )
        for row in rows
    ]


def collate_pairs(pairs: list[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of shape (2B, T): the B chosen answers first, then the B rejected.

    One forward over both halves keeps the policy's matmuls large; padding is on the right, which
    a causal model never attends to.
    """
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
