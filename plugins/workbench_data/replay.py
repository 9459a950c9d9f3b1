"""`--replay DATASET` of the finetuning stages: the dataset's tokens as replay windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.ml.replay import Replay
from workbench.options import ReplayOptions


def replay_source(options: ReplayOptions, ctx: Context, tokenizer_dir: Path, seed: int) -> tuple[Replay | None, Any]:
    """The replay windows and the dataset artifact they come from (None, None without --replay)."""
    if options.replay is None:
        return None, None
    from workbench_data.tokencache import token_array

    data = ctx.artifact(options.replay, "dataset")
    tokens = token_array(data.path, tokenizer_dir, "train",
                         progress=lambda done, total: ctx.progress(done, total, unit="doc", desc="tokenizing replay text"))
    replay = Replay(tokens, windows=options.replay_windows, length=options.replay_length, seed=seed,
                    what=f"the train split of dataset {data.id}")
    ctx.log(f"replay: {replay.windows} windows of {replay.length} tokens of dataset {data.id} per micro-batch, "
            "their language-model loss added to the task's")
    return replay, data
