"""Supervised examples as token ids: a chat rendered with the model's prompt style, with the loss
on the answer only.

The prompt and the answer are encoded separately and joined, so the prompt's tokens are exactly
what the model sees at chat time, when only the prompt is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.errors import UserError
from workbench.prompts import PromptStyle

IGNORE = -100


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,), IGNORE where no loss is taken
    n_prompt: int


def split_turns(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    if not messages or messages[-1].get("role") != "assistant":
        raise UserError("an instruction example must end with an assistant turn")
    return messages[:-1], messages[-1]["content"]


def encode_pair(
    tokenizer: Any, style: PromptStyle, prompt_messages: list[dict[str, str]], answer: str,
    *, mask_prompt: bool = True, max_length: int | None = None, where: str = "",
) -> Encoded:
    """Encode prompt turns + an answer; raise UserError if longer than `max_length`."""
    prompt = style.render(prompt_messages, add_generation_prompt=True)
    full = style.render([*prompt_messages, {"role": "assistant", "content": answer}], add_generation_prompt=False)
    if not full.startswith(prompt):
        raise UserError(f"prompt style '{style.name}' does not render the prompt as a prefix of the answer")
    prompt_ids = tokenizer.encode(prompt, bos=tokenizer.use_bos, eos=False)
    answer_ids = tokenizer.encode(full[len(prompt):], bos=False, eos=False)
    if style.name != "chatml" and tokenizer.eos_id is not None and (
        len(answer_ids) == 0 or int(answer_ids[-1]) != tokenizer.eos_id
    ):
        # Styles without an end-of-turn marker stop on EOS, so the model must learn to emit it.
        answer_ids = torch.cat([answer_ids, torch.tensor([tokenizer.eos_id], dtype=answer_ids.dtype)])
    ids = torch.cat([prompt_ids, answer_ids]).long()
    if max_length is not None and len(ids) > max_length:
        raise UserError(
            f"{where or 'an example'} is {len(ids)} tokens long, more than the model's context of "
            f"{max_length}; shorten it, drop it, or raise --max-seq-length"
        )
    labels = ids.clone()
    if mask_prompt:
        labels[: len(prompt_ids)] = IGNORE
    return Encoded(ids, labels, len(prompt_ids))


def encode_messages(tokenizer: Any, style: PromptStyle, messages: list[dict[str, str]], **kw: Any) -> Encoded:
    prompt_messages, answer = split_turns(messages)
    return encode_pair(tokenizer, style, prompt_messages, answer, **kw)


def collate(batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: (input_ids, labels) of shape (B, T)."""
    longest = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.input_ids)] = e.input_ids
        labels[i, : len(e.labels)] = e.labels
    return ids, labels


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token if it has one, else EOS (padding is masked out anyway)."""
    processor: Any = getattr(tokenizer, "processor", None)
    for name in ("<|pad|>", "<pad>", "[PAD]"):
        tid = processor.token_to_id(name) if hasattr(processor, "token_to_id") else None
        if tid is not None:
            return int(tid)
    return int(tokenizer.eos_id if tokenizer.eos_id is not None else 0)
