"""The distillation loss: temperature-scaled KL to the teacher's top-k distribution, mixed with
cross-entropy on the hard labels.

The teacher's distribution is its top-k logits renormalised: softmax(values / T) over the k kept
tokens, zero probability on the rest (the tail). The student's side is its full softmax at the
same temperature, so

    KL = Σ_{i in top-k} p_i · (log p_i − log q_i),   q = softmax(student / T) over the whole vocabulary

and any mass the student puts on the tail raises the loss. With k equal to the vocabulary this is
exactly Hinton et al.'s KD term. It is scaled by T², so its gradients keep their size as T changes.

Heavy module (torch): imported by the training loop only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    loss: torch.Tensor  # what is backpropagated
    kd: torch.Tensor  # T² · KL, mean per token
    ce: torch.Tensor  # hard-label cross-entropy, mean per token


def topk_kl(student_logits: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T² · KL(teacher top-k renormalised ‖ student), mean over tokens.

    `student_logits`: (..., V); `top_values` (logits) and `top_indices`: (..., k). With
    log q_i = s_i / T − logsumexp(s / T) and Σ p_i = 1, the KL needs the student's full
    vocabulary only through one logsumexp; its log-softmax is never materialised.
    """
    t = temperature
    log_p = F.log_softmax(top_values.float() / t, dim=-1)
    p = log_p.exp()
    scaled = student_logits.float() / t if t != 1 else student_logits.float()
    lse = torch.logsumexp(scaled, dim=-1)
    picked = scaled.gather(-1, top_indices.long())
    kl = (p * (log_p - picked)).sum(-1) + lse
    return kl.mean() * t * t


def distill_loss(student_logits: torch.Tensor, targets: torch.Tensor, top_values: torch.Tensor,
                 top_indices: torch.Tensor, *, temperature: float, kd_weight: float) -> LossParts:
    """kd_weight · T²·KL + (1 − kd_weight) · CE, both means over the tokens of the batch."""
    ce = F.cross_entropy(student_logits.reshape(-1, student_logits.size(-1)).float(), targets.reshape(-1))
    if kd_weight == 0:  # hard labels alone: the KL is still reported, but takes no gradient
        with torch.no_grad():
            return LossParts(ce, topk_kl(student_logits, top_values, top_indices, temperature), ce)
    kd = topk_kl(student_logits, top_values, top_indices, temperature)
    return LossParts(kd_weight * kd + (1 - kd_weight) * ce, kd, ce)
