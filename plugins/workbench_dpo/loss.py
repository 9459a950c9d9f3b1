"""Sequence log-probabilities and the preference losses: sigmoid DPO, IPO and conservative DPO.

With π the policy, ρ the reference and (y_w, y_l) the chosen and rejected answers to prompt x,
every loss is a function of the same log-ratio difference

    h = (log π(y_w|x) − log ρ(y_w|x)) − (log π(y_l|x) − log ρ(y_l|x))

- sigmoid (Rafailov et al., 2023):    −log σ(β·h)
- cdpo (labels flipped with prob. ε): −(1−ε)·log σ(β·h) − ε·log σ(−β·h)
- ipo (Azar et al., 2023):            (h − 1/(2β))², on log-probabilities averaged over tokens

The implicit rewards reported as metrics are β·(log π − log ρ) for each answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.ml.examples import IGNORE

LOSSES = ("sigmoid", "ipo", "cdpo")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False) -> torch.Tensor:
    """Log-probability of each row's labelled tokens (the answer; the prompt is IGNORE): (B,)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # logsumexp keeps one copy of the logits for backward, where log_softmax would add another.
    token_logps = (picked - logits.logsumexp(-1)) * mask
    summed = token_logps.sum(-1)
    return summed / mask.sum(-1).clamp(min=1) if average else summed


@dataclass
class PairStats:
    """Per-pair tensors for one batch; everything but `losses` is detached."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    #: Mean negative log-likelihood per token of each chosen answer (detached), when it is trained on.
    chosen_nll: torch.Tensor | None = None


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PairStats:
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif kind == "cdpo":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r}; choose from {', '.join(LOSSES)}")
    return PairStats(
        losses=losses,
        chosen_rewards=beta * (policy_chosen - reference_chosen).detach(),
        rejected_rewards=beta * (policy_rejected - reference_rejected).detach(),
        policy_chosen=policy_chosen.detach(),
        policy_rejected=policy_rejected.detach(),
        reference_chosen=reference_chosen.detach(),
        reference_rejected=reference_rejected.detach(),
    )
