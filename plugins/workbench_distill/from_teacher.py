"""A student that starts from its teacher's weights (`--init teacher`, and `auto` where it fits).

A student of the teacher's shape with fewer blocks and a narrower MLP is the teacher pruned: the
prune stage's importance (`workbench_prune.prune`) is measured on the first training sequences,
its least important blocks go whole and each kept block keeps its most important MLP channels.
Embeddings, norms, attention and the output head are the teacher's own. The student then starts
near the teacher's predictions instead of at a uniform guess, so a few hundred steps bring it
close to the teacher where a random start is still learning the vocabulary.

Heavy module (torch, litgpt): imported by the distillation run only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from workbench.errors import UserError
from workbench.ml.checkpoint import config_to_dict, load_model
from workbench.ml.rope import model_class
from workbench_distill.teacher import sequences

if TYPE_CHECKING:
    from litgpt import GPT, Config

#: What a student may change of its teacher's config and still start from the teacher's weights
#: (the embedding rows are `padded_vocab_size`, compared; `padding_multiple` only led to it).
FREE_FIELDS = frozenset({"name", "hf_config", "n_layer", "intermediate_size", "block_size", "padding_multiple"})
#: Training sequences the teacher reads to rank its blocks and MLP channels (the prune stage's
#: default calibration size).
CALIBRATION = 32


def mismatch(teacher: Config, student: Config) -> str | None:
    """Why `student` cannot start from `teacher`'s weights, or None when it can."""
    from workbench_prune.plan import Shape

    t, s = config_to_dict(teacher), config_to_dict(student)
    differ = sorted(k for k in set(t) | set(s) if k not in FREE_FIELDS and t.get(k) != s.get(k))
    if differ:
        shown = ", ".join(f"{k} {s.get(k)} (teacher {t.get(k)})" for k in differ[:3])
        return f"{shown}{', and more,' if len(differ) > 3 else ''} differ{'s' if len(differ) == 1 else ''}"
    if student.n_layer > teacher.n_layer:
        return f"it has more blocks ({student.n_layer}) than the teacher ({teacher.n_layer})"
    if student.intermediate_size > teacher.intermediate_size:
        return (f"its MLP is wider ({student.intermediate_size}) than the teacher's "
                f"({teacher.intermediate_size})")
    try:
        Shape.from_config(t)
    except UserError as exc:
        return str(exc)
    return None


def student_from_teacher(teacher_dir: Path, config: Config, train: np.ndarray, starts: np.ndarray, seq_len: int,
                         progress: Callable[[int, int], None]) -> tuple[GPT, list[int]]:
    """The student of `config` cut from the teacher, in fp32 on the CPU, and the teacher's
    blocks it leaves out."""
    from workbench_prune.plan import Plan
    from workbench_prune.prune import choose, measure_importance, prune_state_dict

    teacher = load_model(teacher_dir, dtype=torch.float32)
    t_config = teacher.config
    n = min(CALIBRATION, len(starts))
    steps = -(-n // 4)

    def batches() -> Iterator[torch.Tensor]:
        for done, i in enumerate(range(0, n, 4), 1):
            yield sequences(train, starts[i:min(i + 4, n)], seq_len)[:, :-1]
            progress(done, steps)

    importance = measure_importance(teacher, batches())
    plan = Plan(blocks=t_config.n_layer - config.n_layer, groups=0,
                channels=t_config.intermediate_size - config.intermediate_size, params_before=0, params_after=0)
    removal = choose(importance, plan)
    state, _ = prune_state_dict(teacher.state_dict(), t_config, removal)
    del teacher
    with torch.device("meta"):
        student = model_class(config)(config)
    student.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    student.cos, student.sin = student.rope_cache(device=torch.device("cpu"))
    return student, removal.blocks
